"""The driver's reading of a worker's fds 1 and 2: lines, log records, markers, in stream order.

A :class:`StreamParser` per stream follows the markers the worker writes (:mod:`pipeobs.capture` holds
their format and the worker's side) and yields what the driver records: single lines, blocks of plain
lines (:class:`~pipeobs.records.LineBlock`) and of log records (:class:`~pipeobs.records.RecordBlock`),
boundaries of invocations, metric points and finished spans.

Lines are decoded as UTF-8 with invalid bytes escaped (``\\x..``), and lines longer than
:data:`~pipeobs.capture.MAX_LINE` bytes are split into pieces of that size (the pieces carry ``continued``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipeobs.capture import MAX_LINE, marker_prefix
from pipeobs.records import IDLE, Invocation, Line, LineBlock, Metric, RecordBlock, Span, log_flags


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


def _parse_begin(payload: bytes) -> Invocation:
    phase, mb, attempt, trace, span = payload.decode("ascii").split(" ")
    return Invocation(
        phase,
        None if mb == "-" else int(mb),
        None if attempt == "-" else int(attempt),
        None if trace == "-" else trace,
        None if span == "-" else span,
    )


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
