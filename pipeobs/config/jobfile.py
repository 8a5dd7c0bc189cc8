"""The job YAML of ``pipeobs run -c``: every key it accepts and the shape of its value, in one place.

The keys are the flags' names (snake or kebab case), ``input`` for ``inputs``, and the v2 blocks
``retry_settings`` and ``resources``, whose keys load as flat keys. :func:`check_job_yaml` checks
shapes only (a string, an integer, a list of paths, a mapping...), so that a value of the wrong
type is refused naming its key; the rules of the values themselves, with Azure's messages, stay
with :class:`~pipeobs.config.ParallelRunConfig` and :func:`~pipeobs.config.make_settings`.
"""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeobs.errors import ConfigError

TABULAR_FORMATS = ("csv", "tsv", "jsonl", "parquet")


def _of(*types: type) -> Callable[[Any], bool]:
    """``isinstance``, except that YAML's true/false is not taken for a number."""
    return lambda value: isinstance(value, types) and (bool in types or not isinstance(value, bool))


def _list_of(*types: type) -> Callable[[Any], bool]:
    element = _of(*types)
    return lambda value: isinstance(value, list) and all(element(v) for v in value)


def _either(*tests: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: any(test(value) for test in tests)


def _variables(value: Any) -> bool:
    scalar = _of(str, int, float, bool)
    return isinstance(value, dict) and all(isinstance(k, str) and scalar(v) for k, v in value.items())


@dataclass(frozen=True)
class Shape:
    """What a value must look like: a test, and the words that say it in an error."""

    words: str
    fits: Callable[[Any], bool]


TEXT = Shape("a string", _of(str))
PATH = Shape("a path (a string)", _of(str))
PATHS = Shape("a path or a list of paths", _either(_of(str), _list_of(str)))
INTEGER = Shape("an integer", _of(int))
NUMBER = Shape("a number", _of(int, float))
SWITCH = Shape("true or false", _of(bool))

JOB_YAML: dict[str, Shape | dict[str, Shape]] = {
    # the job
    "entry_script": PATH,
    "inputs": PATHS,
    "output": PATH,
    "tabular": SWITCH,
    "format": Shape(f"one of {', '.join(TABULAR_FORMATS)}", lambda value: value in TABULAR_FORMATS),
    "partition_format": Shape("a string such as '{user}/{season}/{genres}.wav'", _of(str)),
    "name": TEXT,
    "allow_reuse": SWITCH,
    "runs_dir": PATH,
    "model_dir": PATH,
    "arguments": Shape("a list of arguments such as [--model_dir, model/], or one string of them",
                       _either(_of(str), _list_of(str, int, float, bool))),
    "export": Shape("an exporter name or a list of names", _either(_of(str), _list_of(str))),
    "export_deadline": NUMBER,
    "metrics_port": Shape("a port number or '[HOST:]PORT'", _of(int, str)),
    "pushgateway": Shape("a URL such as http://127.0.0.1:9091", _of(str)),
    "alerts": Shape("a rules file or 'none'", _of(str)),
    "alert_webhook": Shape("a URL or a list of URLs", _either(_of(str), _list_of(str))),
    "alertmanager": Shape("a URL such as http://127.0.0.1:9093", _of(str)),
    "alert_interval": NUMBER,
    "backend": Shape("local or ray", lambda value: value in ("local", "ray")),
    "ray_address": Shape("a Ray address such as 10.0.0.5:6379", _of(str)),
    # ParallelRunConfig, v1
    "error_threshold": INTEGER,
    "output_action": TEXT,
    "node_count": INTEGER,
    "process_count_per_node": INTEGER,
    "mini_batch_size": Shape("an integer or a size such as '1MB'", _of(int, str)),
    "source_directory": PATH,
    "description": TEXT,
    "logging_level": Shape("a level name such as INFO", _of(str, int)),
    "run_invocation_timeout": INTEGER,
    "run_max_try": INTEGER,
    "append_row_file_name": TEXT,
    "allowed_failed_count": INTEGER,
    "allowed_failed_percent": NUMBER,
    "partition_keys": Shape("a list of key names", _either(_of(str), _list_of(str))),
    "environment_variables": Shape(
        "a mapping of NAME: value (or a list of NAME=VALUE)", _either(_variables, _list_of(str))
    ),
    "environment": Shape("a string or a mapping", _of(str, dict)),
    "compute_target": TEXT,
    # ParallelRunConfig, v2
    "mini_batch_error_threshold": INTEGER,
    "max_concurrency_per_instance": INTEGER,
    "instance_count": INTEGER,
    "max_retries": INTEGER,
    "timeout": INTEGER,
    "append_row_to": TEXT,
    "retry_settings": {"max_retries": INTEGER, "timeout": INTEGER},
    "resources": {"instance_count": INTEGER},
    # the runtime's advanced arguments (Settings)
    "task_overhead_timeout": NUMBER,
    "progress_update_timeout": NUMBER,
    "first_task_creation_timeout": NUMBER,
    "resource_monitor_interval": NUMBER,
    "append_row_dataframe_header": SWITCH,
    "copy_logs_to_parent": SWITCH,
    "metrics_name_prefix": TEXT,
    "push_metrics_to_parent": SWITCH,
    "profiling_module": TEXT,
    "nice": INTEGER,
}
ALIASES = {"input": "inputs"}


def check_job_yaml(data: Any, source: str) -> dict[str, Any]:
    """The values of a loaded job YAML, flat and in snake case, or a ConfigError naming the bad key.

    A key whose value is null counts as not given; a single input path becomes a list.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"job YAML '{source}' must be a mapping of setting names to values")
    values: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = _known_key(raw_key, source)
        shape = JOB_YAML[key]
        if value is None:
            continue
        if isinstance(shape, dict):
            values.update(_check_block(raw_key, value, shape, source))
        else:
            values[key] = _checked(raw_key, value, shape, source)
    if isinstance(values.get("inputs"), str):
        values["inputs"] = [values["inputs"]]
    return values


def _known_key(raw_key: Any, source: str) -> str:
    key = str(raw_key).replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in JOB_YAML:
        close = difflib.get_close_matches(key, sorted(JOB_YAML), n=1, cutoff=0.6)
        raise ConfigError(f"unknown key '{raw_key}' in {source}" + (f"; did you mean {close[0]}?" if close else ""))
    return key


def _check_block(raw_key: Any, block: Any, shapes: dict[str, Shape], source: str) -> dict[str, Any]:
    if not isinstance(block, dict):
        raise ConfigError(
            f"'{raw_key}' in {source} must be a mapping with {', '.join(shapes)}, not {reprlib.repr(block)}"
        )
    values = {}
    for raw_sub_key, value in block.items():
        sub_key = str(raw_sub_key).replace("-", "_")
        if sub_key not in shapes:
            raise ConfigError(f"unknown key '{raw_key}.{raw_sub_key}' in {source}; allowed: {', '.join(shapes)}")
        if value is not None:
            values[sub_key] = _checked(f"{raw_key}.{raw_sub_key}", value, shapes[sub_key], source)
    return values


def _checked(name: Any, value: Any, shape: Shape, source: str) -> Any:
    if not shape.fits(value):
        raise ConfigError(f"'{name}' in {source} must be {shape.words}, not {reprlib.repr(value)}")
    return value


def load_job_yaml(path: str) -> dict[str, Any]:
    """A job YAML file's values (:func:`check_job_yaml`), its relative paths resolved against its folder."""
    from pipeobs.v2.document import load_yaml_file

    data = load_yaml_file(path)
    values = check_job_yaml({} if data is None else data, path)
    base = Path(path).resolve().parent
    if "inputs" in values:
        values["inputs"] = [str(_relative_to(base, p)) for p in values["inputs"]]
    for key in ("output", "source_directory", "model_dir"):
        if values.get(key):
            values[key] = str(_relative_to(base, values[key]))
    if values.get("alerts", "none") != "none":
        values["alerts"] = str(_relative_to(base, values["alerts"]))
    if values.get("entry_script") and not values.get("source_directory"):  # else relative to it
        values["entry_script"] = str(_relative_to(base, values["entry_script"]))
    return values


def _relative_to(base: Path, path: Any) -> Path:
    candidate = Path(str(path))
    return candidate if candidate.is_absolute() else base / candidate
