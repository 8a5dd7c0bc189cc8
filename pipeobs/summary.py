"""What ``pipeobs run`` prints: a live progress bar (or plain lines) and the final summary.

Both show text from user code (error messages, paths) with its control characters escaped, as
the explorer's views do.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from pipeobs.explorer.terminal import printable
from pipeobs.jobs import JobResult, ProgressView
from pipeobs.record.reports import first_error_text
from pipeobs.replay import replay_command

PLAIN_INTERVAL = 10.0
MAKEDIRS_FIX = "os.makedirs(path, exist_ok=True)"


class Progress:
    """A rich progress bar with ETA on a terminal; a plain line every few seconds otherwise."""

    def __init__(self, stream: Any = None, interval: float = PLAIN_INTERVAL) -> None:
        self.stream = stream or sys.stdout
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = interval
        self._bar: Any = None
        self._task: Any = None
        self._last_plain = 0.0
        self._last_done = 0
        self._last_alerts: tuple[str, ...] = ()

    def __enter__(self) -> Progress:
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
                TextColumn("mini-batches"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=Console(file=self.stream), transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("running", total=None)
        return self

    def update(self, view: ProgressView) -> None:
        done, total = view.done, view.total
        if self._bar is not None:
            description = printable(view.step_name) + (f" ({alerts_firing(view.alerts)})" if view.alerts else "")
            self._bar.update(self._task, completed=done, total=total, description=description)
            return
        now = time.monotonic()
        changed = view.alerts != self._last_alerts
        if changed or (now - self._last_plain >= self.interval and done != self._last_done):
            self._last_plain, self._last_done, self._last_alerts = now, done, view.alerts
            elapsed = now - view.started
            rate = done / elapsed if elapsed > 0 else 0.0
            eta = f", ETA {(total - done) / rate:.0f} s" if total and rate > 0 else ""
            print(
                f"Processed {done} of {total if total is not None else '?'} mini batches in {elapsed:.0f} s{eta}."
                + (f" {alerts_firing(view.alerts)}." if view.alerts else ""),
                file=self.stream, flush=True,
            )

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def alerts_firing(names: tuple[str, ...]) -> str:
    """``1 alert firing: JobStalled`` for the progress line."""
    return f"{len(names)} alert{'s' if len(names) != 1 else ''} firing: {', '.join(names)}"


def summary_text(result: JobResult) -> str:
    """The end-of-run summary: status, counts, duration, throughput, where things are."""
    processed = result.mini_batches_succeeded + result.mini_batches_failed
    rate = f" ({processed / result.duration_seconds:.1f} mini-batches/s)" if processed and result.duration_seconds > 0 else ""
    lines = [
        f"{result.status}: step {result.step_name}, run {result.step_id}",
        f"  mini-batches: {result.mini_batches_succeeded} succeeded, {result.mini_batches_failed} failed, "
        f"{not_run(result.mini_batches_not_run)}{result.mini_batches_total} total",
        f"  items:        {result.items_succeeded} succeeded, {result.items_failed} failed, "
        f"{not_run(result.items_not_run)}{result.items_total} total",
        f"  duration:     {result.duration_seconds:.2f} s{rate}; "
        f"retries {result.retries}, timeouts {result.timeouts}, worker restarts {result.worker_restarts}",
    ]
    if result.reused_from:
        lines.insert(1, f"  reused run {result.reused_from}: nothing changed since it ran, so no worker started "
                        "(the counts and duration are that run's)")
    if result.output_path:
        lines.append(f"  output:       {result.output_path}")
    empty = empty_output(result)
    if empty:
        lines.append(f"  output:       {empty}")
    lines.append(f"  run dir:      {result.run_dir}")
    for name, c in result.exports.items():
        carried = f" (+{c['carried']} carried over)" if c.get("carried") else ""
        lines.append(
            f"  export {name}: emitted {c['emitted']}{carried}, delivered {c['delivered']}, "
            f"spooled {c['spooled']}, dropped {c['dropped']}"
            + (f"; {c['sent_by_user']} left to the entry script's own handlers" if c.get("sent_by_user") else "")
            + (f"  -> pipeobs export --retry {result.run_dir}" if c["spooled"] else "")
        )
    lines.append(f"  driver log:   {result.run_dir}/azureml-logs/70_driver_log.txt")
    for alert in result.alerts:
        ended = "until the end" if alert["ended"] is None else f"{alert['ended'] - alert['started']:.1f} s"
        lines.append(f"  alert:        {alert['alertname']} ({alert['severity']}) fired for {ended}: {alert['summary']}")
    for why in result.lost_nodes.values():
        lines.append(f"  node lost:    {why}; its mini-batches were retried on the other nodes")
    if result.reason:
        lines.append(f"  reason:       {result.reason}")
    if result.first_error:
        lines.append("  " + first_error_text(result.first_error))
        if result.first_error.get("traceback_file"):
            lines.append(f"  traceback:    {result.first_error['traceback_file']}")
        lines.append(f"  replay:       {replay_command(result.run_dir, result.first_error)}")
    return printable("\n".join(lines))


def not_run(count: int) -> str:
    """``3 not run, `` when the job stopped before finishing everything; nothing otherwise."""
    return f"{count} not run, " if count else ""


def empty_output(result: JobResult) -> str | None:
    """What is wrong with the output folder of a ``summary_only`` step that declared one and ran
    ``run()``, when the script never created it or left it empty, with the guide's fix; else None.

    ``append_row`` output is written by the driver, and a step that declared no output (its
    folder is then ``<run dir>/output``) expects none, so neither is called out.
    """
    folder = Path(result.output_dir)
    processed = result.mini_batches_succeeded + result.mini_batches_failed
    if result.output_path is not None or folder == Path(result.run_dir) / "output" or not processed:
        return None
    if not folder.is_dir():
        return (f"{folder} was never created, so nothing could be written there: create it before writing, "
                f"with {MAKEDIRS_FIX} (path = os.environ['AZUREML_BI_OUTPUT_PATH'])")
    with os.scandir(folder) as entries:
        if next(entries, None) is not None:
            return None
    return (f"{folder} is empty: write the output under os.environ['AZUREML_BI_OUTPUT_PATH'] (a relative path lands "
            f"in the worker's scratch folder), creating it with {MAKEDIRS_FIX}")


def print_result(result: JobResult, stream: Any = None) -> None:
    print(summary_text(result), file=stream or sys.stdout, flush=True)
