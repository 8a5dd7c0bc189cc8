"""Partition keys: ``partition_format`` patterns, and one mini-batch per combination of values."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from pipeobs.datasets.tabular import _parquet_metadata
from pipeobs.errors import ConfigError, InputError

if TYPE_CHECKING:
    from pipeobs.datasets.inputs import Dataset

_FORMAT_FIELD = re.compile(r"\{([^{}]*)\}")


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
