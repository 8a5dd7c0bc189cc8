"""A run as Chrome Trace Event JSON, for ui.perfetto.dev and chrome://tracing.

Mapping (reference section 2.4): the driver is ``pid`` 1; worker process k (in start order) is
``pid`` k + 2, named ``worker <label> (os pid N)``, with one ``tid`` 1 lane ("compute") where its
``init``, ``mini_batch``, ``shutdown`` and user spans nest as ``X`` events. Retries and errors
are ``i`` instants, resident memory and queue depth ``C`` counters. Times are microseconds
since the run started (the epoch start is in ``otherData``). Without spans (an older store, or a
run still writing none) the job and the attempts of the ledger give the slices
(:func:`pipeobs.explorer.spans.run_spans`); while the job runs, a stand-in job slice.

``traceEvents`` is the first key: Perfetto skips the rest of a file after a key it does not
know, so custom data lives in ``otherData``. No NaN or infinity is ever written.
"""

from __future__ import annotations

import json
import math
import sqlite3
from typing import Any

from pipeobs.explorer import queries, spans

DRIVER_PID = 1
LANE = 1  # the "compute" thread of every process
Event = dict[str, Any]


def chrome_trace(conn: sqlite3.Connection) -> dict[str, Any]:
    """The whole run as ``{"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {...}}``."""
    summary = queries.run_summary(conn)
    all_spans = spans.run_spans(conn)
    t0 = _origin(conn, summary, all_spans)
    trace = _Trace(t0)
    trace.add_processes(conn, summary)
    trace.add_spans(all_spans)
    trace.add_attempt_instants(conn, {(s["mini_batch_id"], s["attempt"]) for s in all_spans if s["status"] == "ERROR"})
    trace.add_counters(conn)
    other = {
        "exporter": "pipeobs",
        "step": summary["step"],
        "step_id": summary["step_id"],
        "status": summary["status"],
        "start_epoch_seconds": t0,
        "trace_id": next((s["trace_id"] for s in all_spans if s["name"] == "job"), None),
    }
    return {"traceEvents": trace.events, "displayTimeUnit": "ms", "otherData": _finite(other)}


def write_chrome_trace(conn: sqlite3.Connection, path: Any) -> int:
    """Write the trace to ``path``; returns the number of events."""
    trace = chrome_trace(conn)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(trace, handle, allow_nan=False, separators=(",", ":"))
    return len(trace["traceEvents"])


def _origin(conn: sqlite3.Connection, summary: dict[str, Any], all_spans: list[dict[str, Any]]) -> float:
    candidates = [summary["start"], *(s["start"] for s in all_spans[:1])]
    first = conn.execute("SELECT min(start_time) FROM attempts").fetchone()[0]
    candidates.append(first)
    known = [c for c in candidates if c is not None]
    return min(known) if known else 0.0


class _Trace:
    """The events of one trace, with the worker -> pid mapping."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.events: list[Event] = []
        self.pids: dict[str, int] = {"driver": DRIVER_PID}

    def us(self, when: float) -> float:
        return round((when - self.t0) * 1e6, 3)

    # --------------------------------------------------------------- processes and lanes
    def add_processes(self, conn: sqlite3.Connection, summary: dict[str, Any]) -> None:
        self._meta(DRIVER_PID, "process_name", {"name": f"driver (job {summary['step_id']})"})
        self._meta(DRIVER_PID, "process_sort_index", {"sort_index": 0})
        self._meta(DRIVER_PID, "thread_name", {"name": "job"}, tid=LANE)
        for w in conn.execute("SELECT worker, pid FROM workers ORDER BY started, node, worker"):
            self.pid_of(w["worker"], w["pid"])

    def pid_of(self, worker: str | None, os_pid: int | None = None) -> int:
        """The trace pid of a worker label, naming a new process track on first sight."""
        if not worker:
            return DRIVER_PID
        pid = self.pids.get(worker)
        if pid is None:
            pid = self.pids[worker] = len(self.pids) + 1
            name = f"worker {worker}" + (f" (os pid {os_pid})" if os_pid else "")
            self._meta(pid, "process_name", {"name": name})
            self._meta(pid, "process_sort_index", {"sort_index": pid - 1})
            self._meta(pid, "thread_name", {"name": "compute"}, tid=LANE)
        return pid

    def _meta(self, pid: int, name: str, args: dict[str, Any], tid: int = 0) -> None:
        self.events.append({"ph": "M", "name": name, "pid": pid, "tid": tid, "ts": 0, "args": args})

    # --------------------------------------------------------------- slices
    def add_spans(self, all_spans: list[dict[str, Any]]) -> None:
        for s in all_spans:
            attributes = s["attributes"] if isinstance(s["attributes"], dict) else {"attributes": s["attributes"]}
            worker = s["worker"] or attributes.get("pipeobs.worker")
            pid = self.pid_of(None if worker == "driver" else worker)
            args = {**attributes, "status": s["status"]}
            if not s.get("synthetic"):
                args.update(trace_id=s["trace_id"], span_id=s["span_id"])
            for key in ("mini_batch_id", "attempt", "status_message"):
                if s[key] is not None:
                    args[key] = s[key]
            if s["in_progress"]:
                args["in_progress"] = True
            name = s["name"]
            if name == "mini_batch" and s["mini_batch_id"] is not None:
                name = f"mini_batch {s['mini_batch_id']}" + (f" a={s['attempt']}" if (s["attempt"] or 1) > 1 else "")
            self._slice(pid, name, s["kind"].lower(), s["start"], s["duration"], args)
            if s["status"] == "ERROR":
                when = s["end"] if s["end"] is not None else s["start"] + s["duration"]
                error_args = {"message": s["status_message"], "span_id": s["span_id"], **_exception(s["events"])}
                self._instant(pid, f"error in {name}", "error", when, error_args)

    def _slice(self, pid: int, name: str, cat: str, start: float, duration: float, args: dict[str, Any]) -> None:
        self.events.append({
            "ph": "X", "name": name, "cat": cat, "pid": pid, "tid": LANE,
            "ts": self.us(start), "dur": max(0.0, round(duration * 1e6, 3)), "args": _finite(args),
        })

    # --------------------------------------------------------------- instants
    def add_attempt_instants(self, conn: sqlite3.Connection, span_errors: set[tuple[Any, Any]]) -> None:
        """A ``retry`` at the start of every attempt after the first; an ``error`` per failed attempt."""
        previous: dict[int, str] = {}
        for a in conn.execute("SELECT * FROM attempts WHERE start_time IS NOT NULL ORDER BY start_time, attempt"):
            pid = self.pid_of(a["worker"], a["pid"])
            mb, attempt = a["mini_batch_id"], a["attempt"]
            if attempt > 1:
                args = {"mini_batch_id": mb, "attempt": attempt, "previous_error": previous.get(mb)}
                self._instant(pid, f"retry mini_batch {mb}", "retry", a["start_time"], args)
            if a["status"] != "RUN_DONE":
                error = f"{a['error_type'] or a['status']}: {a['error_message'] or ''}".rstrip(": ")
                previous[mb] = error
                if (mb, attempt) not in span_errors:
                    args = {"mini_batch_id": mb, "attempt": attempt, "status": a["status"], "error": error,
                            "location": a["error_location"]}
                    self._instant(pid, f"error mini_batch {mb}", "error", a["start_time"] + (a["elapsed"] or 0.0), args)

    def _instant(self, pid: int, name: str, cat: str, when: float, args: dict[str, Any]) -> None:
        self.events.append({"ph": "i", "name": name, "cat": cat, "pid": pid, "tid": LANE, "ts": self.us(when),
                            "s": "t", "args": _finite(args)})

    # --------------------------------------------------------------- counters
    def add_counters(self, conn: sqlite3.Connection) -> None:
        """Resident memory per worker process, queue depth on the driver."""
        for m in conn.execute(
            "SELECT time, worker, name, value, labels FROM metrics "
            "WHERE name IN ('pipeobs_process_rss_bytes', 'pipeobs_queue_depth') AND value IS NOT NULL ORDER BY time, id"
        ):
            value = m["value"]
            if not math.isfinite(value):
                continue
            labels = queries.parse_json(m["labels"], {})
            labels = labels if isinstance(labels, dict) else {}
            if m["name"] == "pipeobs_process_rss_bytes":
                pid = self.pid_of(labels.get("worker") or m["worker"])
                name, key = "memory", "rss_mb"
                value = round(value / 2**20, 3)
            else:
                pid, name, key = DRIVER_PID, "queue", "depth"
            self.events.append({"ph": "C", "name": name, "pid": pid, "tid": 0, "ts": self.us(m["time"]), "args": {key: value}})


def _exception(events: Any) -> dict[str, Any]:
    for event in events if isinstance(events, list) else []:
        if isinstance(event, dict) and event.get("name") == "exception":
            attributes = event.get("attributes") or {}
            return {"error": f"{attributes.get('exception.type', '')}: {attributes.get('exception.message', '')}"}
    return {}


def _finite(value: Any) -> Any:
    """JSON-safe: non-finite floats become strings, so the file stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
