"""Specification of the ``pipeobs run`` arguments: flags, job YAML, merging, and error exits.

No test here runs a job: every ``main`` call fails before the job starts.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeobs.cli import CONFIG_FLAGS, SETTING_FLAGS, build_parser, build_step, main, merge_values
from pipeobs.config import load_job_yaml as load_yaml
from pipeobs.errors import ConfigError
from tests.conftest import RunJob


def kebab(name: str) -> str:
    return "--" + name.replace("_", "-")


def snake(name: str) -> str:
    return "--" + name


def flag_values(argv: list[str]) -> dict[str, Any]:
    """The flags of ``pipeobs run`` as command_run collects them (None means not given)."""
    args = build_parser().parse_args(["run", *argv])
    return {k: v for k, v in vars(args).items() if v is not None and k not in ("command", "config", "resume")}


def merged(yaml_path: Path, argv: list[str]) -> dict[str, Any]:
    """YAML values overridden by flags, as command_run merges them."""
    return merge_values(load_yaml(str(yaml_path)), flag_values(argv))


def exit_code(argv: list[str]) -> int:
    """main's return code, or the SystemExit code argparse raises."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


SAMPLE_VALUES = {int: "3", float: "12.5"}


def sample(name: str) -> str:
    return SAMPLE_VALUES.get(CONFIG_FLAGS.get(name, {}).get("type"), "x")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """tmp_path with score.py and data/ holding two files."""
    (tmp_path / "score.py").write_text("def run(mb):\n    return mb\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("a\n")
    (data / "b.txt").write_text("b\n")
    return tmp_path


def write_yaml(folder: Path, text: str, name: str = "job.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- parser


class TestFlagSpellings:
    @pytest.mark.parametrize("name", [n for n in CONFIG_FLAGS if n != "environment_variables"])
    def test_config_flags_parse_the_same_in_kebab_and_snake_case(self, name: str) -> None:
        """--run-max-try and --run_max_try (and every config flag) fill the same destination."""
        value = sample(name)
        by_kebab = vars(build_parser().parse_args(["run", kebab(name), value]))
        by_snake = vars(build_parser().parse_args(["run", snake(name), value]))
        assert by_kebab == by_snake
        assert by_kebab[name] is not None

    @pytest.mark.parametrize("name", SETTING_FLAGS)
    def test_advanced_flags_parse_the_same_in_kebab_and_snake_case(self, name: str) -> None:
        """Every advanced argument of section 4.3 is a flag in both spellings, kept as text."""
        by_kebab = vars(build_parser().parse_args(["run", kebab(name), "7"]))
        by_snake = vars(build_parser().parse_args(["run", snake(name), "7"]))
        assert by_kebab == by_snake
        assert by_kebab[name] == "7"

    def test_typed_flags_are_converted(self) -> None:
        """int and float flags are converted by the parser."""
        args = build_parser().parse_args(["run", "--run-max-try", "2", "--allowed_failed_percent", "12.5"])
        assert args.run_max_try == 2
        assert args.allowed_failed_percent == 12.5

    def test_environment_variables_are_repeatable_in_both_spellings(self) -> None:
        """--environment-variables and --environment_variables append to one list."""
        args = build_parser().parse_args(["run", "--environment-variables", "A=1", "--environment_variables", "B=2"])
        assert args.environment_variables == ["A=1", "B=2"]

    def test_other_run_flags(self) -> None:
        """--input/-i repeat; --partition-format and --runs-dir have snake spellings too."""
        args = build_parser().parse_args(
            ["run", "s.py", "-i", "a", "--input", "b", "--partition_format", "{x}.txt", "--runs_dir", "r"]
        )
        assert (args.entry_script, args.inputs, args.partition_format, args.runs_dir) == (
            "s.py",
            ["a", "b"],
            "{x}.txt",
            "r",
        )

    def test_unset_flags_are_none_so_they_do_not_override_yaml(self) -> None:
        """Every config and advanced flag defaults to None."""
        args = vars(build_parser().parse_args(["run"]))
        assert all(args[name] is None for name in (*CONFIG_FLAGS, *SETTING_FLAGS))
        assert flag_values([]) == {}


class TestUnknownFlags:
    @pytest.mark.parametrize(
        ("argv", "flag"),
        [
            (["--resource_monitor_interva", "20"], "--resource_monitor_interva"),
            (["--run-max-tri", "2"], "--run-max-tri"),
            (["--run-max", "2"], "--run-max"),
        ],
    )
    def test_an_unknown_flag_exits_2_with_one_line(
        self, capsys: pytest.CaptureFixture[str], argv: list[str], flag: str
    ) -> None:
        """An unknown flag (abbreviations included) exits 2 with one 'unknown option' line."""
        assert exit_code(["run", "score.py", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: unknown option {flag}")
        assert err.count("\n") == 1

    def test_a_misspelled_advanced_flag_gets_a_suggestion(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--resource_monitor_interva (the samples' typo) suggests --resource_monitor_interval."""
        assert exit_code(["run", "score.py", "--resource_monitor_interva", "20"]) == 2
        err = capsys.readouterr().err
        assert "did you mean --resource_monitor_interval" in err or "did you mean --resource-monitor-interval" in err

    def test_a_misspelled_config_flag_gets_a_suggestion(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--run-max-tri suggests --run-max-try."""
        assert exit_code(["run", "score.py", "--run-max-tri", "2"]) == 2
        assert "did you mean --run-max-try" in capsys.readouterr().err

    def test_a_stray_positional_points_to_the_double_dash(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A second positional argument exits 2 and says script arguments go after '--'."""
        assert exit_code(["run", "score.py", "extra"]) == 2
        assert capsys.readouterr().err == "error: unexpected argument 'extra' (script arguments go after '--')\n"

    def test_a_bad_int_exits_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A non-int value for an int flag exits 2 naming both spellings."""
        assert exit_code(["run", "score.py", "--run-max-try", "abc"]) == 2
        assert capsys.readouterr().err == "error: argument --run-max-try/--run_max_try: invalid int value: 'abc'\n"


# --------------------------------------------------------------------------- job YAML


class TestLoadYaml:
    def test_snake_case_keys(self, tmp_path: Path) -> None:
        """Keys use the flags' names in snake case."""
        path = write_yaml(
            tmp_path, "run_max_try: 5\nmini_batch_size: 1KB\ntask_overhead_timeout: 45\nerror_threshold: 3\n"
        )
        assert load_yaml(str(path)) == {
            "run_max_try": 5,
            "mini_batch_size": "1KB",
            "task_overhead_timeout": 45,
            "error_threshold": 3,
        }

    def test_kebab_case_keys_load_as_snake_case(self, tmp_path: Path) -> None:
        """Kebab-case keys give the same values as snake-case keys."""
        snake_path = write_yaml(tmp_path, "run_max_try: 5\nprocess_count_per_node: 2\nnice: 3\n", "a.yaml")
        kebab_path = write_yaml(tmp_path, "run-max-try: 5\nprocess-count-per-node: 2\nnice: 3\n", "b.yaml")
        assert (
            load_yaml(str(kebab_path))
            == load_yaml(str(snake_path))
            == {
                "run_max_try": 5,
                "process_count_per_node": 2,
                "nice": 3,
            }
        )

    def test_v2_nested_blocks_are_flattened(self, tmp_path: Path) -> None:
        """retry_settings.{max_retries,timeout} and resources.instance_count load as flat keys."""
        path = write_yaml(
            tmp_path,
            "retry_settings:\n  max_retries: 4\n  timeout: 30\nresources:\n  instance_count: 2\n"
            "max-concurrency-per-instance: 3\nmini_batch_error_threshold: 1\n",
        )
        assert load_yaml(str(path)) == {
            "max_retries": 4,
            "timeout": 30,
            "instance_count": 2,
            "max_concurrency_per_instance": 3,
            "mini_batch_error_threshold": 1,
        }

    def test_an_unknown_nested_key_is_refused(self, tmp_path: Path) -> None:
        """A key inside retry_settings other than max_retries/timeout is a ConfigError."""
        path = write_yaml(tmp_path, "retry_settings:\n  max_retry: 4\n")
        with pytest.raises(
            ConfigError,
            match=re.escape(f"unknown key 'retry_settings.max_retry' in {path}; allowed: max_retries, timeout"),
        ):
            load_yaml(str(path))

    @pytest.mark.parametrize("key", ["run_max_tri", "run-max-tri"])
    def test_an_unknown_key_gets_a_suggestion(self, tmp_path: Path, key: str) -> None:
        """An unknown key is a ConfigError naming it, with a did-you-mean."""
        path = write_yaml(tmp_path, f"{key}: 5\n")
        message = f"unknown key '{key}' in {path}; did you mean run_max_try?"
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
            load_yaml(str(path))

    def test_an_unknown_key_without_a_close_match(self, tmp_path: Path) -> None:
        """A key far from every known key is named without a suggestion."""
        path = write_yaml(tmp_path, "zzzzzz: 1\n")
        message = f"unknown key 'zzzzzz' in {path}"
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
            load_yaml(str(path))

    def test_invalid_yaml_is_one_line(self, tmp_path: Path) -> None:
        """Broken YAML is a one-line ConfigError naming the file."""
        path = write_yaml(tmp_path, "run_max_try: [1, 2\nnice: 3\n")
        with pytest.raises(ConfigError, match=re.escape(f"job YAML '{path}' is not valid YAML at line 2, column 5: ")) as info:
            load_yaml(str(path))
        assert "\n" not in str(info.value)

    def test_a_yaml_that_is_not_a_mapping_is_refused(self, tmp_path: Path) -> None:
        """A list or scalar document is refused."""
        path = write_yaml(tmp_path, "- run_max_try\n- 5\n")
        with pytest.raises(
            ConfigError, match=re.escape(f"job YAML '{path}' must be a mapping of setting names to values")
        ):
            load_yaml(str(path))

    def test_a_missing_yaml_is_refused(self, tmp_path: Path) -> None:
        """A file that cannot be read is a ConfigError."""
        path = tmp_path / "missing.yaml"
        with pytest.raises(ConfigError, match=re.escape(f"cannot read job YAML '{path}': No such file or directory")):
            load_yaml(str(path))

    def test_an_empty_yaml_is_empty(self, tmp_path: Path) -> None:
        """An empty file gives no values."""
        assert load_yaml(str(write_yaml(tmp_path, ""))) == {}

    def test_relative_paths_are_resolved_against_the_yaml_folder(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """inputs, entry_script, output and source_directory are relative to the YAML, not the cwd."""
        folder = tmp_path / "jobs"
        folder.mkdir()
        path = write_yaml(
            folder,
            "entry_script: score.py\ninputs: [data, /abs/in]\noutput: out\n",
        )
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        values = load_yaml(str(path))
        base = folder.resolve()
        assert values["entry_script"] == str(base / "score.py")
        assert values["inputs"] == [str(base / "data"), "/abs/in"]
        assert values["output"] == str(base / "out")

    @pytest.mark.parametrize("key", ["input", "inputs"])
    def test_a_single_input_may_be_a_string(self, tmp_path: Path, key: str) -> None:
        """'input: x' or 'inputs: x' becomes a one-element list."""
        values = load_yaml(str(write_yaml(tmp_path, f"{key}: data\n")))
        assert values["inputs"] == [str(tmp_path.resolve() / "data")]


# --------------------------------------------------------------------------- building the step


class TestBuildStep:
    def test_yaml_values_configure_the_step(self, project: Path) -> None:
        """A YAML alone configures the step."""
        path = write_yaml(project, "entry_script: score.py\ninputs: data\nrun_max_try: 5\nmini-batch-size: 1\n")
        step = build_step(merged(path, []), [])
        assert step.config.run_max_try == 5
        assert step.config.mini_batch_size == 1
        assert step.entry_script == (project / "score.py").resolve()

    def test_flags_override_yaml(self, project: Path) -> None:
        """A flag wins over the same key in the YAML."""
        path = write_yaml(project, "entry_script: score.py\ninputs: data\nrun_max_try: 5\nnice: 3\n")
        values = merged(path, ["--run-max-try", "2", "--nice", "7"])
        step = build_step(values, [])
        assert step.config.run_max_try == 2
        assert step.settings.nice == 7

    def test_run_max_try_flag_overrides_yaml_retry_settings(self, project: Path) -> None:
        """--run-max-try 2 wins over the YAML's retry_settings.max_retries."""
        path = write_yaml(project, "entry_script: score.py\ninputs: data\nretry_settings:\n  max_retries: 4\n")
        assert build_step(merged(path, ["--run-max-try", "2"]), []).config.run_max_try == 2

    def test_v2_yaml_blocks_configure_the_step(self, project: Path) -> None:
        """retry_settings and resources reach the config (tries = retries + 1)."""
        path = write_yaml(
            project,
            "entry_script: score.py\ninputs: data\nretry_settings:\n  max_retries: 4\n  timeout: 30\n"
            "resources:\n  instance_count: 2\n",
        )
        cfg = build_step(merged(path, []), []).config
        assert (cfg.run_max_try, cfg.run_invocation_timeout, cfg.node_count) == (5, 30, 2)

    def test_max_retries_and_timeout_flags(self, project: Path) -> None:
        """--max-retries and --timeout are the v2 retry settings."""
        values = {"entry_script": str(project / "score.py"), "inputs": [str(project / "data")]}
        values.update(flag_values(["--max-retries", "0", "--timeout", "5"]))
        cfg = build_step(values, []).config
        assert (cfg.run_max_try, cfg.run_invocation_timeout) == (1, 5)

    def test_yaml_entry_script_is_relative_to_source_directory(self, project: Path) -> None:
        """With source_directory in the YAML, entry_script is found inside it (Azure's rule)."""
        src = project / "src"
        src.mkdir()
        (src / "predict.py").write_text("def run(mb):\n    return mb\n")
        path = write_yaml(project, "source_directory: src\nentry_script: predict.py\ninputs: data\n")
        assert build_step(merged(path, []), []).entry_script == (src / "predict.py").resolve()

    def test_script_arguments_after_double_dash_are_kept(self, project: Path) -> None:
        """Arguments after '--' reach the script in order, after the YAML's arguments."""
        path = write_yaml(project, "entry_script: score.py\ninputs: data\narguments: ['--model', 'm.pkl']\n")
        step = build_step(merged(path, []), ["--alpha", "0.5", "-v", "pos"])
        assert step.script_arguments == ["--model", "m.pkl", "--alpha", "0.5", "-v", "pos"]

    def test_advanced_flags_after_double_dash_become_settings(self, project: Path) -> None:
        """An advanced argument among the script arguments is taken out, as on Azure."""
        values = {"entry_script": str(project / "score.py"), "inputs": [str(project / "data")]}
        step = build_step(values, ["--task_overhead_timeout", "45", "--alpha", "1"])
        assert step.settings.task_overhead_timeout == 45
        assert step.script_arguments == ["--alpha", "1"]

    def test_advanced_flags_win_over_the_same_setting_in_arguments(self, project: Path) -> None:
        """--task-overhead-timeout 10 wins over '-- --task_overhead_timeout 45'."""
        values = {"entry_script": str(project / "score.py"), "inputs": [str(project / "data")]}
        values.update(flag_values(["--task-overhead-timeout", "10"]))
        assert build_step(values, ["--task_overhead_timeout", "45"]).settings.task_overhead_timeout == 10

    @pytest.mark.parametrize(("text", "keys"), [("user, season", ["user", "season"]), ('["user"]', ["user"])])
    def test_partition_keys_flag_is_comma_separated_or_json(self, project: Path, text: str, keys: list[str]) -> None:
        """--partition-keys takes 'a,b' or a JSON list."""
        values = {"entry_script": str(project / "score.py"), "inputs": [str(project / "data")]}
        values.update(flag_values(["--partition-keys", text]))
        assert build_step(values, []).config.partition_keys == keys

    def test_environment_variables_flag_is_name_value(self, project: Path) -> None:
        """--environment-variables NAME=VALUE pairs become the config's variables."""
        values = {"entry_script": str(project / "score.py"), "inputs": [str(project / "data")]}
        values.update(flag_values(["--environment-variables", "A=1", "--environment-variables", "B=x=y"]))
        assert build_step(values, []).config.environment_variables == {"A": "1", "B": "x=y"}

    def test_environment_variables_need_an_equals_sign(self, project: Path) -> None:
        """A variable without '=' is refused."""
        values = {"entry_script": str(project / "score.py"), "inputs": [str(project / "data")]}
        values.update(flag_values(["--environment-variables", "A"]))
        with pytest.raises(ConfigError, match="^" + re.escape("environment variable 'A' must be NAME=VALUE") + "$"):
            build_step(values, [])

    def test_an_entry_script_is_required(self) -> None:
        """Without an entry script the error says how to give one."""
        with pytest.raises(
            ConfigError, match=re.escape("no entry script given: pipeobs run ENTRY_SCRIPT --input PATH")
        ):
            build_step({"inputs": ["data"]}, [])

    def test_an_input_is_required(self) -> None:
        """Without an input the error says how to give one."""
        with pytest.raises(ConfigError, match=re.escape("no input given: add --input PATH (a file, folder or glob)")):
            build_step({"entry_script": "score.py"}, [])

    def test_the_default_step_name_comes_from_the_script(self, project: Path) -> None:
        """The step is named after the entry script's file name."""
        values = {"entry_script": str(project / "score.py"), "inputs": [str(project / "data")]}
        assert build_step(values, []).name == "score"


# --------------------------------------------------------------------------- main's error exits


class TestMainErrors:
    def test_a_missing_entry_script_exits_3_without_traceback(
        self, project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A missing script exits 3 with one 'error:' line."""
        monkeypatch.chdir(project)
        assert exit_code(["run", "missing.py", "--input", "data"]) == 3
        err = capsys.readouterr().err
        assert err.startswith("error: entry script 'missing.py' does not exist")
        assert "Traceback" not in err

    def test_a_missing_entry_script_is_reported_before_a_missing_input(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With both missing, the entry script is reported (exit 3)."""
        monkeypatch.chdir(tmp_path)
        assert exit_code(["run", "missing.py", "--input", "x"]) == 3
        assert capsys.readouterr().err.startswith("error: entry script 'missing.py' does not exist")

    @pytest.mark.parametrize(
        ("argv", "message"),
        [
            (["--run-max-try", "0"], "Parameter run_max_try must be an integer greater than 0."),
            (["--run_invocation_timeout", "-1"], "Parameter run_invocation_timeout must be an integer greater than 0."),
            (["--error-threshold", "-2"], "error_threshold '-2' is not an int value greater than or equal to -1."),
            (["--output-action", "file"], "Parameter output_action must be summary_only or append_row."),
            (
                ["--mini-batch-size", "100 kb"],
                r"Parameter mini_batch_size must follow regex rule ^\d+([kKmMgG][bB])*$.",
            ),
            (["--process-count-per-node", "0"], "Parameter process_count_per_node must be an integer greater than 0."),
            (["--allowed-failed-percent", "150"], "allowed_failed_percent '150.0' is not between 0 and 100."),
            (
                ["--allowed_failed_count", "-3"],
                "allowed_failed_count '-3' is not an int value greater than or equal to -1.",
            ),
            (
                ["--output-action", "append_row", "--append-row-file-name", "a:b.txt"],
                "Parameter append_row_file_name must be a valid UNIX file name.",
            ),
        ],
    )
    def test_an_invalid_config_flag_exits_2_with_azures_message(
        self,
        project: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        argv: list[str],
        message: str,
    ) -> None:
        """An invalid value exits 2 with exactly Azure's message (before the script is even looked for)."""
        monkeypatch.chdir(project)
        assert exit_code(["run", "missing.py", "--input", "data", *argv]) == 2
        assert capsys.readouterr().err == f"error: {message}\n"

    def test_a_bad_yaml_key_exits_2(
        self, project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An unknown key in the -c YAML exits 2 with the did-you-mean line."""
        monkeypatch.chdir(project)
        write_yaml(project, "run_max_tri: 5\n")
        assert exit_code(["run", "missing.py", "-i", "data", "-c", "job.yaml"]) == 2
        assert capsys.readouterr().err == "error: unknown key 'run_max_tri' in job.yaml; did you mean run_max_try?\n"

    def test_yaml_config_errors_exit_2(
        self, project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An invalid value in the -c YAML exits 2 with Azure's message."""
        monkeypatch.chdir(project)
        write_yaml(project, "run_max_try: 0\n")
        assert exit_code(["run", "missing.py", "-i", "data", "-c", "job.yaml"]) == 2
        assert capsys.readouterr().err == "error: Parameter run_max_try must be an integer greater than 0.\n"

    def test_no_entry_script_exits_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        """pipeobs run without a script exits 2 and says how to call it."""
        assert exit_code(["run", "--input", "data"]) == 2
        assert capsys.readouterr().err == "error: no entry script given: pipeobs run ENTRY_SCRIPT --input PATH\n"

    def test_script_arguments_must_start_with_a_keyword(
        self, project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Arguments after '--' follow Azure's rules: the first must start with '-'."""
        monkeypatch.chdir(project)
        assert exit_code(["run", "missing.py", "-i", "data", "--", "model.pkl"]) == 2
        assert capsys.readouterr().err == (
            "error: Found invalid argument 'model.pkl'. As your arguments will be merged with reserved "
            "argument, you can only use keyword argument.\n"
        )

    def test_script_arguments_must_not_use_reserved_names(
        self, project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A reserved name after '--' exits 2 with Azure's message."""
        monkeypatch.chdir(project)
        assert exit_code(["run", "missing.py", "-i", "data", "--", "--output", "o"]) == 2
        assert capsys.readouterr().err == (
            "error: 'output' is a reserved argument in ParallelRunStep, please use another argument name instead.\n"
        )

    def test_flags_after_double_dash_are_not_parsed_as_pipeobs_flags(
        self, project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """'--run-max-try 0' after '--' belongs to the script, so only the missing script is reported."""
        monkeypatch.chdir(project)
        assert exit_code(["run", "missing.py", "-i", "data", "--", "--run-max-try", "0"]) == 3
        assert capsys.readouterr().err.startswith("error: entry script 'missing.py' does not exist")


@pytest.mark.parametrize("command", ["logs", "trace", "metrics"])  # outputs larger than a pipe holds
def test_a_closed_pipe_ends_a_command_quietly(run_job: RunJob, command: str) -> None:
    """`pipeobs logs RUN | head -1`: no BrokenPipeError traceback, the SIGPIPE exit status."""
    job = run_job("from azureml.core import Run\ndef run(mini_batch):\n    for i in range(3000):\n        print('line', i)\n"
                  "        Run.get_context().log(f'metric_{i}', i)\n    return mini_batch\n", files=4)
    with subprocess.Popen([sys.executable, "-m", "pipeobs", command, str(job.run_dir)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        proc.stdout.close()  # what `head -1` does after its first line
        errors = proc.stderr.read().decode()
        code = proc.wait(timeout=60)

    assert first
    assert "Traceback" not in errors and "BrokenPipeError" not in errors, errors
    assert code in (0, 141)  # 0: it had written everything before the pipe closed
