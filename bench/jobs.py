"""Running real pipeobs jobs for the benchmarks: inputs, entry scripts, the store, CPU accounting."""

from __future__ import annotations

import os
import resource
import sqlite3
import textwrap
import time
from pathlib import Path
from typing import Any

NOOP_SCRIPT = """
def run(mini_batch):
    return mini_batch
"""

SLEEP_SCRIPT = """
import time

def run(mini_batch):
    time.sleep(0.001)
    return mini_batch
"""


def make_files(folder: Path, count: int, names: list[str] | None = None) -> Path:
    """``count`` empty files (or the given names) in ``folder``: one file = one item."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names or (f"f{i:07d}" for i in range(count)):
        os.close(os.open(folder / name, os.O_WRONLY | os.O_CREAT, 0o644))
    return folder


def write_script(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def run_step(
    script: Path,
    inputs: Path,
    runs_dir: Path,
    *,
    name: str = "bench",
    mini_batch_size: int = 1,
    processes: int = 2,
    environment: dict[str, str] | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A real ``ParallelRunStep(...).run()`` (the driver in this process), with its CPU split.

    ``driver_cpu`` is this process's CPU time (every driver thread) during ``run()``;
    ``workers_cpu`` is the CPU time of the worker processes the driver started and reaped
    (``RUSAGE_CHILDREN``); ``driver_maxrss`` is this process's peak RSS (``RUSAGE_SELF``).
    """
    from pipeobs import FileDataset, ParallelRunConfig, ParallelRunStep

    config = ParallelRunConfig(
        entry_script=str(script),
        error_threshold=-1,
        output_action="append_row",
        node_count=1,
        process_count_per_node=processes,
        mini_batch_size=str(mini_batch_size),
        environment_variables=environment or {},
    )
    arguments = [item for key, value in (settings or {}).items() for item in (f"--{key}", str(value))]
    step = ParallelRunStep(name, config, [FileDataset.from_files(str(inputs))], arguments=arguments or None,
                           allow_reuse=False)  # repeated jobs measure runs, never a reuse
    self_before = resource.getrusage(resource.RUSAGE_SELF)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = step.run(runs_dir=str(runs_dir))
    wall = time.perf_counter() - started
    self_after = resource.getrusage(resource.RUSAGE_SELF)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.status != "Completed":
        raise RuntimeError(f"the benchmark job did not complete: {result.reason}")
    return {
        "status": result.status,
        "run_dir": result.run_dir,
        "output_path": result.output_path,
        "mini_batches": result.mini_batches_total,
        "duration": result.duration_seconds,
        "rate": result.mini_batches_total / result.duration_seconds,
        "wall": wall,
        "driver_cpu": _cpu(self_after) - _cpu(self_before),
        "workers_cpu": _cpu(children_after) - _cpu(children_before),
        "driver_maxrss": self_after.ru_maxrss * 1024,
    }


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def query(run_dir: str | Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{Path(run_dir) / 'pipeobs.db'}?mode=ro", uri=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def steady_rate(run_dir: str | Path) -> float | None:
    """Mini-batches/s between the first and the last attempt start (worker start-up excluded)."""
    rows = query(run_dir, "SELECT count(*), min(start_time), max(start_time) FROM attempts")
    count, first, last = rows[0]
    if not count or count < 3 or not last or last <= first:
        return None
    return (count - 1) / (last - first)


def count_lines(path: str | Path, needle: bytes) -> int:
    """Lines of a (possibly large) text file containing ``needle``, read in blocks."""
    total = 0
    with open(path, "rb") as handle:
        for line in handle:
            if needle in line:
                total += 1
    return total
