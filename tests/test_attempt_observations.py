"""The per-attempt duration and peak-RSS observations: held in the attempt rows, read as metric series."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from pipeobs.explorer import queries
from pipeobs.explorer.commands import add_subcommands, dispatch
from pipeobs.explorer.runs import open_run
from pipeobs.record.pipeline import Pipeline
from pipeobs.record.store import ADDED_ATTEMPT_COLUMNS, Store
from pipeobs.records import Metric
from pipeobs.telemetry.job import JobTelemetry
from pipeobs.telemetry.metrics import JobMetrics
from pipeobs.ui import data
from tests.conftest import write_files, write_script

DURATION, PEAK = "pipeobs_mini_batch_duration_seconds", "pipeobs_mini_batch_peak_rss_bytes"
T0 = 1_700_000_000.0  # the older store ran before the tests resume it
FLAKY = "def run(mb):\n    if mb[0].endswith('f002.txt'):\n        raise ValueError('x')\n    return mb\n"


def nearest_rank(values: list[float], q: float) -> float:
    return sorted(values)[math.ceil(q * len(values)) - 1]


def exact(name: str, values: list[float]) -> dict[str, Any]:
    """What ``histogram_summaries`` gives for a series whose every observed value is known."""
    return {"name": name, "source": "observations", "count": len(values), "p50": nearest_rank(values, 0.5),
            "p95": nearest_rank(values, 0.95), "max": max(values)}


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """A run of 6 mini-batches on 2 workers (one fails twice) with the jsonl exporter: its run directory and
    the observation records the exporter received."""
    from pipeobs.config import ParallelRunConfig
    from pipeobs.datasets import FileDataset
    from pipeobs.step import ParallelRunStep

    root = tmp_path_factory.mktemp("observed")
    target = root / "exported.jsonl"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PIPEOBS_EXPORT_JSONL", str(target))
        config = ParallelRunConfig(entry_script=str(write_script(root, FLAKY)), process_count_per_node=2,
                                   mini_batch_size="1", run_max_try=2, output_action="append_row")
        step = ParallelRunStep("observed", config, [FileDataset.from_files(str(write_files(root, 6)))])
        result = step.run(root / "runs", exporters=["jsonl"])
    records = [json.loads(line) for line in target.read_text().splitlines()]
    return Path(result.run_dir), [r for r in records if r["type"] == "metric" and r["kind"] == "observation"]


def _rows(run_dir: Path, sql: str) -> list[sqlite3.Row]:
    with open_run(run_dir) as conn:
        return conn.execute(sql).fetchall()


class TestARun:
    def test_the_store_holds_no_observation_rows(self, exported_run: tuple[Path, list[dict[str, Any]]]) -> None:
        """The metrics table has no per-attempt points: each attempt row holds its peak RSS, span and time."""
        run_dir, _ = exported_run

        stored = _rows(run_dir, f"SELECT count(*) FROM metrics WHERE kind = 'observation' OR name = '{DURATION}'")
        attempts = _rows(run_dir, "SELECT * FROM attempts")
        assert stored[0][0] == 0
        assert len(attempts) == 7
        assert all(a["peak_rss"] > 0 and a["trace_id"] and a["span_id"] and a["recorded_at"] for a in attempts)

    def test_exporters_receive_the_points_the_readers_derive(self, exported_run: tuple[Path, list[dict[str, Any]]]) -> None:
        """The exporter gets one record per attempt and series, equal to the points ``pipeobs metrics NAME`` lists."""
        run_dir, exported = exported_run
        fields = ("worker", "mini_batch_id", "attempt", "labels", "trace_id", "span_id")

        with open_run(run_dir) as conn:
            points = {name: [p for p in queries.metric_points(conn, name) if p["kind"] == "observation"]
                      for name in (DURATION, PEAK)}

        for name in (DURATION, PEAK):
            sent = sorted((*(json.dumps(r[f]) for f in fields), float(r["value"])) for r in exported if r["name"] == name)
            read = sorted((*(json.dumps(p[f]) for f in fields), p["value"]) for p in points[name])
            assert len(sent) == 7 and sent == read
            times = {(r["mini_batch_id"], r["attempt"]): r["time"] for r in exported if r["name"] == name}
            assert all(abs(p["time"] - times[p["mini_batch_id"], p["attempt"]]) < 1 for p in points[name])

    def test_histograms_are_exact_from_the_attempt_rows(self, exported_run: tuple[Path, list[dict[str, Any]]]) -> None:
        """count, p50, p95 and max of both series are the nearest ranks of what each attempt observed."""
        run_dir, exported = exported_run

        with open_run(run_dir) as conn:
            found = {h["name"]: h for h in queries.histogram_summaries(conn)}
            summaries = {s["name"]: s for s in queries.metric_summaries(conn)}
            gauges = conn.execute(f"SELECT count(*) FROM metrics WHERE name = '{PEAK}'").fetchone()[0]
        durations = [r["value"] for r in exported if r["name"] == DURATION]

        for name in (DURATION, PEAK):
            assert found[name] == exact(name, [r["value"] for r in exported if r["name"] == name])
        assert summaries[PEAK]["count"] == 7 + gauges and gauges >= 1
        duration = summaries[DURATION]
        assert (duration["kind"], duration["count"], duration["min"], duration["max"]) == (
            "observation", 7, min(durations), max(durations))
        assert duration["mean"] == pytest.approx(sum(durations) / 7)

    def test_the_web_ui_charts_the_peaks_by_worker_and_status(self, exported_run: tuple[Path, list[dict[str, Any]]]) -> None:
        """The peak-RSS chart holds the per-attempt series (worker and status) next to the gauge's."""
        run_dir, exported = exported_run

        with open_run(run_dir) as conn:
            keys = {s["key"] for s in data.series(conn, PEAK)["series"]}
            gauges = {r[0] for r in conn.execute(f"SELECT DISTINCT worker FROM metrics WHERE name = '{PEAK}'")}

        observed = {f"{r['worker']} status={r['labels']['status']}" for r in exported if r["name"] == PEAK}
        assert keys == observed | gauges and len(observed) >= 2 and gauges


    def test_readers_give_what_they_gave_when_the_points_were_metric_rows(
            self, exported_run: tuple[Path, list[dict[str, Any]]], tmp_path: Path, capsys: Any) -> None:
        """The same run with its observations moved back into ``metrics`` reads the same in the CLI and the web UI."""
        run_dir, _ = exported_run
        shutil.copytree(run_dir, tmp_path / "old")
        _as_older_store(tmp_path / "old" / "pipeobs.db")

        seen = [_readings(directory, capsys) for directory in (run_dir, tmp_path / "old")]

        assert seen[0] == seen[1]
        assert "pipeobs_mini_batch_duration_seconds" in seen[0]["text"] and seen[0]["histograms"]


def _readings(run_dir: Path, capsys: Any) -> dict[str, Any]:
    """What ``pipeobs metrics`` prints and the queries behind it and the web UI's charts return."""
    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers(dest="command"))
    assert dispatch(parser.parse_args(["metrics", str(run_dir)])) == 0
    with open_run(run_dir) as conn:
        return {"text": capsys.readouterr().out, "metrics": queries.metric_summaries(conn),
                "histograms": queries.histogram_summaries(conn), "names": queries.metric_names(conn),
                "points": [queries.metric_points(conn, name) for name in (DURATION, PEAK)],
                "series": [data.series(conn, name) for name in (DURATION, PEAK)]}


def _as_older_store(path: Path) -> None:
    """Move a store's observations from its attempt rows into ``metrics``, in time order, as the driver
    stored them before, and drop the attempts columns that held them."""
    conn = sqlite3.connect(path)
    derived = " UNION ALL ".join(
        f"SELECT a.recorded_at, r.step_id, a.worker, 'run', a.mini_batch_id, a.attempt, '{name}', 'observation', "
        f"a.{column}, NULL, '', '{{\"status\": \"' || a.status || '\"}}', a.trace_id, a.span_id FROM attempts a, runs r"
        for name, column in queries.ATTEMPT_OBSERVATIONS.items())
    columns = "time, step_id, worker, phase, mini_batch_id, attempt, name, kind, value, value_json, description, " \
              "labels, trace_id, span_id"
    conn.executescript(f"""
        CREATE TABLE points AS SELECT {columns} FROM metrics UNION ALL {derived};
        DELETE FROM metrics;
        INSERT INTO metrics ({columns}) SELECT * FROM points ORDER BY time;
        DROP TABLE points;
    """)
    for column in ADDED_ATTEMPT_COLUMNS:
        conn.execute(f"ALTER TABLE attempts DROP COLUMN {column}")
    conn.commit()
    conn.close()


def _older_store(root: Path, observed: dict[tuple[int, int], tuple[float, int]]) -> Path:
    """A store as an older pipeobs wrote it: attempts without the new columns, observations as metric rows."""
    path = root / "pipeobs.db"
    store = Store(path, "old-step")
    for (mb, attempt), (elapsed, peak) in observed.items():
        labels = json.dumps({"status": "RUN_DONE"})
        store.insert("attempts", {"mini_batch_id": mb, "attempt": attempt, "worker": "0/process000", "status": "RUN_DONE",
                                  "start_time": T0 + mb, "elapsed": elapsed, "total": 1, "succeeded": 1, "failed": 0})
        for name, value in ((DURATION, elapsed), (PEAK, peak)):
            store.insert("metrics", {"time": T0 + mb + elapsed, "worker": "0/process000", "phase": "run",
                                     "mini_batch_id": mb, "attempt": attempt, "name": name, "kind": "observation",
                                     "value": value, "description": "", "labels": labels, "span_id": f"{mb:016x}"})
    store.close()
    conn = sqlite3.connect(path)
    for column in ADDED_ATTEMPT_COLUMNS:
        conn.execute(f"ALTER TABLE attempts DROP COLUMN {column}")
    conn.commit()
    conn.close()
    return path


OLD = {(mb, 1): (mb / 10, (100 + mb) * 2**20) for mb in range(1, 21)}


class TestAnOlderStore:
    def test_readers_take_its_observation_rows(self, tmp_path: Path) -> None:
        """The explorer and the web UI read the observations of a store whose attempt rows lack them."""
        _older_store(tmp_path, OLD)

        with open_run(tmp_path) as conn:
            found = {h["name"]: h for h in queries.histogram_summaries(conn)}
            points = queries.metric_points(conn, DURATION)
            names = queries.metric_names(conn)
            summary = {s["name"]: s for s in queries.metric_summaries(conn)}[PEAK]
            chart = data.series(conn, DURATION)["series"]

        assert found[DURATION] == exact(DURATION, [e for e, _ in OLD.values()])
        assert found[PEAK] == exact(PEAK, [p for _, p in OLD.values()])
        assert [p["value"] for p in points] == [e for e, _ in OLD.values()] and points[0]["span_id"] == f"{1:016x}"
        assert DURATION in names and PEAK in names
        assert (summary["count"], summary["last"]) == (20, 120 * 2**20)
        assert [s["key"] for s in chart] == ["0/process000 status=RUN_DONE"] and len(chart[0]["points"]) == 20

    def test_a_resumed_run_counts_each_attempt_once(self, tmp_path: Path) -> None:
        """Resuming adds the attempts columns; old points stay metric rows, new ones come from the attempt rows."""
        _older_store(tmp_path, OLD)

        store = Store(tmp_path / "pipeobs.db", "old-step")
        for mb in range(21, 26):
            store.add_attempt(mb, 1, "0/process001", 7, {"status": "RUN_DONE", "total": 1, "succeeded": 1,
                                                         "start_time": T0 + mb, "elapsed": mb / 10,
                                                         "peak_rss": mb * 2**20, "span_id": f"{mb:016x}"})
        store.close()

        with open_run(tmp_path) as conn:
            found = {h["name"]: h for h in queries.histogram_summaries(conn)}
            points = queries.metric_points(conn, PEAK)
            old_rows = conn.execute("SELECT count(*) FROM attempts WHERE recorded_at IS NULL").fetchone()[0]
        durations = [e for e, _ in OLD.values()] + [mb / 10 for mb in range(21, 26)]
        assert old_rows == 20
        assert found[DURATION] == exact(DURATION, durations)
        assert found[PEAK] == exact(PEAK, [p for _, p in OLD.values()] + [mb * 2**20 for mb in range(21, 26)])
        assert len(points) == 25 and points[-1]["worker"] == "0/process001" and points[-1]["span_id"] == f"{25:016x}"
        assert points[-1]["labels"] == {"status": "RUN_DONE"}


class Recorder:
    """A sink of the record pipeline that keeps the metric records it receives."""

    def __init__(self) -> None:
        self.metrics: list[Metric] = []

    def add_metric(self, record: Metric) -> None:
        self.metrics.append(record)


@pytest.fixture
def telemetry() -> Any:
    recorder = Recorder()
    job = JobTelemetry("step", "step", Pipeline([recorder]), JobMetrics())
    yield job, recorder
    job.provider.shutdown()


RESULT = {"status": "RUN_DONE", "total": 1, "succeeded": 1, "elapsed": 0.25, "peak_rss": 5 * 2**20,
          "trace_id": "a" * 32, "span_id": "b" * 16}


class TestJobTelemetry:
    def test_no_observation_records_without_exporters(self, telemetry: Any) -> None:
        """With no exporter to take them, an attempt's observations are not built as records at all."""
        job, recorder = telemetry

        job.attempt("0/process000", 3, 1, RESULT, "succeeded")

        assert recorder.metrics == []

    def test_exporters_receive_both_observations(self, telemetry: Any) -> None:
        """An exporter's sink gets the duration and the peak RSS, with the attempt's span and status."""
        job, recorder = telemetry
        sent: list[Metric] = []
        job.observations = sent.append

        job.attempt("0/process000", 3, 1, RESULT, "succeeded")

        assert [(m.name, m.kind, m.value, m.labels) for m in sent] == [
            (DURATION, "observation", 0.25, '{"status": "RUN_DONE"}'),
            (PEAK, "observation", 5 * 2**20, '{"status": "RUN_DONE"}')]
        assert all((m.invocation.mini_batch_id, m.invocation.span_id) == (3, "b" * 16) for m in sent)
        assert recorder.metrics == []
