"""What the driver records about a run, told truthfully: non-finite metric values, the driver's own
records in App Insights' operation, CPU samples, the progress total of a resumed run, and the run
lock that keeps ``export --retry`` and spool carry-over away from a live driver."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from appinsights_helpers import Ingestion, serve

from pipeobs import datasets
from pipeobs.config import ParallelRunConfig
from pipeobs.datasets import FileDataset, partition
from pipeobs.driver import Driver
from pipeobs.export import routing
from pipeobs.export.delivery import Spool
from pipeobs.jobs import ProgressView
from pipeobs.record.perf import ResourceMonitor
from pipeobs.record.rundir import RunDir
from pipeobs.record.store import Store
from pipeobs.step import ParallelRunStep, resume_plan
from pipeobs.testing import FakeExecutor
from tests.conftest import RunJob, write_files, write_script

NON_FINITE = """
from azureml.core import Run
def run(mini_batch):
    run = Run.get_context()
    for value in (float("inf"), float("nan"), float("-inf"), 2.0):
        run.log("loss", value)
    run.log_list("losses", [1.0, float("nan"), float("inf")])
    return mini_batch
"""


def strict_json(text: str) -> Any:
    """``json.loads`` that refuses the non-standard NaN / Infinity tokens Python writes by default."""
    def refuse(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def pipeobs(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeobs", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


class TestNonFiniteValues:
    def test_inf_and_nan_are_stored_shown_and_strict_json(self, run_job: RunJob, tmp_path: Path) -> None:
        """inf, -inf and NaN survive the store; the views show inf/nan; --json is strict JSON with strings."""
        job = run_job(NON_FINITE, files=1)

        stored = [(r["value"], r["value_json"]) for r in job.query("SELECT * FROM metrics WHERE name = 'loss'")]
        assert stored == [(math.inf, None), (None, "NaN"), (-math.inf, None), (2.0, None)]
        metrics = strict_json(pipeobs("metrics", str(job.run_dir), "--json", cwd=tmp_path).stdout)
        loss = next(m for m in metrics if m["name"] == "loss")
        losses = next(m for m in metrics if m["name"] == "losses")
        assert (loss["count"], loss["min"], loss["max"], loss["mean"], loss["last"]) == (4, "-inf", "inf", "nan", 2.0)
        assert (losses["min"], losses["max"], losses["mean"], losses["last"]) == (1.0, "inf", "nan", [1.0, "nan", "inf"])
        shown = strict_json(pipeobs("show", str(job.run_dir), "--json", cwd=tmp_path).stdout)
        assert next(m for m in shown["metrics"] if m["name"] == "loss")["mean"] == "nan"
        text = pipeobs("metrics", str(job.run_dir), cwd=tmp_path).stdout
        row = next(line.split() for line in text.splitlines() if line.split()[:1] == ["loss"])
        assert row[3:] == ["2", "-inf", "inf", "nan"]  # last, min, max, mean

    def test_the_collector_stores_a_nan_as_the_driver_does(self, tmp_path: Path) -> None:
        """A NaN metric value sent to /v2.1/track is stored as value NULL, value_json NaN (not lost as NULL)."""
        import httpx

        from tests.test_collector import envelope, running

        body = json.dumps([envelope("Metric", {"metrics": [{"name": "nan_metric", "value": math.nan}]}),
                           envelope("Metric", {"metrics": [{"name": "inf_metric", "value": math.inf}]})])
        with running(tmp_path / "collected") as server:
            answer = httpx.post(f"http://127.0.0.1:{server.port}/v2.1/track", content=body.encode(), timeout=10)
        conn = sqlite3.connect(tmp_path / "collected" / "pipeobs.db")

        assert answer.status_code == 200, answer.text
        assert conn.execute("SELECT name, value, value_json FROM metrics ORDER BY name").fetchall() == [
            ("inf_metric", math.inf, None), ("nan_metric", None, "NaN")]


class TestDriverRecordsInTheOperation:
    def test_driver_records_carry_the_job_trace_and_span(self, tmp_path: Path) -> None:
        """Job start, worker start/exit, scheduling and init-finished messages have the job's operation ids."""
        write_script(tmp_path, "def init():\n    pass\ndef run(mb):\n    return mb\n")
        write_files(tmp_path, 2)
        quiet = {"APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true", "APPLICATIONINSIGHTS_SDKSTATS_DISABLED": "true"}
        with serve(Ingestion()) as ingestion:
            proc = pipeobs("run", "score.py", "--input", "data", "--export", "appinsights", cwd=tmp_path,
                           env={**quiet, "APPLICATIONINSIGHTS_CONNECTION_STRING": ingestion.connection_string})
            envelopes = ingestion.envelopes
        assert proc.returncode == 0, proc.stdout + proc.stderr
        db = next(tmp_path.glob("runs/*/*/pipeobs.db"))
        job = sqlite3.connect(db).execute("SELECT trace_id, span_id FROM spans WHERE name = 'job'").fetchone()

        driver = [e for e in envelopes if e["data"]["baseData"].get("properties", {}).get("event")]
        events = {e["data"]["baseData"]["properties"]["event"] for e in driver}
        assert {"start", "worker_start", "scheduled", "init_done", "worker_exit"} <= events
        assert {(e["tags"]["ai.operation.id"], e["tags"]["ai.operation.parentId"]) for e in driver} == {
            (job[0], job[1])}


class TestCpu:
    def test_a_busy_worker_reads_real_cpu_percent(self, run_job: RunJob) -> None:
        """pipeobs_process_cpu_percent has the worker's real load, first sample included (it was 0 throughout)."""
        busy = "import time\ndef run(mb):\n    end = time.process_time() + 0.3\n    while time.process_time() < end:\n" \
               "        pass\n    return mb\n"
        job = run_job(busy, files=2, process_count_per_node=1)

        samples = [r[0] for r in job.query("SELECT value FROM metrics WHERE name = 'pipeobs_process_cpu_percent'")]
        assert len(samples) >= 2 and max(samples) > 5  # the first sample may come as the process starts

    def test_the_first_sample_of_a_process_is_its_cpu_since_it_started(self, tmp_path: Path) -> None:
        spinner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.process_time() + 0.5\n"
                                    "while time.process_time() < end: pass\nimport sys; sys.stdin.read()"],
                                   stdin=subprocess.PIPE)
        try:
            while time.process_time() == 0 and spinner.poll() is None:
                pass
            import psutil

            process = psutil.Process(spinner.pid)
            while sum(process.cpu_times()[:2]) < 0.5:
                time.sleep(0.01)
            monitor = ResourceMonitor(tmp_path / "perf", 1.0)
            monitor.sample([(0, "process000", spinner.pid)], time.monotonic())
            monitor.close()
        finally:
            spinner.communicate(b"")
        assert monitor.last["0/process000"]["cpu"] > 1.0


class TestResumedProgress:
    def test_a_resumed_run_knows_its_total_before_partitioning_again(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The first progress view of a resumed run says "of 6", not "of ?", while its inputs are listed again."""
        script = write_script(tmp_path, "def run(mb):\n    return mb\n")
        config = ParallelRunConfig(entry_script=str(script), process_count_per_node=2, mini_batch_size=1,
                                   output_action="append_row")
        step = ParallelRunStep("resumed", config, [FileDataset.from_files(str(write_files(tmp_path, 6)))],
                               output=str(tmp_path / "out"))
        first = FakeExecutor()
        result = Driver(step.plan(tmp_path / "runs"), executor=first, clock=first.clock).run()
        conn = sqlite3.connect(Path(result.run_dir) / "pipeobs.db")
        conn.execute("UPDATE mini_batches SET status = 'pending' WHERE id >= 3")
        conn.execute("UPDATE runs SET status = 'Interrupted'")
        conn.commit()
        conn.close()
        views: list[ProgressView] = []
        shown = threading.Event()

        def progress(view: ProgressView) -> None:
            views.append(view)
            shown.set()

        def slow_partition(*args: Any) -> Any:  # the listing goes on until the driver has shown progress
            assert shown.wait(30), "no progress was shown while the inputs were listed"
            yield from partition(*args)

        monkeypatch.setattr(datasets, "partition", slow_partition)
        executor = FakeExecutor()
        resumed = Driver(resume_plan(result.run_dir), on_progress=progress, executor=executor,
                         clock=executor.clock).run()

        assert resumed.ok and resumed.mini_batches_succeeded == 6
        assert views[0].total == 6 and views[0].done == 3


class TestRunLock:
    def test_export_retry_refuses_a_run_whose_driver_is_alive(self, tmp_path: Path) -> None:
        """export --retry takes the run's lock: while a driver holds it, exit 2 and the spool is untouched."""
        run_dir = tmp_path / "runs" / "step" / "live"
        run_dir.mkdir(parents=True)
        Store(run_dir / "pipeobs.db", "live").close()
        spool = run_dir / "export-spool" / "appinsights"
        spool.mkdir(parents=True)
        (spool / "000001.jsonl").write_text('{"type": "log"}\n')
        driver = RunDir(run_dir)
        driver.lock()
        try:
            proc = pipeobs("export", "--retry", str(run_dir), cwd=tmp_path)
        finally:
            driver.unlock()

        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.startswith("error: ") and "in use by another pipeobs process" in proc.stderr
        assert (spool / "000001.jsonl").read_text() == '{"type": "log"}\n'

    def test_carry_over_leaves_the_spool_of_a_live_run_alone(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A new run adopts the spools of ended runs, never of one whose driver holds its lock."""
        from tests.test_delivery import FakeExporter

        monkeypatch.setattr(routing, "create_exporter", lambda name, options=None: FakeExporter())
        ended, live = tmp_path / "runs/step/ended", tmp_path / "runs/step/live"
        for run_dir in (ended, live):
            (run_dir / "export-spool" / "fake").mkdir(parents=True)
            (run_dir / "export-spool" / "fake" / "000001.jsonl").write_text('{"type": "log", "text": "x"}\n')
        driver = RunDir(live)
        driver.lock()
        try:
            router = routing.Router(tmp_path / "runs/step/new", ["fake"])
            carried = router.carry_over(tmp_path / "runs")
            router.close()
        finally:
            driver.unlock()

        assert carried == {"fake": 1}
        assert Spool(ended / "export-spool" / "fake").files() == []
        assert len(Spool(live / "export-spool" / "fake").files()) == 1
