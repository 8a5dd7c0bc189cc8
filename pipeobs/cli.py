"""``pipeobs`` command line.

Exit codes: 0 success; 1 internal error; 2 invalid usage, configuration or input;
3 entry script cannot be loaded; 42 the job failed (as Azure's driver); 130 interrupted (Ctrl-C),
143 terminated (SIGTERM); 141 the reader of the output went away.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from pipeobs.errors import ConfigError, PipeobsError

if TYPE_CHECKING:
    from pipeobs.jobs import DebugTarget

CONFIG_FLAGS: dict[str, dict[str, Any]] = {
    # v1 ParallelRunConfig
    "error_threshold": {"type": int},
    "output_action": {},
    "node_count": {"type": int},
    "process_count_per_node": {"type": int},
    "mini_batch_size": {},
    "source_directory": {},
    "description": {},
    "logging_level": {},
    "run_invocation_timeout": {"type": int},
    "run_max_try": {"type": int},
    "append_row_file_name": {},
    "allowed_failed_count": {"type": int},
    "allowed_failed_percent": {"type": float},
    "partition_keys": {"help": "comma-separated, or a JSON list"},
    "environment_variables": {"action": "append", "metavar": "NAME=VALUE"},
    "environment": {},
    "compute_target": {},
    # v2 spellings
    "mini_batch_error_threshold": {"type": int},
    "max_concurrency_per_instance": {"type": int},
    "instance_count": {"type": int},
    "max_retries": {"type": int, "help": "v2 retry_settings.max_retries (tries = retries + 1)"},
    "timeout": {"type": int, "help": "v2 retry_settings.timeout"},
    "append_row_to": {},
}
SETTING_FLAGS = (
    "task_overhead_timeout",
    "progress_update_timeout",
    "first_task_creation_timeout",
    "resource_monitor_interval",
    "append_row_dataframe_header",
    "copy_logs_to_parent",
    "metrics_name_prefix",
    "push_metrics_to_parent",
    "profiling_module",
    "nice",
)
SAME_SETTING = (
    ("run_max_try", "max_retries"),
    ("run_invocation_timeout", "timeout"),
    ("node_count", "instance_count"),
    ("process_count_per_node", "max_concurrency_per_instance"),
    ("allowed_failed_count", "mini_batch_error_threshold"),
    ("append_row_file_name", "append_row_to"),
)


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error, a did-you-mean for unknown flags, and exit code 2."""

    def error(self, message: str) -> NoReturn:
        if "unrecognized arguments:" in message:
            unknown = message.split("unrecognized arguments:", 1)[1].split()
            flag = next((u for u in unknown if u.startswith("-")), unknown[0] if unknown else "")
            message = f"unknown option {flag.split('=')[0]}" + _did_you_mean(flag, self._all_flags())
            if not flag.startswith("-"):
                message = f"unexpected argument '{flag}' (script arguments go after '--')"
        self.exit(2, f"error: {message}\n")

    def _all_flags(self) -> list[str]:
        flags: list[str] = []
        for action in self._actions:
            flags.extend(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    flags.extend(s for a in sub._actions for s in a.option_strings)
        return flags


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word.split("=")[0], choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _flag_names(name: str) -> list[str]:
    kebab = "--" + name.replace("_", "-")
    snake = "--" + name
    return [kebab] if kebab == snake else [kebab, snake]


def build_parser() -> Parser:
    from pipeobs.replay import parse_address  # one spelling of [HOST:]PORT for run and replay

    parser = Parser(prog="pipeobs", description="Run ParallelRunStep entry scripts locally, observably.", allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    run = sub.add_parser("run", help="run an entry script over inputs", allow_abbrev=False)
    run.add_argument("entry_script", nargs="?", help="the entry script (init/run/shutdown)")
    run.add_argument("--input", "-i", action="append", dest="inputs", metavar="PATH", help="a file, folder or glob (repeatable)")
    run.add_argument("--output", "-o", metavar="DIR", help="output folder (default: <run dir>/output)")
    run.add_argument("--tabular", action="store_true", default=None, help="inputs are tables (csv/tsv/jsonl/parquet by extension)")
    run.add_argument("--format", choices=("csv", "tsv", "jsonl", "parquet"), help="tabular format (implies --tabular)")
    run.add_argument("--partition-format", "--partition_format", dest="partition_format", metavar="FMT", help='e.g. "{user}/{season}/{genres}.wav"')
    run.add_argument("--name", help="step name (default: the entry script's name)")
    run.add_argument("--runs-dir", "--runs_dir", dest="runs_dir", metavar="DIR", help="where run directories go (default: ./runs)")
    run.add_argument("--model-dir", "--model_dir", dest="model_dir", metavar="DIR", help="where Model.get_model_path(name) finds DIR/<name>")
    run.add_argument("--export", action="append", dest="export", metavar="NAME", help="exporter plugin: appinsights, otlp (repeatable)")
    run.add_argument("--backend", metavar="local|ray",
                     help="where the workers run: this machine (default) or a Ray cluster (needs pipeobs[ray])")
    run.add_argument("--ray-address", "--ray_address", dest="ray_address", metavar="ADDR",
                     help="the Ray cluster for --backend ray, e.g. 10.0.0.5:6379 (default: RAY_ADDRESS, else a new "
                          "local Ray instance)")
    run.add_argument("--export-deadline", "--export_deadline", dest="export_deadline", type=float, metavar="SECONDS",
                     help="how long delivery may go on after the job before the rest is spooled (default 10)")
    run.add_argument("--metrics-port", "--metrics_port", dest="metrics_port", metavar="[HOST:]PORT",
                     help="serve the job's metrics to Prometheus while it runs (host 127.0.0.1 by default; 0: any free "
                          "port, printed and recorded)")
    run.add_argument("--pushgateway", metavar="URL", help="push the job's final metrics to this Prometheus Pushgateway")
    run.add_argument("--alerts", metavar="FILE", help="alert rules evaluated during the run (default: the shipped set; "
                                                      "none: no alerts)")
    run.add_argument("--alert-webhook", "--alert_webhook", dest="alert_webhook", action="append", metavar="URL",
                     help="POST firing and resolved alerts as JSON to this URL (repeatable)")
    run.add_argument("--alertmanager", metavar="URL", help="send alerts to this Alertmanager (API v2)")
    run.add_argument("--alert-interval", "--alert_interval", dest="alert_interval", type=float, metavar="SECONDS",
                     help="evaluate the alert rules this often (default 5)")
    run.add_argument("-c", "--config", metavar="YAML", help="job YAML with the same keys as the flags, or an Azure "
                                                            "ML v2 job YAML (type: parallel, command or pipeline)")
    run.add_argument("--set", action="append", dest="sets", default=None, metavar="KEY.PATH=VALUE",
                     help="v2 YAML: override a value, as az ml job create --set (repeatable)")
    run.add_argument("--node", metavar="NAME", help="v2 pipeline: run this node alone (give its upstream inputs "
                                                    "with --set jobs.NAME.inputs.X=PATH)")
    run.add_argument("--assets", metavar="FILE", help="v2 YAML: where azureml: assets and datastores are on this "
                                                      "machine (default: pipeobs-assets.yml beside the YAML)")
    run.add_argument("--resume", metavar="RUN_DIR", help="finish an interrupted run: only unfinished mini-batches run")
    run.add_argument("--debug-mini-batch", "--debug_mini_batch", dest="debug_mini_batch", type=int, metavar="N",
                     help="the worker that gets mini-batch N waits for a debugger (debugpy) before calling run()")
    run.add_argument("--debugpy", type=parse_address, metavar="[HOST:]PORT",
                     help="where --debug-mini-batch listens (default: 127.0.0.1, any free port)")
    run.add_argument("--no-reuse", "--no_reuse", dest="allow_reuse", action="store_false", default=None,
                     help="always run, even when a completed run of the step has the same fingerprint "
                          "(YAML: allow_reuse: false)")
    for name, options in CONFIG_FLAGS.items():
        run.add_argument(*_flag_names(name), dest=name, default=None, **options)
    for name in SETTING_FLAGS:
        run.add_argument(*_flag_names(name), dest=name, default=None, metavar="VALUE")
    from pipeobs.collector import add_subcommand as add_collect
    from pipeobs.explorer.commands import add_subcommands

    add_subcommands(sub)
    add_collect(sub)
    from pipeobs.ui import add_subcommand as add_ui

    add_ui(sub)
    why = sub.add_parser("why", help="why a run re-ran or reused an earlier run, component by component", allow_abbrev=False)
    why.add_argument("run", metavar="RUN", help="a run directory or a step_id under --runs-dir")
    why.add_argument("--runs-dir", "--runs_dir", dest="runs_dir", default="runs", metavar="DIR")
    why.add_argument("--json", action="store_true", help="print the answer as JSON")
    from pipeobs.replay import add_subcommand as add_replay

    add_replay(sub)
    alerts = sub.add_parser("alerts", help="the alert rules outside a run", allow_abbrev=False)
    export = alerts.add_subparsers(dest="alerts_command", required=True, parser_class=Parser).add_parser(
        "export", help="write the alert rules as Prometheus rule files, with promtool unit tests", allow_abbrev=False)
    export.add_argument("--prometheus", required=True, metavar="DIR", help="folder for pipeobs-rules.yml and "
                        "pipeobs-rules.test.yml (created if missing)")
    export.add_argument("--rules", metavar="FILE", help="the rules to export (default: the shipped set)")
    demo = sub.add_parser("demo", help="run the digit-identification demo job", allow_abbrev=False)
    demo.add_argument("--dir", default="pipeobs-demo", help="folder for the demo's images and runs")
    demo.add_argument("--images", type=int, default=200, help="how many digit images to score")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    script_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, script_args = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    try:
        from pipeobs.collector import dispatch as dispatch_collect
        from pipeobs.explorer.commands import dispatch
        from pipeobs.ui import dispatch as dispatch_ui

        code = dispatch(args)
        if code is None:
            code = dispatch_collect(args)
        if code is None:
            code = dispatch_ui(args)
        if code is not None:
            return code
        if args.command == "run":
            return command_run(args, script_args)
        if args.command == "alerts":
            from pipeobs.alerts.export import command_export

            return command_export(args.prometheus, args.rules)
        if args.command == "why":
            from pipeobs.reuse import command_why

            return command_why(args.run, args.runs_dir, args.json)
        if args.command == "replay":
            from pipeobs.replay import command_replay

            return command_replay(args)
        if args.command == "demo":
            from pipeobs.demo import run_demo

            return run_demo(Path(args.dir), args.images)
    except PipeobsError as exc:
        from pipeobs.explorer.terminal import printable

        print(f"error: {printable(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:  # Ctrl-C (130), or SIGTERM while a driver runs (143)
        print("error: interrupted", file=sys.stderr)
        return getattr(exc, "exit_code", 130)
    return 1


def command_run(args: argparse.Namespace, script_args: list[str]) -> int:
    from pipeobs.step import resume_plan, run_plan
    from pipeobs.summary import Progress, print_result

    debug = debug_target(args)
    if args.resume:
        plan = resume_plan(args.resume)
        plan.debug = debug
        plan.metrics_address, plan.pushgateway = metrics_address(args.metrics_port), args.pushgateway
        plan.alerts = alert_settings(vars(args))
        with Progress() as progress:
            result = run_plan(plan, progress.update)
        print_result(result)
        return exit_code(result)
    given = {k: v for k, v in vars(args).items() if v is not None and k not in COMMAND_LINE_ONLY}
    if args.config and _is_v2(args.config):
        return command_run_v2(args, given, script_args, debug)
    if args.sets or args.node or args.assets:
        flag = "--set" if args.sets else "--node" if args.node else "--assets"
        raise ConfigError(f"{flag} is for Azure ML v2 job YAMLs (pipeobs run -c job.yml); give flags instead")
    from pipeobs.config import load_job_yaml

    values = merge_values(load_job_yaml(args.config) if args.config else {}, given)
    step = build_step(values, script_args)
    runs_dir = values.get("runs_dir") or "runs"
    options = plan_options(values)
    with Progress() as progress:
        if debug is None:
            result = step.run(runs_dir, on_progress=progress.update, **options)
        else:  # a run to debug runs: it never reuses an earlier run's outputs
            plan = step.plan(runs_dir, **options)
            plan.debug = debug
            result = run_plan(plan, progress.update)
    print_result(result)
    return exit_code(result)


def plan_options(values: dict[str, Any]) -> dict[str, Any]:
    """The keywords of ``ParallelRunStep.plan``/``run`` that flags (or YAML keys) give: where and how it runs."""
    return {"model_dir": values.get("model_dir"), "exporters": _as_list(values.get("export")),
            "export_deadline": float(values.get("export_deadline", 10.0)),
            "metrics_address": metrics_address(values.get("metrics_port")), "pushgateway": values.get("pushgateway"),
            "alerts": alert_settings(values), "backend": values.get("backend") or "local",
            "ray_address": values.get("ray_address")}


def _is_v2(path: str) -> bool:
    from pipeobs.v2 import is_v2_document
    from pipeobs.v2.document import load_yaml_file

    return is_v2_document(load_yaml_file(path))


def command_run_v2(args: argparse.Namespace, given: dict[str, Any], script_args: list[str],
                   debug: DebugTarget | None) -> int:
    """``pipeobs run -c job.yml`` for an Azure ML v2 job YAML."""
    from pipeobs.v2.run import run_from_command_line

    if script_args or debug is not None:
        raise ConfigError(f"{args.config} is an Azure ML v2 job YAML: give script arguments in task.program_arguments "
                          "or command (--set), and debug a mini-batch with pipeobs replay")
    return run_from_command_line(args.config, given, plan_options(given), list(args.sets or []), args.node,
                                 args.assets)


def debug_target(args: argparse.Namespace) -> DebugTarget | None:
    """``--debug-mini-batch N [--debugpy [HOST:]PORT]`` as a checked :class:`~pipeobs.jobs.DebugTarget`, or None."""
    if args.debug_mini_batch is None:
        if args.debugpy is not None:
            raise ConfigError("--debugpy says where a debugger attaches: add --debug-mini-batch N, the mini-batch to debug")
        return None
    from pipeobs.jobs import DebugTarget

    target = DebugTarget(args.debug_mini_batch, *(args.debugpy or ()))
    target.check()
    return target


def alert_settings(values: dict[str, Any]) -> Any:
    """``--alerts``, ``--alert-webhook``, ``--alertmanager``, ``--alert-interval`` (or their YAML keys), checked."""
    from pipeobs.alerts.rules import AlertSettings

    return AlertSettings.from_options(values.get("alerts"), _as_list(values.get("alert_webhook")),
                                      values.get("alertmanager"), values.get("alert_interval"))


def metrics_address(value: Any) -> tuple[str, int] | None:
    """``--metrics-port`` (or ``metrics_port:`` in the job YAML) as (host, port)."""
    if value is None:
        return None
    from pipeobs.replay import parse_address

    try:
        return parse_address(str(value))
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"--metrics-port: {exc}") from None


# `pipeobs run` flags that are not job values (no YAML key): what to do with the job, not what it is.
COMMAND_LINE_ONLY = ("command", "config", "resume", "debug_mini_batch", "debugpy", "sets", "node", "assets")


def exit_code(result: Any) -> int:
    """0 completed, 42 failed (as Azure's driver), 128 + the signal number when interrupted."""
    if result.interrupted_by:
        import signal

        return 128 + signal.Signals[result.interrupted_by].value
    return 0 if result.ok else 42


def merge_values(from_yaml: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """Flags override the YAML, in whichever spelling (v1 or v2) either uses."""
    values = dict(from_yaml)
    for group in SAME_SETTING:
        if any(k in flags for k in group):
            for key in group:
                values.pop(key, None)
    values.update(flags)
    return values


def build_step(values: dict[str, Any], script_args: list[str]) -> Any:
    """A ParallelRunStep from merged YAML values and flags."""
    from pipeobs.config import ParallelRunConfig, make_settings
    from pipeobs.step import ParallelRunStep

    entry = values.get("entry_script")
    if not entry:
        raise ConfigError("no entry script given: pipeobs run ENTRY_SCRIPT --input PATH")
    if not values.get("inputs"):
        raise ConfigError("no input given: add --input PATH (a file, folder or glob)")
    config_args = {k: values[k] for k in CONFIG_FLAGS if k in values and k not in ("max_retries", "timeout")}
    if "partition_keys" in config_args and isinstance(config_args["partition_keys"], str):
        text = config_args["partition_keys"].strip()
        config_args["partition_keys"] = text if text.startswith("[") else [k.strip() for k in text.split(",") if k.strip()]
    if "environment_variables" in config_args:
        config_args["environment_variables"] = _env_pairs(config_args["environment_variables"])
    retry = {k: values[k] for k in ("max_retries", "timeout") if k in values}
    if retry:
        config_args["retry_settings"] = retry
    config = ParallelRunConfig(entry_script=entry, **config_args)
    datasets = [make_dataset(values, path) for path in values["inputs"]]
    name = values.get("name") or _step_name(entry)
    arguments = values.get("arguments") or []
    if isinstance(arguments, str):
        from pipeobs.step import shell_words

        arguments = shell_words(arguments, "arguments")
    arguments = list(arguments) + script_args
    step = ParallelRunStep(name, config, datasets, output=values.get("output"), arguments=arguments or None,
                           allow_reuse=values.get("allow_reuse", True))
    settings_values = {**step.settings_values, **{k: values[k] for k in SETTING_FLAGS if k in values}}
    step.settings = make_settings(settings_values)
    return step


def make_dataset(values: dict[str, Any], path: str) -> Any:
    from pipeobs.datasets import FileDataset, TabularDataset

    fmt = values.get("format")
    partition_format = values.get("partition_format")
    if is_mltable(path):  # read per its MLTable file, which is never an input item itself
        from pipeobs.datasets import mltable_dataset

        if fmt or partition_format:
            raise ConfigError(f"input '{path}' is an MLTable: its MLTable file says how to read it; drop --format "
                              "and --partition-format (or give its data files instead)")
        return mltable_dataset(path)
    if not fmt and not values.get("tabular"):
        return FileDataset.from_files(path, partition_format=partition_format)
    fmt = fmt or _guess_format(path)
    if fmt == "parquet":
        return TabularDataset.from_parquet_files(path, partition_format=partition_format)
    if fmt == "jsonl":
        return TabularDataset.from_json_lines_files(path, partition_format=partition_format)
    separator = "\t" if fmt == "tsv" else ","
    return TabularDataset.from_delimited_files(path, separator=separator, partition_format=partition_format)


def is_mltable(path: str) -> bool:
    """A folder holding an ``MLTable`` file, or that file."""
    return os.path.basename(os.path.normpath(path)) == "MLTable" and os.path.isfile(path) or os.path.isfile(
        os.path.join(path, "MLTable"))


def _guess_format(path: str) -> str:
    lowered = str(path).lower().rstrip("/*")
    for suffix, fmt in ((".parquet", "parquet"), (".jsonl", "jsonl"), (".json", "jsonl"), (".tsv", "tsv")):
        if lowered.endswith(suffix):
            return fmt
    if os.path.isdir(path):
        names = [n.lower() for n in os.listdir(path)]
        for suffix, fmt in ((".parquet", "parquet"), (".jsonl", "jsonl"), (".tsv", "tsv")):
            if names and all(n.endswith(suffix) for n in names if not n.startswith(".")):
                return fmt
    return "csv"


def _as_list(value: Any) -> list[str]:
    if not value:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _env_pairs(items: Any) -> dict[str, str]:
    if isinstance(items, dict):
        return {str(k): str(v) for k, v in items.items()}
    pairs = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"environment variable '{item}' must be NAME=VALUE")
        key, value = item.split("=", 1)
        pairs[key] = value
    return pairs


def _step_name(entry: str) -> str:
    import re

    stem = re.sub(r"[^a-z0-9-]+", "-", Path(entry).stem.lower()).strip("-")
    if not stem or not stem[0].isalpha():
        stem = "step-" + stem
    stem = stem[:32].rstrip("-")
    return stem if len(stem) >= 3 else (stem + "-step")[:32]


def entry_point() -> None:
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`pipeobs logs RUN | head -1`): stop quietly, as Unix tools do on
        # SIGPIPE, and point stdout at /dev/null so the interpreter's last flush cannot fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 128 + 13  # SIGPIPE
    sys.exit(code)


if __name__ == "__main__":
    entry_point()
