"""The checks of ParallelRunConfig's parameters, each failing with Azure's exact message.

``parse_mini_batch_size`` and the ``_check_*`` functions are Azure's client-side validation
(SDK v1), message for message; the ``_resolve_*`` functions also reconcile a v1 parameter with
its SDK v2 alias. ``check_step_name`` is the service's step-name rule.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

from pipeobs.errors import ConfigError

MINI_BATCH_SIZE_RE = re.compile(r"^\d+([kKmMgG][bB])*$")
APPEND_ROW_FILE_NAME_BAD = re.compile(r'[~"#%&*:<>?\/\\{|}]+')
STEP_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DEFAULT_APPEND_ROW_FILE_NAME = "parallel_run_step.txt"
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


def check_step_name(name: Any) -> str:
    """The documented step-name rule (Azure's service rule; its SDK does not check it)."""
    if not isinstance(name, str) or not 3 <= len(name) <= 32 or not STEP_NAME_RE.match(name):
        raise ConfigError(
            f"Step name '{name}' is invalid: it must be 3 to 32 characters of lowercase letters, "
            "digits or dashes, start with a letter and not end with a dash "
            "(^[a-z]([-a-z0-9]*[a-z0-9])?$)."
        )
    return name


V2_JOB_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$")


def check_v2_job_name(name: Any) -> str:
    """A v2 job's or node's name: Azure allows underscores and up to 255 characters there (the v1 step
    rule stays for ParallelRunStep); it names the run's folder, so no slashes."""
    if not isinstance(name, str) or not V2_JOB_NAME_RE.match(name):
        raise ConfigError(f"job name '{name}' is invalid: use up to 255 letters, digits, '_', '-' or '.', "
                          "starting with a letter, digit or '_'")
    return name


LOGGING_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def check_logging_level(value: object) -> str | int:
    """A level name (any case; ``WARN`` too) or a logging number. Azure v1 does not check it and
    falls back to INFO, which hides a typo; v2's schema refuses anything but its enum."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.strip().upper() in (*LOGGING_LEVELS, "WARN"):
        return value
    raise ConfigError(f"logging_level {value!r} is not a logging level: use one of {', '.join(LOGGING_LEVELS)}.")
