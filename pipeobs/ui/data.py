"""What the web explorer's pages and JSON endpoints show, read from one run's store.

Read-only, like :mod:`pipeobs.explorer.queries` (whose questions it reuses): plain dicts and lists
of JSON-able values. The store may belong to a live run.

Sizes are bounded by the view, never by the run: the timeline sends single bars only while at
most :data:`BAR_LIMIT` attempts fall in the view and otherwise one density cell per lane and
pixel column (computed by SQLite); a metric series is averaged into at most ``points`` buckets;
logs come in pages by id (keyset), and a regex filter scans a bounded number of rows per request.
"""

from __future__ import annotations

import json
import math
import sqlite3
from typing import Any

from pipeobs.errors import ConfigError
from pipeobs.explorer import queries
from pipeobs.explorer.queries import Row, fetch_rows, parse_json
from pipeobs.explorer.spans import last_known_time
from pipeobs.record.liveness import shown_status

BAR_LIMIT = 5_000  # attempts in view beyond which the timeline aggregates by pixel
MAX_WIDTH = 2_000  # pixel columns a client may ask for (density cells: lanes x columns at most)
LOG_PAGE_MAX = 1_000
LOG_SCAN_MAX = 200_000  # rows a filtered log request reads before answering with what it found
SERIES_POINTS_MAX = 2_000
STREAMS = ("stdout", "stderr", "log")
_OK = "RUN_DONE"


# ----------------------------------------------------------------------------- the run's time range
def time_range(conn: sqlite3.Connection) -> tuple[float, float, bool]:
    """From the run's start to its end (or, live, the latest time the store mentions), and whether it is live."""
    row = conn.execute("SELECT * FROM runs LIMIT 1").fetchone()
    run = dict(row) if row is not None else {}
    live = shown_status(run) == "Running"
    start, end = run.get("started_at"), run.get("ended_at")
    if start is None:
        first = conn.execute("SELECT min(t) FROM (SELECT min(start_time) AS t FROM spans "
                             "UNION ALL SELECT min(time) FROM log_lines)").fetchone()[0]
        start = first if first is not None else 0.0
    if end is None or live:  # still running, or a store another writer never ended (the collector)
        end = max(end or start, last_known_time(conn) or start)
    return start, max(end, start + 1e-3), live


# ----------------------------------------------------------------------------- the worker lanes
def lanes(conn: sqlite3.Connection) -> list[Row]:
    """One lane per worker process (``node/processNNN``), in node and start order, including
    workers that only appear in attempts or spans (a store written by another writer)."""
    found = fetch_rows(conn, "SELECT worker, node, name, pid, started, ended, returncode, reason FROM workers "
                             "ORDER BY node, started, worker")
    if found:  # a run's driver records every worker it starts
        return found
    return [{"worker": worker, "node": None, "name": worker, "pid": None, "started": None, "ended": None,
             "returncode": None, "reason": None}
            for (worker,) in conn.execute("SELECT worker FROM attempts WHERE worker IS NOT NULL UNION "
                                          "SELECT worker FROM spans WHERE worker IS NOT NULL AND name = 'mini_batch' "
                                          "ORDER BY 1")]


def timeline(conn: sqlite3.Connection, start: float | None = None, end: float | None = None,
             width: int = 1200) -> Row:
    """The worker lanes between ``start`` and ``end`` (default: the whole run) for ``width`` pixels.

    ``bars``: ``[lane, start, end, mini_batch_id, attempt, status, items, open]`` for each attempt in
    view (an open one is a pending span of a live run, its end the latest time known); or, past
    :data:`BAR_LIMIT`, ``density``: ``[lane, column, attempts, failed, busy_fraction]``.
    ``phases``: init/shutdown spans; ``markers``: retries, timeouts, kills and worker exits.
    """
    run_start, run_end, live = time_range(conn)
    start = run_start if start is None else start
    end = run_end if end is None else end
    if not (math.isfinite(start) and math.isfinite(end)) or end <= start:
        raise ConfigError("the time range must have start < end")
    width = max(10, min(int(width), MAX_WIDTH))
    lane_rows = lanes(conn)
    index = {lane["worker"]: i for i, lane in enumerate(lane_rows)}
    latest = run_end
    in_view = conn.execute(
        "SELECT count(*) FROM attempts WHERE start_time < ? AND start_time + coalesce(elapsed, 0) >= ?", (end, start)
    ).fetchone()[0]
    result: Row = {
        "run": {"start": run_start, "end": run_end, "live": live},
        "view": {"start": start, "end": end, "width": width},
        "lanes": lane_rows,
        "mode": "bars" if in_view <= BAR_LIMIT else "density",
        "attempts_in_view": in_view,
    }
    if result["mode"] == "bars":
        result["bars"] = _bars(conn, index, start, end)
    else:
        result["density"] = _density(conn, index, start, end, width)
        result["bars"] = []
    if live:
        result["bars"] += _open_bars(conn, index, start, end, latest)
    result["phases"] = _phases(conn, index, start, end, latest)
    result["markers"] = _markers(conn, index, start, end)
    return result


def _bars(conn: sqlite3.Connection, index: dict[str, int], start: float, end: float) -> list[list[Any]]:
    return [
        [index.get(r[0], -1), r[1], r[1] + (r[2] or 0.0), r[3], r[4], r[5], r[6], 0]
        for r in conn.execute(
            "SELECT worker, start_time, elapsed, mini_batch_id, attempt, status, total FROM attempts "
            "WHERE start_time < ? AND start_time + coalesce(elapsed, 0) >= ? ORDER BY start_time", (end, start))
    ]


def _open_bars(conn: sqlite3.Connection, index: dict[str, int], start: float, end: float,
               latest: float) -> list[list[Any]]:
    """Mini-batches still running (a live run's): pending spans without an attempt row yet."""
    return [
        [index.get(r[0], -1), r[1], max(r[1], latest), r[2], r[3], "RUNNING", None, 1]
        for r in conn.execute(
            "SELECT s.worker, s.start_time, s.mini_batch_id, s.attempt FROM spans AS s WHERE s.name = 'mini_batch' "
            "AND s.end_time IS NULL AND s.start_time < ? AND NOT EXISTS (SELECT 1 FROM attempts AS a "
            "WHERE a.mini_batch_id = s.mini_batch_id AND a.attempt = s.attempt)", (end,))
        if max(r[1], latest) >= start
    ]


def _density(conn: sqlite3.Connection, index: dict[str, int], start: float, end: float,
             width: int) -> list[list[Any]]:
    """Per lane and pixel column: attempts starting there, how many failed, and the share of the
    column's time the lane was busy (the attempts' elapsed time, placed at their start)."""
    bucket = (end - start) / width
    cells = []
    for worker, column, count, failed, busy in conn.execute(
        "SELECT worker, CAST((max(start_time, ?) - ?) / ? AS INTEGER) AS col, count(*), sum(status != ?), "
        "sum(min(start_time + coalesce(elapsed, 0), ?) - max(start_time, ?)) FROM attempts "
        "WHERE start_time < ? AND start_time + coalesce(elapsed, 0) >= ? GROUP BY worker, col",
        (start, start, bucket, _OK, end, start, end, start),
    ):
        cells.append([index.get(worker, -1), min(column, width - 1), count, failed, round(min(1.0, busy / bucket), 3)])
    return cells


def _phases(conn: sqlite3.Connection, index: dict[str, int], start: float, end: float,
            latest: float) -> list[list[Any]]:
    return [
        [index.get(r[0], -1), r[1], r[2], r[3] if r[3] is not None else latest, r[4], r[3] is None]
        for r in conn.execute(
            "SELECT worker, name, start_time, end_time, status FROM spans WHERE name IN ('init', 'shutdown') "
            "AND start_time < ? AND coalesce(end_time, ?) >= ? ORDER BY start_time", (end, latest, start))
    ]


_MARKER_EVENTS = ("timeout", "worker_exit", "init_failed", "shutdown_failed", "stop", "node_gave_up", "node_lost")


def _markers(conn: sqlite3.Connection, index: dict[str, int], start: float, end: float) -> list[list[Any]]:
    """``[lane, time, kind, text]``: retries (an attempt after the first), timeouts, kills, unexpected exits
    and stops (the driver's events above INFO)."""
    marks: list[list[Any]] = [
        [index.get(r[0], -1), r[1], "retry", f"mini-batch {r[2]} attempt {r[3]}"]
        for r in conn.execute("SELECT worker, start_time, mini_batch_id, attempt FROM attempts WHERE attempt > 1 "
                              "AND start_time BETWEEN ? AND ? ORDER BY start_time LIMIT 2000", (start, end))
    ]
    marks += [
        [index.get(r[0], -1) if r[0] else -1, r[1], r[2], r[3]]
        for r in conn.execute(
            f"SELECT worker, time, kind, message FROM events WHERE kind IN ({', '.join('?' * len(_MARKER_EVENTS))}) "
            "AND level != 'INFO' AND time BETWEEN ? AND ? ORDER BY time LIMIT 2000", (*_MARKER_EVENTS, start, end))
    ]
    return marks


# ----------------------------------------------------------------------------- one mini-batch, one span
def mini_batch(conn: sqlite3.Connection, mb_id: int) -> Row | None:
    """Its ledger row and inputs, every attempt (error and traceback), its spans and, in time order,
    its lines and ``run.log`` points."""
    row = conn.execute("SELECT * FROM mini_batches WHERE id = ?", (mb_id,)).fetchone()
    if row is None:
        return None
    ledger = dict(row)
    descriptor = parse_json(ledger.pop("descriptor"), {})
    attempts = fetch_rows(conn, "SELECT * FROM attempts WHERE mini_batch_id = ? ORDER BY attempt", mb_id)
    spans = [_span(r) for r in conn.execute(
        "SELECT * FROM spans WHERE mini_batch_id = ? OR span_id IN (SELECT span_id FROM spans WHERE parent_span_id IN "
        "(SELECT span_id FROM spans WHERE mini_batch_id = ?)) ORDER BY start_time", (mb_id, mb_id))]
    return {"id": mb_id, "ledger": ledger, "inputs": descriptor, "attempts": attempts, "spans": spans,
            "records": _records(conn, "mini_batch_id = ?", mb_id)}


def span(conn: sqlite3.Connection, span_id: str) -> Row | None:
    """One span with its parent's name, its children and its lines and metric points."""
    row = conn.execute("SELECT * FROM spans WHERE span_id = ?", (span_id,)).fetchone()
    if row is None:
        return None
    found = _span(row)
    parent = conn.execute("SELECT span_id, name FROM spans WHERE span_id = ?", (found["parent_span_id"],)).fetchone()
    found["parent"] = dict(parent) if parent is not None else None
    found["children"] = [_span(r) for r in conn.execute(
        "SELECT * FROM spans WHERE parent_span_id = ? ORDER BY start_time LIMIT 500", (span_id,))]
    found["records"] = _records(conn, "span_id = ?", span_id) if found["name"] != "job" else []
    return found


def _span(row: sqlite3.Row) -> Row:
    found = dict(row)
    found["attributes"] = parse_json(found["attributes"], {})
    found["events"] = parse_json(found["events"], [])
    found["duration"] = None if found["end_time"] is None else found["end_time"] - found["start_time"]
    return found


def _records(conn: sqlite3.Connection, where: str, key: Any, limit: int = 5_000) -> list[Row]:
    """Lines (print, stderr, logging) and metric points matching ``where``, in time order."""
    lines = [queries.log_line(r) for r in conn.execute(
        f"SELECT * FROM log_lines WHERE {where} ORDER BY id LIMIT ?", (key, limit))]
    for line in lines:
        line["type"] = "line"
    points = fetch_rows(conn, f"SELECT time, worker, attempt, name, kind, value, value_json FROM metrics WHERE {where} "
                              "AND kind IN ('scalar', 'list', 'row', 'table', 'tag', 'param') ORDER BY time, id LIMIT ?", key, limit)
    for point in points:
        point["type"] = "metric"
        point["value"] = point["value"] if point["value_json"] is None else parse_json(point["value_json"])
        point.pop("value_json")
    return sorted(lines + points, key=lambda r: r["time"])


# ----------------------------------------------------------------------------- logs
def log_page(conn: sqlite3.Connection, *, after: int | None = None, before: int | None = None,
             limit: int = 200, worker: str | None = None, mini_batch: int | None = None,
             level: str | None = None, stream: str | None = None, regex: str | None = None) -> Row:
    """Up to ``limit`` lines after id ``after`` (or before id ``before``), in id order, filtered.

    ``scanned_to``: the id the scan reached, so a sparse filter continues from there; ``more``:
    whether rows beyond it may match (not yet scanned or cut by the limit).
    """
    limit = max(1, min(int(limit), LOG_PAGE_MAX))
    pattern = queries.compile_grep(regex)
    clauses, args = _log_filters(worker, mini_batch, level, stream)
    backwards = before is not None and after is None
    if backwards:
        clauses.append("id < ?")
        args.append(before)
    else:
        clauses.append("id > ?")
        args.append(after or 0)
    sql = f"SELECT * FROM log_lines WHERE {' AND '.join(clauses)} ORDER BY id {'DESC' if backwards else 'ASC'}"
    cursor = conn.execute(f"{sql} LIMIT ?", (*args, LOG_SCAN_MAX if pattern else limit))
    found: list[Row] = []
    scanned_to = None
    scanned = 0
    for row in cursor:
        scanned += 1
        scanned_to = row["id"]
        if pattern is None or pattern.search(row["text"]):
            found.append(queries.log_line(row))
            if len(found) >= limit:
                break
    more = len(found) >= limit or (pattern is not None and scanned >= LOG_SCAN_MAX)
    if backwards:
        found.reverse()
    return {"lines": found, "scanned_to": scanned_to, "more": more, "max_id": queries.log_max_id(conn),
            "live": queries.run_status(conn) == "Running"}


def _log_filters(worker: str | None, mini_batch: int | None, level: str | None,
                 stream: str | None) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if worker:
        clauses.append("(worker = ? OR substr(worker, -length(?) - 1) = ?)")
        args += [worker, worker, f"/{worker}"]
    if mini_batch is not None:
        clauses.append("mini_batch_id = ?")
        args.append(mini_batch)
    if level:
        clauses.append(f"({queries.LEVEL_SQL}) >= ?")
        args.append(queries.level_number(level))
    if stream:
        if stream not in STREAMS:
            raise ConfigError(f"unknown stream '{stream}': use one of {', '.join(STREAMS)}")
        clauses.append("stream = ?")
        args.append(stream)
    return clauses, args


# ----------------------------------------------------------------------------- metrics
def metric_catalogue(conn: sqlite3.Connection) -> list[Row]:
    """Each metric with numbers to chart: name, kind(s), points, and whether it is built in."""
    return [
        {"name": r[0], "kinds": r[1].split(","), "points": r[2], "builtin": r[0].startswith("pipeobs_")}
        for r in conn.execute(
            "SELECT name, group_concat(DISTINCT kind), count(*) FROM metrics WHERE value IS NOT NULL "
            "AND kind NOT IN ('histogram', 'observation') GROUP BY name ORDER BY name LIKE 'pipeobs_%', name")
    ]


def series(conn: sqlite3.Connection, name: str, points: int = 600) -> Row:
    """One metric as time series, one per worker and label set, each averaged into at most ``points``
    time buckets: ``{"name", "series": [{"key", "points": [[time, value], ...]}]}``."""
    points = max(10, min(int(points), SERIES_POINTS_MAX))
    rows = queries.metric_rows(conn, name)
    bounds = conn.execute(f"SELECT min(time), max(time) FROM {rows} WHERE name = ? AND value IS NOT NULL",
                          (name,)).fetchone()
    if bounds[0] is None:
        return {"name": name, "series": []}
    start, end = bounds
    bucket = max((end - start) / points, 1e-9)
    grouped: dict[str, list[list[float]]] = {}
    for worker, labels, _, at, value in conn.execute(
        "SELECT coalesce(worker, ''), coalesce(labels, ''), min(CAST((time - ?) / ? AS INTEGER), ?) AS b, avg(time), "
        f"avg(value) FROM {rows} WHERE name = ? AND value IS NOT NULL GROUP BY worker, labels, b ORDER BY worker, labels, b",
        (start, bucket, points - 1, name),
    ):
        grouped.setdefault(_series_key(worker, labels), []).append([at, value])
    return {"name": name, "series": [{"key": key, "points": pts} for key, pts in grouped.items()]}


def _series_key(worker: str, labels: str) -> str:
    decoded = parse_json(labels, {}) if labels else {}
    parts = [worker] if worker else []
    if isinstance(decoded, dict):
        parts += [f"{k}={v}" for k, v in sorted(decoded.items()) if k != "worker"]
    return " ".join(parts) or "value"


# ----------------------------------------------------------------------------- the run page's tables
def run_page(conn: sqlite3.Connection) -> Row:
    """What the run page shows below its timeline (the CLI's ``show``, plus duration percentiles)."""
    shown = queries.show_run(conn, slowest=15)
    shown["durations"] = durations(conn)
    shown["metric_catalogue"] = metric_catalogue(conn)
    return shown


def durations(conn: sqlite3.Connection) -> Row:
    """p50 / p95 / max of successful attempts' elapsed time, and their throughput (mini-batches/s)."""
    count = conn.execute("SELECT count(*) FROM attempts WHERE status = ? AND elapsed IS NOT NULL", (_OK,)).fetchone()[0]
    result: Row = {"count": count, "p50": None, "p95": None, "max": None}
    if count:
        for key, q in (("p50", 0.5), ("p95", 0.95), ("max", 1.0)):
            offset = min(count - 1, max(0, math.ceil(q * count) - 1))
            result[key] = conn.execute("SELECT elapsed FROM attempts WHERE status = ? AND elapsed IS NOT NULL "
                                       "ORDER BY elapsed LIMIT 1 OFFSET ?", (_OK, offset)).fetchone()[0]
    return result


def progress(conn: sqlite3.Connection) -> Row:
    """Status, counts, and for a live run its rate and estimated time to go."""
    summary = queries.run_summary(conn)
    b = summary["mini_batches"]
    finished = b.get("done", 0) + b.get("failed", 0)
    rate = finished / summary["duration"] if summary["duration"] else None
    remaining = b["total"] - finished
    eta = remaining / rate if summary["live"] and rate and remaining > 0 else None
    return {"status": summary["status"], "live": summary["live"], "mini_batches": b, "items": summary["items"],
            "duration": summary["duration"], "rate": rate, "eta": eta, "log_max_id": queries.log_max_id(conn)}


def compare(a: sqlite3.Connection, b: sqlite3.Connection) -> Row:
    """Two runs side by side: durations, throughput, failures by error type, metric deltas, config and
    argument differences."""
    sides = [_compared(conn) for conn in (a, b)]
    errors = sorted({e for side in sides for e in side["errors"]})
    metrics = sorted({m for side in sides for m in side["metrics"]})
    return {
        "a": sides[0], "b": sides[1],
        "errors": [{"error_type": e, "a": sides[0]["errors"].get(e, 0), "b": sides[1]["errors"].get(e, 0)}
                   for e in errors],
        "metrics": [_metric_delta(m, sides[0]["metrics"].get(m), sides[1]["metrics"].get(m)) for m in metrics],
        "config": _dict_diff(sides[0]["config"], sides[1]["config"]),
    }


def _compared(conn: sqlite3.Connection) -> Row:
    summary = queries.run_summary(conn)
    run = conn.execute("SELECT config, settings, inputs, entry_script FROM runs LIMIT 1").fetchone()
    config: Row = {}
    if run is not None:  # the config, the runtime's settings, and the inputs with the script's arguments
        for column in ("config", "settings", "inputs"):
            value = parse_json(run[column], {})
            if isinstance(value, dict):
                config.update({f"{column}.{k}": v for k, v in _flatten(value).items()})
        config["entry_script"] = run["entry_script"]
    finished = summary["mini_batches"].get("done", 0) + summary["mini_batches"].get("failed", 0)
    return {
        "summary": summary,
        "durations": durations(conn),
        "throughput": finished / summary["duration"] if summary["duration"] else None,
        "errors": {r["error_type"]: r["count"] for r in queries.failures_by_error(conn)},
        "metrics": {m["name"]: m.get("last") for m in queries.user_metrics(conn)},
        "config": config,
    }


def _flatten(value: Row, prefix: str = "") -> Row:
    flat: Row = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, dict) and item:
            flat.update(_flatten(item, f"{name}."))
        else:
            flat[name] = item
    return flat


def _dict_diff(a: Row, b: Row) -> list[Row]:
    return [{"key": k, "a": shown_value(a.get(k)), "b": shown_value(b.get(k))}
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def shown_value(value: Any) -> str:
    """A value as one line of text: strings as they are, finite floats to 4 digits, the rest as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return json.dumps(value, default=str)


def _metric_delta(name: str, a: Any, b: Any) -> Row:
    delta = b - a if isinstance(a, int | float) and isinstance(b, int | float) else None
    return {"name": name, "a": a, "b": b, "delta": delta}
