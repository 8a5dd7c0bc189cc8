"""Spans, metrics and correlation by step_id, with real worker processes."""

from __future__ import annotations

import json
from pathlib import Path

import pipeobs
from tests.conftest import RunJob, write_rendezvous

CORRELATED = """
import logging, os
import rendezvous
from azureml.core import Run
MARK = {mark!r}
def run(mini_batch):
    name = os.path.basename(mini_batch[0])
    rendezvous.arrive_and_wait({arrived!r}, 2)  # both workers take mini-batches
    print("TOKEN-" + name)
    logging.getLogger("score").info("LOGGED-" + name)
    Run.get_context().log("processed", len(mini_batch))
    if name == "f001.txt" and not os.path.exists(MARK):
        open(MARK, "w").close()
        raise RuntimeError("first try fails")
    return mini_batch
"""


class TestSpans:
    def test_span_tree_of_a_job(self, run_job: RunJob) -> None:
        """job (CONSUMER) is the root; init, mini_batch (CONSUMER) and shutdown are its children."""
        job = run_job(
            "def init():\n    pass\ndef run(mb):\n    return mb\ndef shutdown():\n    pass\n",
            files=4,
            mini_batch_size=2,
            process_count_per_node=1,
        )

        spans = job.query("SELECT * FROM spans")
        by_name: dict[str, list] = {}
        for span in spans:
            by_name.setdefault(span["name"], []).append(span)
        root = by_name["job"][0]
        assert (root["kind"], root["parent_span_id"], root["status"]) == ("CONSUMER", None, "OK")
        assert len(by_name["mini_batch"]) == 2 and len(by_name["init"]) == 1 and len(by_name["shutdown"]) == 1
        for span in by_name["mini_batch"] + by_name["init"] + by_name["shutdown"]:
            assert span["trace_id"] == root["trace_id"]
            assert span["parent_span_id"] == root["span_id"]
        batch = by_name["mini_batch"][0]
        attributes = json.loads(batch["attributes"])
        assert batch["kind"] == "CONSUMER"
        assert {span["status"] for span in by_name["mini_batch"]} == {"OK"}  # a successful attempt says so
        assert attributes["pipeobs.step_id"] == job.result.step_id
        assert attributes["pipeobs.worker"] == "0/process000"
        assert (attributes["pipeobs.items.total"], attributes["pipeobs.items.succeeded"], attributes["pipeobs.items.failed"]) == (2, 2, 0)
        assert attributes["pipeobs.status"] == "RUN_DONE"
        assert attributes["pipeobs.inputs"].startswith("2 files:")
        assert attributes["pipeobs.peak_rss_bytes"] > 1_000_000

    def test_failed_attempt_span_has_error_and_user_traceback(self, run_job: RunJob) -> None:
        """A raising run() gives an ERROR span with an exception event holding the user's traceback."""
        job = run_job("def run(mb):\n    raise ValueError('bad row')\n", files=1, run_max_try=1, process_count_per_node=1)

        span = job.query("SELECT * FROM spans WHERE name='mini_batch'")[0]
        events = json.loads(span["events"])
        assert span["status"] == "ERROR"
        assert span["status_message"] == "ValueError: bad row"
        assert events[0]["name"] == "exception"
        assert 'score.py", line 2, in run' in events[0]["attributes"]["exception.stacktrace"]
        assert "pipeobs/worker.py" not in events[0]["attributes"]["exception.stacktrace"]

    def test_killed_mini_batch_still_has_an_error_span(self, run_job: RunJob) -> None:
        """A mini-batch killed by its timeout ends as a span with status ERROR and the reason."""
        job = run_job(
            "import time\ndef run(mb):\n    time.sleep(60)\n",
            files=1,
            run_max_try=1,
            run_invocation_timeout=1,
            process_count_per_node=1,
        )

        spans = job.query("SELECT * FROM spans WHERE name='mini_batch'")
        assert len(spans) == 1
        assert spans[0]["status"] == "ERROR"
        assert "did not finish in 1 seconds" in spans[0]["status_message"]
        assert (spans[0]["mini_batch_id"], spans[0]["attempt"]) == (0, 1)

    def test_user_spans_nest_under_mini_batch(self, run_job: RunJob) -> None:
        """Spans the user opens with the OpenTelemetry API inside run() are children of mini_batch."""
        job = run_job(
            """
            from opentelemetry import trace
            tracer = trace.get_tracer("user")
            def run(mini_batch):
                with tracer.start_as_current_span("preprocess") as span:
                    span.set_attribute("n", len(mini_batch))
                    with tracer.start_as_current_span("inner"):
                        pass
                return mini_batch
            """,
            files=1,
            process_count_per_node=1,
        )

        spans = {s["name"]: s for s in job.query("SELECT * FROM spans")}
        assert spans["preprocess"]["parent_span_id"] == spans["mini_batch"]["span_id"]
        assert spans["inner"]["parent_span_id"] == spans["preprocess"]["span_id"]
        assert json.loads(spans["preprocess"]["attributes"])["n"] == 1


    def test_the_current_span_in_run_is_the_mini_batch_span_and_records_what_the_script_sets(
            self, run_job: RunJob) -> None:
        """trace.get_current_span() in run() is the mini_batch span: attributes, events, a status and an
        exception the script records on it are stored with it, cleaned as the SDK cleans them (the same calls
        on an SDK span opened beside it store the same values); calls the SDK ignores are ignored."""
        job = run_job(
            """
            import pathlib, random
            from opentelemetry import trace
            from opentelemetry.trace import Status, StatusCode
            class Odd(Exception):
                pass
            VALUES = {"rows": 7, "tags": ["a", "b"], "cfg": {"lr": 0.1}, "path": pathlib.Path("/m"),
                      "mixed": [True, 1], "none": None}
            def run(mini_batch):
                random.seed(42)  # as seed_everything does: span ids must not repeat
                span = trace.get_current_span()
                assert span.is_recording()
                span.set_attributes(VALUES)
                span.set_attribute("pipeobs.mini_batch_id", 999)  # cannot refile the span
                with trace.get_tracer("user").start_as_current_span("twin") as twin:
                    twin.set_attributes(VALUES)
                span.add_event("checkpoint", {"at": 3})
                span.update_name("scoring")
                span.record_exception(Odd("handled"))
                span.set_status("ERROR")  # not a Status: ignored, as the SDK does
                span.set_status(Status(StatusCode.ERROR, "soft failure"))
                span.set_status(StatusCode.UNSET)  # ignored: the error stays
                return mini_batch
            """,
            files=3,
            mini_batch_size=1,
            process_count_per_node=1,
        )

        spans = job.query("SELECT * FROM spans WHERE name = 'scoring' ORDER BY mini_batch_id")
        assert [s["mini_batch_id"] for s in spans] == [0, 1, 2]
        assert len({s["span_id"] for s in spans}) == 3
        span = spans[0]
        attributes = json.loads(span["attributes"])
        [twin] = job.query("SELECT attributes FROM spans WHERE name = 'twin' AND mini_batch_id = 0")
        twin_attributes = json.loads(twin["attributes"])
        for key in ("rows", "tags", "cfg", "path", "mixed", "none"):
            assert attributes.get(key, "absent") == twin_attributes.get(key, "absent"), key
        assert attributes["rows"] == 7 and attributes["tags"] == ["a", "b"]
        assert attributes["pipeobs.status"] == "RUN_DONE" and attributes["pipeobs.mini_batch_id"] == 0
        events = json.loads(span["events"])
        assert [e["name"] for e in events] == ["checkpoint", "exception"]
        assert events[0]["attributes"] == {"at": 3}
        assert events[1]["attributes"]["exception.type"].endswith("Odd")
        assert "Odd: handled" in events[1]["attributes"]["exception.stacktrace"]
        assert (span["status"], span["status_message"]) == ("ERROR", "soft failure")
        assert span["kind"] == "CONSUMER" and span["end_time"] >= span["start_time"]
        [job_span] = job.query("SELECT * FROM spans WHERE name = 'job'")
        assert (span["trace_id"], span["parent_span_id"]) == (job_span["trace_id"], job_span["span_id"])

    def test_a_failed_run_is_an_error_span_whatever_the_script_set(self, run_job: RunJob) -> None:
        """pipeobs's verdict wins over an OK the script set before run() raised; events are bounded as the SDK's."""
        job = run_job(
            """
            from opentelemetry import trace
            from opentelemetry.trace import Status, StatusCode
            def run(mini_batch):
                span = trace.get_current_span()
                span.set_status(Status(StatusCode.OK))
                for i in range(1000):
                    span.add_event("tick", {"i": i})
                raise ValueError("late failure")
            """,
            files=1,
            process_count_per_node=1,
            run_max_try=1,
        )

        [span] = job.query("SELECT * FROM spans WHERE name = 'mini_batch'")
        assert span["status"] == "ERROR" and "late failure" in span["status_message"]
        events = json.loads(span["events"])
        assert len(events) == 129 and events[-1]["name"] == "exception"  # 128 ticks (the SDK's limit), the error


class TestCorrelation:
    def test_token_log_metric_and_span_share_ids(self, run_job: RunJob, tmp_path: Path) -> None:
        """Each run()'s print, logging record and run.log share step, mini-batch, attempt, trace and span ids."""
        write_rendezvous(tmp_path)
        job = run_job(
            CORRELATED.format(mark=str(tmp_path / "failed-once"), arrived=str(tmp_path / "arrived")),
            files=12,
            mini_batch_size=1,
            process_count_per_node=2,
        )

        failures = job.query("SELECT error_type, error_message FROM attempts WHERE status != 'RUN_DONE'")
        assert [(r["error_type"], r["error_message"]) for r in failures] == [("RuntimeError", "first try fails")]
        spans = job.query("SELECT * FROM spans WHERE name='mini_batch'")
        workers = set()
        retried = False
        for span in spans:
            key = (span["mini_batch_id"], span["attempt"])
            token = job.query("SELECT * FROM log_lines WHERE text LIKE 'TOKEN-%' AND mini_batch_id=? AND attempt=?", *key)
            logged = job.query("SELECT * FROM log_lines WHERE text LIKE 'LOGGED-%' AND mini_batch_id=? AND attempt=?", *key)
            metric = job.query("SELECT * FROM metrics WHERE name='processed' AND mini_batch_id=? AND attempt=?", *key)
            assert len(token) == len(logged) == len(metric) == 1, key
            for row in (token[0], logged[0], metric[0]):
                assert (row["step_id"], row["worker"], row["trace_id"], row["span_id"]) == (
                    span["step_id"], span["worker"], span["trace_id"], span["span_id"]
                ), key
            workers.add(span["worker"])
            retried = retried or span["attempt"] == 2
        assert retried
        assert len(workers) == 2
        assert len(spans) == 13  # 12 mini-batches, one of them tried twice


class TestMetrics:
    def test_builtin_series_are_stored(self, run_job: RunJob) -> None:
        """Mini-batches and items by status, the duration histogram and retries land in the store; each
        attempt's peak RSS and span in its row."""
        job = run_job(
            "def run(mb):\n    if mb[0].endswith('f002.txt'):\n        raise ValueError('x')\n    return mb\n",
            files=4,
            mini_batch_size=1,
            run_max_try=2,
            process_count_per_node=1,
        )

        def last(name: str, labels: str = "{}") -> float:
            rows = job.query("SELECT value FROM metrics WHERE name=? AND labels=? ORDER BY id DESC LIMIT 1", name, labels)
            return rows[0]["value"]

        assert last("pipeobs_mini_batches_total", '{"status": "succeeded"}') == 3
        assert last("pipeobs_mini_batches_total", '{"status": "failed"}') == 1
        assert last("pipeobs_items_total", '{"status": "succeeded", "worker": "0/process000"}') == 3
        assert last("pipeobs_attempts_total", '{"status": "RUN_EXCEPTION", "worker": "0/process000"}') == 2
        assert last("pipeobs_retries_total") == 1
        assert last("pipeobs_mini_batch_duration_seconds_count") == 5
        assert last("pipeobs_job_running") == 0
        attempts = job.query("SELECT peak_rss, span_id, recorded_at FROM attempts")
        assert len(attempts) == 5 and all(a["peak_rss"] and a["span_id"] and a["recorded_at"] for a in attempts)

    def test_worker_restarts_and_timeouts_counted(self, run_job: RunJob) -> None:
        """A timeout counts as a timeout and a worker restart."""
        job = run_job(
            "import time\ndef run(mb):\n    time.sleep(60)\n",
            files=1,
            run_max_try=1,
            run_invocation_timeout=1,
            process_count_per_node=1,
        )

        names = {r["name"]: r["value"] for r in job.query("SELECT name, value FROM metrics WHERE kind='counter'")}
        assert names["pipeobs_timeouts_total"] == 1
        assert names["pipeobs_worker_restarts_total"] == 1


class TestStructlog:
    def test_structlog_events_get_the_step_context(self, run_job: RunJob) -> None:
        """One processor gives structlog events the same ids as the mini_batch span."""
        job = run_job(
            """
            import pipeobs, structlog
            structlog.configure(processors=[pipeobs.add_pipeobs_context, structlog.processors.JSONRenderer()])
            def run(mini_batch):
                structlog.get_logger().info("scored", n=len(mini_batch))
                return mini_batch
            """,
            files=1,
            process_count_per_node=1,
        )

        line = job.query("SELECT text FROM log_lines WHERE text LIKE '%scored%'")[0]["text"]
        event = json.loads(line)
        span = job.query("SELECT * FROM spans WHERE name='mini_batch'")[0]
        assert event["event"] == "scored"
        assert (event["step_id"], event["mini_batch_id"], event["attempt"]) == (job.result.step_id, 0, 1)
        assert (event["trace_id"], event["span_id"], event["worker"]) == (span["trace_id"], span["span_id"], "0/process000")


class TestLoad:
    def test_load_returns_dataframes(self, run_job: RunJob) -> None:
        """pipeobs.load(run_dir) gives spans, logs, metrics and mini_batches as DataFrames."""
        job = run_job("def run(mb):\n    print('hi')\n    return mb\n", files=2, mini_batch_size=1)

        data = pipeobs.load(job.run_dir)

        assert set(data.spans["name"]) >= {"job", "mini_batch"}
        assert (data.logs["text"] == "hi").sum() == 2
        assert len(data.mini_batches) == 2
        assert "pipeobs_mini_batches_total" in set(data.metrics["name"])
        # the per-attempt observations the attempt rows hold are metric rows here, as they were when stored twice
        durations = data.metrics[data.metrics["name"] == "pipeobs_mini_batch_duration_seconds"]
        assert len(durations) == 2 and set(durations["kind"]) == {"observation"}
        assert set(durations["step_id"]) == {job.result.step_id} and durations["span_id"].notna().all()
        assert list(data.metrics.columns) == list(data.metrics.columns.unique())
        assert str(data.metrics["id"].dtype) == "Int64"  # an integer column still, empty for those rows

    def test_load_by_step_id(self, run_job: RunJob, tmp_path: Path) -> None:
        """A step_id is found under the runs folder."""
        job = run_job("def run(mb):\n    return mb\n", files=1)

        data = pipeobs.load(job.result.step_id, runs_dir=tmp_path / "runs")

        assert data.run_dir == str(job.run_dir)
