"""Score iris rows with the rules in the model folder; one output row per input row."""

import argparse
import json
import os


def init():
    global rules
    parser = argparse.ArgumentParser(allow_abbrev=False, description="ParallelRunStep Agent")
    parser.add_argument("--model", type=str, default=0)
    args, _ = parser.parse_known_args()
    with open(os.path.join(args.model, "model.json")) as handle:
        rules = json.load(handle)["rules"]


def predict(row):
    for rule in rules:
        if "petal_length_below" in rule and not row["petal_length"] < rule["petal_length_below"]:
            continue
        if "petal_width_below" in rule and not row["petal_width"] < rule["petal_width_below"]:
            continue
        return rule["class"]


def run(input_data):
    predictions = input_data.apply(predict, axis=1)
    result = input_data.copy()
    result["prediction"] = predictions
    return result
