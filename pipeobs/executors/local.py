"""Worker processes on this machine, with the driver holding their stdout/stderr pipes.

Each worker is ``python -m pipeobs.worker`` in its own session (process group), so a kill also
ends the children its ``run()`` started. Its fds 1 and 2 are pipes read by the driver: output
written before a kill or a crash stays readable until EOF.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field

from pipeobs import env as variables


@dataclass
class WorkerProcess:
    """A started worker: its process, the read ends of its output pipes, its exit watcher."""

    name: str
    node: int
    popen: subprocess.Popen[bytes]
    streams: dict[int, str]  # fd -> "stdout" | "stderr"
    pidfd: int | None = None
    gpu: int | None = None
    started: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def kill(self) -> None:
        """SIGKILL the worker and every process of its group."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def close_pidfd(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


PIPE_SIZE = 1 << 20  # Linux's default pipe-max-size: a burst of output does not stall the worker


def _grow_pipe(fd: int) -> None:
    """Enlarge the pipe (64 KiB by default) so the driver can fall behind a burst briefly."""
    setter = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setter is None:
        return
    try:
        fcntl.fcntl(fd, setter, PIPE_SIZE)
    except OSError:
        pass  # above /proc/sys/fs/pipe-max-size for this user: keep the default


class LocalExecutor:
    """Starts worker processes; the hub address and auth key travel in their environment."""

    name = "local"

    def __init__(self, hub_address: str, authkey: bytes) -> None:
        self.hub_address = hub_address
        self.authkey = authkey

    def start(self, name: str, node: int, env: dict[str, str], cwd: str) -> WorkerProcess:
        full_env = dict(os.environ)
        full_env.update(env)
        full_env.update(
            {
                variables.HUB: self.hub_address,
                variables.AUTHKEY: self.authkey.hex(),
                variables.WORKER: f"{node}/{name}",
                "PYTHONFAULTHANDLER": "1",
            }
        )
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            popen = subprocess.Popen(
                [sys.executable, "-m", "pipeobs.worker"],
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        finally:
            os.close(out_w)  # only the worker (and its children) hold the write ends
            os.close(err_w)
        streams = {out_r: "stdout", err_r: "stderr"}
        for fd in streams:
            os.set_blocking(fd, False)
            _grow_pipe(fd)
        pidfd = None
        if hasattr(os, "pidfd_open"):
            try:
                pidfd = os.pidfd_open(popen.pid)
            except OSError:
                pidfd = None
        return WorkerProcess(name, node, popen, streams, pidfd)
