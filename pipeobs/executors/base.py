"""The executor interface: where worker processes live, and how the driver hears of them.

An executor is a node supervisor (or a set of them): it spawns, replaces and kills worker
processes, holds their stdout/stderr byte streams, parses the marker lines into records
(:class:`~pipeobs.streams.StreamParser`), carries the worker protocol's messages
(:mod:`pipeobs.protocol`) and notices exits. It reports all of that to the head driver through
:class:`ExecutorEvents`, on the driver's thread, from inside :meth:`Executor.poll`.

The driver owns everything else: the ledger, retries, clocks, thresholds, outputs and the run
directory. So a remote node (a Ray actor supervising that node's worker processes, sending
parsed records, messages and exits to the head in batches) implements this interface without
touching the ledger; the local executor (:mod:`pipeobs.executors.local`) is one implementation,
the fake of :mod:`pipeobs.testing` another.

Guarantees an implementation gives:

* ``worker_connected`` comes before any ``worker_message`` of that worker;
* ``worker_exited`` comes last for a worker, after every message it sent and every byte it
  (and the children of its process group) wrote before the exit was delivered; by then the
  whole process group is killed;
* ``kill`` is asynchronous: the exit is reported by a later ``poll`` (or at once, from inside
  ``kill``, where exits cannot be watched);
* ``node_lost`` (executors with remote nodes) comes before the exits of that node's workers.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pipeobs.protocol import Message


class ExecutorEvents(Protocol):
    """What the driver hears from its executor."""

    def worker_connected(self, worker: str, pid: int) -> None:
        """The worker's channel is open: answer with its :class:`~pipeobs.protocol.Setup`."""

    def worker_message(self, worker: str, message: Message) -> None:
        """A protocol message from the worker (Ready, Result, InitFailed, LoadFailed, Bye)."""

    def worker_output(self, worker: str, items: Sequence[Any]) -> None:
        """Parsed stream items in stream order: Lines, Metrics, Spans and Boundaries (capture)."""

    def worker_exited(self, worker: str, returncode: int) -> None:
        """The worker is gone (negative returncode: killed by that signal)."""

    def node_sampled(self, node: int, samples: list[tuple[str, int, dict[str, float]]],
                     machine: tuple[str, ...]) -> None:
        """Resource samples taken on a remote node (``(processNNN, pid, row)`` per worker, and the
        machine's row): where the driver cannot sample the workers itself (``local_pids`` False)."""

    def node_lost(self, node: int, reason: str) -> None:
        """A whole node is gone (a remote supervisor died): an exit for each of its workers follows,
        and no worker may be started there again."""


@dataclass(frozen=True)
class WorkerSpec:
    """A worker process to start: its node, its ``processNNN`` name, environment and folder."""

    node: int
    name: str
    env: dict[str, str]
    cwd: str

    @property
    def label(self) -> str:
        return f"{self.node}/{self.name}"


class Executor(abc.ABC):
    """Starts workers and reports on them; see the module docstring for the guarantees."""

    name: str
    local_pids = True  # worker pids are processes of this machine (the resource monitor samples them)

    def placement(self) -> list[str]:
        """Where each node runs, one sentence per node, for the driver log (none: all on this machine)."""
        return []

    @abc.abstractmethod
    def open(self, events: ExecutorEvents, token: str) -> None:
        """Get ready to spawn: ``token`` is the run's marker token for the stream parsers."""

    @abc.abstractmethod
    def spawn(self, spec: WorkerSpec) -> int | None:
        """Start a worker process; its pid if known now (else it comes with worker_connected)."""

    @abc.abstractmethod
    def send(self, worker: str, message: Message) -> bool:
        """Send a protocol message; False when the worker is gone (its exit will be reported)."""

    @abc.abstractmethod
    def kill(self, worker: str) -> None:
        """SIGKILL the worker and its process group."""

    @abc.abstractmethod
    def poll(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds, then report what happened; True if anything did."""

    @abc.abstractmethod
    def wake(self) -> None:
        """Make a running or the next ``poll`` return soon (thread-safe)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Kill what is left and release everything (idempotent)."""
