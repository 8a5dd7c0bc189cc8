"""The driver's view of one worker process (:class:`WorkerSlot`), and the names of new ones.

The executor owns the processes; the driver owns what they are doing: their state, the tasks
they hold (dispatched, not yet finished), when the head task's ``run()`` began, the spans they
opened, why the driver killed them, and the attempt they run under a debugger. All of it plain
values, read by the clocks.
"""

from __future__ import annotations

import collections
import enum
import time
from dataclasses import dataclass, field
from typing import Any

from pipeobs.records import Invocation


class WorkerState(enum.Enum):
    STARTING = "starting"  # spawned, not connected yet
    INIT = "init"  # connected; importing the entry script and running init()
    READY = "ready"
    STOPPING = "stopping"  # asked to stop: running shutdown()
    DEAD = "dead"


@dataclass
class Task:
    """A mini-batch attempt dispatched to a worker."""

    mini_batch: Any
    attempt: int


@dataclass
class WorkerSlot:
    """One worker process as the driver sees it."""

    node: int
    name: str
    gpu: int | None = None
    pid: int | None = None
    started: float = field(default_factory=time.time)
    state: WorkerState = WorkerState.STARTING
    since: float = field(default_factory=time.monotonic)  # start of the current state
    inflight: collections.deque[Task] = field(default_factory=collections.deque)
    head_since: float = 0.0  # when the head task became the one running
    run_began: dict[tuple[int, int], float] = field(default_factory=dict)  # (mini-batch, attempt) -> monotonic
    open_spans: dict[str, tuple[Invocation, float]] = field(default_factory=dict)  # span_id -> (invocation, start)
    kill_reason: tuple[str, str] | None = None  # (attempt status, message)
    debug_task: tuple[int, int] | None = None  # (mini-batch, attempt) it runs under a debugger
    debugger: str | None = None  # "host:port" once it listens there for a debugger, for debug_task

    @property
    def label(self) -> str:
        return f"{self.node}/{self.name}"

    @property
    def is_dead(self) -> bool:
        return self.state is WorkerState.DEAD

    @property
    def is_starting(self) -> bool:
        """Not serving yet: starting the process, loading the entry script or in init()."""
        return self.state in (WorkerState.STARTING, WorkerState.INIT)

    def holds(self, mini_batch_id: int | None, attempt: int | None) -> bool:
        """Whether this attempt is dispatched to the worker and unfinished (a begin marker names the head
        task, or the one after it when the head's result is on its way)."""
        return any(task.mini_batch.id == mini_batch_id and task.attempt == attempt for task in self.inflight)

    @property
    def holds_debug_task(self) -> bool:
        """Its debug_task is dispatched and unfinished: it gets no more tasks, so none waits behind a debugger."""
        return any((task.mini_batch.id, task.attempt) == self.debug_task for task in self.inflight)

    @property
    def held_by_debugger(self) -> bool:
        """Its running attempt waits for a debugger, or runs under one: the driver's clocks leave it alone."""
        if self.debugger is None or not self.inflight:
            return False
        head = self.inflight[0]
        return (head.mini_batch.id, head.attempt) == self.debug_task

    def set_state(self, state: WorkerState, now: float) -> None:
        self.state = state
        self.since = now


class Names:
    """``processNNN`` names per node (a replacement gets a new one) and the node's free GPUs."""

    def __init__(self, node_count: int, gpu_count: int) -> None:
        self._next: dict[int, int] = collections.defaultdict(int)
        self._gpus: dict[int, list[int]] = {n: list(range(gpu_count)) for n in range(node_count)}
        self.nodes = range(node_count)

    def next(self, node: int) -> tuple[str, int | None]:
        """A new process name on ``node`` and the GPU it gets (None when the node has no free GPU)."""
        index = self._next[node]
        self._next[node] += 1
        free = self._gpus[node]
        return f"process{index:03d}", free.pop(0) if free else None

    def release(self, node: int, gpu: int | None) -> None:
        if gpu is not None:
            self._gpus[node].append(gpu)
            self._gpus[node].sort()
