"""A v2 parallel job or node as a :class:`~pipeobs.step.ParallelRunStep`.

The v2 keys map onto ParallelRunConfig's v2 spellings; ``input_data: ${{inputs.X}}`` picks the dataset
(an ``mltable`` input is read per its MLTable file, a ``uri_folder``/``uri_file`` is a file dataset);
``task.program_arguments`` is split as a shell would and every word is passed to the entry script, as on
Azure, while the runtime's automation flags in it (``--error_threshold``, ``--allowed_failed_percent``,
``--task_overhead_timeout``...) are also applied as settings, as Azure's v2 runtime reads them.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

from pipeobs.config import SETTING_NAMES, ParallelRunConfig, make_settings
from pipeobs.errors import ConfigError
from pipeobs.v2.expressions import split_arguments, whole_binding
from pipeobs.v2.locations import Locations
from pipeobs.v2.nodes import Node, Value, io_lookup

CONFIG_FLAGS = {"error_threshold": int, "allowed_failed_percent": float, "allowed_failed_count": int}
AUTOMATION_FLAGS = (*SETTING_NAMES, *CONFIG_FLAGS, "append_row_safe_output", "amlbi_async_mode")


def build_parallel(node: Node, inputs: dict[str, Value], outputs: dict[str, Value], locations: Locations,
                   notice: Any, allow_reuse: bool = True) -> Any:
    """The ParallelRunStep that runs ``node`` with these input and output values."""
    from pipeobs.step import ParallelRunStep

    fields, where = node.fields, node.where
    task = fields.get("task")
    if not isinstance(task, dict) or not task.get("entry_script"):
        raise ConfigError(f"{where}: a parallel job needs task.entry_script (and task.code, its folder)")
    lookup = io_lookup(inputs, outputs, where)
    arguments = split_arguments(str(task.get("program_arguments") or ""), lookup, f"{where} task.program_arguments")
    settings, flagged = automation_flags(arguments, where, notice)
    code = locations.path(task["code"], node.code_base, f"{where} task.code") if task.get("code") else None
    entry = str(task["entry_script"])
    output, append_row_to = _append_row_target(task.get("append_row_to"), outputs, where)
    partition_keys = fields.get("partition_keys")
    if partition_keys is not None and not isinstance(partition_keys, list):
        raise ConfigError(f"{where}: partition_keys must be a list of column names, e.g. [Store, Brand]")
    config = ParallelRunConfig(
        entry_script=entry if code else str(node.code_base / entry),
        source_directory=code,
        mini_batch_size=None if partition_keys else _text(fields.get("mini_batch_size")),
        partition_keys=partition_keys,
        error_threshold=_once("error_threshold", fields.get("error_threshold"), flagged.get("error_threshold"),
                              where, -1),
        allowed_failed_percent=flagged.get("allowed_failed_percent"),
        mini_batch_error_threshold=_once("mini_batch_error_threshold", fields.get("mini_batch_error_threshold"),
                                         flagged.get("allowed_failed_count"), where, None),
        logging_level=fields.get("logging_level") or "INFO",
        retry_settings=fields.get("retry_settings") or {"max_retries": 2, "timeout": 60},
        instance_count=(fields.get("resources") or {}).get("instance_count"),
        max_concurrency_per_instance=fields.get("max_concurrency_per_instance"),
        environment_variables={str(k): str(v) for k, v in (fields.get("environment_variables") or {}).items()},
        append_row_to=append_row_to,
        description=fields.get("description"),
        environment=_recorded(task.get("environment") or fields.get("environment")),
        compute_target=_recorded(fields.get("compute")),
    )
    dataset = input_dataset(fields.get("input_data"), inputs, where)
    step = ParallelRunStep(node.name, config, [dataset], output=output, allow_reuse=allow_reuse, v2=True)
    step.script_arguments = arguments
    step.settings_values = settings
    step.settings = make_settings(settings)
    return step


def automation_flags(arguments: list[str], where: str, notice: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """The runtime settings and thresholds given as flags in ``program_arguments`` (the words stay the
    script's too); a flag one letter away from one of them gets a notice, as Azure's own examples carry
    ``--resource_monitor_interva``."""
    settings: dict[str, str] = {}
    config: dict[str, Any] = {}
    for index, word in enumerate(arguments):
        if not word.startswith("--"):
            continue
        name, has_value, value = word[2:].partition("=")
        if not has_value:
            following = arguments[index + 1] if index + 1 < len(arguments) else None
            value = following if following is not None and not following.startswith("--") else ""
        if name in CONFIG_FLAGS:
            config[name] = _number(name, value, CONFIG_FLAGS[name], where)
        elif name in SETTING_NAMES:
            settings[name] = value
        elif name not in AUTOMATION_FLAGS:
            close = difflib.get_close_matches(name, AUTOMATION_FLAGS, n=1, cutoff=0.9)
            if close:
                notice(f"{where}: program_arguments has --{name}, which is not a runtime setting; did you mean "
                       f"--{close[0]}? (passed to the entry script only)")
    return settings, config


def _number(name: str, value: str, kind: type, where: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(f"{where}: --{name} in program_arguments must be a number, not '{value}'") from None


def _once(key: str, value: Any, flag: Any, where: str, default: Any) -> Any:
    """A threshold given as a key or as a flag in program_arguments; both, when they differ, is an error."""
    if value is not None and flag is not None and int(value) != int(flag):
        raise ConfigError(f"{where}: {key} is {value} but program_arguments says {flag}; give it once")
    chosen = value if value is not None else flag
    return default if chosen is None else chosen


def _append_row_target(text: Any, outputs: dict[str, Value], where: str) -> tuple[str | None, str | None]:
    """(output folder, append_row_to file name) of ``task.append_row_to: ${{outputs.x}}``: a uri_file output
    is the file itself, a folder output holds ``parallel_run_step.txt``."""
    if text is None:
        return None, None
    name = whole_binding(text)
    if name is None or not name.startswith("outputs.") or name[len("outputs."):] not in outputs:
        raise ConfigError(f"{where}: task.append_row_to must be ${{{{outputs.NAME}}}} naming one of the job's "
                          f"outputs ({', '.join(outputs) or 'it has none'})")
    value = outputs[name[len("outputs."):]]
    assert value.text is not None
    if value.type == "uri_file":
        return os.path.dirname(value.text), os.path.basename(value.text)
    return value.text, "parallel_run_step.txt"


def input_dataset(text: Any, inputs: dict[str, Value], where: str) -> Any:
    """The dataset ``input_data: ${{inputs.X}}`` names."""
    from pipeobs.datasets import FileDataset

    name = whole_binding(text)
    if name is None or not name.startswith("inputs.") or name[len("inputs."):] not in inputs:
        raise ConfigError(f"{where}: input_data must be ${{{{inputs.NAME}}}} naming one of the job's inputs "
                          f"({', '.join(inputs) or 'it has none'})")
    value = inputs[name[len("inputs."):]]
    if value.text is None or not value.is_data:
        raise ConfigError(f"{where}: input_data names input '{name}', which has no data path")
    if not os.path.exists(value.text):
        raise ConfigError(f"{where}: input '{name}' is '{value.text}', which does not exist")
    if value.type == "mltable" or os.path.isfile(os.path.join(value.text, "MLTable")):
        from pipeobs.datasets import mltable_dataset

        return mltable_dataset(value.text)
    return FileDataset.from_files(value.text)


def _text(value: Any) -> Any:
    return value if value is None or isinstance(value, int) else str(value)


def _recorded(value: Any) -> str | None:
    """An environment or compute as recorded with the run (it means nothing on this machine)."""
    if value is None:
        return None
    if isinstance(value, dict):
        import json

        return json.dumps(value, sort_keys=True, default=str)
    return str(value)

