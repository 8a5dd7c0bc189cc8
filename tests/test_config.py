"""Specification of pipeobs.config and ParallelRunStep's checks (reference sections 1.1-1.3, 4.1, 4.3, 4.5).

Messages are Azure's SDK v1 messages, matched exactly; where Azure has none, pipeobs's own.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from pipeobs.cli import COMMAND_LINE_ONLY, build_parser
from pipeobs.config import (
    DEFAULT_APPEND_ROW_FILE_NAME,
    RESERVED_ARGUMENTS,
    SETTING_NAMES,
    ParallelRunConfig,
    Settings,
    check_job_yaml,
    check_step_name,
    check_worker_count,
    make_settings,
    parse_mini_batch_size,
    split_arguments,
)
from pipeobs.config.capacity import MEMORY_PER_WORKER, WORKERS_PER_CPU
from pipeobs.config.jobfile import JOB_YAML, TABULAR_FORMATS
from pipeobs.datasets import FileDataset, TabularDataset
from pipeobs.errors import ConfigError
from pipeobs.step import ParallelRunStep

MINI_BATCH_REGEX_MESSAGE = r"Parameter mini_batch_size must follow regex rule ^\d+([kKmMgG][bB])*$."
MINI_BATCH_TYPE_MESSAGE = "Parameter mini_batch_size must be of type int or str."
OUTPUT_ACTION_MESSAGE = "Parameter output_action must be summary_only or append_row."
MUTUALLY_EXCLUSIVE_MESSAGE = (
    "Parameters mini_batch_size and partition_keys are mutually exclusive, because they specify "
    "different ways to partition the input datasets into mini-batches."
)


def config(**kwargs: object) -> ParallelRunConfig:
    kwargs.setdefault("entry_script", "score.py")
    return ParallelRunConfig(**kwargs)  # type: ignore[arg-type]


def raises(message: str):  # noqa: ANN201 - a pytest context manager
    return pytest.raises(ConfigError, match=f"^{re.escape(message)}$")


def step_name_message(name: object) -> str:
    return (
        f"Step name '{name}' is invalid: it must be 3 to 32 characters of lowercase letters, "
        "digits or dashes, start with a letter and not end with a dash (^[a-z]([-a-z0-9]*[a-z0-9])?$)."
    )


def reserved_message(name: str) -> str:
    return f"'{name}' is a reserved argument in ParallelRunStep, please use another argument name instead."


def invalid_argument_message(arg: str) -> str:
    return (
        f"Found invalid argument '{arg}'. As your arguments will be merged with reserved argument, "
        "you can only use keyword argument."
    )


# --------------------------------------------------------------------------- ParallelRunConfig


class TestErrorThreshold:
    @pytest.mark.parametrize("value", [-1, 0, 1, 10_000])
    def test_accepts_ints_from_minus_one(self, value: int) -> None:
        """Any int >= -1 is accepted and kept."""
        assert config(error_threshold=value).error_threshold == value

    @pytest.mark.parametrize("value", [True, False])
    def test_bools_pass_because_bool_is_an_int(self, value: bool) -> None:
        """True and False pass Azure's isinstance(x, int) check unchanged."""
        assert config(error_threshold=value).error_threshold is value

    @pytest.mark.parametrize("value", [-2, -100, "5", 1.5, 2.0, None, [1]])
    def test_rejects_everything_else(self, value: object) -> None:
        """Values below -1 and non-ints get Azure's message, with the value in quotes."""
        with raises(f"error_threshold '{value}' is not an int value greater than or equal to -1."):
            config(error_threshold=value)

    def test_defaults_to_minus_one(self) -> None:
        """Without a value every failed item is ignored (the v2 default, -1)."""
        assert config().error_threshold == -1


class TestOutputAction:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("summary_only", "summary_only"),
            ("append_row", "append_row"),
            ("APPEND_ROW", "append_row"),
            ("Summary_Only", "summary_only"),
        ],
    )
    def test_is_case_insensitive(self, value: str, expected: str) -> None:
        """Azure compares output_action.lower() with the two actions."""
        assert config(output_action=value).output_action.lower() == expected

    @pytest.mark.parametrize("value", ["file", "", "summary", "append_rows", " append_row"])
    def test_rejects_other_actions(self, value: str) -> None:
        """Anything but summary_only/append_row gets Azure's message."""
        with raises(OUTPUT_ACTION_MESSAGE):
            config(output_action=value)

    def test_defaults_to_summary_only(self) -> None:
        """Without output_action (v2: no append_row_to) the action is summary_only."""
        assert config().output_action == "summary_only"


class TestProcessCountPerNode:
    @pytest.mark.parametrize("value", [0, -1, -8])
    def test_rejects_values_below_one(self, value: int) -> None:
        """A count below 1 gets Azure's message."""
        with raises("Parameter process_count_per_node must be an integer greater than 0."):
            config(process_count_per_node=value)

    def test_keeps_a_valid_count(self) -> None:
        """A count of 1 or more is kept and used as the worker count."""
        cfg = config(process_count_per_node=3)
        assert cfg.process_count_per_node == 3
        assert cfg.effective_process_count() == 3

    def test_defaults_to_the_cpu_count(self) -> None:
        """Unset, it stays None and the worker count is the CPU count (Azure's CPU default)."""
        cfg = config()
        assert cfg.process_count_per_node is None
        assert cfg.effective_process_count() == (os.cpu_count() or 1)


class TestRunInvocationTimeout:
    @pytest.mark.parametrize("value", [0, -1, -60])
    def test_rejects_values_not_above_zero(self, value: int) -> None:
        """A timeout <= 0 gets Azure's message."""
        with raises("Parameter run_invocation_timeout must be an integer greater than 0."):
            config(run_invocation_timeout=value)

    @pytest.mark.parametrize(("value", "expected"), [(None, 60), (1, 1), (600, 600)])
    def test_defaults_to_sixty(self, value: int | None, expected: int) -> None:
        """The default (and the value for None) is 60 seconds; positive values are kept."""
        assert config(run_invocation_timeout=value).run_invocation_timeout == expected

    def test_default_without_the_argument(self) -> None:
        """Leaving the argument out gives 60 seconds."""
        assert config().run_invocation_timeout == 60


class TestRunMaxTry:
    @pytest.mark.parametrize("value", [0, -1, "0", "--5"])
    def test_rejects_values_not_above_zero(self, value: object) -> None:
        """A number of tries <= 0 (or not a whole number) gets Azure's message."""
        with raises("Parameter run_max_try must be an integer greater than 0."):
            config(run_max_try=value)

    @pytest.mark.parametrize(("value", "expected"), [(None, 3), (1, 1), (7, 7)])
    def test_defaults_to_three(self, value: int | None, expected: int) -> None:
        """The default (and the value for None) is 3 tries; positive values are kept."""
        assert config(run_max_try=value).run_max_try == expected

    def test_default_without_the_argument(self) -> None:
        """Leaving the argument out gives 3 tries."""
        assert config().run_max_try == 3


class TestAppendRowFileName:
    @pytest.mark.parametrize("char", list('~"#%&*:<>?/\\{|}'))
    def test_rejects_unix_unfriendly_characters_for_append_row(self, char: str) -> None:
        """Under append_row a name matching Azure's character class gets Azure's message."""
        with raises("Parameter append_row_file_name must be a valid UNIX file name."):
            config(output_action="append_row", append_row_file_name=f"scores{char}.txt")

    def test_is_not_checked_for_summary_only(self) -> None:
        """Under summary_only the name is not checked at all (Azure only checks it for append_row)."""
        cfg = config(output_action="summary_only", append_row_file_name="bad:name?.txt")
        assert cfg.output_action == "summary_only"

    def test_defaults_to_parallel_run_step_txt(self) -> None:
        """append_row without a name writes parallel_run_step.txt."""
        assert config(output_action="append_row").append_row_file_name == "parallel_run_step.txt"
        assert DEFAULT_APPEND_ROW_FILE_NAME == "parallel_run_step.txt"

    def test_keeps_a_valid_name(self) -> None:
        """A valid name is kept as given."""
        cfg = config(output_action="append_row", append_row_file_name="scores.csv")
        assert cfg.append_row_file_name == "scores.csv"


class TestAllowedFailedCount:
    @pytest.mark.parametrize("value", [-1, 0, 7])
    def test_accepts_ints_from_minus_one(self, value: int) -> None:
        """Any int >= -1 is kept."""
        assert config(allowed_failed_count=value).allowed_failed_count == value

    @pytest.mark.parametrize("value", [-2, "3", 1.0])
    def test_rejects_everything_else(self, value: object) -> None:
        """Values below -1 and non-ints get Azure's message."""
        with raises(f"allowed_failed_count '{value}' is not an int value greater than or equal to -1."):
            config(allowed_failed_count=value)

    def test_defaults_to_none(self) -> None:
        """Unset means no mini-batch count threshold."""
        assert config().allowed_failed_count is None


class TestAllowedFailedPercent:
    @pytest.mark.parametrize("value", [0, 0.0, 0.5, 50, 99.9, 100, 100.0])
    def test_accepts_numbers_from_zero_to_one_hundred(self, value: float) -> None:
        """Ints and floats in [0, 100] are kept."""
        assert config(allowed_failed_percent=value).allowed_failed_percent == value

    @pytest.mark.parametrize("value", ["50", [10], "ten"])
    def test_rejects_non_numbers(self, value: object) -> None:
        """A value that is not an int or float gets Azure's type message."""
        with raises(f"allowed_failed_percent '{value}' is not an int or float."):
            config(allowed_failed_percent=value)

    @pytest.mark.parametrize("value", [-1, -0.1, 100.5, 101])
    def test_rejects_numbers_outside_the_range(self, value: float) -> None:
        """A number outside [0, 100] gets Azure's range message."""
        with raises(f"allowed_failed_percent '{value}' is not between 0 and 100."):
            config(allowed_failed_percent=value)

    def test_defaults_to_none(self) -> None:
        """Unset means no percent threshold."""
        assert config().allowed_failed_percent is None


class TestPartitionKeys:
    def test_keeps_a_list_of_str(self) -> None:
        """A list of str is kept in order."""
        assert config(partition_keys=["user", "season"]).partition_keys == ["user", "season"]

    @pytest.mark.parametrize("value", [("user",), {"user"}, 5])
    def test_rejects_non_lists(self, value: object) -> None:
        """Anything but a list (or a JSON string) gets Azure's type message."""
        with raises("Parameter partition_keys must be of type list."):
            config(partition_keys=value)

    def test_rejects_a_non_str_element(self) -> None:
        """A non-str element is named in Azure's message."""
        with raises("Element 1 in partition_keys is not a str."):
            config(partition_keys=["user", 1])

    def test_accepts_a_json_string_like_a_pipeline_parameter(self) -> None:
        """A JSON dump of a list of str (PipelineParameter style) becomes the list."""
        assert config(partition_keys=json.dumps(["user", "season"])).partition_keys == ["user", "season"]

    def test_rejects_a_string_that_is_not_json(self) -> None:
        """A string json.loads cannot read gets Azure's PipelineParameter message."""
        with raises(
            "default_value of PipelineParameter partition_keys must be json dump result of a list of str, "
            "try json.loads the value to validate."
        ):
            config(partition_keys="user,season")

    @pytest.mark.parametrize("value", ['"user"', '{"a": 1}', "3"])
    def test_rejects_json_that_is_not_a_list(self, value: str) -> None:
        """JSON that is not a list gets Azure's PipelineParameter list message."""
        with raises("default_value of PipelineParameter partition_keys must be json dump result of a list of str."):
            config(partition_keys=value)

    def test_rejects_a_json_list_with_a_non_str_element(self) -> None:
        """A JSON list with a non-str element gets Azure's PipelineParameter element message."""
        with raises("Element 2 in default_value of PipelineParameter partition_keys is not a str."):
            config(partition_keys='["user", 2]')

    @pytest.mark.parametrize("size", [10, "0", "1MB"])
    def test_is_mutually_exclusive_with_mini_batch_size(self, size: object) -> None:
        """Giving both partition_keys and mini_batch_size gets Azure's message."""
        with raises(MUTUALLY_EXCLUSIVE_MESSAGE):
            config(partition_keys=["user"], mini_batch_size=size)

    def test_is_mutually_exclusive_in_json_form_too(self) -> None:
        """The JSON-string form is exclusive with mini_batch_size as well."""
        with raises(MUTUALLY_EXCLUSIVE_MESSAGE):
            config(partition_keys='["user"]', mini_batch_size=5)

    def test_defaults_to_none(self) -> None:
        """Unset means mini-batches are cut by size."""
        assert config().partition_keys is None


class TestMiniBatchSize:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("1024", 1024),
            ("1024KB", 1048576),
            ("10MB", 10485760),
            ("1GB", 1073741824),
            ("1kb", 1024),
            ("1Kb", 1024),
            ("1kB", 1024),
            ("2mb", 2 * 1024**2),
            ("0", 0),
            ("007", 7),
            (0, 0),
            (25, 25),
        ],
    )
    def test_parses_the_grammar_of_section_1_2(self, value: object, expected: int) -> None:
        """Digits, optionally with a case-insensitive kb/mb/gb unit, as in Azure's table."""
        assert parse_mini_batch_size(value) == expected

    @pytest.mark.parametrize("value", ["100 kb", "1.5MB", "10B", "10K", "-1", " 10", "10 ", "", "KB", "1TB", "ten"])
    def test_rejects_strings_outside_the_regex(self, value: str) -> None:
        """Strings that do not match ^\\d+([kKmMgG][bB])*$ get Azure's regex message."""
        with raises(MINI_BATCH_REGEX_MESSAGE):
            parse_mini_batch_size(value)

    def test_rejects_a_repeated_unit_with_the_regex_message(self) -> None:
        """The string "10KBKB" passes Azure's regex then crashes its int(); pipeobs gives the regex message."""
        with raises(MINI_BATCH_REGEX_MESSAGE):
            parse_mini_batch_size("10KBKB")

    def test_a_trailing_newline_is_accepted_as_by_azure(self) -> None:
        """The regex's $ lets "10\\n" through and Azure's int() reads it as 10."""
        assert parse_mini_batch_size("10\n") == 10

    @pytest.mark.parametrize("value", [1.5, 10.0, None, [10], b"10", {"size": 1}])
    def test_rejects_types_other_than_int_and_str(self, value: object) -> None:
        """Values that are neither int nor str get Azure's type message."""
        with raises(MINI_BATCH_TYPE_MESSAGE):
            parse_mini_batch_size(value)

    def test_config_stores_the_parsed_size(self) -> None:
        """ParallelRunConfig keeps the parsed int."""
        assert config(mini_batch_size="1KB").mini_batch_size == 1024

    def test_config_checks_the_size(self) -> None:
        """ParallelRunConfig raises the parser's messages."""
        with raises(MINI_BATCH_REGEX_MESSAGE):
            config(mini_batch_size="100 kb")
        with raises(MINI_BATCH_TYPE_MESSAGE):
            config(mini_batch_size=1.5)

    def test_effective_size_defaults_by_input_kind(self) -> None:
        """Unset: 10 files for file input, 1048576 bytes (1 MB) for tabular input."""
        cfg = config()
        assert cfg.mini_batch_size is None
        assert cfg.effective_mini_batch_size(tabular=False) == 10
        assert cfg.effective_mini_batch_size(tabular=True) == 1048576

    def test_effective_size_is_the_given_size_for_both_kinds(self) -> None:
        """A given size is used as is: a file count for files, bytes for tables."""
        cfg = config(mini_batch_size="2KB")
        assert cfg.effective_mini_batch_size(tabular=False) == 2048
        assert cfg.effective_mini_batch_size(tabular=True) == 2048


class TestConfigDefaults:
    def test_logging_level_defaults_to_info(self) -> None:
        """logging_level is INFO by default and for None."""
        assert config().logging_level == "INFO"
        assert config(logging_level=None).logging_level == "INFO"

    def test_logging_level_is_not_validated(self) -> None:
        """Azure does not validate logging_level client-side; the value is kept."""
        assert config(logging_level="DEBUG").logging_level == "DEBUG"

    def test_v1_required_parameters_are_optional(self) -> None:
        """environment, compute_target and node_count may be left out (node_count is then 1)."""
        cfg = config()
        assert cfg.environment is None
        assert cfg.compute_target is None
        assert cfg.node_count == 1

    def test_environment_variables_default_to_empty_and_become_str(self) -> None:
        """environment_variables default to {} and keys/values become str."""
        assert config().environment_variables == {}
        assert config(environment_variables={"A": 1}).environment_variables == {"A": "1"}

    def test_entry_script_and_source_directory_are_stripped(self) -> None:
        """Both paths are stripped of surrounding whitespace, as by Azure."""
        cfg = config(entry_script="  score.py \n", source_directory=" src ")
        assert cfg.entry_script == "score.py"
        assert cfg.source_directory == "src"

    @pytest.mark.parametrize("value", [None, "", "   "])
    def test_entry_script_is_required(self, value: str | None) -> None:
        """A missing or blank entry_script is refused."""
        with raises("Parameter entry_script is required."):
            ParallelRunConfig(entry_script=value)


class TestPositionalOrder:
    def test_v1_positional_call_works_unchanged(self) -> None:
        """ParallelRunConfig(env, "score.py", 10, "append_row", "cpu", 2) maps to v1's first six."""
        env = object()
        cfg = ParallelRunConfig(env, "score.py", 10, "append_row", "cpu", 2)
        assert cfg.environment is env
        assert cfg.entry_script == "score.py"
        assert cfg.error_threshold == 10
        assert cfg.output_action == "append_row"
        assert cfg.compute_target == "cpu"
        assert cfg.node_count == 2

    def test_later_positional_parameters_follow_v1_order(self) -> None:
        """process_count_per_node, mini_batch_size and source_directory follow in v1's order."""
        cfg = ParallelRunConfig("env", "score.py", -1, "summary_only", "cpu", 1, 4, "1KB", "src")
        assert cfg.process_count_per_node == 4
        assert cfg.mini_batch_size == 1024
        assert cfg.source_directory == "src"

    def test_v2_spellings_are_keyword_only(self) -> None:
        """The v2 aliases cannot be given positionally (19 positionals is one too many)."""
        with pytest.raises(TypeError):
            ParallelRunConfig(*(["env", "s.py", -1, "summary_only", "cpu", 1] + [None] * 12 + [5]))  # type: ignore[misc]


class TestV2Spellings:
    def test_mini_batch_error_threshold_is_allowed_failed_count(self) -> None:
        """v2 mini_batch_error_threshold sets allowed_failed_count."""
        assert config(mini_batch_error_threshold=5).allowed_failed_count == 5

    def test_mini_batch_error_threshold_is_checked_as_allowed_failed_count(self) -> None:
        """An invalid v2 value gets the v1 allowed_failed_count message."""
        with raises("allowed_failed_count '-2' is not an int value greater than or equal to -1."):
            config(mini_batch_error_threshold=-2)

    def test_mini_batch_error_threshold_conflicts_with_allowed_failed_count(self) -> None:
        """Both names at once are refused."""
        with raises(
            "allowed_failed_count and mini_batch_error_threshold are the same setting (v1 and v2 names); give only one."
        ):
            config(allowed_failed_count=1, mini_batch_error_threshold=1)

    def test_max_concurrency_per_instance_is_process_count_per_node(self) -> None:
        """v2 max_concurrency_per_instance sets process_count_per_node."""
        assert config(max_concurrency_per_instance=4).process_count_per_node == 4

    def test_max_concurrency_per_instance_is_checked(self) -> None:
        """An invalid v2 value gets the process_count_per_node message."""
        with raises("Parameter process_count_per_node must be an integer greater than 0."):
            config(max_concurrency_per_instance=0)

    def test_max_concurrency_per_instance_conflicts_with_a_different_count(self) -> None:
        """Different values under both names are refused; equal values are fine."""
        with raises("process_count_per_node and max_concurrency_per_instance are the same setting; give only one."):
            config(process_count_per_node=2, max_concurrency_per_instance=4)
        assert config(process_count_per_node=4, max_concurrency_per_instance=4).process_count_per_node == 4

    def test_instance_count_is_node_count(self) -> None:
        """v2 instance_count sets node_count."""
        assert config(instance_count=3).node_count == 3

    def test_instance_count_conflicts_with_a_different_node_count(self) -> None:
        """Different values under both names are refused; equal values are fine."""
        with raises("node_count and instance_count are the same setting; give only one."):
            config(node_count=2, instance_count=3)
        assert config(node_count=3, instance_count=3).node_count == 3

    @pytest.mark.parametrize("value", [0, -1])
    def test_node_count_must_be_positive(self, value: int) -> None:
        """node_count (or instance_count) below 1 is refused."""
        with raises("Parameter node_count must be an integer greater than 0."):
            config(instance_count=value)

    @pytest.mark.parametrize(("retries", "tries"), [(0, 1), (2, 3), (4, 5)])
    def test_max_retries_counts_retries_so_tries_are_one_more(self, retries: int, tries: int) -> None:
        """retry_settings.max_retries is a number of retries: run_max_try = max_retries + 1."""
        assert config(retry_settings={"max_retries": retries}).run_max_try == tries

    def test_retry_settings_timeout_is_run_invocation_timeout(self) -> None:
        """retry_settings.timeout sets run_invocation_timeout."""
        cfg = config(retry_settings={"max_retries": 2, "timeout": 30})
        assert (cfg.run_invocation_timeout, cfg.run_max_try) == (30, 3)

    def test_empty_retry_settings_keep_the_v1_defaults(self) -> None:
        """retry_settings without keys (or with None values) leave 60 seconds and 3 tries."""
        for settings in ({}, {"max_retries": None, "timeout": None}):
            cfg = config(retry_settings=settings)
            assert (cfg.run_invocation_timeout, cfg.run_max_try) == (60, 3)

    def test_negative_max_retries_are_refused(self) -> None:
        """max_retries below 0 is refused."""
        with raises("retry_settings.max_retries must be an integer of 0 or more."):
            config(retry_settings={"max_retries": -1})

    def test_retry_settings_timeout_is_checked(self) -> None:
        """A timeout <= 0 gets the run_invocation_timeout message."""
        with raises("Parameter run_invocation_timeout must be an integer greater than 0."):
            config(retry_settings={"timeout": 0})

    def test_unknown_retry_settings_keys_are_refused(self) -> None:
        """Only max_retries and timeout are known."""
        with raises("retry_settings has unknown keys ['retries']; use max_retries and timeout."):
            config(retry_settings={"retries": 2})

    def test_append_row_to_means_append_row_with_that_file_name(self) -> None:
        """append_row_to selects append_row and names the file after its last path part."""
        cfg = config(append_row_to="outputs/scores.csv")
        assert cfg.output_action == "append_row"
        assert cfg.append_row_file_name == "scores.csv"

    def test_append_row_file_name_wins_over_append_row_to(self) -> None:
        """An explicit append_row_file_name is kept."""
        cfg = config(append_row_to="outputs/scores.csv", append_row_file_name="rows.txt")
        assert cfg.append_row_file_name == "rows.txt"

    def test_append_row_to_accepts_append_row_in_any_case(self) -> None:
        """output_action append_row (any case) may accompany append_row_to."""
        assert config(output_action="APPEND_ROW", append_row_to="scores.csv").output_action == "append_row"

    def test_append_row_to_conflicts_with_summary_only(self) -> None:
        """append_row_to with output_action summary_only is refused."""
        with raises("append_row_to needs output_action append_row (or no output_action)."):
            config(output_action="summary_only", append_row_to="scores.csv")


class TestRoundTrip:
    def test_to_dict_from_dict_round_trip(self) -> None:
        """from_dict(to_dict()) rebuilds an equal, JSON-able config."""
        cfg = config(
            environment="my-env",
            compute_target="cpu",
            error_threshold=5,
            output_action="append_row",
            node_count=2,
            process_count_per_node=3,
            mini_batch_size="2KB",
            source_directory="src",
            description="demo",
            logging_level="DEBUG",
            run_invocation_timeout=30,
            run_max_try=4,
            append_row_file_name="out.txt",
            allowed_failed_count=2,
            allowed_failed_percent=12.5,
            environment_variables={"A": "1"},
        )
        data = cfg.to_dict()
        assert json.loads(json.dumps(data)) == data
        assert ParallelRunConfig.from_dict(data).to_dict() == data
        assert data["mini_batch_size"] == 2048

    def test_round_trip_of_v2_spellings_and_partition_keys(self) -> None:
        """A config built with v2 names is recorded with v1 names and rebuilds equal."""
        cfg = config(
            partition_keys='["user"]',
            retry_settings={"max_retries": 1, "timeout": 10},
            mini_batch_error_threshold=3,
            max_concurrency_per_instance=2,
            instance_count=2,
            append_row_to="scores.csv",
        )
        data = cfg.to_dict()
        assert data["partition_keys"] == ["user"]
        assert (data["run_max_try"], data["run_invocation_timeout"]) == (2, 10)
        assert (data["allowed_failed_count"], data["process_count_per_node"], data["node_count"]) == (3, 2, 2)
        assert ParallelRunConfig.from_dict(data).to_dict() == data

    def test_from_dict_validates(self) -> None:
        """from_dict applies the same checks as the constructor."""
        data = config().to_dict()
        data["run_max_try"] = 0
        with raises("Parameter run_max_try must be an integer greater than 0."):
            ParallelRunConfig.from_dict(data)


# --------------------------------------------------------------------------- Settings


class TestMakeSettings:
    def test_defaults(self) -> None:
        """The advanced arguments default as in section 4.3 (resource_monitor_interval: see below)."""
        settings = make_settings({})
        assert settings == Settings()
        assert settings.to_dict() == {
            "task_overhead_timeout": 30,
            "progress_update_timeout": None,
            "first_task_creation_timeout": 600,
            "resource_monitor_interval": settings.resource_monitor_interval,
            "append_row_dataframe_header": False,
            "copy_logs_to_parent": False,
            "metrics_name_prefix": "",
            "push_metrics_to_parent": False,
            "profiling_module": "",
            "nice": 5,
        }

    def test_resource_monitor_interval_defaults_to_ten_seconds_locally(self) -> None:
        """Locally resources are sampled every 10 s by default (Azure's docs say 600, RT-2020 30)."""
        assert Settings().resource_monitor_interval == 10

    def test_none_values_keep_the_defaults(self) -> None:
        """A None value is skipped."""
        assert make_settings(dict.fromkeys(SETTING_NAMES)) == Settings()

    @pytest.mark.parametrize(("raw", "expected"), [("45", 45), (45, 45), ("'45'", 45), ('"45"', 45), ("2.5", 2.5)])
    def test_numbers_are_parsed_from_strings_and_quotes(self, raw: object, expected: float) -> None:
        """Numbers may come as text, quoted as PythonScriptStep quotes values."""
        assert make_settings({"task_overhead_timeout": raw}).task_overhead_timeout == expected

    @pytest.mark.parametrize(
        "name", ["task_overhead_timeout", "first_task_creation_timeout", "progress_update_timeout"]
    )
    @pytest.mark.parametrize("value", [1, 259200])
    def test_timeouts_accept_the_range_ends(self, name: str, value: int) -> None:
        """Timeouts accept (0, 259200] seconds."""
        assert getattr(make_settings({name: value}), name) == value

    @pytest.mark.parametrize(
        "name", ["task_overhead_timeout", "first_task_creation_timeout", "progress_update_timeout"]
    )
    @pytest.mark.parametrize("value", [0, -5, 259201])
    def test_timeouts_reject_values_outside_the_range(self, name: str, value: int) -> None:
        """Timeouts outside (0, 259200] are refused with the value named."""
        with raises(f"Parameter {name} must be in (0, 259200] seconds, not {value}."):
            make_settings({name: value})

    def test_progress_update_timeout_minus_one_means_dynamic(self) -> None:
        """progress_update_timeout -1 is accepted and means Azure's dynamic default."""
        settings = make_settings({"progress_update_timeout": "-1"})
        assert settings.progress_timeout(60) == 270

    @pytest.mark.parametrize("value", [0, 20, "30"])
    def test_resource_monitor_interval_accepts_zero_and_more(self, value: object) -> None:
        """resource_monitor_interval is [0, int.max]; 0 turns it off."""
        assert make_settings({"resource_monitor_interval": value}).resource_monitor_interval == int(value)

    def test_resource_monitor_interval_rejects_negative_values(self) -> None:
        """A negative interval is refused."""
        with raises("Parameter resource_monitor_interval must be 0 (off) or more seconds."):
            make_settings({"resource_monitor_interval": -1})

    @pytest.mark.parametrize("value", [0, 20])
    def test_nice_accepts_zero_to_twenty(self, value: int) -> None:
        """nice is in [0, 20]."""
        assert make_settings({"nice": value}).nice == value

    @pytest.mark.parametrize("value", [-1, 21])
    def test_nice_rejects_values_outside_the_range(self, value: int) -> None:
        """nice outside [0, 20] is refused."""
        with raises("Parameter nice must be between 0 and 20."):
            make_settings({"nice": value})

    @pytest.mark.parametrize("raw", ["abc", "", "nan", "1e", [1]])
    def test_numbers_must_be_numbers(self, raw: object) -> None:
        """A value that is not a number is refused with the value quoted."""
        with raises(f"Parameter first_task_creation_timeout must be a number, not '{raw}'."):
            make_settings({"first_task_creation_timeout": raw})

    @pytest.mark.parametrize("name", ["append_row_dataframe_header", "copy_logs_to_parent", "push_metrics_to_parent"])
    @pytest.mark.parametrize("raw", [True, "True", "true", "yes", "YES", "1", 1, "'True'"])
    def test_bools_accept_true_spellings(self, name: str, raw: object) -> None:
        """True, yes and 1 (any case, quoted or not) are True."""
        assert getattr(make_settings({name: raw}), name) is True

    @pytest.mark.parametrize("name", ["append_row_dataframe_header", "copy_logs_to_parent", "push_metrics_to_parent"])
    @pytest.mark.parametrize("raw", [False, "False", "false", "no", "0", 0, '"false"'])
    def test_bools_accept_false_spellings(self, name: str, raw: object) -> None:
        """False, no and 0 (any case, quoted or not) are False."""
        assert getattr(make_settings({name: raw}), name) is False

    @pytest.mark.parametrize("raw", ["maybe", "2", ""])
    def test_bools_reject_other_values(self, raw: str) -> None:
        """Any other value is refused with the value quoted."""
        with raises(f"Parameter copy_logs_to_parent must be True or False, not '{raw}'."):
            make_settings({"copy_logs_to_parent": raw})

    @pytest.mark.parametrize("value", ["", "cProfile", "profile"])
    def test_profiling_module_accepts_the_two_profilers(self, value: str) -> None:
        """profiling_module is cProfile, profile or empty."""
        assert make_settings({"profiling_module": value}).profiling_module == value

    def test_profiling_module_rejects_other_modules(self) -> None:
        """Any other profiler is refused."""
        with raises("Parameter profiling_module must be cProfile, profile or empty."):
            make_settings({"profiling_module": "line_profiler"})

    def test_metrics_name_prefix_becomes_text(self) -> None:
        """metrics_name_prefix is kept as text."""
        assert make_settings({"metrics_name_prefix": 7}).metrics_name_prefix == "7"

    def test_unknown_settings_are_refused(self) -> None:
        """A name that is not an advanced argument is a ConfigError, not an AttributeError."""
        with pytest.raises(ConfigError, match=re.escape("unknown setting 'task_timeout'")):
            make_settings({"task_timeout": 5})


class TestProgressTimeout:
    def test_defaults_to_three_times_timeout_plus_overhead(self) -> None:
        """Unset: 3 * (run_invocation_timeout + task_overhead_timeout), i.e. 270 s for 60 + 30."""
        assert Settings().progress_timeout(60) == 270
        assert Settings(task_overhead_timeout=10).progress_timeout(20) == 90

    def test_an_explicit_value_wins(self) -> None:
        """A positive progress_update_timeout is used as is."""
        assert Settings(progress_update_timeout=50).progress_timeout(60) == 50


# --------------------------------------------------------------------------- step name


class TestCheckStepName:
    @pytest.mark.parametrize("name", ["predict-digits-mnist", "example-iris", "abc", "a1-b2", "a" * 32, "a--b"])
    def test_accepts_documented_names(self, name: str) -> None:
        """Names of 3-32 lowercase letters, digits or dashes, starting with a letter, pass unchanged."""
        assert check_step_name(name) == name

    @pytest.mark.parametrize("name", ["ab", "Abc", "abc-", "a" * 33, "1abc", "-abc", "ab_c", "ab c", "", "abC"])
    def test_rejects_other_names(self, name: str) -> None:
        """Names breaking the length or ^[a-z]([-a-z0-9]*[a-z0-9])?$ rule are refused."""
        with raises(step_name_message(name)):
            check_step_name(name)

    @pytest.mark.parametrize("name", [None, 123])
    def test_rejects_non_strings(self, name: object) -> None:
        """A name that is not a str is refused."""
        with raises(step_name_message(name)):
            check_step_name(name)


# --------------------------------------------------------------------------- step arguments


class TestSplitArguments:
    @pytest.mark.parametrize("arguments", [None, []])
    def test_no_arguments(self, arguments: list[str] | None) -> None:
        """No arguments give no settings and no script arguments."""
        assert split_arguments(arguments) == ({}, [])

    @pytest.mark.parametrize(("arguments", "first"), [(["input.csv", "--x", "1"], "input.csv"), ([5, "--x"], "5")])
    def test_first_argument_must_be_a_keyword(self, arguments: list[object], first: str) -> None:
        """A first element not starting with '-' gets Azure's message."""
        with raises(invalid_argument_message(first)):
            split_arguments(arguments)

    def test_a_single_dash_first_argument_is_allowed(self) -> None:
        """Azure only requires the first element to start with '-'."""
        assert split_arguments(["-v", "pos"]) == ({}, ["-v", "pos"])

    @pytest.mark.parametrize("name", RESERVED_ARGUMENTS)
    def test_reserved_names_are_refused_with_a_separate_value(self, name: str) -> None:
        """'--<reserved> v' anywhere in the list gets Azure's message naming the argument."""
        with raises(reserved_message(name)):
            split_arguments(["--model", "m.pkl", f"--{name}", "5"])

    @pytest.mark.parametrize("name", RESERVED_ARGUMENTS)
    def test_reserved_names_are_refused_with_an_inline_value(self, name: str) -> None:
        """'--<reserved>=v' gets the same message, with the bare name (as Azure formats it)."""
        with raises(reserved_message(name)):
            split_arguments([f"--{name}=5"])

    def test_the_reserved_names_are_azures(self) -> None:
        """The reserved names are exactly Azure's twelve."""
        assert set(RESERVED_ARGUMENTS) == {
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
        }

    @pytest.mark.parametrize("arg", ["--outputs", "--mini-batch-size", "-output", "--output_path"])
    def test_only_exact_reserved_names_are_refused(self, arg: str) -> None:
        """Similar names, kebab spellings and single-dash flags pass through."""
        assert split_arguments([arg, "x"]) == ({}, [arg, "x"])

    def test_advanced_flags_are_extracted_in_both_forms(self) -> None:
        """Advanced settings in '--x v' and '--x=v' form go to the settings, the rest to the script."""
        settings, script = split_arguments(
            ["--task_overhead_timeout", "45", "--model", "m.pkl", "--nice=3", "-v", "pos", "--flag"]
        )
        assert settings == {"task_overhead_timeout": "45", "nice": "3"}
        assert script == ["--model", "m.pkl", "-v", "pos", "--flag"]

    @pytest.mark.parametrize("name", SETTING_NAMES)
    def test_every_advanced_flag_is_extracted(self, name: str) -> None:
        """Each advanced argument of section 4.3 reaches the settings."""
        assert split_arguments([f"--{name}", "1", "--keep"]) == ({name: "1"}, ["--keep"])

    def test_other_arguments_keep_their_order_and_become_str(self) -> None:
        """Non-advanced arguments are passed through in order, as text."""
        assert split_arguments(["--b", 2, "--a", 1.5, "--c=x"]) == ({}, ["--b", "2", "--a", "1.5", "--c=x"])

    def test_an_advanced_flag_needs_a_value(self) -> None:
        """An advanced flag at the end without a value is refused."""
        with raises("Argument --nice needs a value."):
            split_arguments(["--model", "m", "--nice"])


# --------------------------------------------------------------------------- ParallelRunStep


@pytest.fixture
def job(tmp_path: Path) -> dict[str, object]:
    """An entry script, a folder of two files and a CSV, all under tmp_path."""
    script = tmp_path / "score.py"
    script.write_text("def run(mb):\n    return mb\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("a\n")
    (data / "b.txt").write_text("b\n")
    table = tmp_path / "table.csv"
    table.write_text("x,y\n1,2\n")
    return {
        "tmp": tmp_path,
        "script": script,
        "files": FileDataset.from_files(str(data)),
        "table": TabularDataset.from_delimited_files(str(table)),
    }


class TestParallelRunStep:
    def test_a_valid_step(self, job: dict) -> None:
        """A valid step keeps its name and inputs and resolves the entry script."""
        cfg = ParallelRunConfig(entry_script=str(job["script"]))
        step = ParallelRunStep("score-files", cfg, [job["files"]])
        assert step.name == "score-files"
        assert step.config is cfg
        assert step.inputs == [job["files"]]
        assert step.entry_script == job["script"].resolve()
        assert step.script_arguments == []
        assert step.settings == Settings()

    def test_config_must_be_a_parallel_run_config(self, job: dict) -> None:
        """Anything but a ParallelRunConfig gets Azure's message."""
        with raises("Param parallel_run_config must be a azureml.pipeline.steps.ParallelRunConfig"):
            ParallelRunStep("score-files", {"entry_script": str(job["script"])}, [job["files"]])

    @pytest.mark.parametrize("inputs", [[], (), None])
    def test_inputs_must_not_be_empty(self, job: dict, inputs: object) -> None:
        """Empty (or missing) inputs get Azure's message."""
        cfg = ParallelRunConfig(entry_script=str(job["script"]))
        with raises(
            "The parameter 'inputs' must be a list and have at least one element or "
            "rank_mini_batch_count must be greater than zero."
        ):
            ParallelRunStep("score-files", cfg, inputs)

    def test_inputs_must_be_a_list(self, job: dict) -> None:
        """A bare dataset (not in a list) gets the same message."""
        cfg = ParallelRunConfig(entry_script=str(job["script"]))
        with pytest.raises(ConfigError, match=re.escape("The parameter 'inputs' must be a list")):
            ParallelRunStep("score-files", cfg, job["files"])

    def test_inputs_must_be_datasets(self, job: dict) -> None:
        """A path instead of a dataset is refused, naming the type found."""
        cfg = ParallelRunConfig(entry_script=str(job["script"]))
        with pytest.raises(ConfigError, match=r"^Step input must be of any type: .*found str$"):
            ParallelRunStep("score-files", cfg, [str(job["tmp"] / "data")])

    def test_inputs_must_all_have_the_same_kind(self, job: dict) -> None:
        """Mixing file and tabular inputs gets Azure's message."""
        cfg = ParallelRunConfig(entry_script=str(job["script"]))
        with raises("All inputs of step must be same type"):
            ParallelRunStep("score-files", cfg, [job["files"], job["table"]])

    def test_two_inputs_of_one_kind_are_fine(self, job: dict) -> None:
        """Several datasets of the same kind are accepted."""
        cfg = ParallelRunConfig(entry_script=str(job["script"]))
        step = ParallelRunStep("score-files", cfg, [job["files"], FileDataset.from_files(str(job["script"]))])
        assert len(step.inputs) == 2

    def test_the_name_is_checked(self, job: dict) -> None:
        """An invalid step name is refused with the step-name message."""
        cfg = ParallelRunConfig(entry_script=str(job["script"]))
        with raises(step_name_message("Score")):
            ParallelRunStep("Score", cfg, [job["files"]])

    def test_entry_script_is_found_under_source_directory(self, job: dict) -> None:
        """With source_directory, entry_script is relative to it."""
        src = job["tmp"] / "src"
        src.mkdir()
        (src / "score.py").write_text("def run(mb):\n    return mb\n")
        cfg = ParallelRunConfig(entry_script="score.py", source_directory=str(src))
        assert ParallelRunStep("score-files", cfg, [job["files"]]).entry_script == (src / "score.py").resolve()

    def test_source_directory_must_exist(self, job: dict) -> None:
        """A missing source_directory gets Azure's message."""
        missing = str(job["tmp"] / "nowhere")
        cfg = ParallelRunConfig(entry_script="score.py", source_directory=missing)
        with raises(f"The value '{missing}' specified in source_directory doesn't exist."):
            ParallelRunStep("score-files", cfg, [job["files"]])

    def test_source_directory_must_be_a_directory(self, job: dict) -> None:
        """A source_directory that is a file gets Azure's message."""
        cfg = ParallelRunConfig(entry_script="score.py", source_directory=str(job["script"]))
        with raises(f"The value '{job['script']}' specified in source_directory is not a directory."):
            ParallelRunStep("score-files", cfg, [job["files"]])

    def test_entry_script_must_exist_under_source_directory(self, job: dict) -> None:
        """An entry_script missing from source_directory gets Azure's message."""
        cfg = ParallelRunConfig(entry_script="nope.py", source_directory=str(job["tmp"]))
        with raises("The value 'nope.py' specified in entry_script doesn't exist."):
            ParallelRunStep("score-files", cfg, [job["files"]])

    def test_entry_script_must_be_a_file(self, job: dict) -> None:
        """An entry_script that is a folder gets Azure's message."""
        cfg = ParallelRunConfig(entry_script="data", source_directory=str(job["tmp"]))
        with raises("The value 'data' specified in entry_script is not a file."):
            ParallelRunStep("score-files", cfg, [job["files"]])

    def test_arguments_must_start_with_a_keyword(self, job: dict) -> None:
        """A positional first argument gets Azure's message."""
        cfg = ParallelRunConfig(entry_script=str(job["script"]))
        with raises(invalid_argument_message("model.pkl")):
            ParallelRunStep("score-files", cfg, [job["files"]], arguments=["model.pkl"])

    def test_arguments_must_not_use_reserved_names(self, job: dict) -> None:
        """A reserved argument gets Azure's message."""
        cfg = ParallelRunConfig(entry_script=str(job["script"]))
        with raises(reserved_message("mini_batch_size")):
            ParallelRunStep("score-files", cfg, [job["files"]], arguments=["--mini_batch_size=5"])

    def test_arguments_split_into_settings_and_script_arguments(self, job: dict) -> None:
        """Advanced flags become settings; other arguments reach the script in order."""
        cfg = ParallelRunConfig(entry_script=str(job["script"]))
        step = ParallelRunStep(
            "score-files",
            cfg,
            [job["files"]],
            arguments=["--model", "m.pkl", "--task_overhead_timeout", "45", "--copy_logs_to_parent=True"],
        )
        assert step.script_arguments == ["--model", "m.pkl"]
        assert step.settings.task_overhead_timeout == 45
        assert step.settings.copy_logs_to_parent is True

    def test_advanced_flags_in_arguments_are_range_checked(self, job: dict) -> None:
        """An out-of-range advanced flag in arguments is refused at construction."""
        cfg = ParallelRunConfig(entry_script=str(job["script"]))
        with raises("Parameter nice must be between 0 and 20."):
            ParallelRunStep("score-files", cfg, [job["files"]], arguments=["--nice", "30"])


@pytest.mark.parametrize("level", ["LOUD", "", "inf0", -1, True, 2.5])
def test_an_unknown_logging_level_is_refused_with_the_allowed_values(level: object) -> None:
    with pytest.raises(ConfigError, match=r"is not a logging level: use one of DEBUG, INFO, WARNING, ERROR, CRITICAL"):
        ParallelRunConfig(entry_script="score.py", logging_level=level)  # type: ignore[arg-type]


@pytest.mark.parametrize("level", ["DEBUG", "info", "Warning", "WARN", "error", "CRITICAL", 15])
def test_logging_levels_in_any_case_are_accepted(level: object) -> None:
    assert ParallelRunConfig(entry_script="score.py", logging_level=level).logging_level == level  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the job YAML's shapes


class TestJobYamlSchema:
    def test_every_run_flag_is_a_yaml_key(self) -> None:
        """The job YAML knows every `pipeobs run` flag, the script's arguments and the v2 blocks, and --format's choices."""
        commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
        run = {a.dest: a for a in commands.choices["run"]._actions}
        blocks = {key for key, shape in JOB_YAML.items() if isinstance(shape, dict)}

        assert set(JOB_YAML) - blocks == set(run) - {"help", *COMMAND_LINE_ONLY} | {"arguments"}  # flags: after --
        assert run["format"].choices == TABULAR_FORMATS

    def test_null_values_count_as_not_given(self) -> None:
        """A key left empty (null) is as if it were absent, also inside a v2 block."""
        data = {"inputs": None, "output": None, "retry_settings": {"timeout": None}, "resources": None}

        assert check_job_yaml(data, "job.yaml") == {}


# --------------------------------------------------------------------------- how many workers


def free_memory(monkeypatch: pytest.MonkeyPatch, available: int) -> None:
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=available))


class TestCheckWorkerCount:
    def test_refuses_more_than_sixteen_workers_per_cpu(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Too many workers is a ConfigError saying the limit, why, and how to lift it."""
        free_memory(monkeypatch, 1024**4)
        cpus = os.cpu_count() or 1

        with pytest.raises(ConfigError) as info:
            check_worker_count(2, cpus * WORKERS_PER_CPU)

        assert str(info.value).startswith(f"{2 * cpus * WORKERS_PER_CPU} worker processes (node_count 2 x ")
        assert f"the limit is {cpus * WORKERS_PER_CPU} (16 per CPU on {cpus} CPUs, and one per 64 MiB of the 1024.0 GiB " in str(info.value)
        assert str(info.value).endswith(", or set PIPEOBS_ALLOW_MANY_PROCESSES=1 to start them anyway")

    def test_the_environment_variable_lifts_the_limit(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """PIPEOBS_ALLOW_MANY_PROCESSES=1 lets any count through."""
        monkeypatch.setenv("PIPEOBS_ALLOW_MANY_PROCESSES", "1")

        check_worker_count(1, 100_000)

    def test_one_worker_per_cpu_is_allowed_with_little_memory(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Azure's default count (one per CPU) is never refused, however little memory is free."""
        free_memory(monkeypatch, MEMORY_PER_WORKER)
        cpus = os.cpu_count() or 1

        check_worker_count(1, cpus)
        with pytest.raises(ConfigError, match=f"the limit is {cpus} "):
            check_worker_count(1, cpus + 1)
