"""The record pipeline: every record of a run passes through one list of sinks.

A sink is any object with some of the methods ``add_line(Line)``, ``add_metric(Metric)``,
``add_span(Span)``, ``add_event(Event)`` (records of :mod:`pipeobs.records`), and optionally
``add_lines(items)`` (the lines of one read at once, in order, as :class:`~pipeobs.records.Line`,
:class:`~pipeobs.records.LineBlock` and :class:`~pipeobs.records.RecordBlock` records: a sink that
writes them together saves most of its per-line cost; a sink without it gets each line from
``add_line``), ``flush()`` and ``close()``. The store, the per-process files, the driver log and
the exporters are sinks; a live alert evaluator or a web view following the run would be one more
``pipeline.add(sink)``, with no change to the producers (the driver, the job telemetry).

Sinks are called in the order they were added, on the driver's thread. A sink must not block:
slow work (network delivery) belongs behind a queue of its own, as the exporters' delivery does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pipeobs.records import Event, Line, LineBlock, Metric, RecordBlock, Span, expand

Lines = Sequence[Line | LineBlock | RecordBlock]  # what one call of add_lines takes

KINDS = ("add_line", "add_metric", "add_span", "add_event")
_ONE_BY_ONE = ("add_metric", "add_span", "add_event")  # lines go through lines(): each sink's _lines_of


class Pipeline:
    """Hands each record to the sinks that take its kind."""

    def __init__(self, sinks: list[Any] | None = None) -> None:
        self.sinks: list[Any] = []
        self._targets: dict[str, list[Callable[[Any], None]]] = {kind: [] for kind in _ONE_BY_ONE}
        self._line_batches: list[Callable[[Lines], None]] = []
        for sink in sinks or []:
            self.add(sink)

    def add(self, sink: Any) -> None:
        """Register a sink: it receives every later record of the kinds it has a method for."""
        if not any(callable(getattr(sink, kind, None)) for kind in KINDS):
            raise TypeError(f"{type(sink).__name__} has none of the sink methods {', '.join(KINDS)}")
        self.sinks.append(sink)
        self._rebuild()

    def remove(self, sink: Any) -> None:
        self.sinks.remove(sink)
        self._rebuild()

    def _rebuild(self) -> None:
        for kind, targets in self._targets.items():
            targets[:] = [getattr(s, kind) for s in self.sinks if callable(getattr(s, kind, None))]
        self._line_batches = [_lines_of(s) for s in self.sinks if callable(getattr(s, "add_line", None))]

    def lines(self, records: Lines) -> None:
        """Lines in order, handed to each sink together."""
        for target in self._line_batches:
            target(records)

    def metric(self, record: Metric) -> None:
        for target in self._targets["add_metric"]:
            target(record)

    def span(self, record: Span) -> None:
        for target in self._targets["add_span"]:
            target(record)

    def event(self, record: Event) -> None:
        for target in self._targets["add_event"]:
            target(record)

    def flush(self) -> None:
        """Flush the sinks in order (the store first: its commit is what readers see)."""
        for sink in self.sinks:
            flush = getattr(sink, "flush", None)
            if flush is not None:
                flush()

    def close(self) -> None:
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                close()


def _lines_of(sink: Any) -> Callable[[Lines], None]:
    """The sink's ``add_lines``, or one ``add_line`` call per line."""
    add_lines = getattr(sink, "add_lines", None)
    if callable(add_lines):
        return add_lines
    add_line = sink.add_line

    def each(records: Lines) -> None:
        for record in expand(records):
            add_line(record)

    return each
