"""The runtime's advanced arguments (section 4.3) and how step ``arguments`` are split.

:class:`Settings` holds ``--task_overhead_timeout`` and friends; :func:`split_arguments` takes
them out of the step's ``arguments`` as Azure does and leaves the rest to the entry script.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from pipeobs.errors import ConfigError


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
