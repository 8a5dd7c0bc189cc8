"""Specification of partition_keys over data columns, v1 key columns in frames, and partition_by."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas
import pytest

from pipeobs.datasets import (
    Dataset,
    TabularDataset,
    load_mini_batch,
    mini_batch_context,
    mltable_dataset,
    partition,
)
from pipeobs.errors import ConfigError, InputError
from tests.conftest import RunJob


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def regions(root: Path) -> Path:
    """Two files whose rows interleave the regions, so groups span files."""
    write(root / "a.csv", "id,region,qty\n1,north,5\n2,south,6\n3,north,7\n")
    write(root / "b.csv", "id,region,qty\n4,east,1\n5,north,2\n")
    return root


def groups(dataset: Dataset, keys: list[str]) -> list[tuple[dict[str, str] | None, list[int], int | None]]:
    return [
        (mb.partition_key_value, load_mini_batch(mb)["id"].tolist(), mb.item_count)
        for mb in partition([dataset], None, keys)
    ]


class TestGroupByDataColumns:
    def test_plain_tabular_dataset_groups_rows_by_a_column(self, tmp_path):
        """A TabularDataset without partition_format gets one mini-batch per value, in order of first appearance."""
        dataset = TabularDataset.from_delimited_files(regions(tmp_path))

        assert groups(dataset, ["region"]) == [
            ({"region": "north"}, [1, 3, 5], 3),
            ({"region": "south"}, [2], 1),
            ({"region": "east"}, [4], 1),
        ]

    def test_two_columns_and_values_as_text(self, tmp_path):
        """Key values reach mini_batch_context as strings, numbers included."""
        dataset = TabularDataset.from_delimited_files(regions(tmp_path))
        batches = list(partition([dataset], None, ["region", "qty"]))

        context = mini_batch_context(batches[0], dataset)

        assert len(batches) == 5
        assert context.partition_key_value == {"region": "north", "qty": "5"}
        assert context.dataset.files() == [str(tmp_path / "a.csv")]

    def test_unknown_column(self, tmp_path):
        """A key that is not a column fails with one line naming the file and its columns."""
        dataset = TabularDataset.from_delimited_files(regions(tmp_path))

        with pytest.raises(InputError) as info:
            list(partition([dataset], None, ["country"]))

        assert str(info.value) == (
            f"partition_keys ['country'] are not columns of input file '{tmp_path / 'a.csv'}'; "
            "its columns are ['id', 'region', 'qty']"
        )

    def test_jsonl_and_parquet_group_too(self, tmp_path):
        """Every tabular kind groups by its columns."""
        frame = pandas.DataFrame({"id": [1, 2, 3], "region": ["n", "s", "n"]})
        frame.to_json(tmp_path / "a.jsonl", orient="records", lines=True)
        frame.to_parquet(tmp_path / "a.parquet")

        for dataset in (
            TabularDataset.from_json_lines_files(tmp_path / "a.jsonl"),
            TabularDataset.from_parquet_files(tmp_path / "a.parquet"),
        ):
            assert groups(dataset, ["region"]) == [({"region": "n"}, [1, 3], 2), ({"region": "s"}, [2], 1)]

    def test_mltable_extracted_columns(self, tmp_path):
        """MLTable columns made by extract_columns_from_partition_format group rows, Azure's 1a layout."""
        for store, brand, first in [("1", "a", 0), ("1", "b", 10), ("2", "a", 20)]:
            write(tmp_path / store / brand / "partitioned_data.csv", f"id\n{first}\n{first + 1}\n")
        write(
            tmp_path / "MLTable",
            textwrap.dedent(
                """\
                paths:
                  - pattern: ./**/*.csv
                transformations:
                  - read_delimited
                  - extract_columns_from_partition_format:
                      partition_format: "{Store}/{Brand}/{file_name}.{extension}"
                """
            ),
        )
        dataset = mltable_dataset(tmp_path)

        batches = list(partition([dataset], None, ["Store", "Brand"]))
        first = load_mini_batch(batches[0])

        assert [mb.partition_key_value for mb in batches] == [
            {"Store": "1", "Brand": "a"},
            {"Store": "1", "Brand": "b"},
            {"Store": "2", "Brand": "a"},
        ]
        assert first.to_dict("list") == {
            "id": [0, 1],
            "Store": ["1", "1"],
            "Brand": ["a", "a"],
            "file_name": ["partitioned_data", "partitioned_data"],
            "extension": ["csv", "csv"],
        }

    def test_mltable_groups_respect_skip_and_take(self, tmp_path):
        """With skip/take, a group holds only rows inside the window."""
        regions(tmp_path)
        write(
            tmp_path / "MLTable",
            "paths:\n  - pattern: ./*.csv\ntransformations:\n  - read_delimited\n  - skip: 1\n  - take: 3\n",
        )

        assert groups(mltable_dataset(tmp_path), ["region"]) == [
            ({"region": "south"}, [2], 1),
            ({"region": "north"}, [3], 1),
            ({"region": "east"}, [4], 1),
        ]


class TestFormatKeyColumns:
    def test_v1_partition_format_keys_are_columns(self, tmp_path):
        """A v1 TabularDataset with partition_format hands run() its key columns, from the path."""
        write(tmp_path / "2024" / "north" / "d.csv", "id,qty\n1,5\n")
        dataset = TabularDataset.from_delimited_files(tmp_path, partition_format="{year}/{region}/{name}.csv")

        for keys in (None, ["region"]):
            (batch,) = partition([dataset], None, keys)
            assert load_mini_batch(batch).to_dict("list") == {
                "id": [1],
                "qty": [5],
                "year": ["2024"],
                "region": ["north"],
                "name": ["d"],
            }

    def test_a_column_the_data_has_is_not_duplicated(self, tmp_path):
        """A key the data already holds keeps the data's column."""
        write(tmp_path / "north" / "d.csv", "id,region\n1,NORTH\n")
        dataset = TabularDataset.from_delimited_files(tmp_path, partition_format="{region}/{name}.csv")

        (batch,) = partition([dataset], None, None)

        assert load_mini_batch(batch).to_dict("list") == {"id": [1], "region": ["NORTH"], "name": ["d"]}

    def test_date_key_is_a_datetime_column(self, tmp_path):
        """{day:yyyy/MM/dd} spans folders and becomes a datetime column; its key value stays text."""
        write(tmp_path / "2024" / "01" / "31" / "d.csv", "id\n1\n")
        dataset = TabularDataset.from_delimited_files(tmp_path, partition_format="{day:yyyy/MM/dd}/d.csv")

        (batch,) = partition([dataset], None, ["day"])

        assert batch.partition_key_value == {"day": "2024/01/31"}
        assert load_mini_batch(batch)["day"].tolist() == [pandas.Timestamp("2024-01-31")]


class TestPartitionBy:
    def test_round_trip(self, tmp_path):
        """partition_by writes one folder per value and returns a dataset the keys group by path."""
        source = TabularDataset.from_delimited_files(regions(tmp_path / "src"))

        written = source.partition_by(["region"], tmp_path / "out")

        assert written.partition_format == "{region}/part-*.parquet"
        assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.parquet")) == [
            "east/part-00001.parquet",
            "north/part-00000.parquet",
            "north/part-00001.parquet",
            "south/part-00000.parquet",
        ]
        by_region = {
            mb.partition_key_value["region"]: sorted(load_mini_batch(mb)["id"].tolist())
            for mb in partition([written], None, ["region"])
            if mb.partition_key_value
        }
        assert by_region == {"east": [4], "north": [1, 3, 5], "south": [2]}
        assert sorted(written.to_pandas_dataframe()["id"].tolist()) == [1, 2, 3, 4, 5]

    def test_target_must_be_new_or_empty(self, tmp_path):
        """An existing non-empty target is refused before anything is written."""
        write(tmp_path / "out" / "keep.txt", "x")
        source = TabularDataset.from_delimited_files(regions(tmp_path / "src"))

        with pytest.raises(ConfigError, match="exists and is not an empty folder; choose a new one"):
            source.partition_by(["region"], tmp_path / "out")

    def test_unknown_column(self, tmp_path):
        """A key that is not a column is named."""
        source = TabularDataset.from_delimited_files(regions(tmp_path / "src"))

        with pytest.raises(InputError, match=r"partition_keys \['country'\] are not columns"):
            source.partition_by(["country"], tmp_path / "out")


ENTRY = """
def run(mini_batch, mini_batch_context):
    values = mini_batch_context.partition_key_value
    for key, value in values.items():
        assert mini_batch[key].astype(str).eq(value).all(), (key, value, mini_batch)
    files = len(mini_batch_context.dataset.files())
    return [f"{values['Store']}/{values['Brand']} rows={len(mini_batch)} ids={sorted(mini_batch['id'])} files={files}"]
"""


class TestEndToEnd:
    def test_workers_get_one_group_and_its_key_values(self, tmp_path: Path, run_job: RunJob) -> None:
        """Real worker processes run one mini-batch per (Store, Brand) group of an MLTable input."""
        data = tmp_path / "data"
        for store, brand, ids in [("1", "a", [1, 2]), ("2", "a", [3]), ("1", "b", [4])]:
            rows = "".join(f"{i},{brand if i != 2 else 'b'}\n" for i in ids)
            write(data / store / brand / "part.csv", "id,Brand\n" + rows)
        write(
            data / "MLTable",
            "paths:\n  - pattern: ./**/*.csv\ntransformations:\n  - read_delimited\n"
            "  - extract_columns_from_partition_format:\n      partition_format: '{Store}/{folder}/{file_name}.csv'\n",
        )

        job = run_job(ENTRY, inputs=[mltable_dataset(data)], partition_keys=["Store", "Brand"])

        assert job.result.ok, job.driver_log()
        assert sorted(job.output_lines()) == [
            "1/a rows=1 ids=[1] files=1",
            "1/b rows=2 ids=[2, 4] files=2",
            "2/a rows=1 ids=[3] files=1",
        ]
