"""http/protobuf against a real OTLP/HTTP collector on 127.0.0.1: what arrives, and failures."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pipeobs_otlp import OtlpExporter
from pipeobs_otlp.testing import OtlpHttpCollector, Reply


def resource_attributes(resource: Any) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in resource.attributes}


def point_attributes(point: Any) -> dict[str, Any]:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in point.attributes}


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def collector() -> Iterator[OtlpHttpCollector]:
    with OtlpHttpCollector() as running:
        yield running


class TestDelivery:
    def test_spans_arrive_with_ids_parents_and_resource(self, collector: OtlpHttpCollector, records: Any) -> None:
        """Span names, ids and parent ids arrive, under the step's service name and step id."""
        job = records.span(name="job", span_id=records.parent_id, parent_span_id=None, kind="CONSUMER")
        mini_batch = records.span(name="mini_batch")
        with OtlpExporter(endpoint=collector.endpoint) as exporter:
            result = exporter.export([job, mini_batch])

        assert result.delivered == 2
        (request,) = collector.traces()
        (resource_spans,) = request.resource_spans
        resource = resource_attributes(resource_spans.resource)
        assert resource["service.name"] == "score-images"
        assert resource["pipeobs.step_id"] == "step-1"
        assert resource["service.instance.id"] == "node0/process000"
        spans = {span.name: span for span in resource_spans.scope_spans[0].spans}
        assert spans["mini_batch"].trace_id.hex() == records.trace_id
        assert spans["mini_batch"].span_id.hex() == records.span_id
        assert spans["mini_batch"].parent_span_id.hex() == records.parent_id
        assert spans["job"].span_id.hex() == records.parent_id
        assert spans["job"].parent_span_id == b""

    def test_workers_arrive_as_separate_resources(self, collector: OtlpHttpCollector, records: Any) -> None:
        """Spans of two workers arrive under two resources, one instance id each."""
        with OtlpExporter(endpoint=collector.endpoint) as exporter:
            exporter.export([records.span(worker="node0/process000"), records.span(worker="node1/process000")])

        (request,) = collector.traces()
        instances = sorted(resource_attributes(rs.resource)["service.instance.id"] for rs in request.resource_spans)
        assert instances == ["node0/process000", "node1/process000"]

    def test_logs_arrive_with_body_and_trace_context(self, collector: OtlpHttpCollector, records: Any) -> None:
        """Log bodies arrive with the trace and span ids of their mini-batch, and their severity."""
        with OtlpExporter(endpoint=collector.endpoint) as exporter:
            exporter.export(
                [records.log(text="scored 3 images"), records.log(level=None, stream="stderr", text="oops")]
            )

        (request,) = collector.logs()
        logs = request.resource_logs[0].scope_logs[0].log_records
        assert [log.body.string_value for log in logs] == ["scored 3 images", "oops"]
        assert {log.trace_id.hex() for log in logs} == {records.trace_id}
        assert {log.span_id.hex() for log in logs} == {records.span_id}
        assert [log.severity_text for log in logs] == ["INFO", "WARN"]
        assert resource_attributes(request.resource_logs[0].resource)["pipeobs.step_id"] == "step-1"

    def test_metric_points_arrive(self, collector: OtlpHttpCollector, records: Any) -> None:
        """Gauge and counter points arrive with their values and attributes."""
        with OtlpExporter(endpoint=collector.endpoint) as exporter:
            exporter.export(
                [
                    records.metric(name="accuracy", value=0.93, labels={"split": "val"}),
                    records.metric(name="pipeobs_items_total", kind="counter", value=12.0, labels={"status": "ok"}),
                ]
            )

        (request,) = collector.metrics()
        metrics = {m.name: m for m in request.resource_metrics[0].scope_metrics[0].metrics}
        (gauge_point,) = metrics["accuracy"].gauge.data_points
        assert gauge_point.as_double == 0.93
        assert point_attributes(gauge_point)["split"] == "val"
        assert point_attributes(gauge_point)["pipeobs.mini_batch_id"] == 7
        assert metrics["pipeobs_items_total"].sum.is_monotonic
        assert metrics["pipeobs_items_total"].sum.data_points[0].as_double == 12.0

    def test_each_signal_goes_to_its_path(self, collector: OtlpHttpCollector, records: Any) -> None:
        """One batch of three kinds makes one request per signal, on /v1/traces, /v1/logs, /v1/metrics."""
        with OtlpExporter(endpoint=collector.endpoint) as exporter:
            result = exporter.export([records.span(), records.log(), records.metric()])

        assert result.delivered == 3
        assert [request.path for request in collector.received] == ["/v1/traces", "/v1/logs", "/v1/metrics"]
        assert collector.received[0].headers["content-type"] == "application/x-protobuf"


class TestFailures:
    def test_503_is_retried_by_pipeobs_not_by_the_exporter(self, records: Any) -> None:
        """A 503 makes one request and a retry result; the next export delivers."""
        with OtlpHttpCollector(Reply(503)) as collector, OtlpExporter(endpoint=collector.endpoint) as exporter:
            first = exporter.export([records.span()])
            requests_after_first = len(collector.received)
            second = exporter.export([records.span()])

        assert (first.delivered, first.retry) == (0, [0])
        assert "HTTP 503" in (first.error or "")
        assert requests_after_first == 1
        assert (second.delivered, second.retry) == (1, [])

    def test_retry_after_is_passed_on(self, records: Any) -> None:
        """A 429's Retry-After reaches pipeobs, and the exporter does not wait for it itself."""
        collector = OtlpHttpCollector(Reply(429, {"Retry-After": "30"}))
        with collector, OtlpExporter(endpoint=collector.endpoint) as exporter:
            started = time.monotonic()
            result = exporter.export([records.log()])
            elapsed = time.monotonic() - started

        assert result.retry == [0]
        assert result.retry_after == 30.0
        assert elapsed < 2
        assert len(collector.received) == 1

    def test_other_errors_are_rejected_for_good(self, records: Any) -> None:
        """A 400 is not worth retrying (OTLP spec): its records are rejected with the status."""
        with OtlpHttpCollector(Reply(400)) as collector, OtlpExporter(endpoint=collector.endpoint) as exporter:
            result = exporter.export([records.span(), records.span()])

        assert result.retry == []
        assert [index for index, _ in result.rejected] == [0, 1]
        assert "HTTP 400" in result.rejected[0][1]
        assert len(collector.received) == 1

    def test_connection_refused_returns_at_once(self, records: Any) -> None:
        """Nothing listening: a retry result within a fraction of the timeout, no backoff inside."""
        with OtlpExporter(endpoint=f"http://127.0.0.1:{unused_port()}", timeout=10) as exporter:
            started = time.monotonic()
            result = exporter.export([records.span(), records.log(), records.metric()])
            elapsed = time.monotonic() - started

        assert result.retry == [0, 1, 2]
        assert "ConnectionError" in (result.error or "")
        assert elapsed < 2

    def test_a_hanging_collector_is_bounded_by_the_timeout(self, records: Any) -> None:
        """A collector that never answers costs one timeout, then a retry result."""
        collector = OtlpHttpCollector(Reply(hang=True))
        with collector, OtlpExporter(endpoint=collector.endpoint, timeout=0.5) as exporter:
            started = time.monotonic()
            result = exporter.export([records.span()])
            elapsed = time.monotonic() - started

        assert result.retry == [0]
        assert "Timeout" in (result.error or "")
        assert 0.4 < elapsed < 2.5
        assert len(collector.received) == 1


class TestEnvironment:
    def test_endpoint_from_otel_exporter_otlp_endpoint(
        self, collector: OtlpHttpCollector, records: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without an endpoint argument, OTEL_EXPORTER_OTLP_ENDPOINT is the base URL."""
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)

        with OtlpExporter() as exporter:
            result = exporter.export([records.span()])

        assert result.delivered == 1
        assert collector.received[0].path == "/v1/traces"

    def test_signal_endpoint_is_used_as_is(
        self, collector: OtlpHttpCollector, records: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """OTEL_EXPORTER_OTLP_LOGS_ENDPOINT is the full URL: no /v1/logs is appended."""
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", f"{collector.endpoint}/custom/logs")

        with OtlpExporter() as exporter:
            exporter.export([records.log()])

        assert collector.received[0].path == "/custom/logs"

    def test_headers_from_the_environment_and_the_argument(
        self, collector: OtlpHttpCollector, records: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """OTEL_EXPORTER_OTLP_HEADERS are sent, merged with the headers argument."""
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "api-key=secret%20one,tenant=a")

        with OtlpExporter(endpoint=collector.endpoint, headers={"tenant": "b"}) as exporter:
            exporter.export([records.span()])

        assert collector.received[0].headers["api-key"] == "secret one"
        assert collector.received[0].headers["tenant"] == "b"

    def test_timeout_from_the_environment(self, records: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        """OTEL_EXPORTER_OTLP_TIMEOUT (seconds) bounds a request when no timeout is given."""
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "0.5")

        with OtlpHttpCollector(Reply(hang=True)) as collector, OtlpExporter(endpoint=collector.endpoint) as exporter:
            started = time.monotonic()
            result = exporter.export([records.span()])
            elapsed = time.monotonic() - started

        assert result.retry == [0]
        assert elapsed < 2.5

    def test_service_name_from_the_environment(
        self, collector: OtlpHttpCollector, records: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES reach the wire."""
        monkeypatch.setenv("OTEL_SERVICE_NAME", "nightly-scoring")
        monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=staging")

        with OtlpExporter(endpoint=collector.endpoint) as exporter:
            exporter.export([records.span()])

        resource = resource_attributes(collector.traces()[0].resource_spans[0].resource)
        assert resource["service.name"] == "nightly-scoring"
        assert resource["deployment.environment"] == "staging"
        assert resource["pipeobs.step_name"] == "score-images"
