"""Every environment variable pipeobs reads or sets, in one place.

pipeobs's own (prefix ``PIPEOBS_``):

* ``PIPEOBS_GPU_COUNT``: GPUs per node for ``CUDA_VISIBLE_DEVICES`` assignment (else Azure's
  ``AZ_BATCHAI_GPU_COUNT_FOUND``; else none).
* ``PIPEOBS_MODEL_DIR``: where ``Model.get_model_path(name)`` looks in workers (set from
  ``--model-dir``; ``AZUREML_MODEL_DIR`` is set to the same value, as batch endpoints do).
* ``PIPEOBS_EXPORT_JSONL``: the file of the ``jsonl`` exporter.
* ``PIPEOBS_ALLOW_MANY_PROCESSES``: ``1`` lets a job start more workers than the machine's limit
  (:mod:`pipeobs.config.capacity`).
* ``PIPEOBS_HUB``, ``PIPEOBS_AUTHKEY``, ``PIPEOBS_WORKER``: set by the driver for each worker
  (the hub address, its auth key, the worker's ``<node>/processNNN`` name); internal.

Azure's, set in workers as the runtime does: ``AZUREML_BI_OUTPUT_PATH`` (the output folder),
``CUDA_VISIBLE_DEVICES``. The exporters' own variables (``APPLICATIONINSIGHTS_CONNECTION_STRING``,
``OTEL_EXPORTER_OTLP_*``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``) are read by the
plugins as their owners define them.
"""

from __future__ import annotations

import os

GPU_COUNT = "PIPEOBS_GPU_COUNT"
AZURE_GPU_COUNT = "AZ_BATCHAI_GPU_COUNT_FOUND"
MODEL_DIR = "PIPEOBS_MODEL_DIR"
AZURE_MODEL_DIR = "AZUREML_MODEL_DIR"
EXPORT_JSONL = "PIPEOBS_EXPORT_JSONL"
ALLOW_MANY_PROCESSES = "PIPEOBS_ALLOW_MANY_PROCESSES"
HUB = "PIPEOBS_HUB"
AUTHKEY = "PIPEOBS_AUTHKEY"
WORKER = "PIPEOBS_WORKER"
OUTPUT_PATH = "AZUREML_BI_OUTPUT_PATH"
CUDA_DEVICES = "CUDA_VISIBLE_DEVICES"


def first(*names: str) -> str | None:
    """The value of the first of ``names`` that is set and not empty."""
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None
