"""pipeobs records -> OpenTelemetry SDK objects."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk.metrics.export import AggregationTemporality, Gauge, Sum
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode

from pipeobs_otlp.convert import METRIC_EVENT_NAME, RecordConverter


def convert_one(record: dict[str, Any]) -> Any:
    batch = RecordConverter().convert([record])
    assert batch.rejected == []
    return (batch.spans + batch.logs)[0]


def attrs(resource_or_item: Any) -> dict[str, Any]:
    return dict(resource_or_item.attributes)


class TestSpans:
    def test_ids_come_from_hex(self, records: Any) -> None:
        """Trace id, span id and the parent's span id are the record's hex ids, in one trace."""
        span = convert_one(records.span())

        assert span.context.trace_id == int(records.trace_id, 16)
        assert span.context.span_id == int(records.span_id, 16)
        assert span.parent.span_id == int(records.parent_id, 16)
        assert span.parent.trace_id == span.context.trace_id

    def test_root_span_has_no_parent(self, records: Any) -> None:
        """A span without parent_span_id is a root span."""
        span = convert_one(records.span(parent_span_id=None))

        assert span.parent is None

    @pytest.mark.parametrize(
        ("kind", "expected"),
        [
            ("CONSUMER", SpanKind.CONSUMER),
            ("INTERNAL", SpanKind.INTERNAL),
            ("client", SpanKind.CLIENT),
            ("?", SpanKind.INTERNAL),
        ],
    )
    def test_kind(self, records: Any, kind: str, expected: SpanKind) -> None:
        """The kind name maps onto SpanKind; an unknown one is INTERNAL."""
        assert convert_one(records.span(kind=kind)).kind is expected

    def test_error_status_keeps_its_message(self, records: Any) -> None:
        """ERROR carries the status message."""
        span = convert_one(records.span(status="ERROR", status_message="ValueError: bad pixel"))

        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "ValueError: bad pixel"

    def test_ok_status_drops_a_message(self, records: Any) -> None:
        """A message on OK is dropped, as the API only allows one on ERROR."""
        span = convert_one(records.span(status="OK", status_message="fine"))

        assert span.status.status_code is StatusCode.OK
        assert span.status.description is None

    def test_times_are_nanoseconds(self, records: Any) -> None:
        """start/end in epoch seconds become epoch nanoseconds."""
        span = convert_one(records.span(start=records.t0, end=records.t0 + 1.5))

        assert span.start_time == 1_700_000_000_250_000_000
        assert span.end_time == 1_700_000_001_750_000_000

    def test_events_keep_name_time_and_attributes(self, records: Any) -> None:
        """An exception event keeps its exception.* attributes and its time."""
        event = {
            "name": "exception",
            "time": records.t0 + 1,
            "attributes": {"exception.type": "ValueError", "exception.message": "bad", "exception.stacktrace": "tb"},
        }
        span = convert_one(records.span(events=[event]))

        (converted,) = span.events
        assert converted.name == "exception"
        assert converted.timestamp == 1_700_000_001_250_000_000
        assert attrs(converted) == event["attributes"]

    def test_attributes_are_made_valid(self, records: Any) -> None:
        """Nested maps flatten with dots, None goes, mixed lists become JSON, pipeobs context is added."""
        span = convert_one(records.span(attributes={"a": {"b": 1}, "none": None, "mixed": [1, "x"], "ok": [1, 2]}))

        assert attrs(span) == {
            "a.b": 1,
            "mixed": '[1, "x"]',
            "ok": (1, 2),
            "pipeobs.step_id": "step-1",
            "pipeobs.worker": "node0/process000",
            "pipeobs.mini_batch_id": 7,
            "pipeobs.attempt": 2,
        }

    def test_span_without_valid_ids_is_rejected(self, records: Any) -> None:
        """A span whose ids are missing or malformed is rejected with a reason, not sent."""
        batch = RecordConverter().convert([records.span(trace_id="xyz"), records.span()])

        assert batch.span_indexes == [1]
        assert batch.rejected[0][0] == 0
        assert "trace_id" in batch.rejected[0][1]


class TestLogs:
    def test_trace_context_comes_from_the_record(self, records: Any) -> None:
        """A log record carries the record's trace and span ids."""
        log = convert_one(records.log())

        assert log.log_record.trace_id == int(records.trace_id, 16)
        assert log.log_record.span_id == int(records.span_id, 16)

    def test_no_ids_means_no_trace_context_even_inside_a_span(self, records: Any) -> None:
        """A record without ids does not pick up the caller's current span."""
        ambient = NonRecordingSpan(SpanContext(0xABC, 0xDEF, is_remote=False))

        with trace.use_span(ambient):
            log = convert_one(records.log(trace_id=None, span_id=None))

        assert log.log_record.trace_id == 0
        assert log.log_record.span_id == 0

    @pytest.mark.parametrize(
        ("level", "stream", "number", "text"),
        [
            ("DEBUG", "log", SeverityNumber.DEBUG, "DEBUG"),
            ("INFO", "log", SeverityNumber.INFO, "INFO"),
            ("WARNING", "log", SeverityNumber.WARN, "WARN"),
            ("ERROR", "log", SeverityNumber.ERROR, "ERROR"),
            ("CRITICAL", "log", SeverityNumber.FATAL, "FATAL"),
            (None, "stdout", SeverityNumber.INFO, "INFO"),
            (None, "stderr", SeverityNumber.WARN, "WARN"),
            ("NOTICE", "log", SeverityNumber.UNSPECIFIED, "NOTICE"),
        ],
    )
    def test_severity(self, records: Any, level: str | None, stream: str, number: SeverityNumber, text: str) -> None:
        """Levels map onto OTel severities; plain stdout lines are INFO and stderr lines WARN."""
        log = convert_one(records.log(level=level, stream=stream))

        assert (log.log_record.severity_number, log.log_record.severity_text) == (number, text)

    def test_body_is_the_text(self, records: Any) -> None:
        """The body is the line or message text; the timestamp is the record's time."""
        log = convert_one(records.log(text="loaded model v3"))

        assert log.log_record.body == "loaded model v3"
        assert log.log_record.timestamp == 1_700_000_000_250_000_000

    def test_attributes_carry_context_and_flattened_dimensions(self, records: Any) -> None:
        """pipeobs context, stream, logger and phase join the flattened custom dimensions."""
        dimensions = {"model": {"name": "resnet", "version": 3}, "pipeobs.step_id": "spoofed"}
        log = convert_one(records.log(custom_dimensions=dimensions))

        assert attrs(log.log_record) == {
            "model.name": "resnet",
            "model.version": 3,
            "pipeobs.step_id": "step-1",
            "pipeobs.worker": "node0/process000",
            "pipeobs.mini_batch_id": 7,
            "pipeobs.attempt": 2,
            "pipeobs.stream": "log",
            "pipeobs.logger": "score",
            "pipeobs.phase": "run",
        }


class TestMetrics:
    def test_gauge_points_per_name(self, records: Any) -> None:
        """Numeric user metrics become one Gauge per name, labels and context on each point."""
        batch = RecordConverter().convert(
            [
                records.metric(name="accuracy", value=0.9, labels={"split": "a"}),
                records.metric(name="accuracy", value=0.8, labels={"split": "b"}),
                records.metric(name="loss", value=0.1),
            ]
        )

        (resource_metrics,) = batch.metrics.resource_metrics
        accuracy, loss = resource_metrics.scope_metrics[0].metrics
        assert (accuracy.name, loss.name) == ("accuracy", "loss")
        assert isinstance(accuracy.data, Gauge)
        assert [p.value for p in accuracy.data.data_points] == [0.9, 0.8]
        assert attrs(accuracy.data.data_points[1]) == {
            "split": "b",
            "pipeobs.step_id": "step-1",
            "pipeobs.worker": "node0/process000",
            "pipeobs.mini_batch_id": 7,
            "pipeobs.attempt": 2,
        }

    def test_counters_are_monotonic_cumulative_sums(self, records: Any) -> None:
        """Counter records become a monotonic cumulative Sum whose start time stays put."""
        converter = RecordConverter()
        counter = {"name": "pipeobs_items_total", "kind": "counter", "labels": {"status": "ok"}, "mini_batch_id": None}

        first = converter.convert([records.metric(**counter, value=3.0, time=records.t0)]).metrics
        later = converter.convert([records.metric(**counter, value=5.0, time=records.t0 + 60)]).metrics

        metric = first.resource_metrics[0].scope_metrics[0].metrics[0]
        assert isinstance(metric.data, Sum)
        assert metric.data.is_monotonic
        assert metric.data.aggregation_temporality is AggregationTemporality.CUMULATIVE
        point = later.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points[0]
        assert point.value == 5.0
        assert point.start_time_unix_nano == 1_700_000_000_250_000_000
        assert point.time_unix_nano == 1_700_000_060_250_000_000

    def test_points_link_to_their_span(self, records: Any) -> None:
        """A point with trace and span ids carries an exemplar pointing at that span."""
        batch = RecordConverter().convert([records.metric(kind="observation", value=1.25)])

        point = batch.metrics.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points[0]
        (exemplar,) = point.exemplars
        assert (exemplar.trace_id, exemplar.span_id) == (int(records.trace_id, 16), int(records.span_id, 16))

    def test_non_numeric_metric_becomes_an_event_log(self, records: Any) -> None:
        """A list/table/tag value travels as a log record with the metric's name, not dropped."""
        batch = RecordConverter().convert(
            [records.metric(name="classes", kind="list", value=None, value_json='["cat", "dog"]', labels={"run": "1"})]
        )

        assert batch.metrics is None
        assert batch.log_indexes == [0]
        log = batch.logs[0].log_record
        assert log.event_name == METRIC_EVENT_NAME
        assert log.body == '["cat", "dog"]'
        assert attrs(log)["pipeobs.metric.name"] == "classes"
        assert attrs(log)["pipeobs.metric.kind"] == "list"
        assert attrs(log)["run"] == "1"


class TestResources:
    def test_service_name_defaults_to_the_step_name(self, records: Any) -> None:
        """Without OTEL_SERVICE_NAME, service.name is the step name; the worker is the instance."""
        span = convert_one(records.span())

        assert attrs(span.resource)["service.name"] == "score-images"
        assert attrs(span.resource)["service.instance.id"] == "node0/process000"
        assert attrs(span.resource)["pipeobs.step_id"] == "step-1"
        assert attrs(span.resource)["pipeobs.step_name"] == "score-images"

    def test_otel_service_name_wins(self, records: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        """OTEL_SERVICE_NAME overrides the step name, and a service.name in OTEL_RESOURCE_ATTRIBUTES."""
        monkeypatch.setenv("OTEL_SERVICE_NAME", "batch-scoring")
        monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=other")

        assert attrs(convert_one(records.span()).resource)["service.name"] == "batch-scoring"

    def test_service_name_from_resource_attributes(self, records: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        """A service.name in OTEL_RESOURCE_ATTRIBUTES beats the step-name default."""
        monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attributes")

        assert attrs(convert_one(records.span()).resource)["service.name"] == "from-attributes"

    def test_resource_attributes_from_the_environment(self, records: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        """OTEL_RESOURCE_ATTRIBUTES is parsed (percent-decoded); pipeobs's own facts cannot be overridden."""
        monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,team=ml%20ops,pipeobs.step_id=x")

        resource = attrs(convert_one(records.span()).resource)

        assert resource["deployment.environment"] == "prod"
        assert resource["team"] == "ml ops"
        assert resource["pipeobs.step_id"] == "step-1"

    def test_one_resource_per_worker(self, records: Any) -> None:
        """Records of two workers get two resources; records of one worker share one."""
        batch = RecordConverter().convert(
            [
                records.span(worker="node0/process000"),
                records.span(worker="node0/process001"),
                records.log(worker="node0/process000"),
                records.metric(worker="node0/process000"),
                records.metric(worker="node0/process001"),
            ]
        )

        first, second = batch.spans
        assert first.resource is batch.logs[0].resource
        assert first.resource != second.resource
        instances = [attrs(rm.resource)["service.instance.id"] for rm in batch.metrics.resource_metrics]
        assert instances == ["node0/process000", "node0/process001"]


class TestBatch:
    def test_records_split_by_signal_keeping_their_indexes(self, records: Any) -> None:
        """Each signal knows which batch indexes it carries; unknown and malformed records are rejected."""
        batch = RecordConverter().convert(
            [
                records.log(),
                records.span(),
                records.metric(),
                {"type": "profile", "time": 0},
                records.metric(value=None, value_json='"tag"'),
                {**records.span(), "name": None, "start": "soon"},
            ]
        )

        signals = {signal: indexes for signal, indexes, _ in batch.signals()}
        assert signals == {"traces": [1], "logs": [0, 4], "metrics": [2]}
        assert [index for index, _ in batch.rejected] == [3, 5]
        assert "profile" in batch.rejected[0][1]
