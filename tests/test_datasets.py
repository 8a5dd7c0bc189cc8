"""Specification of pipeobs.datasets: listing inputs, cutting mini-batches, loading them."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pandas
import pyarrow
import pyarrow.parquet
import pytest

from pipeobs.datasets import (
    Dataset,
    FileDataset,
    MiniBatch,
    MiniBatchContext,
    TabularDataset,
    load_mini_batch,
    mini_batch_context,
    partition,
)
from pipeobs.errors import ConfigError, InputError

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)
ROOT = Path(__file__).resolve().parents[1]


DATASETS = (
    FileDataset.from_files(["a", "b/*.png"], partition_format="{user}/{name}.png"),
    TabularDataset.from_delimited_files("d.csv", separator="|", header=False, encoding="latin1"),
    TabularDataset.from_json_lines_files("d.jsonl"),
    TabularDataset.from_parquet_files("p", partition_format="{year}/{f}.parquet"),
)
BATCHES = (
    MiniBatch(id=0, input_index=0, kind="file", files=("/d/a.png", "/d/b.png"), item_count=2),
    MiniBatch(
        id=1,
        input_index=1,
        kind="csv",
        files=("/d/x.csv",),
        start=10,
        end=99,
        options={"separator": ",", "header": True, "encoding": "utf-8"},
    ),
    MiniBatch(
        id=2,
        input_index=0,
        kind="parquet",
        files=("/d/p.parquet",),
        row_groups=(2, 3),
        item_count=500,
    ),
    MiniBatch(
        id=3,
        input_index=0,
        kind="jsonl",
        files=("/d/u/a.jsonl", "/d/u/b.jsonl"),
        partition_key_value={"user": "u"},
        options={"encoding": "utf-8"},
    ),
)


def touch(path: Path, content: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def write_csv(path: Path, rows: int, first: int = 0, sep: str = ",") -> Path:
    """A CSV with rows of varying width, so ranges end at many different offsets."""
    lines = [sep.join(["id", "name", "score"])]
    lines += [sep.join([str(i), "n" * (i % 13 + 1), str(i * 7)]) for i in range(first, first + rows)]
    return touch(path, ("\n".join(lines) + "\n").encode())


def write_jsonl(path: Path, rows: int) -> Path:
    lines = [json.dumps({"id": i, "text": "t" * (i % 11)}) for i in range(rows)]
    return touch(path, ("\n".join(lines) + "\n").encode())


def write_parquet(path: Path, rows: int, row_group_size: int) -> Path:
    table = pyarrow.table({"id": list(range(rows)), "text": [f"row {i}" * 5 for i in range(rows)]})
    path.parent.mkdir(parents=True, exist_ok=True)
    pyarrow.parquet.write_table(table, path, row_group_size=row_group_size)
    return path


def make_wavs(root: Path) -> list[Path]:
    """The total_file_size.py sample layout: {user}/{season}/{genres}.wav."""
    names = [
        "alice/summer/rock",
        "alice/winter/rock",
        "alice/summer/jazz",
        "bob/summer/rock",
    ]
    return [touch(root / f"{name}.wav", name.encode()) for name in names]


def all_batches(*datasets: Dataset, size: int | None = None, keys=None) -> list[MiniBatch]:
    return list(partition(list(datasets), size, keys))


def loaded_ids(batches: list[MiniBatch]) -> list[int]:
    frames = [load_mini_batch(mb) for mb in batches]
    return [int(i) for frame in frames for i in frame["id"]]


class TestDatasetFiles:
    def test_file_directory_and_glob(self, tmp_path):
        """A file, a directory (recursive) and a recursive glob each name their files."""
        a = touch(tmp_path / "one" / "a.png")
        b = touch(tmp_path / "one" / "deep" / "b.png")
        c = touch(tmp_path / "two" / "c.txt")

        assert FileDataset.from_files(str(c)).files() == [str(c)]
        assert FileDataset.from_files(tmp_path / "one").files() == [str(a), str(b)]
        assert FileDataset.from_files(str(tmp_path / "**" / "*.png")).files() == [
            str(a),
            str(b),
        ]

    def test_list_of_specs_is_sorted_and_deduplicated(self, tmp_path):
        """Several specs give one sorted list, each file once."""
        a = touch(tmp_path / "a.csv")
        b = touch(tmp_path / "b.csv")

        dataset = FileDataset.from_files([b, str(tmp_path), str(tmp_path / "*.csv")])

        assert dataset.files() == [str(a), str(b)]
        assert dataset.paths == [str(b), str(tmp_path), str(tmp_path / "*.csv")]

    def test_hidden_entries_are_skipped_in_directories(self, tmp_path):
        """Hidden files and directories below an input directory are not inputs."""
        visible = touch(tmp_path / "d" / "v.txt")
        touch(tmp_path / "d" / ".hidden.txt")
        touch(tmp_path / "d" / ".cache" / "x.txt")

        assert FileDataset.from_files(tmp_path / "d").files() == [str(visible)]

    def test_glob_matching_a_directory_expands_it(self, tmp_path):
        """A glob that matches a directory contributes the files below it."""
        a = touch(tmp_path / "day1" / "a.txt")
        b = touch(tmp_path / "day2" / "sub" / "b.txt")

        assert FileDataset.from_files(str(tmp_path / "day*")).files() == [
            str(a),
            str(b),
        ]

    def test_relative_specs_become_absolute(self, tmp_path, monkeypatch):
        """Relative specs are kept as written but listed as absolute paths."""
        touch(tmp_path / "rel" / "a.txt")
        monkeypatch.chdir(tmp_path)

        dataset = FileDataset.from_files("rel")

        assert dataset.paths == ["rel"]
        assert dataset.files() == [str(tmp_path / "rel" / "a.txt")]

    def test_missing_input(self, tmp_path):
        """A path that does not exist is named with a hint."""
        missing = str(tmp_path / "nope")

        with pytest.raises(InputError) as info:
            FileDataset.from_files(missing).files()

        assert str(info.value) == f"input '{missing}' does not exist; check the path"

    @pytest.mark.parametrize("spec", ["empty", "empty/*.png", "only_hidden"])
    def test_input_without_files(self, tmp_path, spec):
        """An empty directory, a glob matching nothing or only hidden files is an error."""
        (tmp_path / "empty").mkdir()
        touch(tmp_path / "only_hidden" / ".x")
        path = str(tmp_path / spec)

        with pytest.raises(InputError) as info:
            FileDataset.from_files(path).files()

        assert str(info.value) == f"input '{path}' matched no files"

    def test_unreadable_file(self, tmp_path, monkeypatch):
        """A file that cannot be opened is reported with the system's reason."""
        path = touch(tmp_path / "secret.txt")
        path.chmod(0)
        real_open = os.open

        def deny(name, flags, *args):
            if os.fspath(name) == str(path):
                raise PermissionError(13, "Permission denied", str(name))
            return real_open(name, flags, *args)

        if os.geteuid() == 0:  # root ignores modes; the permission error cannot happen here
            monkeypatch.setattr(os, "open", deny)
        with pytest.raises(InputError) as info:
            FileDataset.from_files(path).files()

        assert str(info.value) == f"input file '{path}' is not readable: Permission denied"

    @pytest.mark.parametrize("bad", [[], "", None, 3, [b"x"]])
    def test_invalid_path_argument(self, bad):
        """Empty or non-path arguments are configuration errors."""
        with pytest.raises(ConfigError):
            FileDataset.from_files(bad)


class TestDatasetOptions:
    def test_kinds_and_options(self):
        """Each constructor sets its kind and the options its reader needs."""
        csv = TabularDataset.from_delimited_files("x", separator=";", header=False, encoding="utf8")

        assert FileDataset.from_files("x").kind == "file"
        assert (csv.kind, csv.options) == (
            "csv",
            {"separator": ";", "header": False, "encoding": "utf-8"},
        )
        assert TabularDataset.from_json_lines_files("x").options == {"encoding": "utf-8"}
        assert TabularDataset.from_parquet_files("x").kind == "parquet"

    def test_azure_encoding_names(self):
        """Azure's encoding names map to Python codecs."""
        names = {
            e: TabularDataset.from_json_lines_files("x", encoding=e).options["encoding"]
            for e in ["utf8bom", "iso88591", "windows1252", "latin1"]
        }

        assert names == {
            "utf8bom": "utf-8-sig",
            "iso88591": "iso8859-1",
            "windows1252": "cp1252",
            "latin1": "iso8859-1",
        }

    @pytest.mark.parametrize("encoding", ["no-such-codec", "utf-16", "utf32"])
    def test_unusable_encoding(self, encoding):
        """Unknown encodings, and ones that cannot be split at newline bytes, are rejected."""
        with pytest.raises(ConfigError, match="encoding"):
            TabularDataset.from_delimited_files("x", encoding=encoding)

    def test_empty_separator(self):
        """A separator must be a non-empty string."""
        with pytest.raises(ConfigError, match="separator"):
            TabularDataset.from_delimited_files("x", separator="")

    def test_partition_keys_in_order(self):
        """partition_keys lists the format's names in order; a leading '/' is ignored."""
        dataset = FileDataset.from_files("x", partition_format="/{user}/{season}/{genres}.wav")

        assert dataset.partition_keys == ["user", "season", "genres"]
        assert FileDataset.from_files("x").partition_keys == []

    @pytest.mark.parametrize(
        "fmt",
        [
            "",
            "/",
            "plain.wav",
            "{a}/{a}.wav",
            "{a/b}.wav",
            "{a}}.wav",
            "{}",
            "{d:MM/dd}",
            5,
        ],
    )
    def test_invalid_partition_format(self, fmt):
        """Formats without keys, with repeated or empty keys, dates without yyyy, or bad braces are rejected."""
        with pytest.raises(ConfigError, match="partition_format"):
            FileDataset.from_files("x", partition_format=fmt)


class TestDatasetSerialisation:
    @pytest.mark.parametrize("dataset", DATASETS, ids=lambda d: d.kind)
    def test_dict_round_trip_through_json(self, dataset):
        """to_dict survives JSON and from_dict rebuilds an equal dataset of the same class."""
        data = json.loads(json.dumps(dataset.to_dict()))

        rebuilt = Dataset.from_dict(data)

        assert rebuilt == dataset
        assert type(rebuilt) is type(dataset)
        assert rebuilt.to_dict() == dataset.to_dict()

    @pytest.mark.parametrize("protocol", PROTOCOLS)
    @pytest.mark.parametrize("dataset", DATASETS, ids=lambda d: d.kind)
    def test_pickle_round_trip(self, dataset, protocol):
        """Datasets pickle with every protocol."""
        assert pickle.loads(pickle.dumps(dataset, protocol)) == dataset

    def test_unknown_kind(self):
        """from_dict rejects a kind it does not know."""
        with pytest.raises(ConfigError, match="unknown dataset kind 'xml'"):
            Dataset.from_dict({"kind": "xml", "paths": ["x"]})


class TestPartitionFiles:
    def test_counts_per_mini_batch(self, tmp_path):
        """mini_batch_size files per mini-batch, the remainder in the last one."""
        for i in range(7):
            touch(tmp_path / f"f{i}.png")

        batches = all_batches(FileDataset.from_files(tmp_path), size=3)

        assert [len(mb.files) for mb in batches] == [3, 3, 1]
        assert [mb.item_count for mb in batches] == [3, 3, 1]
        assert [f for mb in batches for f in mb.files] == sorted(str(p) for p in tmp_path.iterdir())

    def test_default_is_ten_files(self, tmp_path):
        """Without a size, ten files make a mini-batch."""
        for i in range(25):
            touch(tmp_path / f"f{i:02}.png")

        assert [len(mb.files) for mb in all_batches(FileDataset.from_files(tmp_path))] == [10, 10, 5]

    def test_inputs_are_never_mixed(self, tmp_path):
        """Each input is partitioned on its own; ids run on across inputs."""
        for i in range(3):
            touch(tmp_path / "a" / f"{i}.png")
            touch(tmp_path / "b" / f"{i}.png")
        first, second = (
            FileDataset.from_files(tmp_path / "a"),
            FileDataset.from_files(tmp_path / "b"),
        )

        batches = all_batches(first, second, size=2)

        assert [(mb.id, mb.input_index, len(mb.files)) for mb in batches] == [
            (0, 0, 2),
            (1, 0, 1),
            (2, 1, 2),
            (3, 1, 1),
        ]
        assert all(Path(f).parent.name == "ab"[mb.input_index] for mb in batches for f in mb.files)

    def test_is_lazy(self, tmp_path):
        """A missing second input fails only when iteration reaches it."""
        touch(tmp_path / "a.png")
        batches = partition(
            [
                FileDataset.from_files(tmp_path),
                FileDataset.from_files(tmp_path / "gone"),
            ],
            1,
            None,
        )

        assert next(batches).files == (str(tmp_path / "a.png"),)
        with pytest.raises(InputError, match="does not exist"):
            next(batches)

    @pytest.mark.parametrize("size", [0, -1, 1.5, True, "10"])
    def test_invalid_size(self, size):
        """A size that is not a positive int is refused when partition() is called."""
        with pytest.raises(ConfigError, match="mini_batch_size"):
            partition([FileDataset.from_files("anything")], size, None)


class TestPartitionDelimited:
    @pytest.mark.parametrize("size", [1, 40, 500, None])
    def test_every_row_exactly_once(self, tmp_path, size):
        """Loading every mini-batch gives each row once, in order, whatever the size."""
        write_csv(tmp_path / "a.csv", 120)
        write_csv(tmp_path / "b.csv", 80, first=120)

        batches = all_batches(TabularDataset.from_delimited_files(tmp_path), size=size)

        assert loaded_ids(batches) == list(range(200))

    def test_ranges_are_line_aligned_and_cover_the_data(self, tmp_path):
        """Ranges start after the header, end after a newline and tile each file."""
        path = write_csv(tmp_path / "a.csv", 300)
        data = path.read_bytes()

        batches = all_batches(TabularDataset.from_delimited_files(path), size=100)

        assert len(batches) > 10
        assert batches[0].start == data.index(b"\n") + 1
        assert batches[-1].end == len(data)
        assert all(data[mb.end - 1 : mb.end] == b"\n" for mb in batches)
        assert all(a.end == b.start for a, b in itertools.pairwise(batches))
        assert all(mb.end - mb.start >= 100 for mb in batches[:-1])

    def test_ranges_never_cross_files(self, tmp_path):
        """Each mini-batch reads one file, and small files are one mini-batch each."""
        paths = [write_csv(tmp_path / f"{n}.csv", 5) for n in "abc"]

        batches = all_batches(TabularDataset.from_delimited_files(tmp_path), size=10_000)

        assert [mb.files for mb in batches] == [(str(p),) for p in paths]
        assert [mb.end for mb in batches] == [p.stat().st_size for p in paths]

    def test_without_header_the_first_line_is_data(self, tmp_path):
        """header=False: ranges start at 0 and pandas numbers the columns."""
        path = touch(tmp_path / "a.csv", b"1;x\n2;y\n3;z")

        dataset = TabularDataset.from_delimited_files(path, separator=";", header=False)
        batches = all_batches(dataset, size=4)

        assert [(mb.start, mb.end) for mb in batches] == [(0, 4), (4, 8), (8, 11)]
        assert pandas.concat(load_mini_batch(mb) for mb in batches)[0].tolist() == [
            1,
            2,
            3,
        ]

    @pytest.mark.parametrize("content", [b"", b"id,name", b"id,name\n"])
    def test_empty_or_header_only_gives_nothing(self, tmp_path, content):
        """A file without data lines produces no mini-batch."""
        path = touch(tmp_path / "a.csv", content)

        assert all_batches(TabularDataset.from_delimited_files(path)) == []

    def test_crlf_and_no_trailing_newline(self, tmp_path):
        """Windows line ends stay whole and a last line without newline is kept."""
        path = touch(tmp_path / "a.csv", b"id,v\r\n1,a\r\n2,b\r\n3,c")

        batches = all_batches(TabularDataset.from_delimited_files(path), size=1)

        assert loaded_ids(batches) == [1, 2, 3]
        assert [list(load_mini_batch(mb).columns) for mb in batches] == [["id", "v"]] * 3


class TestPartitionJsonLines:
    @pytest.mark.parametrize("size", [1, 64, None])
    def test_every_row_exactly_once(self, tmp_path, size):
        """Line-aligned ranges of JSON Lines files give each record once."""
        write_jsonl(tmp_path / "a.jsonl", 50)
        write_jsonl(tmp_path / "b.jsonl", 30)

        batches = all_batches(TabularDataset.from_json_lines_files(tmp_path), size=size)

        assert loaded_ids(batches) == list(range(50)) + list(range(30))
        assert {mb.kind for mb in batches} == {"jsonl"}

    def test_first_range_starts_at_zero(self, tmp_path):
        """JSON Lines has no header: the first range starts at byte 0."""
        path = write_jsonl(tmp_path / "a.jsonl", 10)

        batches = all_batches(TabularDataset.from_json_lines_files(path), size=50)

        assert batches[0].start == 0
        assert batches[-1].end == path.stat().st_size

    def test_blank_lines_only_give_an_empty_frame(self, tmp_path):
        """A range holding only blank lines loads as an empty DataFrame."""
        path = touch(tmp_path / "a.jsonl", b'{"id": 1}\n\n\n\n')

        frames = [load_mini_batch(mb) for mb in all_batches(TabularDataset.from_json_lines_files(path), size=1)]

        assert [len(frame) for frame in frames] == [1, 0, 0, 0]


class TestPartitionParquet:
    def test_row_groups_are_accumulated_to_the_size(self, tmp_path):
        """A file with many row groups is split; each mini-batch but the last reaches the size."""
        path = write_parquet(tmp_path / "p.parquet", rows=1000, row_group_size=100)
        meta = pyarrow.parquet.read_metadata(path)
        sizes = [
            sum(meta.row_group(g).column(c).total_compressed_size for c in range(meta.num_columns))
            for g in range(meta.num_row_groups)
        ]
        target = int(sizes[0] * 2.5)

        batches = all_batches(TabularDataset.from_parquet_files(path), size=target)

        assert [g for mb in batches for g in mb.row_groups] == list(range(10))
        assert 2 < len(batches) < 10
        assert all(sum(sizes[g] for g in mb.row_groups) >= target for mb in batches[:-1])
        assert [mb.item_count for mb in batches] == [100 * len(mb.row_groups) for mb in batches]
        assert loaded_ids(batches) == list(range(1000))

    def test_small_size_gives_one_row_group_each(self, tmp_path):
        """With a one-byte size every row group is its own mini-batch."""
        path = write_parquet(tmp_path / "p.parquet", rows=50, row_group_size=10)

        batches = all_batches(TabularDataset.from_parquet_files(path), size=1)

        assert [mb.row_groups for mb in batches] == [(0,), (1,), (2,), (3,), (4,)]

    def test_single_row_group_is_one_mini_batch(self, tmp_path):
        """A file with one row group cannot be split."""
        path = write_parquet(tmp_path / "p.parquet", rows=200, row_group_size=1000)

        batches = all_batches(TabularDataset.from_parquet_files(path), size=1)

        assert [(mb.row_groups, mb.item_count) for mb in batches] == [((0,), 200)]

    @pytest.mark.parametrize("damage", ["garbage", "empty", "footer"])
    def test_corrupt_file(self, tmp_path, damage):
        """A file that is not Parquet, or has a damaged footer, is an input error naming it."""
        good = write_parquet(tmp_path / "a.parquet", rows=5, row_group_size=5).read_bytes()
        content = {
            "garbage": b"this is not parquet at all",
            "empty": b"",
            "footer": good[:4] + b"x" * (len(good) - 12) + good[-8:],
        }[damage]
        bad = touch(tmp_path / "b.parquet", content)

        with pytest.raises(InputError) as info:
            all_batches(TabularDataset.from_parquet_files(tmp_path))

        assert str(info.value).startswith(f"input file '{bad}' is not a valid Parquet file: ")
        assert "\n" not in str(info.value)


class TestPartitionKeys:
    def test_one_mini_batch_per_combination(self, tmp_path):
        """Files sharing the keys' values form one mini-batch, in order of first appearance."""
        make_wavs(tmp_path)
        dataset = FileDataset.from_files(tmp_path, partition_format="{user}/{season}/{genres}.wav")

        batches = all_batches(dataset, keys=["user", "genres"])

        assert [
            (
                mb.partition_key_value,
                [Path(f).relative_to(tmp_path).as_posix() for f in mb.files],
            )
            for mb in batches
        ] == [
            ({"user": "alice", "genres": "jazz"}, ["alice/summer/jazz.wav"]),
            (
                {"user": "alice", "genres": "rock"},
                ["alice/summer/rock.wav", "alice/winter/rock.wav"],
            ),
            ({"user": "bob", "genres": "rock"}, ["bob/summer/rock.wav"]),
        ]
        assert [mb.id for mb in batches] == [0, 1, 2]
        assert [mb.item_count for mb in batches] == [1, 2, 1]

    def test_size_is_ignored(self, tmp_path):
        """With partition keys the mini-batch size plays no part."""
        make_wavs(tmp_path)
        dataset = FileDataset.from_files(tmp_path, partition_format="/{user}/{season}/{genres}.wav")

        assert len(all_batches(dataset, size=1, keys=["user"])) == 2

    def test_format_matches_on_segment_boundaries(self, tmp_path):
        """A key never swallows part of a parent directory name."""
        touch(tmp_path / "xa_b" / "c.wav")
        dataset = FileDataset.from_files(tmp_path, partition_format="a_{x}/{y}.wav")

        with pytest.raises(InputError) as info:
            all_batches(dataset, keys=["x"])

        assert str(info.value) == (
            f"input file '{tmp_path / 'xa_b' / 'c.wav'}' does not match the partition_format 'a_{{x}}/{{y}}.wav'"
        )

    def test_keys_must_be_in_the_format(self):
        """Keys the format does not name are refused with Azure-like wording."""
        dataset = FileDataset.from_files("x", partition_format="{user}/{season}/{genres}.wav")

        with pytest.raises(ConfigError) as info:
            partition([dataset], None, ["user", "mood"])

        assert str(info.value) == (
            "partition_keys ['user', 'mood'] are not all in the partition_format keys ['user', 'season', 'genres']."
        )

    def test_dataset_without_format(self):
        """Partition keys on an unpartitioned dataset say how to fix it."""
        with pytest.raises(ConfigError, match="no partition_format; create it with"):
            partition([FileDataset.from_files("x")], None, ["user"])

    def test_tabular_partition_reads_whole_files(self, tmp_path):
        """A tabular partition mini-batch holds all its files and loads them together."""
        for store, brand, first in [
            ("1", "a", 0),
            ("1", "b", 10),
            ("2", "a", 20),
            ("1", "a", 30),
        ]:
            write_csv(
                tmp_path / f"store={store}" / f"brand={brand}" / f"part{first}.csv",
                10,
                first,
            )
        dataset = TabularDataset.from_delimited_files(
            tmp_path, partition_format="store={Store}/brand={Brand}/{part}.csv"
        )

        batches = all_batches(dataset, size=1, keys=["Store", "Brand"])

        assert [(mb.partition_key_value, len(mb.files)) for mb in batches] == [
            ({"Store": "1", "Brand": "a"}, 2),
            ({"Store": "1", "Brand": "b"}, 1),
            ({"Store": "2", "Brand": "a"}, 1),
        ]
        assert load_mini_batch(batches[0])["id"].tolist() == list(range(10)) + list(range(30, 40))

    def test_parquet_partition_counts_rows(self, tmp_path):
        """Parquet partition mini-batches know their row count and load every row group."""
        write_parquet(tmp_path / "2020" / "a.parquet", rows=30, row_group_size=10)
        write_parquet(tmp_path / "2021" / "a.parquet", rows=7, row_group_size=5)
        dataset = TabularDataset.from_parquet_files(tmp_path, partition_format="{year}/{name}.parquet")

        batches = all_batches(dataset, keys=["year"])

        assert [(mb.partition_key_value, mb.item_count) for mb in batches] == [
            ({"year": "2020"}, 30),
            ({"year": "2021"}, 7),
        ]
        assert len(load_mini_batch(batches[0])) == 30


class TestMiniBatch:
    @pytest.mark.parametrize("protocol", PROTOCOLS)
    @pytest.mark.parametrize("mb", BATCHES, ids=lambda mb: mb.kind)
    def test_pickle_round_trip(self, mb, protocol):
        """Descriptors pickle with every protocol."""
        assert pickle.loads(pickle.dumps(mb, protocol)) == mb

    @pytest.mark.parametrize("mb", BATCHES, ids=lambda mb: mb.kind)
    def test_json_round_trip(self, mb):
        """to_json is one line of JSON and from_json gives an equal descriptor."""
        text = mb.to_json()

        assert "\n" not in text
        assert MiniBatch.from_json(text) == mb
        assert isinstance(MiniBatch.from_json(text).files, tuple)

    @pytest.mark.parametrize("mb", [
        *BATCHES,
        MiniBatch(7, 1, "file", ("/data/é \"quoted\" \\ back", "b\n"), item_count=2),
        MiniBatch(8, 0, "file", (), item_count=None),
        MiniBatch(9, 0, "csv", ("a.csv",), start=5, end=90),
    ], ids=lambda mb: f"{mb.kind}-{mb.id}")
    def test_json_text_is_sorted_and_compact(self, mb):
        """The text the ledger stores (and a resumed run compares) is json.dumps's with sorted keys and no
        spaces, whichever way it is made."""
        fields = {f.name: getattr(mb, f.name) for f in dataclasses.fields(mb)}

        assert mb.to_json() == json.dumps(fields, sort_keys=True, separators=(",", ":"))

    def test_hashable_despite_dicts(self):
        """Descriptors can be set members even with partition values and options."""
        assert len({*BATCHES, *[MiniBatch.from_json(mb.to_json()) for mb in BATCHES]}) == 4

    def test_copies_its_inputs(self):
        """Later edits to the caller's list or dict do not reach the descriptor."""
        files, values = ["a"], {"k": "v"}
        mb = MiniBatch(id=0, input_index=0, kind="file", files=files, partition_key_value=values)

        files.append("b")
        values["k"] = "changed"

        assert (mb.files, mb.partition_key_value) == (("a",), {"k": "v"})

    def test_unknown_kind(self):
        """A kind outside file/csv/jsonl/parquet is a programming error."""
        with pytest.raises(ValueError, match="kind"):
            MiniBatch(id=0, input_index=0, kind="xml", files=("a",))

    @pytest.mark.parametrize(
        ("mb", "text"),
        [
            (
                MiniBatch(
                    id=0,
                    input_index=0,
                    kind="file",
                    files=("/a.png", "/b.png", "/c.png"),
                ),
                "3 files: a.png, b.png, c.png",
            ),
            (
                MiniBatch(
                    id=0,
                    input_index=0,
                    kind="file",
                    files=tuple(f"/{i}.png" for i in range(5)),
                ),
                "5 files: 0.png, 1.png, 2.png, ... (+2 more)",
            ),
            (
                MiniBatch(id=0, input_index=0, kind="file", files=("/a.png",)),
                "1 file: a.png",
            ),
            (
                MiniBatch(
                    id=0,
                    input_index=0,
                    kind="csv",
                    files=("/d/data.csv",),
                    start=0,
                    end=1048576,
                ),
                "data.csv bytes 0-1048576",
            ),
            (
                MiniBatch(
                    id=0,
                    input_index=0,
                    kind="parquet",
                    files=("/part.parquet",),
                    row_groups=(0, 1, 2, 3),
                ),
                "part.parquet row groups 0-3",
            ),
            (
                MiniBatch(
                    id=0,
                    input_index=0,
                    kind="parquet",
                    files=("/part.parquet",),
                    row_groups=(2,),
                ),
                "part.parquet row group 2",
            ),
            (
                MiniBatch(
                    id=0,
                    input_index=0,
                    kind="csv",
                    files=("/a.csv", "/b.csv"),
                    partition_key_value={"Store": "1", "Brand": "a"},
                ),
                "2 files: a.csv, b.csv (Store=1, Brand=a)",
            ),
        ],
    )
    def test_summary(self, mb, text):
        """summary() names the inputs briefly."""
        assert mb.summary() == text


class TestLoadMiniBatch:
    def test_file_kind_gives_paths(self):
        """File mini-batches load as a list of path strings."""
        mb = MiniBatch(id=0, input_index=0, kind="file", files=("/a", "/b"))

        assert load_mini_batch(mb) == ["/a", "/b"]

    def test_csv_range_has_the_right_rows_and_header_names(self, tmp_path):
        """A byte range in the middle loads exactly its rows, with the header's column names."""
        path = write_csv(tmp_path / "a.csv", 10, sep="\t")
        data = path.read_bytes()
        start = data.index(b"\n3\t") + 1
        end = data.index(b"\n6\t") + 1
        mb = MiniBatch(
            id=0,
            input_index=0,
            kind="csv",
            files=(str(path),),
            start=start,
            end=end,
            options={"separator": "\t", "header": True, "encoding": "utf-8"},
        )

        frame = load_mini_batch(mb)

        assert list(frame.columns) == ["id", "name", "score"]
        assert frame["id"].tolist() == [3, 4, 5]
        assert frame["score"].tolist() == [21, 28, 35]

    def test_csv_encoding_with_bom(self, tmp_path):
        """The encoding option decodes header and data; a BOM does not leak into names."""
        path = touch(tmp_path / "a.csv", "\ufeffnom,ville\n1,Zürich\n2,Genève\n".encode("utf-8"))

        batches = all_batches(TabularDataset.from_delimited_files(path, encoding="utf8bom"), size=1)

        assert pandas.concat(map(load_mini_batch, batches)).to_dict("list") == {
            "nom": [1, 2],
            "ville": ["Zürich", "Genève"],
        }

    def test_parquet_row_groups(self, tmp_path):
        """Parquet mini-batches load only their row groups."""
        path = write_parquet(tmp_path / "p.parquet", rows=30, row_group_size=10)
        mb = MiniBatch(id=0, input_index=0, kind="parquet", files=(str(path),), row_groups=(1, 2))

        assert load_mini_batch(mb)["id"].tolist() == list(range(10, 30))

    def test_corrupt_data_raises_the_readers_error(self, tmp_path):
        """Bad rows raise pandas' own exception for the caller to record."""
        path = touch(tmp_path / "a.csv", b"a,b\n1,2\n3,4,5,6\n")
        (mb,) = all_batches(TabularDataset.from_delimited_files(path))

        with pytest.raises(pandas.errors.ParserError):
            load_mini_batch(mb)


class TestMiniBatchContext:
    def test_context_holds_values_and_filtered_dataset(self, tmp_path):
        """The context carries the key values and a dataset of only the partition's files."""
        make_wavs(tmp_path)
        dataset = FileDataset.from_files(tmp_path, partition_format="{user}/{season}/{genres}.wav")
        mb = all_batches(dataset, keys=["user", "genres"])[1]

        context = mini_batch_context(mb, dataset)

        assert isinstance(context, MiniBatchContext)
        assert context.partition_key_value == {"user": "alice", "genres": "rock"}
        assert isinstance(context.dataset, FileDataset)
        assert context.dataset.files() == list(mb.files)
        assert context.dataset.partition_format == dataset.partition_format
        assert dataset.paths == [str(tmp_path)]

    @pytest.mark.parametrize("protocol", PROTOCOLS)
    def test_pickles(self, protocol):
        """Contexts pickle, so a worker can receive one."""
        context = MiniBatchContext({"k": "v"}, TabularDataset.from_parquet_files("x"))

        assert pickle.loads(pickle.dumps(context, protocol)) == context


class TestImport:
    def test_import_is_light(self):
        """Importing the module loads neither pandas nor pyarrow."""
        code = "import sys, pipeobs.datasets; print(sorted({'pandas', 'pyarrow'} & set(sys.modules)))"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }

        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )

        assert result.stdout.strip() == "[]"


def test_a_run_lists_its_inputs_once_and_the_next_run_anew(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fingerprint, the recorded environment and the partitioning share one listing per run; a later
    run of the same step sees files added since."""
    from pipeobs.config import ParallelRunConfig
    from pipeobs.step import ParallelRunStep

    (tmp_path / "data").mkdir()
    for index in range(3):
        (tmp_path / "data" / f"{index}.txt").write_text("x\n")
    (tmp_path / "score.py").write_text("def run(mini_batch):\n    return mini_batch\n")
    dataset = FileDataset.from_files(str(tmp_path / "data"))
    listings = []
    real = FileDataset._list_files
    monkeypatch.setattr(FileDataset, "_list_files", lambda self: listings.append(1) or real(self))
    config = ParallelRunConfig(entry_script=str(tmp_path / "score.py"), mini_batch_size="1",
                               process_count_per_node=1)
    step = ParallelRunStep("listed-once", config, [dataset], allow_reuse=False)
    assert listings == []  # made: its inputs are checked to exist, not listed
    first = step.run(tmp_path / "runs")
    assert (first.mini_batches_total, len(listings)) == (3, 1)
    (tmp_path / "data" / "3.txt").write_text("x\n")
    second = step.run(tmp_path / "runs")
    assert (second.mini_batches_total, len(listings)) == (4, 2)
