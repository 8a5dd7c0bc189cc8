"""``pipeobs.load(run)``: a run's store as pandas DataFrames (needs ``pipeobs[tabular]``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TABLES = ("runs", "mini_batches", "attempts", "spans", "logs", "metrics", "workers", "events")
_SOURCES = {"logs": "log_lines"}


@dataclass
class RunData:
    """DataFrames of one run: ``spans``, ``logs``, ``metrics``, ``mini_batches`` and the rest.

    Times are epoch seconds; ``attributes``/``events``/``labels`` columns hold JSON text. ``metrics.id`` is a
    nullable integer: the per-attempt observations, read from the attempt rows, have none.
    """

    run_dir: str
    runs: Any
    mini_batches: Any
    attempts: Any
    spans: Any
    logs: Any
    metrics: Any
    workers: Any
    events: Any


def load(run: str | os.PathLike[str], runs_dir: str | os.PathLike[str] = "runs") -> RunData:
    """Read a run directory (or a step_id found under ``runs_dir``), live or finished."""
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("pipeobs.load needs pandas: pip install 'pipeobs[tabular]'") from None
    from pipeobs.explorer.queries import metric_rows
    from pipeobs.explorer.runs import open_run, resolve_run

    run_dir = resolve_run(str(run), Path(runs_dir))
    with open_run(run_dir) as conn:
        sources = {**_SOURCES, "metrics": metric_rows(conn)}  # with the per-attempt observations the attempts hold
        frames = {name: pd.read_sql_query(f"SELECT * FROM {sources.get(name, name)}", conn) for name in TABLES}
    frames["metrics"]["id"] = frames["metrics"]["id"].astype("Int64")  # the observations read from attempts have none
    return RunData(run_dir=str(run_dir), **frames)
