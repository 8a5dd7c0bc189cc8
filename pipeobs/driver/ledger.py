"""The ledger: every mini-batch's state, the queue of attempts to run, the verdicts, the thresholds.

Plain values in, decisions out; no I/O. The driver records what the ledger decides (store rows,
events, outputs), so the rules of section 2 of the reference live here alone and are tested
with plain values (``tests/driver/test_ledger.py``).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pipeobs.errors import PipeobsError
from pipeobs.jobs import Thresholds
from pipeobs.record.store import LedgerRow


@dataclass
class MiniBatchState:
    descriptor: Any  # a pipeobs.datasets.MiniBatch
    tries: int = 0  # attempts that ended (failed or done)
    status: str = "pending"  # pending | done | failed
    last_failed: bool = False  # its latest attempt failed: it counts against allowed_failed_count
    total: int | None = None
    succeeded: int = 0

    def failed_items(self) -> int:
        if self.status == "done":
            return (self.total or 0) - self.succeeded
        if self.status == "failed":
            return max(self.total or 0, 1)  # a batch that never loaded still failed something
        return 0


@dataclass(frozen=True)
class Verdict:
    """What a failed attempt means: retried (``final`` None) or the mini-batch failed for good."""

    state: MiniBatchState
    final: str | None  # None: retried as attempt + 1; "failed": no tries left


class Ledger:
    """Mini-batch states, the pending queue of ``(mini_batch_id, attempt)`` and the threshold tallies."""

    def __init__(self, thresholds: Thresholds, run_max_try: int) -> None:
        self.thresholds = thresholds
        self.run_max_try = run_max_try
        self.states: dict[int, MiniBatchState] = {}
        self.pending: collections.deque[tuple[int, int]] = collections.deque()
        self.all_scheduled = False  # partitioning finished: every mini-batch is known
        self.failed_items = 0  # kept current by _update: no rescans per attempt
        self.failed_batches = 0
        self.finished = 0  # done or failed

    def __len__(self) -> int:
        return len(self.states)

    # ------------------------------------------------------------------ filling
    def add(self, mini_batch: Any) -> bool:
        """A new mini-batch from partitioning (True), or one a resumed ledger holds already (False)."""
        known = self.states.get(mini_batch.id)
        if known is not None:
            if known.descriptor.to_json() != mini_batch.to_json():
                raise PipeobsError(
                    f"cannot resume: mini-batch {mini_batch.id} differs from the recorded one "
                    "(the inputs changed since the run started)"
                )
            return False
        self.states[mini_batch.id] = MiniBatchState(mini_batch, total=mini_batch.item_count)
        self.pending.append((mini_batch.id, 1))
        return True

    def restore(self, rows: Iterable[LedgerRow], descriptor: Any) -> int:
        """A resumed run: the recorded mini-batches; unfinished ones queue again. Returns how many finished."""
        for row in rows:
            state = MiniBatchState(descriptor(row.descriptor), tries=row.tries)
            self._update(state, status=row.status, succeeded=row.succeeded, last_failed=row.status == "failed",
                         total=row.total if row.total is not None else state.descriptor.item_count)
            self.states[row.id] = state
            if state.status == "pending":
                self.pending.append((row.id, min(state.tries + 1, self.run_max_try)))
        return self.finished

    # ------------------------------------------------------------------ scheduling
    def take(self, count: int) -> list[tuple[Any, int]]:
        """Up to ``count`` attempts to dispatch: ``(descriptor, attempt)`` in queue order."""
        pending, states = self.pending, self.states
        taken: list[tuple[Any, int]] = []
        while pending and len(taken) < count:
            mb_id, attempt = pending.popleft()
            taken.append((states[mb_id].descriptor, attempt))
        return taken

    def put_back(self, attempts: list[tuple[int, int]]) -> None:
        """Attempts that never started (their worker died): to the front, in order, same attempt."""
        self.pending.extendleft(reversed(attempts))

    # ------------------------------------------------------------------ verdicts
    def succeeded(self, mb_id: int, total: int, succeeded: int) -> MiniBatchState:
        state = self.states[mb_id]
        state.tries += 1
        self._update(state, status="done", last_failed=False, total=total, succeeded=succeeded)
        return state

    def failed(self, mb_id: int, attempt: int, total: int | None) -> Verdict:
        """An attempt failed: retry it as ``attempt + 1`` while tries are left, else fail the mini-batch."""
        state = self.states[mb_id]
        state.tries += 1
        self._update(state, last_failed=True, total=total or state.total)
        if attempt < self.run_max_try:
            self.pending.append((mb_id, attempt + 1))
            return Verdict(state, None)
        self._update(state, status="failed")
        return Verdict(state, "failed")

    def stop(self) -> int:
        """The job stopped early: no retry will come, so a mini-batch whose latest attempt failed has
        failed (it already counted against ``allowed_failed_count``), items and all; one that never
        finished an attempt stays pending (not run). Returns how many failed here."""
        stopped = [s for s in self.states.values() if s.status == "pending" and s.last_failed]
        for state in stopped:
            self._update(state, status="failed")
        self.pending = collections.deque(p for p in self.pending if self.states[p[0]].status == "pending")
        return len(stopped)

    def _update(self, state: MiniBatchState, **changes: Any) -> None:
        """Change a mini-batch's state, keeping the threshold tallies current."""
        self.failed_items -= state.failed_items()
        self.failed_batches -= state.last_failed
        self.finished -= state.status != "pending"
        for name, value in changes.items():
            setattr(state, name, value)
        self.failed_items += state.failed_items()
        self.failed_batches += state.last_failed
        self.finished += state.status != "pending"

    # ------------------------------------------------------------------ questions
    def exceeded(self) -> str | None:
        """Azure's message for the first threshold exceeded (section 2.5), or None."""
        return self.thresholds.exceeded(self.failed_items, self.failed_batches, len(self.states), self.all_scheduled)

    @property
    def complete(self) -> bool:
        """Every mini-batch is known and none waits in the queue (some may still be running)."""
        return self.all_scheduled and not self.pending

    def items(self) -> int:
        return sum(s.descriptor.item_count or 0 for s in self.states.values())

    def totals(self) -> dict[str, int]:
        """The counts of the job result."""
        states = self.states.values()
        done = [s for s in states if s.status == "done"]
        return {
            "mini_batches_total": len(self.states),
            "mini_batches_succeeded": len(done),
            "mini_batches_failed": sum(1 for s in states if s.status == "failed"),
            "items_total": sum(s.total or 0 for s in states),
            "items_succeeded": sum(s.succeeded for s in done),
            "items_failed": self.failed_items,
        }
