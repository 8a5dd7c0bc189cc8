"""The embedded store: one SQLite file per run directory, written only by the driver.

WAL mode, so readers (the explorer, ``pipeobs.load``) read while the run is live. The driver
queues rows and writes them in one transaction per flush (``executemany``); the ledger part
(mini-batch status and the committed output size) rides in the same transaction, which is what
makes output rows exactly-once across a driver kill.

Schema (documented in the README):

* ``runs``: one row per run (step_id, step name, status, times, config, settings, inputs,
  output path, ``output_size`` = bytes of the output file covered by done mini-batches).
* ``mini_batches``: the ledger: descriptor JSON, status (pending/done/failed), attempts, items.
* ``attempts``: one row per mini-batch attempt (the ``processed_mini-batches.csv`` columns).
* ``log_lines``: every captured line with step_id, worker, stream, phase, mini_batch_id,
  attempt, level, logger, trace_id and span_id (of the invocation's span).
* ``metrics``: every ``Run.log``-family value and tag (kind scalar/list/row/table/tag) and the
  built-in Prometheus-style series (kind counter/gauge/histogram), with worker, mini_batch_id,
  attempt, trace_id, span_id and ``labels`` (JSON); ``value`` for numbers, ``value_json`` else.
* ``spans``: OpenTelemetry spans (``job``, ``init``, ``mini_batch``, ``shutdown`` and the user's
  own), ids as hex, times in epoch seconds, ``attributes`` and ``events`` as JSON.
* ``workers``: every worker process: name, node, pid, start, end, return code, reason.
* ``exports``: per exporter and run (or ``export --retry``): records emitted, carried over from
  earlier spools, delivered, spooled (left for later) and dropped, with the drop reasons.
* ``events``: the driver's narrative (worker restarts, timeouts, threshold stops...).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    step_id TEXT PRIMARY KEY, step_name TEXT, status TEXT, started_at REAL, ended_at REAL,
    entry_script TEXT, config TEXT, settings TEXT, inputs TEXT, output_path TEXT,
    output_size INTEGER NOT NULL DEFAULT 0, partitioned INTEGER NOT NULL DEFAULT 0,
    error TEXT, summary TEXT
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
    error_type TEXT, error_message TEXT, error_location TEXT, traceback TEXT
);
CREATE INDEX IF NOT EXISTS attempts_mb ON attempts (mini_batch_id, attempt);
CREATE TABLE IF NOT EXISTS log_lines (
    id INTEGER PRIMARY KEY, time REAL NOT NULL, step_id TEXT NOT NULL, worker TEXT,
    stream TEXT NOT NULL, phase TEXT, mini_batch_id INTEGER, attempt INTEGER,
    level TEXT, logger TEXT, text TEXT NOT NULL, trace_id TEXT, span_id TEXT, attributes TEXT
);
CREATE INDEX IF NOT EXISTS log_lines_mb ON log_lines (mini_batch_id, attempt);
CREATE INDEX IF NOT EXISTS log_lines_worker ON log_lines (worker, time);
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

_INSERTS = {
    "attempts": "INSERT INTO attempts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    "log_lines": "INSERT INTO log_lines (time, step_id, worker, stream, phase, mini_batch_id, "
    "attempt, level, logger, text, trace_id, span_id, attributes) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
    "spans": "INSERT OR REPLACE INTO spans VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    "mini_batches": "INSERT OR IGNORE INTO mini_batches (id, descriptor) VALUES (?,?)",
    "events": "INSERT INTO events VALUES (?,?,?,?,?)",
    "exports": "INSERT INTO exports VALUES (?,?,?,?,?,?,?,?,?)",
    "metrics": "INSERT INTO metrics (time, step_id, worker, phase, mini_batch_id, attempt, name, kind, "
    "value, value_json, description, labels, trace_id, span_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    "workers": "INSERT OR REPLACE INTO workers VALUES (?,?,?,?,?,?,?,?,?)",
}
_UPDATES = {
    "done": "UPDATE mini_batches SET status=?, attempts=?, total=?, succeeded=?, failed=?, "
    "worker=?, output_end=? WHERE id=?",
}


def connect(path: str | Path, readonly: bool = False) -> sqlite3.Connection:
    """A connection; read-only ones never block the driver."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.row_factory = sqlite3.Row
    return conn


class Store:
    """The driver's single writer: rows are queued and written in one transaction per flush."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.conn = connect(self.path)
        self.conn.executescript(SCHEMA)
        self._queued: dict[str, list[tuple[Any, ...]]] = {k: [] for k in (*_INSERTS, *_UPDATES)}
        self._run_updates: dict[str, Any] = {}
        self.pending_rows = 0

    def queue(self, table: str, row: tuple[Any, ...]) -> None:
        self._queued[table].append(row)
        self.pending_rows += 1

    def update_run(self, **values: Any) -> None:
        """Set run columns at the next flush (``output_size`` commits with the ledger)."""
        self._run_updates.update(values)

    def flush(self) -> None:
        if not self.pending_rows and not self._run_updates:
            return
        conn = self.conn
        conn.execute("BEGIN")
        try:
            for table, rows in self._queued.items():
                if rows:
                    sql = _INSERTS.get(table) or _UPDATES[table]
                    conn.executemany(sql, rows)
                    rows.clear()
            if self._run_updates:
                columns = ", ".join(f"{k}=?" for k in self._run_updates)
                conn.execute(f"UPDATE runs SET {columns}", tuple(self._run_updates.values()))
                self._run_updates.clear()
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.pending_rows = 0

    def insert_run(self, row: dict[str, Any]) -> None:
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        self.conn.execute(f"INSERT INTO runs ({columns}) VALUES ({marks})", tuple(row.values()))

    def run_row(self) -> sqlite3.Row:
        return self.conn.execute("SELECT * FROM runs").fetchone()

    def close(self) -> None:
        self.flush()
        self.conn.close()
