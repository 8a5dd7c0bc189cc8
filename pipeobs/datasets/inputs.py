"""The dataset classes, and how their path specs become the sorted list of input files.

A dataset names its inputs (files, directories, globs) and how to read them; the files are
listed lazily, so a config can be built offline. Its ``partition_format`` is compiled by
:mod:`pipeobs.datasets.keys`.
"""

from __future__ import annotations

import codecs
import copy
import glob
import os
import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from pipeobs.datasets.keys import _compile_format
from pipeobs.errors import ConfigError, InputError

if TYPE_CHECKING:
    import pandas

PathSpec = str | os.PathLike[str] | Iterable[str | os.PathLike[str]]

KINDS = ("file", "csv", "jsonl", "parquet")

# Azure's encoding names that Python's codec registry does not know.
_AZURE_ENCODINGS = {
    "utf8bom": "utf-8-sig",
    "utf-8bom": "utf-8-sig",
    "iso88591": "iso8859-1",
    "windows1252": "cp1252",
}
_GLOB_MAGIC = re.compile(r"[*?[]")


class Dataset:
    """Inputs of one kind, named by path specs, listed lazily so a config can be built offline."""

    kind = ""

    def __init__(
        self,
        path: PathSpec,
        partition_format: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.paths = _path_specs(path)
        self._listing: list[str] | None = None
        self.partition_format = partition_format
        self.options = dict(options or {})
        if partition_format is not None:
            if not isinstance(partition_format, str):
                raise ConfigError(f"partition_format must be a str, got {partition_format!r}")
            _compile_format(partition_format)  # fail at construction, not mid-job

    @property
    def partition_keys(self) -> list[str]:
        """The key names in ``partition_format``, in order ([] without a format)."""
        if self.partition_format is None:
            return []
        return list(_compile_format(self.partition_format)[1])

    def files(self) -> list[str]:
        """Absolute paths of every input file, sorted so mini-batch ids are reproducible.

        Listed (and checked readable) once: a run's fingerprint, its recorded environment and its
        partitioning see the same files; :meth:`relist` makes the next call look again."""
        if self._listing is None:
            self._listing = self._list_files()
        return list(self._listing)

    def check_exists(self) -> None:
        """Each path spec names at least one file (the errors of :meth:`files`), without listing them all:
        a step checks its inputs when it is made and lists them when it runs."""
        for spec in self.paths:
            if os.path.isdir(spec):
                if next(_iter_files_below(spec), None) is None:
                    raise InputError(f"input {spec!r} matched no files")
            elif not os.path.exists(spec):
                _expand_spec(spec)  # a glob: its matches (or the error saying there are none)

    def relist(self) -> None:
        """Forget the listing: the next :meth:`files` looks at the file system again (a new run)."""
        self._listing = None

    def _list_files(self) -> list[str]:
        found: set[str] = set()
        for spec in self.paths:
            found.update(_expand_spec(spec))
        paths = sorted(found)
        for path in paths:
            _check_readable(path)
        return paths

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description, saved with the job config and read back on ``--resume``."""
        return {
            "kind": self.kind,
            "paths": list(self.paths),
            "partition_format": self.partition_format,
            "options": dict(self.options),
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Dataset:
        """Rebuild a dataset through its public constructor, so the same checks apply."""
        builders = {
            "file": FileDataset.from_files,
            "csv": TabularDataset.from_delimited_files,
            "jsonl": TabularDataset.from_json_lines_files,
            "parquet": TabularDataset.from_parquet_files,
        }
        if data.get("mltable"):
            from pipeobs.datasets.mltable import _from_spec

            return _from_spec(data["mltable"])
        kind = data.get("kind")
        if kind not in builders:
            raise ConfigError(f"unknown dataset kind {kind!r}; expected one of {list(KINDS)}")
        build: Any = builders[kind]
        options = data.get("options") or {}
        return build(data["paths"], partition_format=data.get("partition_format"), **options)

    def _restricted_to(self, files: Iterable[str]) -> Dataset:
        """A copy of this dataset that names only ``files`` (for a mini-batch's context)."""
        clone = copy.copy(self)
        clone.paths = list(files)
        clone._listing = None
        clone.options = dict(self.options)
        return clone

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Dataset):
            return NotImplemented
        return type(self) is type(other) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable attributes

    def __repr__(self) -> str:
        fmt = f", partition_format={self.partition_format!r}" if self.partition_format else ""
        return f"{type(self).__name__}(kind={self.kind!r}, paths={self.paths!r}{fmt})"


class FileDataset(Dataset):
    """Files handed to ``run()`` as local paths, ``mini_batch_size`` files at a time."""

    kind = "file"

    @classmethod
    def from_files(cls, path: PathSpec, partition_format: str | None = None) -> FileDataset:
        """Files, directories (recursively, hidden entries skipped) or globs, as Azure's."""
        return cls(path, partition_format)


class TabularDataset(Dataset):
    """Rows handed to ``run()`` as one DataFrame per mini-batch."""

    def __init__(
        self,
        path: PathSpec,
        kind: str,
        partition_format: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        if kind not in KINDS[1:]:
            raise ConfigError(f"unknown tabular kind {kind!r}; expected one of {list(KINDS[1:])}")
        self.kind = kind
        super().__init__(path, partition_format, options)

    @property
    def row_window(self) -> tuple[int, int | None]:
        """[start, stop) of the whole table's rows that are read: all of them here."""
        return 0, None

    def _reader_options(self, files: list[str]) -> dict[str, Any]:
        """What each mini-batch carries to read its rows (the format, to add its key columns)."""
        if self.partition_format is None:
            return dict(self.options)
        return {**self.options, "partition_format": self.partition_format}

    def _header_files(self, files: list[str]) -> set[str]:
        """The files whose first line is a header, not data."""
        return set(files) if self.kind == "csv" and self.options.get("header") else set()

    def to_pandas_dataframe(self) -> pandas.DataFrame:
        """The whole table in one DataFrame, as the concatenation of its mini-batches gives it."""
        from pipeobs.datasets.load import _concat, _finish, _windowed_files

        files = self.files()
        options = self._reader_options(files)
        frames = [
            _finish(raw.iloc[first:last].reset_index(drop=True), path, options)
            for path, raw, first, last in _windowed_files(self.kind, options, files, self.row_window)
        ]
        return _concat(frames)

    def partition_by(self, partition_keys: list[str], target: str | os.PathLike[str]) -> TabularDataset:
        """Write the rows under ``target`` as ``<value>/.../part-<n>.parquet`` by the keys' values
        (Azure's ``partition_by``), and return a dataset over them whose partition_format names
        those keys, so ``partition_keys`` group it by path without reading the data."""
        from pipeobs.datasets.partitioning import _write_partitions

        keys = _key_list(partition_keys)
        folder = os.path.abspath(os.fspath(target))
        if os.path.exists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
            raise ConfigError(f"partition_by target {folder!r} exists and is not an empty folder; choose a new one")
        _write_partitions(self, keys, folder)
        fmt = "/".join(f"{{{key}}}" for key in keys) + "/part-*.parquet"
        return TabularDataset.from_parquet_files(folder, partition_format=fmt)

    @classmethod
    def from_delimited_files(
        cls,
        path: PathSpec,
        separator: str = ",",
        header: bool = True,
        encoding: str = "utf-8",
        partition_format: str | None = None,
    ) -> TabularDataset:
        """CSV-like files; quoted fields must not span lines (Azure's default too)."""
        if not isinstance(separator, str) or not separator:
            raise ConfigError(f"separator must be a non-empty string, got {separator!r}")
        options = {
            "separator": separator,
            "header": bool(header),
            "encoding": _codec(encoding),
        }
        return cls(path, "csv", partition_format, options)

    @classmethod
    def from_json_lines_files(
        cls,
        path: PathSpec,
        encoding: str = "utf-8",
        partition_format: str | None = None,
    ) -> TabularDataset:
        """JSON Lines files: one JSON object per line."""
        return cls(path, "jsonl", partition_format, {"encoding": _codec(encoding)})

    @classmethod
    def from_parquet_files(cls, path: PathSpec, partition_format: str | None = None) -> TabularDataset:
        """Parquet files, split by row groups."""
        return cls(path, "parquet", partition_format)


def _key_list(keys: Any) -> list[str]:
    if isinstance(keys, str) or not keys or not all(isinstance(key, str) and key for key in keys):
        raise ConfigError(f"partition_keys must be a non-empty list of column names, got {keys!r}")
    if len(set(keys)) != len(keys):
        raise ConfigError(f"partition_keys {keys} repeat a column")
    return list(keys)


def _path_specs(path: PathSpec) -> list[str]:
    """Normalise one spec or a list of them to strings, keeping them as the user wrote them."""
    items = [path] if isinstance(path, (str, os.PathLike)) else path
    try:
        specs = [os.fspath(item) for item in items]  # type: ignore[union-attr]
    except TypeError:
        raise ConfigError(f"path must be a str, an os.PathLike or a list of them, got {path!r}") from None
    if not specs or not all(isinstance(spec, str) and spec for spec in specs):
        raise ConfigError(f"path must name at least one file, directory or glob, got {path!r}")
    return specs


def _codec(encoding: str) -> str:
    """Resolve an encoding (Azure's names too) to one that splits safely at b"\\n"."""
    name = _AZURE_ENCODINGS.get(str(encoding).lower(), encoding)
    try:
        codec = codecs.lookup(name)
        ascii_compatible = codecs.decode(b"\n,", codec.name) == "\n,"
    except (LookupError, TypeError, UnicodeDecodeError):
        raise ConfigError(f"unknown encoding {encoding!r}") from None
    if not ascii_compatible:
        raise ConfigError(
            f"encoding {encoding!r} is not supported: tabular inputs are split at newline bytes, "
            "which needs an ASCII-compatible encoding (utf-8, latin-1, cp1252, ...)"
        )
    return codec.name


def _expand_spec(spec: str) -> list[str]:
    """The absolute regular files one spec names; raises InputError when there are none."""
    if os.path.isdir(spec):
        files = _files_below(spec)
    elif os.path.exists(spec):
        return [os.path.abspath(spec)]
    elif _GLOB_MAGIC.search(spec):
        matches = glob.glob(spec, recursive=True)
        files = [found for match in matches for found in _files_at(match)]
    else:
        raise InputError(f"input {spec!r} does not exist; check the path")
    if not files:
        raise InputError(f"input {spec!r} matched no files")
    return files


def _files_at(path: str) -> list[str]:
    """A glob match: itself when a file, the files below it when a directory."""
    if os.path.isdir(path):
        return _files_below(path)
    return [os.path.abspath(path)] if os.path.isfile(path) else []


def _files_below(top: str) -> list[str]:
    """Regular files below ``top``, skipping hidden names (.git, .ipynb_checkpoints, ._x)
    that tools leave beside data and that would otherwise become failing mini-batches."""
    return list(_iter_files_below(top))


def _iter_files_below(top: str) -> Iterator[str]:
    folders = [os.path.abspath(top)]
    while folders:  # scandir: the directory entry's type, not a stat per file (a symlink is followed)
        try:
            entries = list(os.scandir(folders.pop()))
        except OSError:
            continue  # as os.walk: an unreadable folder below the input is skipped
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                folders.append(entry.path)
            elif entry.is_file():
                yield entry.path


def _check_readable(path: str) -> None:
    """Fail before the job starts rather than as a failed mini-batch per unreadable file."""
    try:
        # O_NONBLOCK: a named pipe given as an input must not hang the listing.
        os.close(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)))
    except OSError as exc:
        raise InputError(f"input file {path!r} is not readable: {exc.strerror or exc}") from None
