"""Azure ML v2 job YAML run with ``pipeobs run -c``: keys, expressions, --set, locations, parallel jobs, components."""

from __future__ import annotations

import json
import sqlite3
import textwrap
from pathlib import Path

import pytest

from pipeobs.cli import main
from pipeobs.errors import ConfigError
from pipeobs.v2 import is_v2_document
from pipeobs.v2.document import apply_sets, parse_set
from pipeobs.v2.expressions import split_arguments, substitute
from pipeobs.v2.locations import Locations
from pipeobs.v2.parallel import automation_flags
from tests.conftest import query_store

SCORE = """
import argparse, os, sys
def init():
    global args
    p = argparse.ArgumentParser()
    p.add_argument("--model")
    p.add_argument("--label")
    p.add_argument("--flag")
    args, _ = p.parse_known_args()
    print("argv", sys.argv[1:])
def run(mini_batch):
    assert os.path.isabs(args.model), args.model
    return [f"{args.label}|{os.path.basename(f)}|{open(os.path.join(args.model, 'm.txt')).read().strip()}"
            for f in mini_batch]
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    for index in range(5):
        write(tmp_path / "data" / f"item{index}.txt", f"{index}\n")
    write(tmp_path / "my model" / "m.txt", "model-v1\n")
    write(tmp_path / "src" / "score.py", SCORE)
    return tmp_path


PARALLEL_JOB = """
$schema: https://azuremlschemas.azureedge.net/latest/parallelJob.schema.json
type: parallel
name: score_items_with_a_v2_name_longer_than_32
display_name: Score items
experiment_name: scoring
description: score the items
tags: {team: ml}
compute: azureml:cpu-cluster
identity: {type: user_identity}
inputs:
  items:
    type: uri_folder
    path: ./data
  model:
    type: uri_folder
    path: ./my model
  label: first label
outputs:
  scores:
    type: uri_file
    mode: rw_mount
input_data: ${{inputs.items}}
mini_batch_size: "2"
resources:
  instance_count: 1
  instance_type: Standard_D2
max_concurrency_per_instance: 2
logging_level: DEBUG
retry_settings:
  max_retries: 1
  timeout: 30
environment_variables:
  MY_VAR: "1"
task:
  type: run_function
  code: ./src
  entry_script: score.py
  environment:
    image: mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04
    conda_file: ./env.yml
  program_arguments: >-
    --model ${{inputs.model}}
    --label "${{inputs.label}}"
    $[[--flag ${{inputs.missing}}]]
    --error_threshold 3
    --allowed_failed_percent 40
    --task_overhead_timeout 120
    --progress_update_timeout 600
    --first_task_creation_timeout 300
    --resource_monitor_interval 5
  append_row_to: ${{outputs.scores}}
"""


def run_row(run_dir: Path) -> sqlite3.Row:
    return query_store(run_dir, "SELECT * FROM runs")[0]


def only_run(root: Path) -> Path:
    found = sorted(p.parent for p in root.glob("*/*/pipeobs.db"))
    assert len(found) == 1, found
    return found[0]


def test_a_parallel_job_runs_as_written(job_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = PARALLEL_JOB.replace("$[[--flag ${{inputs.missing}}]]", "$[[--flag ${{inputs.missing}}]]")
    yml = write(job_dir / "job.yml", text.replace("  label: first label", "  label: first label\n  missing:\n    type: string\n    optional: true"))
    runs = job_dir / "runs"
    assert main(["run", "-c", str(yml), "--runs-dir", str(runs)]) == 0
    run_dir = only_run(runs)
    assert run_dir.parent.name == "score_items_with_a_v2_name_longer_than_32"
    scores = run_dir / "outputs" / "scores"  # an output without a path lives in the run directory
    assert sorted(scores.read_text().splitlines()) == [f"first label|item{i}.txt|model-v1" for i in range(5)]
    row = run_row(run_dir)
    config, settings = json.loads(row["config"]), json.loads(row["settings"])
    assert (config["error_threshold"], config["allowed_failed_percent"], config["run_max_try"]) == (3, 40, 2)
    assert (config["mini_batch_size"], config["process_count_per_node"], config["logging_level"]) == (2, 2, "DEBUG")
    assert config["compute_target"] == "azureml:cpu-cluster" and "openmpi" in config["environment"]
    assert settings["task_overhead_timeout"] == 120 and settings["first_task_creation_timeout"] == 300
    assert settings["resource_monitor_interval"] == 5 and settings["progress_update_timeout"] == 600
    args = json.loads(row["inputs"])["script_arguments"]  # split as a shell would; the optional block dropped
    assert args[:4] == ["--model", str(job_dir / "my model"), "--label", "first label"]
    assert "--flag" not in args and "--error_threshold" in args
    recorded = json.loads((run_dir / "azureml_job.json").read_text())
    assert recorded["fields"]["tags"] == {"team": "ml"} and recorded["fields"]["identity"] == {"type": "user_identity"}
    out = capsys.readouterr().out
    assert f"output scores: {scores}" in out


def test_set_overrides_any_value_with_dotted_keys(job_dir: Path) -> None:
    yml = write(job_dir / "job.yml", PARALLEL_JOB.replace("    $[[--flag ${{inputs.missing}}]]\n", ""))
    runs = job_dir / "runs"
    code = main(["run", "-c", str(yml), "--runs-dir", str(runs), "--set", "mini_batch_size=5",
                 "--set", "inputs.label=second", "--set", "resources.instance_count=1",
                 "--set", "retry_settings.max_retries=3"])
    assert code == 0
    run_dir = only_run(runs)
    config = json.loads(run_row(run_dir)["config"])
    assert (config["mini_batch_size"], config["run_max_try"]) == (5, 4)
    assert all(line.startswith("second|") for line in (run_dir / "outputs" / "scores").read_text().splitlines())


def test_unknown_keys_keep_the_did_you_mean_error(job_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    yml = write(job_dir / "job.yml", PARALLEL_JOB.replace("mini_batch_size:", "mini_batch_sise:"))
    assert main(["run", "-c", str(yml), "--runs-dir", str(job_dir / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: unknown key 'mini_batch_sise' in job.yml; did you mean mini_batch_size?"
    yml = write(job_dir / "job.yml", PARALLEL_JOB.replace("  timeout: 30", "  timeuot: 30"))
    assert main(["run", "-c", str(yml), "--runs-dir", str(job_dir / "runs")]) == 2
    assert "unknown key 'timeuot' in job.yml (retry_settings); did you mean timeout?" in capsys.readouterr().err
    assert not (job_dir / "runs").exists()


def test_v1_flags_beside_a_v2_yaml_point_to_set(job_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    yml = write(job_dir / "job.yml", PARALLEL_JOB)
    assert main(["run", "-c", str(yml), "--mini-batch-size", "3"]) == 2
    assert "--set KEY.PATH=VALUE" in capsys.readouterr().err
    flat = write(job_dir / "flat.yml", "entry_script: src/score.py\ninputs: data\n")
    assert main(["run", "-c", str(flat), "--set", "a=1"]) == 2
    assert "--set is for Azure ML v2 job YAMLs" in capsys.readouterr().err


def test_a_component_file_is_merged_under_the_node(job_dir: Path) -> None:
    write(job_dir / "components" / "src" / "score.py", SCORE)
    write(job_dir / "components" / "score.yml", """
        $schema: https://azuremlschemas.azureedge.net/latest/parallelComponent.schema.json
        type: parallel
        name: score_component
        version: 1
        inputs:
          items: {type: uri_folder, description: the items}
          model: {type: uri_folder}
          label: {type: string, default: from component}
        outputs:
          scores: {type: uri_folder}
        input_data: ${{inputs.items}}
        mini_batch_size: "3"
        max_concurrency_per_instance: 1
        task:
          type: run_function
          code: ./src
          entry_script: score.py
          environment: azureml:some-env:1
          program_arguments: --model ${{inputs.model}} --label ${{inputs.label}}
          append_row_to: ${{outputs.scores}}
    """)
    yml = write(job_dir / "job.yml", """
        type: parallel
        name: scored
        component: ./components/score.yml
        inputs:
          items: {type: uri_folder, path: ./data}
          model: {type: uri_folder, path: ./my model}
        mini_batch_size: "5"
    """)
    runs = job_dir / "runs"
    assert main(["run", "-c", str(yml), "--runs-dir", str(runs)]) == 0
    run_dir = only_run(runs)
    lines = (run_dir / "outputs" / "scores" / "parallel_run_step.txt").read_text().splitlines()
    assert sorted(lines) == [f"from component|item{i}.txt|model-v1" for i in range(5)]
    config = json.loads(run_row(run_dir)["config"])
    assert config["mini_batch_size"] == 5 and config["source_directory"] == str(job_dir / "components" / "src")


def test_expressions_substitute_and_split_as_a_shell() -> None:
    values = {"inputs.a": "/data/with space", "inputs.n": "3", "inputs.opt": None}

    def lookup(name: str) -> str | None:
        return values[name]

    words = split_arguments('--a ${{inputs.a}} --n ${{ inputs.n }} $[[--opt ${{inputs.opt}}]] --s "x y"', lookup, "t")
    assert words == ["--a", "/data/with space", "--n", "3", "--s", "x y"]
    assert substitute("ls ${{inputs.a}}", lookup, "t", quote=True) == "ls '/data/with space'"
    with pytest.raises(ConfigError, match=r"\$\{\{inputs.opt\}\} has no value"):
        substitute("x ${{inputs.opt}}", lookup, "t")


def test_set_parses_values_as_yaml_and_refuses_reference_strings(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    assert parse_set("jobs.score.mini_batch_size=5") == (["jobs", "score", "mini_batch_size"], 5)
    assert parse_set("settings.force_rerun=True") == (["settings", "force_rerun"], True)
    assert parse_set("inputs.x.path=./data") == (["inputs", "x", "path"], str(tmp_path / "data"))
    assert parse_set("inputs.x.path=./absent") == (["inputs", "x", "path"], "./absent")
    document = apply_sets({"jobs": {"a": {"component": "./x.yml"}}}, ["jobs.b.inputs.y=1"])
    assert document["jobs"]["b"] == {"inputs": {"y": 1}}
    with pytest.raises(ConfigError, match="reference strings"):
        apply_sets(document, ["jobs.a.component.type=command"])
    with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
        parse_set("no-equals")


def test_locations_map_datastores_and_assets(tmp_path: Path) -> None:
    yml = write(tmp_path / "job.yml", "type: command\n")
    notices: list[str] = []
    places = Locations(yml, notice=notices.append)
    local = places.path("azureml://datastores/workspaceblobstore/paths/raw/x.csv", tmp_path, "job.yml inputs.a")
    assert local == str(tmp_path / "datastores" / "workspaceblobstore" / "raw" / "x.csv")
    assert notices == [f"azureml://datastores/workspaceblobstore/paths/raw/x.csv is the local path {local}"]
    with pytest.raises(ConfigError, match="asset 'azureml:iris:1' is in an Azure ML workspace.*pipeobs-assets.yml"):
        places.path("azureml:iris:1", tmp_path, "job.yml inputs.a")
    with pytest.raises(ConfigError, match="in the cloud.*--set inputs.a.path=PATH"):
        places.path("wasbs://c@acct.blob.core.windows.net/x", tmp_path, "job.yml inputs.a")
    write(tmp_path / "pipeobs-assets.yml", """
        assets:
          azureml:iris:1: ./local/iris
        datastores:
          mystore: /srv/mystore
    """)
    places = Locations(yml, notice=notices.append)
    assert places.path("azureml:iris:1", tmp_path, "w") == str(tmp_path / "local" / "iris")
    assert places.path("azureml://datastores/mystore/paths/a", tmp_path, "w") == "/srv/mystore/a"


def test_automation_flags_are_settings_and_stay_script_arguments() -> None:
    notices: list[str] = []
    words = ["--model", "m", "--error_threshold", "5", "--allowed_failed_percent=30", "--task_overhead_timeout",
             "1200", "--copy_logs_to_parent", "True", "--resource_monitor_interva", "20"]
    settings, config = automation_flags(words, "job.yml", notices.append)
    assert settings == {"task_overhead_timeout": "1200", "copy_logs_to_parent": "True"}
    assert config == {"error_threshold": 5, "allowed_failed_percent": 30.0}
    assert len(notices) == 1 and "did you mean --resource_monitor_interval?" in notices[0]


def test_v2_documents_are_told_from_flat_job_yaml() -> None:
    assert is_v2_document({"type": "pipeline", "jobs": {}})
    assert is_v2_document({"$schema": "x", "task": {}})
    assert not is_v2_document({"entry_script": "score.py", "inputs": ["data"], "mini_batch_size": 5})


def test_an_mltable_folder_as_an_input_never_gives_its_mltable_file(tmp_path: Path) -> None:
    images = tmp_path / "images"
    for index in range(4):
        (images / "digits").mkdir(parents=True, exist_ok=True)
        (images / "digits" / f"{index}.png").write_bytes(b"\x89PNG fake")
    write(images / "MLTable", "paths:\n  - folder: ./\n")
    write(tmp_path / "names.py", """
        import os
        def run(mini_batch):
            assert all(os.path.basename(p) != "MLTable" for p in mini_batch), mini_batch
            return [os.path.basename(p) for p in mini_batch]
    """)
    runs = tmp_path / "runs"
    code = main(["run", str(tmp_path / "names.py"), "--input", str(images), "--runs-dir", str(runs),
                 "--output-action", "append_row", "--process-count-per-node", "1"])
    assert code == 0
    run_dir = only_run(runs)
    assert sorted((run_dir / "output" / "parallel_run_step.txt").read_text().split()) == [f"{i}.png" for i in range(4)]


def test_command_values_are_quoted_only_outside_the_yamls_quotes() -> None:
    values = {"inputs.p": "/runs/a b", "inputs.g": "hi there"}
    text = 'ls ${{inputs.p}} && echo "${{inputs.g}} done" \'${{inputs.p}}\''
    assert substitute(text, values.get, "t", quote=True) == "ls '/runs/a b' && echo \"hi there done\" '/runs/a b'"


def test_a_string_of_arguments_is_split_as_a_shell_would(tmp_path: Path) -> None:
    from pipeobs.config import ParallelRunConfig
    from pipeobs.datasets import FileDataset
    from pipeobs.step import ParallelRunStep

    write(tmp_path / "score.py", "def run(mini_batch):\n    return mini_batch\n")
    write(tmp_path / "data" / "a.txt", "a\n")
    config = ParallelRunConfig(entry_script=str(tmp_path / "score.py"), mini_batch_size="1")
    step = ParallelRunStep("split-args", config, [FileDataset.from_files(str(tmp_path / "data"))],
                           arguments="--model_dir 'my model' --task_overhead_timeout 40")
    assert step.script_arguments == ["--model_dir", "my model"]
    assert step.settings.task_overhead_timeout == 40
    flat = write(tmp_path / "flat.yml", "entry_script: score.py\ninputs: data\narguments: --m 'a b'\n")
    from pipeobs.cli import build_step
    from pipeobs.config import load_job_yaml as load_yaml

    assert build_step(load_yaml(str(flat)), []).script_arguments == ["--m", "a b"]


def test_a_standalone_jobs_display_name_is_free_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A job without name runs under its display name made a folder name; a bare command job is v2 too."""
    yml = write(tmp_path / "job.yml", "command: echo hi\ndisplay_name: My hello job!\n")
    runs = tmp_path / "runs"

    assert main(["run", "-c", str(yml), "--runs-dir", str(runs)]) == 0

    assert only_run(runs).parent.name == "My-hello-job"
    assert is_v2_document({"command": "echo hi"})


def test_invalid_yaml_says_where(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A YAML syntax error names the line and column."""
    yml = write(tmp_path / "job.yml", "type: command\ncommand: echo\n  bad: [\n")

    assert main(["run", "-c", str(yml)]) == 2

    err = capsys.readouterr().err.strip()
    assert err.startswith("error: job YAML ") and "is not valid YAML at line 3, column 6: " in err


def test_a_nodes_cloud_input_suggests_the_nodes_set_key(tmp_path: Path) -> None:
    """The --set key in a message names the node (jobs.NODE.inputs.X.path), not a top-level input."""
    places = Locations(write(tmp_path / "p.yml", "type: pipeline\n"))

    with pytest.raises(ConfigError, match=r"--set jobs\.score_job\.inputs\.data\.path=PATH"):
        places.path("https://example.com/x.csv", tmp_path, "my pipeline.yml jobs.score_job inputs.data")


def test_a_command_without_code_runs_in_its_run_directory(tmp_path: Path) -> None:
    """Azure's hello-world-output writes ./outputs/helloworld.txt: a job without code has its own folder
    where ./outputs exists, and the YAML's folder is left alone."""
    yml = write(tmp_path / "job.yml", """
        $schema: https://azuremlschemas.azureedge.net/latest/commandJob.schema.json
        command: echo "hello world" > ./outputs/helloworld.txt
        environment:
          image: library/python:latest
    """)
    runs = tmp_path / "runs"

    assert main(["run", "-c", str(yml), "--runs-dir", str(runs)]) == 0

    assert (only_run(runs) / "outputs" / "helloworld.txt").read_text() == "hello world\n"
    assert not (tmp_path / "outputs").exists()
