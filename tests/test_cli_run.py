"""``pipeobs run`` end to end: exit codes, one-line errors, YAML, and resume after SIGKILL."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeobs.cli import main
from pipeobs.config import ParallelRunConfig
from pipeobs.datasets import FileDataset
from pipeobs.step import ParallelRunStep
from tests.conftest import write_files, write_rendezvous, write_script

ECHO = "import os\ndef run(mb):\n    return [os.path.basename(p) for p in mb]\n"


def pipeobs(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeobs", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


class TestExitCodes:
    def test_success_prints_summary_and_paths(self, tmp_path: Path) -> None:
        """A good run exits 0 and says where the output and logs are."""
        write_script(tmp_path, ECHO)
        write_files(tmp_path, 4)

        proc = pipeobs("run", "score.py", "--input", "data", "--output-action", "append_row", cwd=tmp_path)

        assert proc.returncode == 0, proc.stderr
        assert "Completed: step score" in proc.stdout
        assert "parallel_run_step.txt" in proc.stdout
        assert "70_driver_log.txt" in proc.stdout

    @pytest.mark.parametrize(
        ("source", "name", "expected"),
        [
            (None, "missing.py", "error: entry script 'missing.py' does not exist; check the path"),
            ("def run(mb):\n    return mb\n", "score.txt", "is not a Python file (.py)"),
            ("def run(mb)\n    return mb\n", "score.py", "has a syntax error"),
            ("def init():\n    pass\n", "score.py", "has no run() function"),
            ("import not_a_module_xyz\ndef run(mb):\n    return mb\n", "score.py", "ModuleNotFoundError"),
        ],
        ids=["missing", "not-python", "syntax", "no-run", "import-error"],
    )
    def test_bad_entry_script_exits_3(self, tmp_path: Path, source: str | None, name: str, expected: str) -> None:
        """A script that cannot be loaded gives one clear error, exit 3, no pipeobs traceback."""
        if source is not None:
            write_script(tmp_path, source, name)
        write_files(tmp_path, 2)

        proc = pipeobs("run", name, "--input", "data", cwd=tmp_path)

        assert proc.returncode == 3, proc.stderr
        assert expected in proc.stderr
        assert "pipeobs/" not in proc.stderr.replace(str(tmp_path), "")

    def test_syntax_error_names_file_and_line(self, tmp_path: Path) -> None:
        """A syntax error shows the user's file and line."""
        write_script(tmp_path, "def run(mb):\n    return mb +\n")
        write_files(tmp_path, 1)

        proc = pipeobs("run", "score.py", "--input", "data", cwd=tmp_path)

        assert 'score.py", line 2' in proc.stderr

    @pytest.mark.parametrize(
        ("args", "expected"),
        [
            (["--input", "nope"], "error: input 'nope' does not exist"),
            (["--input", "empty"], "matched no files"),
            (["--input", "data", "--run-max-try", "0"], "error: Parameter run_max_try must be an integer greater than 0."),
            (["--input", "data", "--mini-batch-size", "1.5MB"], r"must follow regex rule ^\d+([kKmMgG][bB])*$."),
            (["--input", "bad.parquet", "--tabular"], "is not a valid Parquet file"),
            (["--input", "data", "--output", "taken.txt"], "error: output 'taken.txt' is an existing file, not a folder"),
            (["--input", "data", "--logging-level", "LOUD"], "is not a logging level: use one of DEBUG, INFO"),
            (["--input", "header.csv", "--tabular"], "hold no data"),
        ],
        ids=["missing-input", "empty-input", "bad-config", "bad-size", "corrupt-parquet", "output-is-a-file",
             "logging-level", "header-only-csv"],
    )
    def test_bad_input_exits_2(self, tmp_path: Path, args: list[str], expected: str) -> None:
        """Bad inputs and config values exit 2 with one line naming the problem."""
        write_script(tmp_path, ECHO)
        write_files(tmp_path, 1)
        (tmp_path / "empty").mkdir()
        (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
        (tmp_path / "taken.txt").write_text("somebody's file\n")
        (tmp_path / "header.csv").write_text("a,b\n")

        proc = pipeobs("run", "score.py", *args, cwd=tmp_path)

        assert proc.returncode == 2, proc.stderr
        assert expected in proc.stderr
        assert "Traceback" not in proc.stderr
        assert (tmp_path / "taken.txt").read_text() == "somebody's file\n"

    def test_failed_job_exits_42_and_names_first_error(self, tmp_path: Path) -> None:
        """A job over its error threshold exits 42; the summary names the user's error and file:line."""
        write_script(tmp_path, "def run(mb):\n    raise KeyError('label')\n")
        write_files(tmp_path, 2)

        proc = pipeobs("run", "score.py", "--input", "data", "--error-threshold", "0", "--run-max-try", "1", cwd=tmp_path)

        assert proc.returncode == 42
        assert "KeyError: 'label'" in proc.stdout
        assert "score.py:2" in proc.stdout
        assert "which exceeds error threshold 0" in proc.stdout

    def test_corrupt_csv_fails_the_job_with_the_reader_error(self, tmp_path: Path) -> None:
        """Unparseable CSV rows fail their mini-batch with the reader's message (exit 42)."""
        write_script(tmp_path, "def run(df):\n    return df\n")
        (tmp_path / "bad.csv").write_text("a,b\n1,2\n3,4,5,6\n")

        proc = pipeobs("run", "score.py", "--input", "bad.csv", "--tabular", "--error-threshold", "0", "--run-max-try", "1", cwd=tmp_path)

        assert proc.returncode == 42
        assert "ParserError: Error tokenizing data" in proc.stdout

    @pytest.mark.parametrize(
        ("line", "key"),
        [
            ("retry_settings: 5", "retry_settings"),
            ("retry_settings: {timeout: [60]}", "retry_settings.timeout"),
            ("resources: [2]", "resources"),
            ("environment_variables: [1, 2]", "environment_variables"),
            ("environment_variables: {MODE: [fast]}", "environment_variables"),
            ("export: 5", "export"),
            ("export_deadline: soon", "export_deadline"),
            ("entry_script: [score.py]", "entry_script"),
            ("inputs: 5", "inputs"),
            ("inputs: {data: 1}", "inputs"),
            ("inputs: [data, 5]", "inputs"),
            ("arguments: 5", "arguments"),
            ("arguments: [--model_dir, [model/]]", "arguments"),
            ("output: [out]", "output"),
            ("model_dir: [models]", "model_dir"),
            ("tabular: maybe", "tabular"),
            ("format: xls", "format"),
            ("description: [a, b]", "description"),
        ],
    )
    def test_yaml_value_of_the_wrong_type_exits_2_naming_the_key(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], line: str, key: str
    ) -> None:
        """A job YAML value of the wrong shape anywhere is one error line naming its key (exit 2)."""
        write_script(tmp_path, ECHO)
        write_files(tmp_path, 1)
        (tmp_path / "job.yaml").write_text(f"entry_script: score.py\ninputs: [data]\n{line}\n")
        monkeypatch.chdir(tmp_path)

        code = main(["run", "-c", "job.yaml"])

        err = capsys.readouterr().err
        assert code == 2
        assert err.startswith(f"error: '{key}' in job.yaml must be ")
        assert err.count("\n") == 1
        assert "Traceback" not in err

    @pytest.mark.parametrize("damage", ["random-bytes", "truncated", "no-pipeobs-tables"])
    def test_resume_of_a_damaged_store_exits_2_naming_it(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
    ) -> None:
        """--resume on a pipeobs.db that is corrupt or not pipeobs's exits 2 naming the file, and leaves it alone."""
        write_script(tmp_path, ECHO)
        step = ParallelRunStep("damaged", ParallelRunConfig(entry_script=str(tmp_path / "score.py")),
                               [FileDataset.from_files(str(write_files(tmp_path, 2)))])
        store = Path(step.plan(tmp_path / "runs").run_dir.store)
        if damage == "random-bytes":
            store.write_bytes(os.urandom(8192))
        elif damage == "truncated":
            store.write_bytes(store.read_bytes()[: store.stat().st_size // 2])
        else:
            store.unlink()
            sqlite3.connect(store).execute("CREATE TABLE notes (text TEXT)").connection.close()
        before = store.read_bytes()

        code = main(["run", "--resume", str(store.parent)])

        err = capsys.readouterr().err
        assert code == 2
        assert err.startswith(f"error: cannot resume: '{store}' is damaged or not a pipeobs store (")
        assert err.endswith("); start the run again without --resume\n")
        assert err.count("\n") == 1
        assert store.read_bytes() == before

    @pytest.mark.parametrize(
        "flags", [["--process-count-per-node", "100000"], ["--node-count", "50000", "--process-count-per-node", "2"]]
    )
    def test_more_workers_than_the_machine_can_run_exits_2_before_any_starts(
        self, tmp_path: Path, flags: list[str]
    ) -> None:
        """A worker count far beyond the machine is refused with the limit and the override; no worker starts."""
        started = tmp_path / "init-ran"
        write_script(tmp_path, f"def init():\n    open({str(started)!r}, 'w').close()\n" + ECHO)
        write_files(tmp_path, 2)

        proc = pipeobs("run", "score.py", "--input", "data", *flags, cwd=tmp_path)

        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error: 100000 worker processes")
        assert "more than this machine can run: the limit is " in proc.stderr
        assert "PIPEOBS_ALLOW_MANY_PROCESSES=1" in proc.stderr
        assert not started.exists()
        assert not (tmp_path / "runs").exists()


class TestYaml:
    def test_yaml_config_with_flag_override(self, tmp_path: Path) -> None:
        """A job YAML works and a flag overrides its value."""
        write_script(tmp_path, ECHO)
        write_files(tmp_path, 4)
        (tmp_path / "job.yaml").write_text(
            "entry_script: score.py\ninputs: [data]\noutput_action: append_row\n"
            "append_row_file_name: from_yaml.txt\nmini_batch_size: '2'\n"
        )

        proc = pipeobs("run", "-c", "job.yaml", "--append-row-file-name", "from_flag.txt", cwd=tmp_path)

        assert proc.returncode == 0, proc.stderr
        assert "from_flag.txt" in proc.stdout
        assert "2 succeeded, 0 failed, 2 total" in proc.stdout


class TestResume:
    GATED = """
    import os, rendezvous
    def run(mini_batch):
        names = [os.path.basename(p) for p in mini_batch]
        if max(names) >= "f020.txt":  # only the first 10 mini-batches finish before the driver is killed
            rendezvous.wait_for({gate!r}, timeout=60)
        return [name + " row" for name in names]
    """

    def test_resume_after_driver_sigkill_keeps_each_row_once(self, tmp_path: Path) -> None:
        """A driver killed with SIGKILL resumes: only unfinished mini-batches run, rows exactly once."""
        gate = tmp_path / "driver-killed"
        write_rendezvous(tmp_path)
        write_script(tmp_path, self.GATED.format(gate=str(gate)))
        write_files(tmp_path, 120)
        cmd = [sys.executable, "-m", "pipeobs", "run", "score.py", "--input", "data", "--mini-batch-size", "2",
               "--output-action", "append_row", "--process-count-per-node", "2", "--name", "resume-me"]
        driver = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            run_dir = self._wait_for_done(tmp_path / "runs" / "resume-me", at_least=10)
        finally:
            driver.send_signal(signal.SIGKILL)
            driver.wait()
        done_before = self._done(run_dir)
        output = run_dir / "output" / "parallel_run_step.txt"
        with open(output, "a") as handle:  # rows written after the last ledger commit
            handle.write("f999.txt row\npartial")
        gate.touch()  # the resumed run finishes every mini-batch

        proc = pipeobs("run", "--resume", str(run_dir), cwd=tmp_path)

        lines = output.read_text().splitlines()
        ran_after = sqlite3.connect(run_dir / "pipeobs.db").execute(
            "SELECT COUNT(DISTINCT mini_batch_id) FROM attempts WHERE status='RUN_DONE'").fetchone()[0]
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert sorted(lines) == sorted(f"f{i:03d}.txt row" for i in range(120))
        assert done_before == 10
        assert ran_after == 60

    def _wait_for_done(self, root: Path, at_least: int) -> Path:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for run_dir in root.glob("*"):
                if (run_dir / "pipeobs.db").exists() and self._done(run_dir) >= at_least:
                    return run_dir
            time.sleep(0.02)
        raise AssertionError("the run did not make progress")

    @staticmethod
    def _done(run_dir: Path) -> int:
        try:
            conn = sqlite3.connect(f"file:{run_dir / 'pipeobs.db'}?mode=ro", uri=True)
            try:
                return conn.execute("SELECT COUNT(*) FROM mini_batches WHERE status='done'").fetchone()[0]
            finally:
                conn.close()
        except sqlite3.OperationalError:
            return 0

    def test_resume_of_completed_run_is_refused(self, tmp_path: Path) -> None:
        """Resuming a completed run says there is nothing to do (exit 2)."""
        write_script(tmp_path, ECHO)
        write_files(tmp_path, 2)
        pipeobs("run", "score.py", "--input", "data", "--name", "done-run", cwd=tmp_path)
        run_dir = next((tmp_path / "runs" / "done-run").glob("*"))

        proc = pipeobs("run", "--resume", str(run_dir), cwd=tmp_path)

        assert proc.returncode == 2
        assert "already completed" in proc.stderr


def test_unknown_flag_did_you_mean(tmp_path: Path) -> None:
    """Misspelled advanced flags fail with a suggestion instead of passing silently."""
    proc = pipeobs("run", "score.py", "--input", "x", "--resource_monitor_interva", "20", cwd=tmp_path)

    assert proc.returncode == 2
    assert "did you mean --resource_monitor_interval?" in proc.stderr
    assert os.linesep.join(proc.stderr.splitlines()[-1:]).startswith("error:")
