"""Step reuse: a rerun with an unchanged fingerprint reuses the earlier run; every other run says why it runs."""

from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path

import pytest

from pipeobs import fingerprint, reuse
from pipeobs.cli import main
from pipeobs.config import ParallelRunConfig
from pipeobs.datasets import FileDataset
from pipeobs.step import ParallelRunStep

# init() leaves one marker per worker process in marks/ (outside the source directory).
SCRIPT = """
import os
import helper

def init():
    open(os.path.join({marks!r}, f"init-{{os.getpid()}}"), "w").close()

def run(mini_batch):
    return [helper.label(path) for path in mini_batch]
"""
HELPER = "import os\n\n\ndef label(path):\n    return os.path.basename(path)\n"
SUMMARY_RUN = re.compile(r"^\w+: step \S+, run (\S+)$", re.MULTILINE)


class Project:
    """A project folder (``src/``, ``images/``, ``runs/``) run with ``pipeobs run`` in-process."""

    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.root = root
        self.capsys = capsys
        self.marks = root / "marks"
        self.marks.mkdir()
        (root / "src").mkdir()
        self.write("src/score.py", SCRIPT.format(marks=str(self.marks)))
        self.write("src/helper.py", HELPER)
        self.add_images(0, 4)

    def write(self, name: str, text: str) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))

    def add_images(self, first: int, count: int) -> None:
        for i in range(first, first + count):
            self.write(f"images/img{i:02d}.txt", f"image {i}\n")

    def run(self, *flags: str, name: str = "score", entry: str = "score.py") -> tuple[str, str]:
        """``pipeobs run``: (step_id, stdout)."""
        code = main(["run", entry, "--source-directory", "src", "--input", "images/", "--output-action", "append_row",
                     "--process-count-per-node", "1", "--runs-dir", "runs", "--name", name, *flags])
        out = self.capsys.readouterr().out
        assert code == 0, out
        match = SUMMARY_RUN.search(out)
        assert match, out
        return match.group(1), out

    def why(self, run: str, *flags: str) -> str:
        assert main(["why", run, "--runs-dir", "runs", *flags]) == 0
        return self.capsys.readouterr().out

    def inits(self) -> int:
        return len(list(self.marks.iterdir()))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Project:
    monkeypatch.chdir(tmp_path)
    return Project(tmp_path, capsys)


class TestReuse:
    def test_an_unchanged_rerun_reuses_the_completed_run_without_starting_a_worker(self, project: Project) -> None:
        """The second run starts no worker, says 'reused run X', copies X's output and is listed as Reused."""
        first, out = project.run()
        assert out.splitlines()[0] == "running because no completed run of step score in runs to reuse"
        assert project.inits() == 1

        second, out = project.run()

        assert project.inits() == 1
        assert out.splitlines()[0] == f"reused run {first}: nothing changed since it ran"
        assert f"  reused run {first}: nothing changed since it ran, so no worker started" in out
        outputs = [project.root / "runs" / "score" / run / "output" / "parallel_run_step.txt" for run in (first, second)]
        assert outputs[1].read_text() == outputs[0].read_text() != ""
        assert main(["runs", "runs", "--json"]) == 0
        listed = {r["step_id"]: r for r in json.loads(project.capsys.readouterr().out)}
        assert (listed[first]["status"], listed[first]["reused_from"]) == ("Completed", None)
        assert (listed[second]["status"], listed[second]["reused_from"]) == ("Reused", first)
        assert listed[second]["items"]["succeeded"] == 4

    def test_a_reuse_of_a_reused_run_names_the_run_that_did_the_work(self, project: Project) -> None:
        """Reusing a run that was itself reused points to the original run."""
        first, _ = project.run()
        project.run()

        third, out = project.run()

        assert out.splitlines()[0] == f"reused run {first}: nothing changed since it ran"
        assert project.inits() == 1
        assert f"{third} reused run {first}" in project.why(third)

    def test_no_reuse_flag_always_runs(self, project: Project) -> None:
        """--no-reuse starts workers although nothing changed, and says so."""
        project.run()

        second, out = project.run("--no-reuse")

        assert project.inits() == 2
        assert out.splitlines()[0].startswith("re-running because reuse is off (allow_reuse=False or --no-reuse)")
        assert "reused run" not in out
        assert project.why(second).startswith(f"{second} re-ran because reuse is off")

    def test_allow_reuse_false_in_the_job_yaml_always_runs(self, project: Project) -> None:
        """`allow_reuse: false` in the job YAML is --no-reuse."""
        project.run()
        project.write("job.yaml", "allow_reuse: false\n")

        _, out = project.run("-c", "job.yaml")

        assert project.inits() == 2
        assert out.splitlines()[0].startswith("re-running because reuse is off")

    def test_allow_reuse_false_always_runs(self, project: Project) -> None:
        """ParallelRunStep(allow_reuse=False) runs every time, and its first line says why."""
        config = ParallelRunConfig(entry_script="score.py", source_directory="src", process_count_per_node=1,
                                   output_action="append_row")
        step = ParallelRunStep("score", config, [FileDataset.from_files("images/")], allow_reuse=False)
        first = step.run("runs")
        project.capsys.readouterr()

        second = step.run("runs")

        assert [r.status for r in (first, second)] == ["Completed", "Completed"]
        assert second.reused_from is None
        assert project.inits() == 2
        assert project.capsys.readouterr().out == (
            f"re-running because reuse is off (allow_reuse=False or --no-reuse) (compared with run {first.step_id})\n"
        )

    def test_an_output_file_changed_since_is_not_reused(self, project: Project) -> None:
        """A completed run whose append_row file has changed is run again, saying why."""
        first, _ = project.run("--output", "out")
        with open(project.root / "out" / "parallel_run_step.txt", "a") as handle:
            handle.write("edited by hand\n")

        _, out = project.run("--output", "out")

        assert project.inits() == 2
        assert (f"its output file '{project.root / 'out' / 'parallel_run_step.txt'}' is gone or changed"
                in out.splitlines()[0])

    def test_outputs_overwritten_by_a_later_run_are_not_reused(self, project: Project) -> None:
        """Back to an earlier fingerprint: that run's output folder was rewritten since, so the step runs."""
        first, _ = project.run("--output", "out")
        second, _ = project.run("--output", "out", "--error-threshold", "5")

        third, out = project.run("--output", "out")

        assert project.inits() == 3
        assert f"run {first} had the same fingerprint, but run {second} has written to its output folder since" in out
        assert f"{third} re-ran because config changed: error_threshold 5 -> -1" in project.why(third)


class TestWhy:
    def test_source_files_modified_added_and_removed_are_named(self, project: Project) -> None:
        """A changed source_directory re-runs the step, naming each file and what happened to it."""
        project.write("src/old.py", "x = 1\n")
        first, _ = project.run()
        with open(project.root / "src" / "score.py", "a") as handle:
            handle.write("# tuned\n")
        project.write("src/util.py", "y = 2\n")
        (project.root / "src" / "old.py").unlink()

        second, out = project.run()

        assert project.inits() == 2
        changed = "source_directory changed: old.py (removed), score.py (modified), util.py (added)"
        assert out.splitlines()[0] == f"re-running because {changed} (compared with run {first})"
        answer = project.why(second)
        assert answer.startswith(f"{second} re-ran because {changed} (compared with run {first})\n")
        rows = dict(re.findall(r"^  (\w+) +(.+)$", answer, re.MULTILINE))
        assert rows == {**dict.fromkeys(fingerprint.COMPONENTS, "same"),
                        "source_directory": "old.py (removed), score.py (modified), util.py (added)"}

    def test_a_changed_input_is_counted(self, project: Project) -> None:
        """New input files re-run the step: "input 'images' changed: 3 files added"."""
        project.run()
        project.add_images(10, 3)

        second, _ = project.run()

        assert project.why(second).startswith(f"{second} re-ran because input 'images' changed: 3 files added")

    def test_a_changed_config_value_is_named_with_both_values(self, project: Project) -> None:
        """A config value changed since the last completed run is named with its old and new value."""
        project.run()

        second, out = project.run("--mini-batch-size", "2")

        assert out.splitlines()[0].startswith("re-running because config changed: mini_batch_size unset -> 2")
        answer = json.loads(project.why(second, "--json"))
        assert answer["components"]["config"] == ["config changed: mini_batch_size unset -> 2"]
        assert answer["components"]["inputs"] == []

    def test_a_step_sharing_its_source_directory_is_named(self, project: Project) -> None:
        """The guide's warning: a change made for one step re-runs another step with the same source_directory."""
        project.write("src/prep.py", "def run(mini_batch):\n    return mini_batch\n")
        project.run(name="prep", entry="prep.py")
        project.run()
        with open(project.root / "src" / "prep.py", "a") as handle:
            handle.write("# a change for prep\n")

        second, out = project.run()

        assert project.inits() == 2
        reasons = ("source_directory changed: prep.py (modified); "
                   "two steps share source_directory 'src/': a change made for step prep re-runs step score")
        assert out.splitlines()[0].startswith(f"re-running because {reasons} (compared with run ")
        assert f"{second} re-ran because {reasons}" in project.why(second)

    def test_a_run_without_a_fingerprint_is_refused_in_one_line(self, project: Project) -> None:
        """why on a run that recorded no fingerprint exits 2 with one error line."""
        config = ParallelRunConfig(entry_script="score.py", source_directory="src", output_action="append_row")
        plan = ParallelRunStep("score", config, [FileDataset.from_files("images/")]).plan("runs")

        assert main(["why", str(plan.run_dir.path)]) == 2

        err = project.capsys.readouterr().err
        assert err.startswith(f"error: run '{plan.run_dir.path}' has no fingerprint.json") and err.count("\n") == 1


class TestFingerprint:
    def test_ignore_files_caches_and_virtual_environments_are_left_out(self, tmp_path: Path) -> None:
        """.amlignore wins over .gitignore in its folder, nested ignore files apply below them, caches and venvs are skipped."""
        files = {
            "score.py": "", "notes.md": "", "debug.log": "", ".gitignore": "*.md\n", ".amlignore": "*.log\nscratch/\n",
            "scratch/tmp.py": "", "pkg/.gitignore": "data.csv\n!keep.log\n", "pkg/data.csv": "", "pkg/keep.log": "",
            "pkg/mod.py": "", "__pycache__/score.cpython-311.pyc": "", "pkg/mod.pyc": "", ".git/HEAD": "",
            "venv/pyvenv.cfg": "", "venv/lib/site.py": "", "runs/score/x/pipeobs.db": "",
        }
        for name, text in files.items():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(text)

        taken = fingerprint.SourceScan(tmp_path, {str(tmp_path / "runs")}).files()

        assert sorted(taken) == [".amlignore", ".gitignore", "notes.md", "pkg/.gitignore", "pkg/keep.log",
                                 "pkg/mod.py", "score.py"]

    def test_large_inputs_are_fingerprinted_by_size_and_modification_time(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Past the content limit a rewrite with the same size and mtime goes unseen; below it the content counts."""
        monkeypatch.setattr(fingerprint, "CONTENT_LIMIT", 8)
        large, small = tmp_path / "large.bin", tmp_path / "small.bin"
        large.write_bytes(b"0123456789")
        small.write_bytes(b"01234567")
        before = {p: (fingerprint.data_digest(str(p)), p.stat().st_mtime_ns) for p in (large, small)}

        for path, text in ((large, b"abcdefghij"), (small, b"abcdefgh")):
            path.write_bytes(text)
            os.utime(path, ns=(before[path][1], before[path][1]))

        assert fingerprint.data_digest(str(large)) == before[large][0]
        assert fingerprint.data_digest(str(small)) != before[small][0]
        os.utime(large, ns=(before[large][1] + 1, before[large][1] + 1))
        assert fingerprint.data_digest(str(large)) != before[large][0]

    def test_environment_variables_are_named_never_shown(self) -> None:
        """A changed environment variable is named, its value is not."""
        changes = reuse.explain({"environment_variables": {"TOKEN": "old-secret"}},
                                {"environment_variables": {"TOKEN": "new-secret", "MODE": "x"}})

        assert changes == {"environment_variables": ["environment_variables changed: MODE (added), TOKEN (modified)"]}

    def test_a_changed_python_environment_names_the_packages(self) -> None:
        """Python and package versions are compared one by one."""
        old = {"python": {"implementation": "CPython", "version": "3.11.4", "packages": {"numpy": "1.26.0", "six": "1"}}}
        new = {"python": {"implementation": "CPython", "version": "3.11.5",
                          "packages": {"numpy": "2.0.0", "pandas": "2.2.0"}}}

        assert reuse.explain(old, new) == {"python": [
            "Python environment changed: Python 3.11.4 -> 3.11.5, numpy 1.26.0 -> 2.0.0, pandas 2.2.0 (added), six (removed)"
        ]}
