"""What pipeobs run prints while running: a rich bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import io
import time

from pipeobs.jobs import ProgressView
from pipeobs.summary import Progress


def fake_driver(done: int, total: int) -> ProgressView:
    return ProgressView("score", done, total, time.monotonic() - 2.0)


class TerminalStream(io.StringIO):
    def isatty(self) -> bool:
        return True


class TestProgress:
    def test_plain_lines_when_not_a_terminal(self) -> None:
        """Without a terminal, progress is a plain line with counts and an ETA."""
        stream = io.StringIO()

        with Progress(stream, interval=0) as progress:
            progress.update(fake_driver(5, 20))

        assert stream.getvalue().startswith("Processed 5 of 20 mini batches in 2 s, ETA 6 s.")

    def test_no_line_without_progress(self) -> None:
        """Nothing is printed while no mini-batch has finished."""
        stream = io.StringIO()

        with Progress(stream, interval=0) as progress:
            progress.update(fake_driver(0, 20))

        assert stream.getvalue() == ""

    def test_rich_bar_on_a_terminal(self) -> None:
        """On a terminal, a rich progress bar shows done/total mini-batches."""
        stream = TerminalStream()

        with Progress(stream, interval=0) as progress:
            progress.update(fake_driver(7, 20))

        out = stream.getvalue()
        assert "7/20" in out and "mini-batches" in out and "score" in out
