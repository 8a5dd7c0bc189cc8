"""pipeobs records -> Application Insights envelopes (pure functions, no I/O).

One record gives one or more envelopes (:func:`to_envelopes`):

=========================================  ==============================================
record                                     envelopes
=========================================  ==============================================
span, kind ``CONSUMER``/``SERVER``         ``Request`` (``job``, ``mini_batch``)
span, other kinds                          ``RemoteDependency``, ``type`` "InProc" (or
                                           "HTTP" / the ``db.system`` for client spans)
span event ``exception``                   ``Exception`` (parsed stack), child of the span
other span events                          ``Message`` (the event name), child of the span
log                                        ``Message``; ``Exception`` for a logged traceback
metric with a finite numeric ``value``     ``Metric``
metric without one (``log_list``, rows,    ``Message`` ``"<name> = <value_json>"`` with
tables, tags, NaN)                         ``metric_name``/``metric_kind``/``metric_value``
=========================================  ==============================================

Severity (``severityLevel``): DEBUG 0 Verbose, INFO 1 Information, WARNING 2, ERROR 3, CRITICAL 4;
other levels as opencensus does (``(levelno - 1) // 10``, so 25 is Warning). Lines captured
from stdout are Information and lines from stderr Warning (:data:`STREAM_SEVERITY`): stderr
carries warnings and progress bars as well as errors, and a job's errors already reach
App Insights as exceptions, so Error would make every progress bar look like a failure.

Tags: ``ai.operation.id`` = trace id (32 hex, the same for spans, logs and metrics),
``ai.operation.parentId`` = the span a log/metric was written in, or a span's parent (the span's
own id is ``baseData.id``), ``ai.cloud.role`` = step name, ``ai.cloud.roleInstance`` = worker.

``properties`` (customDimensions) are flat and string-valued, as the schema says: strings as
they are, numbers and booleans in JSON spelling (``7``, ``1.5``, ``true``), None as ``null``,
nested mappings flattened with dotted keys (``{"a": {"b": 1}}`` -> ``a.b = "1"``), lists as JSON
text; never a Python repr. Every envelope carries ``step_id`` and ``worker``, and
``mini_batch_id`` and ``attempt`` when the record has them (absent rather than ``"None"``).
These context keys win over a user dimension of the same name; a different user value is kept
as ``custom_dimensions.<key>``.
"""

from __future__ import annotations

import json
import math
import platform
import secrets
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import pipeobs
from pipeobs_appinsights._version import __version__
from pipeobs_appinsights.tracebacks import MAX_MESSAGE, exception_details

Envelope = dict[str, Any]

VERBOSE, INFORMATION, WARNING, ERROR, CRITICAL = range(5)
LEVEL_SEVERITY = {"DEBUG": VERBOSE, "INFO": INFORMATION, "WARNING": WARNING, "WARN": WARNING, "ERROR": ERROR}
LEVEL_SEVERITY |= {"CRITICAL": CRITICAL, "FATAL": CRITICAL}
STREAM_SEVERITY = {"stdout": INFORMATION, "stderr": WARNING}
REQUEST_KINDS = frozenset({"CONSUMER", "SERVER"})
CONTEXT_KEYS = ("step_id", "worker", "mini_batch_id", "attempt")
MAX_KEY = 150
MAX_VALUE = 8192
MAX_NAME = 1024
SDK_VERSION = f"py{platform.python_version()}:pipeobs{pipeobs.__version__}:ext{__version__}"
_TRACEBACK = "Traceback (most recent call last):"
_HEX = frozenset("0123456789abcdef")


def to_envelopes(record: Mapping[str, Any], ikey: str) -> list[Envelope]:
    """The envelopes of one record; a ``ValueError`` for a record type this exporter does not know."""
    mapper = _MAPPERS.get(record.get("type", ""))
    if mapper is None:
        raise ValueError(f"unsupported record type {record.get('type')!r}")
    return mapper(record, ikey)


# -- spans -----------------------------------------------------------------------------------


def span_envelopes(record: Mapping[str, Any], ikey: str) -> list[Envelope]:
    """A Request or RemoteDependency, then one envelope per event."""
    span_id = _hex_id(record.get("span_id"), 16) or secrets.token_hex(8)
    attributes = dict(record.get("attributes") or {})
    start = record.get("start", record.get("time"))
    end = record.get("end")
    base: dict[str, Any] = {
        "id": span_id,
        "name": _text(record.get("name"), "(unnamed span)", MAX_NAME),
        "duration": format_duration((end - start) if end is not None and start is not None else 0.0),
        "success": record.get("status") != "ERROR",
        "properties": span_properties(record, attributes),
    }
    tags = _tags(record, parent_id=record.get("parent_span_id"))
    if record.get("kind") in REQUEST_KINDS:
        status = attributes.get("http.response.status_code", attributes.get("http.status_code"))
        base["responseCode"] = str(status if status is not None else 0)
        tags["ai.operation.name"] = base["name"]
        envelopes = [_envelope("Request", "RequestData", base, start, ikey, tags)]
    else:
        base.update(dependency_target(record.get("kind"), attributes))
        envelopes = [_envelope("RemoteDependency", "RemoteDependencyData", base, start, ikey, tags)]
    for event in record.get("events") or ():
        envelopes.append(_event_envelope(record, span_id, event, ikey))
    return envelopes


def dependency_target(kind: str | None, attributes: Mapping[str, Any]) -> dict[str, Any]:
    """``type``/``data``/``target``/``resultCode`` of a dependency: HTTP and DB client spans, else InProc."""
    if kind == "CLIENT":
        method = attributes.get("http.request.method", attributes.get("http.method"))
        if method is not None:
            url = attributes.get("url.full", attributes.get("http.url"))
            status = attributes.get("http.response.status_code", attributes.get("http.status_code"))
            out: dict[str, Any] = {"type": "HTTP", "resultCode": str(status if status is not None else 0)}
            out.update({"data": str(url)[:MAX_VALUE]} if url else {})
            host = attributes.get("server.address", attributes.get("net.peer.name"))
            return out | ({"target": str(host)[:MAX_NAME]} if host else {})
        system = attributes.get("db.system")
        if system is not None:
            statement = attributes.get("db.query.text", attributes.get("db.statement"))
            return {"type": str(system), "resultCode": "0"} | (
                {"data": str(statement)[:MAX_VALUE]} if statement else {}
            )
    return {"type": "InProc", "resultCode": "0"}


def span_properties(record: Mapping[str, Any], attributes: Mapping[str, Any]) -> dict[str, str]:
    """Context keys, the span's status message, and its attributes (minus copies of the context)."""
    context = _context(record, attributes)
    own: dict[str, Any] = {}
    if record.get("status_message"):
        own["status_message"] = record["status_message"]
    for key, value in attributes.items():
        short = key.removeprefix("pipeobs.")
        if short in context and short != key and _scalar_text(value) == context[short]:
            continue  # pipeobs.step_id & co. repeat the context keys
        own[key] = value
    return merge_properties(context, own)


def _event_envelope(record: Mapping[str, Any], span_id: str, event: Mapping[str, Any], ikey: str) -> Envelope:
    attributes = dict(event.get("attributes") or {})
    tags = _tags(record, parent_id=span_id)
    when = event.get("time", record.get("end"))
    if event.get("name") == "exception":
        details = exception_details(
            attributes.pop("exception.type", None),
            attributes.pop("exception.message", None),
            attributes.pop("exception.stacktrace", None),
        )
        properties = merge_properties(_context(record, record.get("attributes") or {}), attributes)
        base = {"exceptions": details, "severityLevel": ERROR, "properties": properties}
        return _envelope("Exception", "ExceptionData", base, when, ikey, tags)
    properties = merge_properties(_context(record, record.get("attributes") or {}), attributes)
    base = {"message": _text(event.get("name"), "(unnamed event)", MAX_MESSAGE), "severityLevel": INFORMATION}
    return _envelope("Message", "MessageData", base | {"properties": properties}, when, ikey, tags)


# -- logs ------------------------------------------------------------------------------------


def log_envelopes(record: Mapping[str, Any], ikey: str) -> list[Envelope]:
    """A Message; an Exception when a log record's text carries a Python traceback."""
    text = str(record.get("text") or "")
    severity = severity_of(record.get("level"), record.get("stream"))
    own: dict[str, Any] = {"logger": record.get("logger"), "stream": record.get("stream")}
    own.update({"phase": record["phase"]} if record.get("phase") else {})
    properties = merge_properties(_context(record, {}), _drop_none(own))
    properties = merge_properties(properties, record.get("custom_dimensions") or {})
    tags = _tags(record, parent_id=record.get("span_id"))
    where = text.find(_TRACEBACK)
    if record.get("stream") == "log" and where >= 0:
        stack = text[where:]
        head = text[:where].strip()
        if head:
            properties.setdefault("log_message", head[:MAX_VALUE])
        base = {"exceptions": exception_details(None, None, stack), "severityLevel": severity, "properties": properties}
        return [_envelope("Exception", "ExceptionData", base, record.get("time"), ikey, tags)]
    base = {"message": _text(text, "(empty)", MAX_MESSAGE), "severityLevel": severity, "properties": properties}
    return [_envelope("Message", "MessageData", base, record.get("time"), ikey, tags)]


def severity_of(level: str | int | None, stream: str | None = None) -> int:
    """App Insights severityLevel 0..4 of a logging level name (or number), or of a plain line's stream."""
    if level is None or level == "":
        return STREAM_SEVERITY.get(stream or "", INFORMATION)
    if isinstance(level, str):
        known = LEVEL_SEVERITY.get(level.strip().upper())
        if known is not None:
            return known
        number = _level_number(level)
        if number is None:
            return INFORMATION
        level = number
    return min(CRITICAL, max(0, int(level) - 1) // 10)


def _level_number(name: str) -> int | None:
    text = name.strip().removeprefix("Level ").strip()
    return int(text) if text.isdigit() else None


# -- metrics ---------------------------------------------------------------------------------


def metric_envelopes(record: Mapping[str, Any], ikey: str) -> list[Envelope]:
    """A Metric for a finite number; otherwise a Message holding the value's JSON text."""
    name = _text(record.get("name"), "(unnamed metric)", MAX_NAME)
    value: Any = record.get("value")
    own: dict[str, Any] = {"metric_kind": record.get("kind")}
    own.update({"metric_description": record["description"]} if record.get("description") else {})
    properties = merge_properties(_context(record, {}), _drop_none(own))
    properties = merge_properties(properties, record.get("labels") or {})
    tags = _tags(record, parent_id=record.get("span_id"))
    if _finite_number(value):
        base: dict[str, Any] = {"metrics": [{"name": name, "value": float(value)}], "properties": properties}
        return [_envelope("Metric", "MetricData", base, record.get("time"), ikey, tags)]
    value_json = record.get("value_json")
    if value_json is None:
        value_json = json.dumps(value, default=str)  # NaN and infinities spell themselves
    properties.update({"metric_name": name[:MAX_VALUE], "metric_value": str(value_json)[:MAX_VALUE]})
    base = {"message": f"{name} = {value_json}"[:MAX_MESSAGE], "severityLevel": INFORMATION}
    base["properties"] = properties
    return [_envelope("Message", "MessageData", base, record.get("time"), ikey, tags)]


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# -- shared ----------------------------------------------------------------------------------


def _envelope(
    type_name: str, base_type: str, base: dict[str, Any], when: float | None, ikey: str, tags: dict[str, str]
) -> Envelope:
    return {
        "name": f"Microsoft.ApplicationInsights.{type_name}",
        "time": format_time(when),
        "iKey": ikey,
        "tags": tags,
        "data": {"baseType": base_type, "baseData": {"ver": 2, **base}},
    }


def _tags(record: Mapping[str, Any], parent_id: Any) -> dict[str, str]:
    tags = {"ai.internal.sdkVersion": SDK_VERSION}
    if record.get("step_name"):
        tags["ai.cloud.role"] = str(record["step_name"])[:MAX_NAME]
    if record.get("worker"):
        tags["ai.cloud.roleInstance"] = str(record["worker"])[:MAX_NAME]
    trace_id = _hex_id(record.get("trace_id"), 32)
    if trace_id:
        tags["ai.operation.id"] = trace_id
        parent = _hex_id(parent_id, 16)
        if parent:
            tags["ai.operation.parentId"] = parent
    return tags


def _hex_id(value: Any, length: int) -> str | None:
    """A lower-case hex id of ``length`` digits, or None (absent, malformed or all zeros)."""
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    if len(text) != length or not _HEX.issuperset(text) or not text.strip("0"):
        return None
    return text


def _context(record: Mapping[str, Any], attributes: Mapping[str, Any]) -> dict[str, str]:
    context: dict[str, str] = {}
    for key in CONTEXT_KEYS:
        value = record.get(key)
        if value is None:
            value = attributes.get(f"pipeobs.{key}")
        if value is not None:
            context[key] = _scalar_text(value)
    return context


def merge_properties(context: Mapping[str, str], extra: Mapping[str, Any]) -> dict[str, str]:
    """``context`` plus ``extra`` flattened; ``context`` keys win, a differing value is kept aside."""
    merged = dict(context)
    for key, value in flatten_properties(extra).items():
        if key in context and key in CONTEXT_KEYS:
            if value != context[key]:
                merged[f"custom_dimensions.{key}"[:MAX_KEY]] = value
            continue
        merged[key] = value
    return merged


def flatten_properties(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A flat ``{str: str}``: nested mappings become dotted keys, every leaf is stringified alone."""
    out: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_properties(value, name + "."))
        else:
            out[name[:MAX_KEY]] = _scalar_text(value)[:MAX_VALUE]
    return out


_JSON_FLOATS = {float("nan"): "NaN", float("inf"): "Infinity", float("-inf"): "-Infinity"}


def _scalar_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    kind = type(value)
    if kind is int:  # the common cases without json.dumps (2 us a call, 8 calls a record)
        return str(value)
    if kind is bool:
        return "true" if value else "false"
    if value is None:
        return "null"
    if kind is float:
        return repr(value) if value == value and value not in _JSON_FLOATS else json.dumps(value)
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and not isinstance(value, bool | int | float):
        try:
            value = item()
        except (TypeError, ValueError):
            pass
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)  # 7, 1.5, true, null, NaN, Infinity
    if isinstance(value, list | tuple | set | frozenset | Mapping):
        return json.dumps(list(value) if isinstance(value, set | frozenset) else value, default=str)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def _drop_none(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in mapping.items() if value is not None}


def _text(value: Any, default: str, limit: int) -> str:
    text = "" if value is None else str(value)
    return (text if text.strip() else default)[:limit]


_last_second: tuple[Any, str] = (None, "")  # the last whole second formatted: a batch mostly shares it


def format_time(epoch: float | None) -> str:
    """ISO 8601 UTC with microseconds and ``Z``: ``2026-11-26T10:55:53.424230Z``."""
    global _last_second
    moment = datetime.now(UTC) if epoch is None else datetime.fromtimestamp(epoch, tz=UTC)
    second = moment.replace(microsecond=0)
    cached = _last_second  # one read and one write of a tuple: safe across threads
    if second != cached[0]:
        cached = _last_second = (second, second.strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{cached[1]}.{moment.microsecond:06d}Z"


def format_duration(seconds: float) -> str:
    """A .NET TimeSpan: ``d.hh:mm:ss.ffffff`` (negative durations are clamped to zero)."""
    micros = max(0, round(seconds * 1_000_000))
    rest, fraction = divmod(micros, 1_000_000)
    rest, secs = divmod(rest, 60)
    rest, minutes = divmod(rest, 60)
    days, hours = divmod(rest, 24)
    return f"{days}.{hours:02d}:{minutes:02d}:{secs:02d}.{fraction:06d}"


_MAPPERS: dict[str, Callable[[Mapping[str, Any], str], list[Envelope]]] = {
    "span": span_envelopes,
    "log": log_envelopes,
    "metric": metric_envelopes,
}
