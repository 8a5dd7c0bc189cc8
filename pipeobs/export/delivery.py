"""Delivery: "when to send", written once for every exporter.

Each exporter gets one :class:`Delivery`: a bounded in-memory queue fed by the driver (``submit``
never blocks and never drops), one sender thread that batches, retries with exponential
backoff, jitter and ``Retry-After``, and a disk spool.

* When the queue is full, records go to the spool on disk instead of being dropped; the sender
  reads the spool back whenever the queue is empty, so a burst still gets delivered.
* ``close()`` gives the sender until one shared deadline to deliver what is left, then writes
  the rest (including a batch stuck in a hanging request) to the spool and returns: exit is never
  blocked past the deadline. ``pipeobs export --retry RUN`` (or the next run) delivers the spool.
* Records the backend refuses for good (e.g. 400) are counted as ``dropped`` with the reason;
  nothing else is ever dropped. The counts obey ``emitted + carried = delivered + spooled +
  dropped`` after ``close()``.

Delivery is at-least-once: a request that hangs past the deadline and then succeeds may be sent
again from the spool.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import random
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeobs.export.base import Exporter, Record

log = logging.getLogger(__name__)

BATCH_SIZE = 512
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
SPOOL_SUFFIX = ".jsonl"


class Spool:
    """JSON-lines files in one folder; each file is written whole, then renamed into place."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._seq = 0

    def write(self, records: Iterable[Record]) -> int:
        records = list(records)
        if not records:
            return 0
        self.folder.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        name = f"{time.time_ns()}-{os.getpid()}-{self._seq:06d}"
        tmp = self.folder / f".{name}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, default=str) + "\n")
        os.replace(tmp, self.folder / f"{name}{SPOOL_SUFFIX}")
        return len(records)

    def files(self) -> list[Path]:
        return sorted(self.folder.glob(f"*{SPOOL_SUFFIX}")) if self.folder.is_dir() else []

    def take(self) -> tuple[Path, list[Record]] | None:
        """The oldest file and its records (the caller deletes it once they are handled)."""
        for path in self.files():
            try:
                with open(path, encoding="utf-8") as handle:
                    return path, [json.loads(line) for line in handle if line.strip()]
            except (OSError, ValueError):
                log.warning("unreadable spool file %s moved aside", path)
                os.replace(path, path.with_suffix(".bad"))
        return None

    def count(self) -> int:
        total = 0
        for path in self.files():
            with open(path, "rb") as handle:
                total += sum(1 for _ in handle)
        return total


class Delivery:
    """One exporter's queue, sender thread, retries and spool."""

    def __init__(
        self,
        exporter: Exporter,
        spool_dir: Path,
        max_queue: int = 100_000,
        deadline: float = 10.0,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self.exporter = exporter
        self.spool = Spool(Path(spool_dir))
        self.max_queue = max_queue
        self.deadline = deadline
        self.batch_size = batch_size
        self.counts = {"emitted": 0, "carried": 0, "delivered": 0, "spooled": 0, "dropped": 0}
        self.drop_reasons: collections.Counter[str] = collections.Counter()
        self._queue: collections.deque[Record] = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closing = False
        self._abandoned = False
        self._inflight: list[Record] = []
        self._inflight_source: Path | None = None  # the spool file the in-flight records came from
        self._thread = threading.Thread(target=self._run, name=f"pipeobs-export-{exporter.name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ producer side
    def submit(self, record: Record) -> None:
        """Queue one record; when the queue is full it goes to the spool (never dropped)."""
        with self._lock:
            if self._closing:
                raise RuntimeError("Delivery is closed")
            self.counts["emitted"] += 1
            if len(self._queue) < self.max_queue:
                self._queue.append(record)
                self._wake.notify()
                return
            self.counts["spooled"] += self.spool.write([record])

    def carry_over(self, files: Iterable[Path]) -> int:
        """Adopt spool files of an earlier run: they are delivered (and counted) here."""
        moved = 0
        for path in files:
            with open(path, "rb") as handle:
                lines = sum(1 for _ in handle)
            self.spool.folder.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(path, self.spool.folder / path.name)
            except OSError:
                continue
            moved += lines
        self._adopt(moved)
        return moved

    def adopt_spool(self) -> int:
        """Deliver what this delivery's own spool folder already holds (``export --retry``)."""
        count = self.spool.count()
        self._adopt(count)
        return count

    def _adopt(self, count: int) -> None:
        with self._lock:
            self.counts["carried"] += count
            self.counts["spooled"] += count
            self._wake.notify()

    def snapshot(self) -> dict[str, int]:
        """The counts now (records in the queue or in flight are in none of the outcomes yet)."""
        with self._lock:
            return dict(self.counts)

    # ------------------------------------------------------------------ sender thread
    def _run(self) -> None:
        attempt = 0
        while True:
            batch, source = self._next_batch()
            if batch is None:
                return
            attempt = self._send(batch, source, attempt)

    def _next_batch(self) -> tuple[list[Record] | None, Path | None]:
        with self._lock:
            while not self._queue and not self._closing and not self.counts["spooled"]:
                self._wake.wait(0.5)
            if self._abandoned:
                return None, None
            if self._queue:
                take = min(self.batch_size, len(self._queue))
                self._inflight = [self._queue.popleft() for _ in range(take)]
                return self._inflight, None
            if self._closing and not self.counts["spooled"]:
                return None, None
        taken = self.spool.take()
        if taken is None:
            with self._lock:
                self.counts["spooled"] = 0
            return ([], None) if not self._closing else (None, None)
        path, records = taken
        with self._lock:
            self._inflight = records
            self._inflight_source = path
        return records, path

    def _send(self, batch: list[Record], source: Path | None, attempt: int) -> int:
        """Deliver ``batch`` until done, retrying what the backend asks to retry."""
        pending = batch
        while pending:
            result = self._export(pending)
            with self._lock:
                if self._abandoned:
                    return attempt
                self.counts["delivered"] += result.delivered
                for _, reason in result.rejected:
                    self.counts["dropped"] += 1
                    self.drop_reasons[reason] += 1
                if result.rejected:
                    log.warning("%s rejected %d records: %s", self.exporter.name, len(result.rejected), result.rejected[0][1])
                if source is not None:
                    self.counts["spooled"] -= result.delivered + len(result.rejected)
            pending = [pending[i] for i in result.retry if 0 <= i < len(pending)]
            if not pending:
                attempt = 0
                break
            attempt += 1
            if not self._sleep(self._backoff(attempt, result.retry_after)):
                return attempt  # close() gave up: it spooled what is in flight
            with self._lock:
                self._inflight = pending
        with self._lock:
            if self._abandoned:
                return attempt
            self._inflight = []
            self._inflight_source = None
            if source is not None:
                try:
                    source.unlink()
                except OSError:
                    pass
        return attempt

    def _export(self, batch: list[Record]) -> Any:
        from pipeobs.export.base import ExportResult

        try:
            return self.exporter.export(batch)
        except Exception as exc:  # noqa: BLE001 - the exporter boundary: never let it kill delivery
            log.warning("%s export raised %s: %s", self.exporter.name, type(exc).__name__, exc)
            return ExportResult.retry_all(len(batch), f"{type(exc).__name__}: {exc}")

    @staticmethod
    def _backoff(attempt: int, retry_after: float | None) -> float:
        delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
        return max(delay, retry_after or 0.0)

    def _sleep(self, seconds: float) -> bool:
        """Wait before a retry; False once close() gave up (what is in flight goes to the spool)."""
        with self._lock:
            end = time.monotonic() + seconds
            while not self._abandoned:
                left = end - time.monotonic()
                if left <= 0:
                    return True
                self._wake.wait(left)
            return False

    # ------------------------------------------------------------------ the end
    def close(self, deadline: float | None = None) -> dict[str, int]:
        """Deliver until the deadline, spool the rest, and return the counts. Idempotent."""
        limit = time.monotonic() + (self.deadline if deadline is None else deadline)
        with self._lock:
            if self._closing and self._abandoned:
                return dict(self.counts)
            self._closing = True
            self._wake.notify_all()
        while self._thread.is_alive() and time.monotonic() < limit:
            with self._lock:
                if not self._queue and not self._inflight and not self.counts["spooled"]:
                    break
            self._thread.join(0.05)
        with self._lock:
            self._abandoned = True
            if self._inflight_source is not None:  # still pending from a spool file: keep only those
                self._inflight_source.unlink(missing_ok=True)
            self.spool.write(list(self._inflight) + list(self._queue))
            self._queue.clear()
            self._inflight = []
            self.counts["spooled"] = self.spool.count()
            self._wake.notify_all()
        try:
            self.exporter.shutdown()
        except Exception:  # noqa: BLE001 - the exporter boundary
            log.warning("%s shutdown failed", self.exporter.name, exc_info=True)
        return dict(self.counts)
