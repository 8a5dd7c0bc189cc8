"""The Azure-style logs tree of a run directory, written by the driver only.

:class:`RunFiles` is a sink of the record pipeline for captured lines: each goes to its worker's
own file (``logs/user/stdout|stderr|entry_script_log/<node>/processNNN.*``, or the system log
``logs/sys/node/<node>/processNNN.txt`` for pipeobs's records). It also writes the driver's own
files: the progress overview, the per-worker system lines, the user's tracebacks, and the
small whole files of the end of the run. Handles are buffered and flushed with the store.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Iterable, Iterator
from operator import itemgetter
from pathlib import Path
from typing import IO

from pipeobs.record.driverlog import utc_stamp
from pipeobs.record.rundir import RunDir
from pipeobs.records import Line, LineBlock, RecordBlock, log_flags

_USER_FILES = {
    "stdout": ("stdout", ".stdout.txt"),
    "stderr": ("stderr", ".stderr.txt"),
    "entry_script": ("entry_script_log", ".log.txt"),
}


def _file_kind(line: Line) -> str:
    """Which of its worker's files a line belongs in."""
    if line.system:
        return "sys"
    if line.stream == "log":
        return "entry_script" if line.entry_script else "stdout"
    return line.stream


def _record_kind(flags: str) -> str:
    """:func:`_file_kind` of a log record from its flags."""
    system, entry_script, _ = log_flags(flags)
    return "sys" if system else "entry_script" if entry_script else "stdout"


def _record_pieces(block: RecordBlock) -> list[tuple[str, str]]:
    """A block's records as (file kind, text) pieces: one piece per run of records bound for one file."""
    messages = block.messages
    if block.flags is None or len(set(block.flags)) == 1:
        kind = "stdout" if block.flags is None else _record_kind(block.flags[0])
        return [(kind, "\n".join(messages) + "\n")]
    pieces: list[tuple[str, str]] = []
    for kind, run in itertools.groupby(zip(map(_record_kind, block.flags), messages, strict=True), key=itemgetter(0)):
        pieces.append((kind, "".join(message + "\n" for _, message in run)))
    return pieces


class RunFiles:
    """The files under ``logs/`` (and whole files anywhere in the run directory)."""

    def __init__(self, run_dir: RunDir) -> None:
        self.run_dir = run_dir
        self._files: dict[Path, IO[str]] = {}
        self._by_worker: dict[tuple[str, str], IO[str]] = {}
        hour = time.strftime("%Y%m%d%H", time.gmtime())
        self.overview = self.open(run_dir.logs / f"job_progress_overview.{hour}.txt")

    def open(self, path: Path) -> IO[str]:
        """A buffered append handle, opened once per path."""
        handle = self._files.get(path)
        if handle is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115
            self._files[path] = handle
        return handle

    def add_line(self, line: Line) -> None:
        """A captured line goes to its worker's file (Azure: root logging sinks to stdout's)."""
        self._worker_file(_file_kind(line), line.worker).write(line.text + ("" if line.continued else "\n"))

    def add_lines(self, lines: Iterable[Line | LineBlock | RecordBlock]) -> None:
        """Lines in order: a run of lines bound for one file is one write."""
        key: tuple[str, str] | None = None
        pieces: list[str] = []
        for item in lines:
            if isinstance(item, RecordBlock):
                runs = [((kind, item.worker), text) for kind, text in _record_pieces(item)]
            elif isinstance(item, LineBlock):
                runs = [((item.stream, item.worker), "\n".join(item.texts) + "\n")]
            else:
                runs = [((_file_kind(item), item.worker), item.text if item.continued else item.text + "\n")]
            for where, text in runs:
                if where != key:
                    if key is not None:
                        self._worker_file(*key).write("".join(pieces))
                    key, pieces = where, []
                pieces.append(text)
        if key is not None:
            self._worker_file(*key).write("".join(pieces))

    def progress(self, message: str, level: str = "INFO") -> None:
        """A line of ``logs/job_progress_overview.<yyyymmddhh>.txt`` (Azure's overview format)."""
        self.overview.write(f"{utc_stamp(time.time())}|{level}|{message}\n")

    def system(self, worker: str, message: str) -> None:
        """The driver's line about a worker in ``logs/sys/node/<node>/processNNN.txt``."""
        self._worker_file("sys", worker).write(f"{utc_stamp(time.time())}|{message}\n")

    def _worker_file(self, kind: str, worker: str) -> IO[str]:
        """The per-worker files, looked up by (kind, worker): no path building per line."""
        key = (kind, worker)
        handle = self._by_worker.get(key)
        if handle is None:
            node, name = split_worker(worker)
            if kind == "sys":
                path = self.run_dir.sys_node_log(node, name)
            else:
                folder, suffix = _USER_FILES[kind]
                path = self.run_dir.user_log(folder, node, name, suffix)
            handle = self._by_worker[key] = self.open(path)
        return handle

    def user_error(self, worker: str, header: str, traceback: str) -> Path:
        """Full tracebacks of the user's code, ``logs/user/error/<node>/processNNN.txt``."""
        node, name = split_worker(worker)
        path = self.run_dir.logs / "user" / "error" / str(node) / f"{name}.txt"
        self.open(path).write(f"{utc_stamp(time.time())} {header}\n{traceback.rstrip()}\n\n")
        return path

    def write_text(self, relative: str, text: str) -> Path:
        """A whole small file under the run directory (job_result.txt, readme.txt...)."""
        with self.open_text(relative) as handle:
            handle.write(text)
        return self.run_dir.path / relative

    def write_bytes(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    @contextlib.contextmanager
    def open_text(self, relative: str) -> Iterator[IO[str]]:
        """A file under the run directory written through a temporary name (never half-written)."""
        path = self.run_dir.path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            yield handle
        os.replace(tmp, path)

    def flush(self) -> None:
        for handle in self._files.values():
            handle.flush()

    def close(self) -> None:
        self.flush()
        for handle in self._files.values():
            handle.close()
        self._files.clear()
        self._by_worker.clear()


def split_worker(worker: str) -> tuple[int, str]:
    """``"0/process003"`` -> ``(0, "process003")``."""
    node, _, name = worker.partition("/")
    return int(node), name
