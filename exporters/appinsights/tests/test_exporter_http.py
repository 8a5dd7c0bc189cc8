"""AppInsightsExporter against a real HTTP server on 127.0.0.1 that checks every envelope (section 1.7/1.8)."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from appinsights_helpers import IKEY, TRACE_ID, Ingestion, log_record, metric_record, serve, span_record

from pipeobs.export.base import ExportResult
from pipeobs_appinsights import AppInsightsExporter

EVENT = {
    "name": "exception",
    "time": 1_790_000_001.0,
    "attributes": {
        "exception.type": "ValueError",
        "exception.message": "bad row",
        "exception.stacktrace": 'Traceback (most recent call last):\n  File "/app/score.py", line 12, in run\n    score(row)\nValueError: bad row\n',
    },
}


def batch() -> list[dict[str, Any]]:
    """Five records, six envelopes: a request span with an exception event, a dependency, a log, two metrics."""
    return [
        span_record(status="ERROR", events=[EVENT]),
        span_record(name="load", kind="INTERNAL", span_id="1111222233334444"),
        log_record(custom_dimensions={"rows": 3, "nested": {"k": "v"}}),
        metric_record(),
        metric_record(name="table", kind="table", value=None, value_json='{"a": [1, 2]}'),
    ]


def answer_206(codes: dict[int, int]) -> Any:
    def answer(envelopes: list[dict[str, Any]], _headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        errors = [{"index": i, "statusCode": c, "message": f"status {c}"} for i, c in codes.items()]
        body = {"itemsReceived": len(envelopes), "itemsAccepted": len(envelopes) - len(errors), "errors": errors}
        return 206, {"Content-Type": "application/json"}, json.dumps(body).encode()

    return answer


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TestAgainstALiveEndpoint:
    def test_200_every_envelope_valid(self, ingestion: Ingestion) -> None:
        """200: all five records delivered; the server found every envelope well-formed."""
        exporter = AppInsightsExporter(ingestion.connection_string, timeout=5)

        result = exporter.export(batch())

        assert result == ExportResult(delivered=5)
        names = [e["name"].rsplit(".", 1)[1] for e in ingestion.envelopes]
        assert names == ["Request", "Exception", "RemoteDependency", "Message", "Metric", "Message"]
        assert {e["iKey"] for e in ingestion.envelopes} == {IKEY}
        assert {e["tags"]["ai.operation.id"] for e in ingestion.envelopes} == {TRACE_ID}
        assert ingestion.posts[0]["headers"]["content-type"] == "application/json; charset=utf-8"

    def test_gzip(self, ingestion: Ingestion) -> None:
        """compress=True: the server receives Content-Encoding: gzip and decodes the same envelopes."""
        exporter = AppInsightsExporter(ingestion.connection_string, timeout=5, compress=True)

        result = exporter.export(batch())

        assert result.delivered == 5
        assert ingestion.posts[0]["headers"]["content-encoding"] == "gzip"
        assert len(ingestion.envelopes) == 6

    def test_206_partial(self, ingestion: Ingestion) -> None:
        """206: envelope 1 (the span's Exception) 429 and 4 (metric) 500 retry; 3 (log) 400 rejected; the rest delivered."""
        ingestion.answer = answer_206({1: 429, 3: 400, 4: 500})
        exporter = AppInsightsExporter(ingestion.connection_string, timeout=5)

        result = exporter.export(batch())

        assert result.retry == [0, 3]
        assert result.rejected == [(2, "HTTP 400: status 400")]
        assert result.delivered == 2
        assert result.error == "3 of 6 envelopes not accepted"

    def test_503_with_retry_after(self, ingestion: Ingestion) -> None:
        """503 with Retry-After: 12 -> retry every record after 12 s."""
        ingestion.answer = lambda _e, _h: (503, {"Retry-After": "12"}, b"")
        exporter = AppInsightsExporter(ingestion.connection_string, timeout=5)

        result = exporter.export(batch())

        assert (result.delivered, result.retry, result.retry_after, result.error) == (
            0,
            [0, 1, 2, 3, 4],
            12.0,
            "HTTP 503",
        )

    def test_429_with_http_date(self, ingestion: Ingestion) -> None:
        """429 with an HTTP-date Retry-After -> retry, after about the time left."""
        when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))
        ingestion.answer = lambda _e, _h: (429, {"Retry-After": when}, b"")
        exporter = AppInsightsExporter(ingestion.connection_string, timeout=5)

        result = exporter.export([log_record()])

        assert result.retry == [0]
        assert result.retry_after is not None and 55 <= result.retry_after <= 60

    def test_400(self, ingestion: Ingestion) -> None:
        """400: rejected, nothing to retry, the service's message in the reason."""
        body = json.dumps(
            {
                "itemsReceived": 1,
                "itemsAccepted": 0,
                "errors": [{"index": 0, "statusCode": 400, "message": "Invalid instrumentation key"}],
            }
        )
        ingestion.answer = lambda _e, _h: (400, {"Content-Type": "application/json"}, body.encode())
        exporter = AppInsightsExporter(ingestion.connection_string, timeout=5)

        result = exporter.export([log_record()])

        assert result.retry == [] and result.delivered == 0
        assert result.rejected == [(0, "HTTP 400: Invalid instrumentation key")]

    def test_403(self, ingestion: Ingestion) -> None:
        """403: rejected with a reason about the key or credential."""
        ingestion.answer = lambda _e, _h: (403, {}, b"Forbidden")
        exporter = AppInsightsExporter(ingestion.connection_string, timeout=5)

        result = exporter.export([log_record()])

        assert "instrumentation key or credential was refused: Forbidden" in result.rejected[0][1]

    def test_hanging_endpoint_times_out(self, ingestion: Ingestion) -> None:
        """A server that does not answer within the timeout: retry everything, export returns near the timeout."""
        ingestion.hang()
        exporter = AppInsightsExporter(ingestion.connection_string, timeout=0.3)

        started = time.monotonic()
        result = exporter.export([log_record(), metric_record()])
        elapsed = time.monotonic() - started

        assert result.retry == [0, 1] and result.delivered == 0
        assert result.error is not None and result.error.startswith("TimeoutError")
        assert elapsed < 2.0

    def test_connection_refused(self) -> None:
        """Nothing listening: retry everything with the error text."""
        port = closed_port()
        exporter = AppInsightsExporter(
            f"InstrumentationKey={IKEY};IngestionEndpoint=http://127.0.0.1:{port}", timeout=2
        )

        result = exporter.export([log_record()])

        assert result.retry == [0]
        assert result.error is not None and "ConnectionRefusedError" in result.error

    def test_redirect_to_the_same_host(self, ingestion: Ingestion) -> None:
        """307 to the same host on another port is followed within the same export."""
        with serve(Ingestion()) as other:
            ingestion.answer = lambda _e, _h: (307, {"Location": f"{other.endpoint}/v2.1/track"}, b"")
            exporter = AppInsightsExporter(ingestion.connection_string, timeout=5)

            result = exporter.export([log_record()])

        assert result == ExportResult(delivered=1)
        assert len(ingestion.posts) == len(other.posts) == 1
        assert other.problems == []
