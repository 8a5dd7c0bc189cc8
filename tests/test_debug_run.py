"""``pipeobs run --debug-mini-batch N [--debugpy [HOST:]PORT]``: the worker that gets mini-batch N
waits for a debugger (debugpy) and stops at run()'s first line, with no clock running for it,
while the rest of the job goes on."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pipeobs.cli import main
from pipeobs.config import ParallelRunConfig, make_settings
from pipeobs.datasets import FileDataset, MiniBatch
from pipeobs.driver import Driver
from pipeobs.driver.clocks import Budgets, job_clock, worker_clock
from pipeobs.driver.ledger import Ledger
from pipeobs.driver.pool import WorkerPool
from pipeobs.driver.slots import Task, WorkerSlot, WorkerState
from pipeobs.jobs import DebugTarget, Thresholds
from pipeobs.protocol import Debug, Debugging, Message, Result, Tasks
from pipeobs.step import ParallelRunStep, run_plan
from pipeobs.testing import FakeExecutor
from tests.conftest import interruptible, write_files, write_rendezvous, write_script
from tests.dap import DapClient
from tests.test_collector import wait_for

BUDGETS = Budgets(run_invocation=2, task_overhead=30, first_task_creation=600, progress=10)


def mini_batch(mb_id: int) -> MiniBatch:
    return MiniBatch(id=mb_id, input_index=0, kind="file", files=(f"f{mb_id:03d}.txt",), item_count=1)


class TestClocks:
    @staticmethod
    def held(debugger: str | None = "127.0.0.1:5678") -> WorkerSlot:
        """A worker whose run() of mini-batch 7 began at t=100, under a debugger (or not)."""
        slot = WorkerSlot(0, "process000", state=WorkerState.READY)
        slot.inflight.append(Task(mini_batch(7), 1))
        slot.run_began[(7, 1)] = 100.0
        slot.debug_task, slot.debugger = (7, 1), debugger
        return slot

    def test_only_the_attempt_held_by_a_debugger_is_not_timed(self) -> None:
        """Long past run_invocation_timeout the debugged attempt is left alone; without the debugger it
        is killed, and so is the worker's next attempt, once the debugged one's result is in."""
        slot = self.held()

        assert worker_clock(slot, 1e6, BUDGETS) is None
        kill = worker_clock(self.held(debugger=None), 1e6, BUDGETS)
        assert kill is not None and kill.status == "RUN_TIMEOUT"
        slot.inflight.popleft()
        slot.inflight.append(Task(mini_batch(8), 1))
        slot.run_began[(8, 1)] = 200.0
        kill = worker_clock(slot, 202.5, BUDGETS)
        assert kill is not None and kill.mini_batch_id == 8

    def test_no_progress_is_owed_while_a_debugger_holds_a_worker(self) -> None:
        """progress_update_timeout does not stop a job while the user steps through run()."""
        assert job_clock(0.0, 1.0, 1.0, 1e6, BUDGETS, debugging=True) is None
        assert job_clock(0.0, 1.0, 1.0, 1e6, BUDGETS) == "No progress update in 10 seconds."


class Channel:
    """An executor that only records what the pool sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Message]] = []

    def send(self, worker: str, message: Message) -> bool:
        self.sent.append((worker, message))
        return True

    def tasks(self) -> list[tuple[str, Any]]:
        """What was sent, Tasks as ``(mini-batch, attempt)`` pairs."""
        return [(w, [(d.id, a) for d, a in m.items] if type(m) is Tasks else m) for w, m in self.sent]


class TestDispatch:
    @staticmethod
    def pool(workers: int) -> tuple[WorkerPool, Ledger, Channel, list[tuple[Any, ...]]]:
        """A pool of ready workers, six mini-batches queued, mini-batch 2 to be debugged."""
        ledger = Ledger(Thresholds(), run_max_try=3)
        for mb_id in range(6):
            ledger.add(mini_batch(mb_id))
        config = SimpleNamespace(node_count=1, effective_process_count=lambda: workers)
        plan: Any = SimpleNamespace(config=config, gpu_count=0, debug=DebugTarget(2))
        said: list[tuple[Any, ...]] = []
        channel = Channel()
        pool = WorkerPool(plan, channel, SimpleNamespace(say=lambda *a: said.append(a)), lambda: 0.0)  # type: ignore[arg-type]
        for n in range(workers):
            pool.slots[f"0/process00{n}"] = WorkerSlot(0, f"process00{n}", state=WorkerState.READY)
        return pool, ledger, channel, said

    def test_the_debugged_attempt_ends_its_batch_after_a_debug_message(self) -> None:
        """Nothing queues behind mini-batch 2 on its worker: the rest goes to another worker."""
        pool, ledger, channel, _ = self.pool(workers=2)

        pool.dispatch(ledger, prefetch=4)

        assert channel.tasks() == [
            ("0/process000", Debug(2, 1, "127.0.0.1", 0)),
            ("0/process000", [(0, 1), (1, 1), (2, 1)]),
            ("0/process001", [(3, 1), (4, 1), (5, 1)]),
        ]

    def test_a_worker_holding_the_debugged_attempt_gets_no_more_tasks(self) -> None:
        """Its tasks before mini-batch 2 finish; until 2's result, the queue waits for other workers."""
        pool, ledger, channel, _ = self.pool(workers=1)
        pool.dispatch(ledger, prefetch=4)
        worker = pool["0/process000"]
        worker.inflight.popleft()
        worker.inflight.popleft()

        pool.dispatch(ledger, prefetch=4)

        assert [type(m) for _, m in channel.sent] == [Debug, Tasks]
        assert list(ledger.pending) == [(3, 1), (4, 1), (5, 1)]

    def test_the_attempt_is_debugged_by_the_first_worker_that_listens_and_a_retry_is_not(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A worker gone before it listened passes the debugging on; once one listens (said in the
        driver log and on stderr), a retry of mini-batch 2 runs without a debugger."""
        pool, ledger, channel, said = self.pool(workers=1)
        pool.dispatch(ledger, prefetch=4)
        gone = pool["0/process000"]
        ledger.put_back([(t.mini_batch.id, t.attempt) for t in gone.inflight])
        gone.inflight.clear()
        gone.state = WorkerState.DEAD
        pool.slots["0/process001"] = heir = WorkerSlot(0, "process001", state=WorkerState.READY)
        pool.dispatch(ledger, prefetch=4)

        pool.debugger_waiting(heir, Debugging(2, 1, "127.0.0.1", 5678))
        for _ in range(3):
            heir.inflight.popleft()
        ledger.failed(2, 1, 1)
        pool.dispatch(ledger, prefetch=4)

        text = "mini-batch 2 waits for a debugger on 127.0.0.1:5678 (0/process001, attempt 1); run() starts when one attaches"
        assert [(w, m) for w, m in channel.tasks() if w == "0/process001"] == [
            ("0/process001", Debug(2, 1, "127.0.0.1", 0)),
            ("0/process001", [(0, 1), (1, 1), (2, 1)]),
            ("0/process001", [(3, 1), (4, 1), (5, 1), (2, 2)]),
        ]
        assert said == [("INFO", "debugger", text, "0/process001")]
        assert capsys.readouterr().err == text + "\n"


class HeldExecutor(FakeExecutor):
    """Fake workers; the attempt a Debug message names is held by a (simulated) debugger for ``hold`` seconds."""

    def __init__(self, hold: float) -> None:
        super().__init__(run=self._fate)
        self.hold = hold
        self.debug: dict[str, Debug] = {}
        self.held: list[tuple[str, int, int, float]] = []  # (worker, mini-batch, attempt, released at)

    def send(self, worker: str, message: Message) -> bool:
        if isinstance(message, Debug):
            self.debug[worker] = message
            return True
        return super().send(worker, message)

    def _fate(self, mb_id: int, attempt: int, worker: str) -> str:
        debug = self.debug.get(worker)
        if debug is None or debug[:2] != (mb_id, attempt):
            return "ok"
        self.events.worker_message(worker, Debugging(mb_id, attempt, debug.host, 5678))
        self.held.append((worker, mb_id, attempt, self.clock() + self.hold))
        return "hang"

    def poll(self, timeout: float) -> bool:
        for held in [h for h in self.held if self.clock() >= h[3]]:
            worker, mb_id, attempt, _ = held
            self.held.remove(held)
            self.workers[worker].hung = False
            self.events.worker_message(worker, Result(mb_id, attempt, {
                "status": "RUN_DONE", "total": 1, "succeeded": 1, "returned": 1, "rows": b"held\n", "header": None,
                "start_time": 0.0, "elapsed": self.hold, "run_seconds": self.hold, "trace_id": "0" * 32,
                "span_id": f"{mb_id:08x}{attempt:08x}",
            }))
        return super().poll(timeout)


def test_a_debugger_may_hold_a_worker_far_past_every_timeout(tmp_path: Path) -> None:
    """In simulated time: held 30 x progress_update_timeout and 60 x run_invocation_timeout, the
    debugged worker is not killed, the job is not stopped, and the rest of the job finishes meanwhile."""
    script = write_script(tmp_path, "def run(mb):\n    return mb\n")
    config = ParallelRunConfig(entry_script=str(script), process_count_per_node=2, mini_batch_size=1,
                               run_invocation_timeout=1, output_action="append_row")
    step = ParallelRunStep("held-step", config, [FileDataset.from_files(str(write_files(tmp_path, 6)))])
    plan = step.plan(tmp_path / "runs", settings=make_settings({"progress_update_timeout": 2}))
    plan.debug = DebugTarget(2)
    executor = HeldExecutor(hold=60)

    result = Driver(plan, executor=executor, clock=executor.clock).run()

    assert result.ok and result.mini_batches_succeeded == 6 and result.timeouts == 0
    assert executor.killed == [] and result.duration_seconds >= 60
    assert list(executor.debug.values()) == [Debug(2, 1, "127.0.0.1", 0)]
    assert sorted(mb for mb, *_ in executor.attempts) == list(range(6))


# ----------------------------------------------------------------------------- real workers, a real debugger
SCRIPT = """
import functools, os, rendezvous

def logged(function):
    @functools.wraps(function)
    def calling(mini_batch):
        print("calling run()")
        return function(mini_batch)
    return calling

@logged
def run(mini_batch):
    name = os.path.basename(mini_batch[0])
    if name == "f003.txt":  # the control: each try waits until its clock kills it, until released
        rendezvous.wait_for({release!r}, timeout=60)
    return [name + " row"]
"""


class DebugRun:
    """``pipeobs run --debug-mini-batch N`` of six one-file mini-batches on two workers, in a folder."""

    def __init__(self, folder: Path, *flags: str) -> None:
        self.folder = folder
        self.release = folder / "release"
        write_rendezvous(folder)
        self.script = write_script(folder, SCRIPT.format(release=str(self.release)))
        write_files(folder, 6)
        self.driver = subprocess.Popen(
            interruptible("pipeobs", "run", "score.py", "--input", "data", "--mini-batch-size", "1",
                          "--output-action", "append_row", "--process-count-per-node", "2", "--name", "debugged", *flags),
            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def query(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        """Rows of the run's store, read-only ([] until the driver has created it)."""
        for store in (self.folder / "runs" / "debugged").glob("*/pipeobs.db"):
            conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
            conn.row_factory = sqlite3.Row
            try:
                return conn.execute(sql, args).fetchall()
            except sqlite3.OperationalError:  # the tables are not there yet
                return []
            finally:
                conn.close()
        return []

    def wait_for(self, what: str, sql: str, *args: Any, count: int = 1) -> list[sqlite3.Row]:
        """The rows of ``sql`` once there are ``count``, polled while the driver runs."""

        def check() -> list[sqlite3.Row] | None:
            if self.driver.poll() is not None:
                raise AssertionError(f"the driver ended before {what}: {self.driver.communicate()}")
            rows = self.query(sql, *args)
            return rows if len(rows) >= count else None

        return wait_for(check, 60, what)

    def debugger_port(self) -> int:
        """The port the driver says the worker waits on (its event in the store)."""
        rows = self.wait_for("a worker waiting for a debugger", "SELECT message FROM events WHERE kind = 'debugger'")
        return int(rows[0]["message"].split(" on 127.0.0.1:")[1].split(" ")[0])

    def close(self) -> None:
        self.release.touch()
        if self.driver.poll() is None:
            self.driver.kill()
        self.driver.communicate()


@pytest.fixture
def debug_run(tmp_path: Path) -> Iterator[Callable[..., DebugRun]]:
    runs: list[DebugRun] = []

    def start(*flags: str) -> DebugRun:
        runs.append(DebugRun(tmp_path, *flags))
        return runs[-1]

    yield start
    for run in runs:
        run.close()


class TestDebuggedRun:
    def test_a_debugger_attaches_stops_in_run_and_holds_it_past_its_timeout_while_the_job_goes_on(
        self, debug_run: Callable[..., DebugRun]
    ) -> None:
        """DAP over the socket: initialize, attach, configurationDone; stopped at run()'s first line,
        inside its decorator (stackTrace); held while the other worker's clock kills a control mini-batch whose try began
        after the stop and every other mini-batch finishes; continue: all done, only the control timed out."""
        run = debug_run("--debug-mini-batch", "1", "--run-invocation-timeout", "2", "--run-max-try", "10")
        port = run.debugger_port()
        client = DapClient("127.0.0.1", port)
        client.attach()
        stopped = client.event("stopped")
        held_since = time.time()
        thread = stopped["body"]["threadId"]
        top = client.request("stackTrace", threadId=thread)["body"]["stackFrames"][0]

        run.wait_for("a try of the control mini-batch, begun after the stop, killed by its clock",
                     "SELECT 1 FROM spans WHERE name = 'mini_batch' AND mini_batch_id = 3 AND status = 'ERROR' "
                     "AND start_time >= ?", held_since)
        run.release.touch()
        run.wait_for("every other mini-batch done", "SELECT 1 FROM mini_batches WHERE status = 'done' AND id != 1",
                     count=5)
        still_held = run.query("SELECT * FROM attempts WHERE mini_batch_id = 1")
        client.request("continue", threadId=thread)
        client.disconnect()
        out, err = run.driver.communicate(timeout=60)

        assert (top["name"], top["source"]["path"]) == ("run", str(run.script))
        assert top["line"] == line_of(run.script, "name = os.path.basename(mini_batch[0])")  # run()'s first
        assert still_held == []
        assert run.driver.returncode == 0, (out, err)
        assert f"mini-batch 1 waits for a debugger on 127.0.0.1:{port} (0/process00" in err
        assert [r["status"] for r in run.query("SELECT status FROM mini_batches")] == ["done"] * 6
        (debugged,) = run.query("SELECT * FROM attempts WHERE mini_batch_id = 1")
        assert debugged["status"] == "RUN_DONE" and debugged["run_seconds"] > 2  # held past its timeout
        timed_out = run.query("SELECT DISTINCT mini_batch_id FROM attempts WHERE status = 'RUN_TIMEOUT'")
        assert [r["mini_batch_id"] for r in timed_out] == [3]

    def test_with_no_debugger_the_worker_waits_until_ctrl_c_ends_the_run(self, debug_run: Callable[..., DebugRun]) -> None:
        """No time limit on the wait (the driver says where to attach); Ctrl-C ends the run Interrupted
        and takes the listening debugger with it."""
        run = debug_run("--debug-mini-batch", "0")
        port = run.debugger_port()

        run.driver.send_signal(signal.SIGINT)
        out, err = run.driver.communicate(timeout=60)

        assert run.driver.returncode == 130, (out, err)
        assert f"mini-batch 0 waits for a debugger on 127.0.0.1:{port}" in err
        assert run.query("SELECT status FROM runs")[0]["status"] == "Interrupted"
        wait_for(lambda: refused(port), 60, "the debugger's port closed")

    def test_a_debugger_that_cannot_listen_fails_the_attempt_with_the_reason(self, tmp_path: Path) -> None:
        """From Python, with no CLI check first: the attempt fails (DEBUGGER_ERROR), naming the busy address."""
        script = write_script(tmp_path, "def run(mb):\n    return mb\n")
        config = ParallelRunConfig(entry_script=str(script), mini_batch_size=1, run_max_try=1)
        step = ParallelRunStep("busy-port", config, [FileDataset.from_files(str(write_files(tmp_path, 2)))])
        plan = step.plan(tmp_path / "runs")
        with socket.create_server(("127.0.0.1", 0)) as busy:
            plan.debug = DebugTarget(0, "127.0.0.1", busy.getsockname()[1])

            result = run_plan(plan)

        assert result.mini_batches_failed == 1 and result.mini_batches_succeeded == 1
        assert result.first_error is not None and result.first_error["status"] == "DEBUGGER_ERROR"
        assert "Address already in use" in result.first_error["message"]


def line_of(path: Path, text: str) -> int:
    """The line number of ``text`` in ``path``."""
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


class TestCommandLine:
    @pytest.fixture
    def job(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
        monkeypatch.chdir(tmp_path)
        write_script(tmp_path, "def run(mb):\n    return mb\n")
        write_files(tmp_path, 2)
        return tmp_path

    def test_without_debugpy_the_run_is_refused_before_anything_starts(
        self, job: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """debugpy is optional: the error names the extra to install; exit 2; no run directory."""
        monkeypatch.setitem(sys.modules, "debugpy", None)  # as if not installed

        code = main(["run", "score.py", "--input", "data", "--debug-mini-batch", "0"])

        assert code == 2
        assert capsys.readouterr().err == (
            "error: --debug-mini-batch needs debugpy, which is not installed: pip install 'pipeobs[debug]'\n"
        )
        assert not (job / "runs").exists()

    def test_a_busy_port_is_refused_before_anything_starts(self, job: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """--debugpy names a port another process listens on: exit 2, saying what to do."""
        with socket.create_server(("127.0.0.1", 0)) as busy:
            port = busy.getsockname()[1]

            code = main(["run", "score.py", "--input", "data", "--debug-mini-batch", "0", "--debugpy", str(port)])

        assert code == 2
        assert capsys.readouterr().err == (
            f"error: cannot listen for a debugger on 127.0.0.1:{port} (Address already in use): "
            "choose another --debugpy [HOST:]PORT (port 0: any free one)\n"
        )
        assert not (job / "runs").exists()

    @pytest.mark.parametrize(("flags", "message"), [
        (["--debug-mini-batch", "-1"], "--debug-mini-batch takes a mini-batch id (0 or more), not -1"),
        (["--debugpy", "5678"], "--debugpy says where a debugger attaches: add --debug-mini-batch N, the mini-batch to debug"),
    ])
    def test_flags_that_name_no_mini_batch_are_refused(
        self, job: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
    ) -> None:
        """A negative mini-batch id, or --debugpy alone: exit 2 with the fix."""
        code = main(["run", "score.py", "--input", "data", *flags])

        assert code == 2
        assert capsys.readouterr().err == f"error: {message}\n"
