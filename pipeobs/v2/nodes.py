"""A parallel or command job (standalone, or a node of a pipeline) and the values of its inputs and outputs.

:func:`load_node` merges a node with the component file it names (the node's keys win, as in Azure's
SDK) and checks its keys. :func:`resolve_ports` turns its inputs and outputs into local values: literals
as text, data as absolute local paths, outputs without a path under the node's run directory
(``<run dir>/outputs/<name>``). What a pipeline binds (``${{parent...}}``) is asked of ``bind``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeobs.errors import ConfigError
from pipeobs.v2.document import read_yaml
from pipeobs.v2.expressions import bindings, whole_binding
from pipeobs.v2.locations import Locations
from pipeobs.v2.schema import Port, check_keys, job_type, literal_text, ports

MERGED_BLOCKS = ("task", "resources", "retry_settings", "limits")


@dataclass
class Node:
    """A job or node with its component merged in; paths not yet resolved."""

    name: str
    type: str  # "parallel" | "command"
    fields: dict[str, Any]
    inputs: dict[str, Port]
    outputs: dict[str, Port]
    base: Path  # the folder of the file holding the node's own values
    code_base: Path  # the folder of the component file (or ``base``): ``code`` is relative to it
    where: str  # for messages: "pipeline.yml jobs.score"
    input_bases: dict[str, Path] = field(default_factory=dict)  # a component's default is relative to it

    @property
    def display_name(self) -> str:
        return str(self.fields.get("display_name") or self.name)


@dataclass
class Value:
    """A resolved input or output: its type and its text (a literal, or an absolute path); None: not given."""

    type: str
    text: str | None
    optional: bool = False

    @property
    def is_data(self) -> bool:
        return self.type not in ("string", "integer", "number", "boolean")


Bind = Callable[[str, str], Value]  # (binding name, where) -> its value in the parent


def load_node(data: dict[str, Any], name: str, base: Path, where: str, locations: Locations) -> Node:
    """A node (or standalone job) of type parallel or command, merged with its ``component:`` file."""
    kind = job_type(data, where)
    component, code_base = _component(data, base, where, locations)
    if component is not None:
        kind = job_type(component, f"component of {where}", default=kind)
    if kind not in ("parallel", "command"):
        raise ConfigError(f"{where}: a node of type {kind} cannot run here; nodes are parallel or command jobs")
    check_keys(data, kind, where)
    fields = {k: v for k, v in (component or {}).items() if k not in ("inputs", "outputs")}
    for key, value in data.items():
        if key in MERGED_BLOCKS and isinstance(value, dict) and isinstance(fields.get(key), dict):
            fields[key] = {**fields[key], **value}
        elif key not in ("inputs", "outputs", "component"):
            fields[key] = value
    declared_in = ports((component or {}).get("inputs"), f"component of {where}")
    declared_out = ports((component or {}).get("outputs"), f"component of {where}", outputs=True)
    given_in = ports(data.get("inputs"), where)
    given_out = ports(data.get("outputs"), where, outputs=True)
    if component is not None:
        _declared(given_in, declared_in, f"{where} inputs")
        _declared(given_out, declared_out, f"{where} outputs")
    inputs = _merge(declared_in, given_in)
    input_bases = {n: (base if n in given_in and given_in[n].value is not None else code_base) for n in inputs}
    return Node(name, kind, fields, inputs, _merge(declared_out, given_out), base, code_base, where, input_bases)


def _component(data: dict[str, Any], base: Path, where: str,
               locations: Locations) -> tuple[dict[str, Any] | None, Path]:
    ref = data.get("component")
    if ref is None:
        return None, base
    if isinstance(ref, dict):  # an inline component
        check_keys(ref, job_type(ref, f"component of {where}"), f"component of {where}")
        return ref, base
    text = str(ref)
    if text.startswith("azureml:") and not text.startswith("azureml://"):
        path = locations.asset(text, f"{where}.component")
    elif text.startswith("azureml://"):
        raise ConfigError(f"{where}: component '{text}' is in an Azure ML registry, which pipeobs does not reach: "
                          "give a local component YAML (component: ./component.yml)")
    else:
        path = base / text.removeprefix("file:")
    component = read_yaml(path, "component YAML")
    check_keys(component, job_type(component, str(path)), str(path))
    return component, path.resolve().parent


def _declared(given: dict[str, Port], declared: dict[str, Port], where: str) -> None:
    """A node gives only the inputs and outputs its component declares (a misspelt one would be ignored)."""
    import difflib

    for name in given:
        if name not in declared:
            close = difflib.get_close_matches(name, list(declared), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else f"it declares: {', '.join(declared) or 'none'}"
            raise ConfigError(f"{where}.{name}: the component declares no such {where.rsplit(' ', 1)[-1][:-1]}; {hint}")


def _merge(declared: dict[str, Port], given: dict[str, Port]) -> dict[str, Port]:
    """The component's declarations with the node's values: the node's type wins when it says one."""
    merged = dict(declared)
    for name, port in given.items():
        base = declared.get(name)
        if base is None:
            merged[name] = port
            continue
        kind = port.type if port.value is not None and _typed(port) else base.type
        value = port.value if port.value is not None else base.value
        merged[name] = Port(name, kind, value, port.mode or base.mode, base.optional)
    return merged


def _typed(port: Port) -> bool:
    """Whether a given port says its type (a binding or a bare value leaves it to the declaration)."""
    return whole_binding(port.value) is None and not isinstance(port.value, str | int | float | bool)


def resolve_inputs(node: Node, locations: Locations, bind: Bind | None) -> dict[str, Value]:
    """Each input's value: literals as text, data as absolute local paths, bindings from ``bind``."""
    values = {}
    for name, port in node.inputs.items():
        where = f"{node.where} inputs.{name}"
        if whole_binding(port.value) is not None:
            values[name] = _bound(port, bind, where)
        elif port.value is None:
            values[name] = Value(port.type, None, True)
        elif port.is_data:
            values[name] = Value(port.type, locations.path(port.value, node.input_bases.get(name, node.base), where))
        else:
            values[name] = Value(port.type, checked_literal(port.type, literal_text(port.value), where))
    return values


LITERAL_CHECKS: dict[str, Callable[[str], object]] = {
    "integer": int, "number": float, "boolean": lambda text: {"true": 1, "false": 0}[text.lower()],
}


def checked_literal(kind: str, text: str, where: str) -> str:
    """``text`` when it is a value of an input declared ``integer``, ``number`` or ``boolean`` (as Azure
    checks a literal against its declaration before the job starts)."""
    check = LITERAL_CHECKS.get(kind)
    if check is not None:
        try:
            check(text)
        except (ValueError, KeyError):
            raise ConfigError(f"{where} is declared {kind}, and {text!r} is not one; give a"
                              f"{'n' if kind == 'integer' else ''} {kind}") from None
    return text


def resolve_outputs(node: Node, locations: Locations, run_dir: Path, names: dict[str, str],
                    bind: Bind | None) -> dict[str, Value]:
    """Each output's absolute local path: its own path, the pipeline output it binds, or
    ``<run dir>/outputs/<name>`` when it has none."""
    values = {}
    for name, port in node.outputs.items():
        where = f"{node.where} outputs.{name}"
        if whole_binding(port.value) is not None:
            values[name] = _bound(port, bind, where)
        elif port.value is None:
            values[name] = Value(port.type, str(run_dir / "outputs" / name))
        else:
            path = locations.output_path(port.value, node.base, where, {**names, "output_name": name})
            values[name] = Value(port.type, path)
    return values


def _bound(port: Port, bind: Bind | None, where: str) -> Value:
    """A port given as ``${{parent...}}``: the parent's value, typed by the port unless it left its type to
    what it binds (the default ``uri_folder``) or binds a literal."""
    binding = whole_binding(port.value)
    if bind is None:
        raise ConfigError(f"{where}: ${{{{{binding}}}}} only has a meaning inside a pipeline; give a value")
    bound = bind(str(binding), where)
    if port.type in LITERAL_CHECKS and not bound.is_data and bound.text is not None:
        return Value(port.type, checked_literal(port.type, bound.text, where), port.optional)
    kind = bound.type if port.type == "uri_folder" or not bound.is_data else port.type
    return Value(kind, bound.text, port.optional)


def io_lookup(inputs: dict[str, Value], outputs: dict[str, Value], where: str) -> Callable[[str], str | None]:
    """What ``${{inputs.x}}`` and ``${{outputs.y}}`` mean in a job's own fields."""

    def lookup(name: str) -> str | None:
        section, _, key = name.partition(".")
        table = inputs if section == "inputs" else outputs if section == "outputs" else None
        if table is None or key not in table:
            known = [f"inputs.{k}" for k in inputs] + [f"outputs.{k}" for k in outputs]
            raise ConfigError(f"{where}: ${{{{{name}}}}} is not an input or output of this job"
                              + (f"; known: {', '.join(known)}" if known else ""))
        return table[key].text

    return lookup


OWN_CONTEXT_FIELDS = (("command",), ("input_data",), ("task", "program_arguments"), ("task", "append_row_to"))


def check_own_bindings(node: Node) -> None:
    """Every ``${{inputs.X}}``/``${{outputs.Y}}`` in the node's own fields (``command``, ``input_data``,
    ``task.program_arguments``, ``task.append_row_to``) names one of its inputs or outputs: checked before
    anything runs, so a typo in the last node of a pipeline does not wait for the nodes before it."""
    known = [f"inputs.{name}" for name in node.inputs] + [f"outputs.{name}" for name in node.outputs]
    for path in OWN_CONTEXT_FIELDS:
        text: Any = node.fields
        for key in path:
            text = text.get(key) if isinstance(text, dict) else None
        for name in bindings(text) if isinstance(text, str) else []:
            if name not in known:
                raise ConfigError(f"{node.where} {'.'.join(path)}: ${{{{{name}}}}} is not an input or output of this "
                                  f"job{did_you_mean(name, known)}")


def did_you_mean(word: str, choices: list[str]) -> str:
    """``"; did you mean X?"``, or the choices when none is close (or ``""`` when there are none)."""
    import difflib

    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f"; did you mean ${{{{{close[0]}}}}}?"
    return f"; known: {', '.join(choices)}" if choices else ""


def prepare_outputs(outputs: dict[str, Value]) -> None:
    """Create output folders (a uri_file output: its folder) before the job runs, as Azure mounts them."""
    for value in outputs.values():
        if value.text is None:
            continue
        folder = Path(value.text).parent if value.type == "uri_file" else Path(value.text)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create output folder '{folder}': {exc.strerror or exc}") from None


def load_job_file(path: Path, data: dict[str, Any], locations: Locations) -> Node:
    """A standalone parallel or command job file as a node named after its ``name``, or the file."""
    return load_node(data, job_name(data, path), path.resolve().parent, path.name, locations)


def job_name(document: dict[str, Any], file: Path) -> str:
    """A job's or pipeline's run folder name: its ``name``, else its ``display_name`` made a name (a display
    name is free text: "Score items" is ``Score-items``), else the file's."""
    import re

    from pipeobs.config import check_v2_job_name

    if document.get("name"):
        return check_v2_job_name(str(document["name"]))
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(document.get("display_name") or "")).strip("-.")[:255]
    return slug or file.stem
