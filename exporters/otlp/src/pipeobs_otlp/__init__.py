"""pipeobs-otlp: send pipeobs spans, logs and metrics to an OTLP backend.

Registered as the ``otlp`` plugin of the ``pipeobs.exporters`` entry-point group. The records
go through OpenTelemetry's official OTLP exporters (``http/protobuf``, or ``grpc`` with the
``grpc`` extra), one attempt per batch: retries belong to pipeobs's delivery layer.

Names load on first use, so ``import pipeobs_otlp`` pulls in neither requests, protobuf nor grpc.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "OtlpExporter": "pipeobs_otlp.exporter",
    "SendOutcome": "pipeobs_otlp.senders",
    "SignalSender": "pipeobs_otlp.senders",
    "create_exporter": "pipeobs_otlp.exporter",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeobs_otlp' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
