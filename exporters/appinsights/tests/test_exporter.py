"""AppInsightsExporter with the shipped FakeSender: record <-> envelope accounting and answers."""

from __future__ import annotations

import email.utils
import gzip
import json
from typing import Any

import pytest
from appinsights_helpers import IKEY, T0, log_record, metric_record, span_record

from pipeobs.errors import ConfigError
from pipeobs.export.base import ExportResult
from pipeobs_appinsights import AppInsightsExporter, create_exporter
from pipeobs_appinsights.connection import CONNECTION_STRING_ENV
from pipeobs_appinsights.exporter import parse_retry_after
from pipeobs_appinsights.testing import CONNECTION_STRING, FakeSender, SentRequest, ok, partial, status, track_response


def exception_span() -> dict[str, Any]:
    event = {
        "name": "exception",
        "time": T0 + 1,
        "attributes": {"exception.type": "ValueError", "exception.message": "x"},
    }
    return span_record(status="ERROR", events=[event])


def exporter_with(*answers: Any, **kwargs: Any) -> tuple[AppInsightsExporter, FakeSender]:
    sender = FakeSender(*answers)
    return AppInsightsExporter(CONNECTION_STRING, sender=sender, **kwargs), sender


class TestRequest:
    def test_posts_a_json_array_to_track(self) -> None:
        """One POST of all envelopes to <endpoint>/v2.1/track, JSON headers, the exporter's timeout."""
        exporter, sender = exporter_with(ok(), timeout=3.0)

        result = exporter.export([log_record(), metric_record()])

        request = sender.requests[0]
        assert result == ExportResult(delivered=2)
        assert request.url == "https://ingest.example.invalid/v2.1/track"
        assert request.headers["Content-Type"] == "application/json; charset=utf-8"
        assert request.headers["Accept"] == "application/json"
        assert 0 < request.timeout <= 3.0
        assert [e["name"] for e in request.envelopes] == [
            "Microsoft.ApplicationInsights.Message",
            "Microsoft.ApplicationInsights.Metric",
        ]

    def test_gzip_is_optional(self) -> None:
        """compress=True: the body is gzip with Content-Encoding: gzip."""
        exporter, sender = exporter_with(ok(), compress=True)

        exporter.export([log_record()])

        request = sender.requests[0]
        assert request.headers["Content-Encoding"] == "gzip"
        assert json.loads(gzip.decompress(request.body))[0]["iKey"] == IKEY

    def test_bearer_token_from_credential(self) -> None:
        """An Entra ID credential adds Authorization: Bearer, asked once for the Azure Monitor scope."""

        class Token:
            token = "tok-1"
            expires_on = 4_000_000_000

        class Credential:
            scopes: list[str] = []

            def get_token(self, scope: str) -> Token:
                self.scopes.append(scope)
                return Token()

        credential = Credential()
        exporter, sender = exporter_with(ok(), credential=credential)

        exporter.export([log_record()])
        exporter.export([log_record()])

        assert sender.requests[1].headers["Authorization"] == "Bearer tok-1"
        assert credential.scopes == ["https://monitor.azure.com//.default"]

    def test_aad_connection_string_needs_a_credential(self) -> None:
        """Authorization=AAD without credential= is a ConfigError naming the fix."""
        with pytest.raises(ConfigError, match="credential="):
            AppInsightsExporter(CONNECTION_STRING + ";Authorization=AAD", sender=FakeSender())

    def test_nothing_to_send_sends_nothing(self) -> None:
        """An empty batch makes no request."""
        exporter, sender = exporter_with(ok())

        assert exporter.export([]) == ExportResult()
        assert sender.requests == []


class TestRecordAccounting:
    def test_one_record_many_envelopes(self) -> None:
        """A span with an exception event is one record, two envelopes; delivered counts records."""
        exporter, sender = exporter_with(ok())

        result = exporter.export([exception_span(), log_record()])

        assert len(sender.requests[0].envelopes) == 3
        assert result == ExportResult(delivered=2)

    def test_a_retryable_envelope_retries_its_record(self) -> None:
        """206 with the span's Exception envelope (index 1) at 503: record 0 is retried, record 1 delivered."""
        exporter, _sender = exporter_with(partial({1: 503}))

        result = exporter.export([exception_span(), log_record()])

        assert (result.delivered, result.retry, result.rejected) == (1, [0], [])

    def test_rejected_envelope_rejects_its_record(self) -> None:
        """206 with envelope 2 (record 1) at 400: record 1 rejected with the service's message."""
        exporter, _sender = exporter_with(partial({2: 400}))

        result = exporter.export([exception_span(), log_record(), metric_record()])

        assert result.delivered == 2 and result.retry == []
        assert result.rejected == [(1, "HTTP 400: item 2: status 400")]

    def test_retry_beats_reject_within_a_record(self) -> None:
        """One envelope 400 and another 429 in the same record: the record is retried, not rejected."""
        exporter, _sender = exporter_with(partial({0: 400, 1: 429}))

        result = exporter.export([exception_span()])

        assert (result.retry, result.rejected) == ([0], [])

    def test_unmappable_record_is_rejected_alone(self) -> None:
        """A record that cannot become an envelope is rejected; the others are sent."""
        exporter, sender = exporter_with(ok())

        result = exporter.export([log_record(), {"type": "profile"}, metric_record()])

        assert len(sender.requests[0].envelopes) == 2
        assert result.delivered == 2
        assert result.rejected == [(1, "cannot map to an envelope: ValueError: unsupported record type 'profile'")]

    def test_failure_retries_every_sendable_record(self) -> None:
        """A network error retries every record that was sent, not the unmappable one."""
        exporter, _sender = exporter_with(ConnectionResetError("reset by peer"))

        result = exporter.export([log_record(), {"type": "profile"}, metric_record()])

        assert result.retry == [0, 2]
        assert [index for index, _ in result.rejected] == [1]
        assert result.error == "ConnectionResetError: reset by peer"


class TestAnswers:
    @pytest.mark.parametrize("code", [408, 429, 500, 502, 503, 504])
    def test_transient_statuses_retry_everything(self, code: int) -> None:
        """408, 429 and 5xx: every record to retry, with Retry-After."""
        exporter, _sender = exporter_with(status(code, retry_after="7"))

        result = exporter.export([log_record(), log_record()])

        assert (result.delivered, result.retry, result.retry_after) == (0, [0, 1], 7.0)
        assert result.error is not None and str(code) in result.error

    @pytest.mark.parametrize(
        ("code", "words"),
        [
            (400, "HTTP 400"),
            (401, "instrumentation key or credential"),
            (403, "APPLICATIONINSIGHTS_CONNECTION_STRING"),
            (404, "IngestionEndpoint"),
            (439, "daily cap"),
        ],
    )
    def test_permanent_statuses_reject(self, code: int, words: str) -> None:
        """400/401/403/404/439: every record rejected with a reason; nothing retried."""
        exporter, _sender = exporter_with(status(code))

        result = exporter.export([log_record()])

        assert result.retry == [] and result.delivered == 0
        assert words in result.rejected[0][1]

    def test_400_reasons_come_from_the_item_errors(self) -> None:
        """A 400 with per-item errors gives each record its own message."""
        body = track_response(2, [(1, 400, "Field 'message' on type 'MessageData' is required")])
        exporter, _sender = exporter_with((400, {}, body))

        result = exporter.export([log_record(), log_record()])

        assert result.rejected[1] == (1, "HTTP 400: Field 'message' on type 'MessageData' is required")
        assert result.rejected[0] == (0, "HTTP 400: refused with its batch, which had 1 invalid item(s)")

    def test_206_with_unreadable_body_retries(self) -> None:
        """A 206 whose errors cannot be read: retry everything rather than guess."""
        exporter, _sender = exporter_with((206, {}, b"not json"))

        assert exporter.export([log_record()]).retry == [0]

    def test_redirect_is_followed_and_remembered(self) -> None:
        """307 to a regional Azure host: the batch is re-posted there, and later batches go straight there."""
        regional = "https://westeurope-5.in.applicationinsights.azure.com/v2.1/track"
        exporter, sender = exporter_with((307, {"location": regional}, b""), ok())

        first = exporter.export([log_record()])
        exporter.export([log_record()])

        assert first.delivered == 1
        assert [r.url for r in sender.requests] == ["https://ingest.example.invalid/v2.1/track", regional, regional]

    def test_redirect_to_a_foreign_host_is_refused(self) -> None:
        """A redirect to a host that is neither the same nor Azure Monitor's is not followed (the key would leak)."""
        exporter, sender = exporter_with((308, {"location": "https://evil.example/collect"}, b""))

        result = exporter.export([log_record()])

        assert len(sender.requests) == 1
        assert "evil.example" in result.rejected[0][1]

    def test_redirect_never_downgrades_to_http(self) -> None:
        """A redirect from https to plain http is refused (the key and token would travel in clear)."""
        exporter, sender = exporter_with((307, {"Location": "http://ingest.example.invalid/v2.1/track"}, b""))

        result = exporter.export([log_record()])

        assert len(sender.requests) == 1
        assert "plain http" in result.rejected[0][1]

    def test_no_retry_loop_inside_export(self) -> None:
        """export() makes exactly one request, even when the answer says retry."""
        exporter, sender = exporter_with(status(503), ok())

        exporter.export([log_record()])

        assert len(sender.requests) == 1


class TestTelemetryProcessors:
    def test_processor_edits_and_drops(self) -> None:
        """opencensus semantics: edit in place (attribute access works), False drops; dropped records count as delivered."""
        exporter, sender = exporter_with(ok())

        def rename(envelope: Any) -> None:
            envelope.tags["ai.cloud.role"] = "renamed"

        exporter.add_telemetry_processor(rename)
        exporter.add_telemetry_processor(lambda e: e["data"]["baseType"] != "MetricData")

        result = exporter.export([log_record(), metric_record()])

        assert result == ExportResult(delivered=2)
        assert [e["tags"]["ai.cloud.role"] for e in sender.requests[0].envelopes] == ["renamed"]

    def test_failing_processor_is_skipped(self, caplog: pytest.LogCaptureFixture) -> None:
        """A processor that raises is logged and ignored; the envelope is still sent."""
        exporter, sender = exporter_with(ok())
        exporter.add_telemetry_processor(lambda e: 1 / 0)

        exporter.export([log_record()])

        assert len(sender.requests[0].envelopes) == 1
        assert "Telemetry processor" in caplog.text

    def test_processor_that_adds_nan_rejects_only_that_record(self) -> None:
        """An envelope JSON cannot carry (NaN) is refused locally, not sent to spoil the batch."""
        exporter, sender = exporter_with(ok())
        exporter.add_telemetry_processor(
            lambda e: e["data"]["baseData"].__setitem__("x", float("nan")) if e["name"].endswith("Metric") else None
        )

        result = exporter.export([log_record(), metric_record()])

        assert len(sender.requests[0].envelopes) == 1
        assert [index for index, _ in result.rejected] == [1]


class TestRetryAfter:
    @pytest.mark.parametrize(
        ("value", "seconds"), [("5", 5.0), (" 2.5 ", 2.5), ("-3", 0.0), ("", None), ("soon", None), (None, None)]
    )
    def test_seconds(self, value: str | None, seconds: float | None) -> None:
        """A number of seconds (negative clamps to 0); garbage is None."""
        assert parse_retry_after(value) == seconds

    def test_http_date(self) -> None:
        """An HTTP date is the time left until it."""
        now = 1_800_000_000.0

        assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == 30.0
        assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0


class TestLifecycle:
    def test_shutdown_is_idempotent_and_final(self) -> None:
        """shutdown() twice is fine; export() afterwards is a RuntimeError."""
        exporter, _sender = exporter_with(ok())

        exporter.shutdown()
        exporter.shutdown()

        with pytest.raises(RuntimeError, match="after shutdown"):
            exporter.export([log_record()])

    def test_name(self) -> None:
        """The exporter's name is its entry-point name."""
        assert AppInsightsExporter.name == "appinsights"


class TestCreateExporter:
    def test_reads_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """create_exporter({}) uses APPLICATIONINSIGHTS_CONNECTION_STRING."""
        monkeypatch.setenv(CONNECTION_STRING_ENV, CONNECTION_STRING)

        exporter = create_exporter({})

        assert exporter.url == "https://ingest.example.invalid/v2.1/track"

    def test_options(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """connection_string, timeout and compress come from the (string) options."""
        monkeypatch.delenv(CONNECTION_STRING_ENV, raising=False)

        exporter = create_exporter({"connection_string": CONNECTION_STRING, "timeout": "2.5", "compress": "true"})

        assert (exporter.timeout, exporter.compress) == (2.5, True)

    def test_missing_configuration(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Nothing configured: ConfigError naming the variable."""
        monkeypatch.delenv(CONNECTION_STRING_ENV, raising=False)
        monkeypatch.delenv("APPINSIGHTS_INSTRUMENTATIONKEY", raising=False)

        with pytest.raises(ConfigError, match=CONNECTION_STRING_ENV):
            create_exporter({})

    def test_bad_timeout(self) -> None:
        """A timeout that is not a number is a ConfigError."""
        with pytest.raises(ConfigError, match="timeout"):
            create_exporter({"connection_string": CONNECTION_STRING, "timeout": "soon"})


def test_fake_sender_records_requests() -> None:
    """The shipped fake decodes what was posted and replays its script (the last answer repeats)."""
    sender = FakeSender(status(503), ok())

    first = sender("u", b"[]", {}, 1.0)
    second = sender("u", b"[{}]", {}, 1.0)
    third = sender("u", b"[{}]", {}, 1.0)

    assert first[0] == 503 and second[0] == third[0] == 200
    assert isinstance(sender.requests[0], SentRequest) and sender.requests[2].envelopes == [{}]
