"""The worker API: what a plugin may ask of the pipeobs worker process it runs in.

Exporters run in the driver and need nothing from here. A plugin that also runs inside the
user's entry script, such as a ``logging.Handler`` (``pipeobs_appinsights.AzureLogHandler``),
uses this module to learn whether it is in a worker, what the worker is running, and to hand log
records to the driver. These names and their documented behaviour are the contract; the modules
behind them (``pipeobs.capture``, ``pipeobs.context``, ``pipeobs.worker``, ...) are internal and
change without notice.

* :func:`in_worker` ``() -> bool``: inside a pipeobs worker whose output capture is active, so
  :func:`send_log_record` works.
* :func:`current_context` ``() -> WorkerContext | None``: the step, the worker and the current
  invocation (mini-batch, attempt, trace and span ids), or None outside a worker.
* :func:`send_log_record` ``(record, custom_dimensions=None) -> None``: sends a log record to the
  driver once, with its custom dimensions, in order with the worker's other output.
* :func:`captured_before` ``(record, handler) -> bool``: whether pipeobs's own capture handler
  already sent ``record`` before it reached ``handler``; sending it again would duplicate it.

A handler that forwards records with :func:`send_log_record` sets the class attribute
``forwards_to_pipeobs = True``. When such a handler sits on the root logger next to pipeobs's
capture handler, the capture handler leaves every record to it, so the record goes out once and
with the handler's dimensions whatever order the two handlers were added in::

    from pipeobs import worker_api

    class MyHandler(logging.Handler):
        forwards_to_pipeobs = True

        def emit(self, record):
            if not worker_api.in_worker():
                ...  # outside a run: send it yourself (e.g. through pipeobs.export.delivery.Delivery)
            elif not worker_api.captured_before(record, self):
                worker_api.send_log_record(record, {"rows": 128})

Plugins import from pipeobs only this module, the names ``pipeobs`` exports, the exception tree
(:mod:`pipeobs.errors`) and the exporter interface (:mod:`pipeobs.export.base`,
:mod:`pipeobs.export.delivery`); ``tests/test_worker_api.py`` holds ``exporters/*/src`` to it.
Importing this module loads only the standard library and pipeobs's light internals: every
worker process imports it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, TypedDict

from pipeobs import capture, context

__all__ = ["WorkerContext", "captured_before", "current_context", "in_worker", "send_log_record"]


class WorkerContext(TypedDict):
    """Who is running what: the same values pipeobs puts on every log line, metric and span."""

    step_id: str
    step_name: str
    worker: str  # "<node>/processNNN"
    phase: str  # "init" | "run" | "shutdown", or "worker" between invocations
    mini_batch_id: int | None  # set in the "run" phase
    attempt: int | None  # 1 for a mini-batch's first attempt, set in the "run" phase
    trace_id: str | None  # 32 hex digits: the invocation's span
    span_id: str | None  # 16 hex digits


def in_worker() -> bool:
    """Whether this process is a pipeobs worker with its output capture active.

    Only then does :func:`send_log_record` work; elsewhere (the driver, a plain script, a test)
    a plugin sends its telemetry itself.
    """
    return context.worker() is not None and capture._active is not None


def current_context() -> WorkerContext | None:
    """The step, the worker and the invocation the caller runs in; None outside a pipeobs worker.

    The invocation is that of the calling context: a thread the entry script starts without
    copying its context (``contextvars.copy_context()``) sees the idle worker (phase
    ``"worker"``, no mini-batch, no ids). Each call returns a new dict.
    """
    info = context.worker()
    if info is None:
        return None
    invocation = context.current_invocation.get()
    return WorkerContext(
        step_id=info.step_id,
        step_name=info.step_name,
        worker=info.label,
        phase=invocation.phase,
        mini_batch_id=invocation.mini_batch_id,
        attempt=invocation.attempt,
        trace_id=invocation.trace_id,
        span_id=invocation.span_id,
    )


def send_log_record(record: logging.LogRecord, custom_dimensions: Mapping[str, Any] | None = None) -> None:
    """Send ``record`` to the driver with ``custom_dimensions``, once.

    The record travels in order with the worker's prints and other records, is stored and routed
    to every exporter by the driver, and survives the worker being killed right after. It is
    marked as sent, so pipeobs's capture handler does not send it a second time. The message is
    ``record.getMessage()``, or ``record.msg`` as written when the only argument is a dict (custom
    dimensions, as opencensus reads it), followed by the traceback of ``exc_info``. Dimension
    values that are not JSON travel as their ``str()``. Raises :class:`RuntimeError` when
    :func:`in_worker` is False.
    """
    if capture._active is None:
        raise RuntimeError("send_log_record needs a pipeobs worker; check worker_api.in_worker() first")
    capture.emit_log_record(record, dict(custom_dimensions) if custom_dimensions is not None else None)


def captured_before(record: logging.LogRecord, handler: logging.Handler) -> bool:
    """Whether pipeobs's capture handler already sent ``record`` on its way to ``handler``.

    True when the capture handler comes first on the record's path up the logger hierarchy (on
    a logger below ``handler``'s, or before it on the same logger) and did not leave the record
    to a ``forwards_to_pipeobs`` handler: the record is in the driver already, without
    ``handler``'s dimensions, and sending it again would duplicate it. False when ``handler``
    comes first (:func:`send_log_record` then stops the capture handler from sending it again),
    and outside a worker.
    """
    if getattr(record, "pipeobs_deferred", False):
        return False
    node: logging.Logger | None = logging.getLogger(record.name)
    while node is not None:
        for candidate in node.handlers:
            if candidate is handler:
                return False
            if isinstance(candidate, capture.MarkerHandler) and record.levelno >= candidate.level:
                return True
        node = node.parent if node.propagate else None
    return False
