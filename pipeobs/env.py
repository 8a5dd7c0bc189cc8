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
``CUDA_VISIBLE_DEVICES``.

MLflow's, set in workers so that an entry script's ``mlflow`` calls record into the run directory
(:mod:`pipeobs.mlflow_bridge`): ``MLFLOW_TRACKING_URI`` (``file:`` URI of ``<run dir>/mlruns``) and
``MLFLOW_ALLOW_FILE_STORE`` (``true``: MLflow 3 refuses its file store without it); neither is
set when the step's ``environment_variables`` name a tracking URI.

Set for a v2 command job (:mod:`pipeobs.v2.command`): ``TRACEPARENT`` (the W3C context of its
``command`` span, so the command's own OpenTelemetry continues the trace) and ``AZUREML_RUN_ID`` (its
step_id), with the MLflow ones above.

The exporters' own variables (``APPLICATIONINSIGHTS_CONNECTION_STRING``,
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
MLFLOW_TRACKING_URI = "MLFLOW_TRACKING_URI"
MLFLOW_ALLOW_FILE_STORE = "MLFLOW_ALLOW_FILE_STORE"
TRACEPARENT = "TRACEPARENT"
AZUREML_RUN_ID = "AZUREML_RUN_ID"


def first(*names: str) -> str | None:
    """The value of the first of ``names`` that is set and not empty."""
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None
