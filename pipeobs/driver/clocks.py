"""The driver's clocks: functions of (state, now) that return kill and stop decisions.

The driver owns the clock (a worker cannot time itself out once stuck in C code): it knows
when each worker started, when each mini-batch was dispatched and when its ``run()`` began (the
worker's begin marker). Nothing here reads a clock or acts: the caller passes ``now`` and
carries out the decision, so the rules are tested with plain numbers.

An attempt run under a debugger (``pipeobs run --debug-mini-batch N``) has no clock: from the
moment its worker says it listens for a debugger until its result, neither its loading nor its
``run()`` is timed, and the job owes no progress meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeobs.config import ParallelRunConfig, Settings
    from pipeobs.driver.slots import WorkerSlot


@dataclass(frozen=True)
class Budgets:
    """The time limits of section 2.6, in seconds."""

    run_invocation: float  # run() from the moment it is called
    task_overhead: float  # loading a mini-batch before run()
    first_task_creation: float  # partitioning must yield a first mini-batch
    progress: float  # some attempt must finish

    @classmethod
    def from_config(cls, config: ParallelRunConfig, settings: Settings) -> Budgets:
        return cls(
            config.run_invocation_timeout,
            settings.task_overhead_timeout,
            settings.first_task_creation_timeout,
            settings.progress_timeout(config.run_invocation_timeout),
        )

    @property
    def init(self) -> float:
        """init() (and starting the process) has both budgets together."""
        return self.run_invocation + self.task_overhead


@dataclass(frozen=True)
class Kill:
    """Kill this worker: the attempt status its running mini-batch gets, and why."""

    status: str  # INIT_TIMEOUT | RUN_TIMEOUT | LOAD_TIMEOUT
    message: str
    mini_batch_id: int | None = None

    @property
    def is_timeout(self) -> bool:
        """A mini-batch timed out (counted in pipeobs_timeouts_total); init timeouts are not."""
        return self.mini_batch_id is not None


def worker_clock(worker: WorkerSlot, now: float, budgets: Budgets) -> Kill | None:
    """Whether ``worker`` overran its init, its head mini-batch's run() or its loading."""
    if worker.kill_reason is not None or worker.is_dead:
        return None
    if worker.is_starting and now - worker.since > budgets.init:
        return Kill("INIT_TIMEOUT", f"init() did not finish in {budgets.init:g} seconds.")
    if not worker.inflight or worker.held_by_debugger:  # a debugger holds it as long as the user wants
        return None
    head = worker.inflight[0]
    mb_id = head.mini_batch.id
    began = worker.run_began.get((mb_id, head.attempt))
    if began is not None and now - began > budgets.run_invocation:
        return Kill("RUN_TIMEOUT", f"mini batch {mb_id} did not finish in {budgets.run_invocation:g} seconds.", mb_id)
    if began is None and now - worker.head_since > budgets.init:
        return Kill("LOAD_TIMEOUT", f"mini batch {mb_id} was not loaded in {budgets.task_overhead:g} seconds.", mb_id)
    return None


def job_clock(started: float, first_task_at: float | None, last_progress: float, now: float,
              budgets: Budgets, debugging: bool = False) -> str | None:
    """Why the job must stop for want of progress (Azure's words), or None.

    While a debugger holds a worker (``debugging``), no progress is owed: the user is stepping.
    """
    if first_task_at is None and now - started > budgets.first_task_creation:
        return (
            f"Unable to create any task within {budgets.first_task_creation:g} seconds. Reduce the single input "
            "size or set the advanced argument '--first_task_creation_timeout' to a larger value."
        )
    if now - last_progress > budgets.progress and not debugging:
        return f"No progress update in {budgets.progress:g} seconds."
    return None
