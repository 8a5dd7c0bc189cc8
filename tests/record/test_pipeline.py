"""The record pipeline: one registration adds a sink; each record reaches every sink of its kind in order."""

from __future__ import annotations

from typing import Any

import pytest

from pipeobs.record.pipeline import Pipeline
from pipeobs.records import Event, Invocation, Line, Metric, Span

RUN = Invocation("run", 4, 1, "a" * 32, "b" * 16)


class Recording:
    """A sink that keeps what it gets, tagged with its name."""

    def __init__(self, name: str, seen: list[tuple[str, Any]]) -> None:
        self.name, self.seen = name, seen

    def add_line(self, line: Line) -> None:
        self.seen.append((self.name, line))

    def add_event(self, event: Event) -> None:
        self.seen.append((self.name, event))

    def flush(self) -> None:
        self.seen.append((self.name, "flush"))


class LinesOnly:
    def __init__(self) -> None:
        self.lines: list[Line] = []

    def add_line(self, line: Line) -> None:
        self.lines.append(line)


class TestPipeline:
    def test_records_reach_sinks_in_registration_order(self) -> None:
        """Two sinks, one line: the first registered sees it first."""
        seen: list[tuple[str, Any]] = []
        pipeline = Pipeline([Recording("store", seen), Recording("files", seen)])
        line = Line("stdout", RUN, "hello", worker="0/process000")

        pipeline.lines([line])

        assert seen == [("store", line), ("files", line)]

    def test_a_sink_added_later_gets_only_later_records_and_only_its_kinds(self) -> None:
        """Adding a consumer is one call; producers do not change; kinds it lacks are skipped."""
        pipeline = Pipeline()
        pipeline.lines([Line("stdout", RUN, "before")])
        sink = LinesOnly()

        pipeline.add(sink)
        pipeline.lines([Line("stdout", RUN, "after")])
        pipeline.metric(Metric(RUN, "scalar", "loss", 0.5, "", 1.0))
        pipeline.span(Span({"span_id": "x"}))

        assert [line.text for line in sink.lines] == ["after"]

    def test_removed_sinks_hear_nothing_more(self) -> None:
        """Exporters leave the pipeline before their final delivery."""
        sink = LinesOnly()
        pipeline = Pipeline([sink])

        pipeline.remove(sink)
        pipeline.lines([Line("stdout", RUN, "late")])

        assert sink.lines == []

    def test_flush_goes_to_every_sink_that_has_it(self) -> None:
        """flush() is optional for a sink."""
        seen: list[tuple[str, Any]] = []
        pipeline = Pipeline([LinesOnly(), Recording("files", seen)])

        pipeline.flush()

        assert seen == [("files", "flush")]

    def test_an_object_that_is_no_sink_is_refused(self) -> None:
        """A typo in a method name fails at registration, not silently."""
        class NotASink:
            def add_lines(self, lines: list[Line]) -> None: ...

        with pytest.raises(TypeError, match="has none of the sink methods"):
            Pipeline().add(NotASink())
