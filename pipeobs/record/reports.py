"""The files written when a run ends: ``logs/job_result.txt``, ``job_error.txt``, reports."""

from __future__ import annotations

import csv
import io
import time
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeobs.jobs import JobResult
    from pipeobs.record.files import RunFiles
    from pipeobs.record.store import Store

README = """\
Layout of this run directory (pipeobs; the same places as Azure ML ParallelRunStep):

azureml-logs/70_driver_log.txt   every line of the run in time order: the driver's narrative and
                                 every worker line, as "<UTC time> <node>/<process> <mini-batch> <LEVEL> <text>"
logs/job_result.txt              the result of the job; for a failure, the error and where to look
logs/job_error.txt               the errors of the entry script, first one first
logs/job_progress_overview.<yyyymmddhh>.txt   progress of scheduling and processing
logs/sys/job_report/processed_mini-batches.csv   one row per mini-batch attempt
logs/sys/job_report/process_summary.csv          the same, per worker process
logs/sys/node/<node>/processNNN.txt              pipeobs's own records of each worker
logs/user/stdout/<node>/processNNN.stdout.txt    what the entry script printed (and root logging)
logs/user/stderr/<node>/processNNN.stderr.txt    what it wrote to stderr
logs/user/entry_script_log/<node>/processNNN.log.txt   EntryScript().logger records
logs/user/error/<node>/processNNN.txt            full tracebacks of init()/run()/shutdown() errors
logs/perf/<node>/                                resource samples (CPU %, RSS) per process
pipeobs.db                                       the SQLite store (tables: runs, mini_batches,
                                                 attempts, log_lines, metrics, spans, workers,
                                                 exports, events)
"""

PROCESSED_COLUMNS = (
    "Mini-batch Id", "Picked Count", "Process", "Process Start Time", "Total", "Succeeded",
    "Failed", "Elapsed Seconds", "Process Seconds", "Run Method Seconds", "Status",
    "Error Category", "Error Message", "Mini-batch Detail",
)


def write_reports(files: RunFiles, store: Store, result: JobResult) -> None:
    """The end-of-run files, from the result and the store (flushed before)."""
    files.write_text("logs/readme.txt", README)
    files.write_text("logs/job_result.txt", job_result_text(result))
    files.write_text("logs/job_error.txt", job_error_text(store))
    with files.open_text("logs/sys/job_report/processed_mini-batches.csv") as handle:
        write_processed_csv(store, handle)
    files.write_text("logs/sys/job_report/process_summary.csv", summary_csv(store, "worker"))
    files.write_text("logs/sys/job_report/node_summary.csv", summary_csv(store, "node"))


def job_result_text(result: JobResult) -> str:
    lines = [f"Status: {result.status}", result.headline()]
    if result.reason:
        lines.append(f"Reason: {result.reason}")
    error = result.first_error
    if error:
        lines.append(first_error_text(error))
    if error and error.get("traceback_file"):
        lines.append(f"Full traceback: {error['traceback_file']}")
    if not result.ok:
        lines.append("Layout of the logs: logs/readme.txt")
    return "\n".join(lines) + "\n"


def first_error_text(error: dict[str, object]) -> str:
    where = f" at {error['location']}" if error.get("location") else ""
    batch = ""
    if error.get("mini_batch_id") is not None:
        batch = f" in mini batch {error['mini_batch_id']} (attempt {error.get('attempt')}, {error.get('inputs')})"
    elif error.get("phase"):
        batch = f" in {error['phase']}()"
    return f"First error{batch} on {error.get('worker')}: {error.get('type')}: {error.get('message')}{where}"


def job_error_text(store: Store) -> str:
    rows = store.failed_attempts()
    if not rows:
        return "No errors.\n"
    out = io.StringIO()
    for r in rows:
        where = f" at {r['error_location']}" if r["error_location"] else ""
        out.write(
            f"mini batch {r['mini_batch_id']} attempt {r['attempt']} on {r['worker']}: {r['status']}: "
            f"{r['error_type']}: {r['error_message']}{where}\n"
        )
    return out.getvalue()


def write_processed_csv(store: Store, out: IO[str]) -> None:
    """One row per attempt, streamed from the store (a long run has millions)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(PROCESSED_COLUMNS)
    stamp = _Seconds()
    writer.writerows(
        (mb, attempt, worker, stamp(start) if start else "", total, succeeded, failed, _num(elapsed),
         _num(process_seconds), _num(run_seconds), status, category or "", message or "", descriptor or "")
        for (mb, attempt, worker, start, total, succeeded, failed, elapsed, process_seconds, run_seconds, status,
             category, message, descriptor) in store.attempts_for_report()
    )


class _Seconds:
    """``YYYY-mm-dd HH:MM:SS`` (UTC) of epoch seconds; the attempts of a second share one formatting."""

    def __init__(self) -> None:
        self._last: tuple[int, str] = (-1, "")

    def __call__(self, when: float) -> str:
        second = int(when)
        if second != self._last[0]:
            self._last = (second, time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second)))
        return self._last[1]


SUMMARY_COLUMNS = (
    "Attempts", "Succeeded Attempts", "Failed Attempts", "Total Items", "Succeeded Items", "Failed Items",
    "Elapsed Seconds", "Process Seconds", "Run Method Seconds",
)


def summary_csv(store: Store, by: str) -> str:
    """``process_summary.csv`` (by worker, with pid and exit) or ``node_summary.csv`` (by node)."""
    rows = store.attempt_totals(by)
    workers = store.workers()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    head = ("Process", "Node", "Pid", "Return Code", "Exit Reason") if by == "worker" else ("Node",)
    writer.writerow((*head, *SUMMARY_COLUMNS))
    for r in rows:
        values = [v if not isinstance(v, float) else f"{v:.6f}" for v in tuple(r)[1:]]
        ident: tuple[Any, ...] = (r[0],)
        if by == "worker":
            w = workers.get(r[0])
            ident += (w["node"], w["pid"], w["returncode"], w["reason"] or "") if w else ("", "", "", "")
        writer.writerow((*ident, *values))
    return out.getvalue()


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"
