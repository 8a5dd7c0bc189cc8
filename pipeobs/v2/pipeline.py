"""A v2 pipeline job: its nodes in order, its run directory, store and span.

A pipeline runs its nodes one after another in dependency order (``${{parent.jobs.A.outputs.x}}`` makes
A run first; otherwise the YAML's order). It has a run directory of its own,
``<runs>/<pipeline>/<pipeline step_id>/``, holding its store (its ``runs`` row, kind ``pipeline``, and its
``pipeline`` span), its outputs, and one run directory per node, ``<node>/<node step_id>/``. Each node's
job span is a child of the pipeline's span. A node that fails stops every node that depends on it (and,
with ``settings.continue_on_step_failure: false``, every node not yet run); the summary names it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeobs.errors import ConfigError, PipeobsError
from pipeobs.v2.expressions import BINDING, bindings, substitute
from pipeobs.v2.locations import Locations
from pipeobs.v2.nodes import (
    Node,
    Value,
    check_own_bindings,
    did_you_mean,
    job_name,
    load_node,
    resolve_inputs,
    resolve_outputs,
)
from pipeobs.v2.run import RunOptions, exit_code, new_step_id, output_names, print_outputs, run_node
from pipeobs.v2.schema import check_keys, check_node_name, ports

NODE_FIELDS_OWN_CONTEXT = ("command", "input_data", "task", "component", "inputs", "outputs", "type")


@dataclass
class NotStarted:
    """A node that failed before it had a run (an input an upstream node did not write, a missing script):
    a failed node, so its dependants are skipped and the pipeline goes on as after any failure."""

    reason: str
    status: str = "Failed"
    ok: bool = False
    step_id: str | None = None
    run_dir: str | None = None
    duration_seconds: float = 0.0
    interrupted_by: str | None = None


class PipelineRun:
    """One run of a pipeline job: its nodes in order, its run directory, store and span."""

    def __init__(self, file: Path, document: dict[str, Any], locations: Locations, options: RunOptions) -> None:
        check_keys(document, "pipeline", file.name)
        self.file, self.document, self.locations, self.options = file, document, locations, options
        self.name = job_name(document, file)
        self.settings = document.get("settings") or {}
        jobs = document.get("jobs")
        if not isinstance(jobs, dict) or not jobs:
            raise ConfigError(f"{file.name}: a pipeline needs 'jobs', a mapping of node names to jobs")
        base = file.resolve().parent
        self.nodes = {check_node_name(name, file.name): load_node(_mapping(spec, name, file), name, base,
                                                                   f"{file.name} jobs.{name}", locations)
                      for name, spec in jobs.items()}
        self.order = dependency_order(self.nodes)
        self.inputs = self._pipeline_inputs(base)
        if options.node is not None and options.node not in self.nodes:
            raise ConfigError(f"--node {options.node}: the pipeline has no such node; nodes: {', '.join(self.nodes)}")
        self.selected = self._nodes_to_run()
        self._check_bindings()

    def _check_bindings(self) -> None:
        """Every ``${{parent...}}`` names a pipeline input or output or another node's, every
        ``${{inputs.X}}`` a node's own, and the paths of every node that is to run are local (no
        unmapped asset or cloud URI): checked before the first node runs."""
        known = [f"parent.inputs.{name}" for name in ports(self.document.get("inputs"), self.file.name)]
        known += [f"parent.outputs.{name}" for name in ports(self.document.get("outputs"), self.file.name, True)]
        for name, node in self.nodes.items():
            known += [f"parent.jobs.{name}.inputs.{port}" for port in node.inputs]
            known += [f"parent.jobs.{name}.outputs.{port}" for port in node.outputs]
        for node in self.nodes.values():
            check_own_bindings(node)
            if node.name in self.selected:
                resolve_inputs(node, self.locations, self._static_binder)  # assets, cloud URIs, literals' types
            for where, value in _parent_bound(node):
                for binding in bindings(value):
                    if binding.split(".")[0] in ("parent", "parents") and binding not in known:
                        raise ConfigError(f"{node.where} {where}: ${{{{{binding}}}}} names nothing in this pipeline"
                                          + did_you_mean(binding, known))

    def _static_binder(self, binding: str, where: str) -> Value:
        """What a binding is before any node runs: a pipeline input's value, else not known yet."""
        parts = binding.split(".")
        if parts[:2] == ["parent", "inputs"] and len(parts) == 3 and parts[2] in self.inputs:
            return self.inputs[parts[2]]
        return Value("uri_folder", None)

    def _pipeline_inputs(self, base: Path) -> dict[str, Value]:
        values = {}
        for name, port in ports(self.document.get("inputs"), self.file.name).items():
            where = f"{self.file.name} inputs.{name}"
            if port.value is None:
                values[name] = Value(port.type, None, True)
            elif port.is_data:
                values[name] = Value(port.type, self.locations.path(port.value, base, where))
            else:
                values[name] = Value(port.type, str(port.value))
        return values

    def run(self) -> int:
        from pipeobs.record.rundir import RunDir

        step_id = new_step_id(self.name)
        self.run_dir = RunDir.create(self.options.runs_dir, self.name, step_id).path
        names = output_names(step_id, self.document)
        self.outputs = self._pipeline_outputs(names)
        self.results: dict[str, Any] = {}
        self.values: dict[str, tuple[dict[str, Value], dict[str, Value]]] = {}
        plan = self.options.plan or {}
        with PipelineRecord(self.run_dir, step_id, self.name, self._facts(), plan.get("exporters") or [],
                            plan.get("export_deadline", 10.0)) as record:
            status, reason = "Completed", None
            try:
                for name in self.selected:
                    skipped = self._blocked(name)
                    if skipped:
                        self.results[name] = skipped
                        print(f"node {name}: skipped: {skipped}", flush=True)
                        continue
                    print(f"node {name} ({self.nodes[name].type}):", flush=True)
                    try:
                        result = self.results[name] = self._run_node(name, step_id, record.traceparent)
                    except PipeobsError as exc:  # its inputs are not there, its script is missing...
                        result = self.results[name] = NotStarted(f"cannot start: {exc}")
                        print(f"node {name}: {result.reason}", file=sys.stderr, flush=True)
                    if getattr(result, "interrupted_by", None):
                        record.finish("Interrupted", f"node {name} was interrupted", self._node_rows())
                        return exit_code(result)
            except KeyboardInterrupt:
                record.finish("Interrupted", "interrupted", self._node_rows())
                raise
            failed = [n for n, r in self.results.items() if not isinstance(r, str) and not r.ok]
            if failed:
                status, reason = "Failed", f"node {failed[0]} failed: {self.results[failed[0]].reason or 'see its run'}"
            record.finish(status, reason, self._node_rows())
        self._print_summary(status, reason)
        return 0 if status == "Completed" else 42

    def _nodes_to_run(self) -> list[str]:
        if self.options.node is None:
            return self.order
        node = self.nodes[self.options.node]
        for name, port in node.inputs.items():
            for binding in bindings(str(port.value)) if isinstance(port.value, str) else []:
                if binding.startswith("parent.jobs."):
                    upstream = binding.split(".")[2]
                    raise ConfigError(f"--node {node.name}: input '{name}' comes from node '{upstream}' "
                                      f"(${{{{{binding}}}}}); running the node alone, give it with "
                                      f"--set jobs.{node.name}.inputs.{name}=PATH")
        return [self.options.node]

    def _blocked(self, name: str) -> str | None:
        """Why node ``name`` does not run: an upstream node failed, or an earlier failure stops the rest."""
        for upstream in sorted(upstream_nodes(self.nodes[name])):
            result = self.results.get(upstream)
            if isinstance(result, str) or (result is not None and not result.ok):
                return f"upstream node '{upstream}' did not complete"
        stop = self.settings.get("continue_on_step_failure") is False
        failed = next((n for n, r in self.results.items() if not isinstance(r, str) and not r.ok), None)
        if stop and failed:
            return f"node '{failed}' failed and settings.continue_on_step_failure is false"
        return None

    def _run_node(self, name: str, pipeline_id: str, traceparent: str) -> Any:
        node = self.nodes[name]
        step_id = new_step_id(name)
        node_dir = self.run_dir / name / step_id
        bind = self._binder(name)
        _bind_fields(node, bind)
        inputs = resolve_inputs(node, self.locations, bind)
        outputs = resolve_outputs(node, self.locations, node_dir, output_names(step_id, self.document), bind)
        self.values[name] = (inputs, outputs)
        return run_node(node, inputs, outputs, self.locations, self.options, self.run_dir, step_id,
                        (pipeline_id, traceparent))

    def _binder(self, node_name: str) -> Callable[[str, str], Value]:
        def bind(binding: str, where: str) -> Value:
            parts = binding.split(".")
            if parts[:2] == ["parent", "inputs"] and len(parts) == 3 and parts[2] in self.inputs:
                return self.inputs[parts[2]]
            if parts[:2] == ["parent", "outputs"] and len(parts) == 3 and parts[2] in self.outputs:
                return self.outputs[parts[2]]
            if parts[:2] == ["parent", "jobs"] and len(parts) == 5 and parts[3] in ("inputs", "outputs"):
                upstream = self.values.get(parts[2])
                if upstream is None:
                    raise ConfigError(f"{where}: ${{{{{binding}}}}} names node '{parts[2]}', which has not run")
                table = upstream[0] if parts[3] == "inputs" else upstream[1]
                if parts[4] in table:
                    return table[parts[4]]
            raise ConfigError(f"{where}: ${{{{{binding}}}}} names nothing in this pipeline (parent.inputs.X, "
                              "parent.outputs.X or parent.jobs.NODE.outputs.X)")

        return bind

    def _pipeline_outputs(self, names: dict[str, str]) -> dict[str, Value]:
        values = {}
        for name, port in ports(self.document.get("outputs"), self.file.name, outputs=True).items():
            if port.value is None:
                values[name] = Value(port.type, str(self.run_dir / "outputs" / name))
            else:
                values[name] = Value(port.type, self.locations.output_path(
                    port.value, self.file.resolve().parent, f"{self.file.name} outputs.{name}",
                    {**names, "output_name": name}))
        return values

    def _facts(self) -> dict[str, Any]:
        return {"yaml": str(self.file.resolve()), "document": self.document,
                "inputs": {k: v.text for k, v in self.inputs.items()},
                "outputs": {k: v.text for k, v in self.outputs.items()}, "order": self.order}

    def _node_rows(self) -> list[dict[str, Any]]:
        rows = []
        for name in self.selected:
            result = self.results.get(name)
            if isinstance(result, str) or result is None:
                rows.append({"node": name, "status": "Skipped" if result else "NotRun", "reason": result})
            else:
                rows.append({"node": name, "status": result.status, "step_id": result.step_id,
                             "run_dir": result.run_dir, "reason": result.reason,
                             "duration": round(result.duration_seconds, 3)})
        return rows

    def _print_summary(self, status: str, reason: str | None) -> None:
        print(f"\npipeline {self.name}: {status}" + (f": {reason}" if reason else ""))
        for row in self._node_rows():
            detail = row.get("run_dir") or row.get("reason") or ""
            print(f"  {row['node']:<24} {row['status']:<11} {detail}")
        print_outputs(self.outputs)
        print(f"run directory: {self.run_dir}", flush=True)


class PipelineRecord:
    """The pipeline's own store row and span (the parent of its nodes' job spans); the span also goes to the
    run's exporters, so that a tracing backend gets the parent of the nodes' spans."""

    def __init__(self, run_dir: Path, step_id: str, name: str, facts: dict[str, Any], exporters: list[str],
                 export_deadline: float) -> None:
        from opentelemetry.trace import SpanKind

        from pipeobs.record.store import Store
        from pipeobs.records import Span
        from pipeobs.step import this_driver
        from pipeobs.telemetry.spans import CallbackSpanExporter, make_tracer_provider, traceparent_of

        self.store = Store(run_dir / "pipeobs.db", step_id)
        self.store.insert_run({"step_id": step_id, "step_name": name, "status": "Running", "started_at": time.time(),
                               "entry_script": facts["yaml"], "config": json.dumps(facts, default=str),
                               "settings": json.dumps(facts["document"].get("settings") or {}, default=str),
                               "inputs": json.dumps({"inputs": facts["inputs"], "outputs": facts["outputs"]}),
                               "kind": "pipeline", **this_driver()})
        store = self.store
        self.run_dir, self.name, self.exporters, self.export_deadline = run_dir, name, exporters, export_deadline
        self.finished: list[Span] = []

        def ended(record: dict[str, Any]) -> None:
            store.add_span(Span(record, "driver"))
            self.finished.append(Span(record, "driver"))

        self.provider = make_tracer_provider(name, {"pipeobs.step_id": step_id}, CallbackSpanExporter(ended))
        self.span = self.provider.get_tracer("pipeobs").start_span(
            "pipeline", kind=SpanKind.INTERNAL, attributes={"pipeobs.step_id": step_id, "pipeobs.step_name": name})
        self.traceparent = traceparent_of(self.span)
        self.store.flush()

    def __enter__(self) -> PipelineRecord:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.store.close()

    def finish(self, status: str, reason: str | None, nodes: list[dict[str, Any]]) -> None:
        from opentelemetry.trace import Status, StatusCode

        self.span.set_attribute("pipeobs.status", status)
        self.span.set_status(Status(StatusCode.OK) if status == "Completed" else Status(StatusCode.ERROR, reason))
        self.span.end()
        self.provider.shutdown()
        self.store.update_run(status=status, ended_at=time.time(), error=reason, summary=json.dumps({"nodes": nodes}))
        if self.exporters:
            self._export()
        self.store.flush()

    def _export(self) -> None:
        from pipeobs.export.run import RunExports

        def say(level: str, kind: str, message: str) -> None:
            if level != "INFO":
                print(f"pipeline {self.name}: {message}", file=sys.stderr, flush=True)

        exports = RunExports(self.run_dir, self.store, self.name, self.exporters, self.export_deadline, say)
        for span in self.finished:
            exports.add_span(span)
        exports.finish()


def dependency_order(nodes: dict[str, Node]) -> list[str]:
    """Node names so that each comes after the nodes it binds to; otherwise in the YAML's order."""
    order: list[str] = []
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            cycle = " -> ".join([*visiting[visiting.index(name):], name])
            raise ConfigError(f"the pipeline's nodes depend on each other in a cycle: {cycle}")
        visiting.append(name)
        for upstream in upstream_nodes(nodes[name]):
            if upstream not in nodes:
                raise ConfigError(f"{nodes[name].where}: binds to node '{upstream}', which the pipeline does not have; "
                                  f"nodes: {', '.join(nodes)}")
            visit(upstream)
        visiting.pop()
        order.append(name)

    for name in nodes:
        visit(name)
    return order


def upstream_nodes(node: Node) -> set[str]:
    """The nodes ``node`` binds to (``${{parent.jobs.NAME...}}`` anywhere in its inputs or fields)."""
    text = json.dumps([{k: p.value for k, p in node.inputs.items()}, node.fields], default=str)
    return {name.split(".")[2] for name in BINDING.findall(text) if name.startswith("parent.jobs.")
            and len(name.split(".")) > 2}


def _parent_bound(node: Node) -> list[tuple[str, str]]:
    """(where, text) of every value bound in the parent's context: the node's inputs and outputs, and its
    fields other than those read in its own context."""
    found = [(f"{section}.{name}", port.value) for section, table in (("inputs", node.inputs), ("outputs", node.outputs))
             for name, port in table.items() if isinstance(port.value, str)]

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{where}.{key}")
        elif isinstance(value, str):
            found.append((where, value))

    for key, value in node.fields.items():
        if key not in NODE_FIELDS_OWN_CONTEXT:
            walk(value, key)
    return found


def _bind_fields(node: Node, bind: Callable[[str, str], Value]) -> None:
    """``${{parent...}}`` in a node's other fields (``mini_batch_size: ${{parent.inputs.size}}``): the value,
    typed as the bound literal."""

    def bound(value: Any, where: str) -> Any:
        if isinstance(value, dict):
            return {k: bound(v, f"{where}.{k}") for k, v in value.items()}
        if not isinstance(value, str) or not any(b.startswith("parent.") for b in bindings(value)):
            return value
        whole = BINDING.fullmatch(value.strip())
        if whole:
            found = bind(whole.group(1), where)
            return _typed(found)
        return substitute(value, lambda name: bind(name, where).text if name.startswith("parent.") else f"${{{{{name}}}}}",
                          where)

    for key, value in list(node.fields.items()):
        if key not in NODE_FIELDS_OWN_CONTEXT:
            node.fields[key] = bound(value, f"{node.where} {key}")


def _typed(value: Value) -> Any:
    if value.text is None:
        return None
    if value.type == "integer":
        return int(value.text)
    if value.type == "number":
        return float(value.text)
    if value.type == "boolean":
        return value.text.lower() == "true"
    return value.text


def _mapping(spec: Any, name: str, file: Path) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise ConfigError(f"{file.name} jobs.{name} must be a mapping (a job), not {spec!r}")
    return spec
