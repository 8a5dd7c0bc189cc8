"""Shared helpers: write an entry script and inputs, run a job with real worker processes."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeobs.config import ParallelRunConfig, make_settings
from pipeobs.datasets import FileDataset
from pipeobs.jobs import JobResult
from pipeobs.step import ParallelRunStep
from tests.raycluster import ray_cluster  # noqa: F401 (a session fixture: the two-raylet cluster of test_ray.py)


def query_store(run_dir: Path, sql: str, *args: Any) -> list[sqlite3.Row]:
    """Rows of a run directory's store."""
    conn = sqlite3.connect(run_dir / "pipeobs.db")
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def interruptible(module: str, *args: str) -> list[str]:
    """``python -m module args`` for a test that sends it SIGINT: a shell starts background jobs with SIGINT
    ignored, which Python (and so the job under test) would otherwise inherit, so Ctrl-C is restored first."""
    code = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            f"sys.argv = [{module!r}, *sys.argv[1:]]; runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")
    return [sys.executable, "-c", code, *args]


@dataclass
class Job:
    result: JobResult
    run_dir: Path

    def output_lines(self) -> list[str]:
        assert self.result.output_path is not None
        return Path(self.result.output_path).read_text().splitlines()

    def query(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        return query_store(self.run_dir, sql, *args)

    def driver_log(self) -> str:
        return (self.run_dir / "azureml-logs" / "70_driver_log.txt").read_text()


def write_script(folder: Path, source: str, name: str = "score.py") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(source))
    return path


def write_files(folder: Path, count: int) -> Path:
    data = folder / "data"
    data.mkdir(exist_ok=True)
    for i in range(count):
        (data / f"f{i:03d}.txt").write_text(f"item {i}\n")
    return data


# Importable by entry scripts next to it: workers and tests coordinate through files, each wait
# bounded so that a missing party fails the attempt with a message instead of hanging the test.
RENDEZVOUS = """
import os, time

def wait_for(path, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"rendezvous: {path} did not appear within {timeout} s")
        time.sleep(0.01)

def arrive_and_wait(folder, parties, timeout=30.0):
    # A barrier for worker processes, timed from this process's first arrival: once it has
    # timed out, later calls fail at once instead of waiting again.
    os.makedirs(folder, exist_ok=True)
    mine = os.path.join(folder, str(os.getpid()))
    if not os.path.exists(mine):
        open(mine, "w").close()
    deadline = os.path.getmtime(mine) + timeout
    while len(os.listdir(folder)) < parties:
        if time.time() > deadline:
            raise TimeoutError(f"rendezvous: {len(os.listdir(folder))} of {parties} workers arrived within {timeout} s")
        time.sleep(0.01)
"""


def write_rendezvous(folder: Path) -> None:
    """Make ``import rendezvous`` work in an entry script written to ``folder``."""
    write_script(folder, RENDEZVOUS, "rendezvous.py")


RunJob = Callable[..., Job]


@pytest.fixture
def run_job(tmp_path: Path) -> RunJob:
    """Run ``source`` over ``files`` input files; keyword arguments go to ParallelRunConfig."""

    def run(
        source: str,
        files: int = 6,
        inputs: list[Any] | None = None,
        arguments: list[str] | None = None,
        settings: dict[str, Any] | None = None,
        model_dir: Path | None = None,
        **config: Any,
    ) -> Job:
        script = write_script(tmp_path, source)
        config.setdefault("process_count_per_node", 2)
        config.setdefault("output_action", "append_row")
        cfg = ParallelRunConfig(entry_script=str(script), **config)
        datasets = inputs if inputs is not None else [FileDataset.from_files(str(write_files(tmp_path, files)))]
        step = ParallelRunStep("test-step", cfg, datasets, output=str(tmp_path / "out"), arguments=arguments)
        if settings:
            step.settings = make_settings({**step.settings_values, **settings})
        result = step.run(tmp_path / "runs", model_dir=model_dir)
        return Job(result, Path(result.run_dir))

    return run


@dataclass
class MemoryCgroup:
    """A child memory cgroup with a hard limit and no swap (cgroup v2, or v1's memory controller)."""

    path: Path
    version: int

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` started inside this cgroup: the shell joins it, then execs ``argv``."""
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs"), *argv]

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer has killed in this cgroup."""
        counters = (self.path / ("memory.events" if self.version == 2 else "memory.oom_control")).read_text()
        return int(dict(line.split() for line in counters.splitlines())["oom_kill"])

    def pids(self) -> list[int]:
        return [int(pid) for pid in (self.path / "cgroup.procs").read_text().split()]


def memory_cgroup_parent() -> tuple[Path, int] | None:
    """Where a child memory cgroup can be made: the cgroup v2 root if it delegates memory, else
    this process's cgroup v1 memory controller; None when neither is there."""
    mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    for _, mount, kind, *_ in mounts:
        if kind == "cgroup2" and "memory" in (Path(mount) / "cgroup.subtree_control").read_text().split():
            return Path(mount), 2
    own: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        own.update(dict.fromkeys(controllers.split(","), path.lstrip("/")))
    for _, mount, kind, options, *_ in mounts:
        if kind == "cgroup" and "memory" in options.split(",") and "memory" in own:
            return Path(mount) / own["memory"], 1
    return None


@pytest.fixture
def memory_cgroup() -> Iterator[MemoryCgroup]:
    """A fresh cgroup limited to 256 MiB of memory and no swap; what is left in it is killed, then it is removed."""
    found = memory_cgroup_parent()
    if found is None:
        pytest.skip("no cgroup memory controller on this machine")
    parent, version = found
    path = parent / f"pipeobs-test-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a memory cgroup under {parent}: {exc}")
    limit = str(256 << 20)
    memory, swap = ("memory.max", "memory.swap.max") if version == 2 else ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes")
    cgroup = MemoryCgroup(path, version)
    try:
        (path / memory).write_text(limit)
        if (path / swap).exists():
            (path / swap).write_text("0" if version == 2 else limit)  # v1 limits memory and swap together
        elif len(Path("/proc/swaps").read_text().splitlines()) > 1:
            pytest.skip("swap is on and the cgroup cannot limit it, so memory would be swapped out, not OOM-killed")
        yield cgroup
    finally:
        for pid in cgroup.pids():  # only processes this test started
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while cgroup.pids() and time.monotonic() < deadline:
            time.sleep(0.01)
        path.rmdir()
