"""pipeobs records -> OpenTelemetry SDK objects, ready for the official OTLP exporters.

The record model is :mod:`pipeobs.export.base`'s. One :class:`RecordConverter` lives as long as
its exporter: it builds one :class:`~opentelemetry.sdk.resources.Resource` per (step, worker)
and remembers when each cumulative series was first seen.

* **Resource.** Built with ``Resource.create``, which applies ``OTEL_RESOURCE_ATTRIBUTES`` (the
  spec's ``k=v,k2=v2`` form, values percent-decoded) and ``OTEL_SERVICE_NAME``. On top of those,
  pipeobs sets the facts it owns: ``pipeobs.step_id``, ``pipeobs.step_name`` and
  ``service.instance.id`` = worker. ``service.name`` is ``OTEL_SERVICE_NAME``, else a
  ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``, else the step name (the step name replaces
  the SDK's ``unknown_service`` default).
* **Spans** -> ``ReadableSpan``: ids from hex, the parent as a ``SpanContext`` in the same trace,
  kind, status (a message only with ERROR, as the API requires), times in ns, attributes, events.
  A span record with no ``end`` gets ``end = start``. Ids are not ``is_remote`` (the record does
  not say) and are marked sampled (pipeobs only records sampled spans).
* **Logs** -> ``ReadableLogRecord`` (1.45 has no ``LogData``): the trace context travels as a
  ``Context`` holding a non-recording span, never as the deprecated ``trace_id=`` arguments.
  Severity comes from the level; a plain stdout line (no level) is INFO, a stderr line WARN.
  ``custom_dimensions`` are flattened into attributes (``{"a": {"b": 1}}`` -> ``a.b = 1``); the
  ``pipeobs.*`` attributes are written last, so user dimensions cannot overwrite them.
* **Metrics** -> ``MetricsData``: numeric records become points grouped per (worker, name).
  ``counter`` and ``histogram`` records (Prometheus samples: ``_total``, ``_bucket{le}``,
  ``_count``, ``_sum``, all cumulative totals) become a monotonic cumulative ``Sum``; every
  other kind (gauge, observation, the user's ``run.log`` numbers) becomes a ``Gauge``. Labels and
  the ``pipeobs.*`` context are point attributes; a point that carries trace and span ids gets
  an exemplar pointing at its span.
* **Non-numeric user metrics** (``run.log_list`` of strings, tables, tags: ``value`` is None and
  ``value_json`` holds the value) are not dropped: OTLP metrics carry numbers only, so each
  becomes a log record with ``event_name = "pipeobs.metric"``, body = ``value_json``,
  and attributes ``pipeobs.metric.name``/``pipeobs.metric.kind`` plus the labels.

A record that cannot be converted (unknown type, bad ids, missing fields) is reported in
:attr:`ConvertedBatch.rejected` with a reason instead of failing the whole batch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.context import Context
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk.metrics import Exemplar
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from pipeobs import __version__ as _pipeobs_version
from pipeobs.export.base import Record

SCOPE = InstrumentationScope("pipeobs", _pipeobs_version)
METRIC_EVENT_NAME = "pipeobs.metric"

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_INT64 = range(-(2**63), 2**63)
_CUMULATIVE_KINDS = frozenset({"counter", "histogram"})

_SEVERITIES = {
    "DEBUG": (SeverityNumber.DEBUG, "DEBUG"),
    "INFO": (SeverityNumber.INFO, "INFO"),
    "WARNING": (SeverityNumber.WARN, "WARN"),
    "WARN": (SeverityNumber.WARN, "WARN"),
    "ERROR": (SeverityNumber.ERROR, "ERROR"),
    "CRITICAL": (SeverityNumber.FATAL, "FATAL"),
    "FATAL": (SeverityNumber.FATAL, "FATAL"),
}


@dataclass
class ConvertedBatch:
    """A batch split by signal, each part with the batch indexes of the records it came from.

    ``spans`` and ``logs`` are lists of SDK objects (``logs`` includes the non-numeric metrics);
    ``metrics`` is one ``MetricsData`` for all the numeric metric records.
    """

    spans: list[ReadableSpan] = field(default_factory=list)
    span_indexes: list[int] = field(default_factory=list)
    logs: list[ReadableLogRecord] = field(default_factory=list)
    log_indexes: list[int] = field(default_factory=list)
    metrics: MetricsData | None = None
    metric_indexes: list[int] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)

    def signals(self) -> Iterator[tuple[str, list[int], Any]]:
        """``(signal, indexes, data)`` for each signal with something to send, in OTLP naming."""
        if self.spans:
            yield "traces", self.span_indexes, self.spans
        if self.logs:
            yield "logs", self.log_indexes, self.logs
        if self.metrics is not None:
            yield "metrics", self.metric_indexes, self.metrics


@dataclass(frozen=True)
class MetricPoint:
    """A data point, and the (worker resource, name, type) of the metric it belongs to."""

    resource: Resource
    name: str
    cumulative: bool
    description: str
    point: NumberDataPoint


class RecordConverter:
    """Converts batches of pipeobs records; holds the per-worker resources and series start times."""

    def __init__(self) -> None:
        self._resources: dict[tuple[str, str, str], Resource] = {}
        self._series_start: dict[tuple[Any, ...], int] = {}

    def convert(self, records: Sequence[Record]) -> ConvertedBatch:
        """Split ``records`` by signal and convert each; unconvertible records land in ``rejected``."""
        batch = ConvertedBatch()
        points: list[MetricPoint] = []
        for index, record in enumerate(records):
            try:
                kind = record.get("type")
                if kind == "span":
                    batch.spans.append(self.span(record))
                    batch.span_indexes.append(index)
                elif kind == "log" or (kind == "metric" and not _is_number(record.get("value"))):
                    batch.logs.append(self.log(record) if kind == "log" else self.metric_as_log(record))
                    batch.log_indexes.append(index)
                elif kind == "metric":
                    points.append(self.metric_point(record))
                    batch.metric_indexes.append(index)
                else:
                    batch.rejected.append((index, f"unknown record type {kind!r}"))
            except (KeyError, TypeError, ValueError) as error:
                batch.rejected.append((index, f"malformed {record.get('type')} record: {error!r}"))
        if points:
            batch.metrics = metrics_data(points)
        return batch

    def resource(self, record: Record) -> Resource:
        """The Resource of the record's worker (one per step and worker, built once)."""
        key = (str(record.get("step_id") or ""), str(record.get("step_name") or ""), str(record.get("worker") or ""))
        resource = self._resources.get(key)
        if resource is None:
            resource = self._resources[key] = worker_resource(*key)
        return resource

    def span(self, record: Record) -> ReadableSpan:
        """A span record as an SDK ``ReadableSpan``."""
        trace_id = parse_id(record.get("trace_id"), 32)
        span_id = parse_id(record.get("span_id"), 16)
        if trace_id is None or span_id is None:
            raise ValueError(f"span {record.get('name')!r} has no valid trace_id/span_id")
        parent_id = parse_id(record.get("parent_span_id"), 16)
        start = to_ns(record["start"] if record.get("start") is not None else record["time"])
        end = to_ns(record["end"]) if record.get("end") is not None else start
        return ReadableSpan(
            name=str(record["name"]),
            context=SpanContext(trace_id, span_id, is_remote=False, trace_flags=_SAMPLED),
            parent=SpanContext(trace_id, parent_id, is_remote=False, trace_flags=_SAMPLED) if parent_id else None,
            resource=self.resource(record),
            attributes={**clean_attributes(record.get("attributes")), **context_attributes(record)},
            events=[_event(event) for event in record.get("events") or ()],
            kind=_enum_member(SpanKind, record.get("kind"), SpanKind.INTERNAL),
            status=_status(record.get("status"), record.get("status_message")),
            start_time=start,
            end_time=end,
            instrumentation_scope=SCOPE,
        )

    def log(self, record: Record) -> ReadableLogRecord:
        """A log record (a logging call, or a plain stdout/stderr line) as an SDK log record."""
        number, text = severity(record.get("level"), record.get("stream"))
        attributes = {
            **clean_attributes(record.get("custom_dimensions")),
            **context_attributes(record),
            **_present(
                {
                    "pipeobs.stream": record.get("stream"),
                    "pipeobs.logger": record.get("logger"),
                    "pipeobs.phase": record.get("phase"),
                }
            ),
        }
        return self._log_record(record, number, text, record.get("text"), attributes)

    def metric_as_log(self, record: Record) -> ReadableLogRecord:
        """A non-numeric user metric (list, table, tag...) as an event log record."""
        value_json = record.get("value_json")
        if value_json is None:
            raise ValueError(f"metric {record.get('name')!r} has neither a numeric value nor value_json")
        attributes = {
            **clean_attributes(record.get("labels")),
            **context_attributes(record),
            "pipeobs.metric.name": str(record["name"]),
            "pipeobs.metric.kind": str(record.get("kind") or ""),
        }
        return self._log_record(record, SeverityNumber.INFO, "INFO", str(value_json), attributes, METRIC_EVENT_NAME)

    def metric_point(self, record: Record) -> MetricPoint:
        """One numeric metric record as a data point, with the metric it belongs to."""
        resource = self.resource(record)
        name = str(record["name"])
        cumulative = record.get("kind") in _CUMULATIVE_KINDS
        attributes = {**clean_attributes(record.get("labels")), **context_attributes(record)}
        time_ns = to_ns(record["time"])
        start_ns = time_ns
        if cumulative:
            # A cumulative series keeps one start time, else backends read every point as a reset.
            key = (resource, name, tuple(sorted(attributes.items())))
            start_ns = self._series_start.setdefault(key, time_ns)
        point = NumberDataPoint(
            attributes=attributes,
            start_time_unix_nano=start_ns,
            time_unix_nano=time_ns,
            value=record["value"],
            exemplars=_exemplars(record, record["value"], time_ns),
        )
        return MetricPoint(resource, name, cumulative, str(record.get("description") or ""), point)

    def _log_record(
        self,
        record: Record,
        number: SeverityNumber,
        text: str | None,
        body: Any,
        attributes: dict[str, Any],
        event_name: str | None = None,
    ) -> ReadableLogRecord:
        timestamp = to_ns(record["time"])
        log_record = LogRecord(
            timestamp=timestamp,
            observed_timestamp=timestamp,
            context=_trace_context(record),
            severity_text=text,
            severity_number=number,
            body=body,
            attributes=attributes,
            event_name=event_name,
        )
        return ReadableLogRecord(log_record=log_record, resource=self.resource(record), instrumentation_scope=SCOPE)


def metrics_data(points: Sequence[MetricPoint]) -> MetricsData:
    """Points grouped into one ResourceMetrics per worker and one Metric per name."""
    grouped: dict[Resource, dict[tuple[str, bool], list[MetricPoint]]] = {}
    for item in points:
        grouped.setdefault(item.resource, {}).setdefault((item.name, item.cumulative), []).append(item)
    return MetricsData(
        resource_metrics=[
            ResourceMetrics(
                resource=resource,
                scope_metrics=[
                    ScopeMetrics(scope=SCOPE, metrics=[_metric(items) for items in by_name.values()], schema_url="")
                ],
                schema_url="",
            )
            for resource, by_name in grouped.items()
        ]
    )


def _metric(items: list[MetricPoint]) -> Metric:
    first = items[0]
    points = [item.point for item in items]
    description = next((item.description for item in items if item.description), "")
    if first.cumulative:
        data: Sum | Gauge = Sum(points, AggregationTemporality.CUMULATIVE, is_monotonic=True)
    else:
        data = Gauge(points)
    return Metric(name=first.name, description=description, unit="", data=data)


def worker_resource(step_id: str, step_name: str, worker: str) -> Resource:
    """The Resource of one worker of one step, honouring ``OTEL_SERVICE_NAME``/``OTEL_RESOURCE_ATTRIBUTES``."""
    resource = Resource.create(
        _present({"pipeobs.step_id": step_id, "pipeobs.step_name": step_name, SERVICE_INSTANCE_ID: worker})
    )
    # Resource.create lets its argument override the environment, so the step name is applied only
    # when the environment names no service (where the SDK would say "unknown_service").
    if not OTELResourceDetector().detect().attributes.get(SERVICE_NAME):
        resource = resource.merge(Resource({SERVICE_NAME: step_name or "pipeobs"}))
    return resource


def severity(level: str | None, stream: str | None) -> tuple[SeverityNumber, str | None]:
    """``(severity number, severity text)`` of a log record; no level means a plain output line."""
    if level is None:
        return _SEVERITIES["WARNING"] if stream == "stderr" else _SEVERITIES["INFO"]
    return _SEVERITIES.get(str(level).upper(), (SeverityNumber.UNSPECIFIED, str(level)))


def context_attributes(record: Record) -> dict[str, Any]:
    """The ``pipeobs.*`` attributes every exported item carries, where the record has them."""
    return _present(
        {
            "pipeobs.step_id": record.get("step_id"),
            "pipeobs.worker": record.get("worker"),
            "pipeobs.mini_batch_id": record.get("mini_batch_id"),
            "pipeobs.attempt": record.get("attempt"),
        }
    )


def clean_attributes(values: Mapping[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    """OTel-valid attributes: nested mappings flattened with dots, None dropped, the rest as JSON text."""
    out: dict[str, Any] = {}
    for key, value in (values or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(clean_attributes(value, f"{name}."))
        elif value is not None:
            out[name] = _attribute_value(value)
    return out


def parse_id(value: Any, digits: int) -> int | None:
    """A trace id (32 hex digits) or span id (16) as an int; None when absent, malformed or zero."""
    if not isinstance(value, str) or len(value) != digits:
        return None
    try:
        number = int(value, 16)
    except ValueError:
        return None
    return number or None


def to_ns(seconds: float) -> int:
    """Epoch seconds (float) as epoch nanoseconds.

    Whole and fractional seconds are scaled apart: ``1700000000.25 * 1e9`` would land on
    ...249999872 because a double cannot hold 1.70000000025e18 exactly.
    """
    fraction, whole = math.modf(float(seconds))
    return int(whole) * 1_000_000_000 + round(fraction * 1e9)


def _attribute_value(value: Any) -> Any:
    if isinstance(value, bool | str | float):
        return value
    if isinstance(value, int):
        return value if value in _INT64 else str(value)
    if isinstance(value, list | tuple):
        items = [item for item in value if item is not None]
        kinds = {type(item) for item in items}
        if len(kinds) <= 1 and kinds <= {bool, str, float, int}:  # OTel arrays are homogeneous
            return tuple(items)
    return json.dumps(value, sort_keys=True, default=str)


def _present(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None and value != ""}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _enum_member(enum: Any, name: Any, default: Any) -> Any:
    return enum.__members__.get(str(name).upper(), default) if name else default


def _status(name: Any, message: Any) -> Status:
    code = _enum_member(StatusCode, name, StatusCode.UNSET)
    # The API ignores (and warns about) a description on anything but ERROR.
    return Status(code, str(message) if message and code is StatusCode.ERROR else None)


def _event(event: Mapping[str, Any]) -> Event:
    return Event(str(event["name"]), clean_attributes(event.get("attributes")), to_ns(event["time"]))


def _trace_context(record: Record) -> Context:
    trace_id = parse_id(record.get("trace_id"), 32)
    span_id = parse_id(record.get("span_id"), 16)
    if trace_id is None or span_id is None:
        # An explicit invalid span: an empty Context would make LogRecord read the caller's context.
        return trace.set_span_in_context(trace.INVALID_SPAN, Context())
    span_context = SpanContext(trace_id, span_id, is_remote=False, trace_flags=_SAMPLED)
    return trace.set_span_in_context(NonRecordingSpan(span_context), Context())


def _exemplars(record: Record, value: float, time_ns: int) -> list[Any]:
    trace_id = parse_id(record.get("trace_id"), 32)
    span_id = parse_id(record.get("span_id"), 16)
    if trace_id is None or span_id is None:
        return []
    return [Exemplar(filtered_attributes={}, value=value, time_unix_nano=time_ns, span_id=span_id, trace_id=trace_id)]
