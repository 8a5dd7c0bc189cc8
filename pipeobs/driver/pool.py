"""The driver's workers as a pool: started with names, GPUs and scratch folders; killed, stopped, given tasks.

The pool turns the driver's decisions into executor calls and keeps each :class:`WorkerSlot`
current from what the executor reports (begin markers, exits). With ``--debug-mini-batch N`` it
also hands mini-batch N to a worker under a debugger: as the last task of its batch, announced by
a :class:`~pipeobs.protocol.Debug` message, with no task queued behind it while it is held.
"""

from __future__ import annotations

import collections
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pipeobs import env as variables
from pipeobs.driver.slots import Names, Task, WorkerSlot, WorkerState
from pipeobs.executors.base import Executor, WorkerSpec
from pipeobs.protocol import Debug, Debugging, Stop, Tasks
from pipeobs.records import Line, LineBlock, RecordBlock, Span
from pipeobs.streams import Boundary

if TYPE_CHECKING:
    from pipeobs.driver.journal import RunJournal
    from pipeobs.driver.ledger import Ledger
    from pipeobs.jobs import JobPlan


class WorkerPool:
    """The driver's workers: started with names, GPUs and scratch folders; killed, stopped, given tasks."""

    def __init__(self, plan: JobPlan, executor: Executor, journal: RunJournal, clock: Callable[[], float]) -> None:
        self.plan = plan
        self.executor = executor
        self.journal = journal
        self.clock = clock
        self.slots: dict[str, WorkerSlot] = {}
        self.names = Names(plan.config.node_count, plan.gpu_count)
        self.per_node = plan.config.effective_process_count()
        self.init_failures: collections.Counter[int] = collections.Counter()  # per node
        self.lost_nodes: dict[int, str] = {}  # node -> why (a remote node whose supervisor died)
        self.debug = plan.debug  # armed until a worker listens for the debugger

    def __getitem__(self, label: str) -> WorkerSlot:
        return self.slots[label]

    def __iter__(self) -> Iterator[WorkerSlot]:
        return iter(list(self.slots.values()))

    def spawn(self, node: int, announce: bool = True) -> WorkerSlot:
        name, gpu = self.names.next(node)
        env = dict(self.plan.worker_env)
        if gpu is not None:
            env[variables.CUDA_DEVICES] = str(gpu)
        scratch = self.plan.run_dir.scratch(node, name)
        scratch.mkdir(parents=True, exist_ok=True)
        worker = WorkerSlot(node, name, gpu, since=self.clock())
        self.slots[worker.label] = worker
        worker.pid = self.executor.spawn(WorkerSpec(node, name, env, str(scratch)))
        worker.started = time.time()
        self.journal.worker_row(worker)
        if announce:
            self.announce(worker)
        return worker

    def output(self, worker: WorkerSlot, items: Sequence[Any]) -> None:
        """A worker's parsed output: records into the pipeline, boundaries into the worker's slot."""
        pipeline = self.journal.pipeline
        lines, metric = pipeline.lines, pipeline.metric
        start = 0  # the lines since the last other item go to the sinks together
        for index, item in enumerate(items):
            kind = type(item)
            if kind is Line or kind is LineBlock or kind is RecordBlock:
                continue
            if start < index:
                lines(items[start:index])
            start = index + 1
            if kind is Boundary:
                self._boundary(worker, item)
            elif kind is Span:
                self.span_ended(worker, item)
            else:
                metric(item)
        if start < len(items):
            lines(items[start:] if start else items)

    def _boundary(self, worker: WorkerSlot, item: Boundary) -> None:
        """A begin marker opens the invocation's span (closed by the driver if the worker dies) and, for
        a mini-batch, starts its run() clock.

        The marker is taken from stderr, the stream the finished spans of init() and shutdown() travel on:
        stdout and stderr are read independently, so a span record could otherwise arrive before its stdout
        marker and leave a finished invocation looking open (then "killed" when the worker exits). A
        mini-batch's span travels in its result, on the channel: a begin marker read after that result
        names an attempt the worker no longer holds, and opens nothing.
        """
        inv = item.invocation
        if inv is None or item.stream != "stderr":
            return
        if inv.phase == "run" and not worker.holds(inv.mini_batch_id, inv.attempt):
            return  # its result (with its span) was read first: the attempt has ended
        if inv.span_id is not None:
            worker.open_spans.setdefault(inv.span_id, (inv, time.time()))
        if inv.phase == "run" and inv.mini_batch_id is not None and inv.attempt is not None:
            worker.run_began[(inv.mini_batch_id, inv.attempt)] = self.clock()

    def span_ended(self, worker: WorkerSlot, span: Span) -> None:
        """A finished span of the worker's (from its stderr, or a mini-batch's in its result): no longer open."""
        worker.open_spans.pop(span.record["span_id"], None)
        self.journal.pipeline.span(span)

    def announce(self, worker: WorkerSlot) -> None:
        where = f"pid {worker.pid}" if worker.pid else f"node {worker.node}"
        self.journal.say("INFO", "worker_start", f"Started {worker.label} ({where}).", worker.label)

    def replace(self, worker: WorkerSlot) -> None:
        """A new process for one that died, unless init() keeps failing on its node."""
        failures = self.init_failures[worker.node]
        if failures >= 3 * self.per_node:
            self.journal.say("ERROR", "node_gave_up",
                             f"init() failed {failures} times on node {worker.node}; no new worker is started there.")
            return
        self.spawn(worker.node)

    def lost(self, finished: bool) -> str | None:
        """Why the job cannot go on for want of workers (init() failing), or None."""
        failures = sum(self.init_failures.values())
        if not finished and self.all_dead():
            return (f"The init() in the entry script had failed for {failures} times and no worker is left. "
                    "Check logs/user/error for the cause." if failures else "No worker process is left.")
        if failures >= 2 * len(self.names.nodes) * self.per_node:
            return f"The init() in the entry script had failed for {failures} times. Check logs/user/error for the cause."
        return None

    def lose_node(self, node: int, reason: str) -> None:
        """A node is gone: its workers' attempts fail with ``NODE_LOST`` (their exits follow); none starts there again."""
        self.lost_nodes[node] = reason
        for worker in self:
            if worker.node == node and not worker.is_dead:
                worker.kill_reason = worker.kill_reason or ("NODE_LOST", reason)

    def kill(self, worker: WorkerSlot, status: str, message: str) -> None:
        worker.kill_reason = (status, message)
        self.journal.say("ERROR", "timeout", message + " Stopping this process.", worker.label)
        self.executor.kill(worker.label)

    def exited(self, worker: WorkerSlot) -> bool:
        """Mark ``worker`` dead and free its GPU; whether it had been asked to stop."""
        was_stopping = worker.state is WorkerState.STOPPING
        worker.set_state(WorkerState.DEAD, self.clock())
        self.names.release(worker.node, worker.gpu)
        return was_stopping

    def busy(self) -> bool:
        """Some worker holds a task."""
        return any(w.inflight for w in self.slots.values())

    def all_dead(self) -> bool:
        return all(w.is_dead for w in self.slots.values())

    def live(self) -> list[tuple[int, str, int]]:
        """``(node, name, pid)`` of the workers alive on this machine (for the resource monitor)."""
        if not self.executor.local_pids:
            return []
        return [(w.node, w.name, w.pid) for w in self.slots.values() if not w.is_dead and w.pid is not None]

    def dispatch(self, ledger: Ledger, prefetch: int) -> None:
        """Top up each ready worker holding half of ``prefetch`` queued tasks or fewer to ``prefetch``, from the
        ledger's queue: short mini-batches go out in batches (one message, and boundaries that share their marker
        writes in the worker), not one or two at a time as each result comes in."""
        for worker in self.slots.values():
            if not ledger.pending:
                return
            if worker.state is not WorkerState.READY or len(worker.inflight) > prefetch // 2 or worker.holds_debug_task:
                continue
            batch = ledger.take(prefetch - len(worker.inflight))
            if self.debug is not None:
                batch = self._debug_last(worker, batch, ledger)
            if not worker.inflight:
                worker.head_since = self.clock()
            worker.inflight.extend(Task(descriptor, attempt) for descriptor, attempt in batch)
            self.executor.send(worker.label, Tasks(batch))  # a worker that is gone re-queues them on exit

    def _debug_last(self, worker: WorkerSlot, batch: list[tuple[Any, int]], ledger: Ledger) -> list[tuple[Any, int]]:
        """``batch``, ending with the attempt to debug if it holds one (the rest goes back to the queue),
        announced to the worker before its Tasks: no task of the job waits behind a debugger."""
        assert self.debug is not None
        found = next((i for i, (descriptor, _) in enumerate(batch) if descriptor.id == self.debug.mini_batch_id), None)
        if found is None:
            return batch
        ledger.put_back([(descriptor.id, attempt) for descriptor, attempt in batch[found + 1:]])
        worker.debug_task = (self.debug.mini_batch_id, batch[found][1])
        self.executor.send(worker.label, Debug(*worker.debug_task, self.debug.host, self.debug.port))
        return batch[: found + 1]

    def debugger_waiting(self, worker: WorkerSlot, message: Debugging) -> None:
        """The worker listens for a debugger: its attempt is no longer timed, and later attempts of
        that mini-batch (a retry) run without one. Said in the driver log and on stderr."""
        self.debug = None
        worker.debug_task = (message.mini_batch_id, message.attempt)
        worker.debugger = f"{message.host}:{message.port}"
        text = (f"mini-batch {message.mini_batch_id} waits for a debugger on {worker.debugger} "
                f"({worker.label}, attempt {message.attempt}); run() starts when one attaches")
        self.journal.say("INFO", "debugger", text, worker.label)
        print(text, file=sys.stderr, flush=True)

    def debugging(self) -> bool:
        """A debugger holds some worker (or it waits for one)."""
        return any(w.held_by_debugger for w in self.slots.values())

    def stop_all(self, early: bool, grace: float) -> None:
        """Ask every worker to shutdown() (kill them all when ``early``); wait until all exited.

        A worker still starting or in init() finishes it first (as on Azure, every worker that
        starts runs init() and shutdown()): its Stop waits in its channel, or is sent when it
        connects. ``grace`` bounds the wait; then the stragglers are killed.
        """
        for worker in self:
            if worker.is_dead:
                continue
            if early:
                worker.kill_reason = worker.kill_reason or ("STOPPED", "stopped: the job is ending")
                worker.state = WorkerState.STOPPING
                self.executor.kill(worker.label)
            else:
                worker.set_state(WorkerState.STOPPING, self.clock())
                self.executor.send(worker.label, Stop())  # not connected yet: sent by connected()
        deadline = self.clock() + grace
        while not self.all_dead():
            if self.clock() > deadline:
                for worker in self:
                    if not worker.is_dead:
                        worker.kill_reason = ("STOPPED", "shutdown() did not finish in time")
                        self.executor.kill(worker.label)
                deadline = self.clock() + 5
            self.executor.poll(0.2)
