"""Questions about one run, asked of a read-only store connection.

Every function takes a ``sqlite3.Connection`` (rows as ``sqlite3.Row``) and returns plain dicts
and lists of JSON-able values, so the CLI renders them and ``--json`` prints them as they are.
The store may belong to a live run: nothing here assumes the run has ended.

Log levels for filtering: a log record has its own level; a captured line without one counts
as INFO on stdout and WARNING on stderr (so ``--level warning`` keeps stderr output).
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from typing import Any

from pipeobs.errors import ConfigError

USER_METRIC_KINDS = ("scalar", "list", "row", "table", "tag")
LEVELS = {"DEBUG": 10, "INFO": 20, "WARN": 30, "WARNING": 30, "ERROR": 40, "CRITICAL": 50, "FATAL": 50}
_LEVEL_SQL = (
    "CASE WHEN coalesce(level, '') = '' THEN (CASE WHEN stream = 'stderr' THEN 30 ELSE 20 END) "
    + "ELSE (CASE upper(level) "
    + " ".join(f"WHEN '{name}' THEN {number}" for name, number in LEVELS.items())
    + " ELSE 20 END) END"
)
Row = dict[str, Any]


def _rows(conn: sqlite3.Connection, sql: str, *args: Any) -> list[Row]:
    return [dict(r) for r in conn.execute(sql, args).fetchall()]


def _json(text: str | None, default: Any = None) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return text


# ----------------------------------------------------------------------------- the run
def run_summary(conn: sqlite3.Connection, now: float | None = None) -> Row:
    """Status, step, times and mini-batch / item counts (ledger, or the final summary if any)."""
    row = conn.execute("SELECT * FROM runs ORDER BY started_at LIMIT 1").fetchone()
    run = dict(row) if row is not None else {}
    status = run.get("status") or "unknown"
    start, end = run.get("started_at"), run.get("ended_at")
    if start is not None and end is None and status == "Running":
        end_for_duration: float | None = time.time() if now is None else now
    else:
        end_for_duration = end
    batches = {"total": 0, "done": 0, "failed": 0, "pending": 0}
    items = {"total": 0, "succeeded": 0, "failed": 0}
    for r in conn.execute(
        "SELECT status, count(*), sum(coalesce(total, json_extract(descriptor, '$.item_count'), 0)), "
        "sum(coalesce(succeeded, 0)), sum(coalesce(failed, 0)) FROM mini_batches GROUP BY status"
    ):
        batches[r[0]] = batches.get(r[0], 0) + r[1]
        batches["total"] += r[1]
        items["total"] += r[2] or 0
        items["succeeded"] += r[3] or 0
        items["failed"] += r[4] or 0
    final = _json(run.get("summary"), {}) or {}
    if isinstance(final, dict) and final.get("items_total") is not None:
        items = {"total": final["items_total"], "succeeded": final["items_succeeded"], "failed": final["items_failed"]}
    return {
        "step": run.get("step_name"),
        "step_id": run.get("step_id"),
        "status": status,
        "live": status == "Running",
        "entry_script": run.get("entry_script"),
        "output_path": run.get("output_path"),
        "start": start,
        "end": end,
        "duration": None if start is None or end_for_duration is None else max(0.0, end_for_duration - start),
        "mini_batches": batches,
        "items": items,
        "retries": final.get("retries") if isinstance(final, dict) else None,
        "timeouts": final.get("timeouts") if isinstance(final, dict) else None,
        "worker_restarts": final.get("worker_restarts") if isinstance(final, dict) else None,
        "error": run.get("error"),
        "first_error": final.get("first_error") if isinstance(final, dict) else None,
    }


def slowest_mini_batches(conn: sqlite3.Connection, limit: int = 10) -> list[Row]:
    """Successful attempts, longest first."""
    return _rows(
        conn,
        "SELECT mini_batch_id, attempt, worker, start_time, elapsed, run_seconds, process_seconds, total, succeeded "
        "FROM attempts WHERE status = 'RUN_DONE' ORDER BY elapsed DESC, mini_batch_id LIMIT ?",
        limit,
    )


def failures(conn: sqlite3.Connection) -> Row:
    """Failed attempts in time order, the failed mini-batches, and the first error with its traceback."""
    attempts = _rows(
        conn,
        "SELECT mini_batch_id, attempt, worker, pid, start_time, elapsed, status, error_category, error_type, "
        "error_message, error_location, traceback FROM attempts WHERE status != 'RUN_DONE' "
        "ORDER BY start_time, mini_batch_id, attempt",
    )
    first = dict(attempts[0]) if attempts else None
    if first is None:  # an init() failure, say: no attempt failed, the job did
        row = conn.execute("SELECT summary FROM runs LIMIT 1").fetchone()
        final = _json(row[0], {}) if row is not None else {}
        first = final.get("first_error") if isinstance(final, dict) else None
    for attempt in attempts:
        attempt.pop("traceback", None)
    failed = [r[0] for r in conn.execute("SELECT id FROM mini_batches WHERE status = 'failed' ORDER BY id")]
    return {"count": len(attempts), "failed_mini_batches": failed, "first_error": first, "attempts": attempts}


def retries_and_timeouts(conn: sqlite3.Connection) -> Row:
    """Retried attempts, timeouts, crashes and attempts by status."""
    by_status = {r[0]: r[1] for r in conn.execute("SELECT status, count(*) FROM attempts GROUP BY status ORDER BY status")}
    retried = conn.execute(
        "SELECT count(*), count(DISTINCT mini_batch_id) FROM attempts WHERE attempt > 1"
    ).fetchone()
    return {
        "retries": retried[0],
        "retried_mini_batches": retried[1],
        "timeouts": by_status.get("RUN_TIMEOUT", 0),
        "crashes": by_status.get("PROCESS_CRASHED", 0),
        "attempts_by_status": by_status,
    }


def worker_stats(conn: sqlite3.Connection) -> list[Row]:
    """Per worker process: attempts, items, elapsed time, exit code and reason."""
    stats: dict[str, Row] = {}
    for w in _rows(conn, "SELECT * FROM workers ORDER BY node, started, worker"):
        stats[w["worker"]] = {**w, "attempts": 0, "failed_attempts": 0, "items": 0, "items_succeeded": 0,
                              "total_elapsed": 0.0, "mean_elapsed": None, "max_elapsed": None}
    for a in _rows(
        conn,
        "SELECT worker, count(*) AS attempts, sum(status != 'RUN_DONE') AS failed_attempts, "
        "sum(coalesce(total, 0)) AS items, sum(coalesce(succeeded, 0)) AS items_succeeded, "
        "sum(coalesce(elapsed, 0)) AS total_elapsed, avg(elapsed) AS mean_elapsed, max(elapsed) AS max_elapsed "
        "FROM attempts GROUP BY worker ORDER BY worker",
    ):
        base = stats.setdefault(a["worker"], {"worker": a["worker"], "node": None, "name": None, "pid": None})
        base.update(a)
    return list(stats.values())


# ----------------------------------------------------------------------------- metrics
def metric_summaries(conn: sqlite3.Connection, kinds: tuple[str, ...] | None = None) -> list[Row]:
    """Per metric name: kind, count, last value, and min / max / mean of its numeric values."""
    where, args = (f"WHERE kind IN ({','.join('?' * len(kinds))})", kinds) if kinds else ("", ())
    summaries = _rows(
        conn,
        f"SELECT name, count(*) AS count, min(value) AS min, max(value) AS max, avg(value) AS mean, "
        f"max(id) AS last_id FROM metrics {where} GROUP BY name ORDER BY name",
        *args,
    )
    for s in summaries:
        last = conn.execute("SELECT kind, time, value, value_json FROM metrics WHERE id = ?", (s.pop("last_id"),)).fetchone()
        s.update(kind=last["kind"], last_time=last["time"], last=_value(last))
    return summaries


def user_metrics(conn: sqlite3.Connection) -> list[Row]:
    """The ``Run.log``-family metrics and tags (not pipeobs's built-in series)."""
    return metric_summaries(conn, USER_METRIC_KINDS)


def metric_points(conn: sqlite3.Connection, name: str) -> list[Row]:
    """Every point of one metric, in time order, with its labels, worker and mini-batch."""
    points = _rows(
        conn,
        "SELECT time, kind, value, value_json, labels, worker, mini_batch_id, attempt, trace_id, span_id "
        "FROM metrics WHERE name = ? ORDER BY time, id",
        name,
    )
    for p in points:
        p["value"] = _value(p)
        p.pop("value_json")
        p["labels"] = _json(p["labels"], {})
    return points


def metric_names(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT DISTINCT name FROM metrics ORDER BY name")]


def _value(row: Any) -> Any:
    return row["value"] if row["value"] is not None else _json(row["value_json"])


# ----------------------------------------------------------------------------- logs
def level_number(level: str | int | None) -> int:
    """A level name (any case) or number as a number; an unknown name is a ConfigError."""
    if level is None:
        return 0
    if isinstance(level, int) or str(level).isdigit():
        return int(level)
    try:
        return LEVELS[str(level).upper()]
    except KeyError:
        raise ConfigError(f"unknown log level '{level}'; use one of debug, info, warning, error, critical") from None


def compile_grep(pattern: str | None) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"invalid regular expression '{pattern}': {exc}") from None


def log_lines(
    conn: sqlite3.Connection,
    mini_batch: int | None = None,
    worker: str | None = None,
    level: str | int | None = None,
    grep: str | None = None,
    after_id: int = 0,
    limit: int | None = None,
) -> list[Row]:
    """Captured lines in the order the driver read them, filtered; ``after_id`` for following."""
    pattern = compile_grep(grep)
    clauses, args = ["id > ?"], [after_id]
    if mini_batch is not None:
        clauses.append("mini_batch_id = ?")
        args.append(mini_batch)
    if worker is not None:
        clauses.append("(worker = ? OR worker LIKE ?)")
        args += [worker, f"%/{worker}"]
    if level is not None:
        clauses.append(f"({_LEVEL_SQL}) >= ?")
        args.append(level_number(level))
    sql = (
        "SELECT id, time, worker, stream, phase, mini_batch_id, attempt, level, logger, text, trace_id, span_id "
        f"FROM log_lines WHERE {' AND '.join(clauses)} ORDER BY id"
    )
    lines = []
    for row in conn.execute(sql, args):
        if pattern is not None and not pattern.search(row["text"]):
            continue
        line = dict(row)
        line["level"] = line["level"] or ("STDERR" if line["stream"] == "stderr" else "STDOUT")
        lines.append(line)
        if limit is not None and len(lines) >= limit:
            break
    return lines


def log_max_id(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT coalesce(max(id), 0) FROM log_lines").fetchone()[0]


def run_status(conn: sqlite3.Connection) -> str:
    row = conn.execute("SELECT status FROM runs LIMIT 1").fetchone()
    return row[0] if row is not None else "unknown"


# ----------------------------------------------------------------------------- spans
def last_known_time(conn: sqlite3.Connection) -> float | None:
    """The latest time anything in the store mentions (the end of in-progress spans)."""
    return conn.execute(
        "SELECT max(t) FROM (SELECT max(coalesce(end_time, start_time)) AS t FROM spans "
        "UNION ALL SELECT max(time) FROM log_lines UNION ALL SELECT max(time) FROM metrics "
        "UNION ALL SELECT max(time) FROM events UNION ALL SELECT max(start_time + coalesce(elapsed, 0)) FROM attempts "
        "UNION ALL SELECT max(coalesce(ended_at, started_at)) FROM runs)"
    ).fetchone()[0]


def spans(conn: sqlite3.Connection) -> list[Row]:
    """Every span as a dict, in start order; open spans end at the last known time."""
    last = last_known_time(conn)
    result = []
    for row in _rows(conn, "SELECT * FROM spans ORDER BY start_time, rowid"):
        end = row.pop("end_time")
        start = row.pop("start_time")
        in_progress = end is None
        shown_end = max(start, last if last is not None else start) if in_progress else end
        result.append({
            "type": "span", **row, "start": start, "end": end, "duration": max(0.0, shown_end - start),
            "in_progress": in_progress, "attributes": _json(row["attributes"], {}), "events": _json(row["events"], []),
        })
    return result


def span_tree(conn: sqlite3.Connection, mini_batch: int | None = None) -> list[Row]:
    """Spans nested by parent, each with its log lines and span events interleaved in time order.

    A log line goes under the span whose id it carries; else under the ``mini_batch`` span of its
    mini-batch and attempt (or the ``init``/``shutdown`` span of its worker); else at the top.
    """
    all_spans = spans(conn)
    if mini_batch is not None:
        _check_mini_batch(conn, mini_batch)
        all_spans = _with_descendants(all_spans, {s["span_id"] for s in all_spans if s["mini_batch_id"] == mini_batch})
    by_id = {s["span_id"]: s for s in all_spans}
    roots: list[Row] = []
    for span in all_spans:
        span["children"] = [{"type": "event", **e} for e in span["events"] if isinstance(e, dict)]
    for span in all_spans:
        parent = by_id.get(span["parent_span_id"]) if span["parent_span_id"] != span["span_id"] else None
        (parent["children"] if parent is not None else roots).append(span)
    fallback = _fallback_spans(all_spans)
    for line in log_lines(conn, mini_batch=mini_batch):
        target = (
            by_id.get(line["span_id"])
            or fallback.get(("run", line["mini_batch_id"], line["attempt"]))
            or fallback.get((line["phase"], line["worker"], None))
        )
        (target["children"] if target is not None else roots).append({"type": "log", **line})
    _sort_tree(roots)
    return roots


def _check_mini_batch(conn: sqlite3.Connection, mini_batch: int) -> None:
    if conn.execute("SELECT 1 FROM mini_batches WHERE id = ?", (mini_batch,)).fetchone() is None:
        total = conn.execute("SELECT count(*) FROM mini_batches").fetchone()[0]
        raise ConfigError(f"no mini-batch {mini_batch} in this run (it has {total}: ids 0 to {total - 1})")


def _with_descendants(all_spans: list[Row], selected: set[str]) -> list[Row]:
    children: dict[str | None, list[str]] = {}
    for s in all_spans:
        children.setdefault(s["parent_span_id"], []).append(s["span_id"])
    todo = list(selected)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in selected:
                selected.add(child)
                todo.append(child)
    return [s for s in all_spans if s["span_id"] in selected]


def _fallback_spans(all_spans: list[Row]) -> dict[tuple[Any, Any, Any], Row]:
    found: dict[tuple[Any, Any, Any], Row] = {}
    for s in all_spans:
        if s["name"] == "mini_batch" and s["mini_batch_id"] is not None:
            found.setdefault(("run", s["mini_batch_id"], s["attempt"]), s)
        elif s["name"] in ("init", "shutdown") and s["worker"]:
            found.setdefault((s["name"], s["worker"], None), s)
    return found


def _sort_tree(nodes: list[Row]) -> None:
    order = {"span": 0, "event": 1, "log": 2}
    nodes.sort(key=lambda n: (n.get("start") if n["type"] == "span" else n.get("time") or 0.0, order[n["type"]], n.get("id") or 0))
    for node in nodes:
        if node["type"] == "span":
            _sort_tree(node["children"])


# ----------------------------------------------------------------------------- everything
def show_run(conn: sqlite3.Connection, slowest: int = 10) -> Row:
    """What ``pipeobs show`` prints: summary, slowest, failures, retries, workers, user metrics."""
    return {
        "summary": run_summary(conn),
        "slowest": slowest_mini_batches(conn, slowest),
        "failures": failures(conn),
        "retries": retries_and_timeouts(conn),
        "workers": worker_stats(conn),
        "metrics": user_metrics(conn),
    }
