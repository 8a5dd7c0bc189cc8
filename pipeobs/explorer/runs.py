"""Finding run directories and opening their stores read-only (safe while the run is live)."""

from __future__ import annotations

import glob
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeobs.errors import RunDirError

STORE_NAME = "pipeobs.db"
_SCHEMA_PROBES = (  # what the explorer reads; an older store lacks some of it
    "SELECT step_id FROM runs LIMIT 0",
    "SELECT span_id FROM log_lines LIMIT 0",
    "SELECT labels, span_id FROM metrics LIMIT 0",
    "SELECT span_id FROM spans LIMIT 0",
)


def resolve_run(spec: str, runs_dir: str | Path = "runs") -> Path:
    """The run directory ``spec`` names: a directory holding ``pipeobs.db``, or a step_id."""
    path = Path(spec)
    if (path / STORE_NAME).is_file():
        return path
    if path.name == STORE_NAME and path.is_file():
        return path.parent
    if spec and "/" not in spec and spec not in (".", ".."):
        name = glob.escape(spec)  # a step's run, or a v2 pipeline node's inside its pipeline's run
        matches = sorted(Path(runs_dir).glob(f"*/{name}/{STORE_NAME}")) or sorted(
            Path(runs_dir).glob(f"*/*/*/{name}/{STORE_NAME}"))
        if matches:
            return matches[0].parent
    raise RunDirError(
        f"no run '{spec}': give a run directory (one holding {STORE_NAME}) "
        f"or a step_id found as {Path(runs_dir)}/<step>/<step_id>/"
    )


def connect_readonly(run_dir: str | Path) -> sqlite3.Connection:
    """A read-only connection to the run's store; it never blocks the driver."""
    from pipeobs.record.store import connect

    path = Path(run_dir) / STORE_NAME
    if not path.is_file():
        raise RunDirError(f"no store {path}: not a run directory")
    conn = connect(path, readonly=True)
    try:
        for probe in _SCHEMA_PROBES:
            conn.execute(probe)
    except sqlite3.Error as exc:
        conn.close()
        hint = " (written by an older pipeobs?)" if "no such" in str(exc) else ""
        raise RunDirError(f"cannot read the store {path}: {exc}{hint}") from None
    return conn


@contextmanager
def open_run(run_dir: str | Path) -> Iterator[sqlite3.Connection]:
    """``with open_run(dir) as conn:`` a read-only connection, closed afterwards."""
    conn = connect_readonly(run_dir)
    try:
        yield conn
    finally:
        conn.close()


def find_run_dirs(root: str | Path) -> list[Path]:
    """``root`` itself if it is a run directory, and every ``*/pipeobs.db``, ``*/*/pipeobs.db`` below it; after
    each, the runs of a v2 pipeline's nodes inside it (``<node>/<step_id>/pipeobs.db``)."""
    root = Path(root)
    found = [root] if (root / STORE_NAME).is_file() else []
    for pattern in (f"*/{STORE_NAME}", f"*/*/{STORE_NAME}"):
        found.extend(p.parent for p in sorted(root.glob(pattern)) if p.is_file())
    return [nested for run_dir in found for nested in (run_dir, *_node_runs(run_dir))]


def _node_runs(run_dir: Path) -> list[Path]:
    return [p.parent for p in sorted(run_dir.glob(f"*/*/{STORE_NAME}")) if p.is_file()]


def nest_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``runs`` (in the order to show them) with each pipeline's node runs right after it, in start order,
    and ``depth`` 1 for those (0 for the others)."""
    by_parent: dict[str, list[dict[str, Any]]] = {}
    step_ids = {r.get("step_id") for r in runs}
    for run in runs:
        parent = run.get("parent_step_id")
        if parent and parent in step_ids:
            by_parent.setdefault(parent, []).append(run)
    nested = []
    for run in runs:
        if run.get("parent_step_id") in step_ids and run.get("parent_step_id"):
            continue
        nested.append({**run, "depth": 0})
        children = sorted(by_parent.get(run.get("step_id") or "", []), key=lambda r: (r.get("start") or 0.0))
        nested.extend({**child, "depth": 1} for child in children)
    return nested


def list_runs(root: str | Path) -> list[dict[str, Any]]:
    """One summary per run below ``root``, oldest first; unreadable stores say why."""
    from pipeobs.explorer.queries import run_summary

    runs = []
    for run_dir in find_run_dirs(root):
        try:
            with open_run(run_dir) as conn:
                summary = run_summary(conn)
        except (RunDirError, sqlite3.Error) as exc:
            summary = {"status": "unreadable", "error": str(exc), "start": None}
        runs.append({"run_dir": str(run_dir), **summary})
    runs.sort(key=lambda r: (r.get("start") is None, r.get("start") or 0.0, r["run_dir"]))
    return nest_runs(runs)
