"""MLflow in entry scripts: its files land in the run directory, its values also in pipeobs's store."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeobs.cli import main
from pipeobs.mlflow_bridge import tracking_environment
from tests.conftest import Job, RunJob

LOGGING_SCRIPT = """
import os

import mlflow
from mlflow import log_metric

def init():
    mlflow.log_param("model", "tiny")
    mlflow.log_params({"threshold": 0.5})
    mlflow.set_tag("phase", "init")

def run(mini_batch):
    log_metric("items", len(mini_batch))
    mlflow.log_metrics({"loss": 0.25}, step=2)
    mlflow.set_tags({"last_file": os.path.basename(mini_batch[-1])})
    return [os.environ["MLFLOW_TRACKING_URI"]]
"""


@pytest.fixture
def logged(run_job: RunJob) -> Job:
    """Two workers, two mini-batches of two files, MLflow calls in init() and run()."""
    return run_job(LOGGING_SCRIPT, files=4, mini_batch_size=2, process_count_per_node=2)


def mlflow_points(job: Job) -> list[tuple[Any, ...]]:
    rows = job.query(
        "SELECT name, kind, coalesce(value, value_json), phase, mini_batch_id, attempt FROM metrics "
        "WHERE description = 'mlflow' ORDER BY name, mini_batch_id"
    )
    return [tuple(row) for row in rows]


class TestWorkersLogIntoTheRunDir:
    def test_tracking_uri_is_the_run_dirs_mlruns(self, logged: Job) -> None:
        """Every worker's MLFLOW_TRACKING_URI is the file: URI of <run dir>/mlruns (not its scratch folder)."""
        assert set(logged.output_lines()) == {(logged.run_dir / "mlruns").as_uri()}

    def test_mlflow_writes_its_own_files_there(self, logged: Job) -> None:
        """The real MLflow calls still happen: one MLflow run per worker, under the run dir."""
        runs = [p.parent.parent for p in (logged.run_dir / "mlruns").glob("*/*/params/model")]

        assert len(runs) == 2
        assert sorted((p.name, p.read_text()) for run in runs for p in (run / "params").iterdir()) == [
            ("model", "tiny"),
            ("model", "tiny"),
            ("threshold", "0.5"),
            ("threshold", "0.5"),
        ]
        assert sum(len(p.read_text().splitlines()) for p in (logged.run_dir / "mlruns").glob("*/*/metrics/items")) == 2


class TestValuesReachTheStore:
    def test_run_values_carry_mini_batch_and_attempt(self, logged: Job) -> None:
        """log_metric (imported by name too), log_metrics and set_tags in run() are points of their mini-batch."""
        points = [p for p in mlflow_points(logged) if p[3] == "run"]

        assert points == [
            ("items", "scalar", 2.0, "run", 0, 1),
            ("items", "scalar", 2.0, "run", 1, 1),
            ("last_file", "tag", '"f001.txt"', "run", 0, 1),
            ("last_file", "tag", '"f003.txt"', "run", 1, 1),
            ("loss", "scalar", 0.25, "run", 0, 1),
            ("loss", "scalar", 0.25, "run", 1, 1),
        ]

    def test_init_params_and_tags_are_strings(self, logged: Job) -> None:
        """log_param, log_params and set_tag in init() are points of each worker's init, holding str(value)."""
        points = [p for p in mlflow_points(logged) if p[3] == "init"]

        assert points == [
            ("model", "param", '"tiny"', "init", None, None),
            ("model", "param", '"tiny"', "init", None, None),
            ("phase", "tag", '"init"', "init", None, None),
            ("phase", "tag", '"init"', "init", None, None),
            ("threshold", "param", '"0.5"', "init", None, None),
            ("threshold", "param", '"0.5"', "init", None, None),
        ]

    def test_pipeobs_metrics_shows_them(
        self, logged: Job, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``pipeobs metrics RUN`` lists the MLflow metrics, params and tags by name, kind and last value."""
        monkeypatch.setenv("COLUMNS", "200")
        capsys.readouterr()

        assert main(["metrics", str(logged.run_dir)]) == 0

        rows = {line.split()[0]: line.split()[1:4] for line in capsys.readouterr().out.splitlines() if line.strip()}
        assert rows["items"] == ["scalar", "2", "2"]
        assert rows["loss"] == ["scalar", "2", "0.25"]
        assert rows["model"] == ["param", "2", "tiny"]
        assert rows["threshold"] == ["param", "2", "0.5"]
        assert rows["phase"] == ["tag", "2", "init"]
        assert rows["last_file"] == ["tag", "2", "f003.txt"]

    def test_pipeobs_show_lists_params_with_user_metrics(
        self, logged: Job, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``pipeobs show RUN`` lists MLflow params beside the run's other user metrics and tags."""
        monkeypatch.setenv("COLUMNS", "200")
        capsys.readouterr()

        assert main(["show", str(logged.run_dir)]) == 0

        shown = capsys.readouterr().out
        assert re.search(r"\bthreshold +param +2 +0\.5\b", shown)
        assert re.search(r"\bitems +scalar +2 +2\b", shown)


class TestOptional:
    def test_script_without_mlflow_does_not_import_it(self, run_job: RunJob) -> None:
        """A worker whose script never imports mlflow has no mlflow module, in init() or run()."""
        job = run_job(
            """
            import sys
            seen = []
            def init():
                seen.append("mlflow" in sys.modules)
            def run(mini_batch):
                return [f"{seen[0]} {'mlflow' in sys.modules}"]
            """,
            files=2,
            mini_batch_size=1,
        )

        assert job.output_lines() == ["False False", "False False"]

    def test_step_tracking_uri_is_kept(self, run_job: RunJob, tmp_path: Path) -> None:
        """MLFLOW_TRACKING_URI in the step's environment_variables wins; values still reach the store."""
        elsewhere = (tmp_path / "elsewhere").as_uri()
        job = run_job(
            LOGGING_SCRIPT,
            files=1,
            environment_variables={"MLFLOW_TRACKING_URI": elsewhere, "MLFLOW_ALLOW_FILE_STORE": "true"},
        )

        assert job.output_lines() == [elsewhere]
        assert list((tmp_path / "elsewhere").glob("*/*/params/model"))
        assert not (job.run_dir / "mlruns").exists()
        assert ("items", "scalar", 1.0, "run", 0, 1) in mlflow_points(job)


class TestTrackingEnvironment:
    def test_points_into_the_run_dir(self, tmp_path: Path) -> None:
        """Without a URI in the step's variables: the run dir's mlruns, file store allowed."""
        assert tracking_environment(str(tmp_path), {}) == {
            "MLFLOW_TRACKING_URI": (tmp_path / "mlruns").as_uri(),
            "MLFLOW_ALLOW_FILE_STORE": "true",
        }

    def test_steps_own_uri_sets_nothing(self, tmp_path: Path) -> None:
        """A tracking URI among the step's variables is the user's choice: nothing is added."""
        assert tracking_environment(str(tmp_path), {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}) == {}


class TestImportHook:
    def test_wraps_mlflow_once_imported_and_leaves_meta_path(self, tmp_path: Path) -> None:
        """After install(), importing mlflow wraps its six calls and removes the finder; outside a
        worker a wrapped call is MLflow's alone."""
        code = (
            "import json, sys\n"
            "from pipeobs import mlflow_bridge\n"
            "mlflow_bridge.install()\n"
            "import mlflow\n"
            "mlflow.log_metric(key='a', value=1.0)\n"
            "print(json.dumps([sorted(n for n in mlflow_bridge.RECORDERS if hasattr(getattr(mlflow, n), '__pipeobs_wrapped__')),\n"
            "                  any(isinstance(f, mlflow_bridge.MlflowFinder) for f in sys.meta_path)]))\n"
        )
        variables = {**os.environ, **tracking_environment(str(tmp_path), {})}

        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=variables, timeout=60, check=True
        )

        assert json.loads(done.stdout) == [
            sorted(["log_metric", "log_metrics", "log_param", "log_params", "set_tag", "set_tags"]),
            False,
        ]
        assert list((tmp_path / "mlruns").glob("0/*/metrics/a"))
