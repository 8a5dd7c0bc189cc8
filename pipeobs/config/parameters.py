"""ParallelRunConfig: the settings of one ParallelRunStep, with v1's order and defaults.

The checks and messages it applies live in :mod:`pipeobs.config.validation`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pipeobs.config.validation import (
    _check_int_at_least_minus_one,
    _check_partition_keys,
    _resolve_node_count,
    _resolve_output,
    _resolve_process_count,
    _resolve_retry,
    check_allowed_failed_percent,
    check_logging_level,
    parse_mini_batch_size,
)
from pipeobs.errors import ConfigError

DEFAULT_FILE_MINI_BATCH_SIZE = 10
DEFAULT_TABULAR_MINI_BATCH_SIZE = 1024 * 1024
LOGGING_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


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
        self.logging_level = "INFO" if logging_level is None else check_logging_level(logging_level)
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
