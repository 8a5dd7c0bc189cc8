"""``pipeobs diff``: two real runs of one step compared, and the environment each run records."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import shutil
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeobs.cli import main
from pipeobs.config import ParallelRunConfig
from pipeobs.datasets import FileDataset
from pipeobs.step import ParallelRunStep
from tests.conftest import write_files, write_script

# Scores every file; with --fail it cannot score f006.txt (which only run B has).
SCRIPT = """
import os, sys
from azureml.core import Run

def run(mini_batch):
    failing = "--fail" in sys.argv
    if failing and any(os.path.basename(p) == "f006.txt" for p in mini_batch):
        raise ValueError("cannot score f006.txt")
    Run.get_context().log("score", 0.5 if failing else 1.0)
    return list(mini_batch)
"""
SECRET = "s3cr3t-value-never-recorded"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """Run A (local): 6 files, error_threshold -1. Run B (the cluster): a 7th file, error_threshold 0,
    other arguments, a config variable and a process variable more; it fails on the 7th file."""
    root = tmp_path_factory.mktemp("diff")
    script = write_script(root, SCRIPT)

    def run(files: int, arguments: list[str], **config: Any) -> Path:
        cfg = ParallelRunConfig(entry_script=str(script), output_action="append_row", process_count_per_node=1,
                                mini_batch_size="1", run_max_try=1, **config)
        step = ParallelRunStep("score-step", cfg, [FileDataset.from_files(str(write_files(root, files)))],
                               output=str(root / "out"), arguments=arguments)
        return Path(step.run(root / "runs").run_dir)

    run_a = run(6, ["--mode", "local"])
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DIFF_TOKEN_ONLY_ON_B", SECRET)
        run_b = run(7, ["--mode", "cluster", "--fail"], error_threshold=0, environment_variables={"MODE": "cluster"})
    yield run_a, run_b


def diff_json(capsys: pytest.CaptureFixture[str], a: Path, b: Path) -> dict[str, Any]:
    assert main(["diff", str(a), str(b), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def diff_text(capsys: pytest.CaptureFixture[str], a: Path, b: Path) -> str:
    assert main(["diff", str(a), str(b)]) == 0
    return capsys.readouterr().out


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of a finished run to edit (the copy is found by its path, not its step_id)."""
    return Path(shutil.copytree(run_dir, tmp_path / run_dir.name))


def edit_environment(run_dir: Path, **changes: Any) -> None:
    path = run_dir / "environment.json"
    recorded = json.loads(path.read_text())
    recorded.update(changes)
    path.write_text(json.dumps(recorded))


def edit_run_row(run_dir: Path, sql: str, *args: Any) -> None:
    conn = sqlite3.connect(run_dir / "pipeobs.db")
    with conn:
        conn.execute(sql, args)
    conn.close()


class TestEnvironmentRecord:
    def test_each_run_records_its_interpreter_and_packages(self, runs: tuple[Path, Path]) -> None:
        """environment.json holds the Python version, executable, platform and every package's version."""
        recorded = json.loads((runs[0] / "environment.json").read_text())

        assert recorded["python"] == platform.python_version()
        assert recorded["executable"] == sys.executable
        assert recorded["platform"] == platform.platform()
        assert recorded["packages"]["rich"] == importlib.metadata.version("rich")
        assert recorded["packages"]["pipeobs"] == importlib.metadata.version("pipeobs")

    def test_environment_variables_are_recorded_by_name_only(self, runs: tuple[Path, Path]) -> None:
        """The config's and the process's variable names are recorded, never a value."""
        text = (runs[1] / "environment.json").read_text()
        recorded = json.loads(text)

        assert recorded["env_vars"]["config"] == ["MODE"]
        assert "DIFF_TOKEN_ONLY_ON_B" in recorded["env_vars"]["process"]
        assert SECRET not in text and "cluster" not in text

    def test_inputs_are_recorded_with_their_file_count_and_bytes(self, runs: tuple[Path, Path]) -> None:
        """Each input's paths, file count and size in bytes as they were when the run started."""
        recorded = json.loads((runs[1] / "environment.json").read_text())

        assert [(i["files"], i["bytes"]) for i in recorded["inputs"]] == [(7, 7 * len("item 0\n"))]


class TestDiff:
    def test_config_and_arguments_that_differ(self, runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
        """Only the config values and arguments that differ are listed, A's value then B's."""
        diff = diff_json(capsys, *runs)

        assert diff["same_step"] is True
        assert diff["config"] == {
            "error_threshold": {"a": -1, "b": 0},
            "environment_variables": {"a": {}, "b": {"MODE": "cluster"}},
        }
        assert diff["arguments"] == {"a": ["--mode", "local"], "b": ["--mode", "cluster", "--fail"]}

    def test_environment_variables_differ_by_name(self, runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
        """Variables set for B only (in its config or its process) are listed as added, without values."""
        diff = diff_json(capsys, *runs)

        env = diff["environment"]
        assert env["recorded"] == {"a": True, "b": True}
        assert env["env_vars"] == {"added": ["DIFF_TOKEN_ONLY_ON_B", "MODE"], "removed": []}
        assert env["interpreter"] == {} and env["packages"] == {"added": {}, "removed": {}, "changed": {}}
        assert SECRET not in json.dumps(diff)

    def test_inputs_compare_files_bytes_and_mini_batches(self, runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
        """Per input: file count, bytes, mini-batches and items of each run, and the files B added."""
        diff = diff_json(capsys, *runs)

        [data] = diff["inputs"]
        assert {k: data["a"][k] for k in ("files", "bytes", "mini_batches", "items")} == {
            "files": 6, "bytes": 42, "mini_batches": 6, "items": 6}
        assert {k: data["b"][k] for k in ("files", "bytes", "mini_batches", "items")} == {
            "files": 7, "bytes": 49, "mini_batches": 7, "items": 7}
        assert (data["added"], data["removed"]) == (["f006.txt"], [])

    def test_outcome_of_each_run(self, runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
        """Status, attempt durations, failures by error type and user metrics, side by side."""
        diff = diff_json(capsys, *runs)

        a, b = diff["outcome"]["a"], diff["outcome"]["b"]
        assert (a["status"], b["status"]) == ("Completed", "Failed")
        assert (a["attempts"], b["attempts"]) == (6, 7)
        assert a["attempt_seconds"]["p50"] <= a["attempt_seconds"]["p95"]
        assert a["failures"] == {}
        assert b["failures"] == {"ValueError": {"attempts": 1, "mini_batches": 1, "message": "cannot score f006.txt"}}
        assert (a["metrics"]["score"], b["metrics"]["score"]) == ({"last": 1.0, "mean": 1.0}, {"last": 0.5, "mean": 0.5})

    def test_text_names_every_difference(self, runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
        """The text view shows each difference as A -> B, and both outcomes."""
        text = diff_text(capsys, *runs)

        assert "error_threshold: -1 -> 0" in text
        assert "arguments: --mode local -> --mode cluster --fail" in text
        assert "+ DIFF_TOKEN_ONLY_ON_B" in text and "+ MODE" in text
        assert "files 6 -> 7" in text and "+ f006.txt" in text
        assert "Completed" in text and "Failed" in text and "ValueError" in text
        assert "different steps" not in text

    def test_a_run_against_itself_has_no_differences(self, runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
        """Comparing a run with itself lists no config, argument, environment or input change."""
        diff = diff_json(capsys, runs[0], runs[0])

        assert (diff["config"], diff["arguments"]) == ({}, None)
        assert diff["environment"]["env_vars"] == {"added": [], "removed": []}
        assert (diff["inputs"][0]["added"], diff["inputs"][0]["removed"]) == ([], [])

    def test_package_and_interpreter_changes(self, runs: tuple[Path, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
        """Packages added, removed and changed in B, and another Python version, are listed."""
        a = copy_run(runs[0], tmp_path)
        packages = json.loads((a / "environment.json").read_text())["packages"]
        del packages["rich"]
        packages["left-behind"] = "0.1"
        packages["pipeobs"] = "0.0.1"
        edit_environment(a, python="3.9.18", packages=packages)

        diff = diff_json(capsys, a, runs[1])
        text = diff_text(capsys, a, runs[1])

        env = diff["environment"]
        assert env["interpreter"] == {"python": {"a": "3.9.18", "b": platform.python_version()}}
        assert env["packages"] == {
            "added": {"rich": importlib.metadata.version("rich")},
            "removed": {"left-behind": "0.1"},
            "changed": {"pipeobs": {"a": "0.0.1", "b": importlib.metadata.version("pipeobs")}},
        }
        assert f"python: 3.9.18 -> {platform.python_version()}" in text
        assert f"+ rich {importlib.metadata.version('rich')}" in text and "- left-behind 0.1" in text
        assert f"~ pipeobs 0.0.1 -> {importlib.metadata.version('pipeobs')}" in text

    def test_runs_of_different_steps_are_compared_and_said_so(self, runs: tuple[Path, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
        """Two steps may be compared; the result says they are different steps."""
        other = copy_run(runs[1], tmp_path)
        edit_run_row(other, "UPDATE runs SET step_name = 'other-step'")

        diff = diff_json(capsys, runs[0], other)
        text = diff_text(capsys, runs[0], other)

        assert diff["same_step"] is False
        assert "runs of different steps: score-step and other-step" in text

    def test_a_run_without_a_recorded_environment(self, runs: tuple[Path, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
        """A run that recorded no environment (an older pipeobs) is compared on the rest, and that is said."""
        a = copy_run(runs[0], tmp_path)
        (a / "environment.json").unlink()

        diff = diff_json(capsys, a, runs[1])
        text = diff_text(capsys, a, runs[1])

        assert diff["environment"]["recorded"] == {"a": False, "b": True}
        assert diff["inputs"][0]["a"]["files"] == 6 and diff["inputs"][0]["a"]["bytes"] is None
        assert "environment: not recorded for A" in text

    def test_user_text_is_escaped(self, runs: tuple[Path, Path], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
        """Control characters in recorded values show escaped in the text and as they are in --json."""
        a = copy_run(runs[0], tmp_path)
        edit_run_row(a, "UPDATE runs SET inputs = json_set(inputs, '$.script_arguments', json_array('--x', ?))",
                     "\x1b]0;pwned\x07")

        text = diff_text(capsys, a, runs[1])
        diff = diff_json(capsys, a, runs[1])

        assert "\\x1b]0;pwned\\x07" in text and "\x1b" not in text
        assert diff["arguments"]["a"] == ["--x", "\x1b]0;pwned\x07"]

    def test_an_unknown_run_is_bad_usage(self, runs: tuple[Path, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
        """A RUN that names no run is a one-line error with exit code 2."""
        code = main(["diff", str(runs[0]), str(tmp_path / "missing")])

        err = capsys.readouterr().err
        assert code == 2
        assert err.startswith("error: no run ") and "Traceback" not in err
