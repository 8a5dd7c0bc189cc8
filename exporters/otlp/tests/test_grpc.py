"""grpc against a real OTLP/gRPC collector on 127.0.0.1 (opentelemetry-proto's service stubs)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from pipeobs_otlp import OtlpExporter


class GrpcCollector(trace_service_pb2_grpc.TraceServiceServicer, logs_service_pb2_grpc.LogsServiceServicer):
    """TraceService and LogsService: keeps each request; the first ``failures`` calls fail UNAVAILABLE."""

    def __init__(self) -> None:
        self.traces: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.logs: list[logs_service_pb2.ExportLogsServiceRequest] = []
        self.calls = 0
        self.failures = 0
        self.endpoint = ""

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802 - the service's name
        self.calls += 1
        if self.calls <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "collector restarting")
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            self.traces.append(request)
            return trace_service_pb2.ExportTraceServiceResponse()
        self.logs.append(request)
        return logs_service_pb2.ExportLogsServiceResponse()


@pytest.fixture
def collector() -> Iterator[GrpcCollector]:
    service = GrpcCollector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(service, server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    service.endpoint = f"http://127.0.0.1:{port}"
    yield service
    server.stop(grace=None)


class TestGrpc:
    def test_spans_arrive(self, collector: GrpcCollector, records: Any) -> None:
        """With protocol grpc, spans reach TraceService with their ids, parent and resource."""
        with OtlpExporter(protocol="grpc", endpoint=collector.endpoint, timeout=5) as exporter:
            result = exporter.export([records.span(name="mini_batch")])

        assert result.delivered == 1
        (request,) = collector.traces
        resource_spans = request.resource_spans[0]
        span = resource_spans.scope_spans[0].spans[0]
        assert span.name == "mini_batch"
        assert span.trace_id.hex() == records.trace_id
        assert span.parent_span_id.hex() == records.parent_id
        resource = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
        assert resource["service.name"] == "score-images"
        assert resource["pipeobs.step_id"] == "step-1"

    def test_logs_arrive(self, collector: GrpcCollector, records: Any) -> None:
        """Log records reach LogsService with their body and span id."""
        with OtlpExporter(protocol="grpc", endpoint=collector.endpoint, timeout=5) as exporter:
            exporter.export([records.log(text="hello over grpc")])

        log = collector.logs[0].resource_logs[0].scope_logs[0].log_records[0]
        assert log.body.string_value == "hello over grpc"
        assert log.span_id.hex() == records.span_id

    def test_protocol_from_the_environment(
        self, collector: GrpcCollector, records: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """OTEL_EXPORTER_OTLP_PROTOCOL=grpc and OTEL_EXPORTER_OTLP_ENDPOINT are enough."""
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)

        with OtlpExporter(timeout=5) as exporter:
            result = exporter.export([records.span()])

        assert result.delivered == 1
        assert len(collector.traces) == 1

    def test_unavailable_is_retried_by_pipeobs_not_by_the_exporter(
        self, collector: GrpcCollector, records: Any
    ) -> None:
        """UNAVAILABLE makes one call and a retry result at once; the next export delivers."""
        collector.failures = 1
        with OtlpExporter(protocol="grpc", endpoint=collector.endpoint, timeout=5) as exporter:
            started = time.monotonic()
            first = exporter.export([records.span()])
            elapsed = time.monotonic() - started
            calls_after_first = collector.calls
            second = exporter.export([records.span()])

        assert first.retry == [0]
        assert "gRPC" in (first.error or "")
        assert calls_after_first == 1
        assert elapsed < 2
        assert second.delivered == 1
