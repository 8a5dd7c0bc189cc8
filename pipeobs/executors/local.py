"""Worker processes on this machine: the local node supervisor.

Each worker is ``python -m pipeobs.worker`` in its own session (process group), so a kill also
ends the children its ``run()`` started. Its fds 1 and 2 are pipes whose read ends this
executor holds: output written before a kill or a crash stays readable until EOF. The worker
connects back to a hub (an abstract Unix socket: no file to leave behind when the driver is
killed) for the protocol messages. One ``selectors`` loop watches the hub, every channel, every
pipe and every exit (a pidfd), and reports to the driver from :meth:`LocalExecutor.poll`.
"""

from __future__ import annotations

import collections
import fcntl
import os
import pickle
import secrets
import selectors
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge
from typing import Any

from pipeobs import env as variables
from pipeobs.executors.base import Executor, ExecutorEvents, WorkerSpec
from pipeobs.protocol import Hello, Message, decode, to_bytes
from pipeobs.streams import StreamParser

PIPE_SIZE = 1 << 20  # Linux's default pipe-max-size: a burst of output does not stall the worker
READ_SIZE = 1 << 16


@dataclass
class LocalProcess:
    """A started worker: its process, the read ends of its output pipes, its exit watcher, its channel."""

    label: str
    popen: subprocess.Popen[bytes]
    parsers: dict[int, StreamParser]  # read end fd -> the parser of that stream
    pidfd: int | None = None
    conn: Connection | None = None
    inbox: Inbox | None = None  # reads conn's messages (conn itself only sends, after the handshake)
    callbacks: dict[int, Callable[[int], None]] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def kill(self) -> None:
        """SIGKILL the worker and every process of its group."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class Inbox:
    """A worker's messages, read from its channel as they come: one read per wake-up takes every message
    already there (``Connection.recv`` reads each header and payload apart, and a poll per message tells
    whether another one waits). The framing is ``multiprocessing.connection``'s, which the worker sends:
    a 4-byte big-endian length, or -1 and an 8-byte length, then the pickled message."""

    READ_SIZE = 1 << 16

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = bytearray()
        self.pending: collections.deque[Message] = collections.deque()  # read, not yet delivered

    def read(self) -> bool:
        """Read once (the channel is readable: it does not block) and queue the messages completed in
        :attr:`pending`; whether the channel is still open."""
        try:
            data = os.read(self.fd, self.READ_SIZE)
        except OSError:
            data = b""
        self._buffer += data
        self.pending.extend(self._messages())
        return bool(data)

    def _messages(self) -> list[Message]:
        buf, pos, messages = self._buffer, 0, []
        while len(buf) - pos >= 4:
            size, start = int.from_bytes(buf[pos:pos + 4], "big", signed=True), pos + 4
            if size == -1:
                if len(buf) - pos < 12:
                    break
                size, start = int.from_bytes(buf[pos + 4:pos + 12], "big"), pos + 12
            if len(buf) - start < size:
                break
            messages.append(decode(pickle.loads(buf[start:start + size])))
            pos = start + size
        del buf[:pos]
        return messages


class LocalExecutor(Executor):
    """Starts worker processes here; the hub address and auth key travel in their environment."""

    name = "local"

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.authkey = secrets.token_bytes(32)
        self.processes: dict[str, LocalProcess] = {}
        self._events: ExecutorEvents | None = None
        self._token = ""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
        name = f"pipeobs-hub-{os.getpid()}-{secrets.token_hex(8)}"
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind("\0" + name)
        self.listener.listen(128)
        self.listener.setblocking(False)
        self.hub_address = "@" + name
        self.selector.register(self.listener, selectors.EVENT_READ, self._on_accept)
        self._closed = False

    @property
    def events(self) -> ExecutorEvents:
        if self._events is None:
            raise RuntimeError("LocalExecutor.open() was not called")
        return self._events

    def open(self, events: ExecutorEvents, token: str) -> None:
        self._events = events
        self._token = token

    # ------------------------------------------------------------------ spawning
    def spawn(self, spec: WorkerSpec) -> int:
        label = spec.label
        full_env = {**os.environ, **spec.env, variables.HUB: self.hub_address, variables.AUTHKEY: self.authkey.hex(),
                    variables.WORKER: label, "PYTHONFAULTHANDLER": "1"}
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            popen = subprocess.Popen(
                [sys.executable, "-m", "pipeobs.worker"],
                stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w, env=full_env, cwd=spec.cwd,
                start_new_session=True,
            )
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        finally:
            os.close(out_w)  # only the worker (and its children) hold the write ends
            os.close(err_w)
        parsers = {out_r: StreamParser("stdout", self._token, label), err_r: StreamParser("stderr", self._token, label)}
        proc = LocalProcess(label, popen, parsers, _pidfd(popen.pid))
        for fd in parsers:
            os.set_blocking(fd, False)
            _grow_pipe(fd)
            self._watch(proc, fd, self._reader(proc, fd))
        if proc.pidfd is not None:
            self._watch(proc, proc.pidfd, lambda _fd: self._exited(proc))
        self.processes[label] = proc
        return popen.pid

    def _watch(self, proc: LocalProcess, fd: int, callback: Callable[[int], None]) -> None:
        proc.callbacks[fd] = callback
        self.selector.register(fd, selectors.EVENT_READ, callback)

    def _unwatch(self, proc: LocalProcess, fd: int) -> None:
        if proc.callbacks.pop(fd, None) is not None:
            self.selector.unregister(fd)

    # ------------------------------------------------------------------ the hub and channels
    def _on_accept(self, _fd: Any) -> None:
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(True)
        conn = Connection(sock.detach())
        try:
            deliver_challenge(conn, self.authkey)
            answer_challenge(conn, self.authkey)
            hello = decode(conn.recv())
        except Exception:  # noqa: BLE001 - a stranger (bad auth key) or a worker dying during the handshake
            conn.close()
            return
        proc = self.processes.get(hello.worker) if isinstance(hello, Hello) else None
        if proc is None or proc.conn is not None or not isinstance(hello, Hello):
            conn.close()
            return
        proc.conn, proc.inbox = conn, Inbox(conn.fileno())
        self._watch(proc, conn.fileno(), lambda _fd: self._on_message(proc))
        self.events.worker_connected(proc.label, hello.pid)

    def _on_message(self, proc: LocalProcess) -> None:
        inbox = proc.inbox
        if proc.conn is None or inbox is None:
            return  # a stale wake-up: the worker's exit was reported and its channel closed
        open_ = inbox.read()  # every message already here: one wake-up serves a batch of results
        self._deliver(proc, inbox)
        if not open_ and proc.conn is not None:
            self._exited(proc)

    def _deliver(self, proc: LocalProcess, inbox: Inbox) -> None:
        """The messages read, in order (a handler that ends the worker has its exit deliver the rest first)."""
        deliver, pending = self.events.worker_message, inbox.pending
        while pending:
            deliver(proc.label, pending.popleft())

    def send(self, worker: str, message: Message) -> bool:
        proc = self.processes.get(worker)
        if proc is None or proc.conn is None:
            return False
        try:
            proc.conn.send_bytes(to_bytes(message))
        except OSError:
            return False  # the worker is gone: its exit is reported
        return True

    # ------------------------------------------------------------------ streams
    def _reader(self, proc: LocalProcess, fd: int) -> Callable[[int], None]:
        def read(_fd: int) -> None:
            self._read_stream(proc, fd, until_eof=False)

        return read

    def _read_stream(self, proc: LocalProcess, fd: int, until_eof: bool) -> None:
        parser = proc.parsers.get(fd)
        if parser is None:
            return
        while True:
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._close_stream(proc, fd)
                return
            self.events.worker_output(proc.label, list(parser.feed(data)))
            if not until_eof and len(data) < READ_SIZE:
                return  # drained: what the pipe held fitted in one read

    def _close_stream(self, proc: LocalProcess, fd: int) -> None:
        parser = proc.parsers.pop(fd)
        self.events.worker_output(proc.label, list(parser.close()))
        self._unwatch(proc, fd)
        os.close(fd)

    # ------------------------------------------------------------------ exits
    def _exited(self, proc: LocalProcess) -> None:
        """Deliver everything the worker sent and wrote, kill its group, then report the exit."""
        if self.processes.get(proc.label) is not proc:
            return  # already reported
        del self.processes[proc.label]
        self._drain_channel(proc)
        for fd in list(proc.parsers):
            self._read_stream(proc, fd, until_eof=False)
        returncode = _wait(proc)
        proc.kill()  # the group: children the worker left behind
        for fd in list(proc.callbacks):
            if fd not in proc.parsers:
                self._unwatch(proc, fd)
        if proc.conn is not None:
            proc.conn.close()
            proc.conn = None
        if proc.pidfd is not None:
            os.close(proc.pidfd)
            proc.pidfd = None
        for fd in list(proc.parsers):  # whatever is left after the group was killed
            self._read_stream(proc, fd, until_eof=True)
        self.events.worker_exited(proc.label, returncode)

    def _drain_channel(self, proc: LocalProcess) -> None:
        """Every message the worker sent before it exited: those read and not yet delivered, then the rest."""
        conn, inbox = proc.conn, proc.inbox
        if conn is None or inbox is None:
            return
        try:
            self._deliver(proc, inbox)
            while conn.poll(0) and inbox.read():  # readable: data, or the end of the channel
                self._deliver(proc, inbox)
            self._deliver(proc, inbox)
        except OSError:
            pass

    def kill(self, worker: str) -> None:
        proc = self.processes.get(worker)
        if proc is None:
            return
        proc.kill()
        if proc.pidfd is None:
            self._exited(proc)

    # ------------------------------------------------------------------ the loop
    def poll(self, timeout: float) -> bool:
        events = self.selector.select(timeout)
        for key, _ in events:
            key.data(key.fd)
        for proc in list(self.processes.values()):  # no pidfd (old kernels): poll
            if proc.pidfd is None and proc.popen.poll() is not None:
                self._exited(proc)
        return bool(events)

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"w")
        except BlockingIOError:
            pass  # the pipe is full: a wake-up is already pending

    def _on_wake(self, _fd: int) -> None:
        try:
            os.read(self._wake_r, 65536)
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for proc in self.processes.values():
            proc.kill()
        self.selector.close()
        self.listener.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


def _pidfd(pid: int) -> int | None:
    if not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def _grow_pipe(fd: int) -> None:
    """Enlarge the pipe (64 KiB by default) so the driver can fall behind a burst briefly."""
    setter = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setter is None:
        return
    try:
        fcntl.fcntl(fd, setter, PIPE_SIZE)
    except OSError:
        pass  # above /proc/sys/fs/pipe-max-size for this user: keep the default


def _wait(proc: LocalProcess) -> int:
    try:
        return proc.popen.wait(timeout=5)
    except Exception:  # noqa: BLE001 - a process that will not die: kill it
        proc.kill()
        return proc.popen.wait()
