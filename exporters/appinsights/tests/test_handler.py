"""AzureLogHandler: opencensus's options and processors, custom dimensions, inside and outside a run."""

from __future__ import annotations

import logging
import os
import platform
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from appinsights_helpers import IKEY, Ingestion, envelope_problems
from opencensus.ext.azure.common import Options

import pipeobs.capture as capture
import pipeobs.context as context
import pipeobs.streams as streams
from pipeobs import worker_api
from pipeobs.errors import ConfigError
from pipeobs_appinsights import AzureLogHandler
from pipeobs_appinsights.handler import DEFAULT_SPOOL_DIR, OPENCENSUS_OPTIONS
from pipeobs_appinsights.testing import CONNECTION_STRING, FakeSender


class StandInDelivery:
    """The documented Delivery interface; submit() exports at once so tests see the envelopes."""

    instances: list[StandInDelivery] = []

    def __init__(self, exporter: Any, spool_dir: Path, max_queue: int = 100_000, deadline: float = 10.0) -> None:
        self.exporter, self.spool_dir, self.max_queue, self.deadline = exporter, spool_dir, max_queue, deadline
        self.records: list[dict[str, Any]] = []
        self.closed = 0
        self.counts = {"emitted": 0, "delivered": 0, "spooled": 0, "dropped": 0}
        StandInDelivery.instances.append(self)

    def submit(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self.counts["emitted"] += 1
        self.counts["delivered"] += self.exporter.export([record]).delivered

    def close(self) -> dict[str, int]:
        self.closed += 1
        return self.counts


@pytest.fixture
def log() -> Iterator[logging.Logger]:
    """A private logger that does not propagate to the root (pytest's capture stays out of the way)."""
    logger = logging.getLogger(f"entry.test.{os.getpid()}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


@pytest.fixture
def outside(log: logging.Logger) -> tuple[AzureLogHandler, FakeSender, logging.Logger]:
    """A handler outside any run, with the stand-in Delivery and a fake sender."""
    StandInDelivery.instances.clear()
    sender = FakeSender()
    handler = AzureLogHandler(connection_string=CONNECTION_STRING, sender=sender, delivery_factory=StandInDelivery)
    log.addHandler(handler)
    return handler, sender, log


# The handler itself uses only pipeobs.worker_api; these fakes stand in for a worker's internals
# (its identity and its capture), which pipeobs offers no public fake for.
class StubCapture:
    """Stands in for the worker's WorkerCapture: keeps what would go to the driver."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []

    def write_record(self, record: dict[str, Any], kind: bytes = b"L") -> None:
        self.payloads.append(record)

    def write_marker(self, kind: bytes, body: bytes) -> None:
        """Log markers, decoded by pipeobs's own parser into the fields the tests look at."""
        line = streams._decode_log(capture.IDLE, body)
        self.payloads.append({"msg": line.text, "lvl": line.level, "name": line.logger, "cd": line.custom_dimensions})


@pytest.fixture
def in_worker(monkeypatch: pytest.MonkeyPatch) -> StubCapture:
    """Makes this process look like a pipeobs worker with an active capture."""
    info = context.WorkerInfo("step-1", "score-step", 0, "process001", "/r", "/o", "/w", "INFO")
    stub = StubCapture()
    monkeypatch.setattr(context, "_worker", info)
    monkeypatch.setattr(capture, "_active", stub)
    return stub


class TestOutsideRun:
    def test_record_shape(self, outside: tuple[AzureLogHandler, FakeSender, logging.Logger]) -> None:
        """A pipeobs log record: level, logger, formatted text, role = script name, instance = host."""
        handler, _sender, log = outside

        log.warning("scored %d rows", 128)

        record = StandInDelivery.instances[0].records[0]
        assert {k: record[k] for k in ("type", "level", "stream", "logger", "text")} == {
            "type": "log",
            "level": "WARNING",
            "stream": "log",
            "logger": log.name,
            "text": "scored 128 rows",
        }
        assert record["step_name"] == (os.path.basename(sys.argv[0]) or "Python Application")
        assert record["worker"] == platform.node()

    def test_custom_dimensions_via_extra(self, outside: tuple[AzureLogHandler, FakeSender, logging.Logger]) -> None:
        """extra={"custom_dimensions": ...} reaches the envelope's properties, flat, next to opencensus's defaults."""
        _handler, sender, log = outside

        log.info("done", extra={"custom_dimensions": {"run_id": "r1", "step": 3}})

        envelope = sender.requests[0].envelopes[0]
        properties = envelope["data"]["baseData"]["properties"]
        assert envelope_problems(envelope, IKEY) == []
        assert (properties["run_id"], properties["step"]) == ("r1", "3")
        assert (properties["level"], properties["module"], properties["lineNumber"]) == (
            "INFO",
            "test_handler",
            str(_line_of(log, "done")),
        )

    def test_dict_argument_is_dimensions_not_format_arguments(
        self, outside: tuple[AzureLogHandler, FakeSender, logging.Logger]
    ) -> None:
        """logger.error("...", {"step_id": ...}): the dict becomes dimensions and the message is sent as written."""
        _handler, sender, log = outside

        log.error("done: %(items)s items", {"run_id": "r-7", "items": 12})

        base = sender.requests[0].envelopes[0]["data"]["baseData"]
        assert base["message"] == "done: %(items)s items"
        assert (base["properties"]["run_id"], base["properties"]["items"]) == ("r-7", "12")
        assert base["severityLevel"] == 3

    def test_extra_wins_over_dict_argument(self, outside: tuple[AzureLogHandler, FakeSender, logging.Logger]) -> None:
        """Both given: extra's custom_dimensions win on the same key."""
        _handler, _sender, log = outside

        log.info("x", {"k": "arg", "a": 1}, extra={"custom_dimensions": {"k": "extra"}})

        dims = StandInDelivery.instances[0].records[0]["custom_dimensions"]
        assert (dims["k"], dims["a"]) == ("extra", 1)

    def test_exception_is_an_exception_envelope(
        self, outside: tuple[AzureLogHandler, FakeSender, logging.Logger]
    ) -> None:
        """logger.exception(): an Exception envelope with a parsed stack."""
        _handler, sender, log = outside

        try:
            _ = dict[str, int]()["missing"]
        except KeyError:
            log.exception("lookup failed")

        envelope = sender.requests[0].envelopes[0]
        detail = envelope["data"]["baseData"]["exceptions"][0]
        assert envelope["name"] == "Microsoft.ApplicationInsights.Exception"
        assert (detail["typeName"], detail["message"]) == ("KeyError", "'missing'")
        assert detail["parsedStack"][0]["method"] == "test_exception_is_an_exception_envelope"

    def test_add_telemetry_processor(self, outside: tuple[AzureLogHandler, FakeSender, logging.Logger]) -> None:
        """Processors edit envelopes (opencensus style, attribute access) and drop them with False."""
        handler, sender, log = outside

        def set_role(envelope: Any) -> None:
            envelope.tags["ai.cloud.role"] = "scoring-service"

        handler.add_telemetry_processor(set_role)
        handler.add_telemetry_processor(lambda envelope: "secret" not in envelope.data.baseData.message)

        log.info("kept")
        log.info("a secret")

        assert [r.envelopes[0]["tags"]["ai.cloud.role"] for r in sender.requests] == ["scoring-service"]
        assert StandInDelivery.instances[0].counts["delivered"] == 2

    def test_active_opentelemetry_span_correlates(
        self, outside: tuple[AzureLogHandler, FakeSender, logging.Logger]
    ) -> None:
        """Inside an OpenTelemetry span, the record carries its trace and span ids."""
        from opentelemetry.sdk.trace import TracerProvider

        _handler, sender, log = outside
        tracer = TracerProvider().get_tracer("test")

        with tracer.start_as_current_span("outer") as span:
            log.info("inside")
        ctx = span.get_span_context()

        tags = sender.requests[0].envelopes[0]["tags"]
        assert (tags["ai.operation.id"], tags["ai.operation.parentId"]) == (
            f"{ctx.trace_id:032x}",
            f"{ctx.span_id:016x}",
        )

    def test_own_loggers_are_never_sent(self, outside: tuple[AzureLogHandler, FakeSender, logging.Logger]) -> None:
        """Records of pipeobs's and this package's loggers are ignored (no feedback loop through Delivery)."""
        handler, _sender, _log = outside

        for name in ("pipeobs", "pipeobs.export.delivery", "pipeobs_appinsights.exporter"):
            handler.handle(logging.LogRecord(name, logging.WARNING, __file__, 1, "self", None, None))
        handler.handle(logging.LogRecord("pipeobsx", logging.WARNING, __file__, 1, "user", None, None))

        assert [r["text"] for r in StandInDelivery.instances[0].records] == ["user"]

    def test_close_is_idempotent_and_later_records_are_counted(
        self, outside: tuple[AzureLogHandler, FakeSender, logging.Logger]
    ) -> None:
        """close() closes Delivery once; a record after close is counted as dropped, not raised."""
        handler, _sender, log = outside
        log.info("before")

        handler.close()
        handler.close()
        log.info("after")

        assert StandInDelivery.instances[0].closed == 1
        assert handler.counts["dropped"] == 1

    def test_real_delivery_end_to_end(self, ingestion: Ingestion, log: logging.Logger, tmp_path: Path) -> None:
        """With pipeobs's real Delivery and a live endpoint: every record delivered by close()."""
        handler = AzureLogHandler(
            connection_string=ingestion.connection_string, storage_path=str(tmp_path), grace_period=5
        )
        log.addHandler(handler)

        for index in range(3):
            log.info("line %d", index, extra={"custom_dimensions": {"index": index}})
        handler.close()

        messages = sorted(e["data"]["baseData"]["message"] for e in ingestion.envelopes)
        assert messages == ["line 0", "line 1", "line 2"]
        assert handler.counts["delivered"] == 3


class TestOptions:
    def test_accepts_every_opencensus_option(self, tmp_path: Path) -> None:
        """Every key of opencensus's Options._default is accepted without a warning."""
        assert set(Options._default) == OPENCENSUS_OPTIONS
        options = {key: value for key, value in Options._default.items() if value is not None}
        options |= {"connection_string": CONNECTION_STRING, "storage_path": str(tmp_path), "proxies": "{}"}

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            handler = AzureLogHandler(**options)
        handler.close()

    def test_options_reach_delivery(self, tmp_path: Path, log: logging.Logger) -> None:
        """storage_path -> spool folder, queue_capacity -> max_queue, grace_period -> deadline, timeout -> exporter."""
        StandInDelivery.instances.clear()
        handler = AzureLogHandler(
            connection_string=CONNECTION_STRING,
            storage_path=str(tmp_path),
            queue_capacity=10,
            grace_period=2.5,
            timeout=4,
            sender=FakeSender(),
            delivery_factory=StandInDelivery,
        )
        log.addHandler(handler)

        log.info("x")

        delivery = StandInDelivery.instances[0]
        assert (delivery.spool_dir, delivery.max_queue, delivery.deadline) == (tmp_path, 10, 2.5)
        assert delivery.exporter.timeout == 4.0

    def test_default_spool_folder(self, log: logging.Logger) -> None:
        """Without storage_path the spool is ~/.pipeobs/spool/appinsights."""
        StandInDelivery.instances.clear()
        log.addHandler(
            AzureLogHandler(connection_string=CONNECTION_STRING, sender=FakeSender(), delivery_factory=StandInDelivery)
        )

        log.info("x")

        assert StandInDelivery.instances[0].spool_dir == DEFAULT_SPOOL_DIR.expanduser()

    def test_unknown_option_warns(self) -> None:
        """A misspelt option is reported, not silently ignored."""
        with pytest.warns(UserWarning, match="exporter_interval"):
            AzureLogHandler(connection_string=CONNECTION_STRING, exporter_interval=5).close()

    def test_missing_key_outside_a_run_fails_like_opencensus(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """No connection string outside a run: ConfigError (a ValueError, as opencensus raises) at construction."""
        monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING", raising=False)
        monkeypatch.delenv("APPINSIGHTS_INSTRUMENTATIONKEY", raising=False)

        with pytest.raises(ValueError, match="APPLICATIONINSIGHTS_CONNECTION_STRING") as caught:
            AzureLogHandler()

        assert isinstance(caught.value, ConfigError)

    @pytest.mark.parametrize("rate", [-0.1, 1.5])
    def test_sampling_rate_range(self, rate: float) -> None:
        """logging_sampling_rate outside [0, 1] is refused."""
        with pytest.raises(ConfigError, match="logging_sampling_rate"):
            AzureLogHandler(connection_string=CONNECTION_STRING, logging_sampling_rate=rate)

    def test_sampling_rate_zero_sends_nothing(self, log: logging.Logger) -> None:
        """logging_sampling_rate=0 keeps no record."""
        StandInDelivery.instances.clear()
        log.addHandler(
            AzureLogHandler(
                connection_string=CONNECTION_STRING,
                logging_sampling_rate=0.0,
                sender=FakeSender(),
                delivery_factory=StandInDelivery,
            )
        )

        log.info("x")

        assert StandInDelivery.instances == []


class TestInsideRun:
    def test_hands_the_record_to_capture(
        self, in_worker: StubCapture, monkeypatch: pytest.MonkeyPatch, log: logging.Logger
    ) -> None:
        """Inside a worker: send_log_record(record, dims) with extra and dict-argument dimensions; no Delivery."""
        calls: list[tuple[logging.LogRecord, dict[str, Any]]] = []
        monkeypatch.setattr(worker_api, "send_log_record", lambda record, dims: calls.append((record, dims)))
        handler = AzureLogHandler(delivery_factory=StandInDelivery)  # no connection string needed in a worker
        StandInDelivery.instances.clear()
        log.addHandler(handler)

        log.warning("slow batch", {"step_id": "step-1", "seconds": 9.5}, extra={"custom_dimensions": {"rows": 7}})

        record, dims = calls[0]
        assert (record.getMessage(), record.levelname) == ("slow batch", "WARNING")
        assert (dims["step_id"], dims["seconds"], dims["rows"], dims["level"]) == ("step-1", 9.5, 7, "WARNING")
        assert StandInDelivery.instances == []

    def test_processors_run_in_the_worker(
        self, in_worker: StubCapture, monkeypatch: pytest.MonkeyPatch, log: logging.Logger
    ) -> None:
        """A processor dropping the envelope stops the record; one setting a property adds a dimension."""
        calls: list[dict[str, Any]] = []
        monkeypatch.setattr(worker_api, "send_log_record", lambda record, dims: calls.append(dims))
        handler = AzureLogHandler()
        handler.add_telemetry_processor(lambda e: e.data.baseData.message != "noise")
        handler.add_telemetry_processor(lambda e: e.data.baseData.properties.__setitem__("team", "vision"))
        log.addHandler(handler)

        log.info("noise")
        log.info("signal", extra={"custom_dimensions": {"rows": 7}})

        assert len(calls) == 1
        assert (calls[0]["team"], calls[0]["rows"]) == ("vision", "7")

    def test_real_send_log_record_sends_once(self, in_worker: StubCapture, log: logging.Logger) -> None:
        """With pipeobs's send_log_record: one payload to the driver, unformatted message, dimensions attached,
        and the root capture handler skips the record (no double send)."""
        log.propagate = True
        root_marker = capture.MarkerHandler(in_worker)  # type: ignore[arg-type]
        logging.getLogger().addHandler(root_marker)
        try:
            log.addHandler(AzureLogHandler())

            log.error("%(rows)s rows failed", {"rows": 10})
        finally:
            logging.getLogger().removeHandler(root_marker)

        assert len(in_worker.payloads) == 1
        payload = in_worker.payloads[0]
        assert payload["msg"] == "%(rows)s rows failed"
        assert payload["cd"]["rows"] == 10 and payload["lvl"] == "ERROR"


def _line_of(log: logging.Logger, message: str) -> int:
    """The line of this file that logs ``message`` (for lineNumber)."""
    source = Path(__file__).read_text().splitlines()
    return next(n for n, line in enumerate(source, 1) if f'log.info("{message}", extra=' in line)


def test_root_attached_after_capture_does_not_duplicate(in_worker: StubCapture, log: logging.Logger) -> None:
    """On the root logger after pipeobs's capture handler, the capture handler defers: the record goes out once,
    with the handler's custom dimensions."""
    root = logging.getLogger()
    marker = capture.MarkerHandler(in_worker)  # type: ignore[arg-type]
    handler = AzureLogHandler()
    root.addHandler(marker)
    root.addHandler(handler)
    log.propagate = True
    try:
        log.warning("once", extra={"custom_dimensions": {"a": 1}})
    finally:
        root.removeHandler(handler)
        root.removeHandler(marker)
        handler.close()

    mine = [p for p in in_worker.payloads if p["name"] == log.name]
    notes = [p["msg"] for p in in_worker.payloads if p["name"] == "pipeobs_appinsights.handler"]
    assert len(mine) == 1 and mine[0]["cd"]["a"] == 1
    assert notes == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_fork_child_starts_a_fresh_delivery(outside: tuple[AzureLogHandler, FakeSender, logging.Logger]) -> None:
    """After fork the child drops the parent's Delivery (its thread did not survive) and builds its own."""
    handler, _sender, log = outside
    log.info("parent")
    parent_delivery = StandInDelivery.instances[0]

    pid = os.fork()
    if pid == 0:  # the child: report through the exit code only
        fresh = handler._delivery is None
        log.info("child")
        os._exit(0 if fresh and handler._delivery is not parent_delivery else 1)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert handler._delivery is parent_delivery
