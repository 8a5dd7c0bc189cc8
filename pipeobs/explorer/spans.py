"""Spans of a run, nested into a tree with their log lines; stand-ins from the ledger without spans.

Pure functions over a read-only store connection, like :mod:`pipeobs.explorer.queries`. Span
times are epoch seconds; a span without an end is in progress and lasts, for display, until
the latest time anything in the store mentions.

A run of 20,000 mini-batches has hundreds of thousands of lines, so the tree is walked
(:func:`walk_trace`) rather than built: only the spans' ids, parents and start times are held;
SQLite places every log line under its span in one pass (temporary tables, gone with the read
transaction), and each span's row, events and lines are read when the walk reaches it.
:func:`span_tree` is the same walk gathered into nested dicts.
"""

from __future__ import annotations

import heapq
import sqlite3
from collections import Counter
from collections.abc import Generator, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, TypeVar

from pipeobs.errors import ConfigError
from pipeobs.explorer.queries import Row, log_line, parse_json

_T = TypeVar("_T")
SpanRef = Row | sqlite3.Row  # a span as a dict, or a stored span's light row (see _SKELETON_SQL)

_SKELETON_SQL = (
    "SELECT span_id, trace_id, parent_span_id, name, start_time AS start, worker, mini_batch_id, attempt "
    "FROM spans ORDER BY start_time, rowid"
)
_PLACE_LINES_SQL = (  # a line's position: that of its span, else of its mini-batch, init/shutdown or job span
    "INSERT INTO temp.trace_lines SELECT coalesce("
    "(SELECT pos FROM temp.trace_keys WHERE key = 'span:' || l.span_id), "
    "(SELECT pos FROM temp.trace_keys WHERE key = 'mb:' || l.mini_batch_id || ':' || coalesce(l.attempt, '')), "
    "(SELECT pos FROM temp.trace_keys WHERE key = 'phase:' || l.phase || ':' || l.worker), ?), l.time, l.id "
    "FROM main.log_lines AS l"
)
_LINES_AT_SQL = (
    "SELECT l.* FROM temp.trace_lines AS t JOIN main.log_lines AS l ON l.id = t.id WHERE t.pos = ? ORDER BY t.time, t.id"
)
_NODE_ORDER = {"span": 0, "event": 1, "log": 2}


class TraceNode(NamedTuple):
    """One node of the trace tree, in depth-first order."""

    depth: int  # 1 for a root
    last: bool  # the last child of its parent
    node: Row  # a span (as in spans(), without children), an event or a log line, with its "type"


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
    return [_span_dict(row, last) for row in conn.execute("SELECT * FROM spans ORDER BY start_time, rowid")]


def _span_dict(row: sqlite3.Row, last: float | None) -> Row:
    span = dict(row)
    end = span.pop("end_time")
    start = span.pop("start_time")
    in_progress = end is None
    shown_end = max(start, last if last is not None else start) if in_progress else end
    return {
        "type": "span", **span, "start": start, "end": end, "duration": max(0.0, shown_end - start),
        "in_progress": in_progress, "attributes": parse_json(span["attributes"], {}), "events": parse_json(span["events"], []),
    }


def run_spans(conn: sqlite3.Connection) -> list[Row]:
    """The spans to show: the stored ones, plus a stand-in ``job`` span while the real one is still
    open (it is stored when the job ends); for a store without spans, :func:`ledger_spans`."""
    return _with_stand_ins(conn, spans(conn))


def _with_stand_ins(conn: sqlite3.Connection, found: Sequence[SpanRef]) -> list[Any]:
    if not found:
        return ledger_spans(conn)
    if any(s["name"] == "job" for s in found):
        return list(found)
    ids = {s["span_id"] for s in found}
    orphans = Counter(s["parent_span_id"] for s in found if s["parent_span_id"] and s["parent_span_id"] not in ids)
    job = _ledger_job(conn)
    if job is None or not orphans:
        return list(found)
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


# ----------------------------------------------------------------------------- the tree
def span_tree(conn: sqlite3.Connection, mini_batch: int | None = None) -> list[Row]:
    """Spans nested by parent, each with its log lines and span events interleaved in time order.

    A log line goes under the span whose id it carries; else under the ``mini_batch`` span of its
    mini-batch and attempt (or the ``init``/``shutdown`` span of its worker); else under the
    ``job`` span; else at the top.
    The spans are those of :func:`run_spans`; the nodes those of :func:`walk_trace`.
    """
    roots: list[Row] = []
    open_lists = [roots]  # the children list of each depth's open span
    for depth, _last, node in walk_trace(conn, mini_batch):
        del open_lists[depth:]
        if node["type"] == "span":
            node = {**node, "children": []}
            open_lists.append(node["children"])
        open_lists[depth - 1].append(node)
    return roots


def walk_trace(conn: sqlite3.Connection, mini_batch: int | None = None) -> Generator[TraceNode, None, None]:
    """:func:`span_tree`'s nodes depth-first, each as it is read, in one read transaction.

    An unknown ``mini_batch`` is a ConfigError here, before any node. Close a walk left unfinished
    before its connection (``contextlib.closing``): that ends its transaction.
    """
    if mini_batch is not None:
        _check_mini_batch(conn, mini_batch)
    return _TraceWalk(conn, mini_batch).nodes()


def _check_mini_batch(conn: sqlite3.Connection, mini_batch: int) -> None:
    if conn.execute("SELECT 1 FROM mini_batches WHERE id = ?", (mini_batch,)).fetchone() is None:
        total = conn.execute("SELECT count(*) FROM mini_batches").fetchone()[0]
        raise ConfigError(f"no mini-batch {mini_batch} in this run (it has {total}: ids 0 to {total - 1})")


class _TraceWalk:
    """The spans' skeleton in memory; each span's row and lines read as the walk reaches it."""

    def __init__(self, conn: sqlite3.Connection, mini_batch: int | None) -> None:
        self.conn = conn
        self.mini_batch = mini_batch
        self.last: float | None = None
        self.children: dict[str, list[SpanRef]] = {}
        self.positions: dict[str, int] = {}  # where the lines of each span are in temp.trace_lines

    def nodes(self) -> Generator[TraceNode, None, None]:
        self.conn.execute("BEGIN")  # one snapshot of a live store; the rollback drops the temporary tables
        try:
            self.last = last_known_time(self.conn)
            roots = self._skeleton()
            yield from self._children(roots, [], 0, 1)
        finally:
            self.conn.rollback()

    def _skeleton(self) -> list[SpanRef]:
        """The spans' tree (children in start order) and every line's position; the roots."""
        found = _with_stand_ins(self.conn, self.conn.execute(_SKELETON_SQL).fetchall())
        if self.mini_batch is not None:
            found = _with_descendants(found, {s["span_id"] for s in found if s["mini_batch_id"] == self.mini_batch})
        ids = {s["span_id"] for s in found}
        roots: list[SpanRef] = []
        for s in found:
            parent = s["parent_span_id"]
            siblings = self.children.setdefault(parent, []) if parent != s["span_id"] and parent in ids else roots
            siblings.append(s)
        for siblings in (roots, *self.children.values()):
            siblings.sort(key=lambda s: s["start"])
        self.positions = {s["span_id"]: position for position, s in enumerate(found, start=1)}
        self._place_lines(found)
        return roots

    def _place_lines(self, found: list[SpanRef]) -> None:
        conn = self.conn
        conn.execute("CREATE TEMP TABLE trace_keys (key TEXT PRIMARY KEY, pos INTEGER NOT NULL) WITHOUT ROWID")
        conn.execute("CREATE TEMP TABLE trace_lines (pos INTEGER, time REAL, id INTEGER, PRIMARY KEY (pos, time, id)) "
                     "WITHOUT ROWID")
        conn.executemany("INSERT OR REPLACE INTO temp.trace_keys VALUES (?, ?)",
                         ((f"span:{span_id}", position) for span_id, position in self.positions.items()))
        fallbacks, job = _fallback_keys(found, self.positions)
        conn.executemany("INSERT OR IGNORE INTO temp.trace_keys VALUES (?, ?)", fallbacks)
        if self.mini_batch is None:
            conn.execute(_PLACE_LINES_SQL, (job,))
        else:
            conn.execute(f"{_PLACE_LINES_SQL} WHERE l.mini_batch_id = ?", (job, self.mini_batch))

    def _children(self, spans: list[SpanRef], events: list[Row], position: int, depth: int) -> Iterator[TraceNode]:
        lines = ({"type": "log", **log_line(row)} for row in self.conn.execute(_LINES_AT_SQL, (position,)))
        merged = heapq.merge((self._span(s) for s in spans), events, lines, key=_node_order)
        for last, node in _with_last(merged):
            yield TraceNode(depth, last, node)
            if node["type"] == "span":
                events = sorted(({"type": "event", **e} for e in node["events"] if isinstance(e, dict)), key=_node_order)
                span_id = node["span_id"]
                yield from self._children(self.children.get(span_id, []), events, self.positions[span_id], depth + 1)

    def _span(self, span: SpanRef) -> Row:
        if isinstance(span, dict):  # a stand-in
            return span
        row = self.conn.execute("SELECT * FROM spans WHERE span_id = ?", (span["span_id"],)).fetchone()
        return _span_dict(row, self.last)


def _fallback_keys(found: list[SpanRef], positions: dict[str, int]) -> tuple[list[tuple[str, int]], int]:
    """Where a line without a known span goes: by mini-batch attempt, by init/shutdown and worker
    (keys and positions), else under the job (its position; 0 for the top)."""
    keys, job = [], 0
    for s in found:
        if s["name"] == "mini_batch" and s["mini_batch_id"] is not None:
            attempt = "" if s["attempt"] is None else s["attempt"]
            keys.append((f"mb:{s['mini_batch_id']}:{attempt}", positions[s["span_id"]]))
        elif s["name"] in ("init", "shutdown") and s["worker"]:
            keys.append((f"phase:{s['name']}:{s['worker']}", positions[s["span_id"]]))
        elif s["name"] == "job" and not s["parent_span_id"] and not job:
            job = positions[s["span_id"]]
    return keys, job


def _with_descendants(all_spans: list[SpanRef], selected: set[str]) -> list[SpanRef]:
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


def _node_order(node: Row) -> tuple[Any, int, int]:
    return (node["start"] if node["type"] == "span" else node.get("time") or 0.0, _NODE_ORDER[node["type"]],
            node.get("id") or 0)


def _with_last(items: Iterable[_T]) -> Iterator[tuple[bool, _T]]:
    """``(is_last, item)`` for each item, reading one item ahead."""
    iterator = iter(items)
    try:
        current = next(iterator)
    except StopIteration:
        return
    for following in iterator:
        yield False, current
        current = following
    yield True, current
