"""Running a v2 job YAML (:func:`run_v2_file`), and one parallel or command job of it (:func:`run_node`).

A single job runs in ``<runs>/<name>/<step_id>/``; a pipeline (:mod:`pipeobs.v2.pipeline`) runs each of its
nodes with :func:`run_node` inside its own run directory.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeobs.errors import ConfigError
from pipeobs.v2.document import apply_sets, read_yaml
from pipeobs.v2.expressions import substitute
from pipeobs.v2.locations import DEFAULT_DATASTORE, Locations
from pipeobs.v2.nodes import (
    Node,
    Value,
    io_lookup,
    load_job_file,
    prepare_outputs,
    resolve_inputs,
    resolve_outputs,
)
from pipeobs.v2.schema import check_keys, job_type


@dataclass
class RunOptions:
    """What ``pipeobs run`` says about where and how, beyond the YAML."""

    runs_dir: str = "runs"
    plan: dict[str, Any] | None = None  # ParallelRunStep.plan keywords (exporters, alerts, backend...)
    assets: str | None = None
    node: str | None = None  # --node NAME: run this node of the pipeline alone
    allow_reuse: bool = True


# `pipeobs run` flags that say where and how a v2 job runs; the job's own values come from the YAML and --set.
RUN_FLAGS = ("runs_dir", "model_dir", "export", "export_deadline", "metrics_port", "pushgateway", "alerts",
             "alert_webhook", "alertmanager", "alert_interval", "backend", "ray_address", "allow_reuse")


def run_from_command_line(config: str, given: dict[str, Any], plan: dict[str, Any], sets: list[str],
                          node: str | None, assets: str | None) -> int:
    """``pipeobs run -c job.yml``: ``given`` are the flags given, ``plan`` the plan keywords made of them; a flag
    that is a job value (``--mini-batch-size``) is refused, pointing to ``--set``."""
    extra = next((k for k in given if k not in RUN_FLAGS and k != "entry_script"), None)
    if given.get("entry_script") or extra:
        flag = "an entry script" if given.get("entry_script") else "--" + str(extra).replace("_", "-")
        raise ConfigError(f"{config} is an Azure ML v2 job YAML: {flag} cannot be given beside it; change the "
                          "YAML's value with --set KEY.PATH=VALUE (e.g. --set mini_batch_size=5)")
    options = RunOptions(runs_dir=given.get("runs_dir") or "runs", plan=plan, assets=assets, node=node,
                         allow_reuse=given.get("allow_reuse", True))
    return run_v2_file(config, sets, options)


def run_v2_file(path: str, sets: list[str], options: RunOptions) -> int:
    """Run a v2 job YAML; the exit code of ``pipeobs run`` (0, or 42 when the job or a node failed)."""
    file = Path(path)
    document = apply_sets(read_yaml(file), sets)
    locations = Locations(file, options.assets)
    kind = document.get("type") or ("pipeline" if "jobs" in document else "parallel" if "task" in document
                                    else "command")
    if kind == "pipeline":
        from pipeobs.v2.pipeline import PipelineRun

        return PipelineRun(file, document, locations, options).run()
    if options.node:
        raise ConfigError("--node names a node of a pipeline; this YAML is a single job")
    check_keys(document, job_type(document, file.name), file.name)
    node = load_job_file(file, document, locations)
    step_id = new_step_id(node.name)
    run_dir = Path(options.runs_dir).resolve() / node.name / step_id
    inputs = resolve_inputs(node, locations, None)
    outputs = resolve_outputs(node, locations, run_dir, output_names(step_id, document), None)
    result = run_node(node, inputs, outputs, locations, options, Path(options.runs_dir), step_id, None)
    return exit_code(result)


def run_node(node: Node, inputs: dict[str, Value], outputs: dict[str, Value], locations: Locations,
             options: RunOptions, runs_root: Path, step_id: str, parent: tuple[str, str] | None) -> Any:
    """Run one parallel or command job; its result (already printed)."""
    if node.type == "command":
        return _run_command(node, inputs, outputs, locations, runs_root, step_id, parent)
    from pipeobs.step import run_plan
    from pipeobs.summary import Progress, print_result
    from pipeobs.v2.parallel import build_parallel

    step = build_parallel(node, inputs, outputs, locations, _notice, options.allow_reuse)
    plan = step.plan(runs_root, step_id=step_id, parent=parent, **(options.plan or {}))
    prepare_outputs(outputs)
    _record_job(plan.run_dir.path, node, inputs, outputs)
    with Progress() as progress:
        result = run_plan(plan, progress.update)
    print_result(result)
    print_outputs(outputs)
    return result


def _run_command(node: Node, inputs: dict[str, Value], outputs: dict[str, Value], locations: Locations,
                 runs_root: Path, step_id: str, parent: tuple[str, str] | None) -> Any:
    from pipeobs.v2.command import CommandRun, print_command_result, run_command

    fields, where = node.fields, node.where
    if not fields.get("command"):
        raise ConfigError(f"{where}: a command job needs 'command'")
    command = substitute(str(fields["command"]), io_lookup(inputs, outputs, where), f"{where} command", quote=True)
    code = fields.get("code")
    timeout = (fields.get("limits") or {}).get("timeout")
    run_dir = runs_root / node.name / step_id
    if code:
        code_dir = locations.path(code, node.code_base, f"{where} code")
    else:  # as on Azure, a job without code runs in a folder of its own, where ./outputs exists
        code_dir = str(run_dir.resolve())
        (run_dir / "outputs").mkdir(parents=True, exist_ok=True)
    variables = {str(k): str(v) for k, v in (fields.get("environment_variables") or {}).items()}
    # `python` in a command is the Python running pipeobs (as the workers'), with its packages
    variables.setdefault("PATH", os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    job = CommandRun(
        name=node.name, step_id=step_id, run_dir=run_dir, command=command, code_dir=code_dir,
        environment_variables=variables,
        timeout=float(timeout) if timeout else None,
        outputs={name: (value.type, value.text) for name, value in outputs.items() if value.text},
        record=_facts(node, inputs, outputs),
        parent_traceparent=parent[1] if parent else None, parent_step_id=parent[0] if parent else None,
        echo=lambda line: print(f"  {line}", flush=True),
    )
    result = run_command(job)
    print_command_result(result)
    print_outputs(outputs)
    return result


def output_names(step_id: str, document: dict[str, Any]) -> dict[str, str]:
    """What ``${{name}}`` and ``${{default_datastore}}`` mean in output paths: the job's step_id, and
    ``settings.default_datastore`` (without ``azureml:``) or the workspace default."""
    datastore = str((document.get("settings") or {}).get("default_datastore") or DEFAULT_DATASTORE)
    return {"name": step_id, "default_datastore": datastore.removeprefix("azureml:")}


def _facts(node: Node, inputs: dict[str, Value], outputs: dict[str, Value]) -> dict[str, Any]:
    return {"yaml": node.where, "display_name": node.display_name, "fields": node.fields,
            "inputs": {k: v.text for k, v in inputs.items()}, "outputs": {k: v.text for k, v in outputs.items()}}


def _record_job(run_dir: Path, node: Node, inputs: dict[str, Value], outputs: dict[str, Value]) -> None:
    """``azureml_job.json`` in the run directory: the v2 fields pipeobs records but has no use for here
    (compute, environment, identity, tags...), with the inputs and outputs as resolved."""
    (run_dir / "azureml_job.json").write_text(json.dumps(_facts(node, inputs, outputs), indent=2, default=str))


def print_outputs(outputs: dict[str, Value]) -> None:
    for name, value in outputs.items():
        print(f"output {name}: {value.text}", flush=True)


def new_step_id(name: str) -> str:
    from pipeobs.record.rundir import new_step_id

    return new_step_id(name)


def exit_code(result: Any) -> int:
    if getattr(result, "interrupted_by", None):
        import signal

        return 128 + signal.Signals[result.interrupted_by].value
    return 0 if result.ok else 42


def _notice(text: str) -> None:
    print(f"notice: {text}", file=sys.stderr, flush=True)
