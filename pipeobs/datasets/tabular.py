"""Cutting tabular inputs: line-aligned byte ranges of csv and JSON-lines files, parquet row groups,
and row ranges of whole files when an MLTable's ``skip``/``take`` make row positions matter.

pyarrow is imported only when a parquet file is read.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pipeobs.errors import InputError

if TYPE_CHECKING:
    import pyarrow.parquet

_SCAN_BLOCK = 64 * 1024


def _by_line_ranges(files: list[str], target: int, header_files: set[str]) -> Iterator[dict]:
    for path in files:
        for start, end in _line_ranges(path, target, path in header_files):
            yield {"files": (path,), "start": start, "end": end}


def _by_row_windows(
    kind: str, options: dict[str, Any], files: list[str], target: int, window: tuple[int, int | None]
) -> Iterator[dict]:
    """Row ranges of each file inside the table's skip/take window, about ``target`` bytes each.

    The driver reads one file at a time to count its rows; a worker reads the mini-batch's file
    and keeps its range, so no process holds more than one file.
    """
    from pipeobs.datasets.load import _windowed_files

    for path, raw, first, last in _windowed_files(kind, options, files, window):
        step = max(1, target * len(raw) // max(os.path.getsize(path), 1))
        for start in range(first, last, step):
            end = min(start + step, last)
            yield {"files": (path,), "options": {**options, "rows": [[start, end]]}, "item_count": end - start}


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
