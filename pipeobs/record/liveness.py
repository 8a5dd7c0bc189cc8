"""Whether the driver writing a run still lives, and the status a reader shows for the run.

A driver killed without a word (SIGKILL, a lost machine) leaves its run ``Running``. The run row
names the driver (pid, host, and the process's start time, so a reused pid is not mistaken for
it); a reader on the same host shows such a run as ``Driver lost`` once that process is gone.
"""

from __future__ import annotations

import os
import socket
from typing import Any

RUNNING = "Running"
DRIVER_LOST = "Driver lost"
INTERRUPTED = "Interrupted"
START_TIME_SLACK = 1.0  # seconds: psutil's start times are rounded to the clock tick


def this_driver() -> dict[str, Any]:
    """The run columns that name the current process as the run's driver."""
    import psutil

    return {"driver_pid": os.getpid(), "driver_host": socket.gethostname(),
            "driver_since": psutil.Process().create_time()}


def driver_gone(pid: int | None, host: str | None, since: float | None) -> bool:
    """The process that wrote the row is known to be gone (False when it cannot be told: another host)."""
    if not pid or host != socket.gethostname():
        return False
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return True
        started = process.create_time()
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:
        return False
    return since is not None and abs(started - since) > START_TIME_SLACK


def shown_status(run: dict[str, Any]) -> str:
    """The run's status as a reader shows it: ``Driver lost`` for a Running run whose driver is gone."""
    status = run.get("status") or "unknown"
    if status == RUNNING and driver_gone(run.get("driver_pid"), run.get("driver_host"), run.get("driver_since")):
        return DRIVER_LOST
    return str(status)
