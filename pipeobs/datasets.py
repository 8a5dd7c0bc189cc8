"""Input datasets and their mini-batches, the way ParallelRunStep cuts them.

A dataset names its inputs (files, directories, globs) and how to read them. :func:`partition`
turns datasets into :class:`MiniBatch` descriptors: small, picklable values that say *which*
bytes a worker reads, never the data itself, so the driver can keep millions of them in its
ledger and send them to worker processes cheaply. :func:`load_mini_batch` runs in the worker
and turns a descriptor into what ``run(mini_batch)`` receives (a list of paths or a DataFrame).

The rules follow Azure (reference section 2.8): file inputs are cut by file count, csv and
JSON-lines inputs by approximate byte size on line boundaries without crossing files, and
partition keys make one mini-batch per distinct combination of values. Parquet goes beyond
Azure, which never splits a single file: here a large file is split by row groups.

pandas and pyarrow are imported inside the functions that need them, because every worker
process imports this module and most jobs read plain files.
"""

from __future__ import annotations

import codecs
import copy
import functools
import glob
import io
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from typing import TYPE_CHECKING, Any

from pipeobs.errors import ConfigError, InputError

if TYPE_CHECKING:
    import pandas
    import pyarrow.parquet

PathSpec = str | os.PathLike[str] | Iterable[str | os.PathLike[str]]

DEFAULT_FILES_PER_MINI_BATCH = 10
DEFAULT_BYTES_PER_MINI_BATCH = 1024 * 1024
KINDS = ("file", "csv", "jsonl", "parquet")

_SCAN_BLOCK = 64 * 1024
# Azure's encoding names that Python's codec registry does not know.
_AZURE_ENCODINGS = {
    "utf8bom": "utf-8-sig",
    "iso88591": "iso8859-1",
    "windows1252": "cp1252",
}
_FORMAT_FIELD = re.compile(r"\{([^{}]*)\}")
_GLOB_MAGIC = re.compile(r"[*?[]")


# --------------------------------------------------------------------------- datasets


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
        """Absolute paths of every input file, sorted so mini-batch ids are reproducible."""
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
    files = []
    for root, dirs, names in os.walk(top):
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        for name in names:
            path = os.path.join(root, name)
            if not name.startswith(".") and os.path.isfile(path):
                files.append(os.path.abspath(path))
    return files


def _check_readable(path: str) -> None:
    """Fail before the job starts rather than as a failed mini-batch per unreadable file."""
    try:
        # O_NONBLOCK: a named pipe given as an input must not hang the listing.
        os.close(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)))
    except OSError as exc:
        raise InputError(f"input file {path!r} is not readable: {exc.strerror or exc}") from None


# --------------------------------------------------------------------------- partition_format


@functools.lru_cache(maxsize=128)
def _compile_format(fmt: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    """Compile "{user}/{season}/{genres}.wav" into a regex anchored at the path's end."""
    if not isinstance(fmt, str) or not fmt.strip("/"):
        raise ConfigError(f"partition_format must be a non-empty string, got {fmt!r}")
    body = fmt.removeprefix("/")
    keys: list[str] = []
    parts = [r"(?:^|/)"]
    position = 0
    for match in _FORMAT_FIELD.finditer(body):
        parts.append(_format_literal(fmt, body[position : match.start()]))
        keys.append(_format_key(fmt, match.group(1), keys))
        parts.append(r"([^/]+?)")
        position = match.end()
    parts.append(_format_literal(fmt, body[position:]))
    if not keys:
        raise ConfigError(f"partition_format {fmt!r} names no keys; write them as {{name}}")
    return re.compile("".join(parts) + "$"), tuple(keys)


def _format_literal(fmt: str, text: str) -> str:
    if "{" in text or "}" in text:
        raise ConfigError(f"partition_format {fmt!r} has an unbalanced '{{' or '}}'")
    return re.escape(text)


def _format_key(fmt: str, name: str, seen: list[str]) -> str:
    if not name or "/" in name:
        raise ConfigError(f"partition_format {fmt!r} has an empty or invalid key {{{name}}}")
    if ":" in name:
        raise ConfigError(
            f"partition_format {fmt!r}: date formats like {{{name}}} are not supported; use plain {{name}} keys"
        )
    if name in seen:
        raise ConfigError(f"partition_format {fmt!r} repeats the key {{{name}}}")
    return name


def _partition_values(fmt: str, path: str) -> dict[str, str]:
    """The key values one file's path carries; a file outside the format is an input error."""
    pattern, keys = _compile_format(fmt)
    match = pattern.search(path.replace(os.sep, "/"))
    if match is None:
        raise InputError(f"input file {path!r} does not match the partition_format {fmt!r}")
    return dict(zip(keys, match.groups(), strict=True))


# --------------------------------------------------------------------------- mini-batches


@dataclass(frozen=True)
class MiniBatch:
    """Which inputs one ``run()`` call gets: a descriptor, cheap to store, pickle and send.

    Tabular mini-batches hold one file and a byte range (csv, jsonl) or row groups (parquet),
    except partition-key mini-batches, which read all their files whole.
    """

    id: int
    input_index: int
    kind: str
    files: tuple[str, ...]
    start: int = 0
    end: int = 0
    row_groups: tuple[int, ...] = ()
    partition_key_value: dict[str, str] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    item_count: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"MiniBatch kind must be one of {list(KINDS)}, got {self.kind!r}")
        # Copies, so that a caller's later edits cannot change a sent or stored descriptor.
        object.__setattr__(self, "files", tuple(self.files))
        object.__setattr__(self, "row_groups", tuple(self.row_groups))
        object.__setattr__(self, "options", dict(self.options))
        if self.partition_key_value is not None:
            object.__setattr__(self, "partition_key_value", dict(self.partition_key_value))

    def __hash__(self) -> int:
        keys = self.partition_key_value
        return hash(
            (self.id, self.input_index, self.kind, self.files, self.start, self.end)
            + (self.row_groups, None if keys is None else tuple(sorted(keys.items())))
        )

    def to_json(self) -> str:
        """One line of JSON, for the ledger and for ``--resume``."""
        values = {f: getattr(self, f) for f in _MINI_BATCH_FIELDS}  # asdict() deep-copies: 50 us a call
        return json.dumps(values, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> MiniBatch:
        """The inverse of :meth:`to_json`."""
        return cls(**json.loads(text))

    def summary(self, limit: int = 3) -> str:
        """Short text naming the inputs, for logs and error messages."""
        if self.kind == "file" or _reads_whole_files(self):
            text = _name_files(self.files, limit)
        elif self.kind == "parquet":
            text = f"{_base(self.files[0])} {_span('row group', self.row_groups)}"
        else:
            text = f"{_base(self.files[0])} bytes {self.start}-{self.end}"
        if self.partition_key_value:
            values = ", ".join(f"{k}={v}" for k, v in self.partition_key_value.items())
            text += f" ({values})"
        return text


def _reads_whole_files(mb: MiniBatch) -> bool:
    """Partition-key mini-batches read whole files; others read a range of one file."""
    return mb.partition_key_value is not None


def _base(path: str) -> str:
    return os.path.basename(path) or path


def _name_files(files: tuple[str, ...], limit: int) -> str:
    noun = "file" if len(files) == 1 else "files"
    names = ", ".join(_base(path) for path in files[: max(limit, 0)])
    more = f", ... (+{len(files) - limit} more)" if len(files) > limit else ""
    return f"{len(files)} {noun}: {names}{more}"


def _span(noun: str, numbers: tuple[int, ...]) -> str:
    if len(numbers) == 1:
        return f"{noun} {numbers[0]}"
    return f"{noun}s {numbers[0]}-{numbers[-1]}"


# --------------------------------------------------------------------------- partition


def partition(
    datasets: list[Dataset],
    mini_batch_size: int | None,
    partition_keys: list[str] | None,
) -> Iterator[MiniBatch]:
    """Cut the inputs into mini-batches, lazily, with ids 0, 1, ... in a reproducible order.

    Configuration errors (a bad size, partition keys a dataset cannot provide) raise here, at
    the call; input errors (missing, empty, corrupt files) raise while iterating, as soon as
    the input that has them is reached. The iterator may be abandoned early.
    ``mini_batch_size`` is ignored with ``partition_keys`` (v2 lets the keys win).
    """
    keys = list(partition_keys or [])
    if not keys:
        _check_size(mini_batch_size)
    for dataset in datasets:
        if keys:
            _check_partition_keys(dataset, keys)
    return _generate(list(datasets), mini_batch_size, keys)


def _check_size(size: int | None) -> None:
    if size is None:
        return
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"mini_batch_size must be a positive integer, got {size!r}")


def _check_partition_keys(dataset: Dataset, keys: list[str]) -> None:
    if dataset.partition_format is None:
        raise ConfigError(
            f"partition_keys {keys} need a partitioned dataset, but input {dataset.paths} has no "
            "partition_format; create it with e.g. "
            "FileDataset.from_files(path, partition_format='{user}/{season}/{genres}.wav')"
        )
    fmt_keys = dataset.partition_keys
    if not set(keys) <= set(fmt_keys):
        raise ConfigError(f"partition_keys {keys} are not all in the partition_format keys {fmt_keys}.")


def _generate(datasets: list[Dataset], size: int | None, keys: list[str]) -> Iterator[MiniBatch]:
    next_id = 0
    for index, dataset in enumerate(datasets):
        for fields in _dataset_batches(dataset, size, keys):
            yield MiniBatch(
                id=next_id,
                input_index=index,
                kind=dataset.kind,
                options=dataset.options,
                **fields,
            )
            next_id += 1


def _dataset_batches(dataset: Dataset, size: int | None, keys: list[str]) -> Iterator[dict]:
    """The fields of each mini-batch of one input, apart from id, input and kind."""
    if keys:
        return _by_partition_keys(dataset, keys)
    if dataset.kind == "file":
        return _by_file_count(dataset.files(), size or DEFAULT_FILES_PER_MINI_BATCH)
    target = size or DEFAULT_BYTES_PER_MINI_BATCH
    if dataset.kind == "parquet":
        return _by_row_groups(dataset.files(), target)
    header = dataset.kind == "csv" and bool(dataset.options.get("header"))
    return _by_line_ranges(dataset.files(), target, header)


def _by_file_count(files: list[str], count: int) -> Iterator[dict]:
    for first in range(0, len(files), count):
        chunk = tuple(files[first : first + count])
        yield {"files": chunk, "item_count": len(chunk)}


def _by_partition_keys(dataset: Dataset, keys: list[str]) -> Iterator[dict]:
    """One mini-batch per distinct combination of values, in order of first appearance."""
    assert dataset.partition_format is not None  # checked by partition()
    groups: dict[tuple[str, ...], list[str]] = {}
    for path in dataset.files():
        values = _partition_values(dataset.partition_format, path)
        groups.setdefault(tuple(values[key] for key in keys), []).append(path)
    for combination, files in groups.items():
        if dataset.kind == "file":
            count: int | None = len(files)
        elif dataset.kind == "parquet":
            count = sum(_parquet_metadata(path).num_rows for path in files)
        else:
            count = None
        yield {
            "files": tuple(files),
            "partition_key_value": dict(zip(keys, combination, strict=True)),
            "item_count": count,
        }


def _by_line_ranges(files: list[str], target: int, header: bool) -> Iterator[dict]:
    for path in files:
        for start, end in _line_ranges(path, target, header):
            yield {"files": (path,), "start": start, "end": end}


def _line_ranges(path: str, target: int, header: bool) -> Iterator[tuple[int, int]]:
    """Line-aligned ranges of about ``target`` bytes, read block by block, header excluded."""
    try:
        with open(path, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            start = _next_line_end(stream, 0, size) if header else 0
            while start < size:
                end = size
                if size - start > target:
                    end = _next_line_end(stream, start + target - 1, size)
                yield start, end
                start = end
    except OSError as exc:
        raise InputError(f"input file {path!r} is not readable: {exc.strerror or exc}") from None


def _next_line_end(stream: io.BufferedReader, position: int, size: int) -> int:
    """The offset just past the first newline at or after ``position`` (``size`` if none)."""
    stream.seek(position)
    while position < size:
        block = stream.read(_SCAN_BLOCK)
        if not block:
            break
        newline = block.find(b"\n")
        if newline >= 0:
            return position + newline + 1
        position += len(block)
    return size


def _by_row_groups(files: list[str], target: int) -> Iterator[dict]:
    for path in files:
        for groups, rows in _row_group_runs(_parquet_metadata(path), target):
            yield {"files": (path,), "row_groups": groups, "item_count": rows}


def _row_group_runs(metadata: pyarrow.parquet.FileMetaData, target: int) -> Iterator[tuple[tuple[int, ...], int]]:
    """Consecutive row groups whose compressed size just reaches ``target``, with row counts."""
    groups: list[int] = []
    size = rows = 0
    for index in range(metadata.num_row_groups):
        group = metadata.row_group(index)
        groups.append(index)
        rows += group.num_rows
        size += sum(group.column(c).total_compressed_size for c in range(group.num_columns))
        if size >= target:
            yield tuple(groups), rows
            groups, size, rows = [], 0, 0
    if groups:
        yield tuple(groups), rows


def _parquet_metadata(path: str) -> pyarrow.parquet.FileMetaData:
    import pyarrow
    import pyarrow.parquet

    try:
        return pyarrow.parquet.read_metadata(path)
    except (FileNotFoundError, PermissionError) as exc:
        raise InputError(f"input file {path!r} is not readable: {exc.strerror or exc}") from None
    except (pyarrow.ArrowException, OSError) as exc:
        # A damaged footer surfaces as a bare OSError ("Couldn't deserialize thrift").
        reason = " ".join(str(exc).split())
        raise InputError(f"input file {path!r} is not a valid Parquet file: {reason}") from None


# --------------------------------------------------------------------------- loading


def load_mini_batch(mb: MiniBatch) -> list[str] | pandas.DataFrame:
    """What ``run(mini_batch)`` receives; the reader's own exception escapes on bad data."""
    if mb.kind == "file":
        return list(mb.files)
    if _reads_whole_files(mb):
        import pandas

        frames = [_read_whole(mb.kind, path, mb.options) for path in mb.files]
        return frames[0] if len(frames) == 1 else pandas.concat(frames, ignore_index=True)
    if mb.kind == "parquet":
        return _read_row_groups(mb.files[0], mb.row_groups)
    if mb.kind == "csv":
        return _read_csv_range(mb.files[0], mb.start, mb.end, mb.options)
    return _read_jsonl_range(mb.files[0], mb.start, mb.end, mb.options)


def _read_whole(kind: str, path: str, options: dict[str, Any]) -> pandas.DataFrame:
    if kind == "parquet":
        return _read_row_groups(path, None)
    size = os.path.getsize(path)
    if kind == "csv":
        header = bool(options.get("header", True))
        return _read_csv_range(path, _header_end(path, header), size, options)
    return _read_jsonl_range(path, 0, size, options)


def _header_end(path: str, header: bool) -> int:
    if not header:
        return 0
    with open(path, "rb") as stream:
        return _next_line_end(stream, 0, os.fstat(stream.fileno()).st_size)


def _read_bytes(path: str, start: int, end: int) -> bytes:
    with open(path, "rb") as stream:
        stream.seek(start)
        return stream.read(end - start)


def _read_csv_range(path: str, start: int, end: int, options: dict[str, Any]) -> pandas.DataFrame:
    """Header line + data bytes, so every range keeps the file's column names."""
    import pandas

    header = bool(options.get("header", True))
    head = _read_bytes(path, 0, _header_end(path, header))
    separator = options.get("separator", ",")
    return pandas.read_csv(
        io.BytesIO(head + _read_bytes(path, start, end)),
        sep=separator,
        header=0 if header else None,
        encoding=options.get("encoding", "utf-8"),
        engine="python" if len(separator) > 1 else "c",
    )


def _read_jsonl_range(path: str, start: int, end: int, options: dict[str, Any]) -> pandas.DataFrame:
    import pandas

    text = _read_bytes(path, start, end).decode(options.get("encoding", "utf-8"))
    if not text.strip():
        return pandas.DataFrame()
    return pandas.read_json(io.StringIO(text), lines=True)


def _read_row_groups(path: str, row_groups: tuple[int, ...] | None) -> pandas.DataFrame:
    import pyarrow.parquet

    parquet_file = pyarrow.parquet.ParquetFile(path)
    if row_groups is None:
        return parquet_file.read().to_pandas()
    return parquet_file.read_row_groups(list(row_groups)).to_pandas()


# --------------------------------------------------------------------------- context


_MINI_BATCH_FIELDS = tuple(f.name for f in dataclass_fields(MiniBatch))


@dataclass
class MiniBatchContext:
    """The second argument of ``run(mini_batch, mini_batch_context)`` with partition keys."""

    partition_key_value: dict[str, str]
    dataset: Dataset


def mini_batch_context(mb: MiniBatch, dataset: Dataset) -> MiniBatchContext:
    """Azure's context: the partition's key values and the input filtered to its files."""
    return MiniBatchContext(
        partition_key_value=dict(mb.partition_key_value or {}),
        dataset=dataset._restricted_to(mb.files),
    )
