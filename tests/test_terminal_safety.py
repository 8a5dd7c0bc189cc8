"""Text from user code reaches a terminal or a pipe with its control characters made visible."""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from pipeobs.cli import main
from tests.conftest import write_files, write_script

EVIL = "\x1b]0;pwned\x07\x1b[2J\rX\bY"
MARKUP = "[bold red]x[/]"
SHOWN = "\\x1b]0;pwned\\x07\\x1b[2J\\rX\\x08Y" + MARKUP  # what a reader sees of EVIL + MARKUP
CONTROLS = ("\x1b", "\x07", "\r", "\b")
ON_A_TERMINAL = ("\x1b]0;pwned", "\x1b[2J", "\x07", "\r", "\b")  # rich styles may use ESC there, nothing else

SCORE = r"""
import logging
from azureml.core import Run
from opentelemetry import trace

EVIL = "\x1b]0;pwned\x07\x1b[2J\rX\bY" + "[bold red]x[/]"
log = logging.getLogger("score")

def run(mini_batch):
    print(EVIL)
    log.warning(EVIL)
    Run.get_context().log(EVIL, 1.0)
    Run.get_context().tag("note", EVIL)
    with trace.get_tracer("score").start_as_current_span(EVIL) as span:
        span.add_event("checked", {"note": EVIL})
    if str(mini_batch[0]).endswith("f000.txt"):
        raise ValueError(EVIL)
    return [str(p) for p in mini_batch]
"""


class TerminalStream(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def evil_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A finished run of SCORE under a runs folder whose name holds EVIL too; and what `pipeobs run` printed."""
    folder = tmp_path_factory.mktemp("evil")
    write_script(folder, SCORE)
    data = write_files(folder, 3)
    runs = folder / ("runs" + EVIL + MARKUP)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["run", str(folder / "score.py"), "--input", str(data), "--mini-batch-size", "1",
                     "--run-max-try", "1", "--process-count-per-node", "1", "--runs-dir", str(runs)])
    assert code == 0
    return runs, out.getvalue()


COMMANDS = {"logs": ("logs",), "show": ("show",), "trace": ("trace",), "runs": ("runs",),
            "metrics": ("metrics",), "metric": ("metrics", EVIL + MARKUP)}


def explore(runs: Path, name: str, *extra: str) -> int:
    command, *args = COMMANDS[name]
    target = str(runs) if command == "runs" else str(next(runs.glob("*/*")))
    return main([command, target, *args, *extra])


class TestWhenPiped:
    @pytest.mark.parametrize("name", COMMANDS)
    def test_control_characters_are_escaped_and_markup_is_literal(self, evil_run: tuple[Path, str], name: str,
                                                                  capsys: Any) -> None:
        """Every explorer view prints the user's text with \\x1b, \\r... escaped and its [markup] as typed."""
        assert explore(evil_run[0], name) == 0

        out = capsys.readouterr().out
        assert SHOWN in out
        assert not [c for c in CONTROLS if c in out]

    def test_an_error_suggesting_a_metric_name_escapes_it(self, evil_run: tuple[Path, str], capsys: Any) -> None:
        """metrics NAME for a name the run lacks suggests the closest one, escaped, on stderr."""
        assert explore(evil_run[0], "metrics", (EVIL + MARKUP)[:-1]) == 2

        err = capsys.readouterr().err
        assert f"did you mean {SHOWN}?" in err
        assert not [c for c in CONTROLS if c in err]

    def test_an_error_line_escapes_the_users_text(self, tmp_path: Path, capsys: Any) -> None:
        """An entry script that fails to import: the error: line (with the user's traceback) is escaped."""
        write_script(tmp_path, f"raise ImportError({EVIL!r})\ndef run(mb):\n    return mb\n")
        write_files(tmp_path, 1)

        code = main(["run", str(tmp_path / "score.py"), "--input", str(tmp_path / "data"),
                     "--runs-dir", str(tmp_path / "runs")])

        err = capsys.readouterr().err
        assert code == 3 and err.startswith("error: ")
        assert "\\x1b]0;pwned\\x07" in err and not [c for c in CONTROLS if c in err]

    def test_the_end_of_run_summary_escapes_the_first_error(self, evil_run: tuple[Path, str]) -> None:
        """pipeobs run's summary names the first error, escaped."""
        printed = evil_run[1]

        assert f"ValueError: {SHOWN}" in printed
        assert not [c for c in CONTROLS if c in printed]


class TestOnATerminal:
    @pytest.mark.parametrize("name", COMMANDS)
    def test_control_characters_are_escaped_and_markup_is_literal(self, evil_run: tuple[Path, str], name: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
        """On a terminal too: only rich's own styling reaches it, never the user's sequences."""
        terminal = TerminalStream()
        monkeypatch.setattr("sys.stdout", terminal)
        monkeypatch.setenv("COLUMNS", "300")

        assert explore(evil_run[0], name) == 0

        out = terminal.getvalue()
        assert SHOWN in out
        assert not [c for c in ON_A_TERMINAL if c in out]


class TestAsCaptured:
    def test_raw_and_json_give_the_text_as_the_store_keeps_it(self, evil_run: tuple[Path, str], capsys: Any) -> None:
        """logs --raw prints the captured bytes, --json the original strings; the store keeps them unchanged."""
        runs = evil_run[0]
        assert explore(runs, "logs", "--raw", "--grep", "^\x1b") == 0
        raw = capsys.readouterr().out
        assert explore(runs, "logs", "--json") == 0
        lines = json.loads(capsys.readouterr().out)
        with contextlib.closing(sqlite3.connect(next(runs.glob("*/*/pipeobs.db")))) as conn:
            stored = {row[0] for row in conn.execute("SELECT text FROM log_lines WHERE stream != 'stderr'")}

        assert stored == {EVIL + MARKUP}
        assert raw.count(f" {EVIL + MARKUP}\n") == 6  # a print and a log record per mini-batch
        assert {line["text"] for line in lines if line["stream"] != "stderr"} == {EVIL + MARKUP}
