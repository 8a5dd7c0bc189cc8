"""The local collector: real App Insights and OTLP exporters against a real server on 127.0.0.1."""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeobs.collector import INSTALL_HINT, CollectorServer, add_subcommand, create_app, create_server, dispatch
from pipeobs.errors import RunDirError
from pipeobs.explorer import queries
from pipeobs.explorer.runs import open_run
from pipeobs.record.store import Store, connect

KEY = "00000000-0000-0000-0000-0000000000a1"
OTHER_KEY = "00000000-0000-0000-0000-0000000000b2"
MAX_BODY = 64 * 1024
TRACE = "5b8efff798038103d269b633813fc60c"
ROOT = Path(__file__).resolve().parents[1]


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        threading.Event().wait(0.01)


def walk(nodes: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for node in nodes:
        yield node
        yield from walk(node.get("children", []))


@contextmanager
def running(run_dir: Path, sock: socket.socket | None = None, **options: Any) -> Iterator[CollectorServer]:
    """A collector serving on a thread (uvicorn.Server on 127.0.0.1, port 0, or on ``sock``, an
    already-bound socket), stopped on exit."""
    server = create_server(run_dir, **options)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]} if sock else {}, name="collector",
                              daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), what="the collector to start")
    assert server.started and server.port
    assert sock is None or server.port == sock.getsockname()[1]
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        assert not thread.is_alive()


@dataclass
class Collector:
    server: CollectorServer
    run_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def query(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        conn = connect(self.run_dir / "pipeobs.db", readonly=True)
        try:
            return [dict(row) for row in conn.execute(sql, args)]
        finally:
            conn.close()

    def wait_rows(self, sql: str, *args: Any, count: int = 1) -> list[dict[str, Any]]:
        def enough() -> list[dict[str, Any]] | None:
            rows = self.query(sql, *args)
            return rows if len(rows) >= count else None

        return wait_for(enough, what=sql)

    def track(self, body: bytes | list[Any], **headers: str) -> httpx.Response:
        content = json.dumps(body).encode() if isinstance(body, list) else body
        return httpx.post(f"{self.url}/v2.1/track", content=content, headers=headers, timeout=10)


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    run_dir = tmp_path_factory.mktemp("collector") / "collected"
    with running(run_dir, instrumentation_key=KEY, max_body=MAX_BODY) as server:
        yield Collector(server, run_dir)


@pytest.fixture()
def no_statsbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenCensus would otherwise send its own metrics to Microsoft from the constructor."""
    monkeypatch.setenv("APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL", "true")
    monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING", raising=False)


def envelope(kind: str, base: dict[str, Any], *, ikey: str = KEY, tags: dict[str, str] | None = None,
             when: str = "2026-11-26T10:55:53.424379Z") -> dict[str, Any]:
    base_type = {"Request": "RequestData", "RemoteDependency": "RemoteDependencyData"}.get(kind, f"{kind}Data")
    return {"name": f"Microsoft.ApplicationInsights.{kind}", "time": when, "iKey": ikey, "tags": tags or {},
            "data": {"baseType": base_type, "baseData": {"ver": 2, **base}}}


def message(text: str, **properties: Any) -> dict[str, Any]:
    return envelope("Message", {"message": text, "severityLevel": 1, "properties": properties})


def otlp_json_spans(name: str, trace_id: str = TRACE, span_id: str = "eee19b7ec3c1b174") -> dict[str, Any]:
    span = {"traceId": trace_id, "spanId": span_id, "parentSpanId": "eee19b7ec3c1b173", "name": name, "kind": 2,
            "startTimeUnixNano": "1800000000000000000", "endTimeUnixNano": "1800000001500000000",
            "attributes": [{"key": "pipeobs.mini_batch_id", "value": {"intValue": "7"}}],
            "events": [{"timeUnixNano": "1800000001000000000", "name": "checkpoint"}],
            "status": {"code": 2, "message": "boom"}}
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": "json-client"}}]}
    return {"resourceSpans": [{"resource": resource, "scopeSpans": [{"scope": {"name": "t"}, "spans": [span]}]}]}


# ----------------------------------------------------------------------------- OpenCensus
# opencensus-ext-azure (deprecated upstream, last release 2025) calls locale.getdefaultlocale() on import
@pytest.mark.filterwarnings("ignore:'locale.getdefaultlocale' is deprecated:DeprecationWarning")
class TestOpenCensusExporters:
    def test_azure_log_handler_records_arrive_as_log_lines(self, collector: Collector, no_statsbeat: None) -> None:
        """The real AzureLogHandler's records, custom dimensions and exception are stored as log lines."""
        from opencensus.ext.azure.log_exporter import AzureLogHandler

        handler = AzureLogHandler(connection_string=f"InstrumentationKey={KEY};IngestionEndpoint={collector.url}/",
                                  enable_local_storage=False)
        logger = logging.getLogger("tests.collector.opencensus")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        try:
            logger.info("oc: scoring started", extra={"custom_dimensions": {"run_id": "r1", "mini_batch_id": 3}})
            logger.warning("oc: slow mini-batch", extra={"custom_dimensions": {"seconds": 12.5}})
            try:
                raise ValueError("oc: bad row")
            except ValueError:
                logger.exception("oc: scoring failed")
            handler.flush(timeout=10)
        finally:
            logger.removeHandler(handler)
            handler.close()

        rows = collector.wait_rows("SELECT * FROM log_lines WHERE text LIKE 'oc: %' ORDER BY id", count=3)
        assert [(r["level"], r["text"].splitlines()[0]) for r in rows] == [
            ("INFO", "oc: scoring started"), ("WARNING", "oc: slow mini-batch"), ("ERROR", "oc: scoring failed")]
        assert rows[0]["mini_batch_id"] == 3 and rows[0]["stream"] == "log" and rows[0]["worker"]
        assert json.loads(rows[0]["attributes"])["run_id"] == "r1"
        assert json.loads(rows[1]["attributes"])["seconds"] == 12.5
        assert "Traceback (most recent call last)" in rows[2]["text"] and "ValueError: oc: bad row" in rows[2]["text"]

    def test_azure_exporter_spans_arrive_as_spans(self, collector: Collector, no_statsbeat: None) -> None:
        """The real AzureExporter's Request and RemoteDependency become parent and child spans."""
        from opencensus.ext.azure.trace_exporter import AzureExporter
        from opencensus.trace.samplers import AlwaysOnSampler
        from opencensus.trace.span import SpanKind
        from opencensus.trace.tracer import Tracer

        exporter = AzureExporter(connection_string=f"InstrumentationKey={KEY};IngestionEndpoint={collector.url}/",
                                 enable_local_storage=False, export_interval=0.05)
        tracer = Tracer(exporter=exporter, sampler=AlwaysOnSampler())
        try:
            with tracer.span(name="oc-request") as request:
                request.span_kind = SpanKind.SERVER
                request.add_attribute("pipeobs.mini_batch_id", 5)
                with tracer.span(name="oc-load-data") as child:
                    child.add_attribute("rows", 1000)
            trace_id = tracer.span_context.trace_id
            rows = collector.wait_rows("SELECT * FROM spans WHERE trace_id = ? ORDER BY start_time", trace_id, count=2)
        finally:
            exporter._stop(5)  # OpenCensus has no public shutdown: this is what its atexit hook calls

        by_name = {r["name"]: r for r in rows}
        parent, child = by_name["request"], by_name["oc-load-data"]  # OpenCensus sends a bare SERVER span unnamed
        assert (parent["kind"], child["kind"]) == ("SERVER", "INTERNAL")
        assert child["parent_span_id"] == parent["span_id"] and len(parent["span_id"]) == 16
        assert parent["mini_batch_id"] == 5 and parent["status"] == "OK"
        assert json.loads(child["attributes"])["rows"] == 1000
        assert child["start_time"] >= parent["start_time"]
        assert parent["end_time"] >= child["end_time"] - 0.001  # App Insights durations are in milliseconds


# ----------------------------------------------------------------------------- OpenTelemetry
@pytest.fixture()
def otel_resource() -> Any:
    from opentelemetry.sdk.resources import Resource

    return Resource.create({"service.name": "otel-test", "service.instance.id": "0/process001"})


class TestOtlpExporters:
    def test_span_exporter_sends_protobuf_spans(self, collector: Collector, otel_resource: Any) -> None:
        """OTLPSpanExporter's spans are stored with hex ids, parent, kind, status, events and mini-batch."""
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.trace import SpanKind, Status, StatusCode

        provider = TracerProvider(resource=otel_resource)
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{collector.url}/v1/traces")))
        tracer = provider.get_tracer("tests.collector")
        with tracer.start_as_current_span("otel-mini-batch", kind=SpanKind.CONSUMER,
                                          attributes={"pipeobs.mini_batch_id": 2, "pipeobs.attempt": 1}) as parent:
            parent.add_event("checkpoint", {"items": 4})
            with tracer.start_as_current_span("otel-child") as child:
                child.set_status(Status(StatusCode.ERROR, "bad input"))
        provider.shutdown()
        trace_id = format(parent.get_span_context().trace_id, "032x")

        rows = collector.wait_rows("SELECT * FROM spans WHERE trace_id = ?", trace_id, count=2)
        by_name = {r["name"]: r for r in rows}
        mini_batch, failed = by_name["otel-mini-batch"], by_name["otel-child"]
        assert mini_batch["span_id"] == format(parent.get_span_context().span_id, "016x")
        assert failed["parent_span_id"] == mini_batch["span_id"] and mini_batch["parent_span_id"] is None
        assert (mini_batch["kind"], mini_batch["mini_batch_id"], mini_batch["attempt"]) == ("CONSUMER", 2, 1)
        assert (failed["status"], failed["status_message"]) == ("ERROR", "bad input")
        assert mini_batch["worker"] == "0/process001"
        assert json.loads(mini_batch["events"])[0]["name"] == "checkpoint"
        assert json.loads(mini_batch["attributes"])["resource.service.name"] == "otel-test"

    def test_log_exporter_sends_protobuf_log_records(self, collector: Collector, otel_resource: Any) -> None:
        """OTLPLogExporter's gzipped records (through the SDK LoggerProvider) keep level, ids and dimensions."""
        from opentelemetry._logs import LogRecord, SeverityNumber
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
        from opentelemetry.sdk.trace import TracerProvider

        exporter = OTLPLogExporter(endpoint=f"{collector.url}/v1/logs", compression=Compression.Gzip)
        provider = LoggerProvider(resource=otel_resource)
        provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
        with TracerProvider().get_tracer("t").start_as_current_span("around-log") as span:
            provider.get_logger("tests.otel.logger").emit(LogRecord(
                severity_number=SeverityNumber.WARN, severity_text="WARN", body="otel: disk almost full",
                attributes={"pipeobs.mini_batch_id": 9, "custom_dimensions": {"free_gb": 3}}))
        assert provider.force_flush()
        provider.shutdown()

        row = collector.wait_rows("SELECT * FROM log_lines WHERE text = 'otel: disk almost full'")[0]
        context = span.get_span_context()
        assert (row["level"], row["logger"], row["worker"], row["mini_batch_id"]) == (
            "WARNING", "tests.otel.logger", "0/process001", 9)
        assert (row["trace_id"], row["span_id"]) == (format(context.trace_id, "032x"), format(context.span_id, "016x"))
        assert json.loads(row["attributes"]) == {"free_gb": 3}

    def test_metric_exporter_sends_protobuf_metrics(self, collector: Collector, otel_resource: Any) -> None:
        """OTLPMetricExporter's (deflated) counter and histogram are stored as counter and Prometheus-style rows."""
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        exporter = OTLPMetricExporter(endpoint=f"{collector.url}/v1/metrics", compression=Compression.Deflate)
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
        provider = MeterProvider(resource=otel_resource, metric_readers=[reader])
        meter = provider.get_meter("tests.collector")
        meter.create_counter("otel_items", description="items scored").add(5, {"pipeobs.mini_batch_id": 2})
        meter.create_histogram("otel_seconds").record(0.3)
        assert provider.force_flush()
        provider.shutdown()

        counter = collector.wait_rows("SELECT * FROM metrics WHERE name = 'otel_items'")[0]
        assert (counter["kind"], counter["value"], counter["mini_batch_id"], counter["worker"]) == (
            "counter", 5.0, 2, "0/process001")
        assert counter["description"] == "items scored"
        histogram = {r["name"]: r for r in collector.query("SELECT * FROM metrics WHERE name LIKE 'otel_seconds%'")}
        assert histogram["otel_seconds_count"]["value"] == 1.0 and histogram["otel_seconds_sum"]["value"] == 0.3
        buckets = collector.query("SELECT labels, value FROM metrics WHERE name = 'otel_seconds_bucket'")
        assert {json.loads(b["labels"])["le"]: b["value"] for b in buckets}["+Inf"] == 1.0


# ----------------------------------------------------------------------------- OTLP bodies
class TestOtlpEndpoints:
    def test_json_spans_use_hex_ids(self, collector: Collector) -> None:
        """OTLP JSON's hex ids are stored as they were sent, and the answer is JSON."""
        response = httpx.post(f"{collector.url}/v1/traces", json=otlp_json_spans("json-span"))

        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        assert response.json() == {}
        row = collector.wait_rows("SELECT * FROM spans WHERE name = 'json-span'")[0]
        assert (row["trace_id"], row["span_id"], row["parent_span_id"]) == (TRACE, "eee19b7ec3c1b174", "eee19b7ec3c1b173")
        assert (row["kind"], row["status"], row["status_message"], row["mini_batch_id"]) == ("SERVER", "ERROR", "boom", 7)
        assert (row["start_time"], row["end_time"], row["worker"]) == (1_800_000_000.0, 1_800_000_001.5, "json-client")
        assert json.loads(row["events"]) == [{"name": "checkpoint", "time": 1_800_000_001.0, "attributes": {}}]

    def test_json_logs_and_metrics_are_stored(self, collector: Collector) -> None:
        """OTLP JSON logs and metrics (gzip-compressed) reach log_lines and metrics."""
        logs = {"resourceLogs": [{"scopeLogs": [{"scope": {"name": "json.logger"}, "logRecords": [{
            "timeUnixNano": "1800000000000000000", "severityNumber": 17, "body": {"stringValue": "json: failed"},
            "traceId": TRACE, "spanId": "eee19b7ec3c1b174",
            "attributes": [{"key": "exception.stacktrace", "value": {"stringValue": "Traceback ...\nKeyError: 'x'"}}]}]}]}]}
        metrics = {"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"name": "json_queue", "gauge": {"dataPoints": [
            {"timeUnixNano": "1800000000000000000", "asDouble": 4.5}]}}]}]}]}
        headers = {"content-type": "application/json", "content-encoding": "gzip"}

        for path, body in (("logs", logs), ("metrics", metrics)):
            response = httpx.post(f"{collector.url}/v1/{path}", content=gzip.compress(json.dumps(body).encode()),
                                  headers=headers)
            assert response.status_code == 200, response.text
        line = collector.wait_rows("SELECT * FROM log_lines WHERE logger = 'json.logger'")[0]
        assert (line["level"], line["text"]) == ("ERROR", "json: failed\nTraceback ...\nKeyError: 'x'")
        assert (line["trace_id"], line["span_id"]) == (TRACE, "eee19b7ec3c1b174")
        gauge = collector.wait_rows("SELECT * FROM metrics WHERE name = 'json_queue'")[0]
        assert (gauge["kind"], gauge["value"], gauge["time"]) == ("gauge", 4.5, 1_800_000_000.0)

    def test_protobuf_answer_is_protobuf(self, collector: Collector) -> None:
        """A protobuf request gets an empty ExportTraceServiceResponse in protobuf."""
        from google.protobuf import json_format
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        request = ExportTraceServiceRequest()
        request.resource_spans.add().scope_spans.add().spans.add(
            trace_id=bytes.fromhex(TRACE), span_id=bytes.fromhex("00000000000000a1"), name="pb-span",
            start_time_unix_nano=1_800_000_000_000_000_000)

        response = httpx.post(f"{collector.url}/v1/traces", content=request.SerializeToString(),
                              headers={"content-type": "application/x-protobuf"})

        assert response.status_code == 200 and response.headers["content-type"] == "application/x-protobuf"
        assert json_format.MessageToDict(ExportTraceServiceResponse.FromString(response.content)) == {}
        assert collector.wait_rows("SELECT * FROM spans WHERE name = 'pb-span'")[0]["end_time"] is None

    def test_spans_without_valid_ids_are_reported_as_partial_success(self, collector: Collector) -> None:
        """A span with an empty trace id is dropped and counted in partial_success."""
        body = otlp_json_spans("no-ids", trace_id="", span_id="")

        response = httpx.post(f"{collector.url}/v1/traces", json=body)

        assert response.status_code == 200
        assert response.json()["partialSuccess"]["rejectedSpans"] == "1"
        assert collector.query("SELECT * FROM spans WHERE name = 'no-ids'") == []

    @pytest.mark.parametrize(("content", "content_type", "status"), [
        (b"{not json", "application/json", 400),
        (b"\x0a\xff\xff\xff", "application/x-protobuf", 400),
        (b"[1, 2]", "application/json", 400),
        (b"{}", "text/plain", 415),
        (b"x" * (MAX_BODY + 1), "application/x-protobuf", 413),
        (gzip.compress(b" " * (MAX_BODY + 1)), "application/json", 413),
    ])
    def test_bad_bodies_are_refused(self, collector: Collector, content: bytes, content_type: str, status: int) -> None:
        """Malformed -> 400, a wrong media type -> 415, over max_body (sent or inflated) -> 413; a Status says why."""
        response = httpx.post(f"{collector.url}/v1/logs", content=content, headers={"content-type": content_type})

        assert response.status_code == status
        if content_type == "application/json":
            assert response.json()["message"]
        elif content_type == "application/x-protobuf":
            from google.rpc.status_pb2 import Status

            assert Status.FromString(response.content).message


# ----------------------------------------------------------------------------- App Insights bodies
class TestTrackEndpoint:
    def test_json_array_of_every_type_is_accepted(self, collector: Collector) -> None:
        """A JSON array is answered 200 with its counts; each type lands in its table."""
        tags = {"ai.operation.id": TRACE, "ai.cloud.roleInstance": "0/process003"}
        items = [
            envelope("Request", {"id": "a1a1a1a1a1a1a1a1", "duration": "0.00:00:01.500", "responseCode": "500",
                                 "success": False, "name": "ai-request", "properties": {"mini_batch_id": "4"}},
                     tags=tags),
            envelope("RemoteDependency", {"id": "b2b2b2b2b2b2b2b2", "name": "ai-dependency", "duration": "00:00:00.25",
                                          "type": "HTTP", "target": "example.org", "success": True},
                     tags={**tags, "ai.operation.parentId": "a1a1a1a1a1a1a1a1"}),
            envelope("Exception", {"exceptions": [{"typeName": "KeyError", "message": "'ai-x'", "stack": "frame 1"}],
                                   "severityLevel": 3}, tags={**tags, "ai.operation.parentId": f"|{TRACE}.a1a1a1a1a1a1a1a1."}),
            envelope("Metric", {"metrics": [{"name": "ai_rows", "value": 42, "count": 3, "min": 1, "max": 30}],
                                "properties": {"table": "t1"}}, tags=tags),
            envelope("Event", {"name": "ai-event", "properties": {"user": "u1"}}, tags=tags),
        ]

        response = collector.track(items)

        assert (response.status_code, response.json()) == (200, {"itemsReceived": 5, "itemsAccepted": 5, "errors": []})
        request = collector.wait_rows("SELECT * FROM spans WHERE span_id = 'a1a1a1a1a1a1a1a1'")[0]
        assert (request["kind"], request["status"], request["mini_batch_id"], request["worker"]) == (
            "SERVER", "ERROR", 4, "0/process003")
        assert request["end_time"] - request["start_time"] == pytest.approx(1.5)
        assert request["status_message"] == "code 500"
        dependency = collector.query("SELECT * FROM spans WHERE span_id = 'b2b2b2b2b2b2b2b2'")[0]
        assert (dependency["kind"], dependency["parent_span_id"], dependency["trace_id"]) == ("CLIENT", "a1a1a1a1a1a1a1a1", TRACE)
        assert json.loads(dependency["attributes"])["appinsights.target"] == "example.org"
        error = collector.query("SELECT * FROM log_lines WHERE text LIKE 'KeyError: ''ai-x''%'")[0]
        assert (error["level"], error["span_id"], error["text"]) == ("ERROR", "a1a1a1a1a1a1a1a1", "KeyError: 'ai-x'\nframe 1")
        metric = collector.query("SELECT * FROM metrics WHERE name = 'ai_rows'")[0]
        assert (metric["kind"], metric["value"], json.loads(metric["labels"])) == ("summary", 42.0, {"table": "t1"})
        event = collector.query("SELECT * FROM log_lines WHERE text = 'ai-event'")[0]
        assert (event["logger"], json.loads(event["attributes"])) == ("event", {"user": "u1"})

    def test_ndjson_and_gzip_bodies_are_accepted(self, collector: Collector) -> None:
        """NDJSON, gzip (declared, by magic bytes, or in several members) and deflate are all read."""
        ndjson = "\n".join(json.dumps(message(f"ai-nd-{i}")) for i in range(3)).encode()

        answers = [
            collector.track(ndjson, **{"content-type": "application/x-json-stream"}),
            collector.track(gzip.compress(ndjson), **{"content-encoding": "gzip"}),
            collector.track(gzip.compress(ndjson)),
            collector.track(zlib.compress(ndjson), **{"content-encoding": "deflate"}),
            collector.track(gzip.compress(ndjson[:-1]) + gzip.compress(ndjson[-1:]), **{"content-encoding": "gzip"}),
        ]

        assert [(a.status_code, a.json()["itemsAccepted"]) for a in answers] == [(200, 3)] * 5
        assert len(collector.wait_rows("SELECT * FROM log_lines WHERE text LIKE 'ai-nd-%'", count=15)) == 15

    def test_wrong_instrumentation_key_is_rejected_per_item(self, collector: Collector) -> None:
        """Items with another iKey are 400s in errors: 206 when some pass, 400 when none do."""
        good, bad = message("ai-ikey-good"), {**message("ai-ikey-bad"), "iKey": OTHER_KEY}

        some = collector.track([good, bad, bad])
        none = collector.track([bad])

        assert some.status_code == 206
        assert some.json() == {"itemsReceived": 3, "itemsAccepted": 1, "errors": [
            {"index": 1, "statusCode": 400, "message": "Invalid instrumentation key"},
            {"index": 2, "statusCode": 400, "message": "Invalid instrumentation key"}]}
        assert none.status_code == 400 and none.json()["itemsAccepted"] == 0
        assert collector.query("SELECT * FROM log_lines WHERE text = 'ai-ikey-bad'") == []
        assert len(collector.query("SELECT * FROM log_lines WHERE text = 'ai-ikey-good'")) == 1

    def test_invalid_items_are_rejected_per_item(self, collector: Collector) -> None:
        """Each envelope is validated on its own; the answer says which one and why."""
        items = [message("ai-valid"), {**message("x"), "time": "yesterday"}, {"name": "n", "time": "2026-01-01",
                 "iKey": KEY}, envelope("Request", {"id": "c3", "duration": "soon"}), "text"]

        errors = collector.track(items).json()["errors"]

        assert [(e["index"], e["statusCode"]) for e in errors] == [(1, 400), (2, 400), (3, 400), (4, 400)]
        assert "time" in errors[0]["message"] and "data" in errors[1]["message"] and "duration" in errors[2]["message"]

    def test_ndjson_line_that_is_not_json_is_rejected_alone(self, collector: Collector) -> None:
        """In NDJSON each line is an item: a broken line is a 400 in errors, the others are stored (206)."""
        body = f"{json.dumps(message('ai-line-0'))}\n{{broken\n{json.dumps(message('ai-line-2'))}\n".encode()

        response = collector.track(body)

        assert response.status_code == 206
        assert [(e["index"], e["statusCode"]) for e in response.json()["errors"]] == [(1, 400)]
        assert len(collector.wait_rows("SELECT * FROM log_lines WHERE text LIKE 'ai-line-%'", count=2)) == 2

    @pytest.mark.parametrize(("content", "headers", "status"), [
        (b"", {}, 400),
        (b"[{]", {}, 400),
        (b"not json at all", {}, 400),
        (b"[]", {}, 400),
        (b"plain text", {"content-encoding": "gzip"}, 400),
        (gzip.compress(b"[]")[:-6], {"content-encoding": "gzip"}, 400),
        (b"[" + b" " * MAX_BODY + b"]", {}, 413),
        (gzip.compress(b"[" + b" " * MAX_BODY + b"]"), {}, 413),
        (b"[]", {"content-type": "application/x-www-form-urlencoded"}, 415),
        (b"[]", {"content-encoding": "br"}, 415),
    ])
    def test_bad_bodies_are_refused(self, collector: Collector, content: bytes, headers: dict[str, str],
                                    status: int) -> None:
        """Empty, not JSON, not gzip -> 400; past max_body, sent or inflated -> 413; wrong type -> 415."""
        response = collector.track(content, **headers)

        assert response.status_code == status
        assert response.json()["itemsAccepted"] == 0 and response.json()["message"]

    def test_any_instrumentation_key_is_accepted_without_one_configured(self, tmp_path: Path) -> None:
        """With no --instrumentation-key every iKey is accepted."""
        with running(tmp_path / "any") as server:
            response = httpx.post(f"http://127.0.0.1:{server.port}/v2/track", json=[{**message("m"), "iKey": "k"}])

        assert response.json() == {"itemsReceived": 1, "itemsAccepted": 1, "errors": []}

    def test_concurrent_requests_are_all_stored(self, collector: Collector) -> None:
        """Requests served at once all commit (one store, one lock)."""
        def post(worker: int) -> list[int]:
            with httpx.Client() as client:
                return [client.post(f"{collector.url}/v2/track", json=[message(f"ai-par-{worker}-{i}")]).status_code
                        for i in range(10)]

        threads = [threading.Thread(target=post, args=(w,)) for w in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert len(collector.wait_rows("SELECT * FROM log_lines WHERE text LIKE 'ai-par-%'", count=80)) == 80


# ----------------------------------------------------------------------------- the run directory
class TestRunDirectory:
    def test_explorer_reads_the_collected_directory(self, tmp_path: Path) -> None:
        """The explorer's queries read what was collected: run, log lines by level, span tree."""
        from pipeobs.explorer.spans import span_tree

        run_dir = tmp_path / "explore"
        tags = {"ai.operation.id": TRACE, "ai.operation.parentId": "a1a1a1a1a1a1a1a1"}
        with running(run_dir) as server:
            url = f"http://127.0.0.1:{server.port}"
            httpx.post(f"{url}/v1/traces", json=otlp_json_spans("explored", span_id="a1a1a1a1a1a1a1a1"))
            httpx.post(f"{url}/v2/track", json=[envelope("Message", {"message": "inside", "severityLevel": 2}, tags=tags),
                                                message("debug noise")])
            with open_run(run_dir) as conn:
                live = queries.run_summary(conn)

        with open_run(run_dir) as conn:
            summary = queries.run_summary(conn)
            warnings = queries.log_lines(conn, level="warning")
            tree = span_tree(conn)
        assert (live["status"], live["step_id"], live["step"]) == ("Running", "collected", "collector")
        assert summary["status"] == "Completed" and summary["end"] >= summary["start"]
        assert [line["text"] for line in warnings] == ["inside"]
        span = next(node for node in walk(tree) if node.get("name") == "explored")
        assert [child["text"] for child in span["children"] if child["type"] == "log"] == ["inside"]

    def test_collecting_again_continues_the_same_run(self, tmp_path: Path) -> None:
        """A second collector on the directory keeps the rows and the one runs row."""
        for text in ("first", "second"):
            with running(tmp_path / "again") as server:
                httpx.post(f"http://127.0.0.1:{server.port}/v2/track", json=[message(text)])

        store = Store(tmp_path / "again" / "pipeobs.db")
        runs = store.conn.execute("SELECT status, summary FROM runs").fetchall()
        texts = [r[0] for r in store.conn.execute("SELECT text FROM log_lines ORDER BY id")]
        store.close()
        assert [r[0] for r in runs] == ["Completed"] and texts == ["first", "second"]

    def test_a_job_run_directory_is_refused(self, tmp_path: Path) -> None:
        """A directory holding a job's store (its driver is its only writer) is not collected into."""
        store = Store(tmp_path / "pipeobs.db")
        store.insert_run({"step_id": "job_1", "step_name": "job", "status": "Completed"})
        store.close()

        with pytest.raises(RunDirError, match="job_1"):
            create_app(tmp_path)

    def test_a_store_failure_is_a_retryable_503(self, tmp_path: Path) -> None:
        """When the store cannot take rows the exporters get 503, which they retry."""
        run_dir = tmp_path / "broken"
        with running(run_dir) as server:
            conn = sqlite3.connect(run_dir / "pipeobs.db")
            conn.execute("DROP TABLE log_lines")
            conn.close()
            response = httpx.post(f"http://127.0.0.1:{server.port}/v2/track", json=[message("lost")])

        assert response.status_code == 503
        assert response.json()["errors"][0]["statusCode"] == 503


# ----------------------------------------------------------------------------- serving
class TestServing:
    def test_binds_loopback_by_default_and_reports_the_port(self, tmp_path: Path) -> None:
        """Without --host the collector listens on 127.0.0.1 only, on the port ready() is told."""
        reported: list[int] = []

        with running(tmp_path / "bind", ready=reported.append) as server:
            address = server.servers[0].sockets[0].getsockname()

        assert server.config.host == "127.0.0.1" and address[0] == "127.0.0.1"
        assert reported == [address[1]] and address[1] > 0

    def test_collect_command_serves_until_interrupted(self, tmp_path: Path) -> None:
        """``pipeobs collect`` prints its URL, stores what it gets, and completes the run on Ctrl-C."""
        code = ("import argparse, sys; from pipeobs.collector import add_subcommand, dispatch; "
                "p = argparse.ArgumentParser(); add_subcommand(p.add_subparsers(dest='command')); "
                "sys.exit(dispatch(p.parse_args(sys.argv[1:])))")
        run_dir = tmp_path / "cli"
        code = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); " + code  # see interruptible()
        proc = subprocess.Popen([sys.executable, "-c", code, "collect", "--dir", str(run_dir)], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stderr is not None
            first, *hints = (proc.stdout.readline() for _ in range(3))
            match = re.fullmatch(r"pipeobs collector listening on http://127\.0\.0\.1:(\d+) \(store: (.+)\)\n", first)
            assert match, first + (proc.stderr.read() if proc.poll() is not None else "")
            response = httpx.post(f"http://127.0.0.1:{match[1]}/v2/track", json=[message("from the cli")])
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

        assert response.status_code == 200 and proc.returncode == 0, err
        assert f"IngestionEndpoint=http://127.0.0.1:{match[1]}/" in hints[0] and "OTEL_EXPORTER_OTLP_ENDPOINT" in hints[1]
        assert "1 log lines" in out
        with open_run(run_dir) as conn:
            assert queries.run_summary(conn)["status"] == "Completed"
            assert [line["text"] for line in queries.log_lines(conn)] == ["from the cli"]

    def test_collect_subcommand_defaults(self) -> None:
        """``collect`` defaults to 127.0.0.1, a free port, ./collected and any iKey; bad ports are usage errors."""
        parser = argparse.ArgumentParser()
        add_subcommand(parser.add_subparsers(dest="command"))

        args = parser.parse_args(["collect"])

        assert (args.host, args.port, args.dir, args.instrumentation_key) == ("127.0.0.1", 0, "collected", None)
        assert dispatch(argparse.Namespace(command="logs")) is None
        with pytest.raises(SystemExit):
            parser.parse_args(["collect", "--port", "70000"])

    def test_import_is_light(self) -> None:
        """``import pipeobs.collector`` loads no web framework, server or protobuf."""
        code = "import sys, pipeobs.collector; print(' '.join(sorted(sys.modules)))"

        loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())

        assert not {"starlette", "uvicorn", "google.protobuf", "opentelemetry.proto"} & loaded

    def test_missing_extra_names_the_install_line(self) -> None:
        """Without starlette, using the collector raises ImportError naming pipeobs[collector]."""
        code = ("import sys; sys.modules['starlette'] = None\n"
                "try:\n    from pipeobs.collector import create_app\nexcept ImportError as e:\n    print(e)")

        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout

        assert out.strip() == INSTALL_HINT

    def test_all_is_sorted_and_resolves(self) -> None:
        """Every public name resolves (lazily for the server parts), and __all__ is sorted."""
        import pipeobs.collector as collector_module

        assert collector_module.__all__ == sorted(collector_module.__all__)
        assert all(getattr(collector_module, name) is not None for name in collector_module.__all__)


@pytest.mark.parametrize("path", ["/v2.1/track", "/v1/traces"])
@pytest.mark.parametrize("body", ["[" * 20_000 + "]" * 20_000, '{"a":' * 10_000 + "1" + "}" * 10_000])
def test_deeply_nested_json_is_a_400_not_a_500(collector: Collector, path: str, body: str) -> None:
    response = httpx.post(f"{collector.url}{path}", content=body.encode(),
                          headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 400, response.text
    assert "nested too deeply" in response.text


def test_collect_dir_naming_a_file_is_bad_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeobs.cli import main

    taken = tmp_path / "notes.txt"
    taken.write_text("mine\n")
    assert main(["collect", "--dir", str(taken), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --dir '{taken}' is an existing file, not a folder") and "Traceback" not in err
    assert taken.read_text() == "mine\n"
