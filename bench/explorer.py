"""(i) The explorer at scale: ``pipeobs trace RUN`` and ``pipeobs logs RUN --json`` over a large run.

The run is synthetic, written row by row through ``pipeobs.record.store.Store`` (no job runs):
M mini-batches on 8 workers, each with its ``mini_batch`` span, a user span inside it and L / M
captured lines (stdout, stderr and log records), the job span, an ``init`` span and line per worker,
and the ledger (mini-batches, attempts, workers). Full size: L = 200,000 lines, M = 20,000.

Every command runs in its own process, stdout to a pipe that the measuring process reads to the
end (in a fresh interpreter, so ``getrusage(RUSAGE_CHILDREN)`` is the command's own peak RSS):
time to the first line, total time, peak RSS, lines and bytes. The floor: a Python process that
runs ``SELECT * FROM log_lines`` with the ``sqlite3`` module and prints ``json.dumps`` of each row,
one per line (no filter, no tree, no escaping).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import MB, PYTHON, BenchError, Section, Target, child_env, pipeobs_command, ratio, run_child

STEP_ID = "bench-explorer_20270101_000000_000000"
WORKERS = 8
T0 = 1_800_000_000.0
FIRST_LINE_SECONDS = 1.0
PEAK_RSS_MB = 150
FLOOR = """
import json, sqlite3, sys
conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
cursor = conn.execute("SELECT * FROM log_lines")
names = [d[0] for d in cursor.description]
for row in cursor:
    print(json.dumps(dict(zip(names, row))))
"""


# ---------------------------------------------------------------------- subjects (child processes)
def build_store(run_dir: str, mini_batches: int, lines: int) -> dict[str, Any]:
    """A finished run of ``mini_batches`` mini-batches and about ``lines`` captured lines, written through Store."""
    from pipeobs.record.store import Store, WorkerRow

    began = time.perf_counter()
    store = Store(Path(run_dir) / "pipeobs.db", STEP_ID)
    store.insert_run({"step_id": STEP_ID, "step_name": "bench-explorer", "status": "Completed", "started_at": T0,
                      "ended_at": T0 + mini_batches * 0.01 + 1.0, "entry_script": "score.py"})
    store.insert("spans", _span("job", None, "job", 0.0, mini_batches * 0.01 + 1.0, "driver"))
    workers = [f"{i // 4}/process{i % 4:03d}" for i in range(WORKERS)]
    for i, worker in enumerate(workers):
        store.put_worker(WorkerRow(worker, i // 4, worker.split("/")[1], 1000 + i, started=T0, ended=T0 + 1.0, returncode=0))
        store.insert("spans", _span(f"init{i}", "job", "init", 0.1, 0.5, worker))
        store.insert("log_lines", _line(0.2, worker, "init", None, f"init: loading the model on {worker}", f"init{i}"))
    per_batch = max(1, lines // mini_batches)
    for mb in range(mini_batches):
        worker, start = workers[mb % WORKERS], 1.0 + mb * 0.01
        store.add_mini_batch(mb, json.dumps({"id": mb, "item_count": 4}))
        store.finish_mini_batch(mb, status="done", attempts=1, total=4, succeeded=4, worker=worker, output_end=None)
        store.insert("attempts", {"mini_batch_id": mb, "attempt": 1, "worker": worker, "pid": 1000, "start_time": T0 + start,
                                  "elapsed": 0.08, "run_seconds": 0.07, "total": 4, "succeeded": 4, "failed": 0,
                                  "status": "RUN_DONE"})
        attributes = {"pipeobs.step_id": STEP_ID, "pipeobs.mini_batch_id": mb, "pipeobs.attempt": 1,
                      "pipeobs.worker": worker, "pipeobs.items.total": 4, "pipeobs.status": "RUN_DONE",
                      "pipeobs.inputs": [f"images/{mb * 4 + k:07d}.png" for k in range(4)]}
        store.insert("spans", _span(f"mb{mb}", "job", "mini_batch", start, start + 0.08, worker, mb, attributes))
        store.insert("spans", _span(f"score{mb}", f"mb{mb}", "score", start + 0.01, start + 0.07, worker, mb))
        for k in range(per_batch):
            stream, level = (("log", "INFO"), ("stdout", None), ("stderr", None))[k % 3]
            line = _line(start + 0.001 * (k + 1), worker, "run", mb, f"mini-batch {mb}: item {k} scored 0.{k:03d}",
                         f"mb{mb}", stream, level)
            store.insert("log_lines", line)
        if mb % 1000 == 999:
            store.flush()
    store.flush()
    store.close()
    return {"seconds": time.perf_counter() - began, "lines": WORKERS + mini_batches * per_batch,
            "spans": 1 + WORKERS + 2 * mini_batches}


def _span(span_id: str, parent: str | None, name: str, start: float, end: float, worker: str, mb: int | None = None,
          attributes: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"span_id": span_id, "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "parent_span_id": parent, "name": name,
            "kind": "CONSUMER" if name in ("job", "mini_batch") else "INTERNAL", "start_time": T0 + start,
            "end_time": T0 + end, "status": "OK", "worker": worker, "mini_batch_id": mb,
            "attempt": None if mb is None else 1, "attributes": attributes or {}, "events": []}


def _line(at: float, worker: str, phase: str, mb: int | None, text: str, span_id: str, stream: str = "stdout",
          level: str | None = None) -> dict[str, Any]:
    return {"time": T0 + at, "worker": worker, "stream": stream, "phase": phase, "mini_batch_id": mb,
            "attempt": None if mb is None else 1, "level": level, "logger": "score" if level else None, "text": text,
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": span_id}


def measure(argv: list[str]) -> dict[str, Any]:
    """Run ``argv`` with stdout to a pipe read here to the end: first line, total, peak RSS (this child's only child)."""
    with tempfile.TemporaryFile() as errors:
        began = time.perf_counter()
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, env=child_env())
        assert process.stdout is not None
        first, lines, size = None, 0, 0
        while chunk := os.read(process.stdout.fileno(), 1 << 16):
            if first is None and b"\n" in chunk:
                first = time.perf_counter() - began
            lines += chunk.count(b"\n")
            size += len(chunk)
        code = process.wait()
        total = time.perf_counter() - began
        errors.seek(0)
        tail = errors.read()[-1000:].decode(errors="replace")
    if code != 0:
        raise BenchError(f"{' '.join(argv[-3:])} exited {code}: {tail}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # kB on Linux
    return {"first_line": first, "seconds": total, "peak": peak, "lines": lines, "bytes": size}


# ---------------------------------------------------------------------- the section
def bench_explorer(sizes: dict[str, Any]) -> Section:
    mini_batches, lines = sizes["explorer_mini_batches"], sizes["explorer_lines"]
    section = Section(
        "explorer",
        f"(i) The explorer at scale: `pipeobs trace` and `pipeobs logs --json` over {lines:,} lines and "
        f"{mini_batches:,} mini-batches",
        f"A finished run written row by row through `pipeobs.record.store.Store` (no job runs): {mini_batches:,} "
        f"mini-batches on {WORKERS} workers, each with its `mini_batch` span, a user span inside it and "
        f"{lines // mini_batches:,} captured lines, plus the job span and an `init` span and line per worker. Each command "
        "runs in its own process with stdout to a pipe that a fresh interpreter reads to the end: time to the first "
        "line, total time, peak RSS (`getrusage(RUSAGE_CHILDREN)` of that interpreter, whose only child it is). The "
        "floor: a Python process running `SELECT * FROM log_lines` with the `sqlite3` module and printing "
        "`json.dumps` of each row (no filter, no tree, no escaping).",
    )
    with tempfile.TemporaryDirectory(prefix="bench-explorer-") as tmp:
        store = run_child("explorer:build_store", 600, run_dir=tmp, mini_batches=mini_batches, lines=lines)
        subjects = {
            "pipeobs trace RUN": [*pipeobs_command(), "trace", tmp],
            "pipeobs logs RUN --json": [*pipeobs_command(), "logs", tmp, "--json"],
            "floor: sqlite3 SELECT * FROM log_lines, json.dumps per row": [PYTHON, "-c", FLOOR, f"{tmp}/pipeobs.db"],
        }
        results = {name: run_child("explorer:measure", 900, argv=argv) for name, argv in subjects.items()}
    floor = results["floor: sqlite3 SELECT * FROM log_lines, json.dumps per row"]
    expected = {"pipeobs trace RUN": store["lines"] + store["spans"] + 1, "pipeobs logs RUN --json": store["lines"]}
    for name, result in results.items():
        if name in expected and result["lines"] < expected[name]:
            raise BenchError(f"{name} printed {result['lines']:,} lines, expected at least {expected[name]:,}")
        detail = f"{result['lines']:,} lines, {result['bytes'] / MB:.1f} MB of output"
        section.add(f"{name}: first line", result["first_line"], "s", f"{ratio(result['first_line'], floor['first_line'])} the floor")
        section.add(f"{name}: total", result["seconds"], "s", f"{ratio(result['seconds'], floor['seconds'])} the floor", detail)
        section.add(f"{name}: peak RSS", result["peak"] / MB, "MB", f"{ratio(result['peak'], floor['peak'])} the floor")
    for name in expected:
        result = results[name]
        section.targets.append(Target(f"{name}: first line < {FIRST_LINE_SECONDS:.0f} s", f"{result['first_line']:.2f} s",
                                      result["first_line"] < FIRST_LINE_SECONDS))
        section.targets.append(Target(f"{name}: peak RSS < {PEAK_RSS_MB} MB", f"{result['peak'] / MB:.0f} MB",
                                      result["peak"] / MB < PEAK_RSS_MB))
    section.notes.append(f"The store: {store['lines']:,} lines and {store['spans']:,} spans, written in {store['seconds']:.1f} s.")
    section.data = {"results": results, "store": store}
    return section
