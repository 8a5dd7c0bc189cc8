"""Fakes for tests, shipped with pipeobs: an executor without processes and a clock that jumps.

:class:`FakeExecutor` implements the executor interface with scripted workers, so the driver's
retry, timeout, crash and threshold logic runs in-process, in simulated time: its workers
answer the protocol as real ones do (Ready after Setup, a begin marker then a Result per task,
Bye after Stop), and a script decides each attempt's fate::

    executor = FakeExecutor(run=lambda mb, attempt, worker: "error" if mb == 3 else "ok")
    result = Driver(plan, executor=executor, clock=executor.clock).run()

Fates of an attempt: ``"ok"`` (every item succeeds), ``"partial"`` (all but one), ``"error"``
(run() raises), ``"crash"`` (the process dies, signal 11), ``"hang"`` (never answers: the
driver's clock must kill it). Fates of ``init()``: ``"ok"``, ``"fail"``, ``"hang"``.

The clock moves only when nothing is due and some worker hangs: then each ``poll(timeout)``
advances it by ``timeout``, so a 60 s timeout passes in a few hundred loop turns.
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeobs.executors.base import Executor, ExecutorEvents, WorkerSpec
from pipeobs.protocol import Bye, InitFailed, Message, Ready, Result, Setup, Stop, Tasks
from pipeobs.records import Invocation, Line
from pipeobs.streams import Boundary

RunScript = Callable[[int, int, str], str]  # (mini_batch_id, attempt, worker) -> fate
InitScript = Callable[[str], str]  # worker -> fate


@dataclass
class FakeClock:
    """Monotonic seconds that pass only when told to."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeWorker:
    label: str
    pid: int
    hung: bool = False
    tasks: collections.deque[tuple[Any, int]] = field(default_factory=collections.deque)


class FakeExecutor(Executor):
    """Scripted workers in this process; records what the driver asked of it."""

    name = "fake"

    def __init__(self, run: RunScript | None = None, init: InitScript | None = None,
                 clock: FakeClock | None = None) -> None:
        self.run_script = run or (lambda _mb, _attempt, _worker: "ok")
        self.init_script = init or (lambda _worker: "ok")
        self.clock = clock or FakeClock()
        self.workers: dict[str, FakeWorker] = {}
        self.spawned: list[str] = []
        self.killed: list[str] = []
        self.attempts: list[tuple[int, int, str, str]] = []  # (mini-batch, attempt, worker, fate)
        self._pids = itertools.count(4_000_000)
        self._due: collections.deque[Callable[[], None]] = collections.deque()
        self._woken = threading.Event()
        self._events: ExecutorEvents | None = None

    @property
    def events(self) -> ExecutorEvents:
        assert self._events is not None, "open() first"
        return self._events

    def open(self, events: ExecutorEvents, token: str) -> None:
        self._events = events

    def spawn(self, spec: WorkerSpec) -> int:
        worker = FakeWorker(spec.label, next(self._pids))
        self.workers[worker.label] = worker
        self.spawned.append(worker.label)
        self._due.append(lambda: self.events.worker_connected(worker.label, worker.pid))
        return worker.pid

    def send(self, worker: str, message: Message) -> bool:
        fake = self.workers.get(worker)
        if fake is None:
            return False
        if isinstance(message, Setup):
            self._due.append(lambda: self._init(fake))
        elif isinstance(message, Tasks):
            fake.tasks.extend(message.items)
            self._due.append(lambda: self._work(fake))
        elif isinstance(message, Stop):
            self._due.append(lambda: self._message(fake, Bye(None, None)))
            self._due.append(lambda: self._exit(fake, 0))
        return True

    def kill(self, worker: str) -> None:
        fake = self.workers.get(worker)
        if fake is not None:
            self.killed.append(worker)
            self._due.append(lambda: self._exit(fake, -9))

    def poll(self, timeout: float) -> bool:
        if not self._due:
            if any(w.hung for w in self.workers.values()):
                self.clock.advance(timeout)
            else:  # waiting for the partition thread: real time, briefly
                self._woken.wait(min(timeout, 0.01))
            self._woken.clear()
            return False
        while self._due:
            self._due.popleft()()
        return True

    def wake(self) -> None:
        self._woken.set()

    def close(self) -> None:
        self.workers.clear()

    # ------------------------------------------------------------------ the scripted workers
    def _alive(self, fake: FakeWorker) -> bool:
        return self.workers.get(fake.label) is fake

    def _message(self, fake: FakeWorker, message: Message) -> None:
        if self._alive(fake):
            self.events.worker_message(fake.label, message)

    def _exit(self, fake: FakeWorker, returncode: int) -> None:
        if self._alive(fake):
            del self.workers[fake.label]
            self.events.worker_exited(fake.label, returncode)

    def _init(self, fake: FakeWorker) -> None:
        fate = self.init_script(fake.label)
        if fate == "ok":
            self._message(fake, Ready(0.001))
        elif fate == "fail":
            error = {"type": "RuntimeError", "message": "init failed", "location": "score.py:2 in init",
                     "traceback": "Traceback (most recent call last):\nRuntimeError: init failed"}
            self._message(fake, InitFailed(error))
            self._exit(fake, 72)
        else:
            fake.hung = True

    def _work(self, fake: FakeWorker) -> None:
        while fake.tasks and not fake.hung and self._alive(fake):
            mini_batch, attempt = fake.tasks.popleft()
            fate = self.run_script(mini_batch.id, attempt, fake.label)
            self.attempts.append((mini_batch.id, attempt, fake.label, fate))
            invocation = Invocation("run", mini_batch.id, attempt, "0" * 32, f"{mini_batch.id:08x}{attempt:08x}")
            now = self.clock()
            self.events.worker_output(fake.label, [
                Boundary("stdout", invocation),  # a real worker writes the begin marker to both streams
                Boundary("stderr", invocation),
                Line("stdout", invocation, f"scoring mini batch {mini_batch.id}", time=now, worker=fake.label),
            ])
            if fate == "hang":
                fake.hung = True
            elif fate == "crash":
                self._exit(fake, -11)
            else:
                self._message(fake, Result(mini_batch.id, attempt, _outcome(mini_batch, fate, invocation)))


def _outcome(mini_batch: Any, fate: str, invocation: Invocation) -> dict[str, Any]:
    total = mini_batch.item_count or 0
    outcome: dict[str, Any] = {"start_time": 0.0, "total": total, "trace_id": invocation.trace_id,
                               "span_id": invocation.span_id, "elapsed": 0.001, "process_seconds": 0.001,
                               "run_seconds": 0.001}
    if fate == "error":
        outcome.update(status="RUN_EXCEPTION", error={
            "type": "ValueError", "message": f"bad input in mini batch {mini_batch.id}", "location": "score.py:5 in run",
            "traceback": f"Traceback (most recent call last):\nValueError: bad input in mini batch {mini_batch.id}",
        })
        return outcome
    succeeded = total - 1 if fate == "partial" else total
    rows = "".join(f"{mini_batch.id}-{i}\n" for i in range(succeeded)).encode()
    outcome.update(status="RUN_DONE", succeeded=succeeded, returned=succeeded, rows=rows, header=None)
    return outcome
