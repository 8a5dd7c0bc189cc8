"""partition(): datasets in, MiniBatch descriptors out, with ids 0, 1, ... in a reproducible order.

File inputs are cut here by file count; tabular inputs by :mod:`pipeobs.datasets.tabular`,
partition keys by :mod:`pipeobs.datasets.keys`.
"""

from __future__ import annotations

from collections.abc import Iterator

from pipeobs.datasets.batch import MiniBatch
from pipeobs.datasets.inputs import Dataset
from pipeobs.datasets.keys import _by_partition_keys, _check_partition_keys
from pipeobs.datasets.tabular import _by_line_ranges, _by_row_groups
from pipeobs.errors import ConfigError

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
