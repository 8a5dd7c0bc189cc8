"""Output capture at the file-descriptor level, attributed to invocations by in-band markers.

A worker's fds 1 and 2 are pipes whose read ends the *driver* holds, so everything written
before a SIGKILL or a segfault (by Python, C extensions, ``os.write`` or child processes) is
still read until EOF. To attribute each line to the mini-batch that wrote it, the worker writes
marker lines to both fds at the start and end of each invocation, after flushing Python's
buffers; the driver's :class:`StreamParser` follows them in stream order, so no timestamp
guessing is needed. Log records travel as marker lines on fd 2 (JSON), keeping their level and
logger name and their place among the stderr lines.

Marker format: ``\\x1e<token>\\x1f<kind><payload>\\n`` where ``token`` is random per run, so
user output cannot forge one. Kinds: ``B`` begin (``<phase> <mini-batch> <attempt> <trace> <span>``),
``E`` end, ``L`` log record (tab-separated: :func:`_encode_log`), ``M`` metric point (JSON), ``S`` finished
span (JSON: spans of ``init()``, ``shutdown()`` and the entry script's own; a mini-batch's travels in its result).

Lines are decoded as UTF-8 with invalid bytes escaped (``\\x..``), and lines longer than
:data:`MAX_LINE` bytes are split into pieces of that size (the pieces carry ``continued``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pipeobs.records import IDLE, Invocation, Line, LineBlock, Metric, RecordBlock, Span, log_flags

__all__ = ["IDLE", "Boundary", "Invocation", "Line", "StreamParser", "WorkerCapture", "emit_log_record", "emit_metric", "emit_span"]

MAX_LINE = 64 * 1024
_LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "WARN": 30, "ERROR": 40, "CRITICAL": 50}


def level_number(name: str | int) -> int:
    """``logging_level`` is not validated by Azure; unknown names fall back to INFO."""
    if isinstance(name, int):
        return name
    return _LEVELS.get(str(name).strip().upper(), logging.INFO)


def marker_prefix(token: str) -> bytes:
    return b"\x1e" + token.encode("ascii") + b"\x1f"


@dataclass(slots=True)
class Boundary:
    """A begin (``invocation`` set) or end (``invocation`` is None) marker."""

    stream: str
    invocation: Invocation | None


Item = Line | LineBlock | RecordBlock | Boundary | Metric | Span  # what a parser yields


class StreamParser:
    """Splits one worker stream into lines and boundaries; used by the driver."""

    def __init__(self, stream: str, token: str, worker: str = "") -> None:
        self.stream = stream
        self.worker = worker
        self._mark = marker_prefix(token)
        self._log_mark = self._mark + b"L"
        self._log_prefix = self._log_mark.decode("ascii")
        self._boundary_lines = (b"\n" + self._mark + b"B", b"\n" + self._mark + b"E")
        self._log_run, self._log_fields = _log_patterns(self._mark)
        self._buffer = bytearray()
        self._now = 0.0
        self.invocation: Invocation | None = IDLE  # None: begun, its marker parsed when a line needs it
        self._begin = b""
        # Only stderr's markers reach the driver as boundaries (the stream the finished span travels on);
        # stdout's only attribute its lines.
        self._boundaries = stream != "stdout"

    def feed(self, data: bytes) -> Iterator[Item]:
        """The lines, markers and records completed by ``data``; lines carry the time it was read."""
        self._now = time.time()
        self._buffer += data
        yield from self._drain(final=False)

    def close(self) -> Iterator[Item]:
        """End of stream: flush a last partial line."""
        self._now = time.time()
        yield from self._drain(final=True)

    def _drain(self, final: bool) -> Iterator[Item]:
        buf = self._buffer
        pos = 0 if self._boundaries else self._skip_markers(buf)
        slow_until = -1  # a block with a line too long for the quick split is taken line by line up to here
        while pos < len(buf):
            if not final and pos > slow_until:  # the complete lines up to the next marker's line, at once
                mark = buf.find(self._mark, pos)
                end = buf.rfind(b"\n", pos, len(buf) if mark < 0 else mark)
                if end >= pos:
                    plain = self._plain_lines(bytes(buf[pos:end]))
                    if plain is not None:
                        yield from plain
                        pos = end + 1
                        continue
                    slow_until = end
            if buf.startswith(self._log_mark, pos):  # a run of log records, at once
                run = self._log_run.match(buf, pos)
                if run is not None:
                    pos = run.end()
                    yield from self._records(bytes(buf[run.start() : pos]))
                    continue
            newline = buf.find(b"\n", pos)
            mark = buf.find(self._mark, pos, newline if newline >= 0 else len(buf))
            if mark > pos:  # text before a marker is a line of its own (cut as any long line)
                end = min(mark, pos + MAX_LINE)
                yield self._line(bytes(buf[pos:end]), continued=end < mark)
                pos = end
                continue
            if newline < 0:
                if mark == pos and not final:
                    break  # wait for the rest of the marker line
                if len(buf) - pos < MAX_LINE and not final:
                    break
                end = min(len(buf), pos + MAX_LINE)
                yield self._line(bytes(buf[pos:end]), continued=end < len(buf) or not final)
                pos = end
                continue
            if newline - pos > MAX_LINE and mark != pos:
                yield self._line(bytes(buf[pos : pos + MAX_LINE]), continued=True)
                pos += MAX_LINE
                continue
            is_marker = mark == pos
            raw = bytes(buf[pos:newline])
            pos = newline + 1
            item = self._marker(raw) if is_marker else self._line(raw)
            if item is not None:
                yield item
        del buf[:pos]

    def _skip_markers(self, buf: bytearray) -> int:
        """Where the general loop starts on stdout: past the complete lines at the start if each is a begin or
        an end marker (only the last one matters: it attributes the lines that follow), else at 0."""
        end = buf.rfind(b"\n")
        begins, ends = self._boundary_lines  # b"\n" + a begin or end marker's start
        if end < 0 or not (buf.startswith(begins[1:]) or buf.startswith(ends[1:])):
            return 0
        if buf.count(begins, 0, end) + buf.count(ends, 0, end) != buf.count(b"\n", 0, end):
            return 0
        self._marker(bytes(buf[buf.rfind(b"\n", 0, end) + 1 : end]))
        return end + 1

    def _records(self, run: bytes) -> list[Item]:
        """A run of complete log record marker lines as one :class:`RecordBlock` whose records are those
        :func:`_decode_log` decodes one by one, decoded at once (a few C-level passes over the run); a run with
        a line that is no record is taken line by line."""
        text = run.decode("utf-8", "backslashreplace")
        count, prefix = text.count("\n"), self._log_prefix
        dimensions: list[dict[str, Any] | None] | None = None
        if text.count("\t") == 4 * count and text.count(prefix) == count:
            # Every record has five fields (escaped but for its level), so four tabs a line mean none has
            # dimensions; and the prefix only starts lines: the lot splits into one list of fields.
            fields = text.replace(prefix, "").replace("\n", "\t").split("\t")
            times, levels, loggers, flags, messages = (fields[i:-1:5] for i in range(5))
        else:
            found = self._log_fields.findall(text)
            if len(found) != count:
                return self._each_marker(run)
            times, levels, loggers, flags, messages, encoded = map(list, zip(*found, strict=True))
            if any(encoded):
                dimensions = [json.loads(d) if d else None for d in encoded]
        if "\\" in text:
            loggers, messages = list(map(_unescape, loggers)), list(map(_unescape, messages))
        return [RecordBlock(self._current(), times, levels, loggers, messages, flags if any(flags) else None,
                            dimensions, self.worker)]

    def _each_marker(self, run: bytes) -> list[Item]:
        return [item for raw in run.split(b"\n")[:-1] if (item := self._marker(raw)) is not None]

    def _plain_lines(self, block: bytes) -> list[LineBlock] | None:
        """The lines of a block of complete lines holding no marker (its last newline left out), as one
        :class:`LineBlock`; None if one is longer than :data:`MAX_LINE` or holds NUL (the general loop takes them).

        The block is decoded at once: a newline never falls inside a UTF-8 sequence, so the texts are those
        of decoding each line apart."""
        if b"\x00" in block or (len(block) > MAX_LINE and max(map(len, block.split(b"\n"))) > MAX_LINE):
            return None
        texts = block.decode("utf-8", "backslashreplace").split("\n")
        if b"\r" in block:
            texts = [text.rstrip("\r") for text in texts]
        return [LineBlock(self.stream, self._current(), texts, self._now, self.worker)]

    def _current(self) -> Invocation:
        """The invocation the stream is in (a begin marker read but not yet needed is parsed now)."""
        if self.invocation is None:
            self.invocation = _parse_begin(self._begin)
        return self.invocation

    def _line(self, raw: bytes, continued: bool = False) -> Line:
        text = raw.decode("utf-8", "backslashreplace").rstrip("\r")
        return Line(self.stream, self._current(), text, continued=continued, time=self._now, worker=self.worker)

    def _marker(self, raw: bytes) -> Item | None:
        body = raw[len(self._mark) :]
        kind, payload = body[:1], body[1:]
        if kind == b"B":
            if not self._boundaries:
                self.invocation, self._begin = None, payload
                return None
            self.invocation = _parse_begin(payload)
            return Boundary(self.stream, self.invocation)
        if kind == b"E":
            self.invocation = IDLE
            return Boundary(self.stream, None) if self._boundaries else None
        if kind == b"L":
            line = _decode_log(self._current(), payload)
            line.worker = self.worker
            return line
        record = json.loads(payload)
        if kind == b"M":
            return Metric(self._current(), record["k"], record["n"], record["v"], record["d"], record["t"], self.worker)
        return Span(record, self.worker)


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


def _parse_begin(payload: bytes) -> Invocation:
    phase, mb, attempt, trace, span = payload.decode("ascii").split(" ")
    return Invocation(
        phase,
        None if mb == "-" else int(mb),
        None if attempt == "-" else int(attempt),
        None if trace == "-" else trace,
        None if span == "-" else span,
    )


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


_UNESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
_ESCAPED = re.compile(r"\\(.)")


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    return _ESCAPED.sub(lambda m: _UNESCAPES.get(m.group(1), m.group(0)), text)


def _log_patterns(mark: bytes) -> tuple[re.Pattern[bytes], re.Pattern[str]]:
    """A run of complete log record marker lines without NUL (SQLite's JSON would cut the text: such a record
    is a line of its own); and once the run is decoded, the fields of each record: time, level, logger, flags,
    message, and its dimensions JSON or ''."""
    run = re.compile(rb"(?:" + re.escape(mark + b"L") + rb"[^\n\x00]*\n)+")
    fields = re.compile("(?m)^" + re.escape(mark.decode("ascii") + "L") + r"([^\t\n]*)\t" * 4 + r"([^\t\n]*)(?:\t([^\n]+))?\n")
    return run, fields


def _decode_log(invocation: Invocation, payload: bytes) -> Line:
    fields = payload.decode("utf-8", "backslashreplace").split("\t", 5)
    when, level, name, flags, message = fields[:5]
    system, entry_script, sent_to = log_flags(flags)
    return Line(
        "log",
        invocation,
        _unescape(message),
        level=level,
        logger=_unescape(name),
        system=system,
        entry_script=entry_script,
        time=float(when),
        custom_dimensions=json.loads(fields[5]) if len(fields) > 5 else None,
        sent_to=sent_to,
    )


def emit_log_record(record: logging.LogRecord, custom_dimensions: dict[str, Any] | None) -> None:
    """Send ``record`` to the driver with its custom dimensions, once (for AzureLogHandler)."""
    if _active is None:
        raise RuntimeError("emit_log_record needs a pipeobs worker")
    message = record.getMessage() if record.args and not isinstance(record.args, dict) else str(record.msg)
    if record.exc_info:
        message += "\n" + logging.Formatter().formatException(record.exc_info)
    _active.write_marker(b"L", _encode_log(record, message, custom_dimensions))
    record.pipeobs_sent = True
