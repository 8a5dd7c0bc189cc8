"""How a run ends when it does not end by itself: Ctrl-C, SIGTERM, a driver killed without a word;
and the workers that were still starting when the work ran out."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from pipeobs.record import liveness
from tests.conftest import RunJob, interruptible, write_files, write_rendezvous, write_script

GATED = """
import os, rendezvous
def run(mini_batch):
    names = [os.path.basename(p) for p in mini_batch]
    if max(names) >= "f004.txt":  # the first four finish; the rest wait for the gate
        rendezvous.wait_for({gate!r}, timeout=60)
    return [name + " row" for name in names]
"""


def pipeobs(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeobs", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def query(run_dir: Path, sql: str, *args: Any) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{run_dir / 'pipeobs.db'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def done(run_dir: Path) -> int:
    try:
        return query(run_dir, "SELECT COUNT(*) FROM mini_batches WHERE status='done'")[0][0]
    except sqlite3.OperationalError:  # the driver has not created the tables yet
        return 0


class GatedRun:
    """``pipeobs run`` of 12 one-file mini-batches on 2 workers; from the fifth on, run() waits for a gate file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.gate = folder / "gate"
        write_rendezvous(folder)
        write_script(folder, GATED.format(gate=str(self.gate)))
        write_files(folder, 12)
        self.driver = subprocess.Popen(
            interruptible("pipeobs", "run", "score.py", "--input", "data", "--mini-batch-size", "1",
                          "--output-action", "append_row", "--process-count-per-node", "2", "--name", "gated"),
            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.run_dir = self._wait_for_progress()

    def _wait_for_progress(self) -> Path:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for run_dir in (self.folder / "runs" / "gated").glob("*"):
                if done(run_dir) >= 4:
                    return run_dir
            if self.driver.poll() is not None:
                raise AssertionError(f"the driver ended early: {self.driver.communicate()}")
            time.sleep(0.02)
        raise AssertionError("the run did not make progress")

    def worker_pids(self) -> list[int]:
        return [r["pid"] for r in query(self.run_dir, "SELECT pid FROM workers")]

    def close(self) -> None:
        self.gate.touch()  # workers a killed driver left behind run on and exit
        if self.driver.poll() is None:
            self.driver.kill()
        self.driver.communicate()
        for pid in self.worker_pids():
            wait_gone(pid)


def wait_gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[GatedRun]:
    run = GatedRun(tmp_path)
    try:
        yield run
    finally:
        run.close()


class TestInterrupted:
    @pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
    def test_a_signalled_run_ends_interrupted_with_a_summary_and_resumes(
        self, gated: GatedRun, signum: int, code: int
    ) -> None:
        """Ctrl-C or SIGTERM: status Interrupted with an end time, a summary, no worker left, and a resume finishes."""
        gated.driver.send_signal(signum)
        stdout, stderr = gated.driver.communicate(timeout=60)

        name = signal.Signals(signum).name
        run = query(gated.run_dir, "SELECT * FROM runs")[0]
        assert gated.driver.returncode == code, stdout + stderr
        assert f"Interrupted: step gated, run {run['step_id']}" in stdout
        assert f"reason:       The run was interrupted by {name}." in stdout
        assert "Traceback" not in stderr
        assert (run["status"], run["error"]) == ("Interrupted", f"The run was interrupted by {name}.")
        assert run["ended_at"] is not None and run["ended_at"] >= run["started_at"]
        assert json.loads(run["summary"])["status"] == "Interrupted"
        assert all(wait_gone(pid) for pid in gated.worker_pids())
        # the mini-batches the interruption cut short did not fail: a resume runs them as first attempts
        assert query(gated.run_dir, "SELECT * FROM attempts WHERE status != 'RUN_DONE'") == []
        listed = pipeobs("runs", "runs", cwd=gated.folder)
        assert "Interrupted" in listed.stdout and "Running" not in listed.stdout
        follow = pipeobs("logs", "--follow", str(gated.run_dir), cwd=gated.folder)
        assert follow.returncode == 0, follow.stderr

        gated.gate.touch()
        resumed = pipeobs("run", "--resume", str(gated.run_dir), cwd=gated.folder)

        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        rows = (gated.run_dir / "output" / "parallel_run_step.txt").read_text().splitlines()
        assert sorted(rows) == [f"f{i:03d}.txt row" for i in range(12)]
        assert query(gated.run_dir, "SELECT status FROM runs")[0][0] == "Completed"

    def test_a_driver_killed_without_a_word_is_shown_driver_lost(self, gated: GatedRun) -> None:
        """SIGKILL: the run row still says Running, but every reader shows 'Driver lost' and --follow returns."""
        pid = gated.driver.pid
        gated.driver.kill()
        gated.driver.communicate()
        assert wait_gone(pid)

        assert query(gated.run_dir, "SELECT status FROM runs")[0][0] == "Running"
        listed = pipeobs("runs", "runs", cwd=gated.folder)
        shown = pipeobs("show", str(gated.run_dir), "--json", cwd=gated.folder)
        follow = pipeobs("logs", "--follow", str(gated.run_dir), cwd=gated.folder)
        assert "Driver lost" in listed.stdout and "Running" not in listed.stdout
        assert json.loads(shown.stdout)["summary"]["status"] == "Driver lost"
        assert follow.returncode == 0, follow.stderr


class TestLiveness:
    def test_only_a_gone_driver_on_this_host_is_lost(self) -> None:
        """The live driver is not lost; a finished pid, or the pid reused by a newer process, is; another host cannot tell."""
        me = liveness.this_driver()
        finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                  text=True, check=True)

        assert not liveness.driver_gone(me["driver_pid"], me["driver_host"], me["driver_since"])
        assert liveness.driver_gone(int(finished.stdout), me["driver_host"], me["driver_since"])
        assert liveness.driver_gone(me["driver_pid"], me["driver_host"], me["driver_since"] - 3600)  # a reused pid
        assert not liveness.driver_gone(int(finished.stdout), "another-host", me["driver_since"])
        row = {"status": "Running", "driver_pid": int(finished.stdout), "driver_host": me["driver_host"],
               "driver_since": me["driver_since"]}
        assert liveness.shown_status(row) == "Driver lost"
        assert liveness.shown_status({**row, "status": "Failed"}) == "Failed"
        assert liveness.shown_status({"status": "Running"}) == "Running"  # an older store: nothing to tell


class TestWorkersStillStarting:
    SCRIPT = """
    import os, rendezvous
    FOLDER = {folder!r}
    def init():
        try:
            os.close(os.open(os.path.join(FOLDER, "first"), os.O_CREAT | os.O_EXCL))
        except FileExistsError:  # not the first: init() runs until the first worker's shutdown()
            rendezvous.wait_for(os.path.join(FOLDER, "first-shut-down"), timeout=60)
    def run(mini_batch):
        return mini_batch
    def shutdown():
        open(os.path.join(FOLDER, "shut-down-" + str(os.getpid())), "w").close()
        if not os.path.exists(os.path.join(FOLDER, "first-shut-down")):
            open(os.path.join(FOLDER, "first-shut-down"), "w").close()
    """

    def test_idle_workers_finish_init_and_run_shutdown_and_are_no_restarts(
        self, run_job: RunJob, tmp_path: Path
    ) -> None:
        """Work runs out while three of four workers are in init(): they finish it, run shutdown() and exit 0."""
        folder = tmp_path / "marks"
        folder.mkdir()
        write_rendezvous(tmp_path)

        job = run_job(self.SCRIPT.format(folder=str(folder)), files=2, mini_batch_size=1, process_count_per_node=4)

        workers = job.query("SELECT * FROM workers")
        assert job.result.ok and job.result.worker_restarts == 0
        assert [(w["returncode"], w["reason"]) for w in workers] == [(0, "")] * 4
        assert len(list(folder.glob("shut-down-*"))) == 4
        assert job.query("SELECT * FROM spans WHERE status = 'ERROR'") == []
        assert job.query("SELECT * FROM events WHERE level != 'INFO'") == []
        assert job.query("SELECT value FROM metrics WHERE name = 'pipeobs_worker_restarts_total'")[-1][0] == 0


def test_workers_are_gone_with_their_driver(gated: GatedRun) -> None:
    """After SIGTERM the driver kills its workers (each in its own session) before it exits."""
    pids = gated.worker_pids()
    assert all(psutil.pid_exists(pid) for pid in pids)

    gated.driver.send_signal(signal.SIGTERM)
    gated.driver.communicate(timeout=60)

    assert [pid for pid in pids if not wait_gone(pid, timeout=5)] == []
    assert os.path.exists(gated.run_dir / "pipeobs.db")


def test_the_collector_names_itself_as_its_runs_driver(tmp_path: Path) -> None:
    """pipeobs collect records its pid like a driver, so a killed collector's run is shown Driver lost."""
    import httpx

    from tests.test_collector import message, running

    with running(tmp_path / "collected") as server:
        answer = httpx.post(f"http://127.0.0.1:{server.port}/v2.1/track", content=json.dumps([message("hi")]),
                            timeout=10)
        row = query(tmp_path / "collected", "SELECT * FROM runs")[0]

    assert answer.status_code == 200, answer.text
    assert (row["status"], row["driver_pid"], row["driver_host"]) == ("Running", os.getpid(), liveness.this_driver()["driver_host"])
    assert liveness.shown_status(dict(row)) == "Running"
