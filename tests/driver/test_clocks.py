"""The clocks as functions of (state, now): kill and stop decisions from plain numbers."""

from __future__ import annotations

from dataclasses import dataclass

from pipeobs.driver.clocks import Budgets, job_clock, worker_clock
from pipeobs.driver.slots import Task, WorkerSlot, WorkerState

BUDGETS = Budgets(run_invocation=60, task_overhead=30, first_task_creation=600, progress=270)


@dataclass
class Batch:
    id: int


def worker(state: WorkerState = WorkerState.READY, since: float = 0.0) -> WorkerSlot:
    return WorkerSlot(0, "process000", state=state, since=since)


class TestWorkerClock:
    def test_init_has_both_budgets_together(self) -> None:
        """A worker in init() is killed past run_invocation_timeout + task_overhead_timeout."""
        slot = worker(WorkerState.INIT, since=100.0)

        assert worker_clock(slot, 190.0, BUDGETS) is None
        kill = worker_clock(slot, 190.5, BUDGETS)
        assert kill is not None and kill.status == "INIT_TIMEOUT" and not kill.is_timeout

    def test_run_is_timed_from_the_begin_marker(self) -> None:
        """run() has run_invocation_timeout seconds from the moment it is called."""
        slot = worker()
        slot.inflight.append(Task(Batch(7), 2))
        slot.run_began[(7, 2)] = 100.0

        assert worker_clock(slot, 160.0, BUDGETS) is None
        kill = worker_clock(slot, 160.5, BUDGETS)
        assert kill is not None and kill.status == "RUN_TIMEOUT" and kill.mini_batch_id == 7 and kill.is_timeout

    def test_loading_that_never_reaches_run_is_a_load_timeout(self) -> None:
        """No begin marker: the head task has both budgets from when it became the head."""
        slot = worker()
        slot.inflight.append(Task(Batch(3), 1))
        slot.head_since = 10.0

        kill = worker_clock(slot, 100.5, BUDGETS)

        assert kill is not None and kill.status == "LOAD_TIMEOUT"
        assert kill.message == "mini batch 3 was not loaded in 30 seconds."

    def test_a_worker_already_killed_or_dead_gets_no_second_decision(self) -> None:
        """Once killed (or dead), the clock leaves the worker alone."""
        killed = worker(WorkerState.INIT)
        killed.kill_reason = ("INIT_TIMEOUT", "x")

        assert worker_clock(killed, 1e9, BUDGETS) is None
        assert worker_clock(worker(WorkerState.DEAD), 1e9, BUDGETS) is None

    def test_an_idle_ready_worker_never_times_out(self) -> None:
        """No task held: nothing to time."""
        assert worker_clock(worker(), 1e9, BUDGETS) is None


class TestJobClock:
    def test_no_first_task_within_the_budget_stops_the_job(self) -> None:
        """first_task_creation_timeout, with Azure's advice."""
        assert job_clock(0.0, None, 599.0, 599.0, BUDGETS) is None
        reason = job_clock(0.0, None, 600.0, 600.5, BUDGETS)
        assert reason is not None and reason.startswith("Unable to create any task within 600 seconds.")

    def test_no_progress_within_the_budget_stops_the_job(self) -> None:
        """progress_update_timeout: some attempt must finish."""
        assert job_clock(0.0, 1.0, 100.0, 370.0, BUDGETS) is None
        assert job_clock(0.0, 1.0, 100.0, 370.5, BUDGETS) == "No progress update in 270 seconds."
