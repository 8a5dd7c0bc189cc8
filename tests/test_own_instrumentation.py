"""The entry script's own instrumentation (opencensus, the Azure Monitor distro, plain OpenTelemetry)
composes with pipeobs's: sent once per destination, carrying pipeobs's context, flushed at the end.

Real client libraries, real worker processes, real HTTP endpoints on 127.0.0.1.
"""

from __future__ import annotations

import collections
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from appinsights_helpers import Ingestion, serve

from tests.conftest import write_files, write_script

USER_KEY = "11111111-2222-3333-4444-555555555555"  # the entry script's own Application Insights resource
PIPEOBS_KEY = "00000000-0000-0000-0000-000000000001"
QUIET = {  # keep the Azure SDKs on loopback: no statsbeat, SDK stats, control plane or VM metadata probes
    "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
    "APPLICATIONINSIGHTS_SDKSTATS_DISABLED": "true",
    "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
    "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "otel",
}

# The debugging guide's logging example, verbatim, inside run(): its module-level ``run`` is the
# Run context there, and the handler is attached once (the guide runs it once per step).
GUIDE = """
import logging
from azureml.core.run import Run
from opencensus.ext.azure.log_exporter import AzureLogHandler

logger = logging.getLogger(__name__)
logger.setLevel(logging.DEBUG)
handler = None


def run(mini_batch):
    global handler
    run = Run.get_context()

    # Azure ML Scalar value logging
    run.log("scalar_value", 0.95)

    # Python print statement
    print("I am a python print statement, I will be sent to the driver logs.")

    # Plain Python logging statements
    logger.debug("I am a plain debug statement, I will be sent to the driver logs.")
    logger.info("I am a plain info statement, I will be sent to the driver logs.")

    if handler is None:
        handler = AzureLogHandler(connection_string='InstrumentationKey={key}')
        logger.addHandler(handler)

    # Python logging with OpenCensus AzureLogHandler
    logger.warning("I am an OpenCensus warning statement, find me in Application Insights!")
    logger.error("I am an OpenCensus error statement with custom dimensions", {{'step_id': run.id}})
    return mini_batch
"""
WARNING = "I am an OpenCensus warning statement, find me in Application Insights!"
ERROR = "I am an OpenCensus error statement with custom dimensions"
DEBUG = "I am a plain debug statement, I will be sent to the driver logs."
INFO = "I am a plain info statement, I will be sent to the driver logs."


@pytest.fixture
def ingestion() -> Iterator[Ingestion]:
    with serve(Ingestion()) as state:
        yield state


def pipeobs(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeobs", "run", "score.py", "--input", "data", "--runs_dir", "runs", *args],
        cwd=cwd, env={**os.environ, **QUIET, "TMPDIR": str(cwd), **(env or {})},
        capture_output=True, text=True, timeout=110,
    )


def store(cwd: Path) -> sqlite3.Connection:
    db = next((cwd / "runs").glob("*/*/pipeobs.db"))
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    return conn


def messages(ingestion: Ingestion, ikey: str) -> list[dict[str, Any]]:
    return [
        e for e in ingestion.envelopes
        if e["iKey"] == ikey and e["data"]["baseType"] in ("MessageData", "ExceptionData")
    ]


def text_of(envelope: dict[str, Any]) -> str:
    base = envelope["data"]["baseData"]
    return base["message"] if "message" in base else base["exceptions"][0]["message"]


def key_of(envelope: dict[str, Any]) -> tuple[str, str]:
    """(message, mini-batch): opencensus keeps an int dimension an int, pipeobs writes text."""
    return text_of(envelope), str(envelope["data"]["baseData"]["properties"].get("mini_batch_id"))


HANDLED = {(WARNING, "0"), (ERROR, "0"), (DEBUG, "1"), (INFO, "1"), (WARNING, "1"), (ERROR, "1")}


def mini_batch_spans(conn: sqlite3.Connection) -> dict[int, sqlite3.Row]:
    return {r["mini_batch_id"]: r for r in conn.execute("SELECT * FROM spans WHERE name = 'mini_batch'")}


def guide_job(tmp_path: Path, key: str = USER_KEY) -> Path:
    write_script(tmp_path, GUIDE.format(key=key))
    write_files(tmp_path, 2)
    return tmp_path


OPTIONS = ("--mini_batch_size", "1", "--process_count_per_node", "1")


def appinsights_env(ingestion: Ingestion, key: str = PIPEOBS_KEY) -> dict[str, str]:
    """The connection string pipeobs's exporter reads (and opencensus takes its endpoint from)."""
    return {"APPLICATIONINSIGHTS_CONNECTION_STRING": f"InstrumentationKey={key};IngestionEndpoint={ingestion.endpoint}/"}


def run_guide(tmp_path: Path, ingestion: Ingestion, key: str, *args: str) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """Run the guide's example with its handler sending to ``key``; pipeobs's exporter uses PIPEOBS_KEY."""
    job = guide_job(tmp_path, key=key)
    proc = pipeobs(job, *OPTIONS, *args, env=appinsights_env(ingestion))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return job, proc


class TestOpencensusGuideExample:
    def check_user_handler_envelopes(self, ingestion: Ingestion, job: Path) -> None:
        """The user's AzureLogHandler sent each of its records once, with pipeobs's context."""
        conn = store(job)
        spans = mini_batch_spans(conn)
        step_id = conn.execute("SELECT step_id FROM runs").fetchone()[0]
        sent = messages(ingestion, USER_KEY)
        seen = collections.Counter(key_of(e) for e in sent)
        # mini-batch 0 attaches the handler after its debug/info lines; mini-batch 1 sends all four
        assert seen == dict.fromkeys(HANDLED, 1), seen
        for envelope in sent:
            properties = envelope["data"]["baseData"]["properties"]
            mini_batch = int(properties["mini_batch_id"])
            span = spans[mini_batch]
            assert properties["step_id"] == step_id
            assert int(properties["attempt"]) == 1
            assert properties["worker"] == "0/process000"
            assert properties["fileName"].endswith("score.py")  # opencensus built it: the user's handler sent it
            assert envelope["tags"]["ai.operation.id"] == span["trace_id"]
            assert envelope["tags"]["ai.operation.parentId"] == f"|{span['trace_id']}.{span['span_id']}."
            added = {k: properties[k] for k in ("step_id", "worker", "mini_batch_id", "attempt")}
            assert all(isinstance(v, str) for v in added.values()), added  # string-valued, as the schema says

    def test_without_export_the_users_handler_sends_once_with_context(self, tmp_path: Path, ingestion: Ingestion) -> None:
        job, _ = run_guide(tmp_path, ingestion, USER_KEY)
        self.check_user_handler_envelopes(ingestion, job)
        assert not messages(ingestion, PIPEOBS_KEY)  # pipeobs exports nothing unless asked
        # pipeobs's own store still holds every line, with the dimensions the user wrote
        conn = store(job)
        rows = conn.execute("SELECT * FROM log_lines WHERE text = ?", (ERROR,)).fetchall()
        assert len(rows) == 2 and all(r["mini_batch_id"] is not None for r in rows)

    def test_with_export_to_the_same_resource_each_record_arrives_once(self, tmp_path: Path, ingestion: Ingestion) -> None:
        job, proc = run_guide(tmp_path, ingestion, PIPEOBS_KEY, "--export", "appinsights")
        everything = collections.Counter(key_of(e) for e in messages(ingestion, PIPEOBS_KEY))
        assert {k: everything[k] for k in HANDLED} == dict.fromkeys(HANDLED, 1), everything
        # the lines the user's handler never saw came from pipeobs, once
        assert everything[(DEBUG, "0")] == everything[(INFO, "0")] == 1
        assert everything[("I am a python print statement, I will be sent to the driver logs.", "0")] == 1
        assert "; 6 left to the entry script's own handlers" in proc.stdout
        # who sent what: the guide's records carry opencensus's fields, pipeobs's its own
        for envelope in messages(ingestion, PIPEOBS_KEY):
            properties = envelope["data"]["baseData"]["properties"]
            assert ("fileName" in properties) == (key_of(envelope) in HANDLED), key_of(envelope)
        user_ingestion = Ingestion(posts=[{"envelopes": [
            {**e, "iKey": USER_KEY} for e in messages(ingestion, PIPEOBS_KEY) if "fileName" in e["data"]["baseData"]["properties"]
        ]}])
        self.check_user_handler_envelopes(user_ingestion, job)

    def test_with_export_to_another_resource_both_receive_it(self, tmp_path: Path, ingestion: Ingestion) -> None:
        job, proc = run_guide(tmp_path, ingestion, USER_KEY, "--export", "appinsights")
        self.check_user_handler_envelopes(ingestion, job)
        mine = collections.Counter(text_of(e) for e in messages(ingestion, PIPEOBS_KEY))
        assert mine[WARNING] == mine[ERROR] == 2  # pipeobs's resource gets them too, once each
        assert "left to the entry script's own handlers" not in proc.stdout

    def test_opencensus_trace_exporter_spans_carry_the_context(self, tmp_path: Path, ingestion: Ingestion) -> None:
        write_script(tmp_path, OC_TRACER.format(key=USER_KEY))
        write_files(tmp_path, 2)
        proc = pipeobs(tmp_path, *OPTIONS, env=appinsights_env(ingestion, USER_KEY))

        assert proc.returncode == 0, proc.stdout + proc.stderr
        step_id = store(tmp_path).execute("SELECT step_id FROM runs").fetchone()[0]
        scored = [e for e in ingestion.envelopes if e["data"]["baseData"].get("name") == "oc-score"]
        assert sorted(str(e["data"]["baseData"]["properties"]["mini_batch_id"]) for e in scored) == ["0", "1"]
        for envelope in scored:
            properties = envelope["data"]["baseData"]["properties"]
            assert properties["step_id"] == step_id and properties["worker"] == "0/process000"
            assert properties["rows"] == "1"  # the user's own attribute is kept


OC_TRACER = """
from opencensus.ext.azure.trace_exporter import AzureExporter
from opencensus.trace.samplers import AlwaysOnSampler
from opencensus.trace.tracer import Tracer

exporter = None


def init():
    global exporter
    exporter = AzureExporter(connection_string="InstrumentationKey={key}")


def run(mini_batch):
    tracer = Tracer(exporter=exporter, sampler=AlwaysOnSampler())
    with tracer.span(name="oc-score") as span:
        span.add_attribute("rows", "1")
    return mini_batch
"""


def test_log_destinations_survive_the_marker_encoding() -> None:
    """What the worker says about a record's destinations reaches the driver's Line."""
    import logging

    from pipeobs.capture import _encode_log
    from pipeobs.records import IDLE
    from pipeobs.streams import _decode_log

    record = logging.LogRecord("user", logging.WARNING, __file__, 1, "careful", (), None)
    line = _decode_log(IDLE, _encode_log(record, "careful", {"rows": 3}, ("appinsights:abc", "appinsights:def")))
    assert line.sent_to == ("appinsights:abc", "appinsights:def")
    assert line.custom_dimensions == {"rows": 3} and line.text == "careful" and not line.system
    assert _decode_log(IDLE, _encode_log(record, "careful", None)).sent_to == ()


def test_router_skips_the_destination_a_record_already_reached(tmp_path: Path) -> None:
    from pipeobs.export import routing
    from pipeobs.export.base import ExportResult, appinsights_destination

    sent: dict[str, list[Any]] = {"a": [], "b": []}

    class Sink:
        def __init__(self, name: str, key: str) -> None:
            self.name = name
            self.destination = appinsights_destination(key)

        def export(self, records: list[Any]) -> ExportResult:
            sent[self.name].extend(records)
            return ExportResult.ok(len(records))

        def shutdown(self) -> None:
            pass

    sinks = {"a": Sink("a", USER_KEY), "b": Sink("b", PIPEOBS_KEY)}
    original = routing.create_exporter
    routing.create_exporter = lambda name, options=None: sinks[name]  # type: ignore[assignment]
    try:
        router = routing.Router(tmp_path, ["a", "b"])
        router.submit({"type": "log", "text": "x", "sent_to": [appinsights_destination(USER_KEY.upper())]})
        router.submit({"type": "log", "text": "y"})
        counts = router.close()
    finally:
        routing.create_exporter = original
    assert [r["text"] for r in sent["a"]] == ["y"]
    assert [r["text"] for r in sent["b"]] == ["x", "y"]
    assert router.sent_by_user == {"a": 1}
    assert counts["a"]["emitted"] == counts["a"]["delivered"] == 1
    assert json.dumps(appinsights_destination(USER_KEY)).count(USER_KEY) == 0  # the key itself never travels


# Microsoft's current advice: the Azure Monitor OpenTelemetry distro, configured in init().
DISTRO = """
import logging
from azure.monitor.opentelemetry import configure_azure_monitor
from opentelemetry import metrics, trace

tracer = trace.get_tracer(__name__)
logger = logging.getLogger("scorer")
rows = None


def init():
    global rows
    configure_azure_monitor(
        connection_string="InstrumentationKey={key};IngestionEndpoint={endpoint}/",
        enable_live_metrics=False,
        disable_offline_storage=True,
    )
    rows = metrics.get_meter(__name__).create_counter("rows_scored")


def run(mini_batch):
    with tracer.start_as_current_span("score") as span:
        span.set_attribute("rows", len(mini_batch))
        logger.warning("scored %d rows", len(mini_batch))
        rows.add(len(mini_batch), {{"model": "m1"}})
    return mini_batch
"""


def of_type(ingestion: Ingestion, ikey: str, base_type: str) -> list[dict[str, Any]]:
    return [e for e in ingestion.envelopes if e["iKey"] == ikey and e["data"]["baseType"] == base_type]


def context_of(properties: dict[str, Any]) -> dict[str, str]:
    return {k: str(properties.get(k)) for k in ("step_id", "worker", "mini_batch_id", "attempt")}


class TestAzureMonitorDistro:
    def run_distro(self, tmp_path: Path, ingestion: Ingestion, *args: str) -> tuple[subprocess.CompletedProcess[str], sqlite3.Connection]:
        write_script(tmp_path, DISTRO.format(key=USER_KEY, endpoint=ingestion.endpoint))
        write_files(tmp_path, 2)
        proc = pipeobs(tmp_path, *OPTIONS, *args, env=appinsights_env(ingestion, USER_KEY))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc, store(tmp_path)

    def test_configure_in_init_composes_with_pipeobs(self, tmp_path: Path, ingestion: Ingestion) -> None:
        proc, conn = self.run_distro(tmp_path, ingestion)

        everything = "\n".join(r["text"] for r in conn.execute("SELECT text FROM log_lines"))
        assert "Overriding of current" not in everything and "Overriding of current" not in proc.stderr
        spans = mini_batch_spans(conn)
        step_id = conn.execute("SELECT step_id FROM runs").fetchone()[0]
        # the user's spans reach the user's exporter, children of the mini-batch span, in the job's trace
        dependencies = [e for e in of_type(ingestion, USER_KEY, "RemoteDependencyData")
                        if e["data"]["baseData"]["name"] == "score"]
        assert len(dependencies) == len(spans) == 2
        for envelope in dependencies:
            properties = envelope["data"]["baseData"]["properties"]
            span = spans[int(properties["pipeobs.mini_batch_id"])]
            assert envelope["tags"]["ai.operation.id"] == span["trace_id"]
            assert envelope["tags"]["ai.operation.parentId"] == span["span_id"]
        # with the user's resource: one cloud role for the user's spans, logs and metrics
        assert {e["tags"]["ai.cloud.role"] for e in dependencies} == {
            e["tags"]["ai.cloud.role"] for e in of_type(ingestion, USER_KEY, "MessageData")
        }
        # ... and pipeobs's store records them with their mini-batch and attempt
        stored = conn.execute("SELECT * FROM spans WHERE name = 'score'").fetchall()
        assert sorted(r["mini_batch_id"] for r in stored) == [0, 1]
        assert all(r["attempt"] == 1 and r["parent_span_id"] == spans[r["mini_batch_id"]]["span_id"] for r in stored)
        # the user's log records and metrics carry the context
        logs = [e for e in of_type(ingestion, USER_KEY, "MessageData")
                if e["data"]["baseData"]["message"].startswith("scored")]
        assert sorted(e["data"]["baseData"]["properties"]["mini_batch_id"] for e in logs) == ["0", "1"]
        for envelope in logs:
            properties = envelope["data"]["baseData"]["properties"]
            assert context_of(properties) == {"step_id": step_id, "worker": "0/process000",
                                              "mini_batch_id": properties["mini_batch_id"], "attempt": "1"}
            assert envelope["tags"]["ai.operation.id"] == spans[int(properties["mini_batch_id"])]["trace_id"]
        points = [e for e in of_type(ingestion, USER_KEY, "MetricData")
                  if e["data"]["baseData"]["metrics"][0]["name"] == "rows_scored"]
        assert sorted(p["data"]["baseData"]["properties"]["mini_batch_id"] for p in points) == ["0", "1"]
        for point in points:
            properties = point["data"]["baseData"]["properties"]
            assert properties["model"] == "m1" and properties["step_id"] == step_id and properties["attempt"] == "1"

    def test_with_export_to_the_same_resource_user_spans_and_logs_arrive_once(
        self, tmp_path: Path, ingestion: Ingestion
    ) -> None:
        proc, conn = self.run_distro(tmp_path, ingestion, "--export", "appinsights")

        spans = mini_batch_spans(conn)
        names = collections.Counter(
            e["data"]["baseData"]["name"] for e in ingestion.envelopes
            if e["iKey"] == USER_KEY and e["data"]["baseType"] in ("RemoteDependencyData", "RequestData")
        )
        assert names["score"] == 2  # from the distro only
        assert names["mini_batch"] == len(spans) == 2  # pipeobs's own spans, from pipeobs
        scored = collections.Counter(
            e["data"]["baseData"]["message"] for e in of_type(ingestion, USER_KEY, "MessageData")
            if e["data"]["baseData"]["message"].startswith("scored")
        )
        assert scored == {"scored 1 rows": 2}
        assert "left to the entry script's own handlers" in proc.stdout


# A plain OpenTelemetry SDK set-up in init(), exporting to the user's own OTLP endpoint. The batch
# processor waits 10 minutes between exports: only the flush at the end of the worker sends them.
PLAIN_OTEL = """
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

tracer = trace.get_tracer("scorer")


def init():
    provider = TracerProvider(resource=Resource.create({{"service.name": "my-scorer"}}))
    exporter = OTLPSpanExporter(endpoint="{endpoint}/v1/traces", timeout={timeout})
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=600_000))
    trace.set_tracer_provider(provider)


def run(mini_batch):
    with tracer.start_as_current_span("score") as span:
        span.set_attribute("rows", len(mini_batch))
    return mini_batch
"""


def otel_job(tmp_path: Path, endpoint: str, timeout: int = 10) -> Path:
    write_script(tmp_path, PLAIN_OTEL.format(endpoint=endpoint, timeout=timeout))
    write_files(tmp_path, 2)
    return tmp_path


class TestPlainOpenTelemetry:
    def test_user_provider_in_init_gets_the_users_spans_as_children_of_the_mini_batch(self, tmp_path: Path) -> None:
        from pipeobs_otlp.testing import OtlpHttpCollector

        with OtlpHttpCollector() as collector:
            job = otel_job(tmp_path, collector.endpoint)
            proc = pipeobs(job, *OPTIONS)
            requests = collector.traces()

        assert proc.returncode == 0, proc.stdout + proc.stderr
        conn = store(job)
        spans = mini_batch_spans(conn)
        arrived = [
            (resource_spans.resource, span)
            for request in requests for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans for span in scope_spans.spans
        ]
        assert sorted(span.name for _, span in arrived) == ["score", "score"]  # pipeobs's own spans are not forwarded
        for resource, span in arrived:
            assert {a.key: a.value.string_value for a in resource.attributes}["service.name"] == "my-scorer"
            attributes = {a.key: a.value for a in span.attributes}
            mini_batch = spans[attributes["pipeobs.mini_batch_id"].int_value]
            assert span.trace_id.hex() == mini_batch["trace_id"]
            assert span.parent_span_id.hex() == mini_batch["span_id"]
            assert attributes["pipeobs.attempt"].int_value == 1
            assert attributes["rows"].int_value == 1
        stored = conn.execute("SELECT * FROM spans WHERE name = 'score'").fetchall()
        assert sorted(r["mini_batch_id"] for r in stored) == [0, 1] and {r["attempt"] for r in stored} == {1}
        lines = "\n".join(r["text"] for r in conn.execute("SELECT text FROM log_lines"))
        assert "Overriding of current TracerProvider" not in lines

    def test_a_hanging_user_endpoint_delays_the_end_of_a_worker_by_a_bounded_time(self, tmp_path: Path) -> None:
        from pipeobs_otlp.testing import OtlpHttpCollector, Reply

        with OtlpHttpCollector(Reply(hang=True)) as collector:
            job = otel_job(tmp_path, collector.endpoint, timeout=60)
            proc = pipeobs(job, *OPTIONS)

        assert proc.returncode == 0, proc.stdout + proc.stderr
        conn = store(job)
        warned = conn.execute(
            "SELECT text, level FROM log_lines WHERE text LIKE ?", ("The entry script's own telemetry%",)
        ).fetchall()
        assert [(r["level"]) for r in warned] == ["WARNING"], warned
        assert "(tracer provider) did not flush within 5 s" in warned[0]["text"]
        assert conn.execute("SELECT count(*) FROM mini_batches WHERE status != 'done'").fetchone()[0] == 0
        workers = conn.execute("SELECT * FROM workers").fetchall()
        assert [(w["returncode"], w["reason"]) for w in workers] == [(0, "")], [dict(w) for w in workers]


def test_opencensus_filter_adds_context_and_the_users_dimensions_win() -> None:
    """The filter pipeobs puts on opencensus handlers: context as strings, the user's keys win, ids of the span."""
    import logging

    from pipeobs import capture, context
    from pipeobs.records import Invocation
    from pipeobs.telemetry.opencensus import OpencensusContext

    info = context.WorkerInfo("step-1", "score", 0, "process003", "run", "out", "work", "INFO")
    context.set_worker(info)
    token = context.current_invocation.set(Invocation("run", 7, 2, "a" * 32, "b" * 16))
    try:
        record = logging.LogRecord("user", logging.ERROR, __file__, 1, "failed %(step_id)s", ({"step_id": "run-9"},), None)
        record.custom_dimensions = {"attempt": "mine", "rows": 3}
        assert OpencensusContext().filter(record)
    finally:
        context.current_invocation.reset(token)
        context.set_worker(None)  # type: ignore[arg-type]

    assert record.custom_dimensions == {
        "step_id": "run-9", "worker": "0/process003", "mini_batch_id": "7", "attempt": "mine", "rows": 3,
    }
    assert (record.traceId, record.spanId) == ("a" * 32, "b" * 16)
    assert capture._custom_dimensions(record) == {"attempt": "mine", "rows": 3}  # pipeobs stores what the user wrote
