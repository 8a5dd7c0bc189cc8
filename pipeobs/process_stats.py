"""What a worker measures about itself: the peak RSS of each mini-batch, and Azure's ``--profiling_module``."""

from __future__ import annotations

import os
from typing import Any


def start_profiler(module: str) -> Any:
    """Azure's ``--profiling_module cProfile|profile``: profile this worker until shutdown.

    Both names use cProfile (the pure-Python ``profile`` cannot be switched on around a loop);
    the file format is the same.
    """
    if module not in ("cProfile", "profile"):
        return None
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    return profiler


def profile_bytes(profiler: Any) -> bytes | None:
    """The profile in pstats' file format (the driver writes it as ``processNNN.profile``)."""
    if profiler is None or not hasattr(profiler, "disable"):
        return None
    import marshal

    profiler.disable()
    profiler.create_stats()
    return marshal.dumps(profiler.stats)


_proc_fds: dict[str, int | None] = {}


def _proc_fd(name: str, flags: int) -> int | None:
    """An fd on /proc/self/<name>, opened once (procfs regenerates the content on each read)."""
    if name not in _proc_fds:
        try:
            _proc_fds[name] = os.open(f"/proc/self/{name}", flags)
        except OSError:
            _proc_fds[name] = None
    return _proc_fds[name]


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the peak RSS, so VmHWM is this mini-batch's peak."""
    fd = _proc_fd("clear_refs", os.O_WRONLY)
    if fd is not None:
        try:
            os.write(fd, b"5")
        except OSError:
            pass


def peak_rss() -> int | None:
    fd = _proc_fd("status", os.O_RDONLY)
    if fd is not None:
        try:
            status = os.pread(fd, 8192, 0)
            start = status.index(b"VmHWM:")
            return int(status[start + 6 : status.index(b"\n", start)].split()[0]) * 1024
        except (OSError, ValueError):
            pass
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except (ImportError, OSError):
        return None
