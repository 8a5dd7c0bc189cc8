"""Specification of MLTable inputs: parsing, every supported transformation, mini-batches."""

from __future__ import annotations

import json
import pickle
import textwrap
from pathlib import Path

import pandas
import pyarrow
import pyarrow.parquet
import pytest

from pipeobs.datasets import Dataset, FileDataset, TabularDataset, load_mini_batch, mltable_dataset, partition
from pipeobs.errors import ConfigError, InputError

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def mltable(folder: Path, body: str) -> Path:
    return write(folder / "MLTable", textwrap.dedent(body))


def csv_files(root: Path) -> None:
    write(root / "a.csv", "id,name\n1,x\n2,y\n")
    write(root / "b.csv", "id,name\n3,z\n")


def frame(dataset: Dataset) -> pandas.DataFrame:
    assert isinstance(dataset, TabularDataset)
    return dataset.to_pandas_dataframe()


def batches_frame(dataset: Dataset, size: int) -> pandas.DataFrame:
    frames = [load_mini_batch(mb) for mb in partition([dataset], size, None)]
    return pandas.concat([f for f in frames if len(f)], ignore_index=True)


class TestPathOnly:
    def test_folder_lists_its_files_but_never_the_mltable(self, tmp_path):
        """folder: ./ gives a FileDataset of the data files, without MLTable or hidden files."""
        write(tmp_path / "img" / "a.png", "a")
        write(tmp_path / "img" / ".hidden.png", "h")
        write(tmp_path / "b.png", "b")
        mltable(tmp_path, "paths:\n  - folder: ./\n")

        dataset = mltable_dataset(tmp_path)

        assert isinstance(dataset, FileDataset)
        assert dataset.files() == [str(tmp_path / "b.png"), str(tmp_path / "img" / "a.png")]
        batch = next(iter(partition([dataset], 10, None)))
        assert load_mini_batch(batch) == dataset.files()

    def test_file_and_recursive_pattern(self, tmp_path):
        """file: and pattern: with ** resolve against the MLTable's folder."""
        write(tmp_path / "data" / "x" / "1.csv", "a")
        write(tmp_path / "data" / "2.csv", "a")
        write(tmp_path / "data" / "3.txt", "a")
        write(tmp_path / "one.bin", "a")
        mltable(tmp_path, "paths:\n  - file: ./one.bin\n  - pattern: ./data/**/*.csv\n")

        dataset = mltable_dataset(tmp_path / "MLTable")

        assert dataset.files() == sorted(
            str(p) for p in (tmp_path / "one.bin", tmp_path / "data" / "x" / "1.csv", tmp_path / "data" / "2.csv")
        )

    def test_pattern_matching_everything_excludes_the_mltable(self, tmp_path):
        """A pattern * that matches the MLTable file itself still leaves it out."""
        write(tmp_path / "a.jpg", "a")
        mltable(tmp_path, "paths:\n  - pattern: ./*\n")

        assert mltable_dataset(tmp_path).files() == [str(tmp_path / "a.jpg")]

    def test_extract_becomes_the_partition_format(self, tmp_path):
        """A path-only MLTable's partition format lets partition_keys group its files."""
        for store in ("s1", "s2", "s1"):
            write(tmp_path / store / f"{len(list(tmp_path.rglob('*')))}.png", "x")
        mltable(
            tmp_path,
            """\
            paths:
              - pattern: ./**/*.png
            transformations:
              - extract_columns_from_partition_format:
                  partition_format: "{store}/{name}.png"
            """,
        )

        batches = list(partition([mltable_dataset(tmp_path)], None, ["store"]))

        assert [mb.partition_key_value for mb in batches] == [{"store": "s1"}, {"store": "s2"}]


class TestReadDelimited:
    def test_defaults_and_bare_name(self, tmp_path):
        """- read_delimited reads csv with the first file's header; other files' first rows dropped."""
        csv_files(tmp_path)
        mltable(tmp_path, "paths:\n  - pattern: ./*.csv\ntransformations:\n  - read_delimited\n")

        table = frame(mltable_dataset(tmp_path))

        assert table.to_dict("list") == {"id": [1, 2, 3], "name": ["x", "y", "z"]}

    def test_same_headers_takes_names_from_the_first_file(self, tmp_path):
        """all_files_same_headers: the first line of every other file is dropped whatever it says."""
        write(tmp_path / "a.csv", "id,name\n1,x\n")
        write(tmp_path / "b.csv", "ID,NAME\n2,y\n")
        mltable(
            tmp_path,
            "paths:\n  - pattern: ./*.csv\ntransformations:\n  - read_delimited:\n      header: all_files_same_headers\n",
        )

        assert frame(mltable_dataset(tmp_path)).to_dict("list") == {"id": [1, 2], "name": ["x", "y"]}

    def test_from_first_file_keeps_other_first_rows_as_data(self, tmp_path):
        """from_first_file: only the first file has a header."""
        write(tmp_path / "a.csv", "id,name\n1,x\n")
        write(tmp_path / "b.csv", "2,y\n3,z\n")
        mltable(
            tmp_path,
            "paths:\n  - pattern: ./*.csv\ntransformations:\n  - read_delimited:\n      header: from_first_file\n",
        )
        dataset = mltable_dataset(tmp_path)

        assert frame(dataset).to_dict("list") == {"id": [1, 2, 3], "name": ["x", "y", "z"]}
        assert batches_frame(dataset, 4).to_dict("list") == {"id": [1, 2, 3], "name": ["x", "y", "z"]}

    def test_no_header_names_columns(self, tmp_path):
        """no_header: every line is data, columns are Column1, Column2, ..."""
        write(tmp_path / "a.tsv", "1\tx\n2\ty\n")
        mltable(
            tmp_path,
            'paths:\n  - file: a.tsv\ntransformations:\n  - read_delimited:\n      delimiter: "\\t"\n      header: no_header\n',
        )

        assert frame(mltable_dataset(tmp_path)).to_dict("list") == {"Column1": [1, 2], "Column2": ["x", "y"]}

    def test_different_headers_are_combined_by_name(self, tmp_path):
        """all_files_different_headers: each file its own header, missing columns null, in every mini-batch."""
        write(tmp_path / "a.csv", "id,name\n1,x\n")
        write(tmp_path / "b.csv", "id,score\n2,5\n")
        mltable(
            tmp_path,
            "paths:\n  - pattern: ./*.csv\ntransformations:\n  - read_delimited:\n      header: all_files_different_headers\n",
        )
        dataset = mltable_dataset(tmp_path)

        table = frame(dataset)
        first = load_mini_batch(next(iter(partition([dataset], 1, None))))

        assert list(table.columns) == ["id", "name", "score"]
        assert table["id"].tolist() == [1, 2] and table["score"].isna().tolist() == [True, False]
        assert list(first.columns) == ["id", "name", "score"]

    def test_two_character_delimiter_encoding_and_strings(self, tmp_path):
        """A 2-char delimiter is literal; Azure's encoding names work; infer_column_types: false keeps text."""
        (tmp_path / "a.txt").write_bytes("id||name\n01||é\n".encode("latin-1"))
        mltable(
            tmp_path,
            """\
            paths:
              - file: ./a.txt
            transformations:
              - read_delimited:
                  delimiter: "||"
                  encoding: iso88591
                  infer_column_types: false
            """,
        )

        assert frame(mltable_dataset(tmp_path)).to_dict("list") == {"id": ["01"], "name": ["é"]}

    def test_empty_as_string(self, tmp_path):
        """Empty fields are null unless empty_as_string."""
        write(tmp_path / "a.csv", "a,b\nx,\n")
        body = "paths:\n  - file: a.csv\ntransformations:\n  - read_delimited:\n      empty_as_string: {}\n"

        mltable(tmp_path, body.format("true"))
        kept = frame(mltable_dataset(tmp_path))
        mltable(tmp_path, body.format("false"))
        nulled = frame(mltable_dataset(tmp_path))

        assert kept["b"].tolist() == [""]
        assert nulled["b"].isna().tolist() == [True]

    def test_path_column(self, tmp_path):
        """include_path_column adds the file's path first, under path_column."""
        csv_files(tmp_path)
        mltable(
            tmp_path,
            "paths:\n  - pattern: ./*.csv\ntransformations:\n  - read_delimited:\n"
            "      include_path_column: true\n      path_column: Source\n",
        )

        table = frame(mltable_dataset(tmp_path))

        assert list(table.columns) == ["Source", "id", "name"]
        assert table["Source"].tolist() == [str(tmp_path / "a.csv")] * 2 + [str(tmp_path / "b.csv")]

    def test_bad_parameters(self, tmp_path):
        """Bad parameters fail at load with one line naming them."""
        for body, message in [
            ("read_delimited:\n      delimter: ','", "unknown parameter 'delimter'; did you mean 'delimiter'?"),
            ("read_delimited:\n      header: sometimes", "header must be one of"),
            ("read_delimited:\n      delimiter: ';;;'", "delimiter must be 1 or 2 characters"),
            ("read_delimited:\n      support_multi_line: true", "support_multi_line: true is not supported"),
            ("read_json_lines:\n      invalid_lines: skip", "invalid_lines must be 'error' or 'drop'"),
        ]:
            mltable(tmp_path, f"paths:\n  - file: a.csv\ntransformations:\n  - {body}\n")

            with pytest.raises(ConfigError, match=message) as info:
                mltable_dataset(tmp_path)
            assert "\n" not in str(info.value)


class TestReadJsonLinesAndParquet:
    def test_invalid_lines_drop(self, tmp_path):
        """invalid_lines: drop skips lines that are not JSON objects."""
        write(tmp_path / "a.jsonl", '{"id": 1}\nnot json\n[1]\n{"id": 2}\n')
        mltable(
            tmp_path, "paths:\n  - file: a.jsonl\ntransformations:\n  - read_json_lines:\n      invalid_lines: drop\n"
        )

        assert frame(mltable_dataset(tmp_path))["id"].tolist() == [1, 2]

    def test_invalid_lines_error(self, tmp_path):
        """invalid_lines: error (the default) fails the mini-batch naming the line."""
        write(tmp_path / "a.jsonl", '{"id": 1}\nnot json\n')
        mltable(tmp_path, "paths:\n  - file: a.jsonl\ntransformations:\n  - read_json_lines\n")
        batch = next(iter(partition([mltable_dataset(tmp_path)], None, None)))

        with pytest.raises(ValueError, match="invalid JSON line 'not json'"):
            load_mini_batch(batch)

    def test_parquet_with_path_column(self, tmp_path):
        """read_parquet reads every file; include_path_column names each row's file."""
        for name, ids in (("a", [1, 2]), ("b", [3])):
            pyarrow.parquet.write_table(pyarrow.table({"id": ids}), tmp_path / f"{name}.parquet")
        mltable(
            tmp_path,
            "paths:\n  - pattern: ./*.parquet\ntransformations:\n  - read_parquet:\n      include_path_column: true\n",
        )

        table = frame(mltable_dataset(tmp_path))

        assert table["id"].tolist() == [1, 2, 3]
        assert table["Path"].tolist() == [str(tmp_path / "a.parquet")] * 2 + [str(tmp_path / "b.parquet")]


class TestColumnsAndRows:
    @pytest.fixture
    def sales(self, tmp_path: Path) -> Path:
        for store, brand, day, rows in [
            ("1", "a", "2024/01/02", 3),
            ("1", "b", "2024/01/03", 2),
            ("2", "a", "2024/01/02", 4),
        ]:
            lines = ["qty,price,note"] + [f"{i},{i * 1.5},n{i}" for i in range(rows)]
            write(tmp_path / store / brand / day / "data.csv", "\n".join(lines) + "\n")
        return tmp_path

    def test_extract_columns_including_a_date(self, sales):
        """Partition-format columns come from each row's path, a date key as a datetime column."""
        mltable(
            sales,
            """\
            paths:
              - pattern: ./**/*.csv
            transformations:
              - read_delimited
              - extract_columns_from_partition_format:
                  partition_format: "{Store}/{Brand}/{Day:yyyy/MM/dd}/{file_name}.csv"
            """,
        )

        table = frame(mltable_dataset(sales))

        assert list(table.columns) == ["qty", "price", "note", "Store", "Brand", "Day", "file_name"]
        assert table["Store"].tolist() == ["1"] * 5 + ["2"] * 4
        assert table["Day"].iloc[0] == pandas.Timestamp("2024-01-02")
        assert "Path" not in table.columns

    def test_keep_and_drop_by_name_and_pattern(self, sales):
        """keep_columns/drop_columns take a name, a list, or {pattern, ignore_case, invert}."""
        base = "paths:\n  - pattern: ./**/*.csv\ntransformations:\n  - read_delimited\n"
        cases = [
            ("  - keep_columns: qty\n", ["qty"]),
            ("  - keep_columns: [note, qty]\n", ["note", "qty"]),
            ("  - drop_columns: [note]\n", ["qty", "price"]),
            ("  - keep_columns:\n      pattern: '^Q'\n      ignore_case: true\n", ["qty"]),
            ("  - drop_columns:\n      pattern: '^q'\n      invert: true\n", ["qty"]),
        ]
        for steps, columns in cases:
            mltable(sales, base + steps)

            assert list(frame(mltable_dataset(sales)).columns) == columns, steps

    def test_skip_and_take_across_files(self, sales):
        """skip/take act on the whole table in file order, composed in the order written."""
        mltable(
            sales,
            "paths:\n  - pattern: ./**/*.csv\ntransformations:\n  - read_delimited\n  - skip: 2\n  - take: 5\n  - skip: 1\n",
        )
        whole = frame(mltable_dataset(sales.joinpath("MLTable").parent))

        assert whole["qty"].tolist() == [0, 1, 0, 1]  # rows 3..6 of 0,1,2 | 0,1 | 0,1,2,3

    @pytest.mark.parametrize("size", [1, 20, 40, 10_000])
    @pytest.mark.parametrize("rows", ["", "  - skip: 2\n  - take: 6\n"])
    def test_mini_batches_add_up_to_the_table(self, sales, size, rows):
        """Every mini-batch size, with or without skip/take, gives the evaluated table in order."""
        mltable(
            sales,
            "paths:\n  - pattern: ./**/*.csv\ntransformations:\n  - read_delimited\n"
            "  - extract_columns_from_partition_format:\n      partition_format: '{Store}/{Brand}/{Day:yyyy/MM/dd}/{f}.csv'\n"
            "  - drop_columns: note\n" + rows,
        )
        dataset = mltable_dataset(sales)
        batches = list(partition([dataset], size, None))

        pandas.testing.assert_frame_equal(batches_frame(dataset, size), frame(dataset))
        if rows:
            assert sum(mb.item_count or 0 for mb in batches) == 6
            assert all(mb.item_count == len(load_mini_batch(mb)) for mb in batches)
            assert batches[0].summary().startswith("data.csv rows ")


class TestErrors:
    @pytest.mark.parametrize(
        ("body", "message"),
        [
            (
                "paths:\n  - file: a\ntransform:\n  - skip: 1\n",
                "unknown key 'transform'; did you mean 'transformations'?",
            ),
            ("query_source: {query: x}\n", "query_source, which needs Azure"),
            ("paths:\n  - file: azureml://datastores/d/paths/x.csv\n", "needs Azure; give a local path"),
            ("paths:\n  - folder: wasbs://c@a.blob.core.windows.net/x\n", "needs Azure; give a local path"),
            ("paths:\n  - files: a\n", "each entry of 'paths' must be one of file:, folder:, pattern:"),
            (
                "paths:\n  - file: a\ntransformations:\n  - skip: 1\n  - read_parquet\n",
                "read_parquet must be the first",
            ),
            ("paths:\n  - file: a\ntransformations:\n  - take: 0\n", "take takes an integer >= 1"),
            (
                "paths:\n  - file: a\ntransformations:\n  - keep_columns: x\n",
                "keep_columns needs rows; add read_delimited",
            ),
        ],
    )
    def test_one_line_config_errors(self, tmp_path, body, message):
        """Unknown keys, cloud sources and misplaced steps fail with one line saying what to do."""
        mltable(tmp_path, body)

        with pytest.raises(ConfigError, match=message) as info:
            mltable_dataset(tmp_path)
        assert "\n" not in str(info.value)

    @pytest.mark.parametrize("name", ["filter", "convert_column_types", "take_random_sample", "read_delta_lake"])
    def test_unsupported_transformation(self, tmp_path, name):
        """Transformations outside the subset are named, with the supported list."""
        mltable(tmp_path, f"paths:\n  - file: a.csv\ntransformations:\n  - read_delimited\n  - {name}: x\n")

        with pytest.raises(ConfigError) as info:
            mltable_dataset(tmp_path)

        assert str(info.value).startswith(
            f"MLTable transformation '{name}' in {tmp_path / 'MLTable'} is not supported by pipeobs; supported: read_delimited,"
        )

    def test_keep_columns_naming_a_column_the_table_lacks(self, tmp_path):
        """A misspelt keep_columns name is a one-line error, not a column of nulls; drop of one is let be."""
        csv_files(tmp_path)
        mltable(tmp_path, "paths:\n  - pattern: ./*.csv\ntransformations:\n  - read_delimited\n  - keep_columns: [id, nmae]\n")

        with pytest.raises(ConfigError, match="keep_columns names column 'nmae', which the table does not have; "
                                              "did you mean 'name'?"):
            list(partition([mltable_dataset(tmp_path)], 10, None))
        mltable(tmp_path, "paths:\n  - pattern: ./*.csv\ntransformations:\n  - read_delimited:\n"
                          "      include_path_column: true\n  - drop_columns: [Path, nope]\n  - keep_columns: [id]\n")
        assert list(frame(mltable_dataset(tmp_path)).columns) == ["id"]

    def test_missing_file(self, tmp_path):
        """A folder without an MLTable file says what to give."""
        with pytest.raises(InputError, match="no MLTable file at"):
            mltable_dataset(tmp_path)


class TestSerialisation:
    @pytest.fixture(params=["files", "table"])
    def dataset(self, request, tmp_path) -> Dataset:
        csv_files(tmp_path)
        steps = (
            "transformations:\n  - read_delimited:\n      encoding: utf8\n  - keep_columns: {pattern: i}\n  - take: 2\n"
        )
        mltable(tmp_path, "paths:\n  - pattern: ./*.csv\n" + (steps if request.param == "table" else ""))
        return mltable_dataset(tmp_path)

    def test_dict_round_trip_through_json(self, dataset):
        """to_dict() records the parsed MLTable; from_dict() rebuilds an equal dataset without the file."""
        data = json.loads(json.dumps(dataset.to_dict()))
        Path(dataset.to_dict()["mltable"]["file"]).unlink()

        rebuilt = Dataset.from_dict(data)

        assert rebuilt == dataset and type(rebuilt) is type(dataset)
        assert rebuilt.files() == dataset.files()

    @pytest.mark.parametrize("protocol", PROTOCOLS)
    def test_pickle_round_trip(self, dataset, protocol):
        """Datasets go to worker processes by pickle."""
        assert pickle.loads(pickle.dumps(dataset, protocol)) == dataset

    def test_files_are_the_data_files(self, dataset, tmp_path):
        """files() lists the data for fingerprints; the record holds the MLTable's content."""
        assert dataset.files() == [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]
        assert dataset.to_dict()["mltable"]["file"] == str(tmp_path / "MLTable")
