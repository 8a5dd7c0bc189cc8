"""Azure ML v2 pipelines run locally: dependency order, one run directory per node under the pipeline's,
the pipeline span as the parent of the node spans, failures that stop dependants, ``--node``, and the two
shapes of Azure's public samples (``1a_oj_sales_prediction``, ``2a_iris_batch_prediction``) with zero edits."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from pipeobs.cli import main
from tests.conftest import query_store as query

SAMPLES = Path(__file__).parent / "v2_jobs"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def pipeline_run(runs: Path) -> Path:
    found = [p.parent for p in runs.glob("*/*/pipeobs.db")]
    assert len(found) == 1, found
    return found[0]


def node_run(pipeline_dir: Path, node: str) -> Path:
    found = [p.parent for p in (pipeline_dir / node).glob("*/pipeobs.db")]
    assert len(found) == 1, (node, found)
    return found[0]


COUNT = """
import os
def init():
    pass
def run(mini_batch):
    return [f"{os.path.basename(f)}:{len(open(f).read().split())}" for f in mini_batch]
"""

PIPELINE = """
type: pipeline
display_name: words
settings:
  default_compute: azureml:cpu-cluster
inputs:
  text_folder:
    type: uri_folder
    path: ./texts
  greeting: hello there
  batch:
    type: integer
    default: 2
outputs:
  counts:
    type: uri_folder
jobs:
  count:
    type: parallel
    inputs:
      docs: ${{parent.jobs.split.outputs.pieces}}
    outputs:
      counts: ${{parent.outputs.counts}}
    input_data: ${{inputs.docs}}
    mini_batch_size: ${{parent.inputs.batch}}
    max_concurrency_per_instance: 1
    task:
      code: ./src
      entry_script: count.py
      append_row_to: ${{outputs.counts}}
  split:
    type: command
    code: ./src
    command: >-
      for f in ${{inputs.source}}/*.txt; do tr ' ' '\\n' < "$f" > ${{outputs.pieces}}/$(basename "$f"); done;
      echo "${{inputs.greeting}} from split"
    inputs:
      source: ${{parent.inputs.text_folder}}
      greeting: ${{parent.inputs.greeting}}
    outputs:
      pieces:
        type: uri_folder
  report:
    type: command
    command: echo report ${{inputs.counted}} && ls ${{inputs.counted}}
    inputs:
      counted: ${{parent.jobs.count.outputs.counts}}
"""


@pytest.fixture
def pipeline_dir(tmp_path: Path) -> Path:
    for index in range(3):
        write(tmp_path / "texts" / f"t{index}.txt", " ".join(["w"] * (index + 2)) + "\n")
    write(tmp_path / "src" / "count.py", COUNT)
    write(tmp_path / "pipeline.yml", PIPELINE)
    return tmp_path


def test_nodes_run_in_dependency_order_under_one_pipeline_run(pipeline_dir: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    runs = pipeline_dir / "runs"
    assert main(["run", "-c", str(pipeline_dir / "pipeline.yml"), "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert out.index("node split") < out.index("node count") < out.index("node report")
    run_dir = pipeline_run(runs)
    assert run_dir.parent.name == "words"  # the pipeline has no name: its display name
    counts = run_dir / "outputs" / "counts" / "parallel_run_step.txt"  # the pipeline's output, bound by the node
    assert sorted(counts.read_text().splitlines()) == ["t0.txt:2", "t1.txt:3", "t2.txt:4"]
    count_config = json.loads(query(node_run(run_dir, "count"), "SELECT config FROM runs")[0]["config"])
    assert count_config["mini_batch_size"] == 2  # bound from the pipeline's integer input
    pipeline_row = query(run_dir, "SELECT * FROM runs")[0]
    assert (pipeline_row["kind"], pipeline_row["status"]) == ("pipeline", "Completed")
    [pipeline_span] = query(run_dir, "SELECT * FROM spans WHERE name = 'pipeline'")
    for node, span_name in (("split", "command"), ("count", "job"), ("report", "command")):
        node_dir = node_run(run_dir, node)
        row = query(node_dir, "SELECT * FROM runs")[0]
        assert row["parent_step_id"] == pipeline_row["step_id"] and row["status"] == "Completed"
        [span] = query(node_dir, f"SELECT * FROM spans WHERE name = '{span_name}'")
        assert (span["trace_id"], span["parent_span_id"]) == (pipeline_span["trace_id"], pipeline_span["span_id"])
    lines = [r["text"] for r in query(node_run(run_dir, "split"), "SELECT text FROM log_lines")]
    assert "hello there from split" in lines


def test_runs_lists_the_pipeline_with_its_nodes(pipeline_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = pipeline_dir / "runs"
    assert main(["run", "-c", str(pipeline_dir / "pipeline.yml"), "--runs-dir", str(runs)]) == 0
    capsys.readouterr()
    assert main(["runs", str(runs), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    pipeline = next(r for r in listed if r["kind"] == "pipeline")
    nodes = [r for r in listed if r.get("parent_step_id") == pipeline["step_id"]]
    assert sorted(r["step"] for r in nodes) == ["count", "report", "split"]
    assert main(["runs", str(runs)]) == 0
    table = capsys.readouterr().out
    assert "pipeline" in table and "└ count" in table.replace("├", "└")


def test_a_failed_node_stops_its_dependants_and_is_named(pipeline_dir: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    runs = pipeline_dir / "runs"
    code = main(["run", "-c", str(pipeline_dir / "pipeline.yml"), "--runs-dir", str(runs),
                 "--set", "jobs.split.command=echo broken >&2; exit 3"])
    assert code == 42
    out = capsys.readouterr().out
    assert "node count: skipped: upstream node 'split' did not complete" in out
    assert "node report: skipped: upstream node 'count' did not complete" in out
    assert "pipeline words: Failed: node split failed: command exited with code 3: broken" in out
    row = query(pipeline_run(runs), "SELECT status, error FROM runs")[0]
    assert row["status"] == "Failed" and "node split failed" in row["error"]


def test_one_node_alone_needs_its_upstream_inputs(pipeline_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = pipeline_dir / "runs"
    yml = str(pipeline_dir / "pipeline.yml")
    assert main(["run", "-c", yml, "--runs-dir", str(runs), "--node", "count"]) == 2
    err = capsys.readouterr().err
    assert "input 'docs' comes from node 'split'" in err and "--set jobs.count.inputs.docs=PATH" in err
    assert main(["run", "-c", yml, "--runs-dir", str(runs), "--node", "count",
                 "--set", f"jobs.count.inputs.docs={pipeline_dir / 'texts'}"]) == 0
    run_dir = pipeline_run(runs)
    assert [p.name for p in run_dir.iterdir() if p.is_dir() and p.name in ("split", "count", "report")] == ["count"]
    assert main(["run", "-c", yml, "--node", "nope"]) == 2
    assert "no such node; nodes: count, split, report" in capsys.readouterr().err


def test_a_cycle_and_an_unknown_node_are_one_line_errors(pipeline_dir: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    yml = str(pipeline_dir / "pipeline.yml")
    assert main(["run", "-c", yml, "--set", "jobs.split.inputs.source=${{parent.jobs.report.outputs.x}}"]) == 2
    assert "cycle: count -> split -> report -> count" in capsys.readouterr().err
    assert main(["run", "-c", yml, "--set", "jobs.report.inputs.counted=${{parent.jobs.cnt.outputs.counts}}"]) == 2
    assert "binds to node 'cnt', which the pipeline does not have" in capsys.readouterr().err


@pytest.mark.parametrize("sample", ["oj_sales", "iris"])
def test_azure_sample_shapes_run_with_zero_edits(sample: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    folder = shutil.copytree(SAMPLES / sample, tmp_path / sample)
    runs = tmp_path / "runs"
    assert main(["run", "-c", str(folder / "pipeline.yml"), "--runs-dir", str(runs)]) == 0, capsys.readouterr()
    run_dir = pipeline_run(runs)
    if sample == "oj_sales":
        summary = (run_dir / "outputs" / "scoring_summary").read_text().splitlines()
        assert len(summary) == 9  # 3 stores x 3 brands: one model each
        assert {tuple(line.split()[:2]) for line in summary} == {
            (store, brand) for store in ("1000", "1001", "1002") for brand in ("dominicks", "minute.maid", "tropicana")}
        node_dir = node_run(run_dir, "partition_and_train")
        assert len(query(node_dir, "SELECT * FROM metrics WHERE name = 'mean_quantity'")) == 9
    else:
        node_dir = node_run(run_dir, "batch_prediction")
        output = node_dir / "outputs" / "job_output_file"
        rows = output.read_text().splitlines()
        assert len(rows) == 150
        assert sum("setosa" in row for row in rows) == 50
        assert query(node_dir, "SELECT count(*) AS n FROM mini_batches")[0]["n"] > 1  # 1 KB mini-batches


def test_exporters_get_the_pipeline_span_as_the_parent_of_the_node_spans(
        pipeline_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = pipeline_dir / "exported.jsonl"
    monkeypatch.setenv("PIPEOBS_EXPORT_JSONL", str(target))
    runs = pipeline_dir / "runs"
    assert main(["run", "-c", str(pipeline_dir / "pipeline.yml"), "--runs-dir", str(runs), "--export", "jsonl",
                 "--node", "count", "--set", f"jobs.count.inputs.docs={pipeline_dir / 'texts'}"]) == 0
    spans = [r for r in map(json.loads, target.read_text().splitlines()) if r["type"] == "span"]
    [pipeline] = [s for s in spans if s["name"] == "pipeline"]
    [job] = [s for s in spans if s["name"] == "job"]
    assert (job["trace_id"], job["parent_span_id"]) == (pipeline["trace_id"], pipeline["span_id"])
    assert pipeline["parent_span_id"] is None


def test_the_web_explorer_shows_the_pipeline_with_its_nodes_under_it(pipeline_dir: Path) -> None:
    import re

    import httpx

    from tests.browser import explorer

    runs = pipeline_dir / "runs"
    assert main(["run", "-c", str(pipeline_dir / "pipeline.yml"), "--runs-dir", str(runs)]) == 0
    with explorer(runs) as url, httpx.Client(base_url=url, timeout=30) as client:
        page = client.get("/").text
        rows = re.findall(r'<tr class="run-row".*?</tr>', page, re.DOTALL)
        steps = [re.sub(r"<[^>]+>", "", re.findall(r"<td>(.*?)</td>", row, re.DOTALL)[1]).strip() for row in rows]
        assert steps == ["words", "↳ split", "↳ count", "↳ report"]
        for name in re.findall(r'class="run-link" href="/runs/([^"]+)"', page):
            assert client.get(f"/runs/{name}").status_code == 200, name


TRAIN_COMPONENT = """
$schema: https://azuremlschemas.azureedge.net/latest/commandComponent.schema.json
name: train_data_component_cli
type: command
inputs:
  training_data: {type: uri_folder}
  max_epocs: {type: integer, optional: true}
  learning_rate: {type: number, default: 0.01, optional: true}
outputs:
  model_output: {type: uri_folder}
code: ./src
environment: azureml://registries/azureml/environments/sklearn-1.5/labels/latest
command: >-
  echo train $[[--max_epocs ${{inputs.max_epocs}}]] $[[--learning_rate ${{inputs.learning_rate}}]]
  > ${{outputs.model_output}}/model.txt
"""

COMPONENT_PIPELINE = """
type: pipeline
display_name: e2e local components
settings:
  default_datastore: azureml:workspaceblobstore
inputs:
  training_input: {type: uri_folder, path: ./texts}
  epochs: 20
jobs:
  train_job:
    type: command
    component: ./train.yml
    inputs:
      training_data: ${{parent.inputs.training_input}}
      max_epocs: ${{parent.inputs.epochs}}
  score_job:
    type: command
    command: cat ${{inputs.model}}/model.txt > ${{outputs.scores}}/scores.txt
    inputs:
      model: ${{parent.jobs.train_job.outputs.model_output}}
    outputs:
      scores:
        type: uri_folder
        path: azureml://datastores/${{default_datastore}}/paths/azureml/${{name}}/${{output_name}}/
"""


@pytest.fixture
def component_dir(pipeline_dir: Path) -> Path:
    write(pipeline_dir / "train.yml", TRAIN_COMPONENT)
    write(pipeline_dir / "pipeline.yml", COMPONENT_PIPELINE)
    return pipeline_dir


class TestCheckedBeforeAnyNodeRuns:
    @pytest.mark.parametrize(("override", "message"), [
        ("jobs.score_job.inputs.model=${{parent.jobs.train_job.outputs.model_outptu}}",
         "pipeline.yml jobs.score_job inputs.model: ${{parent.jobs.train_job.outputs.model_outptu}} names nothing in "
         "this pipeline; did you mean ${{parent.jobs.train_job.outputs.model_output}}?"),
        ("jobs.train_job.inputs.training_data=${{parents.inputs.training_input}}",
         "did you mean ${{parent.inputs.training_input}}?"),
        ("jobs.score_job.command=cat ${{inputs.modle}}",
         "pipeline.yml jobs.score_job command: ${{inputs.modle}} is not an input or output of this job; did you mean "
         "${{inputs.model}}?"),
        ("inputs.epochs=twenty",
         "pipeline.yml jobs.train_job inputs.max_epocs is declared integer, and 'twenty' is not one; give an integer"),
        ("jobs.train_job.inputs.learning_rte=0.1",
         "pipeline.yml jobs.train_job inputs.learning_rte: the component declares no such input; did you mean "
         "learning_rate?"),
        ("jobs.score_job.inputs.extra.path=azureml:iris:1",
         "asset 'azureml:iris:1' is in an Azure ML workspace"),
        ("jobs.score_job.inputs.extra.path=https://example.com/data.csv",
         "give a local path (--set jobs.score_job.inputs.extra.path=PATH)"),
    ])
    def test_a_mistake_in_a_later_node_is_one_line_before_the_first_node_runs(
            self, component_dir: Path, capsys: pytest.CaptureFixture[str], override: str, message: str) -> None:
        """Bindings, literal types, undeclared inputs, assets and cloud paths of every node are checked up front."""
        runs = component_dir / "runs"

        code = main(["run", "-c", str(component_dir / "pipeline.yml"), "--runs-dir", str(runs), "--set", override])

        captured = capsys.readouterr()
        assert code == 2
        assert message in captured.err and len(captured.err.strip().splitlines()) == 1, captured.err
        assert "node train_job" not in captured.out and not runs.exists()

    def test_node_alone_is_not_held_up_by_another_nodes_asset(self, component_dir: Path) -> None:
        """--node checks the paths of the node it runs, not those of the nodes it leaves out."""
        runs = component_dir / "runs"

        code = main(["run", "-c", str(component_dir / "pipeline.yml"), "--runs-dir", str(runs), "--node", "train_job",
                     "--set", "jobs.score_job.inputs.extra.path=azureml:iris:1"])

        assert code == 0

    def test_components_literals_optional_blocks_and_datastore_outputs_run(
            self, component_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A local component with an integer input, a dropped-or-kept $[[...]] and a templated datastore output."""
        runs = component_dir / "runs"

        assert main(["run", "-c", str(component_dir / "pipeline.yml"), "--runs-dir", str(runs)]) == 0

        [scores] = (component_dir / "datastores" / "workspaceblobstore" / "azureml").glob("score_job_*/scores/scores.txt")
        assert scores.read_text().strip() == "train --max_epocs 20 --learning_rate 0.01"
        assert pipeline_run(runs).parent.name == "e2e-local-components"


def test_a_node_that_cannot_start_fails_alone_and_its_dependants_are_skipped(
        pipeline_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An input an upstream node did not write is that node's failure: named, dependants skipped, exit 42."""
    runs = pipeline_dir / "runs"

    code = main(["run", "-c", str(pipeline_dir / "pipeline.yml"), "--runs-dir", str(runs),
                 "--set", "jobs.split.command=echo nothing written"])

    captured = capsys.readouterr()
    assert code == 42
    assert "node count: cannot start:" in captured.err and "error:" not in captured.err
    assert "node report: skipped: upstream node 'count' did not complete" in captured.out
    assert "pipeline words: Failed: node count failed: cannot start:" in captured.out
    row = query(pipeline_run(runs), "SELECT status, summary FROM runs")[0]
    nodes = {n["node"]: n["status"] for n in json.loads(row["summary"])["nodes"]}
    assert (row["status"], nodes) == ("Failed", {"split": "Completed", "count": "Failed", "report": "Skipped"})


def test_unknown_settings_are_a_notice_as_azure_takes_any(pipeline_dir: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Azure's own 3a_basic_pipeline sample carries settings.default_datestore: it runs, with a did-you-mean notice."""
    runs = pipeline_dir / "runs"

    code = main(["run", "-c", str(pipeline_dir / "pipeline.yml"), "--runs-dir", str(runs),
                 "--set", "settings.default_datestore=azureml:workspaceblobstore"])

    assert code == 0
    assert "'default_datestore' is not a setting pipeobs knows; it is recorded, not used; did you mean " \
           "default_datastore?" in capsys.readouterr().err
