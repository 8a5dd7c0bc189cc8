"""(d) Cost per captured ``print()`` line and per ``logging`` record inside ``run()``.

pipeobs: one job per kind, 2 workers, one mini-batch whose ``run()`` times a loop of K
``print("line", i)`` or ``logging.getLogger("bench").info("line %d", i)`` with
``time.perf_counter()`` and returns the seconds per line as its result row. Inside a worker,
stdout is a line-buffered pipe read by the driver, and a record is a tab-separated marker line on fd 2.
Peers: the same loop in a plain process (``bench.child``), after the same warm-up, into a file.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import jobs
from bench.common import BenchError, Section, Skipped, Target, importable, median, ratio, run_child

ENTRY = """
import logging
import os
import time

K = int(os.environ["BENCH_K"])
WARMUP = int(os.environ["BENCH_WARMUP"])
PIPE_SIZE = int(os.environ.get("BENCH_PIPE_SIZE") or 0)
if PIPE_SIZE:  # a burst measurement: pipes large enough that the driver's pace is never felt
    import fcntl

    for fd in (1, 2):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)

def run(mini_batch):
    kind = os.path.basename(mini_batch[0])
    log = logging.getLogger("bench")
    if kind == "print":
        for i in range(WARMUP):
            print("line", i)
        began = time.perf_counter()
        for i in range(K):
            print("line", i)
    else:
        for i in range(WARMUP):
            log.info("line %d", i)
        began = time.perf_counter()
        for i in range(K):
            log.info("line %d", i)
    return [f"{kind} {(time.perf_counter() - began) / K!r}"]
"""
BURST_PIPE = 1 << 20  # F_SETPIPE_SZ for the burst runs: Linux's default pipe-max-size
BURST_PRINT = 20_000  # ~12-byte lines: ~260 KB with the warm-up, well inside 1 MiB
BURST_LOG = 5_000  # ~60-byte marker lines: well inside the 1 MiB pipe
PRINT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def pipeobs_loop(kind: str, k: int, warmup: int, profile: bool = False, unbuffered: bool = False,
                 pipe_size: int = 0) -> dict[str, Any]:
    """One job: seconds per line measured inside run(); the store must hold every line."""
    with tempfile.TemporaryDirectory(prefix="bench-linecost-") as tmp:
        root = Path(tmp)
        inputs = jobs.make_files(root / "in", 1, names=[kind])
        script = jobs.write_script(root, "entry.py", ENTRY)
        environment = {"BENCH_K": str(k), "BENCH_WARMUP": str(warmup), "BENCH_PIPE_SIZE": str(pipe_size)}
        if unbuffered:
            os.environ["PYTHONUNBUFFERED"] = "1"  # inherited by the workers
        run = jobs.run_step(
            script, inputs, root / "runs", environment=environment,
            settings={"profiling_module": "cProfile"} if profile else None,
        )
        row = Path(run["output_path"]).read_text().split()
        stream = "stdout" if kind == "print" else "log"
        stored = jobs.query(run["run_dir"], "SELECT count(*) FROM log_lines WHERE stream = ? AND phase = 'run'", stream)[0][0]
        if stored != k + warmup:
            raise BenchError(f"the store holds {stored} {stream} lines, expected {k + warmup}")
        result = {"per_line": float(row[1]), "stored": stored}
        if profile:
            result["profile"] = profile_text(run["run_dir"])
    return result


def profile_text(run_dir: str) -> str:
    """The busiest worker's cProfile (written by ``--profiling_module cProfile``), top entries."""
    import io
    import pstats

    paths = sorted(Path(run_dir, "logs", "sys", "node").glob("*/process*.profile"), key=lambda p: p.stat().st_size)
    if not paths:
        return "(no worker profile was written)"
    out = io.StringIO()
    stats = pstats.Stats(str(paths[-1]), stream=out)
    stats.sort_stats("tottime").print_stats(12)
    return _trim_pstats(out.getvalue())


def _trim_pstats(text: str) -> str:
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
    head = [line for line in lines[:start] if "function calls" in line]
    return "\n".join(head + lines[start:]).replace(str(Path.home()), "~")


# ---------------------------------------------------------------------- peers (plain processes)
def _loop(emit: Any, k: int, warmup: int) -> float:
    for i in range(warmup):
        emit(i)
    began = time.perf_counter()
    for i in range(k):
        emit(i)
    return time.perf_counter() - began


def peer_file_handler(k: int, warmup: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        handler = logging.FileHandler(os.path.join(tmp, "log.txt"))
        handler.setFormatter(logging.Formatter(PRINT_FORMAT))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        log = logging.getLogger("bench")
        seconds = _loop(lambda i: log.info("line %d", i), k, warmup)
        handler.close()
    return {"per_line": seconds / k}


def peer_structlog(k: int, warmup: int) -> dict[str, Any]:
    import structlog

    with tempfile.TemporaryDirectory() as tmp, open(os.path.join(tmp, "log.json"), "w") as out:
        structlog.configure(
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso"),
                structlog.processors.JSONRenderer(),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            logger_factory=structlog.WriteLoggerFactory(file=out),
            cache_logger_on_first_use=True,
        )
        log = structlog.get_logger("bench")
        seconds = _loop(lambda i: log.info("line %d", i), k, warmup)
    return {"per_line": seconds / k}


def peer_otel(k: int, warmup: int) -> dict[str, Any]:
    import warnings

    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    try:
        from opentelemetry.sdk._logs.export import LogRecordExporter as Base
        from opentelemetry.sdk._logs.export import LogRecordExportResult as Outcome
    except ImportError:  # older SDKs
        from opentelemetry.sdk._logs.export import LogExporter as Base  # type: ignore[no-redef]
        from opentelemetry.sdk._logs.export import LogExportResult as Outcome  # type: ignore[no-redef]

    class CountingExporter(Base):  # type: ignore[misc, valid-type]
        """A no-op destination that counts what the batch processor hands it."""

        def __init__(self) -> None:
            self.count = 0

        def export(self, batch: Any) -> Any:
            self.count += len(batch)
            return Outcome.SUCCESS

        def shutdown(self) -> None:
            pass

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    exporter = CountingExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the SDK's handler is deprecated, still shipped
        handler = LoggingHandler(level=logging.INFO, logger_provider=provider)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    log = logging.getLogger("bench")
    for i in range(warmup):
        log.info("line %d", i)
    provider.force_flush()
    exporter.count = 0
    began = time.perf_counter()
    for i in range(k):
        log.info("line %d", i)
    provider.force_flush()  # the batch thread's work is part of the cost
    seconds = time.perf_counter() - began
    provider.shutdown()
    return {"per_line": seconds / k, "exported": exporter.count}


def peer_print_pipe(k: int, warmup: int) -> dict[str, Any]:
    """The floor of fd-level capture: a line-buffered print() into a pipe another process drains."""
    import subprocess

    reader = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert reader.stdin is not None
    with open(reader.stdin.fileno(), "w", buffering=1, closefd=False) as out:
        seconds = _loop(lambda i: print("line", i, file=out), k, warmup)
    reader.stdin.close()
    reader.wait()
    return {"per_line": seconds / k}


def peer_print_file(k: int, warmup: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, open(os.path.join(tmp, "out.txt"), "w") as out:
        seconds = _loop(lambda i: print("line", i, file=out), k, warmup)
    return {"per_line": seconds / k}


# ---------------------------------------------------------------------- the section
def bench_linecost(sizes: dict[str, Any]) -> Section:
    k, warmup, repeats = sizes["line_k"], sizes["line_warmup"], sizes["repeats"]
    section = Section(
        "linecost",
        "(d) Cost per captured line / record inside run()",
        f"K = {k:,} lines after {warmup:,} warm-up lines, median of {repeats}. " + (__doc__ or "").split("\n\n", 1)[1].replace("\n", " ")
        + f" FileHandler uses the format `{PRINT_FORMAT}`; structlog renders add_log_level + ISO TimeStamper + "
        "JSONRenderer through WriteLoggerFactory; OpenTelemetry's LoggingHandler feeds a BatchLogRecordProcessor "
        "with a counting no-op exporter, and its time includes the final force_flush().",
    )
    def ours_median(kind: str, count: int, warm: int, unbuffered: bool = False, pipe_size: int = 0) -> float:
        runs = [run_child("linecost:pipeobs_loop", 300, kind=kind, k=count, warmup=warm, unbuffered=unbuffered,
                          pipe_size=pipe_size) for _ in range(repeats)]
        return median([r["per_line"] for r in runs]) * 1e6

    ours = {"print": ours_median("print", k, warmup), "log": ours_median("log", k, warmup)}
    burst: dict[str, float | None] = {"print": None, "log": None}
    unbuffered_print = None
    if sizes["line_variants"]:  # the same code path as above with other sizes: not needed in a smoke run
        burst = {"print": ours_median("print", BURST_PRINT, BURST_PRINT // 10, pipe_size=BURST_PIPE),
                 "log": ours_median("log", BURST_LOG, BURST_LOG // 10, pipe_size=BURST_PIPE)}
        unbuffered_print = ours_median("print", BURST_PRINT, BURST_PRINT // 10, unbuffered=True, pipe_size=BURST_PIPE)
    peers: dict[str, float | None] = {}
    for name, function in (
        ("stdlib logging.FileHandler", "peer_file_handler"),
        ("structlog JSON (WriteLoggerFactory)", "peer_structlog"),
        ("OpenTelemetry LoggingHandler + BatchLogRecordProcessor", "peer_otel"),
        ("print() into a file", "peer_print_file"),
        ("reference: line-buffered print() into a pipe (reader: cat)", "peer_print_pipe"),
    ):
        if function == "peer_structlog" and not importable("structlog"):
            peers[name] = None
            continue
        try:
            results = [run_child(f"linecost:{function}", 300, k=k, warmup=warmup) for _ in range(repeats)]
        except (BenchError, Skipped) as exc:
            section.notes.append(f"{name}: {exc}")
            peers[name] = None
            continue
        peers[name] = median([r["per_line"] for r in results]) * 1e6
        if "exported" in results[-1] and results[-1]["exported"] != k:
            section.notes.append(f"{name}: the batch processor exported {results[-1]['exported']:,} of {k:,} records.")
    file_handler = peers["stdlib logging.FileHandler"]
    section.add("pipeobs captured print() in run()", ours["print"], "µs/line", f"{ratio(ours['print'], file_handler)} FileHandler")
    section.add("pipeobs captured logging record in run()", ours["log"], "µs/record", f"{ratio(ours['log'], file_handler)} FileHandler")
    if sizes["line_variants"]:
        section.add(f"pipeobs print(), burst of {BURST_PRINT:,}", burst["print"], "µs/line", "",
                    "worker-side cost alone: run() enlarges its stdout/stderr pipes to 1 MiB (F_SETPIPE_SZ), so the "
                    "burst fits and the driver's pace is not felt")
        section.add(f"pipeobs logging record, burst of {BURST_LOG:,}", burst["log"], "µs/record", "", "worker-side cost alone (same)")
        section.add(f"pipeobs print(), burst of {BURST_PRINT:,}, PYTHONUNBUFFERED=1", unbuffered_print, "µs/line",
                    f"{ratio(unbuffered_print, burst['print'])} default",
                    "as many shells and container images set it; the worker turns write_through off, so a "
                    "print() stays one write syscall per line")
    for name, value in peers.items():
        if value is None:
            section.skip(name, "not installed")
        else:
            section.add(name, value, "µs/line", f"pipeobs record = {ratio(ours['log'], value)}")
    section.targets.append(Target("captured print() <= 2 µs in the worker", f"{ours['print']:.2f} µs", ours["print"] <= 2.0))
    if file_handler:
        section.targets.append(Target("captured print() <= stdlib FileHandler's cost", f"{ours['print']:.2f} vs {file_handler:.2f} µs",
                                      ours["print"] <= file_handler))
        section.targets.append(Target("captured logging record <= stdlib FileHandler's cost", f"{ours['log']:.2f} vs {file_handler:.2f} µs",
                                      ours["log"] <= file_handler))
    section.data = {"ours": ours, "burst": burst, "peers": peers}
    return section
