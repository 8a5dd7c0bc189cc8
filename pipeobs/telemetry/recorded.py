"""The worker's ``mini_batch`` span without the SDK: the OpenTelemetry Span API on plain fields.

An SDK span per mini-batch was most of a no-op mini-batch's worker CPU (id generation, attribute
validation and copies, span processors, the ReadableSpan snapshot). pipeobs's own spans go only where
pipeobs sends them (never to the entry script's providers, see :mod:`pipeobs.telemetry.compose`), so
they are recorded directly: :class:`RecordedSpan` implements the API the entry script may call on the
current span (``set_attribute``, ``add_event``, ``set_status``, ``record_exception``, ``update_name``...)
with the SDK's rules (its attribute cleaning and span limits, its status rules, a lock), and on ``end()``
hands its wire record (:func:`pipeobs.telemetry.spans.wire_record`'s form) to a callback, or leaves it to
the owner to send. Made current through the OpenTelemetry context, it is the parent of every span the
user's code opens through the global provider.

Span ids come from a private generator (:data:`ID_GENERATOR`, also the worker provider's), so an entry
script that seeds :mod:`random` (``seed_everything``) does not make every worker draw the same ids.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import SpanLimits
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

SAMPLED = TraceFlags(TraceFlags.SAMPLED)


class PrivateIdGenerator(IdGenerator):
    """The SDK's random ids, from a generator of pipeobs's own (seeded from the OS, again after a fork)."""

    def __init__(self) -> None:
        self._random = random.Random(os.urandom(32))
        os.register_at_fork(after_in_child=lambda: self._random.seed(os.urandom(32)))

    def generate_span_id(self) -> int:
        span_id = self._random.getrandbits(64)
        while not span_id:
            span_id = self._random.getrandbits(64)
        return span_id

    def generate_trace_id(self) -> int:
        trace_id = self._random.getrandbits(128)
        while not trace_id:
            trace_id = self._random.getrandbits(128)
        return trace_id

    def is_trace_id_random(self) -> bool:
        return True


ID_GENERATOR = PrivateIdGenerator()
_limits: SpanLimits | None = None


def span_limits() -> SpanLimits:
    """The SDK's span limits (``OTEL_SPAN_*_LIMIT``, ``OTEL_ATTRIBUTE_*``), read once."""
    global _limits
    if _limits is None:
        _limits = SpanLimits()
    return _limits


class RecordedSpan(trace.Span):
    """A span pipeobs records itself. pipeobs's attributes (``attributes``) are set once and need no
    validation; what the entry script sets is cleaned and bounded as the SDK does, and cannot change the
    worker, mini-batch or attempt the span is filed under."""

    def __init__(self, name: str, kind: SpanKind, parent: SpanContext, attributes: dict[str, Any],
                 on_end: Callable[[dict[str, Any]], None] | None) -> None:
        self.name = name
        self.kind = kind
        self._context = SpanContext(parent.trace_id, ID_GENERATOR.generate_span_id(), is_remote=False,
                                    trace_flags=SAMPLED)
        self._parent_span_id = parent.span_id if parent.is_valid else None
        self.start_time = time.time_ns()
        self.end_time: int | None = None
        self.attributes = attributes
        self._where = (attributes.get("pipeobs.worker"), attributes.get("pipeobs.mini_batch_id"),
                       attributes.get("pipeobs.attempt"))
        self._user: BoundedAttributes | None = None  # what the entry script set, made on its first call
        self._events: list[dict[str, Any]] = []
        self._status = Status(StatusCode.UNSET)
        self._on_end = on_end
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the Span API
    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self.end_time is None

    def set_attribute(self, key: str, value: Any) -> None:
        self.set_attributes({key: value})

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        with self._lock:
            if self.end_time is not None:
                return
            if self._user is None:
                limits = span_limits()
                self._user = BoundedAttributes(limits.max_span_attributes, None, immutable=False,
                                               max_value_len=limits.max_span_attribute_length)
            for key, value in attributes.items():
                self._user[key] = value

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None, timestamp: int | None = None) -> None:
        limits = span_limits()
        bounded = BoundedAttributes(limits.max_event_attributes, attributes, max_value_len=limits.max_attribute_length)
        with self._lock:
            if self.end_time is None and (limits.max_events is None or len(self._events) < limits.max_events):
                self._events.append({"name": str(name), "time": (timestamp or time.time_ns()) / 1e9,
                                     "attributes": dict(bounded)})

    def update_name(self, name: str) -> None:
        with self._lock:
            if self.end_time is None:
                self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        """As the SDK: OK is final, UNSET and anything else than a Status or StatusCode are ignored."""
        with self._lock:
            if self.end_time is not None or self._status.status_code is StatusCode.OK:
                return
            if isinstance(status, Status) and status.status_code is not StatusCode.UNSET:
                self._status = status
            elif isinstance(status, StatusCode) and status is not StatusCode.UNSET:
                self._status = Status(status, description)

    def record_exception(self, exception: BaseException, attributes: Mapping[str, Any] | None = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        module, qualname = type(exception).__module__, type(exception).__qualname__
        values = {
            "exception.type": f"{module}.{qualname}" if module and module != "builtins" else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
            **(attributes or {}),
        }
        self.add_event("exception", values, timestamp)

    def succeed(self) -> None:
        """pipeobs's verdict that the invocation succeeded: OK, unless the script set a status itself."""
        with self._lock:
            if self._status.status_code is StatusCode.UNSET:
                self._status = Status(StatusCode.OK)

    def fail(self, description: str, event: dict[str, Any]) -> None:
        """pipeobs's verdict that the invocation failed: ERROR whatever the script set, and its exception event."""
        with self._lock:
            self._status = Status(StatusCode.ERROR, description)
            self._events.append({"name": "exception", "time": time.time_ns() / 1e9, "attributes": event})

    def end(self, end_time: int | None = None) -> None:
        with self._lock:
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
        with self._lock:
            attributes = self.attributes if self._user is None else {**self._user, **self.attributes}
            attributes_json = json.dumps(attributes, default=str)
            events_json = json.dumps(self._events, default=str) if self._events else "[]"
            status, name = self._status, self.name
        ctx = self._context
        worker, mini_batch_id, attempt = self._where
        return {
            "name": name,
            "trace_id": f"{ctx.trace_id:032x}",
            "span_id": f"{ctx.span_id:016x}",
            "parent_span_id": None if self._parent_span_id is None else f"{self._parent_span_id:016x}",
            "kind": self.kind.name,
            "start": self.start_time / 1e9,
            "end": None if self.end_time is None else self.end_time / 1e9,
            "status": status.status_code.name,
            "status_message": status.description,
            "attributes_json": attributes_json,
            "events_json": events_json,
            "worker": worker,
            "mini_batch_id": mini_batch_id,
            "attempt": attempt,
        }
