"""Input datasets and their mini-batches, the way ParallelRunStep cuts them.

A dataset names its inputs (files, directories, globs) and how to read them. :func:`partition`
turns datasets into :class:`MiniBatch` descriptors: small, picklable values that say *which*
bytes a worker reads, never the data itself, so the driver can keep millions of them in its
ledger and send them to worker processes cheaply. :func:`load_mini_batch` runs in the worker
and turns a descriptor into what ``run(mini_batch)`` receives (a list of paths or a DataFrame).

The rules follow Azure (reference section 2.8): file inputs are cut by file count, csv and
JSON-lines inputs by approximate byte size on line boundaries without crossing files, and
partition keys make one mini-batch per distinct combination of values (from paths with a
``partition_format``, or from the rows' columns of a tabular input). Parquet goes beyond
Azure, which never splits a single file: here a large file is split by row groups.

pandas and pyarrow are imported inside the functions that need them, because every worker
process imports this package and most jobs read plain files.

Import from here; the submodules are the layout:

* :mod:`~pipeobs.datasets.inputs`: :class:`Dataset`, :class:`FileDataset`,
  :class:`TabularDataset`, and listing their files.
* :mod:`~pipeobs.datasets.batch`: the :class:`MiniBatch` descriptor.
* :mod:`~pipeobs.datasets.partitioning`: :func:`partition`, and cutting files by count.
* :mod:`~pipeobs.datasets.tabular`: csv/JSON-lines byte ranges and parquet row groups.
* :mod:`~pipeobs.datasets.keys`: ``partition_format`` and partition-key mini-batches.
* :mod:`~pipeobs.datasets.load`: :func:`load_mini_batch` and :class:`MiniBatchContext`.
* :mod:`~pipeobs.datasets.mltable`: :func:`mltable_dataset`, Azure ML ``MLTable`` files.
"""

from pipeobs.datasets.batch import MiniBatch
from pipeobs.datasets.inputs import KINDS, Dataset, FileDataset, PathSpec, TabularDataset
from pipeobs.datasets.load import MiniBatchContext, load_mini_batch, mini_batch_context
from pipeobs.datasets.mltable import mltable_dataset
from pipeobs.datasets.partitioning import DEFAULT_BYTES_PER_MINI_BATCH, DEFAULT_FILES_PER_MINI_BATCH, partition

__all__ = [
    "DEFAULT_BYTES_PER_MINI_BATCH",
    "DEFAULT_FILES_PER_MINI_BATCH",
    "KINDS",
    "Dataset",
    "FileDataset",
    "MiniBatch",
    "MiniBatchContext",
    "PathSpec",
    "TabularDataset",
    "load_mini_batch",
    "mini_batch_context",
    "mltable_dataset",
    "partition",
]
