"""Questions about one run, asked of a read-only store connection.

Every function takes a ``sqlite3.Connection`` (rows as ``sqlite3.Row``) and returns plain dicts
and lists of JSON-able values, so the CLI renders them and ``--json`` prints them as they are.
The store may belong to a live run: nothing here assumes the run has ended.

The span tree is in :mod:`pipeobs.explorer.spans`.

Log levels for filtering: a log record has its own level; a captured line without one counts
as INFO on stdout and WARNING on stderr (so ``--level warning`` keeps stderr output).
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

from pipeobs.errors import ConfigError
from pipeobs.record.liveness import shown_status

USER_METRIC_KINDS = ("scalar", "list", "row", "table", "tag", "param")  # param: mlflow.log_param
LEVELS = {"DEBUG": 10, "INFO": 20, "WARN": 30, "WARNING": 30, "ERROR": 40, "CRITICAL": 50, "FATAL": 50}
LEVEL_SQL = (
    "CASE WHEN coalesce(level, '') = '' THEN (CASE WHEN stream = 'stderr' THEN 30 ELSE 20 END) "
    + "ELSE (CASE upper(level) "
    + " ".join(f"WHEN '{name}' THEN {number}" for name, number in LEVELS.items())
    + " ELSE 20 END) END"
)
Row = dict[str, Any]


def fetch_rows(conn: sqlite3.Connection, sql: str, *args: Any) -> list[Row]:
    """The rows of a query as plain dicts."""
    return [dict(r) for r in conn.execute(sql, args).fetchall()]


def parse_json(text: str | None, default: Any = None) -> Any:
    """A JSON column as a value; text that is not JSON stays text."""
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
    status = "Reused" if run.get("reused_from") else shown_status(run)  # completed without a worker
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
    final = parse_json(run.get("summary"), {}) or {}
    if isinstance(final, dict) and final.get("items_total") is not None:
        items = {"total": final["items_total"], "succeeded": final["items_succeeded"], "failed": final["items_failed"]}
    return {
        "step": run.get("step_name"),
        "step_id": run.get("step_id"),
        "kind": run.get("kind") or "step",  # "command": a v2 command job, which has no mini-batches
        "parent_step_id": run.get("parent_step_id"),
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
        "reused_from": run.get("reused_from"),
    }


def slowest_mini_batches(conn: sqlite3.Connection, limit: int = 10) -> list[Row]:
    """Successful attempts, longest first."""
    return fetch_rows(
        conn,
        "SELECT mini_batch_id, attempt, worker, start_time, elapsed, run_seconds, process_seconds, total, succeeded "
        "FROM attempts WHERE status = 'RUN_DONE' ORDER BY elapsed DESC, mini_batch_id LIMIT ?",
        limit,
    )


def failures(conn: sqlite3.Connection) -> Row:
    """Failed attempts in time order and grouped by error type, the failed mini-batches, and the
    first error with its traceback."""
    attempts = fetch_rows(
        conn,
        "SELECT mini_batch_id, attempt, worker, pid, start_time, elapsed, status, error_category, error_type, "
        "error_message, error_location, traceback FROM attempts WHERE status != 'RUN_DONE' "
        "ORDER BY start_time, mini_batch_id, attempt",
    )
    first = dict(attempts[0]) if attempts else None
    if first is None:  # an init() failure, say: no attempt failed, the job did
        row = conn.execute("SELECT summary FROM runs LIMIT 1").fetchone()
        final = parse_json(row[0], {}) if row is not None else {}
        first = final.get("first_error") if isinstance(final, dict) else None
    for attempt in attempts:
        attempt.pop("traceback", None)
    failed = [r[0] for r in conn.execute("SELECT id FROM mini_batches WHERE status = 'failed' ORDER BY id")]
    return {"count": len(attempts), "failed_mini_batches": failed, "first_error": first,
            "by_error": failures_by_error(conn), "attempts": attempts}


def failures_by_error(conn: sqlite3.Connection) -> list[Row]:
    """Per error type (a timeout or crash: its status), most frequent first: how many attempts and
    mini-batches failed so, and the first such attempt as an example."""
    # With one min() in the query, SQLite takes the other bare columns from the row holding the minimum.
    return fetch_rows(
        conn,
        "SELECT coalesce(error_type, status) AS error_type, count(*) AS count, "
        "count(DISTINCT mini_batch_id) AS mini_batches, min(start_time) AS first_time, mini_batch_id, attempt, "
        "worker, status, error_message, error_location FROM attempts WHERE status != 'RUN_DONE' "
        "GROUP BY coalesce(error_type, status) ORDER BY count DESC, first_time",
    )


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
    for w in fetch_rows(conn, "SELECT * FROM workers ORDER BY node, started, worker"):
        stats[w["worker"]] = {**w, "attempts": 0, "failed_attempts": 0, "items": 0, "items_succeeded": 0,
                              "total_elapsed": 0.0, "mean_elapsed": None, "max_elapsed": None}
    for a in fetch_rows(
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
# The built-in per-attempt observations (kind ``observation``, one point per attempt) and the attempts column
# holding each: a store keeps them in its attempt rows (with ``recorded_at``, the driver's time of the attempt's
# end, as their time); an older store keeps them as metric rows, and a resumed one may hold both, for different
# attempts: readers take the metric rows and the attempt rows that have ``recorded_at``.
ATTEMPT_OBSERVATIONS = {"pipeobs_mini_batch_duration_seconds": "elapsed", "pipeobs_mini_batch_peak_rss_bytes": "peak_rss"}
_STATUS_LABELS = """'{"status": ' || json_quote(status) || '}'"""  # as the driver's labels JSON for a status


def attempt_observations(conn: sqlite3.Connection) -> dict[str, str]:
    """The observation series this store holds in ``attempts`` with at least one point (name -> column)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(attempts)")}
    if "recorded_at" not in columns:
        return {}
    return {name: column for name, column in ATTEMPT_OBSERVATIONS.items() if conn.execute(
        f"SELECT 1 FROM attempts WHERE recorded_at IS NOT NULL AND {column} IS NOT NULL LIMIT 1").fetchone()}


def metric_rows(conn: sqlite3.Connection, name: str | None = None) -> str:
    """What to select metric points ``FROM``: ``metrics``, with the observation series held in ``attempts``
    (:data:`ATTEMPT_OBSERVATIONS`) as metric rows (``id`` NULL); given a ``name``, only its series."""
    held = attempt_observations(conn)
    return _with_attempt_rows({series: column for series, column in held.items() if name in (None, series)})


def _with_attempt_rows(held: dict[str, str]) -> str:
    """``metrics``, with the attempt rows of the series ``held`` (name -> column) as metric rows (every column of
    ``metrics``, in its order: ``pipeobs.load`` reads it whole)."""
    parts = [
        f"SELECT NULL, recorded_at, (SELECT step_id FROM runs LIMIT 1), worker, 'run', mini_batch_id, attempt, "
        f"'{series}', 'observation', "
        f"CAST({column} AS REAL), NULL, '', {_STATUS_LABELS}, trace_id, span_id "
        f"FROM attempts WHERE recorded_at IS NOT NULL AND {column} IS NOT NULL"
        for series, column in held.items()
    ]
    if not parts:
        return "metrics"
    return " UNION ALL ".join(
        ["(SELECT * FROM metrics", *parts]) + ")"


def metric_summaries(conn: sqlite3.Connection, kinds: tuple[str, ...] | None = None) -> list[Row]:
    """Per metric name: kind, count, last value, and min / max / mean of its numbers (list elements too).

    Non-finite values count: min and max may be ``±inf`` (NaN is skipped by both), and the mean of
    numbers holding a NaN, or both infinities, is NaN. The last value is the last stored; of an observation
    series held in ``attempts``, the latest in time.
    """
    kind, args = (f"kind IN ({','.join('?' * len(kinds))})", kinds) if kinds else ("1", ())
    held = attempt_observations(conn) if kinds is None or "observation" in kinds else {}
    source = _with_attempt_rows(held)
    summaries = fetch_rows(
        conn,
        f"SELECT name, count(*) AS count, count(value) AS n, sum(value) AS total, sum(value_json = 'NaN') AS nans, "
        f"min(value) AS min, max(value) AS max, max(id) AS last_id FROM {source} WHERE {kind} GROUP BY name ORDER BY name",
        *args,
    )
    lists = _list_numbers(conn) if kinds is None or "list" in kinds else {}
    for s in summaries:
        last_id = s.pop("last_id")
        if s["name"] in held:
            last = conn.execute(f"SELECT kind, time, value, value_json FROM {source} WHERE name = ? AND {kind} "
                                "ORDER BY time DESC, id DESC LIMIT 1", (s["name"], *args)).fetchone()
        else:
            last = conn.execute("SELECT kind, time, value, value_json FROM metrics WHERE id = ?", (last_id,)).fetchone()
        numbers = lists.get(s["name"], [])
        n, nans, total = s.pop("n"), s.pop("nans") or 0, s.pop("total")
        if n and total is None:  # SQLite's sum of inf and -inf
            total = math.nan
        total = (total or 0.0) + sum(numbers)
        ordered = [v for v in numbers if not math.isnan(v)]  # min and max skip NaN, as SQLite's do
        if ordered:
            s["min"] = min(ordered if s["min"] is None else [s["min"], *ordered])
            s["max"] = max(ordered if s["max"] is None else [s["max"], *ordered])
        n += len(numbers)
        mean = math.nan if nans else total / n if n else None
        s.update(mean=mean, kind=last["kind"], last_time=last["time"], last=_value(last))
    return summaries


def _list_numbers(conn: sqlite3.Connection) -> dict[str, list[float]]:
    numbers: dict[str, list[float]] = {}
    for name, value_json in conn.execute("SELECT name, value_json FROM metrics WHERE kind = 'list' ORDER BY id"):
        values = parse_json(value_json, [])
        numbers.setdefault(name, []).extend(
            v for v in (values if isinstance(values, list) else [])
            if isinstance(v, int | float) and not isinstance(v, bool)
        )
    return numbers


def user_metrics(conn: sqlite3.Connection) -> list[Row]:
    """The ``Run.log``-family metrics and tags, and MLflow params (not pipeobs's built-in series)."""
    return metric_summaries(conn, USER_METRIC_KINDS)


def metric_points(conn: sqlite3.Connection, name: str) -> list[Row]:
    """Every point of one metric, in time order, with its labels, worker and mini-batch."""
    points = fetch_rows(
        conn,
        "SELECT time, kind, value, value_json, labels, worker, mini_batch_id, attempt, trace_id, span_id "
        f"FROM {metric_rows(conn, name)} WHERE name = ? ORDER BY time, id",
        name,
    )
    for p in points:
        p["value"] = _value(p)
        p.pop("value_json")
        p["labels"] = parse_json(p["labels"], {})
    return points


def histogram_summaries(conn: sqlite3.Connection) -> list[Row]:
    """count, p50, p95 and max of each histogram, and of each series of per-attempt observations.

    Where the store has the observed values (kind ``observation``: the built-in mini-batch
    duration and peak RSS, one point per attempt, held in ``attempts`` or, in an older store, in
    ``metrics``), the quantiles are exact: the nearest-rank value, found by SQLite (``source``
    ``observations``). A histogram known only by its buckets
    (an OTLP histogram received by ``pipeobs collect``, stored as Prometheus stores one: the
    cumulative ``<name>_bucket`` series, with an ``le`` label) is estimated from the latest count
    of each bucket, summed over its other labels: quantiles are interpolated within their
    bucket as Prometheus's ``histogram_quantile`` does, and max is the upper bound of the highest
    bucket with a count, None when that is ``+Inf`` (``source`` ``buckets``).
    """
    observed = {r[0] for r in conn.execute("SELECT DISTINCT name FROM metrics WHERE kind = 'observation'")}
    observed |= attempt_observations(conn).keys()
    summaries = [_observed(conn, name) for name in observed]
    for (name,) in conn.execute("SELECT DISTINCT name FROM metrics WHERE kind = 'histogram'"):
        base = name.removesuffix("_bucket")
        if base != name and base not in observed:
            summaries.append(_from_buckets(base, _latest_buckets(conn, name)))
    return sorted(summaries, key=lambda s: s["name"])


def _observed(conn: sqlite3.Connection, name: str) -> Row:
    where = f"FROM {metric_rows(conn, name)} WHERE name = ? AND kind = 'observation' AND value IS NOT NULL"
    count, top = conn.execute(f"SELECT count(*), max(value) {where}", (name,)).fetchone()

    def rank(q: float) -> float | None:
        if not count:
            return None
        offset = math.ceil(q * count) - 1
        return conn.execute(f"SELECT value {where} ORDER BY value LIMIT 1 OFFSET ?", (name, offset)).fetchone()[0]

    return {"name": name, "source": "observations", "count": count, "p50": rank(0.5), "p95": rank(0.95), "max": top}


def _latest_buckets(conn: sqlite3.Connection, name: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of each bucket, ascending: the latest point of each series, summed."""
    counts: dict[float, float] = {}
    for labels, value in conn.execute(
        "SELECT labels, value FROM metrics WHERE id IN (SELECT max(id) FROM metrics WHERE name = ? GROUP BY labels)",
        (name,),
    ):
        bound = float((parse_json(labels, {}) or {}).get("le", "+Inf"))
        counts[bound] = counts.get(bound, 0.0) + value
    return sorted(counts.items())


def _from_buckets(name: str, buckets: list[tuple[float, float]]) -> Row:
    total = buckets[-1][1]
    top = next(bound for bound, cumulative in buckets if cumulative >= total)
    return {"name": name, "source": "buckets", "count": int(total), "p50": _bucket_quantile(0.5, buckets, total),
            "p95": _bucket_quantile(0.95, buckets, total), "max": None if not total or math.isinf(top) else top}


def _bucket_quantile(q: float, buckets: list[tuple[float, float]], total: float) -> float | None:
    """Prometheus's estimate: linear within the bucket holding rank q * total; in ``+Inf``, the last finite bound."""
    if not total:
        return None
    rank = q * total
    lower, below = min(0.0, buckets[0][0]), 0.0
    for bound, cumulative in buckets:  # the last one holds every rank: its count is the total
        if cumulative >= rank:
            break
        lower, below = bound, cumulative
    return lower if math.isinf(bound) else lower + (bound - lower) * (rank - below) / (cumulative - below)


def metric_names(conn: sqlite3.Connection) -> list[str]:
    names = {r[0] for r in conn.execute("SELECT DISTINCT name FROM metrics")}
    return sorted(names | attempt_observations(conn).keys())


def _value(row: Any) -> Any:
    return row["value"] if row["value"] is not None else parse_json(row["value_json"])


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


def log_lines(conn: sqlite3.Connection, **filters: Any) -> list[Row]:
    """The lines of :func:`iter_log_lines` as a list."""
    return list(iter_log_lines(conn, **filters))


def iter_log_lines(
    conn: sqlite3.Connection,
    mini_batch: int | None = None,
    worker: str | None = None,
    level: str | int | None = None,
    grep: str | None = None,
    after_id: int = 0,
    until_id: int | None = None,
) -> Iterator[Row]:
    """Captured lines in the order the driver read them, filtered, each as the cursor reads it
    (a run's lines need not fit in memory); ``after_id``/``until_id`` for following.

    A bad ``grep`` or ``level`` is a ConfigError here, before any line.
    """
    pattern = compile_grep(grep)
    clauses: list[str] = ["id > ?"]
    args: list[Any] = [after_id]
    if until_id is not None:
        clauses.append("id <= ?")
        args.append(until_id)
    if mini_batch is not None:
        clauses.append("mini_batch_id = ?")
        args.append(mini_batch)
    if worker is not None:
        clauses.append("(worker = ? OR substr(worker, -length(?) - 1) = ?)")  # or the name after the node
        args += [worker, worker, f"/{worker}"]
    if level is not None:
        clauses.append(f"({LEVEL_SQL}) >= ?")
        args.append(level_number(level))
    rows = conn.execute(f"SELECT * FROM log_lines WHERE {' AND '.join(clauses)} ORDER BY id", args)
    matching = rows if pattern is None else (row for row in rows if pattern.search(row["text"]))
    return map(log_line, matching)


def log_line(row: sqlite3.Row) -> Row:
    """A stored line as the explorer gives it: without step_id, attributes parsed, and a level
    (``STDOUT``/``STDERR`` for a captured line without one)."""
    line = dict(row)
    line.pop("step_id", None)
    if "attributes" in line:  # structured fields of a log record, where the store has them
        line["attributes"] = parse_json(line["attributes"])
    line["level"] = line["level"] or ("STDERR" if line["stream"] == "stderr" else "STDOUT")
    return line


def log_max_id(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT coalesce(max(id), 0) FROM log_lines").fetchone()[0]


def run_status(conn: sqlite3.Connection) -> str:
    """The status a reader shows (``Driver lost`` for a Running run whose driver is gone)."""
    row = conn.execute("SELECT * FROM runs LIMIT 1").fetchone()
    return shown_status(dict(row)) if row is not None else "unknown"


# ----------------------------------------------------------------------------- everything
def show_run(conn: sqlite3.Connection, slowest: int = 10) -> Row:
    """What ``pipeobs show`` prints: summary, slowest, failures, retries, workers, histograms, user metrics, alerts."""
    return {
        "summary": run_summary(conn),
        "slowest": slowest_mini_batches(conn, slowest),
        "failures": failures(conn),
        "retries": retries_and_timeouts(conn),
        "workers": worker_stats(conn),
        "histograms": histogram_summaries(conn),
        "metrics": user_metrics(conn),
        "alerts": alerts(conn),
    }


_ALERT_EVENT = re.compile(r"^Alert (?P<alert>\S+) \((?P<severity>[^)]*)\) (?:firing|resolved): (?P<summary>.*)$", re.DOTALL)


def alerts(conn: sqlite3.Connection) -> list[Row]:
    """Each time an alert fired, from the driver's ``alert_firing`` / ``alert_resolved`` events: when it
    started, when it resolved (None: still firing when the run ended or now), severity and summary."""
    fired: list[Row] = []
    open_by_name: dict[str, Row] = {}
    for row in conn.execute("SELECT time, kind, message FROM events WHERE kind IN ('alert_firing', 'alert_resolved') "
                            "ORDER BY time, rowid"):
        match = _ALERT_EVENT.match(row["message"])
        if match is None:
            continue
        name = match["alert"]
        if row["kind"] == "alert_firing":
            open_by_name[name] = {"alert": name, "severity": match["severity"], "summary": match["summary"],
                                  "start": row["time"], "end": None}
            fired.append(open_by_name[name])
        elif name in open_by_name:
            open_by_name.pop(name)["end"] = row["time"]
    return fired
