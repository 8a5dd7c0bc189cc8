"""The local executor alone (no driver): real worker processes, their streams, messages and exits."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeobs.executors.base import WorkerSpec
from pipeobs.executors.local import LocalExecutor
from pipeobs.protocol import Message, Ready, Setup, Stop
from pipeobs.records import Line, expand
from pipeobs.streams import Boundary


class Events:
    """Records what the executor reports, in order."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, Any]] = []

    def worker_connected(self, worker: str, pid: int) -> None:
        self.log.append(("connected", worker, pid))

    def worker_message(self, worker: str, message: Message) -> None:
        self.log.append(("message", worker, message))

    def worker_output(self, worker: str, items: Sequence[Any]) -> None:
        self.log.extend(("output", worker, item) for item in expand(items))

    def worker_exited(self, worker: str, returncode: int) -> None:
        self.log.append(("exited", worker, returncode))

    def kinds(self) -> list[str]:
        return [kind for kind, _w, _x in self.log]


def setup_for(tmp_path: Path, script: str) -> Setup:
    entry = tmp_path / "score.py"
    entry.write_text(script)
    return Setup("tok123", "00-" + "1" * 32 + "-" + "2" * 16 + "-01", str(entry), str(tmp_path), [], "summary_only",
                 None, "", [], str(tmp_path / "scratch"), "INFO",
                 {"step_id": "s", "step_name": "step", "node": 0, "name": "process000", "run_dir": str(tmp_path),
                  "output_dir": str(tmp_path), "working_dir": str(tmp_path), "logging_level": "INFO"})


def poll_until(executor: LocalExecutor, done: Any, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "timed out"
        executor.poll(0.05)


class TestLocalExecutor:
    def test_a_worker_connects_runs_init_prints_and_exits_cleanly_in_order(self, tmp_path: Path) -> None:
        """connected -> Ready -> its init() line -> Bye -> exited 0, the exit reported last."""
        events, executor = Events(), LocalExecutor()
        executor.open(events, "tok123")
        setup = setup_for(tmp_path, "def init():\n    print('hello from init')\ndef run(mb):\n    return mb\n")

        pid = executor.spawn(WorkerSpec(0, "process000", {}, str(tmp_path)))
        poll_until(executor, lambda: "connected" in events.kinds())
        assert executor.send("0/process000", setup)
        poll_until(executor, lambda: any(isinstance(x, Ready) for _k, _w, x in events.log))
        executor.send("0/process000", Stop())
        poll_until(executor, lambda: "exited" in events.kinds())
        executor.close()

        assert events.log[0] == ("connected", "0/process000", pid)
        assert events.log[-1] == ("exited", "0/process000", 0)
        lines = [x for kind, _w, x in events.log if kind == "output" and isinstance(x, Line)]
        assert [(line.text, line.invocation.phase, line.worker) for line in lines if line.text == "hello from init"] == [
            ("hello from init", "init", "0/process000")
        ]
        assert any(isinstance(x, Boundary) for _k, _w, x in events.log)

    def test_a_killed_worker_loses_no_line_it_wrote_and_its_exit_comes_last(self, tmp_path: Path) -> None:
        """SIGKILL mid-init: the line printed before it is delivered, then the exit with -9."""
        events, executor = Events(), LocalExecutor()
        executor.open(events, "tok123")
        setup = setup_for(tmp_path, "import time\ndef init():\n    print('before the kill', flush=True)\n"
                                    "    time.sleep(60)\ndef run(mb):\n    return mb\n")
        executor.spawn(WorkerSpec(0, "process000", {}, str(tmp_path)))
        poll_until(executor, lambda: "connected" in events.kinds())
        executor.send("0/process000", setup)
        poll_until(executor, lambda: any(isinstance(x, Line) and x.text == "before the kill" for _k, _w, x in events.log))

        executor.kill("0/process000")
        poll_until(executor, lambda: "exited" in events.kinds())
        executor.close()

        assert events.log[-1] == ("exited", "0/process000", -9)
        assert executor.send("0/process000", Stop()) is False



def test_the_inbox_reads_what_a_connection_sends_in_any_cut() -> None:
    """Messages sent with multiprocessing's Connection come out of the Inbox whole and in order, however the
    reads cut them: many in one read, one larger than a read, the 8-byte length form, and the end."""
    import os
    import pickle
    import threading
    from multiprocessing.connection import Connection

    from pipeobs.executors.local import Inbox
    from pipeobs.protocol import Result, encode

    sent = [Result(i, 1, {"status": "RUN_DONE", "rows": b"x" * (200_000 if i == 3 else i)}) for i in range(6)]
    wide = Result(99, 2, {"status": "RUN_DONE"})
    read_end, write_end = os.pipe()

    def send_all() -> None:
        writer = Connection(write_end, readable=False)
        for message in sent:
            writer.send(encode(message))
        payload = pickle.dumps(encode(wide))  # the form Connection uses past 2 GiB
        os.write(write_end, b"\xff\xff\xff\xff" + len(payload).to_bytes(8, "big") + payload)
        writer.close()

    thread = threading.Thread(target=send_all)
    thread.start()
    inbox, received, open_ = Inbox(read_end), [], True
    while open_:
        open_ = inbox.read()
        received += inbox.pending
        inbox.pending.clear()
    thread.join()
    os.close(read_end)
    assert received == [*sent, wide]


def test_a_handler_that_ends_the_worker_mid_batch_loses_none_of_its_messages() -> None:
    """Messages read in one wake-up are all delivered, in order, before the exit, even when a handler kills the
    worker after the first (without a pidfd, the kill reports the exit at once)."""
    import socket
    import subprocess
    from multiprocessing.connection import Connection

    from pipeobs.executors.local import Inbox, LocalProcess
    from pipeobs.protocol import Result, encode

    executor = LocalExecutor()
    delivered: list[Any] = []

    class Killing:
        def worker_message(self, worker: str, message: Any) -> None:
            delivered.append(message.mini_batch_id)
            if message.mini_batch_id == 0:
                executor.kill(worker)

        def worker_exited(self, worker: str, returncode: int) -> None:
            delivered.append("exited")

        def worker_output(self, worker: str, items: Sequence[Any]) -> None:
            pass

    executor.open(Killing(), "token")  # type: ignore[arg-type]
    ours, theirs = socket.socketpair()
    proc = LocalProcess("0/process000", subprocess.Popen(["sleep", "30"], start_new_session=True), {}, pidfd=None)
    proc.conn = Connection(ours.detach())
    proc.inbox = Inbox(proc.conn.fileno())
    executor.processes[proc.label] = proc
    sender = Connection(theirs.detach())
    for index in range(3):
        sender.send(encode(Result(index, 1, {"status": "RUN_DONE"})))

    try:
        executor._on_message(proc)
    finally:
        sender.close()
        executor.close()

    assert delivered == [0, 1, 2, "exited"]
