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

Import from here; the submodules are the layout:

* :mod:`~pipeobs.config.parameters`: :class:`ParallelRunConfig` and its defaults.
* :mod:`~pipeobs.config.validation`: the parameter checks, with Azure's messages.
* :mod:`~pipeobs.config.settings`: :class:`Settings` and splitting the step's ``arguments``.
* :mod:`~pipeobs.config.jobfile`: the job YAML's keys and the shapes of their values.
* :mod:`~pipeobs.config.capacity`: how many workers this machine may start.
"""

from pipeobs.config.capacity import check_worker_count
from pipeobs.config.jobfile import check_job_yaml, load_job_yaml
from pipeobs.config.parameters import (
    DEFAULT_FILE_MINI_BATCH_SIZE,
    DEFAULT_TABULAR_MINI_BATCH_SIZE,
    LOGGING_LEVELS,
    ParallelRunConfig,
)
from pipeobs.config.settings import (
    RESERVED_ARGUMENTS,
    SETTING_NAMES,
    Settings,
    make_settings,
    parse_bool,
    split_arguments,
)
from pipeobs.config.validation import (
    APPEND_ROW_FILE_NAME_BAD,
    DEFAULT_APPEND_ROW_FILE_NAME,
    MINI_BATCH_SIZE_RE,
    STEP_NAME_RE,
    check_allowed_failed_percent,
    check_step_name,
    check_v2_job_name,
    parse_mini_batch_size,
)

__all__ = [
    "APPEND_ROW_FILE_NAME_BAD",
    "DEFAULT_APPEND_ROW_FILE_NAME",
    "DEFAULT_FILE_MINI_BATCH_SIZE",
    "DEFAULT_TABULAR_MINI_BATCH_SIZE",
    "LOGGING_LEVELS",
    "MINI_BATCH_SIZE_RE",
    "RESERVED_ARGUMENTS",
    "SETTING_NAMES",
    "STEP_NAME_RE",
    "ParallelRunConfig",
    "Settings",
    "check_allowed_failed_percent",
    "check_job_yaml",
    "check_step_name",
    "check_v2_job_name",
    "check_worker_count",
    "load_job_yaml",
    "make_settings",
    "parse_bool",
    "parse_mini_batch_size",
    "split_arguments",
]
