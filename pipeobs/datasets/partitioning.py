"""partition(): datasets in, MiniBatch descriptors out, with ids 0, 1, ... in a reproducible order.

File inputs are cut here by file count; tabular inputs by :mod:`pipeobs.datasets.tabular`,
partition keys by :mod:`pipeobs.datasets.keys`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from pipeobs.datasets.batch import MiniBatch
from pipeobs.datasets.inputs import Dataset, TabularDataset
from pipeobs.datasets.keys import _by_partition_keys, _check_partition_keys, _groups_of_file
from pipeobs.datasets.tabular import _by_line_ranges, _by_row_groups, _by_row_windows
from pipeobs.errors import ConfigError, InputError

DEFAULT_FILES_PER_MINI_BATCH = 10
DEFAULT_BYTES_PER_MINI_BATCH = 1024 * 1024


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


def _generate(datasets: list[Dataset], size: int | None, keys: list[str]) -> Iterator[MiniBatch]:
    next_id = 0
    for index, dataset in enumerate(datasets):
        for fields in _dataset_batches(dataset, size, keys):
            options = fields.pop("options", dataset.options)
            yield MiniBatch(id=next_id, input_index=index, kind=dataset.kind, options=options, **fields)
            next_id += 1


def _dataset_batches(dataset: Dataset, size: int | None, keys: list[str]) -> Iterator[dict]:
    """The fields of each mini-batch of one input, apart from id, input and kind."""
    if keys:
        return _by_partition_keys(dataset, keys)
    if dataset.kind == "file":
        return _by_file_count(dataset.files(), size or DEFAULT_FILES_PER_MINI_BATCH)
    assert isinstance(dataset, TabularDataset)
    return _tabular_batches(dataset, size or DEFAULT_BYTES_PER_MINI_BATCH)


def _tabular_batches(dataset: TabularDataset, target: int) -> Iterator[dict]:
    """Byte ranges or row groups, or row ranges when a skip/take window is set."""
    files = dataset.files()
    options = dataset._reader_options(files)
    if dataset.row_window != (0, None):
        yield from _by_row_windows(dataset.kind, options, files, target, dataset.row_window)
        return
    if dataset.kind == "parquet":
        batches = _by_row_groups(files, target)
    else:
        batches = _by_line_ranges(files, target, dataset._header_files(files))
    for fields in batches:
        yield {**fields, "options": options}


def _by_file_count(files: list[str], count: int) -> Iterator[dict]:
    for first in range(0, len(files), count):
        chunk = tuple(files[first : first + count])
        yield {"files": chunk, "item_count": len(chunk)}


def _write_partitions(dataset: TabularDataset, keys: list[str], folder: str) -> None:
    """``<folder>/<v1>/<v2>/part-<n>.parquet`` for each source file n and combination of values."""
    import pyarrow
    import pyarrow.parquet

    from pipeobs.datasets.load import _finish, _windowed_files

    files = dataset.files()
    options = dataset._reader_options(files)
    for number, (path, raw, first, last) in enumerate(
        _windowed_files(dataset.kind, options, files, dataset.row_window)
    ):
        frame = _finish(raw.iloc[first:last].reset_index(drop=True), path, options)
        for combination, rows in _groups_of_file(frame, keys, path):
            names = [_folder_name(key, value, path) for key, value in zip(keys, combination, strict=True)]
            target = os.path.join(folder, *names, f"part-{number:05d}.parquet")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            table = pyarrow.Table.from_pandas(frame[rows].reset_index(drop=True), preserve_index=False)
            pyarrow.parquet.write_table(table, target)


def _folder_name(key: str, value: str, path: str) -> str:
    """A key's value as a folder name that reads back as the same value."""
    if not value or value.startswith(".") or "/" in value or os.sep in value:
        raise InputError(
            f"partition_by: column {key!r} has the value {value!r} in {path!r}, which cannot name a folder; "
            "fill or change such values first"
        )
    return value
