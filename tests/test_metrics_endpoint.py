"""``pipeobs run --metrics-port`` and ``--pushgateway``: the run's metrics as Prometheus reads them."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeobs.cli import main
from tests.conftest import MemoryCgroup, write_files, write_script
from tests.prom import GatedRun, gated_run, get, need, prometheus, pushgateway

ECHO = "import os\ndef run(mb):\n    return [os.path.basename(p) for p in mb]\n"
CONTRACT = (
    "pipeobs_mini_batches_total", "pipeobs_attempts_total", "pipeobs_items_total",
    "pipeobs_mini_batch_duration_seconds_bucket", "pipeobs_mini_batch_duration_seconds_sum",
    "pipeobs_mini_batch_duration_seconds_count", "pipeobs_retries_total", "pipeobs_timeouts_total",
    "pipeobs_worker_restarts_total", "pipeobs_queue_depth", "pipeobs_job_running", "pipeobs_process_cpu_percent",
    "pipeobs_process_rss_bytes", "pipeobs_mini_batch_peak_rss_bytes", "pipeobs_mini_batches_scheduled",
    "pipeobs_mini_batches_finished", "pipeobs_job_start_timestamp_seconds", "pipeobs_last_progress_timestamp_seconds",
    "pipeobs_run_invocation_timeout_seconds", "pipeobs_progress_update_timeout_seconds", "pipeobs_memory_limit_bytes",
    "pipeobs_user_metric",
)


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The samples of an exposition, by sample name."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def value(series: dict[str, list[tuple[dict[str, str], float]]], sample: str, **labels: str) -> float:
    """The sum of the samples with ``labels`` (one series, or one per worker for the per-worker counters)."""
    matches = [v for found, v in series.get(sample, []) if labels.items() <= found.items()]
    assert matches, f"no {sample} with {labels}"
    return sum(matches)


def wait_for_scrape(run: GatedRun, finished: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Scrape until ``finished`` mini-batches are counted and every worker has a resource sample."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        series = samples(run.scrape())
        if value(series, "pipeobs_mini_batches_finished") >= finished and len(series["pipeobs_process_rss_bytes"]) == 2:
            return series
        time.sleep(0.1)
    raise AssertionError(f"the run did not reach {finished} finished mini-batches")


@pytest.fixture
def live_run(tmp_path: Path) -> Iterator[GatedRun]:
    with gated_run(tmp_path, "metrics-step") as run:
        yield run


def run_row(run_dir: Path) -> sqlite3.Row:
    conn = sqlite3.connect(run_dir / "pipeobs.db")
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM runs").fetchone()
    finally:
        conn.close()


def events(run_dir: Path, kind: str) -> list[str]:
    conn = sqlite3.connect(run_dir / "pipeobs.db")
    try:
        return [m for (m,) in conn.execute("SELECT message FROM events WHERE kind=?", (kind,))]
    finally:
        conn.close()


class TestEndpoint:
    def test_serves_every_series_labelled_with_the_run_while_it_runs(self, live_run: GatedRun) -> None:
        """While the job runs, /metrics has the built-in and user series, each labelled step_id and step."""
        series = wait_for_scrape(live_run, finished=5)

        step_id = live_run.run_dir().name
        assert set(CONTRACT) <= set(series)
        assert all(labels["step_id"] == step_id and labels["step"] == "metrics-step"
                   for found in series.values() for labels, _ in found)
        assert not [name for name in series if name.endswith("_created")]
        assert value(series, "pipeobs_job_running") == 1
        assert value(series, "pipeobs_mini_batches_scheduled") == 6
        assert value(series, "pipeobs_attempts_total", status="RUN_EXCEPTION") == 1
        assert value(series, "pipeobs_attempts_total", status="RUN_DONE") == 5
        assert value(series, "pipeobs_retries_total") == 1
        assert value(series, "pipeobs_user_metric", name="accuracy") == 0.95
        assert value(series, "pipeobs_run_invocation_timeout_seconds") == 60
        assert value(series, "pipeobs_progress_update_timeout_seconds") == 3 * (60 + 30)
        assert value(series, "pipeobs_memory_limit_bytes") > 0
        start = value(series, "pipeobs_job_start_timestamp_seconds")
        assert start < value(series, "pipeobs_last_progress_timestamp_seconds") <= time.time()

    def test_names_pass_promtool_check_metrics(self, live_run: GatedRun) -> None:
        """promtool's linter finds nothing to say about the exposition."""
        text = live_run.scrape()
        wait_for_scrape(live_run, finished=5)

        checked = subprocess.run([need("promtool"), "check", "metrics"], input=live_run.scrape(), capture_output=True,
                                 text=True, timeout=60)

        assert "pipeobs_job_running" in text
        assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")

    def test_the_port_is_recorded_and_the_endpoint_ends_with_the_run(self, live_run: GatedRun) -> None:
        """The port is in the run row and a driver event; once the run ends nothing listens on it."""
        returncode, err = live_run.finish()

        run_dir = live_run.run_dir()
        assert returncode == 0, err
        assert run_row(run_dir)["metrics_port"] == live_run.port
        assert events(run_dir, "metrics") == [f"Metrics for Prometheus on http://127.0.0.1:{live_run.port}/metrics"]
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", live_run.port), timeout=5).close()

    def test_a_taken_port_fails_the_run_before_it_starts(self, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
        """A port in use: exit 2, one error line naming the port and the fix, the run row Failed."""
        monkeypatch.chdir(tmp_path)
        write_script(tmp_path, ECHO)
        write_files(tmp_path, 2)
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]

            code = main(["run", "score.py", "--input", "data", "--name", "taken", "--metrics-port", str(port)])

        err = capsys.readouterr().err
        (run_dir,) = (tmp_path / "runs" / "taken").iterdir()
        assert code == 2
        assert err == (f"error: cannot serve metrics on 127.0.0.1:{port} (Address already in use): give "
                       f"--metrics-port a free port, or 0 for any free one\n")
        assert run_row(run_dir)["status"] == "Failed"

    @pytest.mark.parametrize("given", ["abc", "70000", "host:"])
    def test_a_bad_port_is_refused(self, given: str, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
        """--metrics-port takes [HOST:]PORT; anything else is a one-line usage error, exit 2."""
        monkeypatch.chdir(tmp_path)
        write_script(tmp_path, ECHO)
        write_files(tmp_path, 2)

        code = main(["run", "score.py", "--input", "data", "--metrics-port", given])

        assert code == 2
        assert capsys.readouterr().err == (f"error: --metrics-port: invalid [HOST:]PORT '{given}' (a port from 0 to "
                                           f"65535; 0 picks a free one)\n")
        assert not (tmp_path / "runs").exists()


class TestMemoryLimit:
    def test_is_the_cgroup_limit_of_the_driver(self, memory_cgroup: MemoryCgroup) -> None:
        """A driver in a memory-limited cgroup reports that limit, not the machine's memory."""
        code = "from pipeobs.telemetry.metrics import memory_limit; print(int(memory_limit()))"

        out = subprocess.run(memory_cgroup.command([sys.executable, "-c", code]), capture_output=True, text=True,
                             timeout=60, check=True).stdout

        assert int(out) == 256 << 20


class TestPushgateway:
    def test_pushes_the_final_values_grouped_by_step_id(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """At the end the registry goes to the Pushgateway (job pipeobs, step_id), with job_running 0."""
        monkeypatch.chdir(tmp_path)
        write_script(tmp_path, ECHO)
        write_files(tmp_path, 4)
        with pushgateway(tmp_path / "pushgateway") as gateway:
            (tmp_path / "job.yaml").write_text(f"pushgateway: {gateway.url}\nmini_batch_size: 1\n")

            code = main(["run", "score.py", "--input", "data", "--name", "pushed", "-c", "job.yaml"])

            series = samples(get(f"{gateway.url}/metrics"))
        (run_dir,) = (tmp_path / "runs" / "pushed").iterdir()
        pushed = {"job": "pipeobs", "step_id": run_dir.name, "step": "pushed"}
        assert code == 0
        assert value(series, "pipeobs_job_running", **pushed) == 0
        assert value(series, "pipeobs_attempts_total", status="RUN_DONE", **pushed) == 4
        assert value(series, "pipeobs_mini_batches_finished", **pushed) == 4
        assert events(run_dir, "pushgateway") == [f"Metrics pushed to the Pushgateway {gateway.url}"]

    def test_an_unreachable_pushgateway_is_a_warning_not_a_failure(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A push that fails is said on stderr and in the driver log; the job still completes."""
        monkeypatch.chdir(tmp_path)
        write_script(tmp_path, ECHO)
        write_files(tmp_path, 2)
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{closed.getsockname()[1]}"

            code = main(["run", "score.py", "--input", "data", "--name", "unpushed", "--pushgateway", url])

        (run_dir,) = (tmp_path / "runs" / "unpushed").iterdir()
        (warning,) = events(run_dir, "pushgateway")
        assert code == 0
        assert warning.startswith(f"Pushing the metrics to the Pushgateway {url} failed: ")
        assert warning in capsys.readouterr().err


class TestRealPrometheus:
    def test_prometheus_scrapes_a_live_run(self, live_run: GatedRun, tmp_path: Path) -> None:
        """A real Prometheus scraping the endpoint every second sees the job running and its attempts."""
        with prometheus(tmp_path / "prometheus", targets=[live_run.target]) as server:
            running = server.wait_for('pipeobs_job_running{step="metrics-step"} == 1')
            attempts = server.wait_for('sum by (step_id) (pipeobs_attempts_total{step="metrics-step", status="RUN_DONE"}) == 5')
            failed = server.query('sum by (step_id) (pipeobs_attempts_total{step="metrics-step", status="RUN_EXCEPTION"})')

        labels: dict[str, Any] = running[0]["metric"]
        assert labels["step_id"] == live_run.run_dir().name
        assert [s["value"][1] for s in attempts] == ["5"]
        assert [s["value"][1] for s in failed] == ["1"]
