"""(e) End-to-end capture throughput: lines/s from 2 workers into the store and the driver log.

A real job of M mini-batches, each printing (or logging) L lines, 2 workers; lines/s = lines /
the JobResult's ``duration_seconds``. The count is verified in the store's ``log_lines`` table
and in ``azureml-logs/70_driver_log.txt`` (every line must be in both, or the section fails).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench import jobs
from bench.common import BenchError, Section, median, run_child

ENTRY = """
import logging
import os

LINES = int(os.environ["BENCH_LINES"])
KIND = os.environ["BENCH_KIND"]

def run(mini_batch):
    if KIND == "print":
        for i in range(LINES):
            print("bench-capture", i)
    else:
        log = logging.getLogger("bench")
        for i in range(LINES):
            log.info("bench-capture %d", i)
    return mini_batch
"""


def capture_job(kind: str, mini_batches: int, lines: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-capture-") as tmp:
        root = Path(tmp)
        inputs = jobs.make_files(root / "in", mini_batches)
        script = jobs.write_script(root, "entry.py", ENTRY)
        # The same job printing nothing: loads the driver's modules in this process and gives the
        # CPU that is not per line, so the figures below are marginal CPU per line.
        base = jobs.run_step(script, inputs, root / "runs", environment={"BENCH_LINES": "0", "BENCH_KIND": kind})
        run = jobs.run_step(script, inputs, root / "runs",
                            environment={"BENCH_LINES": str(lines), "BENCH_KIND": kind})
        expected = mini_batches * lines
        stream = "stdout" if kind == "print" else "log"
        stored = jobs.query(run["run_dir"], "SELECT count(*) FROM log_lines WHERE stream = ? AND phase = 'run'", stream)[0][0]
        logged = jobs.count_lines(Path(run["run_dir"]) / "azureml-logs" / "70_driver_log.txt", b" bench-capture ")
        if stored != expected or logged != expected:
            raise BenchError(f"{kind}: expected {expected} lines, the store has {stored}, the driver log {logged}")
    return {"lines": expected, "duration": run["duration"], "rate": expected / run["duration"],
            "driver_cpu_us": max(0.0, run["driver_cpu"] - base["driver_cpu"]) / expected * 1e6,
            "workers_cpu_us": max(0.0, run["workers_cpu"] - base["workers_cpu"]) / expected * 1e6}


def bench_capture(sizes: dict[str, Any]) -> Section:
    repeats = sizes["repeats"]
    section = Section(
        "capture",
        "(e) End-to-end capture throughput, 2 workers -> store + driver log",
        (__doc__ or "").split("\n\n", 1)[1].replace("\n", " ") + f" Median of {repeats} jobs.",
    )
    for kind, unit, (mini_batches, lines) in (
        ("print", "lines/s", sizes["capture_print"]),
        ("log", "records/s", sizes["capture_log"]),
    ):
        runs = [run_child("throughput:capture_job", 600, kind=kind, mini_batches=mini_batches, lines=lines)
                for _ in range(repeats)]
        best = sorted(runs, key=lambda r: r["rate"])[len(runs) // 2]
        what = "print()" if kind == "print" else "logging.info()"
        section.add(f"pipeobs {what}, {mini_batches * lines:,} in {mini_batches} mini-batches", median([r["rate"] for r in runs]),
                    unit, "", f"{best['duration']:.2f} s; marginal CPU per line: driver {best['driver_cpu_us']:.1f} µs, "
                    f"workers {best['workers_cpu_us']:.1f} µs; counts verified in log_lines and the driver log")
        section.data[kind] = best
    section.notes.append("No target in the issue; the driver's CPU per line bounds (d)'s sustained per-line cost.")
    return section
