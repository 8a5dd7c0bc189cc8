"""Profiles for missed targets: what limits pipeobs, measured.

* A job profiled on both sides: the driver with ``cProfile`` around ``ParallelRunStep.run()`` (the
  driver's event loop runs in the calling thread), the workers with pipeobs's own
  ``--profiling_module cProfile`` (``logs/sys/node/0/processNNN.profile``). Summaries: own time
  per source file and the top functions.
* The Application Insights exporter: ``export()`` of 512-record batches profiled in the main
  thread (Delivery's sender thread runs exactly that call, which cProfile cannot see there).

The ``.prof`` files are kept in ``bench/out/profiles/`` (ignored by git) for ``snakeviz`` or
``python -m pstats``.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import jobs
from bench.common import REPO

OUT = Path(os.environ.get("BENCH_PROFILE_DIR") or REPO / "bench" / "out" / "profiles")


def _short(filename: str) -> str:
    path = filename.replace("\\", "/")
    for package in ("pipeobs_appinsights", "pipeobs"):
        if f"/{package}/" in path:
            return f"{package}/" + path.rsplit(f"/{package}/", 1)[1]
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    if "/lib/python3" in path:
        return "stdlib " + path.split("/lib/python3", 1)[1].split("/", 1)[1]
    return Path(path).name


def _label(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    if filename == "~":
        return name
    return f"{_short(filename)}:{line}({name})"


DRIVER_WAITS = ("<method 'poll' of 'select.epoll' objects>", "<built-in method time.sleep>")
WORKER_WAITS = ("<built-in method posix.read>",)  # the worker's blocking recv() of its next task


def _builtin_kind(label: str) -> str:
    """Built-in (C) functions, by what they do."""
    for needle, kind in (("sqlite3", "C: sqlite3"), ("pickle", "C: pickle"), ("json", "C: json"), ("scanner", "C: json"),
                         ("posix.", "C: syscalls (os.read/write/...)"), ("select", "C: syscalls (os.read/write/...)"),
                         ("socket", "C: syscalls (sockets)"), ("_io.", "C: io (file objects)"), ("io.open", "C: io (file objects)"),
                         ("builtins.print", "C: print() (its writes)")):
        if needle in label:
            return kind
    return "C: other built-ins"


def summarize(stats: pstats.Stats, total_label: str, per: int, waits: tuple[str, ...] = (), top: int = 12) -> str:
    """Own time grouped by file, then the top functions; µs per ``per`` unit of work.

    Functions named in ``waits`` are idle time (blocking for the next event): reported apart and
    left out of the busy time the shares are taken of.
    """
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    idle = sum(entry[2] for func, entry in raw.items() if _label(func) in waits)
    busy = sum(entry[2] for entry in raw.values()) - idle
    by_file: dict[str, float] = {}
    for func, (_cc, _nc, tottime, _ct, _callers) in raw.items():
        if _label(func) in waits:
            continue
        key = _builtin_kind(_label(func)) if func[0] == "~" else _short(func[0])
        by_file[key] = by_file.get(key, 0.0) + tottime
    lines = [f"{total_label}: busy {busy:.3f} s = {busy / per * 1e6:.1f} µs per unit ({per:,} units); "
             f"idle (waiting: {', '.join(waits) or 'none'}) {idle:.3f} s",
             "  busy own time by file:"]
    for name, seconds in sorted(by_file.items(), key=lambda kv: -kv[1])[:8]:
        lines.append(f"    {seconds / busy:6.1%}  {seconds / per * 1e6:7.1f} µs  {name}")
    lines.append("  top functions by own time (calls, own µs/unit, cumulative µs/unit):")
    ranked = sorted(((f, e) for f, e in raw.items() if _label(f) not in waits), key=lambda kv: -kv[1][2])[:top]
    for func, (_cc, calls, tottime, cumtime, _callers) in ranked:
        lines.append(f"    {calls:>9,}  {tottime / per * 1e6:7.1f}  {cumtime / per * 1e6:8.1f}  {_label(func)}")
    return "\n".join(lines)


def _worker_stats(run_dir: str) -> pstats.Stats | None:
    paths = sorted(Path(run_dir, "logs", "sys", "node").glob("*/process*.profile"))
    if not paths:
        return None
    stats = pstats.Stats(str(paths[0]), stream=io.StringIO())
    for path in paths[1:]:
        stats.add(str(path))
    return stats


def profiled_job(name: str, script: str, files: int, per: int, environment: dict[str, str] | None = None,
                 names: list[str] | None = None) -> dict[str, Any]:
    """Run one job with the driver and the workers profiled; ``per`` is the unit of work (lines, mini-batches)."""
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        root = Path(tmp)
        inputs = jobs.make_files(root / "in", files, names=names)
        entry = jobs.write_script(root, "entry.py", script)
        # A warm-up job first, unprofiled: the driver's imports are not what a job costs.
        warm = jobs.make_files(root / "warm", 1, names=names[:1] if names else None)
        jobs.run_step(entry, warm, root / "runs", environment={**(environment or {}), "BENCH_K": "1", "BENCH_WARMUP": "0"})
        profiler = cProfile.Profile()
        profiler.enable()
        run = jobs.run_step(entry, inputs, root / "runs", environment=environment,
                            settings={"profiling_module": "cProfile"})
        profiler.disable()
        driver = pstats.Stats(profiler, stream=io.StringIO())
        workers = _worker_stats(run["run_dir"])
        OUT.mkdir(parents=True, exist_ok=True)
        driver.dump_stats(str(OUT / f"{name}-driver.prof"))
        text = [summarize(driver, "driver (cProfile, event-loop thread)", per, DRIVER_WAITS)]
        if workers is not None:
            workers.dump_stats(str(OUT / f"{name}-workers.prof"))
            text.append(summarize(workers, "workers (--profiling_module cProfile, both merged)", per, WORKER_WAITS))
    return {"text": "\n\n".join(text), "rate": run["rate"],
            "files": [_shown(OUT / f"{name}-driver.prof"), _shown(OUT / f"{name}-workers.prof")]}


def profile_dispatch(n: int) -> dict[str, Any]:
    return profiled_job("dispatch", jobs.NOOP_SCRIPT, n, n)


def profile_lines(kind: str, k: int) -> dict[str, Any]:
    from bench.linecost import ENTRY

    return profiled_job(f"linecost-{kind}", ENTRY, 1, k, environment={"BENCH_K": str(k), "BENCH_WARMUP": "0"},
                        names=[kind])


def profile_exporter(url: str, batches: int) -> dict[str, Any]:
    """``AppInsightsExporter.export()`` of 512-record batches against the sink, in this thread."""
    from pipeobs_appinsights import AppInsightsExporter

    from bench.exporters import _record, connection_string

    exporter = AppInsightsExporter(connection_string(url))
    batch = [_record(i) for i in range(512)]
    exporter.export(batch)  # warm-up: imports, first connection
    profiler = cProfile.Profile()
    began = time.perf_counter()
    profiler.enable()
    for _ in range(batches):
        exporter.export(batch)
    profiler.disable()
    seconds = time.perf_counter() - began
    exporter.shutdown()
    stats = pstats.Stats(profiler, stream=io.StringIO())
    OUT.mkdir(parents=True, exist_ok=True)
    stats.dump_stats(str(OUT / "exporter.prof"))
    per = batches * 512
    text = summarize(stats, "AppInsightsExporter.export() (cProfile)", per, top=14)
    return {"text": text, "records_per_s_profiled": per / seconds,
            "files": [_shown(OUT / "exporter.prof")]}


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
