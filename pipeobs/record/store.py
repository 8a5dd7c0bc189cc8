"""The embedded store: one SQLite file per run directory, written only by the driver (its lines queued in
groups by :mod:`pipeobs.record.lines`).

WAL mode, so readers (the explorer, ``pipeobs.load``) read while the run is live. The driver
queues rows through named methods and writes them in one transaction per flush (``executemany``); the ledger part
(mini-batch status and the committed output size) rides in the same transaction, which is what
makes output rows exactly-once across a driver kill.

Schema (documented in the README):

* ``runs``: one row per run (step_id, step name, status, times, config, settings, inputs,
  output path, ``output_size`` = bytes of the output file covered by done mini-batches, and the
  driver writing it: ``driver_pid``, ``driver_host``, ``driver_since`` = its process start time;
  ``fingerprint`` = the step's fingerprint digest, see :mod:`pipeobs.fingerprint`, and
  ``reused_from`` = the run it reused, see :mod:`pipeobs.reuse`; ``kind`` = ``step``, ``command`` or
  ``pipeline`` (NULL in older stores: a step), and ``parent_step_id`` = the pipeline run it belongs to).
* ``mini_batches``: the ledger: descriptor JSON, status (pending/done/failed), attempts, items.
* ``attempts``: one row per mini-batch attempt (the ``processed_mini-batches.csv`` columns), with the
  worker's ``peak_rss`` during it, its span's ``trace_id``/``span_id`` and ``recorded_at``, when the driver
  recorded its end: the per-attempt duration and peak RSS series are read from here (older stores, without
  these columns, hold them as ``metrics`` rows of kind ``observation``).
* ``log_lines``: every captured line with step_id, worker, stream, phase, mini_batch_id,
  attempt, level, logger, trace_id and span_id (of the invocation's span).
* ``metrics``: every ``Run.log``-family value and tag (kind scalar/list/row/table/tag) and the
  built-in Prometheus-style series (kind counter/gauge/histogram), with worker, mini_batch_id,
  attempt, trace_id, span_id and ``labels`` (JSON); ``value`` for numbers, ``value_json`` else.
* ``spans``: OpenTelemetry spans (``job``, ``init``, ``mini_batch``, ``shutdown`` and the user's
  own), ids as hex, times in epoch seconds, ``attributes`` and ``events`` as JSON. An invocation
  still running has a pending span (no end, attribute ``pipeobs.pending``) that its finished span replaces.
* ``workers``: every worker process: name, node, pid, start, end, return code, reason.
* ``exports``: per exporter and run (or ``export --retry``): records emitted, carried over from
  earlier spools, delivered, spooled (left for later) and dropped, with the drop reasons.
* ``events``: the driver's narrative (worker restarts, timeouts, threshold stops...).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeobs.record.lines import LOG_LINE_COLUMNS, insert_lines, queue_lines
from pipeobs.records import Event, Line, LineBlock, Metric, RecordBlock, Span

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    step_id TEXT PRIMARY KEY, step_name TEXT, status TEXT, started_at REAL, ended_at REAL,
    entry_script TEXT, config TEXT, settings TEXT, inputs TEXT, output_path TEXT,
    output_size INTEGER NOT NULL DEFAULT 0, partitioned INTEGER NOT NULL DEFAULT 0,
    error TEXT, summary TEXT, driver_pid INTEGER, driver_host TEXT, driver_since REAL,
    fingerprint TEXT, reused_from TEXT, metrics_port INTEGER, kind TEXT, parent_step_id TEXT
);
CREATE TABLE IF NOT EXISTS mini_batches (
    id INTEGER PRIMARY KEY, descriptor TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0, total INTEGER, succeeded INTEGER, failed INTEGER,
    worker TEXT, output_end INTEGER
);
CREATE TABLE IF NOT EXISTS attempts (
    mini_batch_id INTEGER NOT NULL, attempt INTEGER NOT NULL, worker TEXT, pid INTEGER,
    start_time REAL, elapsed REAL, process_seconds REAL, run_seconds REAL,
    total INTEGER, succeeded INTEGER, failed INTEGER, status TEXT, error_category TEXT,
    error_type TEXT, error_message TEXT, error_location TEXT, traceback TEXT,
    peak_rss INTEGER, trace_id TEXT, span_id TEXT, recorded_at REAL
);
CREATE INDEX IF NOT EXISTS attempts_mb ON attempts (mini_batch_id, attempt);
CREATE INDEX IF NOT EXISTS attempts_status ON attempts (status, elapsed);
CREATE TABLE IF NOT EXISTS log_lines (
    id INTEGER PRIMARY KEY, time REAL NOT NULL, step_id TEXT NOT NULL, worker TEXT,
    stream TEXT NOT NULL, phase TEXT, mini_batch_id INTEGER, attempt INTEGER,
    level TEXT, logger TEXT, text TEXT NOT NULL, trace_id TEXT, span_id TEXT, attributes TEXT
);
CREATE INDEX IF NOT EXISTS log_lines_mb ON log_lines (mini_batch_id, attempt);
CREATE TABLE IF NOT EXISTS metrics (
    id INTEGER PRIMARY KEY, time REAL NOT NULL, step_id TEXT NOT NULL, worker TEXT, phase TEXT,
    mini_batch_id INTEGER, attempt INTEGER, name TEXT NOT NULL, kind TEXT NOT NULL,
    value REAL, value_json TEXT, description TEXT, labels TEXT, trace_id TEXT, span_id TEXT
);
CREATE TABLE IF NOT EXISTS spans (
    span_id TEXT PRIMARY KEY, trace_id TEXT NOT NULL, parent_span_id TEXT, name TEXT NOT NULL,
    kind TEXT NOT NULL, start_time REAL NOT NULL, end_time REAL, status TEXT NOT NULL,
    status_message TEXT, step_id TEXT NOT NULL, worker TEXT, mini_batch_id INTEGER,
    attempt INTEGER, attributes TEXT NOT NULL, events TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS spans_mb ON spans (mini_batch_id, attempt);
CREATE INDEX IF NOT EXISTS spans_parent ON spans (parent_span_id);
CREATE INDEX IF NOT EXISTS spans_name ON spans (name, start_time);
CREATE INDEX IF NOT EXISTS metrics_name ON metrics (name, time);
CREATE TABLE IF NOT EXISTS workers (
    worker TEXT PRIMARY KEY, node INTEGER, name TEXT, pid INTEGER, gpu INTEGER,
    started REAL, ended REAL, returncode INTEGER, reason TEXT
);
CREATE TABLE IF NOT EXISTS exports (
    time REAL NOT NULL, exporter TEXT NOT NULL, action TEXT NOT NULL, emitted INTEGER, carried INTEGER,
    delivered INTEGER, spooled INTEGER, dropped INTEGER, drop_reasons TEXT
);
CREATE TABLE IF NOT EXISTS events (
    time REAL NOT NULL, level TEXT NOT NULL, kind TEXT NOT NULL, worker TEXT, message TEXT NOT NULL
);
"""

COLUMNS: dict[str, tuple[str, ...]] = {
    "attempts": ("mini_batch_id", "attempt", "worker", "pid", "start_time", "elapsed", "process_seconds",
                 "run_seconds", "total", "succeeded", "failed", "status", "error_category", "error_type",
                 "error_message", "error_location", "traceback", "peak_rss", "trace_id", "span_id", "recorded_at"),
    "log_lines": LOG_LINE_COLUMNS,
    "spans": ("span_id", "trace_id", "parent_span_id", "name", "kind", "start_time", "end_time", "status",
              "status_message", "step_id", "worker", "mini_batch_id", "attempt", "attributes", "events"),
    "mini_batches": ("id", "descriptor"),
    "events": ("time", "level", "kind", "worker", "message"),
    "exports": ("time", "exporter", "action", "emitted", "carried", "delivered", "spooled", "dropped", "drop_reasons"),
    "metrics": ("time", "step_id", "worker", "phase", "mini_batch_id", "attempt", "name", "kind", "value",
                "value_json", "description", "labels", "trace_id", "span_id"),
    "workers": ("worker", "node", "name", "pid", "gpu", "started", "ended", "returncode", "reason"),
}
_VERB = {"spans": "INSERT OR REPLACE", "workers": "INSERT OR REPLACE", "mini_batches": "INSERT OR IGNORE"}
_SQL = {
    table: f"{_VERB.get(table, 'INSERT')} INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    for table, cols in COLUMNS.items()
}
_SQL["ledger"] = (
    "UPDATE mini_batches SET status=?, attempts=?, total=?, succeeded=?, failed=?, worker=?, output_end=? WHERE id=?"
)
ADDED_RUN_COLUMNS = {"driver_pid": "INTEGER", "driver_host": "TEXT", "driver_since": "REAL",  # older stores lack them
                     "fingerprint": "TEXT", "reused_from": "TEXT", "metrics_port": "INTEGER",
                     "kind": "TEXT", "parent_step_id": "TEXT"}
ADDED_ATTEMPT_COLUMNS = {"peak_rss": "INTEGER", "trace_id": "TEXT", "span_id": "TEXT", "recorded_at": "REAL"}
_JSON_COLUMNS = {"attributes", "events", "labels", "value_json", "drop_reasons"}
_NOT_NULL_JSON = {"attributes": "{}", "events": "[]"}


_VALUE, _VALUE_JSON = COLUMNS["metrics"].index("value"), COLUMNS["metrics"].index("value_json")


def _nan_as_json(values: list[Any]) -> list[Any]:
    """A NaN metric value as the driver stores it (SQLite would make it NULL): value NULL, value_json ``NaN``."""
    value = values[_VALUE]
    if isinstance(value, float) and value != value:
        values[_VALUE] = None
        values[_VALUE_JSON] = values[_VALUE_JSON] or "NaN"
    return values


def _add_missing_columns(conn: sqlite3.Connection, table: str, columns: dict[str, str]) -> None:
    """Columns a store written by an older pipeobs lacks (a resumed run, the collector's store)."""
    have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    for name, kind in columns.items():
        if name not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")


def connect(path: str | Path, readonly: bool = False) -> sqlite3.Connection:
    """A connection; read-only ones never block the driver."""
    if readonly:  # a URI, quoted: a '#' or '?' in the path must not cut it (and drop mode=ro)
        conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
    else:
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.row_factory = sqlite3.Row
    return conn


def step_ids_of(path: str | Path) -> list[str]:
    """The step_ids of the runs a store holds (read-only; sqlite3.Error for a file that is no store)."""
    conn = connect(path, readonly=True)
    try:
        return [r[0] for r in conn.execute("SELECT step_id FROM runs")]
    finally:
        conn.close()


@dataclass(slots=True)
class WorkerRow:
    """A row of ``workers``: written when a worker starts, and again when it exits."""

    worker: str
    node: int
    name: str
    pid: int
    gpu: int | None = None
    started: float | None = None
    ended: float | None = None
    returncode: int | None = None
    reason: str | None = None


@dataclass(slots=True)
class LedgerRow:
    """A mini-batch as the ledger recorded it (what a resumed run starts from)."""

    id: int
    descriptor: str
    status: str
    total: int | None
    succeeded: int
    tries: int


class Store:
    """The single writer of a run's store: named methods queue rows; ``flush`` writes them in one transaction.

    The store alone knows its tables' columns and SQL. It is also a sink of the record pipeline
    (``add_line``, ``add_metric``, ``add_span``, ``add_event``).
    """

    def __init__(self, path: str | Path, step_id: str = "") -> None:
        self.path = Path(path)
        self.step_id = step_id
        self.conn = connect(self.path)
        self.conn.executescript(SCHEMA)
        _add_missing_columns(self.conn, "runs", ADDED_RUN_COLUMNS)
        _add_missing_columns(self.conn, "attempts", ADDED_ATTEMPT_COLUMNS)
        self._queued: dict[str, list[tuple[Any, ...]]] = {k: [] for k in _SQL}
        self._lines = self._queued["log_lines"]
        self._metrics = self._queued["metrics"]
        self._run_updates: dict[str, Any] = {}
        self._labels: dict[str, str] = {}

    # ------------------------------------------------------------------ the record pipeline
    def add_line(self, line: Line) -> None:
        self.add_lines((line,))

    def add_lines(self, lines: Iterable[Line | LineBlock | RecordBlock]) -> None:
        """Lines in order, queued in groups (:func:`pipeobs.record.lines.queue_lines`)."""
        queue_lines(self._lines, self.step_id, lines)

    def add_metric(self, metric: Metric) -> None:
        inv = metric.invocation
        number, encoded = metric.number_or_json()
        self._metrics.append(
            (metric.time, self.step_id, metric.worker, inv.phase, inv.mini_batch_id, inv.attempt, metric.name,
             metric.kind, number, encoded, metric.description, metric.labels, inv.trace_id, inv.span_id)
        )

    def add_span(self, span: Span) -> None:
        record = span.record
        if "attributes_json" in record:  # from a worker: stored as sent
            encoded = (record["attributes_json"], record["events_json"])
        else:
            encoded = (json.dumps(record["attributes"], default=str), json.dumps(record["events"], default=str))
        self._queued["spans"].append(
            (record["span_id"], record["trace_id"], record["parent_span_id"], record["name"], record["kind"],
             record["start"], record["end"], record["status"], record["status_message"], self.step_id, *span.where(), *encoded)
        )

    def add_event(self, event: Event) -> None:
        self._queued["events"].append((event.time, event.level, event.kind, event.worker, event.message))

    # ------------------------------------------------------------------ the ledger and the job
    def add_mini_batch(self, mini_batch_id: int, descriptor: str) -> None:
        self._queued["mini_batches"].append((mini_batch_id, descriptor))

    def finish_mini_batch(self, mini_batch_id: int, *, status: str, attempts: int, total: int | None,
                          succeeded: int, worker: str, output_end: int | None) -> None:
        """The ledger's verdict on a mini-batch; commits with the output size (exactly-once rows)."""
        failed = (total or 0) - succeeded
        self._queued["ledger"].append((status, attempts, total, succeeded, failed, worker, output_end, mini_batch_id))

    def add_attempt(self, mini_batch_id: int, attempt: int, worker: str, pid: int | None, outcome: dict[str, Any]) -> None:
        """One attempt, from the worker's result (or the driver's account of a killed one).

        Its duration and peak RSS are the per-attempt observations of the built-in series: readers take
        them from this row (``recorded_at`` is their time), not from ``metrics``.
        """
        error = outcome.get("error") or {}
        total = outcome.get("total", 0)
        succeeded = outcome.get("succeeded", 0)
        self._queued["attempts"].append(
            (mini_batch_id, attempt, worker, pid, outcome.get("start_time"), outcome.get("elapsed"),
             outcome.get("process_seconds"), outcome.get("run_seconds"), total, succeeded, total - succeeded,
             outcome["status"], "User" if error else None, error.get("type"), error.get("message"),
             error.get("location"), error.get("traceback"), outcome.get("peak_rss") or None, outcome.get("trace_id"),
             outcome.get("span_id"), time.time())
        )

    def put_worker(self, row: WorkerRow) -> None:
        self._queued["workers"].append(
            (row.worker, row.node, row.name, row.pid, row.gpu, row.started, row.ended, row.returncode, row.reason)
        )

    def add_export_counts(self, exporter: str, action: str, counts: dict[str, int],
                          reasons: dict[str, int] | None = None) -> None:
        """A row of ``exports``: ``checkpoint``, ``run``, ``retry`` or ``lost``."""
        self._queued["exports"].append(
            (time.time(), exporter, action, counts["emitted"], counts["carried"], counts["delivered"],
             counts["spooled"], counts["dropped"], json.dumps(reasons or {}))
        )

    def insert(self, table: str, row: dict[str, Any]) -> None:
        """A row given by column name (missing columns are NULL; dicts and lists are stored as JSON)."""
        values = []
        for column in COLUMNS[table]:
            value = row.get(column)
            if column == "step_id" and value is None:
                value = self.step_id
            if column in _JSON_COLUMNS and value is not None and not isinstance(value, str):
                value = json.dumps(value, default=str, sort_keys=column == "labels")
            if value is None and table == "spans":
                value = _NOT_NULL_JSON.get(column)
            values.append(value)
        if table == "metrics":
            values = _nan_as_json(values)
        self._queued[table].append(tuple(values))

    def update_run(self, **values: Any) -> None:
        """Set run columns at the next flush (``output_size`` commits with the ledger)."""
        self._run_updates.update(values)

    def drop_pending_spans(self) -> None:
        """Delete the pending spans (no end, ``pipeobs.pending``: :func:`pipeobs.telemetry.spans.pending_span`)
        that a driver which died left behind, so that a resumed run shows none of them running forever."""
        self.conn.execute(
            "DELETE FROM spans WHERE end_time IS NULL AND json_extract(attributes, '$.\"pipeobs.pending\"') = 1"
        )

    def insert_run(self, row: dict[str, Any]) -> None:
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        self.conn.execute(f"INSERT INTO runs ({columns}) VALUES ({marks})", tuple(row.values()))

    def flush(self) -> None:
        """Write everything queued in one transaction."""
        if not self._run_updates and not any(self._queued.values()):
            return
        conn = self.conn
        conn.execute("BEGIN")
        try:
            for table, rows in self._queued.items():
                if rows:
                    if table == "log_lines":
                        insert_lines(conn, rows)
                    else:
                        conn.executemany(_SQL[table], rows)
                    rows.clear()
            if self._run_updates:
                columns = ", ".join(f"{k}=?" for k in self._run_updates)
                conn.execute(f"UPDATE runs SET {columns}", tuple(self._run_updates.values()))
                self._run_updates.clear()
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ reads of the writer
    def run_row(self) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM runs").fetchone()

    def restore_ledger(self) -> list[LedgerRow]:
        """Every mini-batch the ledger holds, with the number of attempts that ended."""
        tries = dict(self.conn.execute("SELECT mini_batch_id, MAX(attempt) FROM attempts GROUP BY mini_batch_id"))
        return [
            LedgerRow(r["id"], r["descriptor"], r["status"], r["total"], r["succeeded"] or 0, tries.get(r["id"]) or 0)
            for r in self.conn.execute("SELECT * FROM mini_batches ORDER BY id")
        ]

    def failed_attempts(self) -> list[sqlite3.Row]:
        """Attempts that did not succeed, in time order (``job_error.txt``)."""
        return self.conn.execute(
            "SELECT mini_batch_id, attempt, worker, status, error_type, error_message, error_location "
            "FROM attempts WHERE status != 'RUN_DONE' ORDER BY start_time"
        ).fetchall()

    def attempts_for_report(self) -> Iterator[tuple[Any, ...]]:
        """Every attempt with its mini-batch's descriptor, streamed as plain tuples (one per mini-batch of a
        long run: no Row objects), in ``processed_mini-batches.csv``'s column order."""
        cursor = self.conn.cursor()
        cursor.row_factory = None
        return cursor.execute(
            "SELECT a.mini_batch_id, a.attempt, a.worker, a.start_time, a.total, a.succeeded, a.failed, a.elapsed, "
            "a.process_seconds, a.run_seconds, a.status, a.error_category, a.error_message, m.descriptor "
            "FROM attempts a LEFT JOIN mini_batches m ON m.id = a.mini_batch_id ORDER BY a.mini_batch_id, a.attempt"
        )

    def attempt_totals(self, by: str) -> list[sqlite3.Row]:
        """Attempt counts and sums per ``worker`` or per ``node`` (the job report's summaries)."""
        key = {"worker": "a.worker", "node": "w.node"}[by]
        return self.conn.execute(
            f"SELECT {key} AS k, COUNT(*), SUM(a.status='RUN_DONE'), SUM(a.status!='RUN_DONE'), SUM(a.total), "
            "SUM(a.succeeded), SUM(a.failed), SUM(a.elapsed), SUM(a.process_seconds), SUM(a.run_seconds) "
            f"FROM attempts a LEFT JOIN workers w ON w.worker = a.worker GROUP BY {key} ORDER BY {key}"
        ).fetchall()

    def workers(self) -> dict[str, sqlite3.Row]:
        return {r["worker"]: r for r in self.conn.execute("SELECT * FROM workers")}

    def last_export_checkpoints(self) -> list[sqlite3.Row]:
        """Each exporter's last ``checkpoint`` row (what a killed driver had accounted for)."""
        return self.conn.execute(
            "SELECT exporter, emitted, carried, delivered, spooled, dropped FROM exports WHERE action='checkpoint' "
            "AND rowid IN (SELECT MAX(rowid) FROM exports WHERE action='checkpoint' GROUP BY exporter)"
        ).fetchall()

    def close(self) -> None:
        self.flush()
        self.conn.close()
