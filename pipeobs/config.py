"""ParallelRunConfig and the step settings, with Azure's names, defaults and messages.

Every v1 parameter of ``azureml.pipeline.steps.ParallelRunConfig`` is accepted with its default
and its exact client-side validation message. The SDK v2 spellings are accepted as keyword
aliases. The runtime's "advanced arguments" (``--task_overhead_timeout`` and friends), which
Azure reads from the step's ``arguments``, live in :class:`Settings` next to the config.

Choices where Azure is silent or inconsistent (each documented in the README):

* ``environment``, ``compute_target`` and ``node_count`` are optional (recorded, ``node_count``
  defaults to 1); ``error_threshold`` defaults to -1 and ``output_action`` to ``summary_only``
  (the v2 defaults) so that v2-style configs need not spell v1-only parameters.
* v2 ``retry_settings.max_retries`` is a number of *retries*: ``run_max_try = max_retries + 1``.
* ``mini_batch_size`` strings follow the grammar of section 1.2 exactly; ``"10KBKB"`` (which
  crashes Azure's parser) is rejected with the regex message instead.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any

from pipeobs.errors import ConfigError

MINI_BATCH_SIZE_RE = re.compile(r"^\d+([kKmMgG][bB])*$")
APPEND_ROW_FILE_NAME_BAD = re.compile(r'[~"#%&*:<>?\/\\{|}]+')
STEP_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DEFAULT_APPEND_ROW_FILE_NAME = "parallel_run_step.txt"
DEFAULT_FILE_MINI_BATCH_SIZE = 10
DEFAULT_TABULAR_MINI_BATCH_SIZE = 1024 * 1024
LOGGING_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_UNITS = {"kb": 1024, "mb": 1024**2, "gb": 1024**3}


def parse_mini_batch_size(value: Any) -> int:
    """Parse ``mini_batch_size`` as Azure does (section 1.2): an int, or digits with kb/mb/gb."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError("Parameter mini_batch_size must be of type int or str.")
    if isinstance(value, int):
        return value
    if not MINI_BATCH_SIZE_RE.match(value):
        raise ConfigError(r"Parameter mini_batch_size must follow regex rule ^\d+([kKmMgG][bB])*$.")
    try:  # int() first, as Azure does (it also accepts "10\n", which ``$`` lets through)
        return int(value)
    except ValueError:
        pass
    digits, unit = value[:-2], value[-2:].lower()
    if not digits.isdigit() or unit not in _UNITS:
        # "10KBKB": Azure crashes with int('10KB'); say what is wrong instead
        raise ConfigError(r"Parameter mini_batch_size must follow regex rule ^\d+([kKmMgG][bB])*$.")
    return int(digits) * _UNITS[unit]


def _check_int_at_least_minus_one(name: str, value: Any) -> None:
    if not isinstance(value, int) or value < -1:
        raise ConfigError(f"{name} '{value}' is not an int value greater than or equal to -1.")


def _check_positive(name: str, value: Any) -> int:
    number = _as_int(name, value)
    if number <= 0:
        raise ConfigError(f"Parameter {name} must be an integer greater than 0.")
    return number


def _as_int(name: str, value: Any) -> int:
    """Azure does not type-check these; a value that is not a whole number gets a clear line."""
    if isinstance(value, bool):
        raise ConfigError(f"Parameter {name} must be an integer greater than 0.")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    raise ConfigError(f"Parameter {name} must be an integer greater than 0.")


def _check_partition_keys(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):  # a PipelineParameter-style JSON string: Azure's messages for it
        try:
            value = json.loads(value)
        except ValueError:
            raise ConfigError(
                "default_value of PipelineParameter partition_keys must be json dump result of a "
                "list of str, try json.loads the value to validate."
            ) from None
        if not isinstance(value, list):
            raise ConfigError(
                "default_value of PipelineParameter partition_keys must be json dump result of a list of str."
            )
        for element in value:
            if not isinstance(element, str):
                raise ConfigError(f"Element {element} in default_value of PipelineParameter partition_keys is not a str.")
        return list(value)
    if not isinstance(value, list):
        raise ConfigError("Parameter partition_keys must be of type list.")
    for element in value:
        if not isinstance(element, str):
            raise ConfigError(f"Element {element} in partition_keys is not a str.")
    return list(value)


class ParallelRunConfig:
    """The settings of one ParallelRunStep, spelled as in SDK v1 (v2 spellings accepted).

    Positional order is v1's, so ``ParallelRunConfig(env, "score.py", 10, "append_row",
    "cpu-cluster", 2)`` works unchanged.
    """

    def __init__(  # noqa: PLR0913 - the parameter list is Azure's
        self,
        environment: Any = None,
        entry_script: str | None = None,
        error_threshold: int = -1,
        output_action: str | None = None,
        compute_target: Any = None,
        node_count: Any = None,
        process_count_per_node: Any = None,
        mini_batch_size: Any = None,
        source_directory: str | None = None,
        description: str | None = None,
        logging_level: str | None = "INFO",
        run_invocation_timeout: Any = 60,
        run_max_try: Any = 3,
        append_row_file_name: str | None = None,
        allowed_failed_count: int | None = None,
        allowed_failed_percent: float | None = None,
        partition_keys: Any = None,
        environment_variables: Mapping[str, str] | None = None,
        *,
        mini_batch_error_threshold: int | None = None,
        max_concurrency_per_instance: Any = None,
        instance_count: Any = None,
        retry_settings: Mapping[str, Any] | None = None,
        append_row_to: str | None = None,
    ) -> None:
        if entry_script is None or not str(entry_script).strip():
            raise ConfigError("Parameter entry_script is required.")
        self.environment = environment
        self.compute_target = compute_target
        self.entry_script = str(entry_script).strip()
        self.source_directory = source_directory.strip() if source_directory else None
        self.description = description

        _check_int_at_least_minus_one("error_threshold", error_threshold)
        self.error_threshold = error_threshold

        output_action, append_row_file_name = _resolve_output(
            output_action, append_row_file_name, append_row_to
        )
        self.output_action = output_action
        self.append_row_file_name = append_row_file_name

        self.node_count = _resolve_node_count(node_count, instance_count)
        self.process_count_per_node = _resolve_process_count(
            process_count_per_node, max_concurrency_per_instance
        )
        self.logging_level = "INFO" if logging_level is None else logging_level
        timeout, tries = _resolve_retry(run_invocation_timeout, run_max_try, retry_settings)
        self.run_invocation_timeout = timeout
        self.run_max_try = tries

        if mini_batch_error_threshold is not None:
            if allowed_failed_count is not None:
                raise ConfigError(
                    "allowed_failed_count and mini_batch_error_threshold are the same setting "
                    "(v1 and v2 names); give only one."
                )
            allowed_failed_count = mini_batch_error_threshold
        if allowed_failed_count is not None:
            _check_int_at_least_minus_one("allowed_failed_count", allowed_failed_count)
        self.allowed_failed_count = allowed_failed_count
        self.allowed_failed_percent = check_allowed_failed_percent(allowed_failed_percent)

        self.partition_keys = _check_partition_keys(partition_keys)
        if mini_batch_size is not None and self.partition_keys is not None:
            raise ConfigError(
                "Parameters mini_batch_size and partition_keys are mutually exclusive, because "
                "they specify different ways to partition the input datasets into mini-batches."
            )
        self.mini_batch_size = None if mini_batch_size is None else parse_mini_batch_size(mini_batch_size)
        self.environment_variables = {
            str(k): str(v) for k, v in (environment_variables or {}).items()
        }

    def effective_mini_batch_size(self, tabular: bool) -> int:
        """The size Azure fills in when none is given: 10 files, or 1 MB of tabular data."""
        if self.mini_batch_size is not None:
            return self.mini_batch_size
        return DEFAULT_TABULAR_MINI_BATCH_SIZE if tabular else DEFAULT_FILE_MINI_BATCH_SIZE

    def effective_process_count(self) -> int:
        """Workers per node: the configured count, else the CPU count (Azure's CPU default)."""
        return self.process_count_per_node or os.cpu_count() or 1

    def to_dict(self) -> dict[str, Any]:
        """The recorded settings (JSON-able); ``from_dict`` rebuilds an equal config."""
        return {
            "environment": None if self.environment is None else str(self.environment),
            "compute_target": None if self.compute_target is None else str(self.compute_target),
            "entry_script": self.entry_script,
            "error_threshold": self.error_threshold,
            "output_action": self.output_action,
            "node_count": self.node_count,
            "process_count_per_node": self.process_count_per_node,
            "mini_batch_size": self.mini_batch_size,
            "source_directory": self.source_directory,
            "description": self.description,
            "logging_level": self.logging_level,
            "run_invocation_timeout": self.run_invocation_timeout,
            "run_max_try": self.run_max_try,
            "append_row_file_name": self.append_row_file_name,
            "allowed_failed_count": self.allowed_failed_count,
            "allowed_failed_percent": self.allowed_failed_percent,
            "partition_keys": self.partition_keys,
            "environment_variables": dict(self.environment_variables),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParallelRunConfig:
        return cls(**dict(data))

    def __repr__(self) -> str:
        return f"ParallelRunConfig({self.to_dict()!r})"


def check_allowed_failed_percent(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"allowed_failed_percent '{value}' is not an int or float.")
    if not 0 <= value <= 100:
        raise ConfigError(f"allowed_failed_percent '{value}' is not between 0 and 100.")
    return value


def _resolve_output(
    output_action: str | None, file_name: str | None, append_row_to: str | None
) -> tuple[str, str | None]:
    if append_row_to is not None:
        # v2: append_row_to names the output file; unset means summary_only
        if output_action is not None and output_action.lower() != "append_row":
            raise ConfigError("append_row_to needs output_action append_row (or no output_action).")
        output_action = "append_row"
        file_name = file_name or os.path.basename(str(append_row_to).rstrip("/")) or None
    if output_action is None:
        output_action = "summary_only"
    if not isinstance(output_action, str) or output_action.lower() not in (
        "summary_only",
        "append_row",
    ):
        raise ConfigError("Parameter output_action must be summary_only or append_row.")
    output_action = output_action.lower()
    if output_action != "append_row":
        return output_action, None
    if file_name is not None and APPEND_ROW_FILE_NAME_BAD.search(file_name):
        raise ConfigError("Parameter append_row_file_name must be a valid UNIX file name.")
    return output_action, file_name or DEFAULT_APPEND_ROW_FILE_NAME


def _resolve_node_count(node_count: Any, instance_count: Any) -> int:
    if instance_count is not None:
        if node_count is not None and node_count != instance_count:
            raise ConfigError("node_count and instance_count are the same setting; give only one.")
        node_count = instance_count
    if node_count is None:
        return 1
    number = _as_int("node_count", node_count)
    if number <= 0:
        raise ConfigError("Parameter node_count must be an integer greater than 0.")
    return number


def _resolve_process_count(count: Any, max_concurrency: Any) -> int | None:
    if max_concurrency is not None:
        if count is not None and count != max_concurrency:
            raise ConfigError(
                "process_count_per_node and max_concurrency_per_instance are the same setting; "
                "give only one."
            )
        count = max_concurrency
    if count is None:
        return None
    number = _as_int("process_count_per_node", count)
    if number < 1:
        raise ConfigError("Parameter process_count_per_node must be an integer greater than 0.")
    return number


def _resolve_retry(timeout: Any, tries: Any, retry_settings: Mapping[str, Any] | None) -> tuple[int, int]:
    if retry_settings is not None:
        unknown = set(retry_settings) - {"max_retries", "timeout"}
        if unknown:
            raise ConfigError(
                f"retry_settings has unknown keys {sorted(unknown)}; use max_retries and timeout."
            )
        if retry_settings.get("timeout") is not None:
            timeout = retry_settings["timeout"]
        if retry_settings.get("max_retries") is not None:
            retries = _as_int("max_retries", retry_settings["max_retries"])
            if retries < 0:
                raise ConfigError("retry_settings.max_retries must be an integer of 0 or more.")
            tries = retries + 1
    timeout = 60 if timeout is None else timeout
    tries = 3 if tries is None else tries
    return (
        _check_positive("run_invocation_timeout", timeout),
        _check_positive("run_max_try", tries),
    )


@dataclasses.dataclass
class Settings:
    """The runtime's advanced arguments (section 4.3), read from ``arguments`` or CLI flags."""

    task_overhead_timeout: float = 30
    progress_update_timeout: float | None = None
    first_task_creation_timeout: float = 600
    resource_monitor_interval: float = 10  # Azure's docs: 600; a local run wants samples
    append_row_dataframe_header: bool = False
    copy_logs_to_parent: bool = False
    metrics_name_prefix: str = ""
    push_metrics_to_parent: bool = False
    profiling_module: str = ""
    nice: int = 5

    def progress_timeout(self, run_invocation_timeout: float) -> float:
        """Azure's dynamic default: 3 x (run_invocation_timeout + task_overhead_timeout)."""
        if self.progress_update_timeout is not None and self.progress_update_timeout > 0:
            return self.progress_update_timeout
        return 3 * (run_invocation_timeout + self.task_overhead_timeout)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(Settings))
_TIMEOUT_SETTINGS = ("task_overhead_timeout", "progress_update_timeout", "first_task_creation_timeout")


def parse_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().strip("'\"").lower()
    if text in ("true", "yes", "1"):
        return True
    if text in ("false", "no", "0"):
        return False
    raise ConfigError(f"Parameter {name} must be True or False, not '{value}'.")


def make_settings(values: Mapping[str, Any]) -> Settings:
    """Build :class:`Settings`, checking the ranges of section 4.3."""
    settings = Settings()
    for name, raw in values.items():
        if raw is None:
            continue
        if name not in SETTING_NAMES:
            raise ConfigError(f"unknown setting '{name}'; known settings: {', '.join(SETTING_NAMES)}")
        default = getattr(Settings(), name)
        if name in ("append_row_dataframe_header", "copy_logs_to_parent", "push_metrics_to_parent"):
            value: Any = parse_bool(name, raw)
        elif name in ("metrics_name_prefix", "profiling_module"):
            value = str(raw)
        else:
            value = _parse_number(name, raw)
            _check_setting_range(name, value)
        if name == "profiling_module" and value not in ("", "cProfile", "profile"):
            raise ConfigError("Parameter profiling_module must be cProfile, profile or empty.")
        setattr(settings, name, value if default is None or value is not None else default)
    return settings


def _parse_number(name: str, raw: Any) -> float:
    try:
        value = float(str(raw).strip().strip("'\""))
    except ValueError:
        raise ConfigError(f"Parameter {name} must be a number, not '{raw}'.") from None
    if math.isnan(value):
        raise ConfigError(f"Parameter {name} must be a number, not '{raw}'.")
    return int(value) if value.is_integer() else value


def _check_setting_range(name: str, value: float) -> None:
    if name in _TIMEOUT_SETTINGS and name != "progress_update_timeout" and not 0 < value <= 259200:
        raise ConfigError(f"Parameter {name} must be in (0, 259200] seconds, not {value}.")
    if name == "progress_update_timeout" and value != -1 and not 0 < value <= 259200:
        raise ConfigError(f"Parameter {name} must be in (0, 259200] seconds, not {value}.")
    if name == "resource_monitor_interval" and value < 0:
        raise ConfigError("Parameter resource_monitor_interval must be 0 (off) or more seconds.")
    if name == "nice" and not 0 <= value <= 20:
        raise ConfigError("Parameter nice must be between 0 and 20.")


def check_step_name(name: Any) -> str:
    """The documented step-name rule (Azure's service rule; its SDK does not check it)."""
    if not isinstance(name, str) or not 3 <= len(name) <= 32 or not STEP_NAME_RE.match(name):
        raise ConfigError(
            f"Step name '{name}' is invalid: it must be 3 to 32 characters of lowercase letters, "
            "digits or dashes, start with a letter and not end with a dash "
            "(^[a-z]([-a-z0-9]*[a-z0-9])?$)."
        )
    return name


RESERVED_ARGUMENTS = (
    "mini_batch_size",
    "error_threshold",
    "allowed_failed_count",
    "allowed_failed_percent",
    "output",
    "output_action",
    "logging_level",
    "process_count_per_node",
    "run_invocation_timeout",
    "run_max_try",
    "append_row_file_name",
    "partition_keys",
)


def split_arguments(arguments: list[Any] | None) -> tuple[dict[str, Any], list[str]]:
    """Check step ``arguments`` as Azure does and take out the advanced settings.

    Returns ``(settings, script_arguments)``: advanced flags such as ``--task_overhead_timeout``
    reach the runtime (as on Azure); everything else is passed to the entry script.
    """
    if not arguments:
        return {}, []
    args = [str(a) for a in arguments]
    if not args[0].startswith("-"):
        raise ConfigError(
            f"Found invalid argument '{args[0]}'. As your arguments will be merged with reserved "
            "argument, you can only use keyword argument."
        )
    settings: dict[str, Any] = {}
    script_args: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        name, has_value, inline = _flag_name(arg)
        if name in RESERVED_ARGUMENTS:
            raise ConfigError(  # Azure formats the bare name, also for "--name=value"
                f"'{name}' is a reserved argument in ParallelRunStep, please use another argument "
                "name instead."
            )
        if name in SETTING_NAMES:
            if has_value:
                settings[name] = inline
                i += 1
            elif i + 1 < len(args):
                settings[name] = args[i + 1]
                i += 2
            else:
                raise ConfigError(f"Argument {arg} needs a value.")
            continue
        script_args.append(arg)
        i += 1
    return settings, script_args


def _flag_name(arg: str) -> tuple[str | None, bool, str]:
    if not arg.startswith("--"):
        return None, False, ""
    body = arg[2:]
    if "=" in body:
        name, value = body.split("=", 1)
        return name, True, value
    return body, False, ""
