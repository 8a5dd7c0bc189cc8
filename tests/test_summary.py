"""What pipeobs run prints while running (a rich bar on a terminal, plain lines otherwise) and at the end."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

from pipeobs.jobs import JobResult, ProgressView
from pipeobs.summary import Progress, summary_text
from tests.conftest import RunJob


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

    def test_the_step_name_is_escaped_and_never_read_as_markup(self) -> None:
        """On a terminal, control characters in the name show escaped and its [markup] as typed."""
        stream = TerminalStream()

        with Progress(stream, interval=0) as progress:
            progress.update(ProgressView("\x1b]0;pwned\x07[bold red]x[/]", 1, 2, time.monotonic()))

        out = stream.getvalue()
        assert "\\x1b]0;pwned\\x07[bold red]x[/]" in out and "\x1b]0;pwned" not in out


def result(**values: Any) -> JobResult:
    base: dict[str, Any] = {
        "status": "Failed", "step_id": "s_1", "step_name": "s", "run_dir": "runs/s/s_1", "output_path": None,
        "output_dir": "out", "mini_batches_total": 40, "mini_batches_succeeded": 0, "mini_batches_failed": 0,
        "items_total": 40, "items_succeeded": 0, "items_failed": 0, "duration_seconds": 2.0,
    }
    return JobResult(**{**base, **values})


class TestSummaryRate:
    def test_no_rate_when_no_mini_batch_ran(self) -> None:
        """init() failed everywhere: nothing ran, so there is no mini-batches/s to speak of."""
        text = summary_text(result(reason="The init() in the entry script had failed for 4 times."))

        assert "duration:     2.00 s; retries 0" in text and "mini-batches/s" not in text

    def test_the_rate_counts_what_ran_not_what_was_scheduled(self) -> None:
        """An interrupted run processed 8 of 40 in 2 s: 4.0 mini-batches/s, not 20."""
        text = summary_text(result(status="Interrupted", mini_batches_succeeded=6, mini_batches_failed=2))

        assert "duration:     2.00 s (4.0 mini-batches/s)" in text


MAKEDIRS = "os.makedirs(path, exist_ok=True)"


class TestEmptyOutputCallout:
    def declared(self, tmp_path: Path, **values: Any) -> JobResult:
        """A summary_only step that declared tmp_path/out as its output and ran some mini-batches."""
        return result(**{"run_dir": str(tmp_path / "run"), "output_dir": str(tmp_path / "out"),
                         "mini_batches_succeeded": 3, **values})

    def test_a_folder_the_script_never_created(self, tmp_path: Path) -> None:
        """A declared output folder that does not exist at the end is called out with the fix."""
        text = summary_text(self.declared(tmp_path))

        assert f"output:       {tmp_path / 'out'} was never created" in text and MAKEDIRS in text

    def test_a_folder_left_empty(self, tmp_path: Path) -> None:
        """A declared output folder with nothing in it is called out with the fix."""
        (tmp_path / "out").mkdir()

        text = summary_text(self.declared(tmp_path))

        assert f"output:       {tmp_path / 'out'} is empty" in text and MAKEDIRS in text

    def test_called_out_only_for_a_declared_summary_only_folder_with_nothing_in_it(self, tmp_path: Path) -> None:
        """Not when the script wrote there, nor for append_row (the driver writes its file), nor for the default
        folder of a step that declared no output, nor when run() was never called (init() failed, say)."""
        (tmp_path / "written").mkdir()
        (tmp_path / "written" / "scores.csv").write_text("1\n")
        cases = {
            "missing": self.declared(tmp_path),
            "written": self.declared(tmp_path, output_dir=str(tmp_path / "written")),
            "append_row": self.declared(tmp_path, output_path=str(tmp_path / "out" / "parallel_run_step.txt")),
            "not declared": self.declared(tmp_path, output_dir=str(tmp_path / "run" / "output")),
            "nothing ran": self.declared(tmp_path, mini_batches_succeeded=0),
        }

        called_out = {name: MAKEDIRS in summary_text(r) for name, r in cases.items()}

        assert called_out == {"missing": True, "written": False, "append_row": False, "not declared": False,
                              "nothing ran": False}

    def test_a_real_run_writing_into_a_missing_output_folder(self, run_job: RunJob, tmp_path: Path) -> None:
        """A summary_only script that opens files in AZUREML_BI_OUTPUT_PATH without creating it gets the fix."""
        job = run_job(
            """
            import os

            def run(mini_batch):
                for path in mini_batch:
                    with open(os.path.join(os.environ["AZUREML_BI_OUTPUT_PATH"], os.path.basename(path)), "w") as out:
                        out.write("scored\\n")
                return list(mini_batch)
            """,
            files=2, output_action="summary_only", process_count_per_node=1, run_max_try=1,
        )

        text = summary_text(job.result)

        assert job.result.mini_batches_failed == 1
        assert f"output:       {tmp_path / 'out'} was never created" in text and MAKEDIRS in text
