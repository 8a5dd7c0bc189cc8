"""Write the raw sales as one CSV per Store/Brand partition, with an MLTable that reads them back."""

import argparse
import os

import pandas as pd

parser = argparse.ArgumentParser()
parser.add_argument("--input_folder")
parser.add_argument("--output_folder")
args = parser.parse_args()

frames = [pd.read_csv(os.path.join(args.input_folder, name)) for name in sorted(os.listdir(args.input_folder))]
data = pd.concat(frames, ignore_index=True)
for (store, brand), group in data.groupby(["Store", "Brand"]):
    folder = os.path.join(args.output_folder, str(store), str(brand))
    os.makedirs(folder, exist_ok=True)
    group.drop(columns=["Store", "Brand"]).to_csv(os.path.join(folder, "partitioned_data.csv"), index=False)
    print(f"wrote partition {store}/{brand}: {len(group)} rows")

with open(os.path.join(args.output_folder, "MLTable"), "w") as mltable:
    mltable.write(
        "paths:\n"
        "  - pattern: ./**/*.csv\n"
        "transformations:\n"
        "  - read_delimited:\n"
        "      delimiter: ','\n"
        "      encoding: utf8\n"
        "      header: all_files_same_headers\n"
        "      include_path_column: true\n"
        "  - extract_columns_from_partition_format:\n"
        "      partition_format: '{Store}/{Brand}/{file_name}.{extension}'\n"
        "  - drop_columns: [Path, file_name, extension]\n"
    )
print("MLTable written")
