"""The node side of ``--backend ray``: a :class:`NodeSupervisor` actor runs one node's workers.

It is the local executor (:mod:`pipeobs.executors.local`) on that node: it spawns the node's worker
processes, holds their pipes, parses their streams and carries their protocol messages, so a worker
behaves exactly as it does locally. What it hears it queues, as typed events, in a bounded
:class:`_Outbox` that the head (:mod:`pipeobs.executors.ray_nodes`) fetches; the head's commands
arrive numbered and are applied in order by the executor's own thread.
"""

from __future__ import annotations

import heapq
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, NamedTuple

from pipeobs import env as variables
from pipeobs.executors.base import WorkerSpec
from pipeobs.protocol import Message
from pipeobs.records import count_records

OUTBOX_LIMIT = 20_000  # parsed records a supervisor holds for the head before it stops reading its workers' pipes
OUTPUT_DELAY = 0.05  # seconds output alone waits for the message that follows it (fewer, fuller fetches)


class Connected(NamedTuple):
    worker: str
    pid: int


class Said(NamedTuple):
    worker: str
    message: Message


class Wrote(NamedTuple):
    worker: str
    items: list[Any]


class Exited(NamedTuple):
    worker: str
    returncode: int


class Sampled(NamedTuple):
    """This node's resource samples: ``(processNNN, pid, row)`` per worker, and the machine's row."""

    samples: list[tuple[str, int, dict[str, float]]]
    machine: tuple[str, ...]


Event = Connected | Said | Wrote | Exited | Sampled


class NodeFailed(RuntimeError):
    """A supervisor cannot go on (its loop died, a worker cannot be started): its node is lost."""


class _Outbox:
    """The supervisor's :class:`ExecutorEvents`: events queued, in order, until the head fetches them.

    Consecutive output of one worker is merged into one event (fewer, larger batches). It holds at
    most about :data:`OUTBOX_LIMIT` records (a block counts its lines): past that, the supervisor stops
    reading its workers' pipes until the head has fetched, so a worker printing faster than the head takes
    its lines blocks on a full pipe, as it does locally, instead of growing memory and delaying its results.
    """

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.size = 0
        self.ready = threading.Condition()

    def _add(self, event: Event, size: int = 1) -> None:
        with self.ready:
            self.events.append(event)
            self.size += size
            self.ready.notify_all()

    def worker_connected(self, worker: str, pid: int) -> None:
        self._add(Connected(worker, pid))

    def worker_message(self, worker: str, message: Message) -> None:
        self._add(Said(worker, message))

    def worker_output(self, worker: str, items: Sequence[Any]) -> None:
        if not items:
            return
        with self.ready:
            last = self.events[-1] if self.events else None
            if isinstance(last, Wrote) and last.worker == worker:
                last.items.extend(items)
            else:
                self.events.append(Wrote(worker, list(items)))
            self.size += count_records(items)
            self.ready.notify_all()

    def worker_exited(self, worker: str, returncode: int) -> None:
        self._add(Exited(worker, returncode))

    def node_lost(self, node: int, reason: str) -> None:
        raise AssertionError("a local executor has no remote nodes to lose")

    def node_sampled(self, node: int, samples: list[tuple[str, int, dict[str, float]]],
                     machine: tuple[str, ...]) -> None:
        self._add(Sampled(samples, machine))

    def full(self) -> bool:
        return self.size >= OUTBOX_LIMIT

    def wait_for_room(self, timeout: float) -> None:
        with self.ready:
            if self.size >= OUTBOX_LIMIT:
                self.ready.wait(timeout)

    def take(self, wait: float) -> list[Event]:
        """What is queued, waiting up to ``wait`` seconds for something. Output alone waits up to
        :data:`OUTPUT_DELAY` more for the message that usually follows it (a mini-batch's result), so
        one fetch carries both; a full outbox or an exit is taken at once."""
        deadline = time.monotonic() + wait
        with self.ready:
            while not self.events and (left := deadline - time.monotonic()) > 0:
                self.ready.wait(left)
            if self.events and all(type(e) is Wrote for e in self.events):
                soon = min(deadline, time.monotonic() + OUTPUT_DELAY)
                while (self.size < OUTBOX_LIMIT and all(type(e) is Wrote for e in self.events)
                       and (left := soon - time.monotonic()) > 0):
                    self.ready.wait(left)
            events, self.events, self.size = self.events, [], 0
            self.ready.notify_all()  # room again: the loop reads the pipes
        return events


class NodeSupervisor:
    """One node's worker processes, run by the local executor on that node (a Ray actor)."""

    def __init__(self, node: int) -> None:
        import ray

        from pipeobs.executors.local import LocalExecutor

        self.node = node
        self.outbox = _Outbox()
        self.local = LocalExecutor()
        self.gpus = [str(g) for g in ray.get_gpu_ids()]  # this node's GPUs, reserved for this actor
        self.node_id = ray.get_runtime_context().get_node_id()
        self._commands: list[tuple[int, str, tuple[Any, ...]]] = []  # a heap, by sequence number
        self._next = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self.sample_interval = 0.0
        self.failure: str | None = None  # why this node cannot go on (the head then counts it lost)

    def describe(self) -> dict[str, Any]:
        """Where this supervisor runs."""
        return {"node": self.node, "host": socket.gethostname(), "pid": os.getpid(), "node_id": self.node_id,
                "gpus": len(self.gpus)}

    def missing(self, paths: list[str]) -> list[str]:
        """The paths this node cannot see."""
        return [path for path in paths if not os.path.exists(path)]

    def open(self, token: str, sample_interval: float = 0.0) -> None:
        """Start the loop; with ``sample_interval``, resource samples of the workers go to the head that often."""
        self.sample_interval = sample_interval
        self.local.open(self.outbox, token)
        self._thread = threading.Thread(target=self._loop, name=f"pipeobs-node-{self.node}", daemon=True)
        self._thread.start()

    def commands(self, batch: list[tuple[int, str, tuple[Any, ...]]]) -> None:
        """Queue ``(sequence, verb, args)`` commands; the loop applies them in sequence order."""
        with self._lock:
            for command in batch:
                heapq.heappush(self._commands, command)
        self.local.wake()

    def fetch(self, wait: float, batch: list[tuple[int, str, tuple[Any, ...]]] | None = None) -> list[Event]:
        """Queue the head's ``batch`` of commands (as :meth:`commands`), then return what happened since
        the last fetch, waiting up to ``wait`` seconds for something; once all of it is fetched, a
        failure of this node raises :class:`NodeFailed`. One call per round trip carries both ways."""
        if batch:
            self.commands(batch)
        events = self.outbox.take(wait)
        if not events and self.failure is not None:
            raise NodeFailed(self.failure)
        return events

    def close(self) -> None:
        self._closed.set()
        self.local.wake()
        if self._thread is not None:
            self._thread.join(30)
        self.local.close()

    # ------------------------------------------------------------------ the loop (one thread: the executor's)
    def _loop(self) -> None:
        from pipeobs.record.perf import ProcessSampler

        sampler, next_sample = ProcessSampler(), 0.0
        try:
            while not self._closed.is_set() and self.failure is None:
                if self.outbox.full():  # the head is behind: leave the pipes unread (the workers wait)
                    self.outbox.wait_for_room(0.05)
                else:
                    self.local.poll(0.05)
                self._apply()
                if self.sample_interval > 0 and time.monotonic() >= next_sample:
                    next_sample = time.monotonic() + self.sample_interval
                    self._sample(sampler)
        except BaseException as exc:  # noqa: BLE001 - said to the head by the next fetch
            self.failure = f"its supervisor failed: {type(exc).__name__}: {exc}"
        with self.outbox.ready:
            self.outbox.ready.notify_all()

    def _sample(self, sampler: Any) -> None:
        samples = []
        for label, proc in list(self.local.processes.items()):
            row = sampler.sample(proc.pid)
            if row is not None:
                samples.append((label.split("/", 1)[1], proc.pid, row))
        self.outbox.node_sampled(self.node, samples, sampler.node_row())

    def _apply(self) -> None:
        while True:
            with self._lock:
                if not self._commands or self._commands[0][0] != self._next:
                    return
                _, verb, args = heapq.heappop(self._commands)
                self._next += 1
            if verb == "spawn":
                self._spawn(*args)
            elif verb == "send":
                self.local.send(*args)  # a worker that is gone: its exit is reported
            elif verb == "kill":
                self.local.kill(*args)

    def _spawn(self, spec: WorkerSpec) -> None:
        env = dict(spec.env)
        index = env.get(variables.CUDA_DEVICES)
        if index is not None and self.gpus:  # the head numbers a node's GPUs 0..n-1: this node's ids
            env[variables.CUDA_DEVICES] = self.gpus[int(index) % len(self.gpus)]
        try:
            os.makedirs(spec.cwd, exist_ok=True)
            self.local.spawn(replace(spec, env=env))
        except OSError as exc:  # a node that cannot start its workers is of no use: lost, with the reason
            self.failure = f"cannot start {spec.label} there: {exc}"
