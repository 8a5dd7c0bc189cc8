"""``pipeobs replay``: one mini-batch of a recorded run again, in one process, under pdb or debugpy."""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeobs.cli import build_parser, main
from pipeobs.config import ParallelRunConfig
from pipeobs.datasets import FileDataset, TabularDataset
from pipeobs.replay_debug import add_launch_configuration, attach_configuration
from pipeobs.step import ParallelRunStep
from pipeobs.summary import summary_text
from tests.conftest import Job, RunJob, write_files, write_script
from tests.dap import DapClient

SCRIPT = """\
import json, logging, os, sys
from azureml.core import Model, Run
from azureml_user.parallel_run import EntryScript


def init():
    print("init", os.environ["GREETING"])


def run(mini_batch):
    files = [os.path.basename(p) for p in mini_batch]
    seen = {"argv": sys.argv, "cwd": os.getcwd(), "output": os.environ["AZUREML_BI_OUTPUT_PATH"],
            "greeting": os.environ["GREETING"], "model": Model.get_model_path("m"), "run_id": Run.get_context().id,
            "agent": EntryScript().agent_name, "output_dir": EntryScript().output_dir, "files": files}
    print("seen", json.dumps(seen, sort_keys=True))
    logging.getLogger("score").info("scoring %s", files)
    Run.get_context().log("items", len(files))
    if "f003.txt" in files:
        raise ValueError("cannot score f003.txt")
    return files


def shutdown():
    print("shutdown")
"""
FIRST_LINE = SCRIPT.splitlines().index("    files = [os.path.basename(p) for p in mini_batch]") + 1
RAISE_LINE = SCRIPT.splitlines().index('        raise ValueError("cannot score f003.txt")') + 1
RETURN_LINE = SCRIPT.splitlines().index("    return files") + 1


@dataclass
class Recorded:
    """A finished run of SCRIPT over f000..f005, one file per mini-batch; f003's two attempts raised."""

    job: Job
    script: Path

    @property
    def run_dir(self) -> Path:
        return self.job.run_dir

    @property
    def output_dir(self) -> Path:
        return Path(self.job.result.output_dir)

    def mini_batch_of(self, name: str) -> int:
        return int(self.job.query("SELECT id FROM mini_batches WHERE descriptor LIKE ?", f"%/{name}%")[0]["id"])

    def printed(self, mini_batch_id: int, prefix: str) -> str:
        """What the worker printed, starting with ``prefix``, for the mini-batch's first attempt."""
        rows = self.job.query("SELECT text FROM log_lines WHERE mini_batch_id = ? AND attempt = 1 AND text LIKE ?",
                              mini_batch_id, f"{prefix}%")
        return str(rows[0]["text"])


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    folder = tmp_path_factory.mktemp("recorded")
    script = write_script(folder, SCRIPT)
    (folder / "model" / "m").mkdir(parents=True)
    config = ParallelRunConfig(entry_script=str(script), process_count_per_node=2, output_action="append_row",
                               mini_batch_size=1, run_max_try=2, environment_variables={"GREETING": "hello"})
    step = ParallelRunStep("replay-step", config, [FileDataset.from_files(str(write_files(folder, 6)))],
                           output=str(folder / "out"), arguments=["--flag", "value"])
    result = step.run(folder / "runs", model_dir=folder / "model")
    return Recorded(Job(result, Path(result.run_dir)), script.resolve())


def replay(*args: Any, stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``pipeobs replay ARGS`` in a process of its own (a replay changes its process: argv, cwd, environment)."""
    return subprocess.run([sys.executable, "-m", "pipeobs", "replay", *map(str, args)], input=stdin, cwd=cwd,
                          capture_output=True, text=True, timeout=90)


def replay_folder(stderr: str) -> Path:
    match = re.search(r"^replay: folder (.+)$", stderr, re.M)
    assert match, stderr
    return Path(match.group(1))


def snapshot(*folders: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


class TestReplay:
    def test_init_run_and_shutdown_see_what_the_worker_saw(self, recorded: Recorded) -> None:
        """run() gets the mini-batch and the worker's argv, environment, model dir, Run and EntryScript; the
        paths of the run become the replay folder's."""
        mb = recorded.mini_batch_of("f001.txt")

        done = replay(recorded.run_dir, "--mini-batch", mb)

        folder = replay_folder(done.stderr)
        lines = done.stdout.splitlines()
        assert done.returncode == 0, done.stderr
        assert [line.split()[0] for line in lines] == ["init", "seen", "shutdown"] and lines[0] == "init hello"
        original = json.loads(recorded.printed(mb, "seen ").removeprefix("seen "))
        assert original["cwd"].startswith(f"{recorded.run_dir}/tmp/")
        assert json.loads(lines[1].removeprefix("seen ")) == {
            **original, "cwd": original["cwd"].replace(str(recorded.run_dir), str(folder)),
            "output": str(folder / "output"), "output_dir": str(folder / "output"), "run_id": folder.name,
        }
        assert "INFO:score:scoring ['f001.txt']" in done.stderr and "metric items (scalar): 1" in done.stderr
        assert done.stderr.rstrip().endswith("replay: run() returned 1 items for 1 inputs")

    def test_append_row_rows_go_to_the_replay_folder(self, recorded: Recorded) -> None:
        """What run() returns is written as the driver writes it, to the replay's own output file."""
        done = replay(recorded.run_dir, "--mini-batch", recorded.mini_batch_of("f002.txt"))

        assert (replay_folder(done.stderr) / "output" / "parallel_run_step.txt").read_text() == "f002.txt\n"

    def test_a_raising_run_exits_1_with_the_users_traceback(self, recorded: Recorded) -> None:
        """The user's traceback, none of pipeobs's frames, and exit code 1."""
        done = replay(recorded.run_dir, "--mini-batch", recorded.mini_batch_of("f003.txt"))

        traceback = done.stderr[done.stderr.index("Traceback"):]
        assert done.returncode == 1
        assert f'File "{recorded.script}", line {RAISE_LINE}, in run' in traceback
        assert "ValueError: cannot score f003.txt\nreplay: run() raised ValueError\n" in traceback
        assert "pipeobs" not in traceback.split("ValueError:")[0] and "shutdown" in done.stdout

    def test_nothing_is_written_into_the_run_replayed(self, recorded: Recorded) -> None:
        """The run directory and its output stay byte for byte; each replay has a new folder beside the run,
        with a note of the run it replays."""
        before = snapshot(recorded.run_dir, recorded.output_dir)

        first = replay_folder(replay(recorded.run_dir, "--mini-batch", 0).stderr)
        second = replay_folder(replay(recorded.run_dir, "--mini-batch", 0).stderr)

        assert snapshot(recorded.run_dir, recorded.output_dir) == before
        n = int(first.name.rsplit("-", 1)[1])
        assert (first.parent, first.name, second.name) == (
            recorded.run_dir.parent, f"{recorded.run_dir.name}-replay-{n}", f"{recorded.run_dir.name}-replay-{n + 1}")
        note = json.loads((first / "replay.json").read_text())
        assert (note["replay_of"], note["step_id"], note["mini_batch_id"]) == (str(recorded.run_dir), recorded.job.result.step_id, 0)

    def test_the_entry_script_is_loaded_as_it_is_now(self, run_job: RunJob, tmp_path: Path) -> None:
        """A fix to the script is tried at once (exit 0); a script that no longer imports is exit 3 with the
        user's traceback."""
        job = run_job("def run(mini_batch):\n    raise ValueError('broken')\n", files=1)
        script = tmp_path / "score.py"

        script.write_text("def run(mini_batch):\n    return mini_batch\n")
        fixed = replay(job.run_dir)
        script.write_text("import no_such_module\n\ndef run(mini_batch):\n    return mini_batch\n")
        unloadable = replay(job.run_dir)

        assert fixed.returncode == 0, fixed.stderr
        assert unloadable.returncode == 3
        assert f"error: entry script '{script.resolve()}' failed to load:\nTraceback (most recent call last):\n" in unloadable.stderr
        assert unloadable.stderr.endswith(f'  File "{script.resolve()}", line 1, in <module>\n    import no_such_module\n'
                                          "ModuleNotFoundError: No module named 'no_such_module'\n")

    @pytest.mark.parametrize("attempt", [1, 2])
    def test_the_attempt_gives_its_worker_name(self, recorded: Recorded, attempt: int) -> None:
        """--attempt K replays the inputs under the name of the worker that ran attempt K."""
        mb = recorded.mini_batch_of("f003.txt")
        worker = recorded.job.query("SELECT worker FROM attempts WHERE mini_batch_id = ? AND attempt = ?", mb, attempt)[0][0]

        done = replay(recorded.run_dir, "--mini-batch", mb, "--attempt", attempt)

        seen = json.loads(done.stdout.splitlines()[1].removeprefix("seen "))
        assert f", attempt {attempt} on {worker}: RUN_EXCEPTION: ValueError: cannot score f003.txt" in done.stderr
        assert seen["agent"] == worker.split("/")[1] and f"/tmp/{worker}" in seen["cwd"]


TABULAR_SCRIPT = """\
import json

def run(mini_batch):
    print("rows", json.dumps(mini_batch.to_dict("records")))
    return [1] * len(mini_batch)
"""


def write_table(folder: Path, kind: str) -> Any:
    import pyarrow
    import pyarrow.parquet

    if kind == "csv":
        path = folder / "t.csv"
        path.write_text("id,name\n" + "".join(f"{i},n{i}\n" for i in range(12)))
        return TabularDataset.from_delimited_files(str(path))
    path = folder / "t.parquet"
    pyarrow.parquet.write_table(pyarrow.table({"id": list(range(12)), "name": [f"n{i}" for i in range(12)]}), path,
                                row_group_size=3)
    return TabularDataset.from_parquet_files(str(path))


class TestReplayedInputs:
    @pytest.mark.parametrize("kind", ["csv", "parquet"])
    def test_byte_ranges_and_row_groups_are_the_ledgers(self, run_job: RunJob, tmp_path: Path, kind: str) -> None:
        """A tabular mini-batch is read from its recorded byte range (csv) or row groups (parquet)."""
        job = run_job(TABULAR_SCRIPT, inputs=[write_table(tmp_path, kind)], mini_batch_size=1)
        last = job.query("SELECT max(id) FROM mini_batches")[0][0]

        done = replay(job.run_dir, "--mini-batch", last)

        original = job.query("SELECT text FROM log_lines WHERE mini_batch_id = ? AND text LIKE 'rows %'", last)[0][0]
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [original]
        assert [row["id"] for row in json.loads(original.removeprefix("rows "))] == ([11] if kind == "csv" else [9, 10, 11])

    def test_partition_values_are_the_ledgers(self, run_job: RunJob, tmp_path: Path) -> None:
        """With partition_keys, run() gets the partition's values and its files, as in the worker."""
        for user in ("ann", "bob"):
            for name in ("a", "b"):
                (tmp_path / "users" / user).mkdir(parents=True, exist_ok=True)
                (tmp_path / "users" / user / f"{name}.txt").write_text(name)
        source = """\
            import json, os

            def run(mini_batch, mini_batch_context):
                files = sorted(os.path.basename(p) for p in mini_batch)
                print("partition", json.dumps([mini_batch_context.partition_key_value, files]))
                return files
        """
        dataset = FileDataset.from_files(str(tmp_path / "users"), partition_format="{user}/{name}.txt")
        job = run_job(source, inputs=[dataset], partition_keys=["user"])
        bob = job.query("SELECT id FROM mini_batches WHERE descriptor LIKE '%\"bob\"%'")[0][0]

        done = replay(job.run_dir, "--mini-batch", bob)

        original = job.query("SELECT text FROM log_lines WHERE mini_batch_id = ? AND text LIKE 'partition %'", bob)[0][0]
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [original] == ['partition [{"user": "bob"}, ["a.txt", "b.txt"]]']


def summary_replay_line(summary: str) -> str:
    return next(line for line in summary.splitlines() if line.startswith("  replay:"))


def run_printed(command: str) -> subprocess.CompletedProcess[str]:
    """A printed ``pipeobs ...`` command, exactly as printed (quoted as a shell would)."""
    program, *args = shlex.split(command)
    assert program == "pipeobs"
    return subprocess.run([sys.executable, "-m", "pipeobs", *args], capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)


class TestReplayCommandOfTheFirstError:
    def test_the_summary_prints_the_command_and_it_reproduces_the_error(self, recorded: Recorded) -> None:
        """The summary of a run names the replay of its first error, and running it raises that error."""
        mb = recorded.mini_batch_of("f003.txt")

        line = summary_replay_line(summary_text(recorded.job.result))

        assert line == f"  replay:       pipeobs replay {recorded.run_dir} --mini-batch {mb} --attempt 1"
        done = run_printed(line.split(":", 1)[1])
        assert done.returncode == 1 and "ValueError: cannot score f003.txt" in done.stderr

    def test_show_prints_the_same_command(self, recorded: Recorded, capsys: pytest.CaptureFixture[str]) -> None:
        """pipeobs show prints the replay command after the first error."""
        mb = recorded.mini_batch_of("f003.txt")

        code = main(["show", str(recorded.run_dir)])

        out = capsys.readouterr().out
        assert code == 0
        assert f"replay: pipeobs replay {recorded.run_dir} --mini-batch {mb} --attempt 1\n" in out

    def test_an_init_failure_is_replayed_with_the_first_mini_batch(self, run_job: RunJob, capsys: pytest.CaptureFixture[str]) -> None:
        """init() failed: the command replays the first mini-batch, which runs init() first; show prints it too."""
        job = run_job("""\
            def init():
                raise RuntimeError("no model here")

            def run(mini_batch):
                return mini_batch
        """)

        line = summary_replay_line(summary_text(job.result))
        main(["show", str(job.run_dir)])

        assert line == f"  replay:       pipeobs replay {job.run_dir}"
        assert f"replay: pipeobs replay {job.run_dir}\n" in capsys.readouterr().out
        done = run_printed(line.split(":", 1)[1])
        assert done.returncode == 1
        assert "in init\n" in done.stderr and "RuntimeError: no model here" in done.stderr
        assert "replay: init() raised RuntimeError: run() was not called" in done.stderr


class TestBadInput:
    @pytest.mark.parametrize(("args", "message"), [
        (["--mini-batch", "99"], "run {step_id} has no mini-batch 99: its mini-batches are 0 to 5"),
        (["--mini-batch", "{f003}", "--attempt", "7"], "mini-batch {f003} has no attempt 7: its attempts are 1, 2"),
        (["--wait"], "--wait waits for a debugger to attach to debugpy: add --debugpy [HOST:]PORT"),
        (["--pdb", "--debugpy", "0"], "--debugpy (or --vscode) and --pdb/--pm are two debuggers at once: use one"),
    ])
    def test_one_line_error_exit_2_and_nothing_created(self, recorded: Recorded, capsys: pytest.CaptureFixture[str],
                                                        args: list[str], message: str) -> None:
        """A mini-batch or attempt the run does not have, or debugger options that do not go together."""
        names = {"step_id": recorded.job.result.step_id, "f003": recorded.mini_batch_of("f003.txt")}
        before = sorted(recorded.run_dir.parent.iterdir())

        code = main(["replay", str(recorded.run_dir), *(a.format(**names) for a in args)])

        assert code == 2
        assert capsys.readouterr().err == f"error: {message.format(**names)}\n"
        assert sorted(recorded.run_dir.parent.iterdir()) == before

    def test_a_bad_debugpy_address(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--debugpy takes [HOST:]PORT: anything else is a usage error, exit 2."""
        with pytest.raises(SystemExit) as exited:
            main(["replay", "RUN", "--debugpy", "localhost:http"])

        assert exited.value.code == 2
        assert capsys.readouterr().err == (
            "error: argument --debugpy: invalid [HOST:]PORT 'localhost:http' (a port from 0 to 65535; 0 picks a free one)\n")

    def test_a_folder_that_is_not_a_run(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """Not a run directory: the explorer's one-line error, exit 2."""
        code = main(["replay", str(tmp_path)])

        assert code == 2
        assert capsys.readouterr().err.startswith(f"error: no run '{tmp_path}': give a run directory")

    def test_without_debugpy_the_error_names_the_extra(self, recorded: Recorded, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
        """--debugpy without debugpy installed: one line naming pipeobs[debug], exit 2."""
        monkeypatch.setitem(sys.modules, "debugpy", None)  # what an absent package looks like to import
        monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")

        code = main(["replay", str(recorded.run_dir), "--debugpy", "0"])

        assert code == 2
        assert capsys.readouterr().err == "error: --debugpy and --vscode need debugpy: pip install 'pipeobs[debug]'\n"

    def test_a_busy_port_is_a_one_line_error(self, recorded: Recorded) -> None:
        """debugpy cannot listen on a port in use: one line, exit 2, no replay folder."""
        before = sorted(recorded.run_dir.parent.iterdir())
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]

            done = replay(recorded.run_dir, "--debugpy", f"127.0.0.1:{port}")

        assert done.returncode == 2
        assert re.fullmatch(rf"error: debugpy cannot listen on 127\.0\.0\.1:{port}: [^\n]*Address already in use\n", done.stderr)
        assert sorted(recorded.run_dir.parent.iterdir()) == before

    def test_the_replay_parser_imports_no_debugger(self) -> None:
        """Building the CLI and parsing a --debugpy replay imports neither debugpy nor the replay's worker."""
        code = ("import sys; from pipeobs.cli import build_parser; import pipeobs.summary; "
                "build_parser().parse_args(['replay', 'RUN', '--debugpy', '0', '--vscode']); "
                "print(sorted(m for m in ('debugpy', 'pipeobs.replay_worker', 'pipeobs.replay_debug') if m in sys.modules))")

        loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout

        assert loaded == "[]\n"


class TestPdb:
    def test_pdb_stops_at_the_first_line_of_run(self, recorded: Recorded) -> None:
        """--pdb: pdb's prompt at run()'s first line, with the mini-batch at hand; 'c' finishes the replay."""
        done = replay(recorded.run_dir, "--mini-batch", recorded.mini_batch_of("f001.txt"), "--pdb", stdin="p mini_batch\nc\n")

        assert done.returncode == 0, done.stderr
        stop = done.stdout.index(f"> {recorded.script}({FIRST_LINE})run()\n-> files = [os.path.basename(p) for p in mini_batch]\n(Pdb) ")
        assert done.stdout.index(repr([str(recorded.script.parent / "data" / "f001.txt")])) > stop
        assert done.stdout.rstrip().endswith("shutdown")

    def test_pm_opens_pdb_where_run_raised(self, recorded: Recorded) -> None:
        """--pm: after the user's traceback, pdb post-mortem at the raising line, its locals at hand."""
        done = replay(recorded.run_dir, "--mini-batch", recorded.mini_batch_of("f003.txt"), "--pm", stdin="p files\nq\n")

        assert done.returncode == 1
        assert f"> {recorded.script}({RAISE_LINE})run()\n-> raise ValueError(\"cannot score f003.txt\")\n(Pdb) ['f003.txt']\n" in done.stdout

    def test_quitting_pdb_ends_the_replay(self, recorded: Recorded) -> None:
        """'q' at the first line: run() does not finish, shutdown() is not called, exit 1."""
        done = replay(recorded.run_dir, "--mini-batch", recorded.mini_batch_of("f001.txt"), "--pdb", stdin="q\n")

        assert done.returncode == 1
        assert done.stderr.rstrip().endswith("replay: quit in the debugger: run() did not finish")
        assert "seen" not in done.stdout and "shutdown" not in done.stdout


def wait_for_line(stream: Any, pattern: str, timeout: float = 60.0) -> re.Match[str]:
    """Read a child's unbuffered stream until a line matches ``pattern``; fail past ``timeout``."""
    text = ""
    deadline = time.monotonic() + timeout
    while not (match := re.search(pattern, text, re.M)):
        remaining = deadline - time.monotonic()
        assert remaining > 0 and select.select([stream], [], [], remaining)[0], f"no line matching {pattern!r}: {text}"
        chunk = os.read(stream.fileno(), 65536)
        assert chunk, f"the stream ended before a line matching {pattern!r}: {text}"
        text += chunk.decode()
    return match


def start_replay(*args: Any, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "pipeobs", "replay", *map(str, args)], cwd=cwd, bufsize=0,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    out, _err = proc.communicate(timeout=60)
    return proc.returncode, out.decode()


class TestDebugpy:
    def test_a_dap_client_stops_on_a_breakpoint_in_run(self, recorded: Recorded) -> None:
        """--debugpy 0 --wait: a DAP client attaches, its breakpoint in run() stops the replay there, the stack
        names run, and after 'continue' the replay ends with exit 0."""
        proc = start_replay(recorded.run_dir, "--mini-batch", recorded.mini_batch_of("f001.txt"), "--debugpy", "0", "--wait")
        try:
            listening = wait_for_line(proc.stderr, r"^replay: debugpy listening on 127\.0\.0\.1:(\d+)$")
            dap = DapClient("127.0.0.1", int(listening.group(1)))
            dap.attach({recorded.script: RETURN_LINE}, just_my_code=False)
            stopped = dap.event("stopped")
            frames = dap.request("stackTrace", threadId=stopped["body"]["threadId"])["body"]["stackFrames"]
            dap.request("continue", threadId=stopped["body"]["threadId"])
            dap.event("terminated")
            dap.disconnect()
            code, out = finish(proc)
        finally:
            proc.kill()

        assert stopped["body"]["reason"] == "breakpoint"
        assert (frames[0]["name"], frames[0]["line"], frames[0]["source"]["path"]) == ("run", RETURN_LINE, str(recorded.script))
        assert code == 0 and out.splitlines()[-1] == "shutdown"

    def test_vscode_writes_a_launch_configuration_that_attaches(self, recorded: Recorded, tmp_path: Path) -> None:
        """--vscode: .vscode/launch.json holds an attach configuration for the port debugpy listens on, the source
        folder mapped to itself; a client attaching with it lets the replay run to the end."""
        proc = start_replay(recorded.run_dir, "--mini-batch", 0, "--debugpy", "0", "--vscode", cwd=tmp_path)
        try:
            wait_for_line(proc.stderr, r"^replay: waiting for a debugger to attach")
            launch = json.loads((tmp_path / ".vscode" / "launch.json").read_text())
            configuration = launch["configurations"][0]
            dap = DapClient(configuration["connect"]["host"], configuration["connect"]["port"])
            dap.attach(just_my_code=False)
            dap.event("terminated")
            dap.disconnect()
            code, _out = finish(proc)
        finally:
            proc.kill()

        source = str(recorded.script.parent)
        assert launch["version"] == "0.2.0" and len(launch["configurations"]) == 1
        assert configuration == {"name": "pipeobs replay", "type": "debugpy", "request": "attach",
                                 "connect": {"host": "127.0.0.1", "port": configuration["connect"]["port"]},
                                 "pathMappings": [{"localRoot": source, "remoteRoot": source}]}
        assert code == 0


class TestLaunchJson:
    def test_other_configurations_are_kept_and_ours_replaced(self, tmp_path: Path) -> None:
        """An existing launch.json keeps its configurations; a second replay's replaces the first's."""
        path = tmp_path / ".vscode" / "launch.json"
        path.parent.mkdir()
        path.write_text(json.dumps({"version": "0.2.0", "configurations": [{"name": "mine", "type": "debugpy"}]}))

        add_launch_configuration(path, attach_configuration("127.0.0.1", 5678, "/src"))
        add_launch_configuration(path, attach_configuration("127.0.0.1", 5679, "/src"))

        configurations = json.loads(path.read_text())["configurations"]
        assert [(c["name"], c.get("connect", {}).get("port")) for c in configurations] == [("mine", None), ("pipeobs replay", 5679)]

    def test_a_file_with_comments_is_left_alone(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """VS Code's own launch.json holds comments: pipeobs leaves it and prints the configuration to add."""
        path = tmp_path / "launch.json"
        path.write_text('{\n  // Use IntelliSense\n  "version": "0.2.0", "configurations": []\n}\n')
        before = path.read_text()

        add_launch_configuration(path, attach_configuration("127.0.0.1", 5678, "/src"))

        assert path.read_text() == before
        err = capsys.readouterr().err
        assert "is not plain JSON" in err and json.loads(err[err.index("{"):])["connect"] == {"host": "127.0.0.1", "port": 5678}


def test_debugpy_takes_a_host_and_a_port() -> None:
    """--debugpy HOST:PORT listens where asked; PORT alone means 127.0.0.1."""
    parse = build_parser().parse_args

    assert parse(["replay", "RUN", "--debugpy", "0.0.0.0:5678"]).debugpy == ("0.0.0.0", 5678)
    assert parse(["replay", "RUN", "--debugpy", "5678"]).debugpy == ("127.0.0.1", 5678)
