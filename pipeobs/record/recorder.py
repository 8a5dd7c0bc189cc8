"""Everything the driver writes about a run: the store rows and the Azure-style logs tree.

The driver is the only writer. Each captured line goes to the store, to the worker's own file
(``logs/user/stdout|stderr|entry_script_log/<node>/processNNN.*``, or the system log for
pipeobs's records) and to the merged ``azureml-logs/70_driver_log.txt``. Files are appended
through buffered handles and flushed with the store, so a flush is one transaction plus a few
writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pipeobs.capture import Line, MetricPoint
from pipeobs.record.driverlog import utc_stamp
from pipeobs.record.rundir import RunDir
from pipeobs.record.store import Store
from pipeobs.telemetry.spans import full_record

if TYPE_CHECKING:
    from pipeobs.record.driverlog import DriverLog

_USER_FILES = {
    "stdout": ("stdout", ".stdout.txt"),
    "stderr": ("stderr", ".stderr.txt"),
    "entry_script": ("entry_script_log", ".log.txt"),
}


class Recorder:
    """Routes driver events to the store and the log files."""

    def __init__(self, run_dir: RunDir, store: Store, step_id: str, step_name: str = "") -> None:
        self.run_dir = run_dir
        self.store = store
        self.step_id = step_id
        self.step_name = step_name
        self.exports: Any = None  # a pipeobs.export.routing.Router when exporters are on
        self._files: dict[Path, IO[str]] = {}
        self._by_worker: dict[tuple[str, int, str], IO[str]] = {}
        self._driver_log: DriverLog | None = None
        hour = time.strftime("%Y%m%d%H", time.gmtime())
        self.overview = self._open(run_dir.logs / f"job_progress_overview.{hour}.txt")

    @property
    def driver_log(self) -> DriverLog:
        """Created on first use: the driver starts its workers before it imports structlog."""
        if self._driver_log is None:
            from pipeobs.record.driverlog import DriverLog

            self._driver_log = DriverLog(self._open(self.run_dir.driver_log))
        return self._driver_log

    def _open(self, path: Path) -> IO[str]:
        handle = self._files.get(path)
        if handle is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115
            self._files[path] = handle
        return handle

    def line(self, worker: str, node: int, name: str, line: Line) -> None:
        """One captured line of a worker (stdout, stderr or a log record)."""
        now = line.time or time.time()
        inv = line.invocation
        dims = line.custom_dimensions
        self.store.queue(
            "log_lines",
            (now, self.step_id, worker, line.stream, inv.phase, inv.mini_batch_id, inv.attempt,
             line.level, line.logger, line.text, inv.trace_id, inv.span_id, json.dumps(dims) if dims else None),
        )
        if self.exports is not None:
            self.exports.submit({
                "type": "log", "time": now, "step_id": self.step_id, "step_name": self.step_name, "worker": worker,
                "stream": line.stream, "phase": inv.phase, "mini_batch_id": inv.mini_batch_id, "attempt": inv.attempt,
                "level": line.level, "logger": line.logger, "text": line.text, "trace_id": inv.trace_id,
                "span_id": inv.span_id, "custom_dimensions": dims or {},
            })
        self._file_for(node, name, line).write(line.text + ("" if line.continued else "\n"))
        self.driver_log.write(now, worker, inv, line.level or _stream_level(line), line.text)

    def metric(self, worker: str, point: MetricPoint) -> None:
        inv = point.invocation
        number = point.value if isinstance(point.value, int | float) and not isinstance(point.value, bool) else None
        encoded = None if number is not None else json.dumps(point.value)
        self.metric_row(
            (point.time, self.step_id, worker, inv.phase, inv.mini_batch_id, inv.attempt, point.name,
             point.kind, number, encoded, point.description, None, inv.trace_id, inv.span_id),
        )

    def metric_row(self, row: tuple[Any, ...]) -> None:
        """A row of the metrics table (column order of the store), also handed to exporters."""
        self.store.queue("metrics", row)
        if self.exports is not None:
            (when, step_id, worker, phase, mb, attempt, name, kind, value, value_json, description, labels, trace, span) = row
            self.exports.submit({
                "type": "metric", "time": when, "step_id": step_id, "step_name": self.step_name, "worker": worker,
                "phase": phase, "mini_batch_id": mb, "attempt": attempt, "name": name, "kind": kind, "value": value,
                "value_json": value_json, "description": description, "labels": json.loads(labels) if labels else {},
                "trace_id": trace, "span_id": span,
            })

    def span(self, worker: str, record: dict[str, Any]) -> None:
        """A finished span: a worker's wire record, the driver's job span, or one the driver closed."""
        if "attributes_json" in record:  # from a worker: stored as sent
            where = (record["worker"] or worker, record["mini_batch_id"], record["attempt"])
            encoded = (record["attributes_json"], record["events_json"])
        else:
            attributes = record["attributes"]
            where = (
                attributes.get("pipeobs.worker", None if worker == "driver" else worker),
                attributes.get("pipeobs.mini_batch_id"),
                attributes.get("pipeobs.attempt"),
            )
            encoded = (json.dumps(attributes, default=str), json.dumps(record["events"], default=str))
        self.store.queue(
            "spans",
            (record["span_id"], record["trace_id"], record["parent_span_id"], record["name"], record["kind"],
             record["start"], record["end"], record["status"], record["status_message"], self.step_id, *where, *encoded),
        )
        if self.exports is not None:
            self.exports.submit({
                **full_record(record), "type": "span", "time": record["start"], "step_id": self.step_id,
                "step_name": self.step_name, "worker": where[0] or worker, "mini_batch_id": where[1], "attempt": where[2],
            })

    def _file_for(self, node: int, name: str, line: Line) -> IO[str]:
        if line.system:
            return self._worker_file("sys", node, name)
        if line.stream == "log":
            # Azure: the root logger sinks to the stdout file; EntryScript's logger to its own
            return self._worker_file("entry_script" if line.entry_script else "stdout", node, name)
        return self._worker_file(line.stream, node, name)

    def event(self, level: str, kind: str, message: str, worker: str | None = None) -> None:
        """The driver's own narrative: the store's ``events`` and the merged driver log."""
        now = time.time()
        self.store.queue("events", (now, level, kind, worker, message))
        if self.exports is not None:
            self.exports.submit({
                "type": "log", "time": now, "step_id": self.step_id, "step_name": self.step_name,
                "worker": worker or "driver", "stream": "log", "phase": "driver", "mini_batch_id": None,
                "attempt": None, "level": level, "logger": "pipeobs.driver", "text": message, "trace_id": None,
                "span_id": None, "custom_dimensions": {"event": kind},
            })
        self.driver_log.write(now, worker or "driver", None, level, message)

    def progress(self, message: str, level: str = "INFO") -> None:
        """A line of ``logs/job_progress_overview.<yyyymmddhh>.txt`` (Azure's overview format)."""
        self.overview.write(f"{utc_stamp(time.time())}|{level}|{message}\n")

    def system(self, node: int, name: str, message: str) -> None:
        """The driver's line about a worker in ``logs/sys/node/<node>/processNNN.txt``."""
        self._worker_file("sys", node, name).write(f"{utc_stamp(time.time())}|{message}\n")

    def _worker_file(self, kind: str, node: int, name: str) -> IO[str]:
        """The per-worker files, looked up by (kind, node, name): no path building per line."""
        key = (kind, node, name)
        handle = self._by_worker.get(key)
        if handle is None:
            if kind == "sys":
                path = self.run_dir.sys_node_log(node, name)
            else:
                folder, suffix = _USER_FILES[kind]
                path = self.run_dir.user_log(folder, node, name, suffix)
            handle = self._by_worker[key] = self._open(path)
        return handle

    def user_error(self, node: int, name: str, header: str, traceback: str) -> Path:
        """Full tracebacks of the user's code, ``logs/user/error/<node>/processNNN.txt``."""
        path = self.run_dir.logs / "user" / "error" / str(node) / f"{name}.txt"
        self._open(path).write(f"{utc_stamp(time.time())} {header}\n{traceback.rstrip()}\n\n")
        return path

    def write_text(self, relative: str, text: str) -> Path:
        """A whole small file under the run directory (job_result.txt, readme.txt...)."""
        with self.open_text(relative) as handle:
            handle.write(text)
        return self.run_dir.path / relative

    @contextlib.contextmanager
    def open_text(self, relative: str) -> Iterator[IO[str]]:
        """A file under the run directory written through a temporary name (never half-written)."""
        path = self.run_dir.path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            yield handle
        os.replace(tmp, path)

    def flush(self) -> None:
        self.store.flush()
        for handle in self._files.values():
            handle.flush()

    def close(self) -> None:
        self.flush()
        for handle in self._files.values():
            handle.close()
        self._files.clear()
        self._by_worker.clear()


def _stream_level(line: Line) -> str:
    return "STDERR" if line.stream == "stderr" else "STDOUT"


def attempt_row(mb_id: int, attempt: int, worker: str, pid: int, result: dict[str, Any]) -> tuple[Any, ...]:
    error = result.get("error") or {}
    total = result.get("total", 0)
    succeeded = result.get("succeeded", 0)
    return (
        mb_id, attempt, worker, pid, result.get("start_time"), result.get("elapsed"),
        result.get("process_seconds"), result.get("run_seconds"), total, succeeded,
        total - succeeded, result["status"], "User" if error else None, error.get("type"),
        error.get("message"), error.get("location"), error.get("traceback"),
    )
