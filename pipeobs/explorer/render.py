"""Rich views of the explorer's query results (tables, a span tree).

User data (log text, error messages, metric names and values, span names, paths) goes into
``Text`` objects through :func:`_text`, never into markup, so square brackets in a user's line
print as they are, and through :func:`~pipeobs.explorer.terminal.printable`, so its control
characters are shown, not obeyed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich import box, filesize
from rich.cells import cell_len
from rich.console import Console
from rich.segment import Segment, Segments
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from pipeobs.explorer.terminal import printable
from pipeobs.replay import replay_command

STATUS_STYLES = {"Completed": "green", "Reused": "green", "Failed": "red", "Running": "yellow", "Interrupted": "red", "Driver lost": "red",
                 "OK": "green", "ERROR": "red", "UNSET": "dim", "RUN_DONE": "green"}
LEVEL_STYLES = {"STDOUT": "", "STDERR": "red", "DEBUG": "dim", "INFO": "", "WARNING": "yellow", "ERROR": "red",
                "CRITICAL": "bold red"}


def seconds(value: float | None) -> str:
    """A duration for people: ``12.3 ms``, ``4.56 s``, ``3m 05s``, ``2h 01m``."""
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.1f} ms"
    if value < 60:
        return f"{value:.2f} s"
    minutes, secs = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    return f"{minutes // 60}h {minutes % 60:02d}m"


def utc(when: float | None) -> str:
    if when is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(when))


def _text(value: Any, style: str = "") -> Text:
    """Any value as Text, control characters escaped: the only way data reaches a view."""
    if value is None:
        return Text("-", style="dim")
    if isinstance(value, float):
        value = f"{value:.6g}"
    return Text(printable(str(value)), style=style)


def _status(status: Any) -> Text:
    return _text(status, STATUS_STYLES.get(str(status), ""))


NUMERIC_COLUMNS = ("mb", "attempt", "attempts", "mini-batches", "pid", "failed", "items", "count", "exit")
SHRINKING_COLUMNS = ("step", "step_id", "start", "reason", "error", "example", "name", "last", "labels", "value")


def _table(title: str, *columns: str) -> Table:
    table = Table(title=_text(title), title_justify="left", title_style="bold", box=box.SIMPLE_HEAD)
    for column in columns:
        table.add_column(column, justify="right" if column in NUMERIC_COLUMNS else "left", overflow="fold")
    return table


def _print_table(console: Console, table: Table) -> None:
    """In a narrow terminal only the text columns (names, reasons, errors) wrap; numbers stay whole."""
    for column in table.columns:
        header = str(column.header)
        if header not in SHRINKING_COLUMNS:
            widths = [cell.cell_len for cell in column.cells if isinstance(cell, Text)]
            column.min_width = max([*(len(line) for line in header.split("\n")), *widths])
    console.print(table)


# ----------------------------------------------------------------------------- runs
def runs_table(console: Console, runs: list[dict[str, Any]], root: Path) -> None:
    if not runs:
        console.print(_text(f"no runs below {root}"))
        return
    table = _table(f"runs below {root}", "step", "step_id", "status", "start", "duration",
                   "mini-batches\ndone/failed/total", "items\nok/failed")
    for index, r in enumerate(runs):
        counted = r.get("kind") not in ("command", "pipeline")  # no mini-batches or items of their own
        step = r.get("step")
        if r.get("depth"):  # a v2 pipeline's node, under its pipeline
            last = index + 1 == len(runs) or not runs[index + 1].get("depth")
            step = f"{'└' if last else '├'} {step}"
        batches = (r.get("mini_batches") or {}) if counted else {}
        items = (r.get("items") or {}) if counted else {}
        table.add_row(
            _text(step), _text(r.get("step_id") or r["run_dir"]), _status(r["status"]), _text(utc(r.get("start"))),
            _text(seconds(r.get("duration"))),
            _text(f"{batches.get('done', 0)}/{batches.get('failed', 0)}/{batches.get('total', 0)}" if batches else "-"),
            _text(f"{items.get('succeeded', 0)}/{items.get('failed', 0)}" if items else "-"),
        )
    _print_table(console, table)


# ----------------------------------------------------------------------------- show
def show(console: Console, result: dict[str, Any]) -> None:
    summary_block(console, result["summary"], result.get("run_dir"))
    if result["summary"].get("kind") == "command":  # no mini-batches, attempts or workers to show
        if result["metrics"]:
            metric_table(console, result["metrics"], title="user metrics")
        return
    slowest_table(console, result["slowest"])
    failures_block(console, result["failures"], result.get("run_dir"))
    retries_line(console, result["retries"])
    workers_table(console, result["workers"])
    histogram_table(console, result["histograms"])
    if result["metrics"]:
        metric_table(console, result["metrics"], title="user metrics")
    alerts_table(console, result.get("alerts") or [])


def alerts_table(console: Console, alerts: list[dict[str, Any]]) -> None:
    """The alerts that fired during the run, with when they fired and resolved."""
    if not alerts:
        return
    table = _table(f"alerts ({len(alerts)} fired)", "alert", "severity", "fired", "resolved", "summary")
    for a in alerts:
        table.add_row(_text(a["alert"], "red"), _text(a["severity"]), _text(utc(a["start"])),
                      _text(utc(a["end"]) if a["end"] is not None else "still firing"), _text(a["summary"]))
    _print_table(console, table)


def summary_block(console: Console, s: dict[str, Any], run_dir: str | None) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    b, i = s["mini_batches"], s["items"]
    rows = [
        ("step", _text(f"{s['step']} ({s['step_id']})")),
        ("status", _status(s["status"])),
        ("started", _text(utc(s["start"]))),
        ("duration", _text(seconds(s["duration"]) + (" so far" if s["live"] else ""))),
    ]
    if s.get("kind") == "command":
        rows.append(("command", _text(s["entry_script"])))
    else:
        rows += [
            ("mini-batches", _text(f"{b['done']} done, {b['failed']} failed, {b['pending']} pending, {b['total']} total")),
            ("items", _text(f"{i['succeeded']} succeeded, {i['failed']} failed, {i['total']} total")),
        ]
    if run_dir:
        rows.append(("run dir", _text(run_dir)))
    if s.get("error"):
        rows.append(("error", _text(s["error"], "red")))
    for key, value in rows:
        grid.add_row(key, value)
    console.print(grid)


def slowest_table(console: Console, slowest: list[dict[str, Any]]) -> None:
    if not slowest:
        return
    table = _table("slowest mini-batches", "mb", "attempt", "worker", "elapsed", "run()", "items")
    for a in slowest:
        table.add_row(_text(a["mini_batch_id"]), _text(a["attempt"]), _text(a["worker"]), _text(seconds(a["elapsed"])),
                      _text(seconds(a["run_seconds"])), _text(f"{a['succeeded']}/{a['total']}"))
    _print_table(console, table)


def failures_block(console: Console, failures: dict[str, Any], run_dir: str | None = None) -> None:
    """The first error once (its traceback, else its message) and the command replaying it, then the failed
    attempts by error type."""
    first = failures["first_error"]
    if not failures["count"] and not first:
        console.print(Text("no failed attempts", style="green"))
        return
    if first:
        _first_error(console, first)
    if first and run_dir:
        console.print(Text.assemble(("replay: ", "bold"), _text(replay_command(run_dir, first))))
    if failures["by_error"]:
        table = _table(f"failed attempts ({failures['count']}) by error", "error", "attempts", "mini-batches", "example")
        for group in failures["by_error"]:
            table.add_row(_text(group["error_type"], "red"), _text(group["count"]), _text(group["mini_batches"]),
                          _text(_example(group, first)))
        _print_table(console, table)
    if failures["failed_mini_batches"]:
        ids = ", ".join(str(i) for i in failures["failed_mini_batches"][:50])
        console.print(Text(f"failed mini-batches: {ids}", style="red"))


def _first_error(console: Console, first: dict[str, Any]) -> None:
    traceback = str(first.get("traceback") or "").rstrip()
    if traceback.startswith("Traceback"):  # the user's, ending with the exception's type and message
        console.print(Text.assemble(("first error ", "bold red"), _text(f"{_where(first)}:")))
        console.print(_text(traceback))
        return
    kind = first.get("error_type") or first.get("type") or first.get("status")
    message = first.get("error_message") or first.get("message") or ""
    console.print(Text.assemble(("first error: ", "bold red"), _text(f"{kind}: {message} ({_where(first)})")))
    location = first.get("error_location") or first.get("location")
    if location:
        console.print(_text(f"  at {location}"))


def _where(error: dict[str, Any]) -> str:
    """``in mini-batch 3, attempt 2, on 0/process001``; ``in init() on ...`` for an error outside run()."""
    if error.get("mini_batch_id") is not None:
        return f"in mini-batch {error['mini_batch_id']}, attempt {error.get('attempt')}, on {error.get('worker')}"
    if error.get("phase"):
        return f"in {error['phase']}() on {error.get('worker')}"
    return f"on {error.get('worker')}"


def _example(group: dict[str, Any], first: dict[str, Any] | None) -> str:
    if first is not None and (first.get("mini_batch_id"), first.get("attempt")) == (group["mini_batch_id"], group["attempt"]):
        return "the first error, above"
    message = group["error_message"] or group["status"]
    return f"{message} ({_where(group)})"


def retries_line(console: Console, r: dict[str, Any]) -> None:
    console.print(Text(
        f"retries: {r['retries']} attempts ({r['retried_mini_batches']} mini-batches); "
        f"timeouts: {r['timeouts']}; crashes: {r['crashes']}"
    ))


def workers_table(console: Console, workers: list[dict[str, Any]]) -> None:
    if not workers:
        return
    table = _table("workers", "worker", "pid", "attempts", "failed", "items", "elapsed", "mean", "exit", "reason")
    for w in workers:
        table.add_row(
            _text(w["worker"]), _text(w.get("pid")), _text(w.get("attempts", 0)), _text(w.get("failed_attempts", 0)),
            _text(w.get("items", 0)), _text(seconds(w.get("total_elapsed"))), _text(seconds(w.get("mean_elapsed"))),
            _text(w.get("returncode")), _text(w.get("reason")),
        )
    _print_table(console, table)


# ----------------------------------------------------------------------------- metrics
def histogram_table(console: Console, histograms: list[dict[str, Any]]) -> None:
    """count / p50 / p95 / max per histogram; ``~`` and ``<=`` mark estimates from bucket bounds."""
    if not histograms:
        return
    table = _table("histograms", "name", "count", "p50", "p95", "max")
    for h in histograms:
        exact = h["source"] == "observations"
        p50, p95, top = (_quantity(h["name"], h[key]) for key in ("p50", "p95", "max"))
        if not exact:
            p50, p95, top = f"~{p50}", f"~{p95}", f"<= {top}"
        table.add_row(_text(h["name"]), _text(h["count"]), _text(p50), _text(p95), _text(top))
    _print_table(console, table)


def _quantity(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    if name.endswith("_seconds"):
        return seconds(value)
    if name.endswith("_bytes"):
        return filesize.decimal(int(value))
    return f"{value:.6g}"


def metric_table(console: Console, metrics: list[dict[str, Any]], title: str = "metrics") -> None:
    if not metrics:
        console.print(Text("no metrics recorded"))
        return
    table = _table(title, "name", "kind", "count", "last", "min", "max", "mean")
    for m in metrics:
        table.add_row(_text(m["name"]), _text(m["kind"]), _text(m["count"]), _text(_short(m["last"])),
                      _text(m["min"]), _text(m["max"]), _text(m["mean"]))
    _print_table(console, table)


def points_table(console: Console, name: str, points: list[dict[str, Any]]) -> None:
    table = _table(f"{name} ({len(points)} points)", "time", "value", "worker", "mb", "attempt", "labels")
    for p in points:
        labels = ", ".join(f"{k}={v}" for k, v in (p["labels"] or {}).items()) if isinstance(p["labels"], dict) else p["labels"]
        table.add_row(_text(_clock(p["time"])), _text(_short(p["value"])), _text(p["worker"]),
                      _text(p["mini_batch_id"]), _text(p["attempt"]), _text(labels or None))
    _print_table(console, table)


def _short(value: Any, width: int = 60) -> Any:
    text = value if isinstance(value, int | float) or value is None else str(value)
    return text[: width - 1] + "…" if isinstance(text, str) and len(text) > width else text


def _clock(when: float) -> str:
    second = int(when)
    return time.strftime("%H:%M:%S", time.gmtime(second)) + f".{int((when - second) * 1000):03d}"


# ----------------------------------------------------------------------------- trace
TREE_BATCH = 256  # lines of the trace tree printed at a time


def trace_tree(console: Console, nodes: Iterable[tuple[int, bool, dict[str, Any]]], summary: dict[str, Any],
               mini_batch: int | None) -> None:
    """The run's span tree, printed as the walk yields its nodes (``(depth, last, node)``, depth-first)."""
    label = Text.assemble(("run ", "bold"), _text(f"{summary['step_id']} "), _status(summary["status"]))
    if mini_batch is not None:
        label.append(f"  mini-batch {mini_batch}")
    tree = _TreePrinter(console)
    tree.add(0, True, label)
    for depth, last, node in nodes:
        tree.add(depth, last, _node_label(node))
    if tree.count == 1:
        tree.add(1, True, Text("no spans or log lines recorded", style="dim"))
    tree.flush()


def _node_label(node: dict[str, Any]) -> Text:
    if node["type"] == "span":
        return _span_label(node)
    if node["type"] == "event":
        return _text(f"• {_event_text(node)}", "magenta")
    style = LEVEL_STYLES.get(str(node["level"]).upper(), "")
    return Text.assemble((f"{_clock(node['time'])} ", "dim"), _text(f"{node['worker']} ", "cyan"),
                         _text(f"{node['level']} ", style or "dim"), _text(node["text"], style))


class _TreePrinter:
    """A tree drawn as rich's ``Tree`` draws it (guides, labels wrapped within the width), but a node
    at a time in depth-first order, so a tree of any size is printed without being held."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.options = console.options.update(height=None)
        self.guides = Tree.ASCII_GUIDES if self.options.ascii_only else Tree.TREE_GUIDES[0]
        self.indent: list[str] = []  # the guide under each open node of depth 1 and deeper
        self.segments: list[Segment] = []
        self.count = 0

    def add(self, depth: int, last: bool, label: Text) -> None:
        space, down, fork, end = self.guides
        del self.indent[max(0, depth - 1):]
        inner = "".join(self.indent)
        first, rest = (inner + (end if last else fork), inner + (space if last else down)) if depth else ("", "")
        if depth:
            self.indent.append(space if last else down)
        for index, line in enumerate(self._lines(label, cell_len(first))):
            self.segments += [Segment(rest if index else first), *line, Segment.line()]
        self.count += 1
        if self.count % TREE_BATCH == 0:
            self.flush()

    def _lines(self, label: Text, indent: int) -> list[list[Segment]]:
        width = self.options.max_width - indent
        plain = label.plain
        if "\n" in plain or "\t" in plain or cell_len(plain) > width:
            return self.console.render_lines(label, self.options.update(width=width), pad=False)
        # What render_lines makes of a label that fits, in a fraction of the time: without colours (a pipe), its
        # text; else its segments, its own style first (as a span).
        if self.console.color_system is None:
            return [[Segment(plain)]]
        label.stylize_before(label.style)
        label.style = ""
        return [list(label.render(self.console))]

    def flush(self) -> None:
        with self.console.capture() as captured:
            self.console.print(Segments(self.segments))
        self.segments.clear()
        # Written here, not by rich, which exits with status 1 when the reader has gone (`| head`).
        self.console.file.write(captured.get())
        self.console.file.flush()


def _event_text(event: dict[str, Any]) -> str:
    """``exception ValueError: message (at file:line)``; other events as ``name key=value ...``."""
    attributes = event.get("attributes") or {}
    if event.get("name") == "exception":
        text = f"exception {attributes.get('exception.type', '')}: {attributes.get('exception.message', '')}"
        return text + (f" (at {attributes['code.location']})" if attributes.get("code.location") else "")
    pairs = " ".join(f"{k}={_short(v, 40)}" for k, v in attributes.items())
    return f"{event.get('name')} {pairs}".rstrip()


def _span_label(span: dict[str, Any]) -> Text:
    label = _text(span["name"], "bold")
    if span.get("mini_batch_id") is not None:
        label.append(f" mb={span['mini_batch_id']} a={span['attempt']}")
    label.append(f" {seconds(span['duration'])}", style="cyan")
    if span["in_progress"]:
        label.append(" in progress", style="yellow")
    else:
        label.append(" ")
        label.append_text(_status(span["status"]))
    if span.get("status_message"):
        label.append_text(_text(f" {span['status_message']}", "red"))
    if span.get("worker"):
        label.append_text(_text(f"  [{span['worker']}]", "dim"))
    return label
