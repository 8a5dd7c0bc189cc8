"""Delivery: "when to send", written once for every exporter.

Each exporter gets one :class:`Delivery`: a bounded in-memory queue fed by the driver (``submit``
never blocks, never drops and does no file I/O), one sender thread that batches, retries with
exponential backoff, jitter and ``Retry-After``, and a disk spool.

* When the queue is full, records wait in an overflow that a spool thread writes to disk a batch
  per file, outside the lock; the sender reads the spool back (its folder is listed once, when an
  earlier spool is adopted) and sends the overflow straight from memory when it catches up. Once
  records overflow, later ones follow them, so records are sent in the order they were submitted
  (records to retry aside).
* ``close()`` gives the sender until one shared deadline to deliver what is left, then writes
  the rest (including a batch stuck in a hanging request) to the spool and returns: exit is never
  blocked past the deadline. ``pipeobs export --retry RUN`` (or the next run) delivers the spool.
* Records the backend refuses for good (e.g. 400) are counted as ``dropped`` with the reason, as
  are the records of a spool file that can no longer be read; nothing else is ever dropped. The
  counts obey ``emitted + carried = delivered + spooled + dropped`` after ``close()``.

Delivery is at-least-once: a request that hangs past the deadline and then succeeds may be sent
again from the spool.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pipeobs.export.base import Exporter, Record

log = logging.getLogger(__name__)

BATCH_SIZE = 512
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
SPOOL_SUFFIX = ".jsonl"
UNREADABLE = "unreadable spool file"

SpoolFile = tuple[Path, int]  # a spool file and the number of records it holds


class Spool:
    """JSON-lines files in one folder, oldest name first; each file is written whole, then renamed into place."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._seq = 0

    def write(self, records: Sequence[Record]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        name = f"{time.time_ns()}-{os.getpid()}-{self._seq:06d}"
        tmp = self.folder / f".{name}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(record, default=str) + "\n" for record in records)
        path = self.folder / f"{name}{SPOOL_SUFFIX}"
        os.replace(tmp, path)
        return path

    def files(self) -> list[Path]:
        return sorted(self.folder.glob(f"*{SPOOL_SUFFIX}")) if self.folder.is_dir() else []

    def listing(self) -> list[SpoolFile]:
        """Every file, oldest first, with its record count: one listing of the folder."""
        return [(path, records_in(path)) for path in self.files()]

    @staticmethod
    def read(path: Path) -> list[Record] | None:
        """The records of one file; None for a file that cannot be read (it is moved aside as ``.bad``)."""
        try:
            with open(path, encoding="utf-8") as handle:
                return [json.loads(line) for line in handle if line.strip()]
        except (OSError, ValueError):
            log.warning("unreadable spool file %s moved aside", path)
            with contextlib.suppress(OSError):
                os.replace(path, path.with_suffix(".bad"))
            return None


def records_in(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


def take(queue: collections.deque[Record], count: int) -> list[Record]:
    return [queue.popleft() for _ in range(min(count, len(queue)))]


class Delivery:
    """One exporter's queue, sender thread, retries and spool.

    Records wait, oldest first, in the queue, then in the spool files, then in the overflow. While
    the sender is stuck, memory holds the queue and the overflow the spool thread has yet to write.
    """

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
        self._files: collections.deque[SpoolFile] = collections.deque()  # written or adopted, not yet taken
        self._overflow: collections.deque[Record] = collections.deque()  # newer than every spool file
        self._writing = False  # the spool thread is writing records taken from the overflow
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the sender waits on it
        self._spill = threading.Condition(self._lock)  # the spool thread waits on it
        self._closing = False
        self._abandoned = False
        self._inflight: list[Record] = []
        self._inflight_source: Path | None = None  # the spool file the in-flight records came from
        self._thread = threading.Thread(target=self._run, name=f"pipeobs-export-{exporter.name}", daemon=True)
        self._spooler = threading.Thread(target=self._spool_overflow, name=f"pipeobs-spool-{exporter.name}",
                                         daemon=True)
        self._thread.start()
        self._spooler.start()

    # ------------------------------------------------------------------ producer side
    def submit(self, record: Record) -> None:
        """Queue one record; when the queue is full it joins the overflow, bound for the spool (never dropped)."""
        with self._lock:
            if self._closing:
                raise RuntimeError("Delivery is closed")
            self.counts["emitted"] += 1
            if self._overflow or self._files or self._writing or len(self._queue) >= self.max_queue:
                self._overflow.append(record)
                if len(self._overflow) == self.batch_size:
                    self._spill.notify()
            else:
                self._queue.append(record)
            self._wake.notify()

    def carry_over(self, files: Iterable[Path]) -> int:
        """Adopt spool files of an earlier run: they are moved here, delivered (and counted) here."""
        self.spool.folder.mkdir(parents=True, exist_ok=True)
        moved = []
        for path in sorted(files, key=lambda p: p.name):
            count = records_in(path)
            try:
                os.replace(path, self.spool.folder / path.name)
            except OSError:
                continue
            moved.append((self.spool.folder / path.name, count))
        return self._adopt(moved)

    def adopt_spool(self) -> int:
        """Deliver what this delivery's own spool folder already holds (``export --retry``, a killed driver's spool).

        Call it before anything is submitted: the folder is listed once, here.
        """
        return self._adopt(self.spool.listing())

    def _adopt(self, files: list[SpoolFile]) -> int:
        count = sum(n for _, n in files)
        with self._lock:
            self._files.extend(files)
            self.counts["carried"] += count
            self.counts["spooled"] += count
            self._wake.notify()
        return count

    def snapshot(self) -> dict[str, int]:
        """The counts now (records in the queue, overflow or in flight are in none of the outcomes yet)."""
        with self._lock:
            return dict(self.counts)

    # ------------------------------------------------------------------ spool thread
    def _spool_overflow(self) -> None:
        """Write the overflow to the spool a batch per file, outside the lock, until close() gives up."""
        while True:
            with self._lock:
                while len(self._overflow) < self.batch_size and not self._abandoned:
                    self._spill.wait()
                if self._abandoned:
                    return
                batch = take(self._overflow, self.batch_size)
                self._writing = True
            try:
                path = self.spool.write(batch)
            except OSError as exc:
                log.warning("%s cannot spool (%s): the overflow stays in memory", self.exporter.name, exc)
                with self._lock:
                    self._overflow.extendleft(reversed(batch))
                    self._writing = False
                    self._wake.notify()
                return
            with self._lock:
                self._files.append((path, len(batch)))
                self.counts["spooled"] += len(batch)
                self._writing = False
                self._wake.notify()

    # ------------------------------------------------------------------ sender thread
    def _run(self) -> None:
        attempt = 0
        while (taken := self._next_batch()) is not None:
            attempt = self._send(*taken, attempt)

    def _next_batch(self) -> tuple[list[Record], Path | None] | None:
        """The oldest records waiting (queue, then spool files, then overflow); None when done or abandoned."""
        while True:
            with self._lock:
                while not self._abandoned and not self._sendable():
                    if self._closing and not self._writing:
                        return None
                    self._wake.wait()
                if self._abandoned:
                    return None
                if self._queue or not self._files:
                    self._inflight = take(self._queue or self._overflow, self.batch_size)
                    return self._inflight, None
                path, expected = self._files.popleft()
            records = Spool.read(path)
            with self._lock:
                if self._abandoned:
                    return None
                if records is not None:
                    self.counts["spooled"] += len(records) - expected
                    self._inflight, self._inflight_source = records, path
                    return records, path
                self.counts["spooled"] -= expected
                self.counts["dropped"] += expected
                self.drop_reasons[UNREADABLE] += expected

    def _sendable(self) -> bool:
        """Records are waiting that may be sent now (the overflow only once the spool thread wrote its batch)."""
        return bool(self._queue or self._files or (self._overflow and not self._writing))

    def _send(self, batch: list[Record], source: Path | None, attempt: int) -> int:
        """Deliver ``batch`` until done, retrying what the backend asks to retry."""
        pending = batch
        while True:
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
                pending = self._inflight = [pending[i] for i in result.retry if 0 <= i < len(pending)]
                if not pending:
                    self._inflight_source = None
                    break
            attempt += 1
            if not self._sleep(self._backoff(attempt, result.retry_after)):
                return attempt  # close() gave up: it spooled what is in flight
        if source is not None:
            source.unlink(missing_ok=True)
        return 0

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
            if self._abandoned:
                return dict(self.counts)
            self._closing = True
            self._wake.notify_all()
        self._thread.join(max(0.0, limit - time.monotonic()))
        with self._lock:
            self._abandoned = True
            self._wake.notify_all()
            self._spill.notify_all()
        self._spooler.join()  # a batch being written is on disk and counted
        self._spool_leftovers()
        try:
            self.exporter.shutdown()
        except Exception:  # noqa: BLE001 - the exporter boundary
            log.warning("%s shutdown failed", self.exporter.name, exc_info=True)
        return dict(self.counts)

    def _spool_leftovers(self) -> None:
        """Write what is still in memory to the spool, a batch per file (the sender has given up)."""
        with self._lock:
            source, inflight = self._inflight_source, self._inflight
            memory = (inflight if source is None else []) + list(self._queue) + list(self._overflow)
            self._queue.clear()
            self._overflow.clear()
            self._inflight, self._inflight_source = [], None
        if source is not None:  # still pending from a spool file (already counted): keep only those
            if inflight:
                self.spool.write(inflight)
            source.unlink(missing_ok=True)
        for start in range(0, len(memory), self.batch_size):
            self.spool.write(memory[start : start + self.batch_size])
        with self._lock:
            self.counts["spooled"] += len(memory)
