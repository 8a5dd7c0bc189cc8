"""The keys each v2 job type accepts, and its inputs and outputs as :class:`Port` values.

Every key of Azure's schema is accepted: the ones that mean something here are used, the others
(``compute``, ``identity``, ``distribution``, ``environment``, ``resources.instance_type``...) are recorded
with the run. A key no schema has is refused with a did-you-mean, as pipeobs's own job YAML does.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from dataclasses import dataclass
from typing import Any

from pipeobs.errors import ConfigError

COMMON_KEYS = {"$schema", "type", "name", "version", "display_name", "experiment_name", "description", "tags",
               "compute", "identity", "properties", "is_deterministic", "component", "settings"}
PARALLEL_KEYS = COMMON_KEYS | {
    "inputs", "outputs", "input_data", "mini_batch_size", "partition_keys", "resources",
    "max_concurrency_per_instance", "mini_batch_error_threshold", "error_threshold", "logging_level",
    "retry_settings", "task", "environment_variables", "environment", "distribution",
}
COMMAND_KEYS = COMMON_KEYS | {
    "inputs", "outputs", "command", "code", "environment", "environment_variables", "distribution",
    "resources", "limits", "queue_settings", "services",
}
PIPELINE_KEYS = COMMON_KEYS | {"inputs", "outputs", "jobs"}
KEYS = {"parallel": PARALLEL_KEYS, "command": COMMAND_KEYS, "pipeline": PIPELINE_KEYS}
BLOCK_KEYS = {
    "task": {"type", "code", "entry_script", "program_arguments", "append_row_to", "environment", "model",
             "fn"},
    "retry_settings": {"max_retries", "timeout"},
    "resources": {"instance_count", "instance_type", "shm_size", "docker_args", "locations",
                  "max_instance_count", "properties"},
    "limits": {"timeout"},
    "settings": {"default_compute", "default_datastore", "continue_on_step_failure", "force_rerun",
                 "default_environment", "on_init", "on_finalize"},
}
PORT_KEYS = {"type", "path", "mode", "value", "default", "optional", "description", "min", "max", "enum",
             "datastore", "name", "version", "path_on_compute"}
DATA_TYPES = ("uri_file", "uri_folder", "mltable", "mlflow_model", "custom_model", "triton_model")
LITERAL_TYPES = ("string", "integer", "number", "boolean")
NODE_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def check_keys(data: dict[str, Any], job_type: str, where: str) -> None:
    """Every key of ``data`` (and of its blocks) is one Azure's schema for ``job_type`` has."""
    _known(data, KEYS[job_type], where)
    for block, allowed in BLOCK_KEYS.items():
        value = data.get(block)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"'{block}' in {where} must be a mapping, not {value!r}")
        if block == "settings":
            _noted(value, allowed, f"{where} (settings)")
        else:
            _known(value, allowed, f"{where} ({block})")


def _noted(data: dict[str, Any], allowed: set[str], where: str) -> None:
    """Unknown ``settings`` keys: Azure's schema takes any (its own sample ``3a_basic_pipeline`` carries
    ``default_datestore``), so they are a notice, not an error."""
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            print(f"notice: {where}: '{key}' is not a setting pipeobs knows; it is recorded, not used{hint}",
                  file=sys.stderr, flush=True)


def _known(data: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else f"; allowed: {', '.join(sorted(allowed))}"
            raise ConfigError(f"unknown key '{key}' in {where}{hint}")


def job_type(data: dict[str, Any], where: str, default: str = "command") -> str:
    """The ``type`` of a job or node (Azure's default for a node without one: command)."""
    kind = data.get("type", default)
    if kind not in KEYS:
        raise ConfigError(f"'type: {kind}' in {where} is not a job type pipeobs runs: use parallel, command or pipeline")
    return str(kind)


def check_node_name(name: Any, where: str) -> str:
    """A node's name under ``jobs:`` (Azure's rule: a lowercase Python identifier)."""
    if not isinstance(name, str) or not NODE_NAME.match(name):
        raise ConfigError(f"node name '{name}' in {where} is invalid: use lowercase letters, digits and '_', not "
                          "starting with a digit (^[a-z_][a-z0-9_]*$)")
    return name


@dataclass
class Port:
    """One input or output: its type and what it was given (a literal, a path, a binding, or None)."""

    name: str
    type: str
    value: Any = None
    mode: str | None = None
    optional: bool = False

    @property
    def is_data(self) -> bool:
        return self.type not in LITERAL_TYPES


def ports(section: Any, where: str, outputs: bool = False) -> dict[str, Port]:
    """``inputs:`` or ``outputs:`` of a job, node or component, as ports (declarations and values alike)."""
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(f"'{'outputs' if outputs else 'inputs'}' in {where} must be a mapping of names")
    found = {}
    for name, spec in section.items():
        found[str(name)] = _port(str(name), spec, f"{where} {'outputs' if outputs else 'inputs'}.{name}", outputs)
    lowered = [name.lower() for name in found]
    duplicate = next((name for name in found if lowered.count(name.lower()) > 1), None)
    if duplicate:
        raise ConfigError(f"{where}: input/output names must differ ignoring case ('{duplicate}')")
    return found


def _port(name: str, spec: Any, where: str, output: bool) -> Port:
    if not isinstance(spec, dict):  # a literal, a path, a binding, or null
        return Port(name, _literal_type(spec), spec)
    _known(spec, PORT_KEYS, where)
    kind = spec.get("type")
    value = spec.get("value", spec.get("path", spec.get("default")))
    if kind is None:
        kind = _literal_type(value) if "value" in spec or "default" in spec and not output else "uri_folder"
    if kind not in DATA_TYPES + LITERAL_TYPES:
        raise ConfigError(f"{where}: type '{kind}' is not one of {', '.join(DATA_TYPES + LITERAL_TYPES)}")
    return Port(name, str(kind), value, spec.get("mode"), bool(spec.get("optional", False)))


def _literal_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str) and not value.startswith("${{"):
        # an absolute path that exists (a --set value typed as a relative path becomes one) is data
        if os.path.isabs(value) and os.path.exists(value):
            return "uri_file" if os.path.isfile(value) else "uri_folder"
        return "string"
    return "uri_folder"  # a binding or null: the type comes from what it binds to


def literal_text(value: Any) -> str:
    """A literal as it appears in a command line (Python's spelling of booleans, as Azure's SDK writes them)."""
    return str(value)
