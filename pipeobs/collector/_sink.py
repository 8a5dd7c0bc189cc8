"""The collector's run directory: one :class:`~pipeobs.record.store.Store`, one ``runs`` row.

Requests may be served concurrently (the ASGI app hands decoding to worker threads), so every
write goes through one lock and is flushed (one transaction) before the request is answered:
an exporter that got a 200 can count its telemetry as stored.
"""

from __future__ import annotations

import enum
import json
import logging
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeobs.errors import RunDirError

logger = logging.getLogger(__name__)

STORE_NAME = "pipeobs.db"
STEP_ID = "collected"
STEP_NAME = "collector"

@dataclass
class Rows:
    """Store rows decoded from one request, as dicts keyed by column (``step_id`` is added on write)."""

    spans: list[dict[str, Any]] = field(default_factory=list)
    log_lines: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)

    def extend(self, other: Rows) -> None:
        self.spans += other.spans
        self.log_lines += other.log_lines
        self.metrics += other.metrics

    def __len__(self) -> int:
        return len(self.spans) + len(self.log_lines) + len(self.metrics)


class RunState(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class CollectedRun:
    """Writes what the collector receives into ``run_dir/pipeobs.db``, read by the explorer as a run."""

    def __init__(self, run_dir: Path, config: dict[str, Any] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / STORE_NAME
        self.config = config or {}
        self.counts: Counter[str] = Counter()
        self.state = RunState.NEW
        self._lock = threading.Lock()
        self._store: Any = None

    def check(self) -> None:
        """Refuse a directory holding another kind of run (a job's store has its own writer)."""
        if not self.path.is_file():
            return
        from pipeobs.record.store import step_ids_of

        try:
            step_ids = step_ids_of(self.path)
        except sqlite3.Error as exc:
            raise RunDirError(f"cannot collect into {self.run_dir}: its store is unreadable ({exc})") from None
        others = [s for s in step_ids if s != STEP_ID]
        if others:
            raise RunDirError(
                f"{self.run_dir} holds the pipeobs run '{others[0]}'; collect into another directory"
            )

    def open(self) -> None:
        """Create or reopen the store and mark the run ``Running`` (idempotent while open)."""
        with self._lock:
            self._open_locked()

    def _open_locked(self) -> None:
        if self.state is RunState.OPEN:
            return
        if self.state is RunState.CLOSED:
            raise RuntimeError("the collector's store is closed")
        from pipeobs.record.liveness import this_driver
        from pipeobs.record.store import Store

        self.check()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        store = Store(self.path, STEP_ID)
        try:
            if store.run_row() is None:
                store.insert_run({
                    "step_id": STEP_ID, "step_name": STEP_NAME, "status": "Running", "started_at": time.time(),
                    "config": json.dumps({"collector": self.config}, sort_keys=True), **this_driver(),
                })
            else:  # a directory collected into before: the same run goes on
                store.update_run(status="Running", ended_at=None, **this_driver())
                store.flush()
        except BaseException:
            store.conn.close()
            raise
        self._store = store
        self.state = RunState.OPEN

    def write(self, rows: Rows) -> None:
        """Insert and commit the rows of one request (opening the store on first use)."""
        with self._lock:
            self._open_locked()
            store = self._store
            try:
                for table in ("spans", "log_lines", "metrics"):
                    for row in getattr(rows, table):
                        store.insert(table, row)
                store.flush()
            except BaseException:
                # drop what this request queued: the client is told it failed and will send again
                store.conn.close()
                self._store = None
                self.state = RunState.NEW
                raise
            for table in ("spans", "log_lines", "metrics"):
                self.counts[table] += len(getattr(rows, table))

    def stored(self) -> dict[str, int]:
        """How many rows of each table, and rejected items, this collector has stored so far."""
        with self._lock:
            return self._totals()

    def _totals(self) -> dict[str, int]:
        return {k: self.counts[k] for k in ("spans", "log_lines", "metrics", "rejected")}

    def count_rejected(self, items: int) -> None:
        with self._lock:
            self.counts["rejected"] += items

    def close(self) -> None:
        """Mark the run ``Completed`` and close the store (idempotent)."""
        with self._lock:
            if self.state is RunState.OPEN:
                summary = {"collector": self._totals()}
                self._store.update_run(status="Completed", ended_at=time.time(), summary=json.dumps(summary))
                self._store.close()
                self._store = None
            self.state = RunState.CLOSED
