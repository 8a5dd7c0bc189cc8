"""Resource samples of the worker processes and the machine, ``logs/perf/<node>/`` (psutil)."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import IO, Any

import psutil

from pipeobs.record.driverlog import utc_stamp

PROCESS_COLUMNS = ("Utc Time", "Process", "Pid", "Cpu Percent", "Rss (MB)", "Children Rss (MB)", "Threads")
NODE_COLUMNS = (
    "Utc Time", "Cpu Percent", "Memory Total (MB)", "Memory Available (MB)", "Memory Used (MB)",
    "Memory Used Percent", "Disk Io Read Count", "Disk Io Write Count", "Disk Io Read (MB)",
    "Disk Io Write (MB)", "Network Sent (MB)", "Network Recv (MB)",
)
MB = 1024 * 1024


class ProcessSampler:
    """CPU % and RSS of processes (with their children) and of this machine, by psutil: used by the
    driver for its own workers and, with ``--backend ray``, by each node supervisor for its node's."""

    def __init__(self) -> None:
        self._processes: dict[int, psutil.Process] = {}
        psutil.cpu_percent(None)

    def sample(self, pid: int) -> dict[str, float] | None:
        proc = self._processes.get(pid)
        try:
            if proc is None:  # first sight: the mean since the process started (and a start for the next)
                proc = self._processes[pid] = psutil.Process(pid)
                cpu = _cpu_since_start(proc)
                proc.cpu_percent(None)
            else:
                cpu = proc.cpu_percent(None)
            with proc.oneshot():
                rss = proc.memory_info().rss
                threads = proc.num_threads()
            children_rss = 0
            for child in proc.children(recursive=True):
                try:
                    children_rss += child.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            self._processes.pop(pid, None)
            return None
        return {"cpu": cpu, "rss": float(rss), "children_rss": float(children_rss), "threads": float(threads)}

    @staticmethod
    def node_row() -> tuple[str, ...]:
        return _node_row()


Sample = tuple[str, int, dict[str, float]]  # (processNNN, pid, the sampler's row)


class ResourceMonitor:
    """Samples CPU % and RSS of each worker (with its children) and of the machine, into ``logs/perf``;
    samples taken elsewhere (a Ray node's supervisor) are recorded the same way."""

    def __init__(self, perf_dir: Path, interval: float) -> None:
        self.perf_dir = perf_dir
        self.interval = interval
        self.sampler = ProcessSampler()
        self._files: dict[str, tuple[IO[str], Any]] = {}
        self._next = 0.0
        self.last: dict[str, dict[str, float]] = {}  # worker label -> latest sample

    def due(self, now: float) -> bool:
        return self.interval > 0 and now >= self._next

    def sample(self, workers: list[tuple[int, str, int]], now: float) -> None:
        """One row per live worker ``(node, name, pid)``, and one per node for the machine."""
        self._next = now + self.interval
        by_node: dict[int, list[Sample]] = {}
        for node, name, pid in workers:
            row = self.sampler.sample(pid)
            if row is not None:
                by_node.setdefault(node, []).append((name, pid, row))
        for node in sorted({w[0] for w in workers}):
            self.record(node, by_node.get(node, []), self.sampler.node_row())

    def record(self, node: int, samples: list[Sample], node_row: tuple[str, ...]) -> None:
        """One node's samples: a row per process and one for the machine."""
        stamp = utc_stamp(time.time())
        for name, pid, row in samples:
            self.last[f"{node}/{name}"] = row
            self._writer(node, "processes_resource_usage.csv", PROCESS_COLUMNS).writerow(
                (stamp, name, pid, f"{row['cpu']:.1f}", f"{row['rss'] / MB:.1f}", f"{row['children_rss'] / MB:.1f}", int(row["threads"]))
            )
        self._writer(node, "node_resource_usage.csv", NODE_COLUMNS).writerow((stamp, *node_row))

    def _writer(self, node: int, name: str, columns: tuple[str, ...]) -> Any:
        key = f"{node}/{name}"
        entry = self._files.get(key)
        if entry is None:
            path = self.perf_dir / str(node) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            new = not path.exists()
            handle = open(path, "a", newline="", encoding="utf-8")  # noqa: SIM115
            writer = csv.writer(handle)
            if new:
                writer.writerow(columns)
            entry = self._files[key] = (handle, writer)
        return entry[1]

    def flush(self) -> None:
        for handle, _ in self._files.values():
            handle.flush()

    def close(self) -> None:
        for handle, _ in self._files.values():
            handle.close()
        self._files.clear()


def _cpu_since_start(proc: psutil.Process) -> float:
    """CPU percent (of one core) over the process's life so far."""
    times = proc.cpu_times()
    alive = time.time() - proc.create_time()
    return 100.0 * (times.user + times.system) / alive if alive > 0 else 0.0


def _node_row() -> tuple[str, ...]:
    memory = psutil.virtual_memory()
    disk = psutil.disk_io_counters()
    net = psutil.net_io_counters()
    return (
        f"{psutil.cpu_percent(None):.1f}", f"{memory.total / MB:.0f}", f"{memory.available / MB:.0f}",
        f"{memory.used / MB:.0f}", f"{memory.percent:.1f}",
        str(disk.read_count if disk else 0), str(disk.write_count if disk else 0),
        f"{(disk.read_bytes if disk else 0) / MB:.1f}", f"{(disk.write_bytes if disk else 0) / MB:.1f}",
        f"{(net.bytes_sent if net else 0) / MB:.1f}", f"{(net.bytes_recv if net else 0) / MB:.1f}",
    )
