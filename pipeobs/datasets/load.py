"""In the worker: what ``run(mini_batch, mini_batch_context)`` receives for a MiniBatch.

A file mini-batch is a list of paths; a tabular one is a DataFrame read from its byte range or
row groups. pandas and pyarrow are imported inside the functions that read them.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeobs.datasets.batch import MiniBatch, _reads_whole_files
from pipeobs.datasets.inputs import Dataset
from pipeobs.datasets.tabular import _next_line_end

if TYPE_CHECKING:
    import pandas


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
