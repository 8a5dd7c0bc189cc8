"""Shared fixtures: a clean OTEL_* environment, and builders of pipeobs records."""

from __future__ import annotations

import os
from typing import Any

import pytest

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"
PARENT_ID = "00f067aa0ba902b7"
T0 = 1_700_000_000.25


class Records:
    """Builders of the three record types of :mod:`pipeobs.export.base`, with overridable fields."""

    trace_id = TRACE_ID
    span_id = SPAN_ID
    parent_id = PARENT_ID
    t0 = T0

    def common(self, **fields: Any) -> dict[str, Any]:
        base = {
            "step_id": "step-1",
            "step_name": "score-images",
            "worker": "node0/process000",
            "time": T0,
            "mini_batch_id": 7,
            "attempt": 2,
            "trace_id": TRACE_ID,
            "span_id": SPAN_ID,
        }
        return {**base, **fields}

    def span(self, **fields: Any) -> dict[str, Any]:
        return self.common(
            **{
                "type": "span",
                "name": "mini_batch",
                "kind": "CONSUMER",
                "parent_span_id": PARENT_ID,
                "start": T0,
                "end": T0 + 1.5,
                "status": "OK",
                "status_message": None,
                "attributes": {"pipeobs.items": 3},
                "events": [],
                **fields,
            }
        )

    def log(self, **fields: Any) -> dict[str, Any]:
        return self.common(
            **{
                "type": "log",
                "level": "INFO",
                "stream": "log",
                "logger": "score",
                "text": "scored 3 images",
                "phase": "run",
                "custom_dimensions": {},
                **fields,
            }
        )

    def metric(self, **fields: Any) -> dict[str, Any]:
        return self.common(
            **{
                "type": "metric",
                "name": "accuracy",
                "kind": "scalar",
                "value": 0.93,
                "value_json": None,
                "labels": {},
                "description": "",
                **fields,
            }
        )


@pytest.fixture
def records() -> Records:
    return Records()


@pytest.fixture(autouse=True)
def clean_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OTEL_* variable from the machine running the tests leaks into them."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
