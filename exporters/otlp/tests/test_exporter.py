"""OtlpExporter with fake senders: outcomes mapped onto record indexes, lifecycle, configuration."""

from __future__ import annotations

import re
import sys
from typing import Any

import pytest
from opentelemetry import context

from pipeobs.errors import ConfigError
from pipeobs_otlp import OtlpExporter, SendOutcome, create_exporter
from pipeobs_otlp.exporter import resolve_protocol
from pipeobs_otlp.senders import GrpcSender, HttpSender, parse_retry_after
from pipeobs_otlp.testing import FakeSender


def mixed_batch(records: Any) -> list[dict[str, Any]]:
    # indexes: 0 log, 1 span, 2 metric, 3 span, 4 unknown type
    return [records.log(), records.span(), records.metric(), records.span(), {"type": "nope", "time": 0}]


class TestExportResult:
    def test_everything_sent(self, records: Any) -> None:
        """When every signal is sent, every convertible record is delivered."""
        senders = FakeSender.for_all_signals()
        exporter = OtlpExporter(senders=senders)

        result = exporter.export(mixed_batch(records))

        assert result.delivered == 4
        assert result.retry == []
        assert [index for index, _ in result.rejected] == [4]
        assert result.error is None
        assert len(senders["traces"].sent[0]) == 2

    def test_outcomes_map_onto_the_records_of_each_signal(self, records: Any) -> None:
        """A retryable failure retries its signal's records, a refusal rejects them, the rest are delivered."""
        senders = {
            "traces": FakeSender(SendOutcome(ok=False, retryable=True, error="HTTP 503", retry_after=4.0)),
            "logs": FakeSender(SendOutcome(ok=False, error="HTTP 400 Bad Request")),
            "metrics": FakeSender(),
        }
        exporter = OtlpExporter(senders=senders)

        result = exporter.export(mixed_batch(records))

        assert result.delivered == 1
        assert result.retry == [1, 3]
        assert result.retry_after == 4.0
        assert result.rejected == [(0, "logs: HTTP 400 Bad Request"), (4, "unknown record type 'nope'")]
        assert result.error == "traces: HTTP 503; logs: HTTP 400 Bad Request"

    def test_the_longest_retry_after_wins(self, records: Any) -> None:
        """With two signals asking to wait, the batch waits for the longer."""
        later = SendOutcome(ok=False, retryable=True, error="429", retry_after=9.0)
        sooner = SendOutcome(ok=False, retryable=True, error="429", retry_after=2.0)
        exporter = OtlpExporter(
            senders={"traces": FakeSender(sooner), "logs": FakeSender(later), "metrics": FakeSender()}
        )

        result = exporter.export(mixed_batch(records))

        assert result.retry_after == 9.0

    def test_a_sender_that_raises_rejects_its_records(self, records: Any) -> None:
        """An exception below the exporter is reported on its records, never raised."""

        class Broken(FakeSender):
            def send(self, data: Any) -> SendOutcome:
                raise TypeError("cannot encode")

        exporter = OtlpExporter(senders={"traces": Broken(), "logs": FakeSender(), "metrics": FakeSender()})

        result = exporter.export([records.span()])

        assert result.rejected == [(0, "traces: TypeError: cannot encode")]

    def test_export_requests_are_not_instrumented(self, records: Any) -> None:
        """Senders run with instrumentation suppressed, so an instrumented client cannot loop back."""
        seen = []

        class Watching(FakeSender):
            def send(self, data: Any) -> SendOutcome:
                seen.append(context.get_value(context._SUPPRESS_INSTRUMENTATION_KEY))
                return super().send(data)

        exporter = OtlpExporter(senders={"traces": Watching(), "logs": FakeSender(), "metrics": FakeSender()})

        exporter.export([records.span()])

        assert seen == [True]
        assert context.get_value(context._SUPPRESS_INSTRUMENTATION_KEY) is None

    def test_an_empty_batch_sends_nothing(self) -> None:
        """No records, no requests."""
        senders = FakeSender.for_all_signals()

        result = OtlpExporter(senders=senders).export([])

        assert result.delivered == 0
        assert all(not sender.sent for sender in senders.values())


class TestLifecycle:
    def test_shutdown_closes_every_sender_once(self) -> None:
        """shutdown() reaches each sender and can be called again."""
        senders = FakeSender.for_all_signals()
        exporter = OtlpExporter(senders=senders)

        exporter.shutdown()
        exporter.shutdown()

        assert all(sender.shut_down for sender in senders.values())

    def test_export_after_shutdown_is_an_error(self, records: Any) -> None:
        """Using a shut-down exporter raises a clear RuntimeError."""
        with OtlpExporter(senders=FakeSender.for_all_signals()) as exporter:
            pass

        with pytest.raises(RuntimeError, match="after shutdown"):
            exporter.export([records.span()])

    def test_name(self) -> None:
        """The exporter is called otlp, like its entry point."""
        assert OtlpExporter(senders=FakeSender.for_all_signals()).name == "otlp"


class TestConfiguration:
    def test_protocol_defaults_to_http_protobuf(self) -> None:
        """Without argument or variable, the protocol is http/protobuf."""
        assert resolve_protocol(None, "traces") == "http/protobuf"

    def test_protocol_from_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """OTEL_EXPORTER_OTLP_PROTOCOL applies to all signals; a signal's own variable beats it."""
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "http/protobuf")

        assert resolve_protocol(None, "traces") == "grpc"
        assert resolve_protocol(None, "logs") == "http/protobuf"
        assert resolve_protocol("http/protobuf", "traces") == "http/protobuf"

    def test_unsupported_protocol_is_a_config_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """http/json (no official Python exporter) fails with one line naming the variable."""
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")

        with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
            OtlpExporter()

    def test_senders_follow_the_protocol(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Each signal gets the official exporter of its own protocol."""
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")

        with OtlpExporter() as exporter:
            assert isinstance(exporter._senders["traces"], GrpcSender)
            assert isinstance(exporter._senders["logs"], HttpSender)

    def test_grpc_without_its_extra_names_the_install_line(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Asking for grpc without the grpc extra fails with the pip line that fixes it."""
        monkeypatch.setitem(sys.modules, "grpc", None)

        with pytest.raises(ImportError, match=re.escape("pip install 'pipeobs-otlp[grpc]'")):
            OtlpExporter(protocol="grpc")

    def test_create_exporter_reads_its_options(self) -> None:
        """The entry point's factory takes protocol, endpoint, headers (env syntax) and timeout."""
        exporter = create_exporter({"protocol": "grpc", "endpoint": "http://127.0.0.1:4317", "timeout": "2.5"})

        assert isinstance(exporter._senders["metrics"], GrpcSender)
        exporter.shutdown()

    @pytest.mark.parametrize(
        ("options", "message"),
        [({"colour": "blue"}, "unknown otlp exporter option colour"), ({"timeout": "soon"}, "timeout='soon'")],
    )
    def test_bad_options_are_config_errors(self, options: dict[str, str], message: str) -> None:
        """An unknown option or a timeout that is not a number fails with one line."""
        with pytest.raises(ConfigError, match=message):
            create_exporter(options)

    def test_non_positive_timeout_is_a_config_error(self) -> None:
        """A timeout of zero would make every request fail."""
        with pytest.raises(ConfigError, match="positive"):
            OtlpExporter(timeout=0)

    @pytest.mark.parametrize(
        ("header", "seconds"), [("7", 7.0), ("-3", 0.0), ("soon", None), (None, None), ("inf", None)]
    )
    def test_retry_after_seconds(self, header: str | None, seconds: float | None) -> None:
        """Retry-After in delay-seconds; anything unreadable is ignored."""
        assert parse_retry_after(header) == seconds

    def test_retry_after_http_date(self) -> None:
        """Retry-After as an HTTP-date counts from now (a past date means now)."""
        assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
        assert parse_retry_after("Fri, 01 Jan 2100 00:00:00 GMT") > 1e9  # type: ignore[operator]
