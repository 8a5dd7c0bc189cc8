"""``pipeobs runs | show | logs | trace | metrics | export | diff``: the explorer's commands.

:func:`add_subcommands` adds them to the CLI's subparsers, :func:`dispatch` runs one. Every
command takes ``--json`` (print the query's result as JSON, nothing else) and ``--runs-dir``
(where a step_id is looked up). ``logs`` and ``trace`` write as they read the store, so a run of
any size prints at once, in bounded memory: ``logs --json`` is one JSON array with an item a line,
``logs --follow --json`` one JSON object per line.
Text from user code is printed with its control characters escaped
(:func:`pipeobs.explorer.terminal.printable`); ``logs --raw`` prints it as captured.
Importing this module costs no rich or pandas import: they load when a command runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import closing
from pathlib import Path
from typing import Any

from pipeobs.errors import ConfigError, RunDirError

COMMANDS = ("runs", "show", "logs", "trace", "metrics", "export", "diff")
RUN_HELP = "a run directory (holding pipeobs.db) or a step_id under --runs-dir"
FOLLOW_POLL_SECONDS = 0.5
HISTOGRAM_KINDS = ("histogram", "observation")


def add_subcommands(subparsers: Any) -> None:
    """Add the explorer commands to an argparse subparsers object (its parser class is kept)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the result as JSON only")
    common.add_argument("--runs-dir", "--runs_dir", dest="runs_dir", default="runs", metavar="DIR",
                        help="where step_ids are looked up (default: runs)")

    def add(name: str, help_text: str) -> Any:
        return subparsers.add_parser(name, parents=[common], help=help_text, description=help_text, allow_abbrev=False)

    p = add("runs", "list the runs below a folder")
    p.add_argument("dir", nargs="?", metavar="DIR", help="folder to search (default: --runs-dir)")
    p = add("show", "a run's summary, slowest mini-batches, failures, retries, workers and metrics")
    p.add_argument("run", metavar="RUN", help=RUN_HELP)
    p = add("logs", "a run's captured lines, one per line as in the driver log")
    p.add_argument("run", metavar="RUN", help=RUN_HELP)
    p.add_argument("--mini-batch", "--mini_batch", dest="mini_batch", type=int, metavar="N", help="only mini-batch N")
    p.add_argument("--worker", metavar="W", help="only worker W (0/process000, or process000)")
    p.add_argument("--level", metavar="L", help="at least level L (stdout counts as info, stderr as warning)")
    p.add_argument("--grep", metavar="RE", help="only lines matching the regular expression RE")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new lines while the run is live")
    p.add_argument("--timeout", type=float, metavar="S", help="with --follow: stop after S seconds")
    p.add_argument("--raw", action="store_true",
                   help="print the text as captured, control characters and escape sequences included")
    p = add("trace", "a run's spans as a tree, with log lines in time order")
    p.add_argument("run", metavar="RUN", help=RUN_HELP)
    p.add_argument("--mini-batch", "--mini_batch", dest="mini_batch", type=int, metavar="N", help="only mini-batch N")
    p = add("metrics", "a run's metrics, or the points of one")
    p.add_argument("run", metavar="RUN", help=RUN_HELP)
    p.add_argument("name", nargs="?", metavar="NAME", help="one metric's points")
    p = add("export", "write the run as a Chrome trace (ui.perfetto.dev), or --retry its spooled telemetry")
    p.add_argument("run", metavar="RUN", help=RUN_HELP)
    p.add_argument("--format", choices=("chrome",), default="chrome", help="export format (default: chrome)")
    p.add_argument("-o", "--output", metavar="FILE", help="where to write (default: <run dir>/trace.json)")
    p.add_argument("--retry", action="store_true", help="deliver what the run's exporters spooled")
    p.add_argument("--deadline", type=float, default=60.0, metavar="S", help="with --retry: give up after S seconds")
    p = add("diff", "what differs between two runs: config, arguments, environment, inputs and outcome")
    p.add_argument("run_a", metavar="RUN_A", help=RUN_HELP)
    p.add_argument("run_b", metavar="RUN_B", help=RUN_HELP)


def dispatch(args: argparse.Namespace) -> int | None:
    """Run the explorer command ``args.command``; None when it is not one of them."""
    handler = _HANDLERS.get(getattr(args, "command", None) or "")
    return None if handler is None else handler(args)


# ----------------------------------------------------------------------------- handlers
def command_runs(args: argparse.Namespace) -> int:
    from pipeobs.explorer.runs import list_runs

    root = Path(args.dir or args.runs_dir)
    if not root.is_dir():
        raise RunDirError(f"no folder '{root}' to list runs from; give DIR or --runs-dir")
    runs = list_runs(root)
    if args.json:
        return _print_json(runs)
    from pipeobs.explorer import render

    render.runs_table(_console(), runs, root)
    return 0


def command_show(args: argparse.Namespace) -> int:
    from pipeobs.explorer import queries

    run_dir, result = _query(args, queries.show_run)
    result["run_dir"] = str(run_dir)
    if args.json:
        return _print_json(result)
    from pipeobs.explorer import render

    render.show(_console(), result)
    return 0


def command_logs(args: argparse.Namespace) -> int:
    from pipeobs.explorer import queries
    from pipeobs.explorer.runs import open_run, resolve_run

    queries.compile_grep(args.grep)
    queries.level_number(args.level)
    filters = {"mini_batch": args.mini_batch, "worker": args.worker, "level": args.level, "grep": args.grep}
    with open_run(resolve_run(args.run, args.runs_dir)) as conn:
        if args.follow:
            emit = _json_line if args.json else _log_printer(args.raw, flush=True)
            try:
                follow_logs(conn, emit, filters, timeout=args.timeout)
            except KeyboardInterrupt:
                return 130
            return 0
        lines = queries.iter_log_lines(conn, **filters)
        if args.json:
            return _print_json_array(lines)
        emit = _log_printer(args.raw, flush=False)
        for line in lines:
            emit(line)
    return 0


def follow_logs(
    conn: Any,
    emit: Callable[[dict[str, Any]], None],
    filters: dict[str, Any],
    poll: float = FOLLOW_POLL_SECONDS,
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Emit lines as they are stored until the run is no longer 'Running' (or ``timeout`` passes).

    The status is read before each batch of rows, so lines committed before the run ended are
    all emitted. Returns how many lines were emitted.
    """
    from pipeobs.explorer import queries

    deadline = None if not timeout else clock() + timeout
    last, emitted = 0, 0
    while True:
        live = queries.run_status(conn) == "Running"
        top = queries.log_max_id(conn)
        for line in queries.iter_log_lines(conn, after_id=last, until_id=top, **filters):
            emit(line)
            emitted += 1
        last = top
        if not live or (deadline is not None and clock() >= deadline):
            return emitted
        sleep(poll)


def command_trace(args: argparse.Namespace) -> int:
    from pipeobs.explorer import queries, spans
    from pipeobs.explorer.runs import resolve_run

    with _open(resolve_run(args.run, args.runs_dir)) as conn, closing(spans.walk_trace(conn, args.mini_batch)) as nodes:
        if args.json:
            return _print_json_tree(nodes)
        from pipeobs.explorer import render

        render.trace_tree(_console(), nodes, queries.run_summary(conn), args.mini_batch)
    return 0


def command_metrics(args: argparse.Namespace) -> int:
    from pipeobs.explorer import queries
    from pipeobs.explorer.terminal import printable

    def ask(conn: Any) -> Any:
        if args.name is None:
            return queries.metric_summaries(conn), queries.histogram_summaries(conn)
        points = queries.metric_points(conn, args.name)
        if not points:
            names = queries.metric_names(conn)
            raise ConfigError(printable(f"no metric '{args.name}' in this run" + _did_you_mean(args.name, names)))
        return points

    _run_dir, result = _query(args, ask)
    if args.json:
        return _print_json(result if args.name else result[0])
    from pipeobs.explorer import render

    if args.name is not None:
        render.points_table(_console(), args.name, result)
        return 0
    summaries, histograms = result
    console = _console()
    render.metric_table(console, [m for m in summaries if m["kind"] not in HISTOGRAM_KINDS])
    render.histogram_table(console, histograms)  # in place of their bucket, count and sum series
    return 0


def command_export(args: argparse.Namespace) -> int:
    from pipeobs.explorer.chrome import write_chrome_trace
    from pipeobs.explorer.runs import resolve_run

    run_dir = resolve_run(args.run, args.runs_dir)
    if args.retry:
        return _retry_exports(run_dir, args)
    path = Path(args.output) if args.output else run_dir / "trace.json"
    with _open(run_dir) as conn:
        try:
            count = write_chrome_trace(conn, path)
        except OSError as exc:
            raise ConfigError(f"cannot write '{path}': {exc.strerror or exc}") from None
    if args.json:
        return _print_json({"path": str(path), "format": args.format, "events": count})
    print(path)
    return 0


def _retry_exports(run_dir: Path, args: argparse.Namespace) -> int:
    """Deliver the spools; record and print per exporter what was delivered and what is left."""
    from pipeobs.export.routing import retry_spool
    from pipeobs.record.rundir import RunDir
    from pipeobs.record.store import Store

    lock = RunDir(run_dir)
    lock.lock()  # a live driver still writes its spool; two retries would deliver twice
    try:
        results = retry_spool(run_dir, deadline=args.deadline)
        store = Store(run_dir / "pipeobs.db")
        for name, c in results.items():
            store.add_export_counts(name, "retry", c)
        store.close()
    finally:
        lock.unlock()
    if args.json:
        return _print_json(results)
    if not results:
        print("nothing spooled: every exporter delivered everything")
    for name, c in results.items():
        print(f"{name}: delivered {c['delivered']} of {c['carried']} spooled records, {c['spooled']} still spooled, {c['dropped']} dropped")
    return 0 if all(not c["spooled"] for c in results.values()) else 1


def command_diff(args: argparse.Namespace) -> int:
    from pipeobs.explorer.diff import diff_runs, diff_text
    from pipeobs.explorer.runs import resolve_run

    diff = diff_runs(resolve_run(args.run_a, args.runs_dir), resolve_run(args.run_b, args.runs_dir))
    if args.json:
        return _print_json(diff)
    print(diff_text(diff))
    return 0


_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "runs": command_runs,
    "show": command_show,
    "logs": command_logs,
    "trace": command_trace,
    "metrics": command_metrics,
    "export": command_export,
    "diff": command_diff,
}


# ----------------------------------------------------------------------------- helpers
def _open(run_dir: Path) -> Any:
    from pipeobs.explorer.runs import open_run

    return open_run(run_dir)


def _query(args: argparse.Namespace, ask: Callable[[Any], Any]) -> tuple[Path, Any]:
    from pipeobs.explorer.runs import resolve_run

    run_dir = resolve_run(args.run, args.runs_dir)
    with _open(run_dir) as conn:
        return run_dir, ask(conn)


PIPE_WIDTH = 200  # output to a file or pipe is not squeezed to 80 columns


def _console() -> Any:
    import os

    from rich.console import Console

    class PipedConsole(Console):
        def on_broken_pipe(self) -> None:  # rich would exit 1; the CLI ends with SIGPIPE's status, as Unix tools do
            self.quiet = True
            raise BrokenPipeError

    piped = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return PipedConsole(file=sys.stdout, highlight=False, width=PIPE_WIDTH if piped else None)


def _print_json(result: Any) -> int:
    from pipeobs.explorer.terminal import json_text

    print(json_text(result))
    return 0


def _json_line(line: dict[str, Any]) -> None:
    from pipeobs.explorer.terminal import json_text

    print(json_text(line), flush=True)


def utc_stamp(when: float) -> str:
    """ISO 8601 UTC with milliseconds, as in the driver log."""
    second = int(when)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + f".{int((when - second) * 1000):03d}Z"


def format_log_line(line: dict[str, Any]) -> str:
    """``<UTC time> <worker> mb=N a=A <LEVEL> <text>``: the driver log's columns."""
    if line.get("phase") == "run" and line.get("mini_batch_id") is not None:
        where = f"mb={line['mini_batch_id']} a={line['attempt']}"
    else:
        where = line.get("phase") or "-"
    return f"{utc_stamp(line['time'])} {line.get('worker') or '-'} {where} {line['level']} {line['text']}"


def _log_printer(raw: bool, flush: bool) -> Callable[[dict[str, Any]], None]:
    """Print a line as the driver log has it: escaped, or ``raw`` (as captured)."""
    from pipeobs.explorer.terminal import printable

    def emit(line: dict[str, Any]) -> None:
        text = format_log_line(line)
        print(text if raw else printable(text), flush=flush)

    return emit


def _print_json_array(items: Iterable[Any]) -> int:
    """A JSON array written an item at a time: ``[``, the items joined by ``,\\n``, ``]``."""
    from pipeobs.explorer.terminal import json_text

    write, separator = sys.stdout.write, "["
    for item in items:
        write(separator + json_text(item))
        separator = ",\n"
    write("[]\n" if separator == "[" else "]\n")
    return 0


def _print_json_tree(nodes: Iterable[Any]) -> int:
    """:func:`~pipeobs.explorer.spans.span_tree` as JSON, written from the walk a node at a time:
    a span is written up to its ``"children": [``, closed by ``]}`` when the walk leaves it."""
    from pipeobs.explorer.terminal import json_text

    write, separator, open_spans = sys.stdout.write, "", 0
    write("[")
    for depth, _last, node in nodes:
        if open_spans >= depth:  # the walk has left the spans deeper than depth - 1
            write("]}" * (open_spans - depth + 1))
            open_spans, separator = depth - 1, ", "
        if node["type"] == "span":
            write(separator + json_text({**node, "children": []})[:-2])
            separator, open_spans = "", open_spans + 1
        else:
            write(separator + json_text(node))
            separator = ", "
    write("]}" * open_spans + "]\n")
    return 0


def _did_you_mean(word: str, choices: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]}?"
    return f"; it has {', '.join(choices[:10])}" if choices else "; it has no metrics"
