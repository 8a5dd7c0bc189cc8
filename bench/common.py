"""What every benchmark shares: the result model, child processes, samplers, the machine block."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
RESULT_MARK = "BENCH-RESULT "
MB = 1024 * 1024
LIBRARIES = (
    "pipeobs", "pipeobs-appinsights", "pandas", "opentelemetry-sdk", "structlog", "psutil", "ray", "dask",
    "distributed", "opencensus", "opencensus-ext-azure", "pyinstrument",
)


class BenchError(RuntimeError):
    """A benchmark could not run (a child failed, a count did not match)."""


class Skipped(Exception):  # noqa: N818 - it is not an error: the peer is not installed
    """A peer is not available here; the message says why (e.g. ``not installed``)."""


@dataclass
class Row:
    """One measured subject: ``value`` in ``unit``, with a ratio against the section's reference."""

    subject: str
    value: float | None
    unit: str
    ratio: str = ""
    note: str = ""

    def shown(self) -> str:
        if self.value is None:
            return "-"
        return fmt(self.value)


@dataclass
class Target:
    """One target of the issue and whether this run met it (None: could not be judged)."""

    text: str
    measured: str
    met: bool | None

    @property
    def verdict(self) -> str:
        return {True: "met", False: "MISSED", None: "not judged"}[self.met]


@dataclass
class Section:
    """A benchmark's results: its table, targets, method notes and (when a target is missed) profile."""

    key: str
    title: str
    method: str
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profile: str = ""
    error: str = ""
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)  # raw figures, for profiling decisions

    def add(self, subject: str, value: float | None, unit: str, ratio: str = "", note: str = "") -> Row:
        row = Row(subject, value, unit, ratio, note)
        self.rows.append(row)
        return row

    def skip(self, subject: str, reason: str) -> None:
        self.rows.append(Row(subject, None, "", "", f"skipped ({reason})"))

    @property
    def missed(self) -> bool:
        return any(t.met is False for t in self.targets)


def fmt(value: float) -> str:
    """Three significant figures, thousands separated: 21,800 / 46.2 / 0.912."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def per_second(microseconds: float, units: float = 1.0) -> str:
    """``units`` per second at ``microseconds`` each, as text ("n/a" for a zero cost)."""
    return f"{units * 1e6 / microseconds:,.0f}" if microseconds > 0 else "n/a"


def ratio(value: float | None, reference: float | None) -> str:
    if not value or not reference:
        return ""
    return f"{value / reference:.2f}x"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# ---------------------------------------------------------------------- child processes
def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a benchmark child: ``bench`` importable, no proxy for loopback."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.pop("PYTHONSTARTUP", None)
    # Python's default stdio buffering: PYTHONUNBUFFERED=1 (set by many shells and images) turns
    # every print() into several write syscalls; (d) measures that case separately.
    env.pop("PYTHONUNBUFFERED", None)
    env.update(extra or {})
    return env


def run_child(function: str, timeout: float, env: dict[str, str] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run ``bench.<module>:<function>(**kwargs)`` in a fresh interpreter and return its JSON result.

    Every measurement runs in its own process, so no benchmark inherits another's threads,
    imports, global tracer provider or Ray/Dask runtime.
    """
    command = [PYTHON, "-m", "bench.child", function, json.dumps(kwargs)]
    try:
        done = subprocess.run(
            command, cwd=REPO, env=child_env(env), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{function} did not finish within {timeout:.0f} s") from exc
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            result = json.loads(line[len(RESULT_MARK) :])
            if "skipped" in result:
                raise Skipped(result["skipped"])
            if "error" in result:
                raise BenchError(f"{function}: {result['error']}")
            return result
    tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
    raise BenchError(f"{function} exited {done.returncode} without a result:\n{tail}")


def importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def pipeobs_command() -> list[str]:
    """The ``pipeobs`` console script of this interpreter (``python -m pipeobs`` without one)."""
    script = Path(PYTHON).parent / "pipeobs"
    return [str(script)] if script.exists() else [PYTHON, "-m", "pipeobs"]


# ---------------------------------------------------------------------- memory
def proc_status_kb(pid: int, field_name: str) -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmHWM``: the kernel's peak RSS, ``VmRSS``)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith(field_name.encode() + b":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class RssSampler:
    """Samples one process's RSS (psutil) and peak RSS (``VmHWM``) on a thread until it exits.

    ``VmHWM`` is the kernel's high-water mark of the process's resident set, so the last value
    read before the process exits is its peak up to that moment, whatever the sampling interval;
    RSS samples give the curve over time.
    """

    def __init__(self, pid: int, interval: float) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, int]] = []  # (time.monotonic(), rss bytes)
        self.peak_kb = 0
        self.wall_offset = time.time() - time.monotonic()  # sample time + this = epoch seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                rss = self.process.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                return
            hwm = proc_status_kb(self.process.pid, "VmHWM")
            if hwm:
                self.peak_kb = max(self.peak_kb, hwm)
            if rss:  # 0 once the process is a zombie
                self.samples.append((time.monotonic(), rss))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def at(self, fraction: float, window: tuple[float, float] | None = None) -> int:
        """The RSS sample nearest to ``fraction`` of ``window`` (epoch seconds; default: the sampled span)."""
        if not self.samples:
            return 0
        start, end = self.samples[0][0], self.samples[-1][0]
        if window is not None:
            start, end = window[0] - self.wall_offset, window[1] - self.wall_offset
        when = start + fraction * (end - start)
        return min(self.samples, key=lambda s: abs(s[0] - when))[1]


# ---------------------------------------------------------------------- the machine
def machine_info() -> dict[str, str]:
    import psutil

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    versions = []
    for name in LIBRARIES:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} not installed")
    return {
        "cores": f"{cores} logical ({usable} usable by this process)",
        "cpu": model or platform.processor() or "unknown",
        "ram": f"{psutil.virtual_memory().total / 1024**3:.1f} GiB",
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "libraries": ", ".join(versions),
    }


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = function()
    return time.perf_counter() - started, value
