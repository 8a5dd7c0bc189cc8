"""Partition keys: ``partition_format`` patterns, and one mini-batch per combination of values,
found in file paths (a format naming the keys) or in the rows' columns (tabular inputs)."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pipeobs.datasets.tabular import _parquet_metadata
from pipeobs.errors import ConfigError, InputError

if TYPE_CHECKING:
    import pandas

    from pipeobs.datasets.inputs import Dataset, TabularDataset

_FORMAT_FIELD = re.compile(r"\{([^{}]*)\}")
# Azure's date parts: the regex each matches and its strptime directive.
_DATE_PARTS = {
    "yyyy": (r"\d{4}", "%Y"),
    "MM": (r"\d{2}", "%m"),
    "dd": (r"\d{2}", "%d"),
    "HH": (r"\d{2}", "%H"),
    "mm": (r"\d{2}", "%M"),
    "ss": (r"\d{2}", "%S"),
}
_DATE_TOKEN = re.compile(r"(yyyy|MM|dd|HH|mm|ss)")


@functools.lru_cache(maxsize=128)
def _compile_format(fmt: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    """Compile "{user}/{season}/{genres}.wav" into a regex anchored at the path's end.

    ``{name}`` is one path segment, ``{name:yyyy/MM/dd}`` a date spanning segments (parsed by
    :func:`_date_formats`), ``*`` any text within a segment.
    """
    if not isinstance(fmt, str) or not fmt.strip("/"):
        raise ConfigError(f"partition_format must be a non-empty string, got {fmt!r}")
    body = fmt.removeprefix("/")
    keys: list[str] = []
    parts = [r"(?:^|/)"]
    position = 0
    for match in _FORMAT_FIELD.finditer(body):
        parts.append(_format_literal(fmt, body[position : match.start()]))
        name, _, date = match.group(1).partition(":")
        keys.append(_format_key(fmt, name, keys))
        parts.append(f"({_date_regex(fmt, date)})" if date else r"([^/]+?)")
        position = match.end()
    parts.append(_format_literal(fmt, body[position:]))
    if not keys:
        raise ConfigError(f"partition_format {fmt!r} names no keys; write them as {{name}}")
    return re.compile("".join(parts) + "$"), tuple(keys)


@functools.lru_cache(maxsize=128)
def _date_formats(fmt: str) -> dict[str, str]:
    """The ``strptime`` format of each date key, e.g. {"day": "%Y/%m/%d"} for {day:yyyy/MM/dd}."""
    _compile_format(fmt)
    formats = {}
    for match in _FORMAT_FIELD.finditer(fmt):
        name, _, date = match.group(1).partition(":")
        if date:
            formats[name] = "".join(
                _DATE_PARTS[token][1] if token in _DATE_PARTS else token.replace("%", "%%")
                for token in _DATE_TOKEN.split(date)
            )
    return formats


def _date_regex(fmt: str, date: str) -> str:
    if "yyyy" not in date:
        raise ConfigError(f"partition_format {fmt!r}: the date format {date!r} needs yyyy (then MM, dd, HH, mm, ss)")
    return "".join(
        _DATE_PARTS[token][0] if token in _DATE_PARTS else re.escape(token) for token in _DATE_TOKEN.split(date)
    )


def _format_literal(fmt: str, text: str) -> str:
    if "{" in text or "}" in text:
        raise ConfigError(f"partition_format {fmt!r} has an unbalanced '{{' or '}}'")
    return r"[^/]*?".join(re.escape(piece) for piece in text.split("*"))


def _format_key(fmt: str, name: str, seen: list[str]) -> str:
    if not name or "/" in name:
        raise ConfigError(f"partition_format {fmt!r} has an empty or invalid key {{{name}}}")
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


def _check_partition_keys(dataset: Dataset, keys: list[str]) -> None:
    """File inputs group by path, so need a format naming the keys; tabular ones can group by data."""
    if dataset.kind != "file":
        return
    if dataset.partition_format is None:
        raise ConfigError(
            f"partition_keys {keys} need a partitioned dataset, but input {dataset.paths} has no "
            "partition_format; create it with e.g. "
            "FileDataset.from_files(path, partition_format='{user}/{season}/{genres}.wav')"
        )
    fmt_keys = dataset.partition_keys
    if not set(keys) <= set(fmt_keys):
        raise ConfigError(f"partition_keys {keys} are not all in the partition_format keys {fmt_keys}.")


def _by_partition_keys(dataset: Dataset, keys: list[str]) -> Iterator[dict]:
    """One mini-batch per distinct combination of values, in order of first appearance.

    Values come from paths when a v1 ``partition_format`` names every key (no data is read);
    otherwise from the data's columns (an MLTable's extracted columns included).
    """
    from pipeobs.datasets.inputs import TabularDataset

    if isinstance(dataset, TabularDataset) and not _groups_by_path(dataset, keys):
        return _by_data_columns(dataset, keys)
    return _by_path_values(dataset, keys)


def _groups_by_path(dataset: TabularDataset, keys: list[str]) -> bool:
    from pipeobs.datasets.mltable import MLTableDataset

    if dataset.partition_format is None or isinstance(dataset, MLTableDataset):
        return False
    return set(keys) <= set(dataset.partition_keys)


def _by_path_values(dataset: Dataset, keys: list[str]) -> Iterator[dict]:
    assert dataset.partition_format is not None  # checked by partition()
    from pipeobs.datasets.inputs import TabularDataset

    groups: dict[tuple[str, ...], list[str]] = {}
    files = dataset.files()
    for path in files:
        values = _partition_values(dataset.partition_format, path)
        groups.setdefault(tuple(values[key] for key in keys), []).append(path)
    options = dataset._reader_options(files) if isinstance(dataset, TabularDataset) else dataset.options
    for combination, group in groups.items():
        if dataset.kind == "file":
            count: int | None = len(group)
        elif dataset.kind == "parquet":
            count = sum(_parquet_metadata(path).num_rows for path in group)
        else:
            count = None
        yield {
            "files": tuple(group),
            "partition_key_value": dict(zip(keys, combination, strict=True)),
            "item_count": count,
            "options": options,
        }


def _by_data_columns(dataset: TabularDataset, keys: list[str]) -> Iterator[dict]:
    """Groups of rows by the keys' values: the driver reads one file at a time to find the
    combinations each holds; a worker reads the group's files and keeps the matching rows."""
    from pipeobs.datasets.load import _finish, _windowed_files

    files = dataset.files()
    options = dataset._reader_options(files)
    windowed = dataset.row_window != (0, None)
    groups: dict[tuple[str, ...], dict[str, Any]] = {}
    for path, raw, first, last in _windowed_files(dataset.kind, options, files, dataset.row_window):
        frame = _finish(raw.iloc[first:last].reset_index(drop=True), path, options)
        for combination, rows in _groups_of_file(frame, keys, path):
            group = groups.setdefault(combination, {"files": [], "rows": [], "count": 0})
            group["files"].append(path)
            group["rows"].append([first, last])
            group["count"] += int(rows.sum())
    for combination, group in groups.items():
        extra = {"rows": group["rows"]} if windowed else {}
        yield {
            "files": tuple(group["files"]),
            "partition_key_value": dict(zip(keys, combination, strict=True)),
            "item_count": group["count"],
            "options": {**options, "filter_rows": True, **extra},
        }


def _groups_of_file(frame: pandas.DataFrame, keys: list[str], path: str) -> list[tuple[tuple[str, ...], Any]]:
    """Each combination of the keys' values in one file's rows, in order, with its row mask."""
    from pipeobs.datasets.load import _key_texts

    texts = _key_texts(frame, keys, f"input file {path!r}")
    combinations = list(dict.fromkeys(zip(*(texts[key].tolist() for key in keys), strict=True)))
    return [(combination, (texts[keys] == list(combination)).all(axis=1).to_numpy()) for combination in combinations]
