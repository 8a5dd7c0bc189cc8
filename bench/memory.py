"""(g) Driver memory over a long run: N mini-batches printing L lines each (full: 100,000 and 1,000,000).

The driver is the real ``pipeobs run`` command in a subprocess (its workers are its children);
this process samples the driver's RSS with psutil every ``interval`` seconds and its peak
(``VmHWM``) until it exits. Reported: RSS at 10 %, 50 % and 95 % of the processing window (first
attempt start to last attempt end, from the store: start-up and the end-of-run reports are
outside it), the peak, and the growth from 10 % to 95 %. Flat = that growth is under 10 % of
the 10 % figure.
The line and mini-batch counts are verified in the store afterwards.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import jobs
from bench.common import MB, BenchError, RssSampler, Section, Target, child_env, pipeobs_command

ENTRY = """
import os

LINES = int(os.environ["BENCH_LINES"])

def run(mini_batch):
    for i in range(LINES):
        print("bench-memory", i)
    return mini_batch
"""
FLAT = 0.10


def long_run(mini_batches: int, lines: int, interval: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        root = Path(tmp)
        inputs = jobs.make_files(root / "in", mini_batches)
        script = jobs.write_script(root, "entry.py", ENTRY)
        command = [*pipeobs_command(), "run", str(script), "--input", str(inputs), "--mini-batch-size", "1",
                   "--process-count-per-node", "2", "--output-action", "append_row", "--runs-dir", str(root / "runs")]
        with open(root / "out.txt", "wb") as out:
            began = time.perf_counter()
            proc = subprocess.Popen(command, stdout=out, stderr=out, env=child_env({"BENCH_LINES": str(lines)}))
            sampler = RssSampler(proc.pid, interval)
            code = proc.wait()
            wall = time.perf_counter() - began
            sampler.stop()
        if code != 0:
            raise BenchError(f"pipeobs run exited {code}: {(root / 'out.txt').read_text()[-500:]}")
        run_dir = next((root / "runs").glob("*/*"))
        stored = jobs.query(run_dir, "SELECT count(*) FROM log_lines WHERE stream = 'stdout' AND phase = 'run'")[0][0]
        done = jobs.query(run_dir, "SELECT count(*) FROM mini_batches WHERE status = 'done'")[0][0]
        db_size = sum(p.stat().st_size for p in run_dir.glob("pipeobs.db*"))
        first_start, last_end = jobs.query(run_dir, "SELECT min(start_time), max(start_time + elapsed) FROM attempts")[0]
    peak_at, peak_rss = max(sampler.samples, key=lambda s: s[1]) if sampler.samples else (0.0, 0)
    before_end = [rss for t, rss in sampler.samples if t + sampler.wall_offset <= last_end]
    if stored != mini_batches * lines or done != mini_batches:
        raise BenchError(f"expected {mini_batches} done and {mini_batches * lines} lines; store has {done} and {stored}")
    return {
        "wall": wall, "samples": len(sampler.samples), "peak": sampler.peak_kb * 1024,
        "rss": {str(f): sampler.at(f, (first_start, last_end)) for f in (0.0, 0.1, 0.25, 0.5, 0.75, 0.95, 1.0)},
        "processing": last_end - first_start,
        "last_sample": sampler.samples[-1][1] if sampler.samples else 0,
        "lines": stored, "mini_batches": done, "db_size": db_size,
        "max_sample": peak_rss, "max_sample_after_last_mini_batch": peak_at + sampler.wall_offset - last_end,
        "max_before_last_mini_batch": max(before_end) if before_end else 0,
    }


def bench_memory(sizes: dict[str, Any]) -> Section:
    mini_batches, lines = sizes["memory_mini_batches"], sizes["memory_lines"]
    section = Section(
        "memory",
        f"(g) Driver memory over a run of {mini_batches:,} mini-batches and {mini_batches * lines:,} log lines",
        (__doc__ or "").split("\n\n", 1)[1].replace("\n", " "),
    )
    result = long_run(mini_batches, lines, sizes["memory_interval"])
    rss = result["rss"]
    start, middle, end = rss["0.1"], rss["0.5"], rss["0.95"]
    section.add("driver RSS at 10 % of the processing window", start / MB, "MB")
    section.add("driver RSS at 50 %", middle / MB, "MB")
    section.add("driver RSS at 95 %", end / MB, "MB", "", f"last sample before exit {result['last_sample'] / MB:.0f} MB")
    section.add("driver peak RSS (VmHWM)", result["peak"] / MB, "MB")
    growth = (end - start) / start if start else 0.0
    section.add("growth 10 % -> 95 %", (end - start) / MB, "MB", f"{growth:+.1%}")
    section.add("whole run", result["wall"], "s", "",
                f"{result['mini_batches']:,} mini-batches and {result['lines']:,} lines verified in the store "
                f"({result['db_size'] / MB:.0f} MB); processing window {result['processing']:.1f} s; {result['samples']} RSS samples")
    curve = ", ".join(f"{float(k):.0%} {v / MB:.0f}" for k, v in rss.items())
    section.notes.append(f"RSS over the processing window (MB): {curve}.")
    section.targets.append(Target(f"driver memory flat (10 % -> 95 % growth < {FLAT:.0%})", f"{growth:+.1%}", growth < FLAT))
    section.data = result
    return section

