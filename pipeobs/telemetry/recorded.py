"""The worker's ``mini_batch`` span without the SDK: the OpenTelemetry Span API on plain fields.

An SDK span per mini-batch was most of a no-op mini-batch's worker CPU (id generation, attribute
validation and copies, span processors, the ReadableSpan snapshot). pipeobs's own spans go only where
pipeobs sends them (never to the entry script's providers, see :mod:`pipeobs.telemetry.compose`), so
the ``mini_batch`` span is recorded directly: :class:`RecordedSpan` implements the API the entry
script may call on the current span (``set_attribute``, ``add_event``, ``set_status``,
``record_exception``, ``update_name``...), as the SDK span does, and on ``end()`` hands its wire record
(:func:`pipeobs.telemetry.spans.wire_record`'s form) to a callback, or leaves it to the owner to send. Made current with
``trace.use_span``, it is the parent of every span the user's code opens through the global provider.
"""

from __future__ import annotations

import json
import random
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

SAMPLED = TraceFlags(TraceFlags.SAMPLED)


def new_span_id() -> int:
    """A random non-zero 64-bit span id, as the SDK's ``RandomIdGenerator`` makes them."""
    span_id = random.getrandbits(64)
    while not span_id:
        span_id = random.getrandbits(64)
    return span_id


class RecordedSpan(trace.Span):
    """A span pipeobs records itself; its attributes are set once, without per-value validation, by
    pipeobs (``attributes``), and validated as the SDK does when the entry script sets them."""

    __slots__ = ("name", "kind", "_context", "_parent_span_id", "start_time", "end_time", "attributes",
                 "events", "_status", "_on_end")

    def __init__(self, name: str, kind: SpanKind, parent: SpanContext, attributes: dict[str, Any],
                 on_end: Callable[[dict[str, Any]], None] | None) -> None:
        self.name = name
        self.kind = kind
        self._context = SpanContext(parent.trace_id, new_span_id(), is_remote=False, trace_flags=SAMPLED)
        self._parent_span_id = parent.span_id if parent.is_valid else None
        self.start_time = time.time_ns()
        self.end_time: int | None = None
        self.attributes = attributes
        self.events: list[dict[str, Any]] = []
        self._status = Status(StatusCode.UNSET)
        self._on_end = on_end

    # ------------------------------------------------------------------ the Span API
    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self.end_time is None

    def set_attribute(self, key: str, value: Any) -> None:
        if self.end_time is None:
            cleaned = _cleaned(key, value)
            if cleaned is not _INVALID:
                self.attributes[key] = cleaned

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None, timestamp: int | None = None) -> None:
        if self.end_time is None:
            values = {k: v for k, v in ((k, _cleaned(k, v)) for k, v in (attributes or {}).items()) if v is not _INVALID}
            self.events.append({"name": name, "time": (timestamp or time.time_ns()) / 1e9, "attributes": values})

    def update_name(self, name: str) -> None:
        if self.end_time is None:
            self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        """As the SDK: OK is final; a description is kept only for ERROR."""
        if self.end_time is not None or self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, Status):
            self._status = status
        else:
            self._status = Status(status, description if status is StatusCode.ERROR else None)

    def record_exception(self, exception: BaseException, attributes: Mapping[str, Any] | None = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        stacktrace = "".join(traceback.format_exception(type(exception), exception, exception.__traceback__))
        values = {"exception.type": type(exception).__name__, "exception.message": str(exception),
                  "exception.stacktrace": stacktrace, "exception.escaped": str(escaped), **(attributes or {})}
        self.add_event("exception", values, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self.end_time is not None:
            return
        self.end_time = end_time or time.time_ns()
        if self._on_end is not None:
            self._on_end(self.wire_record())

    # ------------------------------------------------------------------ the record
    @property
    def status(self) -> Status:
        return self._status

    def wire_record(self) -> dict[str, Any]:
        """The record :func:`pipeobs.telemetry.spans.wire_record` makes of an SDK span."""
        ctx, attributes = self._context, self.attributes
        return {
            "name": self.name,
            "trace_id": f"{ctx.trace_id:032x}",
            "span_id": f"{ctx.span_id:016x}",
            "parent_span_id": None if self._parent_span_id is None else f"{self._parent_span_id:016x}",
            "kind": self.kind.name,
            "start": self.start_time / 1e9,
            "end": None if self.end_time is None else self.end_time / 1e9,
            "status": self._status.status_code.name,
            "status_message": self._status.description,
            "attributes_json": json.dumps(attributes, default=str),
            "events_json": json.dumps(self.events, default=str) if self.events else "[]",
            "worker": attributes.get("pipeobs.worker"),
            "mini_batch_id": attributes.get("pipeobs.mini_batch_id"),
            "attempt": attributes.get("pipeobs.attempt"),
        }


_INVALID = object()
_PRIMITIVES = (bool, str, bytes, int, float)


def _cleaned(key: str, value: Any) -> Any:
    """An attribute value as the SDK keeps it (primitives, homogeneous sequences as tuples), or
    ``_INVALID`` (the SDK drops such a value with a warning)."""
    if not isinstance(key, str) or not key:
        return _INVALID
    if isinstance(value, _PRIMITIVES):
        return value
    if isinstance(value, Sequence):
        kinds = {type(v) for v in value if v is not None}
        if len(kinds) <= 1 and all(isinstance(v, _PRIMITIVES) or v is None for v in value):
            return tuple(value)
    return _INVALID
