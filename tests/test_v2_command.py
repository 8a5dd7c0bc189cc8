"""A v2 command job run locally: real bash processes, recorded in a run directory the explorer reads."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from pipeobs.cli import main
from pipeobs.errors import RunDirError
from pipeobs.explorer.runs import list_runs
from pipeobs.jobs import JobResult
from pipeobs.record.store import Store, connect
from pipeobs.v2.command import STD_LOG, CommandRun, print_command_result, run_command

PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
PARENT = f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"


def command_job(tmp_path: Path, command: str, name: str = "train", **options: Any) -> CommandRun:
    step_id = f"{name}_20270101_000000_abcdef"
    options.setdefault("code_dir", str(tmp_path))
    return CommandRun(name=name, step_id=step_id, run_dir=tmp_path / "runs" / name / step_id, command=command, **options)


def run(tmp_path: Path, command: str, **options: Any) -> JobResult:
    return run_command(command_job(tmp_path, command, **options))


def query(result: JobResult, sql: str) -> list[sqlite3.Row]:
    conn = connect(Path(result.run_dir) / "pipeobs.db", readonly=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def lines(result: JobResult, stream: str | None = None) -> list[str]:
    where = f" WHERE stream = '{stream}'" if stream else ""
    return [r["text"] for r in query(result, f"SELECT text FROM log_lines{where} ORDER BY id")]


def span(result: JobResult) -> dict[str, Any]:
    (row,) = query(result, "SELECT * FROM spans")
    return {**dict(row), "attributes": json.loads(row["attributes"])}


def std_log(result: JobResult) -> str:
    return (Path(result.run_dir) / STD_LOG).read_text()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(condition: Any, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


class TestOutput:
    def test_lines_are_stored_and_logged_in_order(self, tmp_path: Path) -> None:
        """Each line reaches the store, std_log.txt and the echo callback, in the order written."""
        echoed: list[str] = []

        result = run(tmp_path, "for i in 1 2 3 4 5; do echo line $i; done", echo=echoed.append)

        expected = [f"line {i}" for i in range(1, 6)]
        assert result.status == "Completed" and result.reason is None
        assert lines(result) == expected
        assert echoed == expected
        assert std_log(result) == "".join(f"{line}\n" for line in expected)

    def test_stdout_and_stderr_are_told_apart(self, tmp_path: Path) -> None:
        """stdout and stderr lines are stored with their own stream, attributed to the command's span."""
        result = run(tmp_path, "echo out; echo err >&2")

        assert lines(result, "stdout") == ["out"]
        assert lines(result, "stderr") == ["err"]
        ids = {(r["worker"], r["phase"], r["trace_id"], r["span_id"]) for r in query(result, "SELECT * FROM log_lines")}
        assert ids == {("command", "command", span(result)["trace_id"], span(result)["span_id"])}

    def test_a_partial_last_line_is_kept(self, tmp_path: Path) -> None:
        """Output that does not end with a newline is stored as a last line, and kept as written in std_log.txt."""
        result = run(tmp_path, "printf 'first\\nno newline'")

        assert lines(result) == ["first", "no newline"]
        assert std_log(result) == "first\nno newline"

    def test_an_unterminated_line_is_not_glued_to_the_other_stream(self, tmp_path: Path) -> None:
        """A line ends at its newline or at the end of its stream; std_log.txt starts the next stream's line
        on a line of its own."""
        result = run(tmp_path, "printf partial; exec 1>&-; sleep 0.2; echo err >&2")

        assert lines(result) == ["partial", "err"]
        assert std_log(result) == "partial\nerr\n"

    def test_a_hundred_thousand_lines_on_both_streams_are_all_stored(self, tmp_path: Path) -> None:
        """A command flooding both pipes at once neither stalls nor loses a line."""
        started = time.monotonic()

        result = run(tmp_path, "seq 100000 & seq 100000 >&2; wait")

        assert result.status == "Completed"
        for stream in ("stdout", "stderr"):
            stored = lines(result, stream)
            assert len(stored) == 100_000 and stored[0] == "1" and stored[-1] == "100000"
        assert std_log(result).count("\n") == 200_000
        assert time.monotonic() - started < 60


class TestOutcome:
    def test_a_non_zero_exit_fails_with_the_code_and_the_last_stderr_line(self, tmp_path: Path) -> None:
        """Exit code 3 is Failed, the reason naming the code and the last stderr line, in the result, row and span."""
        result = run(tmp_path, "echo starting; echo 'bad input' >&2; echo; exit 3")

        reason = "command exited with code 3: bad input"
        assert (result.status, result.reason) == ("Failed", reason)
        (row,) = query(result, "SELECT * FROM runs")
        assert (row["status"], row["error"], row["kind"]) == ("Failed", reason, "command")
        assert row["ended_at"] >= row["started_at"]
        recorded = span(result)
        assert (recorded["status"], recorded["status_message"]) == ("ERROR", reason)
        assert recorded["attributes"]["pipeobs.exit_code"] == 3

    def test_success_is_recorded_in_the_run_row_and_the_span(self, tmp_path: Path) -> None:
        """A command exiting 0 is Completed; its one span (the pending one replaced) names the step and command."""
        result = run(tmp_path, "true", record={"yaml": "job.yml", "inputs": {"epochs": 3}}, parent_step_id="pipe_1")

        assert result.ok and result.output_dir == result.run_dir and result.output_path is None
        assert result.mini_batches_total == result.items_total == 0
        (row,) = query(result, "SELECT * FROM runs")
        assert (row["status"], row["step_name"], row["entry_script"], row["parent_step_id"]) == \
            ("Completed", "train", "true", "pipe_1")
        assert json.loads(row["config"])["yaml"] == "job.yml"
        assert json.loads(row["inputs"]) == {"epochs": 3}
        assert json.loads(row["summary"])["status"] == "Completed"
        recorded = span(result)
        assert (recorded["name"], recorded["status"], recorded["parent_span_id"]) == ("command", "OK", None)
        assert recorded["end_time"] is not None
        assert {k: recorded["attributes"][k] for k in ("pipeobs.step_id", "pipeobs.step_name", "pipeobs.command",
                                                       "pipeobs.exit_code")} == \
            {"pipeobs.step_id": result.step_id, "pipeobs.step_name": "train", "pipeobs.command": "true",
             "pipeobs.exit_code": 0}

    def test_timeout_kills_the_command_and_its_children_quickly(self, tmp_path: Path) -> None:
        """Past limits.timeout the whole process group is killed and the run fails saying so."""
        started = time.monotonic()

        result = run(tmp_path, "sleep 30 & echo $! > child.pid; echo waiting; sleep 30", timeout=1.0)

        assert time.monotonic() - started < 10
        assert (result.status, result.reason) == ("Failed", "command ran longer than limits.timeout (1 s)")
        assert lines(result) == ["waiting"]
        child = int((tmp_path / "child.pid").read_text())
        assert wait_for(lambda: gone(child))

    def test_a_command_killed_by_a_signal_says_which(self, tmp_path: Path) -> None:
        """bash killed by a signal: Failed, naming the signal."""
        result = run(tmp_path, "kill -KILL $$")

        assert (result.status, result.reason) == ("Failed", "command was killed by SIGKILL")

    def test_background_processes_end_with_the_command(self, tmp_path: Path) -> None:
        """A process left running while holding the command's stdout neither keeps the run open nor outlives it."""
        started = time.monotonic()

        result = run(tmp_path, "sleep 30 & echo $! > child.pid; echo done")

        assert result.status == "Completed" and lines(result) == ["done"]
        assert time.monotonic() - started < 10
        assert wait_for(lambda: gone(int((tmp_path / "child.pid").read_text())))

    def test_a_missing_code_folder_fails_in_one_line(self, tmp_path: Path) -> None:
        """A code folder that does not exist fails the run with a one-line reason naming it, and no traceback."""
        result = run(tmp_path, "true", code_dir=str(tmp_path / "missing"))

        assert result.status == "Failed"
        assert result.reason == f"the command's code folder '{tmp_path / 'missing'}' does not exist: check the job's 'code'"
        assert query(result, "SELECT status FROM runs")[0]["status"] == "Failed"
        assert span(result)["status"] == "ERROR"

    def test_a_command_that_cannot_start_fails_in_one_line(self, tmp_path: Path) -> None:
        """No bash on the PATH: Failed with the reason, not an exception."""
        result = run(tmp_path, "true", environment_variables={"PATH": str(tmp_path / "empty")})

        assert result.status == "Failed"
        assert result.reason is not None and result.reason.startswith("cannot start the command with bash: ")
        assert "\n" not in result.reason

    def test_a_used_run_directory_is_refused(self, tmp_path: Path) -> None:
        """A second command never writes into another run's directory."""
        job = command_job(tmp_path, "true")
        run_command(job)

        with pytest.raises(RunDirError, match="already holds a run"):
            run_command(job)


class TestEnvironment:
    def test_outputs_folders_exist_before_the_command_runs(self, tmp_path: Path) -> None:
        """uri_folder and mltable outputs get their folder, a uri_file output its parent folder."""
        out = tmp_path / "out"
        outputs = {"model": ("uri_folder", str(out / "model")), "table": ("mltable", str(out / "table")),
                   "report": ("uri_file", str(out / "reports" / "report.txt"))}

        result = run(tmp_path, "test -d out/model && test -d out/table && test -d out/reports && "
                               "test ! -e out/reports/report.txt", outputs=outputs)

        assert result.status == "Completed", result.reason

    def test_the_command_sees_the_job_variables_and_the_run_identity(self, tmp_path: Path) -> None:
        """The job's variables, MLFLOW_TRACKING_URI inside the run dir, AZUREML_RUN_ID and a TRACEPARENT of the
        command span, in the pipeline's trace; cwd is the code folder."""
        code = tmp_path / "code"
        code.mkdir()

        result = run(tmp_path, 'echo "$GREETING"; echo "$MLFLOW_TRACKING_URI"; echo "$AZUREML_RUN_ID"; '
                               'echo "$TRACEPARENT"; pwd', code_dir=str(code),
                     environment_variables={"GREETING": "hello"}, parent_traceparent=PARENT)

        greeting, mlflow, run_id, traceparent, cwd = lines(result)
        assert greeting == "hello"
        assert mlflow == (Path(result.run_dir) / "mlruns").as_uri()
        assert run_id == result.step_id
        assert Path(cwd) == code
        recorded = span(result)
        assert traceparent == f"00-{recorded['trace_id']}-{recorded['span_id']}-01"
        assert recorded["trace_id"] == PARENT_TRACE
        assert recorded["parent_span_id"] == PARENT_SPAN

    def test_the_job_may_set_its_own_mlflow_tracking_uri(self, tmp_path: Path) -> None:
        """MLFLOW_TRACKING_URI from the job's environment_variables wins."""
        result = run(tmp_path, 'echo "$MLFLOW_TRACKING_URI"', environment_variables={"MLFLOW_TRACKING_URI": "file:/x"})

        assert lines(result) == ["file:/x"]

    def test_mlflow_may_use_its_file_store(self, tmp_path: Path) -> None:
        """MLflow 3 writes to the run directory's file store only when allowed to: the command is."""
        result = run(tmp_path, 'echo "$MLFLOW_ALLOW_FILE_STORE"')

        assert lines(result) == ["true"]


class TestInterrupt:
    def test_ctrl_c_kills_the_group_marks_the_run_interrupted_and_is_raised(self, tmp_path: Path) -> None:
        """Ctrl-C while the command runs: its group is killed, the run and span end Interrupted, the interrupt goes on."""
        def interrupt(line: str) -> None:
            if line.startswith("child"):
                raise KeyboardInterrupt

        job = command_job(tmp_path, "sleep 30 & echo child $!; sleep 30", echo=interrupt)

        with pytest.raises(KeyboardInterrupt):
            run_command(job)

        store = connect(job.run_dir / "pipeobs.db", readonly=True)
        row = store.execute("SELECT status, error FROM runs").fetchone()
        recorded = store.execute("SELECT status, end_time FROM spans").fetchone()
        child = int(store.execute("SELECT text FROM log_lines").fetchone()[0].split()[1])
        store.close()
        assert tuple(row) == ("Interrupted", "The run was interrupted by SIGINT.")
        assert recorded["status"] == "ERROR" and recorded["end_time"] is not None
        assert wait_for(lambda: gone(child))

    def test_sigterm_ends_the_run_interrupted(self, tmp_path: Path) -> None:
        """SIGTERM to the process running the command: Interrupted, the command killed, Terminated raised (143)."""
        job = command_job(tmp_path, "echo ready $$; sleep 30")
        script = (
            "import sys\nfrom pathlib import Path\nfrom pipeobs.v2.command import CommandRun, run_command\n"
            f"job = CommandRun(name={job.name!r}, step_id={job.step_id!r}, run_dir=Path({str(job.run_dir)!r}), "
            f"command={job.command!r}, code_dir={job.code_dir!r})\n"
            "try:\n    run_command(job)\nexcept KeyboardInterrupt as exc:\n    sys.exit(exc.exit_code)\n"
        )
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        process = subprocess.Popen([sys.executable, "-c", script], env=env)
        store_path = job.run_dir / "pipeobs.db"

        def ready() -> list[str]:
            if not store_path.exists():
                return []
            conn = connect(store_path, readonly=True)
            try:
                return [r[0] for r in conn.execute("SELECT text FROM log_lines")]
            except sqlite3.Error:
                return []
            finally:
                conn.close()

        try:
            assert wait_for(ready, 30)
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 143
        finally:
            process.kill()
        conn = connect(store_path, readonly=True)
        status = conn.execute("SELECT status, error FROM runs").fetchone()
        conn.close()
        assert tuple(status) == ("Interrupted", "The run was interrupted by SIGTERM.")
        assert wait_for(lambda: gone(int(ready()[0].split()[1])))


class TestExplorer:
    def test_show_logs_trace_and_runs_read_a_command_run(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """The explorer's commands work on a command run: no mini-batch sections, the lines, the span."""
        result = run(tmp_path, "echo hello; echo 'it broke' >&2; exit 2")
        capsys.readouterr()

        assert main(["show", result.run_dir]) == 0
        shown = capsys.readouterr().out
        assert "command exited with code 2: it broke" in shown and "echo hello" in shown
        assert "mini-batches" not in shown
        assert main(["logs", result.run_dir]) == 0
        logged = capsys.readouterr().out.splitlines()
        assert sorted(line.split(" ", 3)[1:] for line in logged) == \
            [["command", "command", "STDERR it broke"], ["command", "command", "STDOUT hello"]]  # two pipes: any order
        assert main(["trace", result.run_dir]) == 0
        assert "command" in capsys.readouterr().out
        assert main(["runs", str(tmp_path / "runs")]) == 0
        listed = capsys.readouterr().out
        assert result.step_id in listed and "Failed" in listed

    def test_runs_lists_command_and_older_runs_alike(self, tmp_path: Path) -> None:
        """A store written before runs had kind and parent_step_id still lists, as a step."""
        result = run(tmp_path, "true")
        old = tmp_path / "runs" / "old" / "old_1"
        old.mkdir(parents=True)
        Store(old / "pipeobs.db", "old_1").close()
        conn = sqlite3.connect(old / "pipeobs.db")
        conn.execute("ALTER TABLE runs DROP COLUMN kind")
        conn.execute("ALTER TABLE runs DROP COLUMN parent_step_id")
        conn.execute("INSERT INTO runs (step_id, step_name, status, started_at) VALUES ('old_1', 'old', 'Completed', 1)")
        conn.commit()
        conn.close()

        found = {r["step_id"]: r for r in list_runs(tmp_path / "runs")}

        assert found["old_1"]["kind"] == "step"
        assert (found[result.step_id]["kind"], found[result.step_id]["status"]) == ("command", "Completed")


class TestSummary:
    def test_the_summary_says_status_duration_run_dir_and_reason(self, tmp_path: Path) -> None:
        """print_command_result names the outcome, where the run is and why it failed."""
        result = run(tmp_path, "exit 5")
        out = io.StringIO()

        print_command_result(result, out)

        text = out.getvalue()
        assert text.startswith(f"Failed: command train, run {result.step_id}\n")
        assert f"run dir:      {result.run_dir}" in text
        assert f"std log:      {Path(result.run_dir) / STD_LOG}" in text
        assert "reason:       command exited with code 5" in text
        assert "duration:" in text
