"""OTLP/HTTP ingestion (``POST /v1/traces``, ``/v1/logs``, ``/v1/metrics``): requests in, rows out.

Bodies are ``application/x-protobuf`` or OTLP JSON (``application/json``). OTLP JSON spells
trace and span ids as hex strings where protobuf's JSON mapping expects base64, so they are
rewritten before parsing. The answer is the signal's empty ``Export*ServiceResponse`` in the
request's encoding; spans without valid ids are counted in ``partial_success``.

Mapping: worker = attribute ``pipeobs.worker``, else resource ``service.instance.id``, else
``service.name``; mini-batch / attempt / phase = attributes ``pipeobs.mini_batch_id`` /
``pipeobs.attempt`` / ``pipeobs.phase``; ids as lowercase hex.

* spans -> ``spans``: kind and status names without their prefixes, events as
  ``{name, time, attributes}``, attributes plus ``otel.scope.name``, ``otel.links`` and the
  resource's attributes as ``resource.<key>``.
* log records -> ``log_lines``: level from the severity number (or text), logger = scope name,
  text = body, then ``exception.stacktrace``; the other attributes in ``attributes`` (a
  ``custom_dimensions`` map, as the logging handler sends ``extra``, flattened into them).
* metrics -> ``metrics``: gauge and sum points as ``gauge`` / ``counter`` rows; histograms as
  Prometheus does: ``<name>_count``, ``<name>_sum`` and cumulative ``<name>_bucket`` rows with
  an ``le`` label (kind histogram); summaries as ``_count``, ``_sum`` and ``quantile`` rows.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pipeobs.collector._body import TOO_DEEP, Refused
from pipeobs.collector._deps import INSTALL_HINT
from pipeobs.collector._mapping import (
    COLUMN_KEYS,
    WORKER_KEYS,
    first,
    hex_id,
    level_from_text,
    placement,
    without,
)
from pipeobs.collector._sink import Rows

try:
    from google.protobuf import json_format
    from google.protobuf.message import DecodeError, Message
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
    from opentelemetry.proto.trace.v1 import trace_pb2
except ImportError as exc:  # pragma: no cover - exercised by the light-import test
    raise ImportError(INSTALL_HINT) from exc

PROTOBUF_TYPES = frozenset({"application/x-protobuf", "application/protobuf"})
JSON_TYPES = frozenset({"application/json"})
_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})
_SEVERITIES = ("DEBUG", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")  # TRACE1-4, DEBUG1-4, ... FATAL1-4
_STATUS_CODES = {400: 3, 413: 3, 415: 3, 500: 13, 503: 14}  # google.rpc.Code: INVALID_ARGUMENT, INTERNAL, UNAVAILABLE


@dataclass(frozen=True)
class Signal:
    """One OTLP signal: its request and response messages, and how its requests become rows."""

    name: str
    request: type[Message]
    response: type[Message]
    rows: Callable[[Any], tuple[Rows, int, str]]
    rejected_field: str


def decode(signal: Signal, body: bytes, media_type: str) -> Any:
    """The ``Export*ServiceRequest`` in ``body`` (protobuf or OTLP JSON)."""
    request = signal.request()
    if media_type in PROTOBUF_TYPES:
        try:
            request.ParseFromString(body)
        except (DecodeError, RuntimeError) as exc:
            raise Refused(400, f"body is not an OTLP {signal.name} protobuf: {exc}") from None
        return request
    try:
        data = json.loads(body)
        if not isinstance(data, dict):
            raise Refused(400, f"body is not an OTLP {signal.name} JSON object")
        return json_format.ParseDict(_ids_as_base64(data), request, ignore_unknown_fields=True)
    except (ValueError, json_format.ParseError) as exc:
        raise Refused(400, f"body is not OTLP {signal.name} JSON: {exc}") from None
    except RecursionError:
        raise Refused(400, TOO_DEEP) from None


def _ids_as_base64(value: Any) -> Any:
    """OTLP JSON ids are hex (the OTLP spec), protobuf's JSON mapping reads bytes as base64."""
    if isinstance(value, list):
        return [_ids_as_base64(v) for v in value]
    if not isinstance(value, dict):
        return value
    result = {}
    for key, item in value.items():
        if key in _ID_KEYS and isinstance(item, str) and item:
            try:
                item = base64.b64encode(bytes.fromhex(item)).decode("ascii")
            except ValueError:
                pass  # not hex: let the protobuf parser judge it as base64
        result[key] = _ids_as_base64(item)
    return result


def encode(message: Message, media_type: str) -> tuple[bytes, str]:
    """A response message in the request's encoding, with its Content-Type."""
    if media_type in PROTOBUF_TYPES:
        return message.SerializeToString(), "application/x-protobuf"
    return json.dumps(json_format.MessageToDict(message)).encode(), "application/json"


def error_body(status: int, message: str, media_type: str) -> tuple[bytes, str]:
    """A ``google.rpc.Status`` (code, message), as OTLP/HTTP answers failures."""
    code = _STATUS_CODES.get(status, 2)
    if media_type in PROTOBUF_TYPES:
        text = message.encode()
        return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text, "application/x-protobuf"
    return json.dumps({"code": code, "message": message}).encode(), "application/json"


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        byte, number = number & 0x7F, number >> 7
        out.append(byte | (0x80 if number else 0))
        if not number:
            return bytes(out)


def export(signal: Signal, request: Any) -> tuple[Rows, int, Message]:
    """The rows of a request, how many items it rejected, and the response (``partial_success`` then)."""
    rows, rejected, reason = signal.rows(request)
    response = signal.response()
    if rejected:
        partial = response.partial_success  # type: ignore[attr-defined]
        setattr(partial, signal.rejected_field, rejected)
        partial.error_message = reason
    return rows, rejected, response


# ----------------------------------------------------------------------------- values
def any_value(value: Any) -> Any:
    """An OTLP ``AnyValue`` as a plain JSON-able value."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    return getattr(value, kind)


def attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: any_value(pair.value) for pair in pairs}


def _resource(resource: Any) -> tuple[dict[str, Any], str | None]:
    """The resource's attributes and the worker they name."""
    values = attributes(resource.attributes)
    return values, first(values, ("service.instance.id", "service.name"))


def _seconds(nanos: int) -> float | None:
    return nanos / 1e9 if nanos else None


# ----------------------------------------------------------------------------- traces
def span_rows(request: Any) -> tuple[Rows, int, str]:
    rows, rejected = Rows(), 0
    for resource_spans in request.resource_spans:
        resource, worker = _resource(resource_spans.resource)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                row = _span_row(span, resource, worker, scope_spans.scope.name)
                if row is None:
                    rejected += 1
                else:
                    rows.spans.append(row)
    return rows, rejected, "a span needs a 16-byte trace_id and an 8-byte span_id" if rejected else ""


def _span_row(span: Any, resource: dict[str, Any], worker: str | None, scope: str) -> dict[str, Any] | None:
    trace_id, span_id = hex_id(span.trace_id, 32), hex_id(span.span_id, 16)
    if trace_id is None or span_id is None:
        return None
    values = attributes(span.attributes)
    extra: dict[str, Any] = {f"resource.{k}": v for k, v in resource.items()}
    if scope:
        extra["otel.scope.name"] = scope
    if span.links:
        extra["otel.links"] = [{"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex(),
                                "attributes": attributes(link.attributes)} for link in span.links]
    where = placement(values)
    return {
        "span_id": span_id, "trace_id": trace_id, "parent_span_id": hex_id(span.parent_span_id, 16),
        "name": span.name or "span", "kind": _enum_name(trace_pb2.Span.SpanKind, span.kind, "SPAN_KIND_", "INTERNAL"),
        "start_time": span.start_time_unix_nano / 1e9, "end_time": _seconds(span.end_time_unix_nano),
        "status": _enum_name(trace_pb2.Status.StatusCode, span.status.code, "STATUS_CODE_", "UNSET"),
        "status_message": span.status.message or None, "worker": first(values, WORKER_KEYS) or worker,
        "mini_batch_id": where["mini_batch_id"], "attempt": where["attempt"], "attributes": {**values, **extra},
        "events": [{"name": e.name, "time": e.time_unix_nano / 1e9, "attributes": attributes(e.attributes)}
                   for e in span.events],
    }


def _enum_name(enum: Any, number: int, prefix: str, unspecified: str) -> str:
    try:
        name = enum.Name(number).removeprefix(prefix)
    except ValueError:
        return unspecified
    return unspecified if name == "UNSPECIFIED" else name


# ----------------------------------------------------------------------------- logs
def log_rows(request: Any) -> tuple[Rows, int, str]:
    rows = Rows()
    now = time.time()
    for resource_logs in request.resource_logs:
        _, worker = _resource(resource_logs.resource)
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                rows.log_lines.append(_log_row(record, worker, scope_logs.scope.name or None, now))
    return rows, 0, ""


def _log_row(record: Any, worker: str | None, logger: str | None, now: float) -> dict[str, Any]:
    values = attributes(record.attributes)
    body = any_value(record.body)
    text = body if isinstance(body, str) else "" if body is None else json.dumps(body, ensure_ascii=False)
    stack = values.get("exception.stacktrace")
    if isinstance(stack, str) and stack:
        if stack.strip() not in text:
            text = f"{text}\n{stack.rstrip()}" if text else stack.rstrip()
        del values["exception.stacktrace"]  # it is in the text now
    elif values.get("exception.type"):
        text = f"{text}\n{values['exception.type']}: {values.get('exception.message') or ''}".strip()
    if record.event_name:
        values["event.name"] = record.event_name
    where = placement(values)
    return {
        "time": _seconds(record.time_unix_nano) or _seconds(record.observed_time_unix_nano) or now,
        "worker": first(values, WORKER_KEYS) or worker, "stream": "log", **where,
        "level": _severity(record.severity_number, record.severity_text), "logger": logger, "text": text,
        "trace_id": hex_id(record.trace_id, 32), "span_id": hex_id(record.span_id, 16),
        "attributes": _log_attributes(values) or None,
    }


def _log_attributes(values: dict[str, Any]) -> dict[str, Any]:
    """A record's attributes less the ones in columns; ``custom_dimensions`` (a map) flattened."""
    result = without(values, COLUMN_KEYS | {"custom_dimensions"})
    dimensions = values.get("custom_dimensions")
    if isinstance(dimensions, dict):
        result.update(dimensions)
    elif dimensions is not None:
        result["custom_dimensions"] = dimensions
    return result


def _severity(number: int, text: str) -> str:
    if 1 <= number <= 24:
        return _SEVERITIES[(number - 1) // 4]
    return level_from_text(text)


# ----------------------------------------------------------------------------- metrics
def metric_rows(request: Any) -> tuple[Rows, int, str]:
    rows = Rows()
    now = time.time()
    for resource_metrics in request.resource_metrics:
        _, worker = _resource(resource_metrics.resource)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                rows.metrics.extend(_metric_points(metric, worker, now))
    return rows, 0, ""


def _metric_points(metric: Any, worker: str | None, now: float) -> list[dict[str, Any]]:
    kind = metric.WhichOneof("data")
    if kind is None:
        return []
    data = getattr(metric, kind)
    rows = []
    for point in data.data_points:
        labels = attributes(point.attributes)
        for name, row_kind, value, extra in _samples(metric.name, kind, data, point):
            rows.append(_metric_row(metric, name, row_kind, value, {**labels, **extra}, point, worker, now))
    return rows


def _samples(name: str, kind: str, data: Any, point: Any) -> Iterator[tuple[str, str, float, dict[str, str]]]:
    """(name, kind, value, extra labels) of each stored series of one data point."""
    if kind in ("gauge", "sum"):
        number = point.WhichOneof("value")
        if number is not None:
            monotonic = kind == "sum" and data.is_monotonic
            yield name, "counter" if monotonic else "gauge", float(getattr(point, number)), {}
        return
    row_kind = "summary" if kind == "summary" else "histogram"
    yield f"{name}_count", row_kind, float(point.count), {}
    if kind == "summary" or point.HasField("sum"):
        yield f"{name}_sum", row_kind, point.sum, {}
    if kind == "histogram":
        cumulative = 0
        for bound, count in zip([*point.explicit_bounds, float("inf")], point.bucket_counts, strict=False):
            cumulative += count
            yield f"{name}_bucket", row_kind, float(cumulative), {"le": _le(bound)}
    elif kind == "summary":
        for quantile in point.quantile_values:
            yield name, row_kind, quantile.value, {"quantile": repr(quantile.quantile)}


def _metric_row(metric: Any, name: str, kind: str, value: float, labels: dict[str, Any], point: Any,
                worker: str | None, now: float) -> dict[str, Any]:
    where = placement(labels)
    return {
        "time": _seconds(point.time_unix_nano) or now, "worker": first(labels, WORKER_KEYS) or worker, **where,
        "name": name, "kind": kind, "value": value, "value_json": None, "description": metric.description or "",
        "labels": labels,
    }


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


SIGNALS = {
    "traces": Signal("traces", trace_service_pb2.ExportTraceServiceRequest, trace_service_pb2.ExportTraceServiceResponse,
                     span_rows, "rejected_spans"),
    "logs": Signal("logs", logs_service_pb2.ExportLogsServiceRequest, logs_service_pb2.ExportLogsServiceResponse,
                   log_rows, "rejected_log_records"),
    "metrics": Signal("metrics", metrics_service_pb2.ExportMetricsServiceRequest,
                      metrics_service_pb2.ExportMetricsServiceResponse, metric_rows, "rejected_data_points"),
}
