"""In the worker: what ``run(mini_batch, mini_batch_context)`` receives for a MiniBatch.

A file mini-batch is a list of paths; a tabular one is a DataFrame read from its byte range or
row groups, or from whole files (partition keys, and an MLTable's ``skip``/``take`` row windows),
then through the per-row column steps: a v1 ``partition_format``'s key columns, or an MLTable's
path column, extracted columns and keep/drop. A mini-batch grouped by data columns keeps only the
rows holding its key values. pandas and pyarrow are imported inside the functions that read them.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeobs.datasets.batch import MiniBatch, _reads_whole_files
from pipeobs.datasets.inputs import Dataset
from pipeobs.datasets.keys import _date_formats, _partition_values
from pipeobs.datasets.tabular import _next_line_end
from pipeobs.errors import InputError

if TYPE_CHECKING:
    import pandas


def load_mini_batch(mb: MiniBatch) -> list[str] | pandas.DataFrame:
    """What ``run(mini_batch)`` receives; the reader's own exception escapes on bad data."""
    if mb.kind == "file":
        return list(mb.files)
    if _reads_whole_files(mb):
        windows = mb.options.get("rows") or [None] * len(mb.files)
        frames = [_read_file(mb.kind, mb.options, path, window) for path, window in zip(mb.files, windows, strict=True)]
        frame = _concat(frames)
        if mb.options.get("filter_rows") and mb.partition_key_value:
            frame = _matching_rows(frame, mb.partition_key_value, mb.summary())
        return frame
    path = mb.files[0]
    if mb.kind == "parquet":
        raw = _read_row_groups(path, mb.row_groups)
    elif "table" in mb.options:
        raw = _read_table_range(mb.kind, path, mb.start, mb.end, mb.options["table"])
    elif mb.kind == "csv":
        raw = _read_csv_range(path, mb.start, mb.end, mb.options)
    else:
        raw = _read_jsonl_range(path, mb.start, mb.end, mb.options)
    return _finish(raw, path, mb.options)


def _read_file(kind: str, options: dict[str, Any], path: str, window: list[int] | None) -> pandas.DataFrame:
    """One file's rows (``window``: [start, stop) of them), through the column steps."""
    raw = _read_raw(kind, options, path)
    if window is not None:
        raw = raw.iloc[window[0] : window[1]].reset_index(drop=True)
    return _finish(raw, path, options)


def _read_raw(kind: str, options: dict[str, Any], path: str) -> pandas.DataFrame:
    """One whole file as its reader gives it, before any column step."""
    plan = options.get("table")
    if plan is None:
        return _read_whole(kind, path, options)
    if kind == "parquet":
        return _read_row_groups(path, None)
    size = os.path.getsize(path)
    start = _header_end(path, True) if kind == "csv" and _has_header(path, plan) else 0
    return _read_table_range(kind, path, start, size, plan)


def _windowed_files(
    kind: str, options: dict[str, Any], files: list[str], window: tuple[int, int | None]
) -> Iterator[tuple[str, pandas.DataFrame, int, int]]:
    """Each file's raw rows with the [first, last) of them inside the table's row window.

    One file is held at a time; files after the window's end are not read.
    """
    start, stop = window
    offset = 0
    for path in files:
        if stop is not None and offset >= stop:
            return
        raw = _read_raw(kind, options, path)
        first = max(start - offset, 0)
        last = len(raw) if stop is None else min(len(raw), stop - offset)
        offset += len(raw)
        yield path, raw, first, max(first, last)


def _finish(frame: pandas.DataFrame, path: str, options: dict[str, Any]) -> pandas.DataFrame:
    """The per-row column steps: a v1 ``partition_format``'s columns, or an MLTable's plan."""
    plan = options.get("table")
    if plan is None:
        fmt = options.get("partition_format")
        return _add_format_columns(frame, path, fmt) if fmt else frame
    if plan.get("columns"):
        frame = frame.reindex(columns=plan["columns"])
    if plan["path_column"] and plan["path_column"] not in frame.columns:
        frame.insert(0, plan["path_column"], path)
    for step, value in plan["steps"]:
        if step == "extract":
            frame = _add_format_columns(frame, path, value)
        elif step == "keep":
            frame = frame.reindex(columns=_selected(frame.columns, value))
        else:
            frame = frame.drop(columns=_selected(frame.columns, value), errors="ignore")
    return frame


def _selected(columns: Iterable[Any], selector: list[str] | dict[str, Any]) -> list[Any]:
    """Column names a keep/drop selector names: listed names, or those a pattern finds."""
    if isinstance(selector, list):
        return list(selector)
    pattern = re.compile(selector["pattern"], re.IGNORECASE if selector["ignore_case"] else 0)
    return [name for name in columns if bool(pattern.search(str(name))) != selector["invert"]]


def _add_format_columns(frame: pandas.DataFrame, path: str, fmt: str) -> pandas.DataFrame:
    """The format's keys as columns (a date key as datetime), unless the data has them."""
    import pandas

    dates = _date_formats(fmt)
    for key, text in _partition_values(fmt, path).items():
        if key not in frame.columns:
            frame[key] = pandas.to_datetime(text, format=dates[key]) if key in dates else text
    return frame


def _key_texts(frame: pandas.DataFrame, keys: list[str], where: str) -> pandas.DataFrame:
    """The partition keys' values as Azure's strings ("" for null), one column per key."""
    import pandas

    missing = [key for key in keys if key not in frame.columns]
    if missing:
        columns = [str(name) for name in frame.columns]
        raise InputError(f"partition_keys {missing} are not columns of {where}; its columns are {columns}")
    return pandas.DataFrame(
        {key: [("" if pandas.isna(v) else str(v)) for v in frame[key].tolist()] for key in keys}, index=frame.index
    )


def _matching_rows(frame: pandas.DataFrame, values: dict[str, str], where: str) -> pandas.DataFrame:
    keys = list(values)
    texts = _key_texts(frame, keys, where)
    mask = (texts[keys] == [values[key] for key in keys]).all(axis=1)
    return frame[mask].reset_index(drop=True)


def _concat(frames: list[pandas.DataFrame]) -> pandas.DataFrame:
    """Frames one after another; empty ones left out (pandas warns on them), columns unioned."""
    import pandas

    filled = [frame for frame in frames if len(frame)] or frames[:1]
    if not filled:
        return pandas.DataFrame()
    return filled[0] if len(filled) == 1 else pandas.concat(filled, ignore_index=True)


def _has_header(path: str, plan: dict[str, Any]) -> bool:
    mode = plan["reader"]["header"]
    if mode == "no_header":
        return False
    return mode != "from_first_file" or path == plan.get("first_file")


def _read_table_range(kind: str, path: str, start: int, end: int, plan: dict[str, Any]) -> pandas.DataFrame:
    if kind == "jsonl":
        return _read_table_jsonl(path, start, end, plan["reader"])
    return _read_table_csv(path, start, end, plan)


def _csv_arguments(reader: dict[str, Any]) -> dict[str, Any]:
    delimiter = reader["delimiter"]
    arguments: dict[str, Any] = {
        "sep": re.escape(delimiter) if len(delimiter) > 1 else delimiter,
        "encoding": reader["encoding"],
        "engine": "python" if len(delimiter) > 1 else "c",
        "keep_default_na": False,
    }
    if reader["empty_as_string"]:
        arguments["na_filter"] = False
    else:
        arguments["na_values"] = [""]
    if not reader["infer_column_types"]:
        arguments["dtype"] = str
    return arguments


def _csv_header(path: str, reader: dict[str, Any]) -> list[str]:
    """The column names in a file's first line (pandas' deduplication applied)."""
    import pandas

    head = _read_bytes(path, 0, _header_end(path, True))
    if not head.strip():
        return []
    arguments = _csv_arguments(reader) | {"dtype": str}
    return [str(name) for name in pandas.read_csv(io.BytesIO(head), header=0, nrows=0, **arguments).columns]


def _read_table_csv(path: str, start: int, end: int, plan: dict[str, Any]) -> pandas.DataFrame:
    """An MLTable csv range, named by the header mode: own header, the first file's, or Column1..."""
    import pandas

    reader = plan["reader"]
    mode = reader["header"]
    data = _read_bytes(path, start, end)
    if mode == "all_files_different_headers":
        head = _read_bytes(path, 0, _header_end(path, True))
        if not head.strip():
            return pandas.DataFrame()
        return pandas.read_csv(io.BytesIO(head + data), header=0, **_csv_arguments(reader))
    if not data.strip():
        return pandas.DataFrame(columns=plan.get("names") or [])
    if mode == "no_header":
        frame = pandas.read_csv(io.BytesIO(data), header=None, **_csv_arguments(reader))
        frame.columns = [f"Column{number + 1}" for number in range(len(frame.columns))]
        return frame
    return pandas.read_csv(io.BytesIO(data), header=None, names=plan["names"], **_csv_arguments(reader))


def _read_table_jsonl(path: str, start: int, end: int, reader: dict[str, Any]) -> pandas.DataFrame:
    """JSON objects one per line; other lines raise or, with ``invalid_lines: drop``, are skipped."""
    import pandas

    records = []
    for line in _read_bytes(path, start, end).decode(reader["encoding"]).split("\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif reader["invalid_lines"] != "drop":
            raise ValueError(
                f"{path}: invalid JSON line {line.strip()[:80]!r}; set invalid_lines: drop to skip such lines"
            )
    return pandas.DataFrame.from_records(records) if records else pandas.DataFrame()


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
