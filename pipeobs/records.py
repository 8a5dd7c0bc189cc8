"""The typed records of a run: what flows from the workers (and the driver) to the sinks.

Every captured line, log record, metric point, span and driver event is one of the records
below. The driver passes each through its :class:`~pipeobs.record.pipeline.Pipeline`, a list
of sinks (the store, the per-process files, the driver log, the exporters, ...), so a new
consumer is a new sink and the producers never change for it.

This module is imported by every worker process: it stays free of heavy imports.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any


@dataclass(frozen=True, slots=True)
class Invocation:
    """What a worker is running: ``init``, ``run`` (a mini-batch attempt) or ``shutdown``.

    Records of the driver itself use ``job``; lines written between invocations ``worker``.
    """

    phase: str
    mini_batch_id: int | None = None
    attempt: int | None = None
    trace_id: str | None = None
    span_id: str | None = None  # the invocation's span: lines and metrics carry it


IDLE = Invocation("worker")


@dataclass(slots=True)
class Line:
    """One captured line (or a piece of a very long one) with its attribution."""

    stream: str  # "stdout" | "stderr" | "log"
    invocation: Invocation
    text: str
    level: str | None = None
    logger: str | None = None
    system: bool = False  # pipeobs's own record: goes to the system log, never to user logs
    entry_script: bool = False  # written through EntryScript().logger
    continued: bool = False
    time: float | None = None  # log records carry their own time; lines get the time they were read
    custom_dimensions: dict[str, Any] | None = None  # extra={"custom_dimensions": {...}}
    worker: str = ""  # "node/processNNN"
    sent_to: tuple[str, ...] = ()  # destinations the entry script's own log handlers sent it to


@dataclass(slots=True)
class LineBlock:
    """Complete plain lines read together from one stream of one invocation (one time, no level, logger
    or dimensions): sinks that take :meth:`lines` write them together; others get them one by one."""

    stream: str  # "stdout" | "stderr"
    invocation: Invocation
    texts: list[str]
    time: float
    worker: str = ""

    def lines(self) -> list[Line]:
        return [Line(self.stream, self.invocation, text, time=self.time, worker=self.worker) for text in self.texts]


@dataclass(slots=True)
class RecordBlock:
    """Log records read together from one worker's stderr within one invocation, column by column: the
    driver decodes them at once and the sinks that take :meth:`lines` write them together; others get
    them one by one as ``Line(stream="log", ...)``."""

    invocation: Invocation
    times: Sequence[str]  # as the worker wrote them (repr: float() gives each back exactly)
    levels: Sequence[str]
    loggers: Sequence[str]
    messages: Sequence[str]
    flags: Sequence[str] | None = None  # per record "<s><e>[;dest,...]" (see log_flags); None: none has any
    dimensions: Sequence[dict[str, Any] | None] | None = None  # None: no record has custom dimensions
    worker: str = ""

    def lines(self) -> list[Line]:
        inv, worker = self.invocation, self.worker
        flags = map(log_flags, self.flags) if self.flags is not None else repeat((False, False, ()))
        dimensions = self.dimensions if self.dimensions is not None else repeat(None)
        columns = zip(self.times, self.levels, self.loggers, self.messages, flags, dimensions, strict=False)  # repeat()s
        return [
            Line("log", inv, message, level=level, logger=logger, system=system, entry_script=entry_script,
                 time=float(when), custom_dimensions=dims, worker=worker, sent_to=sent_to)
            for when, level, logger, message, (system, entry_script, sent_to), dims in columns
        ]


def log_flags(flags: str) -> tuple[bool, bool, tuple[str, ...]]:
    """A log record's flags field: ``s`` pipeobs's own record, ``e`` EntryScript's logger, then ``;`` and the
    comma-separated destinations the entry script's own handlers sent it to. -> (system, entry_script, sent_to)"""
    kinds, _, sent_to = flags.partition(";")
    return "s" in kinds, "e" in kinds, tuple(sent_to.split(",")) if sent_to else ()


def count_records(items: Iterable[Any]) -> int:
    """How many records ``items`` stand for: a block counts its lines or log records (bounds on what is held
    count records, not blocks)."""
    count = 0
    for item in items:
        kind = type(item)
        count += len(item.texts) if kind is LineBlock else len(item.times) if kind is RecordBlock else 1
    return count


def expand(items: Iterable[Any]) -> list[Any]:
    """``items`` with each :class:`LineBlock` and :class:`RecordBlock` replaced by its lines."""
    out: list[Any] = []
    for item in items:
        kind = type(item)
        if kind is LineBlock or kind is RecordBlock:
            out.extend(item.lines())
        else:
            out.append(item)
    return out


@dataclass(slots=True)
class Metric:
    """A metric point: a ``Run.log``-family value or tag of the entry script, or a built-in series.

    ``kind`` is ``scalar | list | row | table | tag | param`` for the user's values (``param``: an MLflow param), ``counter | gauge |
    histogram`` for the built-in series, ``observation`` for per-attempt built-in points.
    """

    invocation: Invocation
    kind: str
    name: str
    value: Any
    description: str
    time: float
    worker: str | None = None
    labels: str | None = None  # JSON object of the Prometheus labels, sorted keys

    def number_or_json(self) -> tuple[float | None, str | None]:
        """``(value, None)`` for a number, ``(None, JSON text)`` for anything else (lists, tags, rows).

        NaN is ``(None, "NaN")``: SQLite would store it as NULL. ``±inf`` are numbers (SQLite's REAL holds them).
        """
        value = self.value
        if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
            return value, None
        return None, json.dumps(value)


@dataclass(slots=True)
class Span:
    """A finished span (see :mod:`pipeobs.telemetry.spans` for the two forms of ``record``)."""

    record: dict[str, Any]
    worker: str = ""

    def where(self) -> tuple[str | None, int | None, int | None]:
        """``(worker, mini_batch_id, attempt)``: a worker's wire record says; a driver-built span
        (the job span, or one of a killed worker) carries them as attributes."""
        record = self.record
        if "attributes_json" in record:
            return record["worker"] or self.worker, record["mini_batch_id"], record["attempt"]
        attributes = record["attributes"]
        return (
            attributes.get("pipeobs.worker", None if self.worker == "driver" else self.worker),
            attributes.get("pipeobs.mini_batch_id"),
            attributes.get("pipeobs.attempt"),
        )


@dataclass(slots=True)
class Event:
    """A line of the driver's own narrative: worker starts and exits, timeouts, threshold stops."""

    time: float
    level: str
    kind: str
    message: str
    worker: str | None = None
