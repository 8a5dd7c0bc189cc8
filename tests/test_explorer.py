"""The explorer: run lookup, queries over a store, the Chrome trace export, and the commands."""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeobs.errors import ConfigError, RunDirError
from pipeobs.explorer import queries, spans
from pipeobs.explorer.chrome import chrome_trace
from pipeobs.explorer.commands import add_subcommands, dispatch, follow_logs, format_log_line
from pipeobs.explorer.runs import connect_readonly, list_runs, open_run, resolve_run
from pipeobs.record.store import Store, WorkerRow

T0 = 1_800_000_000.0
STEP_ID = "step-a_20270115_080000_abcdef"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
W0, W1, W2 = "0/process000", "0/process001", "0/process002"


def _span(span_id: str, parent: str | None, name: str, start: float, end: float | None, worker: str | None,
          mb: int | None = None, attempt: int | None = None, status: str = "OK", message: str | None = None,
          attributes: dict[str, Any] | None = None, events: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "span_id": span_id, "trace_id": TRACE, "parent_span_id": parent, "name": name,
        "kind": "CONSUMER" if name in ("job", "mini_batch") else "INTERNAL", "start_time": T0 + start,
        "end_time": None if end is None else T0 + end, "status": status, "status_message": message,
        "worker": worker, "mini_batch_id": mb, "attempt": attempt, "attributes": json.dumps(attributes or {}),
        "events": json.dumps(events or []),
    }


def _attempt(mb: int, attempt: int, worker: str, pid: int, start: float, elapsed: float, status: str = "RUN_DONE",
             items: int = 2, error: tuple[str, str, str] | None = None) -> dict[str, Any]:
    succeeded = items if status == "RUN_DONE" else 0
    kind, message, location = error or (None, None, None)
    traceback = f"Traceback (most recent call last):\n  {location}\n{kind}: {message}" if error else None
    return {
        "mini_batch_id": mb, "attempt": attempt, "worker": worker, "pid": pid, "start_time": T0 + start,
        "elapsed": elapsed, "process_seconds": elapsed / 2, "run_seconds": elapsed * 0.9, "total": items,
        "succeeded": succeeded, "failed": items - succeeded, "status": status, "error_category": "user" if error else None,
        "error_type": kind, "error_message": message, "error_location": location, "traceback": traceback,
    }


def _line(at: float, worker: str, stream: str, text: str, mb: int | None = None, attempt: int | None = None,
          level: str | None = None, span_id: str | None = None, phase: str = "run") -> dict[str, Any]:
    return {
        "time": T0 + at, "worker": worker, "stream": stream, "phase": phase, "mini_batch_id": mb, "attempt": attempt,
        "level": level, "logger": "score" if level else None, "text": text, "trace_id": TRACE if span_id else None,
        "span_id": span_id,
    }


def _metric(at: float, worker: str | None, name: str, kind: str, value: float | None, value_json: str | None = None,
            labels: dict[str, Any] | None = None, mb: int | None = None) -> dict[str, Any]:
    return {
        "time": T0 + at, "worker": worker, "phase": "run" if mb is not None else "job", "mini_batch_id": mb,
        "attempt": 1 if mb is not None else None, "name": name, "kind": kind, "value": value, "value_json": value_json,
        "description": "", "labels": json.dumps(labels or {}),
    }


def queue(store: Store, table: str, row: dict[str, Any]) -> None:
    """Queue a row by column name (the store fills the step_id and leaves other columns NULL)."""
    store.insert(table, row)


def build_store(root: Path, status: str = "Running", with_spans: bool = True, job_span: bool = True) -> Path:
    """A run of 4 mini-batches on 3 workers: a retry after a timeout, a failed one, one in progress."""
    run_dir = root / "runs" / "step-a" / STEP_ID
    run_dir.mkdir(parents=True)
    store = Store(run_dir / "pipeobs.db", STEP_ID)
    store.insert_run({"step_id": STEP_ID, "step_name": "step-a", "status": status, "started_at": T0,
                      "ended_at": None if status == "Running" else T0 + 10, "entry_script": "score.py"})
    for mb in range(4):
        store.add_mini_batch(mb, json.dumps({"id": mb, "item_count": 2}))
    store.finish_mini_batch(0, status="done", attempts=1, total=2, succeeded=2, worker=W0, output_end=10)
    store.finish_mini_batch(1, status="done", attempts=2, total=2, succeeded=2, worker=W0, output_end=20)
    store.finish_mini_batch(2, status="failed", attempts=2, total=2, succeeded=0, worker=W2, output_end=None)
    for row in (
        _attempt(0, 1, W0, 100, 1.0, 1.0),
        _attempt(1, 1, W1, 101, 1.0, 3.0, "RUN_TIMEOUT", error=("RUN_TIMEOUT", "did not finish in 3 seconds.", "")),
        _attempt(1, 2, W0, 100, 4.5, 0.5),
        _attempt(2, 1, W0, 100, 5.5, 0.25, "RUN_EXCEPTION", error=("ValueError", "bad pixel", "score.py:12 in run")),
        _attempt(2, 2, W2, 102, 6.0, 0.25, "RUN_EXCEPTION", error=("ValueError", "bad pixel again", "score.py:12 in run")),
    ):
        queue(store, "attempts", row)
    for worker in (
        WorkerRow(W0, 0, "process000", 100, started=T0 + 0.05, ended=T0 + 10, returncode=0),
        WorkerRow(W1, 0, "process001", 101, started=T0 + 0.05, ended=T0 + 4.1, returncode=-9,
                  reason="killed: mini batch 1 did not finish in 3 seconds."),
        WorkerRow(W2, 0, "process002", 102, started=T0 + 4.2),
    ):
        store.put_worker(worker)
    if with_spans:
        for row in (
            _span("j", None, "job", 0.0, None if status == "Running" else 10.0, "driver"),
            _span("i0", "j", "init", 0.1, 0.5, W0),
            _span("m0", "j", "mini_batch", 1.0, 2.0, W0, 0, 1, attributes={"pipeobs.mini_batch_id": 0, "rows": 2}),
            _span("ld", "m0", "load", 1.1, 1.5, W0, 0, 1),
            _span("m1a", "j", "mini_batch", 1.0, 4.0, W1, 1, 1, "ERROR", "did not finish in 3 seconds.",
                  events=[{"name": "exception", "time": T0 + 4.0, "attributes": {"exception.type": "WorkerKilled"}}]),
            _span("m1b", "j", "mini_batch", 4.5, 5.0, W0, 1, 2),
            _span("m2a", "j", "mini_batch", 5.5, 5.75, W0, 2, 1, "ERROR", "ValueError: bad pixel"),
            _span("m2b", "j", "mini_batch", 6.0, 6.25, W2, 2, 2, "ERROR", "ValueError: bad pixel again",
                  attributes={"weird": float("nan")}),
            _span("m3", "j", "mini_batch", 8.0, None, W2, 3, 1, "UNSET"),
        ):
            if job_span or row["span_id"] != "j":
                queue(store, "spans", row)
    for row in (
        _line(0.2, W0, "stdout", "init called", phase="init"),
        _line(1.2, W0, "log", "loading [2 files]", 0, 1, "INFO", span_id="ld"),
        _line(1.05, W0, "stdout", "scoring mb 0", 0, 1, span_id="m0"),
        _line(1.7, W0, "stderr", "warning from C", 0, 1),
        _line(1.5, W1, "stdout", "scoring mb 1 slowly", 1, 1),
        _line(4.6, W0, "stdout", "scoring mb 1", 1, 2, span_id="m1b"),
        _line(5.6, W0, "log", "bad pixel at 3,4", 2, 1, "ERROR", span_id="m2a"),
        _line(6.125, W2, "log", "bad pixel at 3,4", 2, 2, "ERROR", span_id="m2b"),
        _line(8.5, W2, "log", "debug detail", 3, 1, "DEBUG", span_id="m3"),
        _line(9.0, W2, "stdout", "still scoring mb 3", 3, 1, span_id="m3"),
    ):
        queue(store, "log_lines", row)
    for row in (
        _metric(1.8, W0, "loss", "scalar", 0.5, mb=0),
        _metric(4.9, W0, "loss", "scalar", 0.25, mb=1),
        _metric(4.9, W0, "model", "tag", None, json.dumps("v1"), mb=1),
        _metric(5.0, W0, "scores", "list", None, json.dumps([0.25, 1, "n/a", 3]), mb=1),
        _metric(1.0, W0, "pipeobs_process_rss_bytes", "gauge", 100 * 2**20, labels={"worker": W0}),
        _metric(3.0, W1, "pipeobs_process_rss_bytes", "gauge", 200 * 2**20, labels={"worker": W1}),
        _metric(1.0, None, "pipeobs_queue_depth", "gauge", 3.0),
        _metric(9.5, None, "pipeobs_queue_depth", "gauge", 0.0),
        _metric(9.5, None, "pipeobs_attempts_total", "counter", 5.0, labels={"status": "RUN_DONE"}),
    ):
        queue(store, "metrics", row)
    store.flush()
    store.close()
    return run_dir


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return build_store(tmp_path)


@pytest.fixture
def conn(run_dir: Path) -> Any:
    with open_run(run_dir) as connection:
        yield connection


def set_status(run_dir: Path, status: str) -> None:
    store = Store(run_dir / "pipeobs.db")
    store.update_run(status=status, ended_at=T0 + 10)
    store.close()


def add_line(run_dir: Path, text: str) -> None:
    store = Store(run_dir / "pipeobs.db", STEP_ID)
    queue(store, "log_lines", _line(9.8, W2, "stdout", text, 3, 1))
    store.close()


class TestResolveRun:
    def test_a_run_directory_resolves_to_itself(self, run_dir: Path) -> None:
        """A directory holding pipeobs.db is the run."""
        assert resolve_run(str(run_dir)) == run_dir

    def test_a_step_id_is_found_under_the_runs_dir(self, run_dir: Path, tmp_path: Path) -> None:
        """A step_id is looked up as <runs_dir>/*/<step_id>/pipeobs.db."""
        assert resolve_run(STEP_ID, str(tmp_path / "runs")) == run_dir

    def test_an_unknown_run_names_both_forms(self, run_dir: Path, tmp_path: Path) -> None:
        """Neither a run directory nor a known step_id: a one-line RunDirError naming both forms."""
        with pytest.raises(RunDirError) as caught:
            resolve_run("nope_123", str(tmp_path / "runs"))

        message = str(caught.value)
        assert "run directory" in message and "step_id" in message and "\n" not in message
        assert caught.value.exit_code == 2

    def test_a_store_of_an_older_schema_is_a_clear_error(self, tmp_path: Path) -> None:
        """A store without the tables the explorer reads fails with RunDirError, not a traceback."""
        import sqlite3

        sqlite3.connect(tmp_path / "pipeobs.db").close()

        with pytest.raises(RunDirError, match="cannot read the store .*no such table"), open_run(tmp_path):
            pass

    def test_list_runs_finds_runs_below_a_folder_and_the_folder_itself(self, run_dir: Path, tmp_path: Path) -> None:
        """list_runs finds <root>/*/*/pipeobs.db and a root that is itself a run."""
        below = list_runs(tmp_path / "runs")
        itself = list_runs(run_dir)

        assert [r["step_id"] for r in below] == [STEP_ID]
        assert below[0]["run_dir"] == str(run_dir) and below[0]["status"] == "Running"
        assert [r["run_dir"] for r in itself] == [str(run_dir)]


class TestRunQueries:
    def test_summary_counts_mini_batches_and_items_of_a_live_run(self, conn: Any) -> None:
        """A live run's summary counts the ledger and measures the duration up to now."""
        summary = queries.run_summary(conn, now=T0 + 12)

        assert summary["status"] == "Running" and summary["live"] is True
        assert summary["step"] == "step-a" and summary["step_id"] == STEP_ID
        assert summary["mini_batches"] == {"total": 4, "done": 2, "failed": 1, "pending": 1}
        assert summary["items"] == {"total": 8, "succeeded": 4, "failed": 2}
        assert summary["duration"] == pytest.approx(12.0)

    def test_slowest_lists_successful_attempts_longest_first(self, conn: Any) -> None:
        """Only RUN_DONE attempts, by elapsed time, up to the limit."""
        slowest = queries.slowest_mini_batches(conn, limit=1)

        assert [(a["mini_batch_id"], a["attempt"]) for a in slowest] == [(0, 1)]
        assert [a["mini_batch_id"] for a in queries.slowest_mini_batches(conn)] == [0, 1]

    def test_failures_give_the_first_error_with_its_traceback(self, conn: Any) -> None:
        """Failed attempts in time order; the first error keeps type, message, location and traceback."""
        failures = queries.failures(conn)

        assert failures["count"] == 3 and failures["failed_mini_batches"] == [2]
        assert [(a["mini_batch_id"], a["attempt"]) for a in failures["attempts"]] == [(1, 1), (2, 1), (2, 2)]
        first = failures["first_error"]
        assert first["status"] == "RUN_TIMEOUT" and "did not finish" in first["error_message"]
        assert first["traceback"].startswith("Traceback") and all("traceback" not in a for a in failures["attempts"])
        assert (failures["attempts"][1]["error_type"], failures["attempts"][1]["error_location"]) == ("ValueError", "score.py:12 in run")

    def test_retries_and_timeouts_are_counted(self, conn: Any) -> None:
        """Attempts after the first are retries; RUN_TIMEOUT and PROCESS_CRASHED are counted apart."""
        counts = queries.retries_and_timeouts(conn)

        assert counts["retries"] == 2 and counts["retried_mini_batches"] == 2
        assert counts["timeouts"] == 1 and counts["crashes"] == 0
        assert counts["attempts_by_status"] == {"RUN_DONE": 2, "RUN_EXCEPTION": 2, "RUN_TIMEOUT": 1}

    def test_worker_stats_join_attempts_and_exits(self, conn: Any) -> None:
        """Per worker: attempts, items, elapsed totals and means, exit code and reason."""
        stats = {w["worker"]: w for w in queries.worker_stats(conn)}

        assert list(stats) == [W0, W1, W2]
        assert stats[W0]["attempts"] == 3 and stats[W0]["failed_attempts"] == 1 and stats[W0]["items_succeeded"] == 4
        assert stats[W0]["total_elapsed"] == pytest.approx(1.75)
        assert stats[W0]["mean_elapsed"] == pytest.approx(1.75 / 3)
        assert stats[W1]["returncode"] == -9 and "did not finish" in stats[W1]["reason"]

    def test_user_metrics_summarise_only_run_log_values(self, conn: Any) -> None:
        """Run.log metrics and tags get count, last, min, max, mean; built-in series are left out."""
        metrics = {m["name"]: m for m in queries.user_metrics(conn)}

        assert set(metrics) == {"loss", "model", "scores"}
        assert metrics["loss"]["count"] == 2 and metrics["loss"]["last"] == 0.25
        assert (metrics["loss"]["min"], metrics["loss"]["max"], metrics["loss"]["mean"]) == (0.25, 0.5, 0.375)
        assert metrics["model"]["last"] == "v1" and metrics["model"]["mean"] is None

    def test_list_metrics_summarise_their_numbers(self, conn: Any) -> None:
        """A log_list value counts once; its numeric elements give min, max and mean."""
        scores = next(m for m in queries.user_metrics(conn) if m["name"] == "scores")

        assert scores["count"] == 1 and scores["last"] == [0.25, 1, "n/a", 3]
        assert (scores["min"], scores["max"]) == (0.25, 3) and scores["mean"] == pytest.approx(4.25 / 3)

    def test_metric_points_carry_labels_worker_and_mini_batch(self, conn: Any) -> None:
        """One metric's points, in time order, with parsed labels."""
        points = queries.metric_points(conn, "pipeobs_process_rss_bytes")
        names = {m["name"] for m in queries.metric_summaries(conn)}

        assert [p["labels"] for p in points] == [{"worker": W0}, {"worker": W1}]
        assert points[0]["value"] == 100 * 2**20 and points[0]["worker"] == W0
        assert queries.metric_points(conn, "loss")[1]["mini_batch_id"] == 1
        assert "pipeobs_queue_depth" in names and "loss" in names


def add_rows(run_dir: Path, table: str, *rows: dict[str, Any]) -> None:
    store = Store(run_dir / "pipeobs.db", STEP_ID)
    for row in rows:
        queue(store, table, row)
    store.close()


def build_failing_store(root: Path, init_error: dict[str, Any] | None = None) -> Path:
    """A finished run whose 6 failed attempts (3 mini-batches, 2 tries each) raised 2 error types;
    or, given an ``init_error``, one that failed in init() before any attempt."""
    run_dir = root / "runs" / "step-f" / STEP_ID
    run_dir.mkdir(parents=True)
    store = Store(run_dir / "pipeobs.db", STEP_ID)
    summary = json.dumps({"first_error": init_error}) if init_error else None
    store.insert_run({"step_id": STEP_ID, "step_name": "step-f", "status": "Failed", "started_at": T0,
                      "ended_at": T0 + 10, "summary": summary})
    for mb in range(3):
        store.add_mini_batch(mb, json.dumps({"id": mb, "item_count": 1}))
        store.finish_mini_batch(mb, status="failed", attempts=2, total=1, succeeded=0, worker=W0, output_end=None)
    tries = [] if init_error else [(0, 1, W0), (1, 1, W1), (2, 1, W0), (0, 2, W1), (1, 2, W0), (2, 2, W1)]
    for start, (mb, attempt, worker) in enumerate(tries):
        error = ("KeyError", "'label'", "score.py:9 in run") if mb == 2 else \
            ("ValueError", f"bad pixel in f{mb}.png", "score.py:7 in run")
        queue(store, "attempts", _attempt(mb, attempt, worker, 100, 1.0 + start, 0.5, "RUN_EXCEPTION", 1, error))
    store.flush()
    store.close()
    return run_dir


class TestFailuresByError:
    def test_failed_attempts_are_counted_per_error_type_with_the_first_as_example(self, tmp_path: Path) -> None:
        """Most frequent error first: attempts, mini-batches, and its first attempt as the example."""
        with open_run(build_failing_store(tmp_path)) as conn:
            groups = queries.failures(conn)["by_error"]

        assert [(g["error_type"], g["count"], g["mini_batches"]) for g in groups] == [("ValueError", 4, 2), ("KeyError", 2, 1)]
        assert [(g["mini_batch_id"], g["attempt"], g["worker"], g["error_message"]) for g in groups] == [
            (0, 1, W0, "bad pixel in f0.png"), (2, 1, W0, "'label'")]

    def test_show_prints_the_first_error_once_and_one_row_per_error_type(self, tmp_path: Path, capsys: Any) -> None:
        """The first error's message once (its traceback), each other type once, no row per attempt."""
        run_dir = build_failing_store(tmp_path)

        assert explore("show", str(run_dir)) == 0

        out = capsys.readouterr().out
        assert out.count("bad pixel in f0.png") == 1 and "bad pixel in f1.png" not in out
        assert out.count("'label'") == 1
        assert "first error in mini-batch 0, attempt 1, on 0/process000:" in out
        assert re.search(r"ValueError +4 +2 +the first error, above", out)
        assert re.search(r"KeyError +2 +1 +'label' \(in mini-batch 2, attempt 1, on 0/process000\)", out)

    def test_a_first_error_without_a_python_traceback_shows_its_status_and_reason_once(self, tmp_path: Path,
                                                                                      capsys: Any) -> None:
        """A timeout (its reason stands in for a traceback) prints as status: reason (where), once."""
        run_dir = build_failing_store(tmp_path)
        reason = "mini batch 3 did not finish in 1 seconds."
        timeout = _attempt(3, 1, W1, 101, 0.5, 1.0, "RUN_TIMEOUT", 1, ("RUN_TIMEOUT", reason, ""))
        add_rows(run_dir, "attempts", {**timeout, "traceback": reason})

        explore("show", str(run_dir))

        out = capsys.readouterr().out
        assert out.count(reason) == 1
        assert f"first error: RUN_TIMEOUT: {reason} (in mini-batch 3, attempt 1, on 0/process001)" in out

    def test_an_init_error_says_where_it_happened(self, tmp_path: Path, capsys: Any) -> None:
        """A first error outside run() names its phase and worker, not an empty mini-batch."""
        first = {"type": "RuntimeError", "message": "no model", "location": "score.py:2", "mini_batch_id": None,
                 "worker": W1, "phase": "init", "traceback": "Traceback ...\nRuntimeError: no model\n"}
        run_dir = build_failing_store(tmp_path, init_error=first)

        explore("show", str(run_dir))

        out = capsys.readouterr().out
        assert "first error in init() on 0/process001:" in out and "None" not in out




def buckets(at: float, name: str, counts: dict[str, int], **labels: Any) -> list[dict[str, Any]]:
    """A histogram's cumulative bucket, count and sum series at one time, as Prometheus stores them."""
    rows = [_metric(at, None, f"{name}_bucket", "histogram", n, labels={**labels, "le": le}) for le, n in counts.items()]
    return [*rows, _metric(at, None, f"{name}_count", "histogram", max(counts.values()), labels=labels),
            _metric(at, None, f"{name}_sum", "histogram", 99.0, labels=labels)]


LATENCY = {"0.1": 2, "0.5": 6, "1.0": 10, "+Inf": 10}


class TestHistograms:
    @pytest.fixture
    def histograms(self, run_dir: Path) -> Path:
        """Durations of 20 attempts (0.1 s to 2.0 s) as observations and buckets; a latency known by buckets only."""
        durations = [_metric(float(i), W0, "pipeobs_mini_batch_duration_seconds", "observation", i / 10,
                             labels={"status": "RUN_DONE"}, mb=i) for i in range(20, 0, -1)]
        add_rows(run_dir, "metrics", *durations, *buckets(9.0, "pipeobs_mini_batch_duration_seconds", {"5": 19, "+Inf": 20}),
                    *buckets(1.0, "req_latency_seconds", {"0.1": 1, "0.5": 2, "1.0": 3, "+Inf": 3}),
                    *buckets(2.0, "req_latency_seconds", LATENCY))
        return run_dir

    def test_observed_values_give_exact_nearest_rank_quantiles(self, histograms: Path) -> None:
        """With every observed value stored, p50 and p95 are observed values and max is the largest."""
        with open_run(histograms) as conn:
            found = {h["name"]: h for h in queries.histogram_summaries(conn)}

        assert found["pipeobs_mini_batch_duration_seconds"] == {
            "name": "pipeobs_mini_batch_duration_seconds", "source": "observations", "count": 20,
            "p50": 1.0, "p95": 1.9, "max": 2.0}

    def test_buckets_alone_give_prometheus_estimates_from_the_latest_counts(self, histograms: Path) -> None:
        """Quantiles interpolate within a bucket of the latest point; max is the top non-empty bucket's bound."""
        with open_run(histograms) as conn:
            latency = {h["name"]: h for h in queries.histogram_summaries(conn)}["req_latency_seconds"]

        assert (latency["source"], latency["count"], latency["max"]) == ("buckets", 10, 1.0)
        assert latency["p50"] == pytest.approx(0.4) and latency["p95"] == pytest.approx(0.9375)

    def test_bucket_series_are_summed_and_an_unbounded_max_is_unknown(self, run_dir: Path) -> None:
        """Series of one histogram with other labels add up; a count in +Inf leaves max unknown."""
        add_rows(run_dir, "metrics", *buckets(2.0, "req_latency_seconds", LATENCY, worker=W0),
                    *buckets(2.0, "req_latency_seconds", {"0.1": 0, "0.5": 0, "1.0": 0, "+Inf": 2}, worker=W1))

        with open_run(run_dir) as conn:
            (latency,) = queries.histogram_summaries(conn)

        assert (latency["count"], latency["max"]) == (12, None)
        assert latency["p95"] == 1.0  # as histogram_quantile: the highest finite bound

    def test_show_and_metrics_print_count_p50_p95_max_never_a_mean_of_buckets(self, histograms: Path,
                                                                             capsys: Any) -> None:
        """show and metrics print one row per histogram; estimates from buckets are marked as such."""
        explore("show", str(histograms))
        shown = capsys.readouterr().out
        explore("metrics", str(histograms))
        metrics = capsys.readouterr().out

        for out in (shown, metrics):
            assert re.search(r"pipeobs_mini_batch_duration_seconds +20 +1\.00 s +1\.90 s +2\.00 s", out)
            assert re.search(r"req_latency_seconds +10 +~400\.0 ms +~937\.5 ms +<= 1\.00 s", out)
        assert "_bucket" not in metrics and "_count" not in metrics


class TestLogQuery:
    def test_lines_come_in_stored_order_with_stream_levels(self, conn: Any) -> None:
        """All lines in id order; lines without a level show STDOUT or STDERR."""
        lines = queries.log_lines(conn)

        assert len(lines) == 10
        assert [line["id"] for line in lines] == sorted(line["id"] for line in lines)
        assert {line["level"] for line in lines if line["stream"] != "log"} == {"STDOUT", "STDERR"}

    def test_filters_by_mini_batch_and_worker(self, conn: Any) -> None:
        """--mini-batch keeps one mini-batch; --worker takes the full label or the process name."""
        by_mb = queries.log_lines(conn, mini_batch=1)
        by_worker = queries.log_lines(conn, worker="process002")

        assert [line["text"] for line in by_mb] == ["scoring mb 1 slowly", "scoring mb 1"]
        assert {line["worker"] for line in by_worker} == {W2} and len(by_worker) == 3
        assert queries.log_lines(conn, worker=W2) == by_worker

    def test_level_is_a_threshold_with_stdout_info_and_stderr_warning(self, conn: Any) -> None:
        """--level warning keeps stderr and warnings up; stdout counts as info, below it."""
        warning = queries.log_lines(conn, level="warning")
        debug = queries.log_lines(conn, level="DEBUG")

        assert [line["text"] for line in warning] == ["warning from C", "bad pixel at 3,4", "bad pixel at 3,4"]
        assert len(debug) == 10 and len(queries.log_lines(conn, level="info")) == 9

    def test_grep_matches_a_regular_expression(self, conn: Any) -> None:
        """--grep keeps the lines the regex matches anywhere in the text."""
        lines = queries.log_lines(conn, grep=r"^scoring mb \d$")

        assert [line["text"] for line in lines] == ["scoring mb 0", "scoring mb 1"]

    @pytest.mark.parametrize(("option", "value"), [("grep", "(unclosed"), ("level", "loud")])
    def test_a_bad_regex_or_level_is_a_config_error(self, conn: Any, option: str, value: str) -> None:
        """An invalid regular expression or level name fails with a ConfigError naming it."""
        with pytest.raises(ConfigError, match="unclosed|loud"):
            queries.log_lines(conn, grep=value) if option == "grep" else queries.log_lines(conn, level=value)

    def test_after_id_returns_only_newer_lines(self, conn: Any) -> None:
        """after_id / until_id bound the ids, for following."""
        lines = queries.log_lines(conn, after_id=8)
        window = queries.log_lines(conn, after_id=2, until_id=4)

        assert [line["id"] for line in lines] == [9, 10]
        assert [line["id"] for line in window] == [3, 4]

    def test_a_line_renders_like_the_driver_log(self, conn: Any) -> None:
        """UTC time, worker, mb=N a=A (or the phase), level, text."""
        first, second = queries.log_lines(conn)[:2]

        assert format_log_line(first) == "2027-01-15T08:00:00.200Z 0/process000 init STDOUT init called"
        assert format_log_line(second) == "2027-01-15T08:00:01.200Z 0/process000 mb=0 a=1 INFO loading [2 files]"


class TestFollow:
    @staticmethod
    def never_sleep(_seconds: float) -> None:
        raise AssertionError("follow waited on a finished run")

    def test_follow_on_a_finished_run_prints_everything_once_and_stops(self, tmp_path: Path) -> None:
        """A run that is no longer Running: one pass, every line, no waiting."""
        run_dir = build_store(tmp_path, status="Completed")
        seen: list[str] = []

        with open_run(run_dir) as conn:
            count = follow_logs(conn, lambda line: seen.append(line["text"]), {}, sleep=self.never_sleep)

        assert count == 10 and len(seen) == 10

    def test_follow_prints_new_lines_until_the_run_ends(self, run_dir: Path) -> None:
        """Lines written while following are printed; the run ending stops it after the rest."""
        seen: list[str] = []
        polls: list[float] = []

        def sleep(seconds: float) -> None:  # the driver writes while the follower waits
            polls.append(seconds)
            add_line(run_dir, "late line" if len(polls) == 1 else "last line")
            if len(polls) == 2:
                set_status(run_dir, "Completed")

        with open_run(run_dir) as conn:
            count = follow_logs(conn, lambda line: seen.append(line["text"]), {"worker": W2}, sleep=sleep)

        assert seen[-2:] == ["late line", "last line"] and count == 5 and polls == [0.5, 0.5]

    def test_follow_stops_at_its_timeout_on_a_run_that_never_ends(self, run_dir: Path) -> None:
        """A run stuck in Running (its driver killed) stops following at the timeout."""
        now = [0.0]

        def sleep(seconds: float) -> None:
            now[0] += seconds

        with open_run(run_dir) as conn:
            count = follow_logs(conn, lambda _line: None, {}, poll=0.5, timeout=2.0, sleep=sleep, clock=lambda: now[0])

        assert count == 10 and now[0] == 2.0


class TestSpanTree:
    @staticmethod
    def find(nodes: list[dict[str, Any]], span_id: str) -> dict[str, Any]:
        for node in nodes:
            if node["type"] == "span":
                if node["span_id"] == span_id:
                    return node
                try:
                    return TestSpanTree.find(node["children"], span_id)
                except KeyError:
                    pass
        raise KeyError(span_id)

    def test_spans_nest_by_parent_in_start_order(self, conn: Any) -> None:
        """The job span is the root; init and mini-batch spans are its children; user spans nest deeper."""
        tree = spans.span_tree(conn)

        assert [n["span_id"] for n in tree] == ["j"]
        children = [n["span_id"] for n in tree[0]["children"] if n["type"] == "span"]
        assert children == ["i0", "m0", "m1a", "m1b", "m2a", "m2b", "m3"]
        assert [n["span_id"] for n in self.find(tree, "m0")["children"] if n["type"] == "span"] == ["ld"]

    def test_logs_interleave_under_their_span_in_time_order(self, conn: Any) -> None:
        """A line goes under the span it carries, else its mini-batch span; children in time order."""
        m0 = self.find(spans.span_tree(conn), "m0")

        kinds = [(n["type"], n.get("span_id") if n["type"] == "span" else n["text"]) for n in m0["children"]]
        assert kinds == [("log", "scoring mb 0"), ("span", "ld"), ("log", "warning from C")]
        assert [n["text"] for n in self.find([m0], "ld")["children"]] == ["loading [2 files]"]

    def test_lines_without_span_ids_fall_back_to_mini_batch_init_or_job(self, conn: Any) -> None:
        """mini_batch_id + attempt find the mini-batch span; an init line finds its worker's init span."""
        tree = spans.span_tree(conn)

        assert [n["text"] for n in self.find(tree, "m1a")["children"] if n["type"] == "log"] == ["scoring mb 1 slowly"]
        assert [n["text"] for n in self.find(tree, "i0")["children"]] == ["init called"]

    def test_span_events_are_shown_in_the_tree(self, conn: Any) -> None:
        """An exception event of a killed span is one of its children."""
        m1a = self.find(spans.span_tree(conn), "m1a")

        assert [n["name"] for n in m1a["children"] if n["type"] == "event"] == ["exception"]

    def test_in_progress_spans_last_until_the_last_known_time(self, conn: Any) -> None:
        """A span without an end is in progress, lasting until the store's latest time."""
        tree = spans.span_tree(conn)
        m3, job = self.find(tree, "m3"), self.find(tree, "j")

        assert m3["in_progress"] is True and m3["end"] is None
        assert m3["duration"] == pytest.approx(9.5 - 8.0)
        assert job["in_progress"] is True and job["duration"] == pytest.approx(9.5)

    def test_one_mini_batch_gives_its_attempts_and_their_descendants(self, conn: Any) -> None:
        """--mini-batch keeps every attempt's span of that mini-batch, with user spans and lines."""
        assert [n["span_id"] for n in spans.span_tree(conn, mini_batch=1)] == ["m1a", "m1b"]
        assert self.find(spans.span_tree(conn, mini_batch=0), "ld")["children"][0]["text"] == "loading [2 files]"

    def test_an_unknown_mini_batch_is_a_config_error(self, conn: Any) -> None:
        """Asking for a mini-batch the run does not have says how many it has."""
        with pytest.raises(ConfigError, match="no mini-batch 42"):
            spans.span_tree(conn, mini_batch=42)

    def test_a_live_job_span_not_yet_stored_has_a_stand_in(self, tmp_path: Path) -> None:
        """The job span is stored when the job ends; until then a synthetic one holds its children."""
        with open_run(build_store(tmp_path, job_span=False)) as conn:
            tree = spans.span_tree(conn)

        assert [(n["span_id"], n["synthetic"], n["in_progress"]) for n in tree] == [("j", True, True)]
        assert [n["span_id"] for n in tree[0]["children"] if n["type"] == "span"][:2] == ["i0", "m0"]

    def test_a_store_without_spans_gets_stand_ins_from_the_ledger(self, tmp_path: Path) -> None:
        """No spans: the job and each attempt become synthetic spans holding their lines."""
        with open_run(build_store(tmp_path, status="Completed", with_spans=False)) as conn:
            tree = spans.span_tree(conn)

        assert [n["name"] for n in tree] == ["job"] and tree[0]["synthetic"] is True
        attempts = [n for n in tree[0]["children"] if n["type"] == "span"]
        assert [(n["mini_batch_id"], n["attempt"], n["status"]) for n in attempts][:3] == [(0, 1, "OK"), (1, 1, "ERROR"), (1, 2, "OK")]
        assert [n["text"] for n in attempts[0]["children"]] == ["scoring mb 0", "loading [2 files]", "warning from C"]


class TestChromeTrace:
    @pytest.fixture
    def trace(self, conn: Any) -> dict[str, Any]:
        return json.loads(json.dumps(chrome_trace(conn), allow_nan=False))

    def test_trace_events_is_the_first_key(self, conn: Any) -> None:
        """Perfetto skips what follows an unknown key: traceEvents first, then displayTimeUnit, otherData."""
        assert list(chrome_trace(conn)) == ["traceEvents", "displayTimeUnit", "otherData"]

    def test_the_json_is_strict_and_round_trips(self, conn: Any) -> None:
        """No NaN or infinity (a NaN attribute becomes a string); loads(dumps(trace)) is the trace."""
        trace = chrome_trace(conn)
        text = json.dumps(trace, allow_nan=False)

        assert json.loads(text) == trace
        assert trace["displayTimeUnit"] == "ms" and trace["otherData"]["step_id"] == STEP_ID

    def test_every_event_has_phase_process_thread_and_time(self, trace: dict[str, Any]) -> None:
        """ph, pid, tid (integers) and ts on every event; X events have a duration >= 0."""
        for event in trace["traceEvents"]:
            assert {"ph", "pid", "tid", "ts"} <= set(event)
            assert isinstance(event["pid"], int) and isinstance(event["tid"], int)
        slices = [e for e in trace["traceEvents"] if e["ph"] == "X"]
        assert len(slices) == 9 and all(e["dur"] >= 0 for e in slices)

    def test_each_worker_process_has_its_own_named_lane(self, trace: dict[str, Any]) -> None:
        """The driver is pid 1; worker k is pid k + 2 with a process_name; spans land on their worker."""
        names = {e["pid"]: e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "process_name"}
        slices = {e["args"].get("span_id"): e for e in trace["traceEvents"] if e["ph"] == "X"}

        assert names == {1: f"driver (job {STEP_ID})", 2: f"worker {W0} (os pid 100)",
                         3: f"worker {W1} (os pid 101)", 4: f"worker {W2} (os pid 102)"}
        assert slices["j"]["pid"] == 1 and slices["m0"]["pid"] == 2 and slices["m1a"]["pid"] == 3
        assert slices["m0"]["name"] == "mini_batch 0" and slices["m1b"]["name"] == "mini_batch 1 a=2"
        assert slices["m0"]["args"]["rows"] == 2 and slices["m0"]["args"]["mini_batch_id"] == 0

    def test_slices_are_in_microseconds_and_open_spans_reach_the_last_time(self, trace: dict[str, Any]) -> None:
        """ts/dur are microseconds from the run's start; a span still open ends at the last known time."""
        slices = {e["args"].get("span_id"): e for e in trace["traceEvents"] if e["ph"] == "X"}

        assert slices["m0"]["ts"] == pytest.approx(1_000_000) and slices["m0"]["dur"] == pytest.approx(1_000_000)
        assert slices["m3"]["dur"] == pytest.approx(1_500_000) and slices["m3"]["args"]["in_progress"] is True

    def test_retries_and_errors_are_instants(self, trace: dict[str, Any]) -> None:
        """A retry at each later attempt's start; an error per ERROR span, not repeated from its attempt."""
        instants = [e for e in trace["traceEvents"] if e["ph"] == "i"]
        retries = [e for e in instants if e["cat"] == "retry"]
        errors = [e for e in instants if e["cat"] == "error"]

        assert [(e["args"]["mini_batch_id"], e["args"]["attempt"], e["pid"]) for e in retries] == [(1, 2, 2), (2, 2, 4)]
        assert "RUN_TIMEOUT" in retries[0]["args"]["previous_error"]
        assert len(errors) == 3 and all(e["s"] == "t" for e in instants)

    def test_memory_and_queue_depth_are_counters(self, trace: dict[str, Any]) -> None:
        """RSS is a counter on its worker's process (MiB); queue depth one on the driver."""
        counters = [e for e in trace["traceEvents"] if e["ph"] == "C"]

        assert [(e["name"], e["pid"], e["args"]) for e in counters if e["name"] == "memory"] == [
            ("memory", 2, {"rss_mb": 100.0}), ("memory", 3, {"rss_mb": 200.0})]
        assert [e["args"]["depth"] for e in counters if e["name"] == "queue"] == [3.0, 0.0]
        assert all(e["pid"] == 1 for e in counters if e["name"] == "queue")

    def test_a_live_job_gets_a_job_slice_on_the_driver(self, tmp_path: Path) -> None:
        """While the job span is not stored yet, the driver lane still shows the job, in progress."""
        with open_run(build_store(tmp_path, job_span=False)) as conn:
            trace = chrome_trace(conn)

        jobs = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["name"] == "job"]
        assert [(e["pid"], e["dur"], e["args"]["in_progress"]) for e in jobs] == [(1, pytest.approx(9.5e6), True)]
        assert trace["otherData"]["trace_id"] == TRACE

    def test_a_store_without_spans_exports_the_ledger(self, tmp_path: Path) -> None:
        """No spans: a job slice on the driver and one slice per attempt on its worker."""
        with open_run(build_store(tmp_path, status="Completed", with_spans=False)) as conn:
            trace = chrome_trace(conn)

        slices = [(e["name"], e["pid"]) for e in trace["traceEvents"] if e["ph"] == "X"]
        assert slices[0] == ("job", 1) and ("mini_batch 1 a=2", 2) in slices and len(slices) == 6
        assert len([e for e in trace["traceEvents"] if e["ph"] == "i" and e["cat"] == "error"]) == 3


def explore(*argv: str) -> int | None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_subcommands(sub)
    return dispatch(parser.parse_args(list(argv)))


class TestCommands:
    def test_json_output_is_the_query_result(self, run_dir: Path, tmp_path: Path, capsys: Any) -> None:
        """--json prints exactly one JSON document per command."""
        runs_dir = str(tmp_path / "runs")
        outputs = {}
        for command in ("show", "logs", "trace", "metrics"):
            assert explore(command, STEP_ID, "--runs-dir", runs_dir, "--json") == 0
            outputs[command] = json.loads(capsys.readouterr().out)

        assert outputs["show"]["summary"]["mini_batches"]["failed"] == 1
        assert len(outputs["logs"]) == 10 and outputs["trace"][0]["name"] == "job"
        assert {m["name"] for m in outputs["metrics"]} >= {"loss", "pipeobs_queue_depth"}

    def test_text_views_render_tables_and_trees(self, run_dir: Path, capsys: Any) -> None:
        """The rich views name the step, the first error, and show user brackets literally."""
        explore("show", str(run_dir))
        shown = capsys.readouterr().out
        explore("trace", str(run_dir), "--mini-batch", "0")
        tree = capsys.readouterr().out

        assert "step-a" in shown and "RUN_TIMEOUT" in shown and "workers" in shown
        assert "load" in tree and "loading [2 files]" in tree

    def test_logs_prints_driver_log_lines(self, run_dir: Path, capsys: Any) -> None:
        """logs prints one driver-log line per record, filtered."""
        explore("logs", str(run_dir), "--level", "error", "--worker", "process002")

        assert capsys.readouterr().out.splitlines() == ["2027-01-15T08:00:06.125Z 0/process002 mb=2 a=2 ERROR bad pixel at 3,4"]

    def test_follow_with_json_prints_one_object_per_line(self, tmp_path: Path, capsys: Any) -> None:
        """logs --follow --json on a finished run: JSON lines, then it exits."""
        run_dir = build_store(tmp_path, status="Failed")

        assert explore("logs", str(run_dir), "--follow", "--json", "--mini-batch", "2") == 0
        assert [json.loads(line)["worker"] for line in capsys.readouterr().out.splitlines()] == [W0, W2]

    def test_a_bad_regex_is_a_config_error(self, run_dir: Path) -> None:
        """logs --grep with an invalid regex raises ConfigError (the CLI prints error: ... and exits 2)."""
        with pytest.raises(ConfigError, match="invalid regular expression"):
            explore("logs", str(run_dir), "--grep", "[a-")

    def test_an_unknown_metric_suggests_a_name(self, run_dir: Path) -> None:
        """metrics NAME for a name the run lacks says the closest one."""
        with pytest.raises(ConfigError, match="did you mean loss"):
            explore("metrics", str(run_dir), "los")

    def test_export_writes_trace_json_in_the_run_dir(self, run_dir: Path, capsys: Any) -> None:
        """export --format chrome writes <run dir>/trace.json by default and prints the path."""
        assert explore("export", str(run_dir), "--format", "chrome") == 0

        path = Path(capsys.readouterr().out.strip())
        assert path == run_dir / "trace.json"
        assert next(iter(json.loads(path.read_text()))) == "traceEvents"

    def test_runs_lists_every_run_and_an_unknown_run_fails(self, run_dir: Path, tmp_path: Path, capsys: Any) -> None:
        """runs DIR --json lists runs; a RUN that resolves to nothing raises RunDirError."""
        explore("runs", str(tmp_path / "runs"), "--json")

        assert [r["step_id"] for r in json.loads(capsys.readouterr().out)] == [STEP_ID]
        with pytest.raises(RunDirError):
            explore("show", "missing", "--runs-dir", str(tmp_path / "runs"))

    def test_importing_the_commands_loads_no_rich_or_pandas(self) -> None:
        """The CLI imports the commands module on every call: rich and pandas load only when a command runs."""
        code = "import sys, pipeobs.explorer.commands; print(' '.join(sorted(sys.modules)))"

        loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())

        assert not {"rich", "pandas", "sqlite3"} & loaded

    def test_other_commands_are_not_dispatched(self) -> None:
        """dispatch returns None for a command that is not the explorer's."""
        assert dispatch(argparse.Namespace(command="run")) is None


LINE_MARK = "@@"  # ends the text of every line of a large run, to count the lines written


def build_large_store(root: Path, mini_batches: int, lines: int) -> Path:
    """A finished run of many mini-batches, each with its span and ``lines`` lines ending in LINE_MARK."""
    run_dir = root / "runs" / "step-a" / STEP_ID
    run_dir.mkdir(parents=True)
    store = Store(run_dir / "pipeobs.db", STEP_ID)
    store.insert_run({"step_id": STEP_ID, "step_name": "step-a", "status": "Completed", "started_at": T0,
                      "ended_at": T0 + mini_batches + 1})
    queue(store, "spans", _span("j", None, "job", 0.0, mini_batches + 1.0, "driver"))
    for mb in range(mini_batches):
        store.add_mini_batch(mb, json.dumps({"id": mb, "item_count": 1}))
        queue(store, "spans", _span(f"m{mb}", "j", "mini_batch", mb + 0.1, mb + 0.9, W0, mb, 1))
        for k in range(lines):
            queue(store, "log_lines", _line(mb + 0.2 + k / 100, W0, "stdout", f"mb {mb} line {k} {LINE_MARK}", mb, 1,
                                            span_id=f"m{mb}"))
    store.flush()
    store.close()
    return run_dir


class CountingConnection:
    """A read-only connection that counts the log-line rows (those with text and stream) it hands out."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.lines_read = 0

    def execute(self, sql: str, parameters: Any = ()) -> Any:
        return CountingCursor(self.conn.execute(sql, parameters), self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


class CountingCursor:
    def __init__(self, cursor: Any, owner: CountingConnection) -> None:
        self.cursor = cursor
        self.owner = owner
        self.of_lines = {"text", "stream"} <= {column[0] for column in cursor.description or ()}

    def __iter__(self) -> CountingCursor:
        return self

    def __next__(self) -> Any:
        return self.counted([next(self.cursor)])[0]

    def fetchone(self) -> Any:
        row = self.cursor.fetchone()
        return row if row is None else self.counted([row])[0]

    def fetchall(self) -> list[Any]:
        return self.counted(self.cursor.fetchall())

    def counted(self, rows: list[Any]) -> list[Any]:
        if self.of_lines:
            self.owner.lines_read += len(rows)
        return rows


class RecordingStdout(io.StringIO):
    """Standard output recording, at each write, (lines read so far, lines written before it)."""

    def __init__(self, lines_read: Any) -> None:
        super().__init__()
        self.lines_read = lines_read
        self.lines_written = 0
        self.read_at_first_line: int | None = None
        self.writes: list[tuple[int, int]] = []

    def write(self, text: str) -> int:
        read = self.lines_read()
        self.writes.append((read, self.lines_written))
        if LINE_MARK in text and self.read_at_first_line is None:
            self.read_at_first_line = read
        self.lines_written += text.count(LINE_MARK)
        return super().write(text)


STREAMING_COMMANDS = [("logs",), ("logs", "--json"), ("trace",), ("trace", "--json")]


class TestStreaming:
    """logs and trace write a run's lines as they read them, so a run of any size prints at once and in bounded memory."""

    MINI_BATCHES, LINES = 300, 10
    TOTAL = MINI_BATCHES * LINES

    @pytest.fixture
    def large_run(self, tmp_path: Path) -> Path:
        return build_large_store(tmp_path, self.MINI_BATCHES, self.LINES)

    @staticmethod
    def watch(monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...], run_dir: Path) -> RecordingStdout:
        """Run an explorer command, counting the lines it reads from the store and writes to stdout."""
        connections: list[CountingConnection] = []

        def connect(path: Any) -> CountingConnection:
            connections.append(CountingConnection(connect_readonly(path)))
            return connections[-1]

        monkeypatch.setattr("pipeobs.explorer.runs.connect_readonly", connect)
        recording = RecordingStdout(lambda: sum(c.lines_read for c in connections))
        monkeypatch.setattr(sys, "stdout", recording)
        assert explore(command[0], str(run_dir), *command[1:]) == 0
        monkeypatch.undo()
        return recording

    @pytest.mark.parametrize("command", STREAMING_COMMANDS)
    def test_the_first_line_is_written_before_most_lines_are_read(self, large_run: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   command: tuple[str, ...]) -> None:
        """The first line of the run is written when a small part of its lines has been read, not all of them."""
        stdout = self.watch(monkeypatch, command, large_run)

        assert stdout.read_at_first_line is not None and stdout.read_at_first_line < self.TOTAL / 4

    @pytest.mark.parametrize("command", STREAMING_COMMANDS)
    def test_lines_read_are_written_before_many_more_are_read(self, large_run: Path, monkeypatch: pytest.MonkeyPatch,
                                                              command: tuple[str, ...]) -> None:
        """At every write, the lines read and not yet written are a small part of the run; in the end all are written."""
        stdout = self.watch(monkeypatch, command, large_run)

        assert max(read - written for read, written in stdout.writes) < self.TOTAL / 4
        assert stdout.lines_written == self.TOTAL
        if "--json" in command:
            assert json.loads(stdout.getvalue())


SCORE = """\
import logging
from azureml.core import Run

log = logging.getLogger("score")

def init():
    print("init called")

def run(mini_batch):
    print(f"scoring {len(mini_batch)} files")
    log.warning("batch of %d", len(mini_batch))
    Run.get_context().log("n", len(mini_batch))
    return [str(p) for p in mini_batch]
"""


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeobs.cli import main

    folder = tmp_path_factory.mktemp("real")
    (folder / "score.py").write_text(SCORE)
    (folder / "data").mkdir()
    for i in range(5):
        (folder / "data" / f"f{i}.txt").write_text(f"item {i}\n")
    code = main(["run", str(folder / "score.py"), "--input", str(folder / "data"), "--mini-batch-size", "2",
                 "--process-count-per-node", "2", "--output-action", "append_row", "--runs-dir", str(folder / "runs")])
    assert code == 0
    return folder / "runs"


class TestOnARealJob:
    def test_commands_read_a_real_run(self, real_run: Path, capsys: Any) -> None:
        """runs, show, logs, metrics and export agree with what the job did."""
        capsys.readouterr()
        assert explore("runs", str(real_run), "--json") == 0
        runs = json.loads(capsys.readouterr().out)
        step_id = runs[0]["step_id"]
        results = {}
        for key, *argv in (("show",), ("logs", "--grep", "^scoring"), ("logs-warn", "--level", "warning"),
                           ("metrics", "n"), ("trace",), ("export",)):
            assert explore(key.split("-")[0], step_id, *argv, "--runs-dir", str(real_run), "--json") == 0
            results[key] = json.loads(capsys.readouterr().out)

        summary = results["show"]["summary"]
        assert len(runs) == 1 and runs[0]["status"] == "Completed"
        assert summary["status"] == "Completed" and summary["items"] == {"total": 5, "succeeded": 5, "failed": 0}
        assert summary["mini_batches"] == {"total": 3, "done": 3, "failed": 0, "pending": 0}
        assert sorted(line["text"] for line in results["logs"]) == ["scoring 1 files", "scoring 2 files", "scoring 2 files"]
        assert {line["level"] for line in results["logs-warn"]} == {"WARNING"} and len(results["logs-warn"]) == 3
        assert sorted(p["value"] for p in results["metrics"]) == [1, 2, 2]
        assert results["show"]["metrics"][0]["name"] == "n" and results["show"]["failures"]["count"] == 0
        trace = json.loads(Path(results["export"]["path"]).read_text())
        assert list(trace) == ["traceEvents", "displayTimeUnit", "otherData"]
        assert sum(1 for e in trace["traceEvents"] if e["ph"] == "X" and e["name"].startswith("mini_batch")) == 3
        assert any(n["name"] == "job" for n in results["trace"])

    def test_show_summarises_the_attempts_durations(self, real_run: Path, capsys: Any) -> None:
        """The duration histogram of a real run counts its attempts, and its max is the slowest one."""
        run_dir = next(real_run.glob("*/*"))

        assert explore("show", str(run_dir), "--json") == 0

        shown = json.loads(capsys.readouterr().out)
        durations = {h["name"]: h for h in shown["histograms"]}["pipeobs_mini_batch_duration_seconds"]
        assert durations["count"] == 3 and durations["max"] == pytest.approx(shown["slowest"][0]["elapsed"])
