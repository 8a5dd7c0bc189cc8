"""The messages between a worker process and the driver: one typed protocol, one dispatch per side.

Worker -> driver: :class:`Hello` (first, answered by :class:`Setup`), :class:`Ready`,
:class:`InitFailed`, :class:`LoadFailed`, :class:`Result` (one per task), :class:`Bye` (last),
:class:`Debugging` (before the attempt a :class:`Debug` named calls run()).
Driver -> worker: :class:`Setup`, :class:`Tasks` (a batch of mini-batch attempts), :class:`Stop`,
:class:`Debug` (before the Tasks that hold the attempt it names).

Output, log records, metric points and spans do not travel here: they are marker lines on the
worker's fds 1 and 2 (:mod:`pipeobs.capture`), so a kill loses none of them. A worker sends a
:class:`Result` only after the end markers of its invocation, so the driver holds a mini-batch's
output before its result.

On the wire a message is a plain tuple ``(tag, fields)``: pickling a NamedTuple costs about
three times a plain tuple (measured: 4.3 vs 1.9 µs to dump, 5.6 vs 2.1 µs to load a result),
and a result crosses for every mini-batch. :func:`encode` and :func:`decode` convert.

To add a message type: a NamedTuple here, appended to :data:`MESSAGES` (its index is its tag),
and a handler in the receiving side's dispatch table (``Driver`` or ``WorkerProcess``).
"""

from __future__ import annotations

import pickle
from typing import Any, NamedTuple


class Hello(NamedTuple):
    """A worker connected (sent once, before anything else)."""

    worker: str  # "node/processNNN"
    pid: int


class Setup(NamedTuple):
    """What a worker needs to run the entry script (the driver's answer to Hello)."""

    token: str  # the per-run marker token
    traceparent: str  # W3C context of the job span
    entry_script: str
    source_dir: str
    script_arguments: list[str]
    output_action: str
    partition_keys: list[str] | None
    profiling_module: str
    datasets: list[dict[str, Any]]  # only with partition_keys: for mini_batch_context.dataset
    scratch_dir: str
    logging_level: str | int
    worker: dict[str, Any]  # the fields of pipeobs.context.WorkerInfo


class Tasks(NamedTuple):
    """Mini-batch attempts to run, in order: ``[(MiniBatch, attempt), ...]``."""

    items: list[tuple[Any, int]]


class Stop(NamedTuple):
    """No more work: run shutdown() and exit."""



class Ready(NamedTuple):
    """init() finished (or there is none)."""

    init_seconds: float


class InitFailed(NamedTuple):
    """init() raised: the user's error (type, message, location, traceback); the worker exits 72."""

    error: dict[str, Any]


class LoadFailed(NamedTuple):
    """The entry script could not be imported, or has no run(); the worker exits 3."""

    error: dict[str, Any]


class Result(NamedTuple):
    """One finished attempt: status, item counts, times, output rows, the user's error if any."""

    mini_batch_id: int
    attempt: int
    outcome: dict[str, Any]


class Bye(NamedTuple):
    """shutdown() finished: its error, if any, and the worker's profile (pstats bytes) if asked."""

    error: dict[str, Any] | None
    profile: bytes | None


class Debug(NamedTuple):
    """Run this attempt under a debugger: listen with debugpy on host:port (0: any free port), wait
    for a debugger to attach, and stop at the first line of run()."""

    mini_batch_id: int
    attempt: int
    host: str
    port: int


class Debugging(NamedTuple):
    """debugpy listens on host:port (the port it got) and the attempt waits for a debugger; its
    Result comes when run() returns."""

    mini_batch_id: int
    attempt: int
    host: str
    port: int


Message = Hello | Setup | Tasks | Stop | Ready | InitFailed | LoadFailed | Result | Bye | Debug | Debugging
MESSAGES: tuple[type[Any], ...] = (
    Hello, Setup, Tasks, Stop, Ready, InitFailed, LoadFailed, Result, Bye, Debug, Debugging,
)
_TAGS = {kind: tag for tag, kind in enumerate(MESSAGES)}  # append new kinds: a tag never changes meaning


def encode(message: Message) -> tuple[int, tuple[Any, ...]]:
    """The wire form of a message (a plain tuple: cheap to pickle)."""
    return (_TAGS[type(message)], tuple(message))


def to_bytes(message: Message) -> bytes:
    """The message pickled, for ``Connection.send_bytes``: what ``Connection.send`` sends, made by
    :func:`pickle.dumps` (half the time of multiprocessing's pickler, which the messages do not need)."""
    return pickle.dumps(encode(message), pickle.HIGHEST_PROTOCOL)


def decode(wire: tuple[int, tuple[Any, ...]]) -> Message:
    """The message a wire tuple stands for; ValueError for anything else."""
    try:
        tag, fields = wire
        kind = MESSAGES[tag]
        return kind._make(fields)  # type: ignore[no-any-return]
    except (TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"not a pipeobs worker message: {wire!r:.80}") from exc
