"""App Insights ingestion (``POST /v2/track``, ``/v2.1/track``): envelopes in, store rows out.

A body is a JSON array of envelopes, one envelope, or newline-delimited envelopes. Each item is
checked on its own (``name``, ``time``, ``iKey``, ``data.baseType``, ``data.baseData`` and the
fields its base type needs); a rejected item becomes ``{"index", "statusCode": 400, "message"}``
in the answer's ``errors``, as the ingestion service does, and the others are stored.

Mapping (``tags`` are the envelope's context tags, ``properties`` the baseData's):

* ``RequestData`` / ``RemoteDependencyData`` -> ``spans``: span id = ``id``, trace id =
  ``ai.operation.id``, parent = ``ai.operation.parentId`` (bare, or ``|trace.span.``), start =
  ``time``, end = start + ``duration``, status ERROR/OK/UNSET from ``success``, kind SERVER for a
  request, INTERNAL for an ``INPROC`` dependency, CLIENT for other dependencies; attributes =
  properties plus ``appinsights.*`` (codes, url, type, target, data, role, measurements).
* ``MessageData`` -> ``log_lines`` (level from ``severityLevel``); ``ExceptionData`` -> one line
  at ERROR (CRITICAL for severity 4) with the formatted exception; ``EventData`` -> a line of the
  ``event`` logger. logger = property ``logger`` or ``module``; stream = property ``stream``
  (``stdout``/``stderr`` lines get no level, as the driver stores them) or ``log``; the other
  properties (the custom dimensions, and what OpenCensus adds: process, fileName, lineNumber)
  are the line's ``attributes``.
* ``MetricData`` -> one ``metrics`` row per entry, labels = properties; ``kind`` gauge for a
  measurement, summary for an aggregation (count/min/max/stdDev kept in ``value_json``), or the
  ``metric_kind`` property; a Message with ``metric_name``/``metric_value`` properties (how
  pipeobs's exporter sends non-numeric metrics) -> a row with that ``value_json``.
* Any other base type -> a line whose logger is the base type and whose text is the baseData.

Everywhere: worker = property ``pipeobs.worker`` or tag ``ai.cloud.roleInstance``; mini-batch
and attempt = property ``pipeobs.mini_batch_id`` / ``mini_batch_id`` and ``pipeobs.attempt`` /
``attempt``; phase = ``pipeobs.phase`` / ``phase``. Properties that fill a column of a log line
or metric are not repeated in its ``attributes`` / ``labels``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pipeobs.collector._body import TOO_DEEP, Refused
from pipeobs.collector._mapping import (
    COLUMN_KEYS,
    WORKER_KEYS,
    first,
    hex_id,
    int_or_none,
    level_from_text,
    level_name,
    placement,
    without,
)
from pipeobs.collector._sink import Rows

JSON_TYPES = frozenset({"", "application/json", "text/json", "application/x-json-stream", "application/x-ndjson",
                        "application/ndjson", "application/jsonl", "text/plain", "application/octet-stream"})
_STREAMS = frozenset({"stdout", "stderr", "log"})
_DURATION = re.compile(r"(?:(\d+)\.)?(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)")
_REQUIRED: dict[str, tuple[tuple[str, type], ...]] = {
    "MessageData": (("message", str),),
    "ExceptionData": (("exceptions", list),),
    "RequestData": (("id", str), ("duration", str)),
    "RemoteDependencyData": (("name", str), ("duration", str)),
    "MetricData": (("metrics", list),),
    "EventData": (("name", str),),
}
Error = dict[str, Any]


def accepts(media_type: str) -> bool:
    """Whether a Content-Type can carry envelopes (JSON, NDJSON; curl's text/plain too)."""
    return media_type in JSON_TYPES or media_type.endswith("+json")


def track(body: bytes, instrumentation_key: str | None) -> tuple[Rows, int, list[Error]]:
    """The rows of the accepted items, how many items were posted, and one error per rejected item."""
    rows, errors = Rows(), []
    items = split_items(body)
    for index, (item, problem) in enumerate(items):
        problem = problem or check_envelope(item, instrumentation_key)
        if problem is None:
            try:
                rows.extend(envelope_rows(item))
            except (TypeError, ValueError, AttributeError) as exc:  # a field of an unexpected type
                problem = f"invalid envelope: {exc}"
        if problem is not None:
            errors.append({"index": index, "statusCode": 400, "message": problem})
    return rows, len(items), errors


def answer(received: int, errors: list[Error]) -> tuple[int, dict[str, Any]]:
    """The TrackResponse: 200 all accepted, 206 some rejected, 400 none accepted."""
    accepted = received - len(errors)
    status = 200 if not errors else 206 if accepted else 400
    return status, {"itemsReceived": received, "itemsAccepted": accepted, "errors": errors}


# ----------------------------------------------------------------------------- parsing
def split_items(body: bytes) -> list[tuple[Any, str | None]]:
    """Each posted item, with why it is not JSON (None when it is)."""
    try:
        text = body.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        raise Refused(400, "body is not UTF-8 text") from None
    if not text:
        raise Refused(400, "empty body: post a JSON array of envelopes")
    if text.startswith("["):
        try:
            items = json.loads(text)
        except ValueError as exc:
            raise Refused(400, f"body is not JSON: {exc}") from None
        except RecursionError:
            raise Refused(400, TOO_DEEP) from None
        if not items:
            raise Refused(400, "empty array: no telemetry items")
        return [(item, None) for item in items]
    try:
        return [(json.loads(text), None)]
    except ValueError:
        pass
    except RecursionError:
        raise Refused(400, TOO_DEEP) from None
    parsed: list[tuple[Any, str | None]] = []
    for line in filter(None, (line.strip() for line in text.splitlines())):
        try:
            parsed.append((json.loads(line), None))
        except ValueError as exc:
            parsed.append((None, f"item is not JSON: {exc}"))
        except RecursionError:
            parsed.append((None, TOO_DEEP))
    if all(problem for _, problem in parsed):
        raise Refused(400, "body is neither a JSON array nor newline-delimited JSON")
    return parsed


def check_envelope(item: Any, instrumentation_key: str | None) -> str | None:
    """Why an item cannot be accepted, or None."""
    if not isinstance(item, dict):
        return "item is not a JSON object"
    for name in ("name", "time", "iKey"):
        if not isinstance(item.get(name), str) or not item[name]:
            return f"field '{name}' is required"
    if instrumentation_key and item["iKey"].strip().lower() != instrumentation_key.strip().lower():
        return "Invalid instrumentation key"
    try:
        parse_time(item["time"])
    except ValueError:
        return f"field 'time' is not an ISO 8601 time: {item['time']!r}"
    data = item.get("data")
    if not isinstance(data, dict):
        return "field 'data' is required"
    if not isinstance(data.get("baseType"), str) or not data["baseType"]:
        return "field 'data.baseType' is required"
    base = data.get("baseData")
    if not isinstance(base, dict):
        return "field 'data.baseData' is required"
    return _check_base(data["baseType"], base)


def _check_base(base_type: str, base: dict[str, Any]) -> str | None:
    for name, kind in _REQUIRED.get(base_type, ()):
        if not isinstance(base.get(name), kind) or not base[name]:
            return f"field 'data.baseData.{name}' is required for {base_type}"
    if "duration" in base and parse_duration(base["duration"]) is None:
        return f"field 'data.baseData.duration' is not a duration (d.hh:mm:ss.fff): {base['duration']!r}"
    if base_type == "ExceptionData" and not all(isinstance(e, dict) for e in base["exceptions"]):
        return "field 'data.baseData.exceptions' must hold objects"
    if base_type == "MetricData":
        for metric in base["metrics"]:
            value = metric.get("value") if isinstance(metric, dict) else None
            if not isinstance(metric, dict) or not isinstance(metric.get("name"), str) or not metric["name"]:
                return "each of 'data.baseData.metrics' needs a 'name'"
            if isinstance(value, bool) or not isinstance(value, int | float):
                return f"metric '{metric['name']}' needs a numeric 'value'"
    return None


def parse_time(text: str) -> float:
    """An envelope time (ISO 8601, ``Z`` or an offset; naive means UTC) as epoch seconds."""
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_duration(text: Any) -> float | None:
    """``d.hh:mm:ss.fff`` (or .NET's ``hh:mm:ss.fffffff``) as seconds; None if it is not one."""
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        return None
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


# ----------------------------------------------------------------------------- mapping
def envelope_rows(envelope: dict[str, Any]) -> Rows:
    """The store rows of one valid envelope."""
    data = envelope["data"]
    context = _context(envelope)
    rows = Rows()
    mapper = _MAPPERS.get(data["baseType"], _other_rows)
    mapper(envelope, data["baseData"], context, rows)
    return rows


def _context(envelope: dict[str, Any]) -> dict[str, Any]:
    tags = _mapping_or_empty(envelope.get("tags"))
    properties = _mapping_or_empty(envelope["data"]["baseData"].get("properties"))
    trace_id, parent = _parent(tags.get("ai.operation.parentId"), hex_id(_text(tags.get("ai.operation.id"))))
    return {
        "time": parse_time(envelope["time"]), "tags": tags, "properties": properties,
        "worker": first(properties, WORKER_KEYS) or tags.get("ai.cloud.roleInstance"),
        "trace_id": trace_id, "span_id": parent, **placement(properties),
    }


def _parent(value: Any, trace_id: str | None) -> tuple[str | None, str | None]:
    """(trace id, parent span id) from ``ai.operation.parentId``: bare, or the legacy ``|trace.span.``."""
    value = _text(value).strip()
    if value.startswith("|"):
        head, _, span = value.strip("|").rstrip(".").partition(".")
        trace_id = trace_id or hex_id(head)
        parent = hex_id(span or head)
    else:
        parent = hex_id(value)
    return trace_id, (None if parent == trace_id else parent)


def _mapping_or_empty(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _log_row(context: dict[str, Any], properties: dict[str, Any], level: str | None,
             text: str) -> dict[str, Any]:
    """A log line; the properties that fill no column of their own become its attributes."""
    stream = properties.get("stream") if properties.get("stream") in _STREAMS else "log"
    logger = properties.get("logger") or properties.get("module")
    consumed = {*COLUMN_KEYS, "stream", "logger", "level", "log_message"}
    if logger == properties.get("module"):
        consumed.add("module")
    if properties.get("worker") == context["worker"]:
        consumed.add("worker")
    keys = ("time", "worker", "phase", "mini_batch_id", "attempt", "trace_id", "span_id")
    return {
        **{k: context[k] for k in keys}, "stream": stream, "logger": logger, "text": text,
        "level": None if stream != "log" else level,  # a captured stdout/stderr line has no level
        "attributes": without(properties, consumed) or None,
    }


def _message_rows(envelope: dict[str, Any], base: dict[str, Any], context: dict[str, Any], rows: Rows) -> None:
    properties = context["properties"]
    if "metric_name" in properties and "metric_value" in properties:  # pipeobs's own non-numeric metrics
        rows.metrics.append(_metric_row(context, properties["metric_name"], None, properties["metric_value"], "tag"))
        return
    severity = int_or_none(base.get("severityLevel"))
    level = level_name(severity) if severity is not None else level_from_text(properties.get("level"))
    rows.log_lines.append(_log_row(context, properties, level, base["message"]))


def _exception_rows(envelope: dict[str, Any], base: dict[str, Any], context: dict[str, Any], rows: Rows) -> None:
    properties = context["properties"]
    level = "CRITICAL" if int_or_none(base.get("severityLevel")) == 4 else "ERROR"
    text = "\n".join(format_exception(e) for e in base["exceptions"])
    if properties.get("log_message"):  # pipeobs's exporter: the record's message, then its traceback
        text = f"{properties['log_message']}\n{text}"
    rows.log_lines.append(_log_row(context, properties, level, text))


def format_exception(exception: dict[str, Any]) -> str:
    """One exception as Python prints it; OpenCensus already sends the formatted record and traceback."""
    message = str(exception.get("message") or "")
    stack = exception.get("stack")
    if "Traceback (most recent call last)" in message:
        return message
    if isinstance(stack, str) and "Traceback (most recent call last)" in stack:
        return stack.rstrip("\n")
    lines = [f"{exception.get('typeName') or 'Exception'}: {message}".rstrip(": ")]
    if isinstance(stack, str) and stack:
        lines.append(stack.rstrip("\n"))
    for frame in exception.get("parsedStack") or ():
        if isinstance(frame, dict):
            lines.append(f'  File "{frame.get("fileName")}", line {frame.get("line")}, in {frame.get("method")}')
    return "\n".join(lines)


def _event_rows(envelope: dict[str, Any], base: dict[str, Any], context: dict[str, Any], rows: Rows) -> None:
    properties = {**context["properties"], **_mapping_or_empty(base.get("measurements")), "logger": "event"}
    rows.log_lines.append(_log_row(context, properties, "INFO", base["name"]))


def _other_rows(envelope: dict[str, Any], base: dict[str, Any], context: dict[str, Any], rows: Rows) -> None:
    text = f"{envelope['name']} {json.dumps(base, default=str, ensure_ascii=False)}"
    properties = {"logger": envelope["data"]["baseType"]}
    rows.log_lines.append(_log_row(context, properties, "INFO", text))


def _metric_rows(envelope: dict[str, Any], base: dict[str, Any], context: dict[str, Any], rows: Rows) -> None:
    for metric in base["metrics"]:
        stats = {k: metric[k] for k in ("count", "min", "max", "stdDev") if metric.get(k) is not None}
        aggregated = metric.get("kind") in (1, "Aggregation") or (stats.get("count") or 1) > 1
        namespace = metric.get("ns") if metric.get("ns") != metric["name"] else None
        row = _metric_row(context, metric["name"], float(metric["value"]), stats or None,
                          "summary" if aggregated else "gauge", namespace)
        rows.metrics.append(row)


def _metric_row(context: dict[str, Any], name: str, value: float | None, value_json: Any, kind: str,
                description: str | None = None) -> dict[str, Any]:
    """A metrics row; pipeobs's exporter names the original kind and description in properties."""
    properties = context["properties"]
    consumed = {*COLUMN_KEYS, "metric_kind", "metric_description", "metric_name", "metric_value"}
    return {
        "time": context["time"], "worker": context["worker"], "phase": context["phase"],
        "mini_batch_id": context["mini_batch_id"], "attempt": context["attempt"], "name": name,
        "kind": properties.get("metric_kind") or kind, "value": value, "value_json": value_json,
        "description": properties.get("metric_description") or description or "",
        "labels": without(properties, consumed), "trace_id": context["trace_id"], "span_id": context["span_id"],
    }


def _span_rows(envelope: dict[str, Any], base: dict[str, Any], context: dict[str, Any], rows: Rows) -> None:
    request = envelope["data"]["baseType"] == "RequestData"
    start = context["time"]
    end = start + (parse_duration(base["duration"]) or 0.0)
    span_id = _span_id(base.get("id")) or os.urandom(8).hex()
    code = base.get("responseCode" if request else "resultCode")
    success = base.get("success")
    if isinstance(success, str):
        success = {"true": True, "false": False}.get(success.lower())
    status = "ERROR" if success is False else "OK" if success is True else "UNSET"
    message = context["properties"].get("status_message") or (f"code {code}" if code not in (None, "") else None)
    dependency_type = _text(base.get("type"))
    kind = "SERVER" if request else "INTERNAL" if dependency_type.upper() == "INPROC" else "CLIENT"
    rows.spans.append({
        "span_id": span_id, "trace_id": context["trace_id"] or os.urandom(16).hex(),
        "parent_span_id": context["span_id"] if context["span_id"] != span_id else None,
        "name": base.get("name") or context["tags"].get("ai.operation.name") or ("request" if request else "dependency"),
        "kind": kind, "start_time": start, "end_time": end, "status": status,
        "status_message": message if status == "ERROR" else None,
        "worker": context["worker"], "mini_batch_id": context["mini_batch_id"], "attempt": context["attempt"],
        "attributes": _span_attributes(base, context, code), "events": [],
    })


def _span_id(value: Any) -> str | None:
    value = _text(value).strip()
    if value.startswith("|"):  # legacy Request-Id: |trace.span.
        head, _, span = value.strip("|").rstrip(".").partition(".")
        return hex_id(span or head)
    return hex_id(value)


def _span_attributes(base: dict[str, Any], context: dict[str, Any], code: Any) -> dict[str, Any]:
    attributes = dict(context["properties"])
    extras = {"code": code, "url": base.get("url"), "source": base.get("source"), "type": base.get("type"),
              "target": base.get("target"), "data": base.get("data"), "role": context["tags"].get("ai.cloud.role"),
              "measurements": base.get("measurements") or None}
    attributes.update({f"appinsights.{k}": v for k, v in extras.items() if v not in (None, "")})
    return attributes


_MAPPERS: dict[str, Callable[[dict[str, Any], dict[str, Any], dict[str, Any], Rows], None]] = {
    "MessageData": _message_rows,
    "ExceptionData": _exception_rows,
    "EventData": _event_rows,
    "MetricData": _metric_rows,
    "RequestData": _span_rows,
    "RemoteDependencyData": _span_rows,
}
