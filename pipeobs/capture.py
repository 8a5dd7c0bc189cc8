"""Output capture at the file-descriptor level, attributed to invocations by in-band markers.

A worker's fds 1 and 2 are pipes whose read ends the *driver* holds, so everything written
before a SIGKILL or a segfault (by Python, C extensions, ``os.write`` or child processes) is
still read until EOF. To attribute each line to the mini-batch that wrote it, the worker writes
marker lines to both fds at the start and end of each invocation, after flushing Python's
buffers; the driver's :class:`~pipeobs.streams.StreamParser` follows them in stream order, so no
timestamp guessing is needed. Log records travel as marker lines on fd 2, keeping their level and
logger name and their place among the stderr lines. This module is the worker's side and the
markers' format; :mod:`pipeobs.streams` is the driver's reading of them.

Marker format: ``\\x1e<token>\\x1f<kind><payload>\\n`` where ``token`` is random per run, so
user output cannot forge one. Kinds: ``B`` begin (``<phase> <mini-batch> <attempt> <trace> <span>``),
``E`` end, ``L`` log record (tab-separated: :func:`_encode_log`), ``M`` metric point (JSON), ``S`` finished
span (JSON: spans of ``init()``, ``shutdown()`` and the entry script's own; a mini-batch's travels in its result).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from pipeobs.records import IDLE, Invocation, Line

__all__ = ["IDLE", "Invocation", "Line", "WorkerCapture", "emit_log_record", "emit_metric", "emit_span"]

MAX_LINE = 64 * 1024
_LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "WARN": 30, "ERROR": 40, "CRITICAL": 50}


def level_number(name: str | int) -> int:
    """``logging_level`` is not validated by Azure; unknown names fall back to INFO."""
    if isinstance(name, int):
        return name
    return _LEVELS.get(str(name).strip().upper(), logging.INFO)


def marker_prefix(token: str) -> bytes:
    return b"\x1e" + token.encode("ascii") + b"\x1f"


class WorkerCapture:
    """The worker side: line-buffered stdio, invocation markers, and a root logging handler."""

    def __init__(self, token: str, logging_level: str | int) -> None:
        self._mark = marker_prefix(token)
        self.level = level_number(logging_level)
        self._lock = threading.Lock()
        self._c_flush: Any = None

    def install(self) -> None:
        global _active
        _active = self
        # Line buffering: a print is in the pipe (and so survives a kill) as soon as it returns.
        for stream in (sys.stdout, sys.stderr):
            reconfigure = getattr(stream, "reconfigure", None)
            if reconfigure is not None:
                # write_through=False: with PYTHONUNBUFFERED a print is 4 writes, this keeps it at 1
                reconfigure(line_buffering=True, write_through=False, errors="backslashreplace")
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.addHandler(MarkerHandler(self))
        root.setLevel(self.level)
        try:  # C extensions print through libc's stdio, fully buffered on a pipe: flush it too
            import ctypes

            self._c_flush = ctypes.CDLL(None).fflush
        except (OSError, AttributeError):
            self._c_flush = None
        # pipeobs's own records go to the system log whatever the user's level
        logging.getLogger("pipeobs").setLevel(min(self.level, logging.INFO))

    def begin(self, invocation: Invocation) -> None:
        self._both(self._begin_line(invocation))

    def end(self, then: Invocation | None = None) -> None:
        """The end marker; with ``then``, the next invocation's begin marker follows it in the same writes:
        one write per stream at a boundary between two mini-batches instead of two."""
        lines = self._mark + b"E\n"
        if then is not None:
            lines += self._begin_line(then)
        self._both(lines)

    def _begin_line(self, invocation: Invocation) -> bytes:
        return self._mark + b"B" + _format_begin(invocation) + b"\n"

    def _both(self, lines: bytes) -> None:
        """``lines`` on fds 1 and 2, after what stdio holds."""
        with self._lock:
            _flush_stdio()
            if self._c_flush is not None:
                self._c_flush(None)
            _write_all(1, lines)
            _write_all(2, lines)

    def write_record(self, record: dict[str, object], kind: bytes) -> None:
        self.write_marker(kind, _encode_record(record))

    def write_marker(self, kind: bytes, body: bytes) -> None:
        data = b"".join((self._mark, kind, body, b"\n"))
        with self._lock:
            _flush_stdio()
            _write_all(2, data)


_active: WorkerCapture | None = None


def _encode_record(record: dict[str, object]) -> bytes:
    return json.dumps(record, separators=(",", ":"), default=_jsonable).encode()


def _format_begin(inv: Invocation) -> bytes:
    """``<phase> <mini_batch_id> <attempt> <trace_id> <span_id>``, ``-`` for none (cheap to parse)."""
    fields = (inv.phase, inv.mini_batch_id, inv.attempt, inv.trace_id, inv.span_id)
    return " ".join("-" if f is None else str(f) for f in fields).encode("ascii")


def emit_metric(kind: str, name: str, value: Any, description: str = "") -> None:
    """Send a metric point to the driver, in stream order with the worker's output."""
    if _active is None:
        raise RuntimeError("metrics can only be sent from inside a pipeobs worker")
    record = {"t": time.time(), "k": kind, "n": str(name), "v": value, "d": description or ""}
    _active.write_record(record, b"M")


def emit_span(record: dict[str, Any]) -> None:
    """Send a finished span to the driver (called by the worker's span exporter)."""
    if _active is not None:
        _active.write_record(record, b"S")


def _jsonable(value: Any) -> Any:
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError):
            pass
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    return str(value)


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def _write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)
    if written == len(data):  # a pipe takes a short write whole
        return
    view = memoryview(data)[written:]
    while view:
        written = os.write(fd, view)
        view = view[written:]


class MarkerHandler(logging.Handler):
    """Sends each record, formatted, as a log marker on fd 2 (kept in order with stderr)."""

    def __init__(self, capture: WorkerCapture) -> None:
        super().__init__()
        self._capture = capture

    def handle(self, record: logging.LogRecord) -> bool | logging.LogRecord:  # type: ignore[override]
        """As ``Handler.handle``, without the handler's lock: the marker write holds the capture's own."""
        passed = self.filter(record)
        if passed:
            self.emit(passed if isinstance(passed, logging.LogRecord) else record)
        return passed

    def emit(self, record: logging.LogRecord) -> None:
        # Attributes a record may lack are read from its __dict__: a getattr that misses raises inside.
        if record.__dict__.get("pipeobs_sent"):
            return  # an AzureLogHandler already sent it, with its custom dimensions
        if _forwarded_later(record):
            record.pipeobs_deferred = True  # a forwarding handler further on sends it, with its dimensions
            return
        try:
            sent_to = _sent_to(record) if _sent_to is not None else ()
            self._capture.write_marker(b"L", _encode_log(record, _message(record), _custom_dimensions(record), sent_to))
        except Exception:  # noqa: BLE001 - logging must never fail the user's code
            self.handleError(record)


_exception_formatter = logging.Formatter()


def _message(record: logging.LogRecord) -> str:
    """What ``Formatter("%(message)s")`` gives, without its per-record overhead."""
    message = record.getMessage()
    if record.exc_info and not record.exc_text:
        record.exc_text = _exception_formatter.formatException(record.exc_info)
    if record.exc_text:
        message += "\n" + record.exc_text
    if record.stack_info:
        message += "\n" + record.stack_info
    return message


def _forwarded_later(record: logging.LogRecord) -> bool:
    """Whether a handler that forwards to pipeobs (AzureLogHandler) also sits on the root logger."""
    handlers = logging.root.handlers
    return len(handlers) > 1 and any(
        getattr(h, "forwards_to_pipeobs", False) and record.levelno >= h.level for h in handlers
    )


# Set by pipeobs.telemetry.compose when the entry script has log handlers of its own that send to
# a destination pipeobs may export to: record -> the destinations those handlers send it to.
_sent_to: Callable[[logging.LogRecord], tuple[str, ...]] | None = None


def set_sent_to_hook(hook: Callable[[logging.LogRecord], tuple[str, ...]] | None) -> None:
    global _sent_to
    _sent_to = hook


def _custom_dimensions(record: logging.LogRecord) -> dict[str, Any] | None:
    dims = record.__dict__.get("pipeobs_user_dimensions", _NO_DIMENSIONS)
    if dims is _NO_DIMENSIONS:  # not rewritten by a composed handler's filter: as the user wrote them
        dims = record.__dict__.get("custom_dimensions")
    return dims if isinstance(dims, dict) else None


_NO_DIMENSIONS = object()


def _encode_log(
    record: logging.LogRecord, message: str, dims: dict[str, Any] | None, sent_to: tuple[str, ...] = ()
) -> bytes:
    """``time<TAB>level<TAB>logger<TAB>flags<TAB>message[<TAB>dimensions JSON]``, escaped.

    Cheaper than JSON on the hot path of every log record; ``flags`` holds ``s`` for pipeobs's
    own records and ``e`` for EntryScript's logger, then ``;`` and the comma-separated
    destinations the entry script's own handlers sent the record to, if any.
    """
    name = record.name
    flags = ("s" if name == "pipeobs" or name.startswith("pipeobs.") else "") + (
        "e" if record.__dict__.get("pipeobs_entry_script") else ""
    )
    if sent_to:
        flags += ";" + ",".join(sent_to)
    text = f"{record.created!r}\t{record.levelname}\t{_escape(name)}\t{flags}\t{_escape(message)}"
    if dims:
        text += "\t" + json.dumps(dims, separators=(",", ":"), default=_jsonable)
    return text.encode("utf-8", "backslashreplace")


def _escape(text: str) -> str:
    if "\\" not in text and "\n" not in text and "\t" not in text and "\r" not in text:
        return text  # most messages: four scans, no copies
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def emit_log_record(record: logging.LogRecord, custom_dimensions: dict[str, Any] | None) -> None:
    """Send ``record`` to the driver with its custom dimensions, once (for AzureLogHandler)."""
    if _active is None:
        raise RuntimeError("emit_log_record needs a pipeobs worker")
    message = record.getMessage() if record.args and not isinstance(record.args, dict) else str(record.msg)
    if record.exc_info:
        message += "\n" + logging.Formatter().formatException(record.exc_info)
    _active.write_marker(b"L", _encode_log(record, message, custom_dimensions))
    record.pipeobs_sent = True
