"""Spans, built with the OpenTelemetry SDK, and how they travel to the store.

* The driver opens the ``job`` span (kind CONSUMER) and hands its W3C ``traceparent`` to each
  worker in the setup message.
* A worker opens ``init``, ``mini_batch`` (kind CONSUMER) and ``shutdown`` spans as children of
  the job span, and installs its tracer provider globally, so spans the user opens with the
  OpenTelemetry API inside ``run()`` nest under the ``mini_batch`` span.
* Finished worker spans are written as marker records on fd 2 (:class:`CallbackSpanExporter`
  calling :func:`pipeobs.capture.emit_span`, synchronously: no thread, nothing buffered to lose
  on a kill) and reach the driver's record pipeline as :class:`pipeobs.records.Span`.
* A mini-batch whose worker is killed never ends its span; the driver writes that span itself,
  with status ERROR and the reason (:func:`killed_span`).
* While an invocation runs, the driver stores a stand-in for its span (:func:`pending_span`: same
  ids, no end), so a live reader of the store sees it running; the span that ends the invocation
  replaces it.

A span record is a plain dict (JSON-able): name, ids (hex), parent, kind, start/end (epoch
seconds), status, status message, attributes and events.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from typing import Any

STATUS_NAMES = {0: "UNSET", 1: "OK", 2: "ERROR"}
PENDING = "pipeobs.pending"  # the attribute marking a pending span (the store deletes those a dead driver left)


def span_record(span: Any) -> dict[str, Any]:
    """A finished SDK span as the dict stored in the ``spans`` table."""
    ctx = span.context
    parent = span.parent
    return {
        "name": span.name,
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_span_id": f"{parent.span_id:016x}" if parent is not None else None,
        "kind": span.kind.name,
        "start": span.start_time / 1e9,
        "end": span.end_time / 1e9 if span.end_time else None,
        "status": span.status.status_code.name,
        "status_message": span.status.description,
        "attributes": dict(span.attributes or {}),
        "events": [
            {"name": e.name, "time": e.timestamp / 1e9, "attributes": dict(e.attributes or {})} for e in span.events
        ],
    }


def wire_record(span: Any) -> dict[str, Any]:
    """The record a worker sends: attributes and events pre-encoded, ids of the mini-batch on top.

    The driver stores the JSON strings as they are (no decode and re-encode per span).
    """
    record = span_record(span)
    attributes = record.pop("attributes")
    record["attributes_json"] = json.dumps(attributes, default=str)
    record["events_json"] = json.dumps(record.pop("events"), default=str)
    record["worker"] = attributes.get("pipeobs.worker")
    record["mini_batch_id"] = attributes.get("pipeobs.mini_batch_id")
    record["attempt"] = attributes.get("pipeobs.attempt")
    return record


def full_record(record: dict[str, Any]) -> dict[str, Any]:
    """A span record with ``attributes`` and ``events`` as objects (decoding a wire record)."""
    if "attributes_json" not in record:
        return record
    full = {k: v for k, v in record.items() if k not in ("attributes_json", "events_json")}
    full["attributes"] = json.loads(record["attributes_json"])
    full["events"] = json.loads(record["events_json"])
    return full


def killed_span(
    name: str,
    trace_id: str,
    parent_span_id: str | None,
    start: float,
    reason: str,
    attributes: dict[str, Any],
    span_id: str | None = None,
) -> dict[str, Any]:
    """The span of an invocation whose worker died before ending it: ERROR, with the reason."""
    now = time.time()
    return {
        "name": name,
        "trace_id": trace_id,
        "span_id": span_id or secrets.token_hex(8),
        "parent_span_id": parent_span_id,
        "kind": kind_of(name),
        "start": start,
        "end": now,
        "status": "ERROR",
        "status_message": reason,
        "attributes": {**attributes, "pipeobs.status": "KILLED", "pipeobs.reason": reason},
        "events": [{"name": "exception", "time": now, "attributes": {"exception.type": "WorkerKilled", "exception.message": reason}}],
    }


def pending_span(
    name: str,
    trace_id: str,
    parent_span_id: str,
    span_id: str,
    start: float,
    attributes: dict[str, Any],
) -> dict[str, Any]:
    """The span of an invocation still running, as live readers of the store see it: no end, UNSET.

    It has the ids of the span the worker will end, so that span (or the driver's
    :func:`killed_span`) replaces it in the store.
    """
    return {
        "name": name,
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": parent_span_id,
        "kind": kind_of(name),
        "start": start,
        "end": None,
        "status": "UNSET",
        "status_message": None,
        "attributes": {**attributes, PENDING: True},
        "events": [],
    }


def kind_of(name: str) -> str:
    """The kind of a pipeobs span, as the worker opens it."""
    return "CONSUMER" if name == "mini_batch" else "INTERNAL"


def make_tracer_provider(service_name: str, attributes: dict[str, Any], exporter: Any, id_generator: Any = None) -> Any:
    """An SDK tracer provider exporting each finished span synchronously to ``exporter``."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    resource = Resource.create({"service.name": service_name, **attributes})
    provider = TracerProvider(resource=resource, id_generator=id_generator)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


class CallbackSpanExporter:
    """A SpanExporter handing each span's record to a callback (the worker's fd 2, the driver's store)."""

    def __init__(self, callback: Any, encode: Any = span_record) -> None:
        self._callback = callback
        self._encode = encode

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        for span in spans:
            self._callback(self._encode(span))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def traceparent_of(span: Any) -> str:
    """The W3C ``traceparent`` header value of ``span`` (through the official propagator)."""
    from opentelemetry.trace import set_span_in_context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=set_span_in_context(span))
    return carrier["traceparent"]


def context_from_traceparent(traceparent: str) -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": traceparent})


def ids_of(span: Any) -> tuple[str, str]:
    ctx = span.get_span_context()
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
