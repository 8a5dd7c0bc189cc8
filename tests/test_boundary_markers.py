"""One marker write per stream between two mini-batches of a batch of tasks: the end of one and the begin of the
next go out together, and every line is still attributed to the invocation that wrote it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeobs.capture import Invocation, WorkerCapture, marker_prefix
from pipeobs.records import expand
from pipeobs.streams import Boundary, StreamParser
from tests.conftest import Job, RunJob

TOKEN = "0123456789abcdef"
MARK = marker_prefix(TOKEN)

# Records, in the worker, each write of a marker line to fd 1 or 2: (fd, the marker kinds it holds, in order).
RECORD_MARKER_WRITES = """
import json, os
WRITES = []
REAL_WRITE = os.write

def _write(fd, data):
    data = bytes(data)
    if fd in (1, 2) and b"\\x1e" in data:
        WRITES.append((fd, [line.split(b"\\x1f", 1)[1][:1].decode() for line in data.split(b"\\n") if b"\\x1f" in line]))
    return REAL_WRITE(fd, data)

def init():
    os.write = _write

def dump(name):
    with open(os.path.join({folder!r}, name + ".json"), "w") as out:
        json.dump(WRITES, out)

def shutdown():
    dump(str(os.getpid()))
"""


def marker_writes(folder: Path, name: str = "*") -> list[tuple[int, list[str]]]:
    """The marker writes that workers recorded in ``folder`` (all workers together, or the one dump ``name``)."""
    return [(fd, kinds) for path in folder.glob(name + ".json") for fd, kinds in json.loads(path.read_text())]


def mini_batch_of_file(job: Job, name: str) -> int:
    rows = job.query("SELECT id, descriptor FROM mini_batches")
    (found,) = [row["id"] for row in rows if any(f.endswith(name) for f in json.loads(row["descriptor"])["files"])]
    return int(found)


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bytes]]:
    """The ``(fd, data)`` of each ``os.write`` made while the test runs (written nowhere)."""
    made: list[tuple[int, bytes]] = []

    def write(fd: int, data: bytes) -> int:
        made.append((fd, bytes(data)))
        return len(data)

    monkeypatch.setattr(os, "write", write)
    return made


class TestWorkerCapture:
    def test_end_with_the_next_begin_is_one_write_per_stream(self, writes: list[tuple[int, bytes]]) -> None:
        """end(then=next) writes the end and the next begin at once, to fd 1 and to fd 2 (the finished span
        travels in the attempt's result)."""
        following = Invocation("run", 8, 1, "a" * 32, "b" * 16)

        WorkerCapture(TOKEN, "INFO").end(then=following)

        begin = MARK + b"Brun 8 1 " + b"a" * 32 + b" " + b"b" * 16 + b"\n"
        assert writes == [(1, MARK + b"E\n" + begin), (2, MARK + b"E\n" + begin)]

    def test_the_driver_reads_end_and_next_begin(self, writes: list[tuple[int, bytes]]) -> None:
        """The driver's parser reads the combined write on stderr as the end, then the next begin, and
        attributes what follows on either stream to the next invocation."""
        following = Invocation("run", 8, 2, "a" * 32, "b" * 16)
        WorkerCapture(TOKEN, "INFO").end(then=following)
        out, err = StreamParser("stdout", TOKEN), StreamParser("stderr", TOKEN)

        err_items = expand([*err.feed(writes[1][1] + b"in 8\n"), *err.close()])
        out_items = expand([*out.feed(writes[0][1] + b"in 8\n"), *out.close()])

        assert [type(item) for item in err_items[:2]] == [Boundary, Boundary]
        assert [item.invocation for item in err_items[:2]] == [None, following]  # type: ignore[union-attr]
        for items in (err_items[2:], out_items):
            assert [getattr(item, "invocation", None) for item in items] == [following]

    def test_end_alone_writes_no_begin(self, writes: list[tuple[int, bytes]]) -> None:
        """Without a next invocation the end marker stands alone, as between batches of tasks."""
        WorkerCapture(TOKEN, "INFO").end()

        assert writes == [(1, MARK + b"E\n"), (2, MARK + b"E\n")]


SCRIPT = RECORD_MARKER_WRITES + """
import logging, sys

def run(mini_batch):
    name = os.path.basename(mini_batch[0])
    print("out", name)
    print("err", name, file=sys.stderr)
    logging.getLogger("score").warning("log %s", name)
    return mini_batch + ["extra"] if name in ("f001.txt", "f004.txt") else mini_batch
"""


class TestBoundaryMarkers:
    def test_mini_batches_of_one_batch_share_their_boundary_writes(self, run_job: RunJob, tmp_path: Path) -> None:
        """A worker given several tasks at once writes each boundary between them once per stream: the end
        and the next begin, on stdout and on stderr."""
        folder = tmp_path / "writes"
        folder.mkdir()

        job = run_job(SCRIPT.format(folder=str(folder)), files=6, mini_batch_size=1, process_count_per_node=1)

        writes = marker_writes(folder)
        assert job.result.ok
        assert (1, ["E", "B"]) in writes
        assert (2, ["E", "B"]) in writes
        # init()'s span is the only one written: the mini_batch spans travel in the results
        assert [kinds for _fd, kinds in writes if "S" in kinds] == [["S"]]
        for fd in (1, 2):  # init() began before the recording started, shutdown() ends after it stopped
            kinds = [kind for wfd, ks in writes if wfd == fd for kind in ks]
            assert kinds.count("B") == 6 + 1  # the mini-batches and shutdown()
            assert kinds.count("E") == 1 + 6  # init() and the mini-batches

    def test_an_attempt_begun_early_counts_nothing_of_the_previous_result(self, run_job: RunJob) -> None:
        """A mini-batch begun with the previous one's end starts its clocks once that result is sent: a result
        that takes 0.3 s to send (the script slows the worker's sends) adds nothing to the next attempt's elapsed
        or process seconds, nor moves its span's start before that send."""
        script = """
import sys
import time

def init():
    loop = sys.modules["__main__"].WorkerLoop  # the worker runs as python -m pipeobs.worker
    send = loop.send

    def slow(self, message):
        if type(message).__name__ == "Result":
            time.sleep(0.3)
        return send(self, message)

    loop.send = slow

def run(mini_batch):
    return mini_batch
"""
        job = run_job(script, files=4, mini_batch_size=1, process_count_per_node=1)

        attempts = job.query("SELECT start_time, elapsed, process_seconds FROM attempts ORDER BY start_time")
        spans = job.query("SELECT start_time FROM spans WHERE name = 'mini_batch' ORDER BY start_time")
        assert job.result.ok and len(attempts) == 4
        assert max(a["elapsed"] for a in attempts) < 0.15
        assert max(a["process_seconds"] for a in attempts) < 0.15
        starts = [s["start_time"] for s in spans]
        assert all(later - earlier > 0.25 for earlier, later in zip(starts, starts[1:], strict=False))

    def test_a_large_result_is_sent_before_the_next_attempt_begins(self, run_job: RunJob, tmp_path: Path) -> None:
        """The next begin marker starts the driver's run() clock: after a result holding more than
        SHARED_WRITE_RESULT bytes of output rows, the end and the next begin are separate writes (the first
        two mini-batches come in one batch of tasks, so they would share one otherwise)."""
        folder = tmp_path / "writes"
        folder.mkdir()
        script = RECORD_MARKER_WRITES + """
def run(mini_batch):
    return ["x" * 400_000] if os.path.basename(mini_batch[0]) == "f000.txt" else mini_batch
"""
        job = run_job(script.format(folder=str(folder)), files=2, mini_batch_size=1, process_count_per_node=1)

        on_stdout = [kinds for fd, kinds in marker_writes(folder) if fd == 1]
        assert job.result.ok and job.result.mini_batches_succeeded == 2
        assert on_stdout[:5] == [["E"], ["B"], ["E"], ["B"], ["E"]]  # init's end, then each mini-batch alone

    def test_each_line_is_attributed_to_the_mini_batch_that_wrote_it(self, run_job: RunJob, tmp_path: Path) -> None:
        """Prints on stdout and stderr and log records in run() belong to their own mini-batch and its span,
        and pipeobs's own warning after run() returned belongs to the mini-batch it is about."""
        folder = tmp_path / "writes"
        folder.mkdir()

        job = run_job(SCRIPT.format(folder=str(folder)), files=6, mini_batch_size=1, process_count_per_node=1)

        spans = {row["mini_batch_id"]: row["span_id"]
                 for row in job.query("SELECT mini_batch_id, span_id FROM spans WHERE name = 'mini_batch'")}
        lines = job.query("SELECT text, stream, phase, mini_batch_id, attempt, span_id FROM log_lines "
                          "WHERE text LIKE 'out f%' OR text LIKE 'err f%' OR text LIKE 'log f%'")
        assert job.result.ok
        assert len(lines) == 18
        for line in lines:
            mb_id = mini_batch_of_file(job, line["text"].split()[1])
            assert (line["phase"], line["mini_batch_id"], line["attempt"]) == ("run", mb_id, 1), line["text"]
            assert line["span_id"] == spans[mb_id]
        warned = job.query("SELECT mini_batch_id FROM log_lines WHERE text LIKE 'run() returned 2 items%'")
        assert sorted(row["mini_batch_id"] for row in warned) == sorted(
            mini_batch_of_file(job, name) for name in ("f001.txt", "f004.txt"))

    def test_worker_killed_in_a_mini_batch_begun_with_the_last_end(self, run_job: RunJob, tmp_path: Path) -> None:
        """A worker killed in a mini-batch whose begin shared the previous end's writes: the driver closes
        that mini-batch's announced span as killed, and the mini-batch is retried."""
        folder = tmp_path / "writes"
        folder.mkdir()
        script = RECORD_MARKER_WRITES.format(folder=str(folder)) + f"""
import signal
def run(mini_batch):
    name = os.path.basename(mini_batch[0])
    print("in", name, flush=True)
    if name == "f001.txt" and not os.path.exists({str(tmp_path / "killed-once")!r}):
        open({str(tmp_path / "killed-once")!r}, "w").close()
        dump("killed")
        os.kill(os.getpid(), signal.SIGKILL)
    return mini_batch
"""

        job = run_job(script, files=3, mini_batch_size=1, process_count_per_node=1)

        mb_id = mini_batch_of_file(job, "f001.txt")
        (killed_line,) = job.query("SELECT span_id FROM log_lines WHERE text = 'in f001.txt' AND attempt = 1")
        killed = job.query("SELECT status, status_message FROM spans WHERE span_id = ?", killed_line["span_id"])
        attempts = job.query("SELECT attempt, status FROM attempts WHERE mini_batch_id = ? ORDER BY attempt", mb_id)
        assert job.result.ok
        assert [w for w in marker_writes(folder, "killed") if w[0] == 2][-1] == (2, ["E", "B"])
        assert len(job.output_lines()) == 3
        assert killed_line["span_id"] is not None
        assert [row["status"] for row in killed] == ["ERROR"]
        assert "SIGKILL" in killed[0]["status_message"]
        assert [(row["attempt"], row["status"]) for row in attempts] == [(1, "PROCESS_CRASHED"), (2, "RUN_DONE")]
