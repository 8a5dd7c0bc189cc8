"""The driver's retry, timeout, crash and threshold logic, on the fake executor: no processes, simulated time."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from pipeobs.config import ParallelRunConfig
from pipeobs.datasets import FileDataset
from pipeobs.driver import Driver
from pipeobs.jobs import JobResult
from pipeobs.step import ParallelRunStep
from pipeobs.testing import FakeExecutor
from tests.conftest import write_files, write_script


def run_fake(tmp_path: Path, executor: FakeExecutor, files: int = 6, **config: Any) -> JobResult:
    """Run a job of ``files`` one-item mini-batches on ``executor`` (2 workers unless told)."""
    script = write_script(tmp_path, "def run(mb):\n    return mb\n")
    config.setdefault("process_count_per_node", 2)
    config.setdefault("output_action", "append_row")
    config.setdefault("mini_batch_size", 1)
    cfg = ParallelRunConfig(entry_script=str(script), **config)
    step = ParallelRunStep("fake-step", cfg, [FileDataset.from_files(str(write_files(tmp_path, files)))],
                           output=str(tmp_path / "out"))
    return Driver(step.plan(tmp_path / "runs"), executor=executor, clock=executor.clock).run()


def rows(result: JobResult, sql: str) -> list[sqlite3.Row]:
    conn = sqlite3.connect(Path(result.run_dir) / "pipeobs.db")
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def output(result: JobResult) -> list[str]:
    assert result.output_path is not None
    return sorted(Path(result.output_path).read_text().splitlines())


class TestHappyPath:
    def test_every_mini_batch_runs_once_and_its_rows_are_written_once(self, tmp_path: Path) -> None:
        """Six mini-batches on two fake workers: all done, one row each, shutdown asked of both."""
        executor = FakeExecutor()

        result = run_fake(tmp_path, executor)

        assert result.ok and result.mini_batches_succeeded == 6
        assert output(result) == [f"{mb}-0" for mb in range(6)]
        assert sorted(mb for mb, *_ in executor.attempts) == list(range(6))
        assert {r["status"] for r in rows(result, "SELECT status FROM mini_batches")} == {"done"}
        assert len(rows(result, "SELECT * FROM workers WHERE returncode = 0")) == 2


class TestRetries:
    def test_a_failed_attempt_is_retried_until_it_succeeds(self, tmp_path: Path) -> None:
        """run() raising on the first try of mini-batch 2: a second attempt succeeds; one retry counted."""
        executor = FakeExecutor(run=lambda mb, attempt, _w: "error" if (mb, attempt) == (2, 1) else "ok")

        result = run_fake(tmp_path, executor)

        assert result.ok and result.retries == 1
        assert [(mb, a) for mb, a, _w, _f in executor.attempts if mb == 2] == [(2, 1), (2, 2)]
        assert output(result).count("2-0") == 1
        statuses = [r["status"] for r in rows(result, "SELECT status FROM attempts WHERE mini_batch_id = 2 ORDER BY attempt")]
        assert statuses == ["RUN_EXCEPTION", "RUN_DONE"]

    def test_a_mini_batch_failing_every_try_fails_after_run_max_try(self, tmp_path: Path) -> None:
        """run_max_try=3: three attempts, then the mini-batch fails and its item counts as failed."""
        executor = FakeExecutor(run=lambda mb, _a, _w: "error" if mb == 4 else "ok")

        result = run_fake(tmp_path, executor, run_max_try=3)

        assert [a for mb, a, _w, _f in executor.attempts if mb == 4] == [1, 2, 3]
        assert result.mini_batches_failed == 1 and result.items_failed == 1
        assert result.retries == 2
        assert result.first_error is not None and result.first_error["mini_batch_id"] == 4
        failed = rows(result, "SELECT status, attempts FROM mini_batches WHERE id = 4")[0]
        assert (failed["status"], failed["attempts"]) == ("failed", 3)


class TestCrashes:
    def test_a_crashed_worker_is_replaced_and_its_mini_batch_retried(self, tmp_path: Path) -> None:
        """A segfault mid-batch: the attempt fails PROCESS_CRASHED, a new processNNN runs the rest."""
        executor = FakeExecutor(run=lambda mb, attempt, _w: "crash" if (mb, attempt) == (1, 1) else "ok")

        result = run_fake(tmp_path, executor)

        assert result.ok and result.worker_restarts == 1
        assert len(executor.spawned) == 3 and "0/process002" in executor.spawned
        crashed = rows(result, "SELECT status, error_message FROM attempts WHERE status != 'RUN_DONE'")
        assert [r["status"] for r in crashed] == ["PROCESS_CRASHED"]
        assert "SIGSEGV" in crashed[0]["error_message"]
        assert output(result) == [f"{mb}-0" for mb in range(6)]

    def test_tasks_queued_behind_a_crash_keep_their_attempt_number(self, tmp_path: Path) -> None:
        """Prefetched tasks of a dead worker go back to the queue as the same attempt, not a retry."""
        executor = FakeExecutor(run=lambda mb, attempt, _w: "crash" if (mb, attempt) == (0, 1) else "ok")

        result = run_fake(tmp_path, executor, process_count_per_node=1)

        attempts = {(mb, a) for mb, a, _w, _f in executor.attempts}
        assert (0, 2) in attempts and (1, 2) not in attempts
        assert result.ok and result.retries == 1


class TestTimeouts:
    def test_a_hung_run_is_killed_past_run_invocation_timeout_and_retried(self, tmp_path: Path) -> None:
        """A run() that never returns: killed after the timeout (simulated), RUN_TIMEOUT, retried elsewhere."""
        executor = FakeExecutor(run=lambda mb, attempt, _w: "hang" if (mb, attempt) == (3, 1) else "ok")

        result = run_fake(tmp_path, executor, run_invocation_timeout=60)

        assert result.ok and result.timeouts == 1 and result.worker_restarts == 1
        assert len(executor.killed) == 1
        timed_out = rows(result, "SELECT status, error_message FROM attempts WHERE status = 'RUN_TIMEOUT'")
        assert len(timed_out) == 1 and "did not finish in 60 seconds" in timed_out[0]["error_message"]
        span = rows(result, "SELECT status FROM spans WHERE mini_batch_id = 3 AND attempt = 1")
        assert [s["status"] for s in span] == ["ERROR"]

    def test_an_init_that_never_finishes_is_killed_and_replaced(self, tmp_path: Path) -> None:
        """init() hanging in the only worker: killed past run_invocation_timeout + task_overhead_timeout."""
        executor = FakeExecutor(init=lambda worker: "hang" if worker == "0/process000" else "ok")

        result = run_fake(tmp_path, executor, run_invocation_timeout=10, process_count_per_node=1)

        assert result.ok and result.timeouts == 0 and result.worker_restarts == 1
        assert executor.killed == ["0/process000"] and executor.spawned == ["0/process000", "0/process001"]
        reason = rows(result, "SELECT reason FROM workers WHERE worker = '0/process000'")[0]["reason"]
        assert reason == "init() did not finish in 40 seconds."


class TestThresholds:
    def test_error_threshold_stops_the_job_with_azures_message(self, tmp_path: Path) -> None:
        """error_threshold=1 and three mini-batches failing: the job stops, Failed, naming the threshold."""
        executor = FakeExecutor(run=lambda mb, _a, _w: "error" if mb in (0, 1, 2) else "ok")

        result = run_fake(tmp_path, executor, error_threshold=1, run_max_try=1)

        assert not result.ok
        assert result.reason is not None and "exceeds error threshold 1" in result.reason

    def test_allowed_failed_count_stops_the_job_when_exceeded(self, tmp_path: Path) -> None:
        """Three mini-batches whose latest attempt failed exceed allowed_failed_count=2."""
        executor = FakeExecutor(run=lambda mb, _a, _w: "error" if mb < 3 else "ok")

        result = run_fake(tmp_path, executor, allowed_failed_count=2, run_max_try=1)

        assert not result.ok
        assert result.reason is not None and "which exceeds allowed failed count 2" in result.reason

    def test_partial_results_fail_items_not_mini_batches(self, tmp_path: Path) -> None:
        """run() returning fewer items than inputs: failed items count against error_threshold."""
        executor = FakeExecutor(run=lambda mb, _a, _w: "partial" if mb == 0 else "ok")

        result = run_fake(tmp_path, executor, files=4, mini_batch_size=2, error_threshold=0)

        assert not result.ok and result.mini_batches_failed == 0 and result.items_failed == 1
        assert result.reason is not None and "The number of failed items is 1" in result.reason


class TestWorkersLost:
    def test_init_failing_everywhere_stops_the_job(self, tmp_path: Path) -> None:
        """init() raising in every process: replacements until the limit, then Failed with Azure's reason."""
        executor = FakeExecutor(init=lambda _worker: "fail")

        result = run_fake(tmp_path, executor)

        assert not result.ok
        assert result.reason is not None and "The init() in the entry script had failed for 4 times" in result.reason
        assert result.first_error is not None and result.first_error["phase"] == "init"


@pytest.mark.parametrize("fate", ["ok", "error"])
def test_every_attempt_has_a_span_row_and_an_attempt_row(tmp_path: Path, fate: str) -> None:
    """The driver records each attempt once in attempts, whatever its fate."""
    executor = FakeExecutor(run=lambda _mb, _a, _w: fate)

    result = run_fake(tmp_path, executor, files=3, run_max_try=1, error_threshold=-1)

    assert len(rows(result, "SELECT * FROM attempts")) == len(executor.attempts) == 3
