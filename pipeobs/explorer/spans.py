"""Spans of a run, nested into a tree with their log lines; stand-ins from the ledger without spans.

Pure functions over a read-only store connection, like :mod:`pipeobs.explorer.queries`. Span
times are epoch seconds; a span without an end is in progress and lasts, for display, until
the latest time anything in the store mentions.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from typing import Any

from pipeobs.errors import ConfigError
from pipeobs.explorer.queries import Row, fetch_rows, log_lines, parse_json


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
    for row in fetch_rows(conn, "SELECT * FROM spans ORDER BY start_time, rowid"):
        end = row.pop("end_time")
        start = row.pop("start_time")
        in_progress = end is None
        shown_end = max(start, last if last is not None else start) if in_progress else end
        result.append({
            "type": "span", **row, "start": start, "end": end, "duration": max(0.0, shown_end - start),
            "in_progress": in_progress, "attributes": parse_json(row["attributes"], {}), "events": parse_json(row["events"], []),
        })
    return result


def run_spans(conn: sqlite3.Connection) -> list[Row]:
    """The spans to show: the stored ones, plus a stand-in ``job`` span while the real one is still
    open (it is stored when the job ends); for a store without spans, :func:`ledger_spans`."""
    found = spans(conn)
    if not found:
        return ledger_spans(conn)
    if any(s["name"] == "job" for s in found):
        return found
    ids = {s["span_id"] for s in found}
    orphans = Counter(s["parent_span_id"] for s in found if s["parent_span_id"] and s["parent_span_id"] not in ids)
    job = _ledger_job(conn)
    if job is None or not orphans:
        return found
    return [{**job, "span_id": orphans.most_common(1)[0][0], "trace_id": found[0]["trace_id"]}, *found]


def ledger_spans(conn: sqlite3.Connection) -> list[Row]:
    """Stand-in spans (``synthetic``) from the runs and attempts tables, for stores without spans."""
    job = _ledger_job(conn)
    result: list[Row] = [job] if job is not None else []
    for a in conn.execute("SELECT * FROM attempts WHERE start_time IS NOT NULL ORDER BY start_time, attempt"):
        failed = a["status"] != "RUN_DONE"
        message = f"{a['error_type'] or a['status']}: {a['error_message'] or ''}".rstrip(": ") if failed else None
        attributes = {"pipeobs.status": a["status"], "pipeobs.items": a["total"], "pipeobs.succeeded": a["succeeded"]}
        result.append(_synthetic(
            f"mb{a['mini_batch_id']}.{a['attempt']}", "mini_batch", "job" if job else None, a["worker"],
            a["start_time"], a["start_time"] + (a["elapsed"] or 0.0), "ERROR" if failed else "OK", message,
            a["mini_batch_id"], a["attempt"], attributes, None,
        ))
    return result


def _ledger_job(conn: sqlite3.Connection) -> Row | None:
    row = conn.execute("SELECT step_id, status, started_at, ended_at, error FROM runs LIMIT 1").fetchone()
    if row is None or row["started_at"] is None:
        return None
    status = {"Completed": "OK", "Failed": "ERROR"}.get(row["status"], "UNSET")
    return _synthetic("job", "job", None, "driver", row["started_at"], row["ended_at"], status, row["error"],
                      None, None, {"pipeobs.step_id": row["step_id"]}, last_known_time(conn))


def _synthetic(span_id: str, name: str, parent: str | None, worker: str | None, start: float, end: float | None,
               status: str, message: str | None, mb: int | None, attempt: int | None, attributes: Row,
               last: float | None) -> Row:
    shown_end = end if end is not None else max(start, last or start)
    return {
        "type": "span", "span_id": span_id, "trace_id": None, "parent_span_id": parent, "name": name,
        "kind": "CONSUMER", "start": start, "end": end, "duration": max(0.0, shown_end - start),
        "in_progress": end is None, "status": status, "status_message": message, "step_id": None, "worker": worker,
        "mini_batch_id": mb, "attempt": attempt, "attributes": attributes, "events": [], "synthetic": True,
    }


def span_tree(conn: sqlite3.Connection, mini_batch: int | None = None) -> list[Row]:
    """Spans nested by parent, each with its log lines and span events interleaved in time order.

    A log line goes under the span whose id it carries; else under the ``mini_batch`` span of its
    mini-batch and attempt (or the ``init``/``shutdown`` span of its worker); else under the
    ``job`` span; else at the top.
    The spans are those of :func:`run_spans`.
    """
    all_spans = run_spans(conn)
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
            or fallback.get(("job", None, None))
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
        elif s["name"] == "job" and not s["parent_span_id"]:
            found.setdefault(("job", None, None), s)
    return found


def _sort_tree(nodes: list[Row]) -> None:
    order = {"span": 0, "event": 1, "log": 2}
    nodes.sort(key=lambda n: (n.get("start") if n["type"] == "span" else n.get("time") or 0.0, order[n["type"]], n.get("id") or 0))
    for node in nodes:
        if node["type"] == "span":
            _sort_tree(node["children"])
