"""Train one (tiny) model per Store/Brand partition: the mean weekly quantity, and log it."""

import argparse

import pandas as pd
from azureml.core import Run


def init():
    global args
    parser = argparse.ArgumentParser()
    parser.add_argument("--drop_cols")
    parser.add_argument("--target_col")
    parser.add_argument("--date_col")
    args, _ = parser.parse_known_args()
    print(f"training {args.target_col} by {args.date_col}")


def run(input_data, mini_batch_context):
    if not isinstance(input_data, pd.DataFrame):
        raise TypeError(f"expected a DataFrame, got {type(input_data).__name__}")
    if input_data.empty:
        return []
    keys = mini_batch_context.partition_key_value
    store, brand = keys["Store"], keys["Brand"]
    rows = input_data[(input_data["Store"].astype(str) == str(store)) & (input_data["Brand"] == brand)]
    if len(rows) != len(input_data):
        raise ValueError(f"mini-batch {keys} holds rows of other partitions")
    mean = float(rows[args.target_col].mean())
    Run.get_context().log("mean_quantity", mean)
    print(f"model for {store}/{brand}: mean {mean:.1f} over {len(rows)} weeks")
    return pd.DataFrame({"Store": [store], "Brand": [brand], "weeks": [len(rows)], "mean_quantity": [round(mean, 1)]})
