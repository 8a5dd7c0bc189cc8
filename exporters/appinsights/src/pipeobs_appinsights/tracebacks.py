"""Python traceback text -> Application Insights ``ExceptionDetails``.

Spans carry exceptions as text (``exception.stacktrace``, from ``traceback.format_exception``),
so the stack is parsed back from that text. Conventions on the wire:

* ``parsedStack`` lists frames innermost first, ``level`` 0 being the frame that raised, as in
  .NET's stack traces (opencensus lists them the same way but numbers them from the outermost).
* A chained exception (``raise ... from``, or raised while handling another) becomes several
  entries: the exception that escaped first (``id`` 1, ``outerId`` 0), then each cause, whose
  ``outerId`` is the ``id`` of the exception it caused.
* ``hasFullStack`` is false when frames were elided (``[Previous line repeated N more times]``)
  or dropped to keep the stack under :data:`MAX_STACK_CHARS`.
* Text that is not a plain traceback (exception groups) is sent whole as ``stack``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

MAX_STACK_CHARS = 32768
MAX_FIELD = 1024
MAX_MESSAGE = 32768
_HEADER = "Traceback (most recent call last):"
_CHAIN = re.compile(
    r"^(?:The above exception was the direct cause of the following exception:"
    r"|During handling of the above exception, another exception occurred:)\s*$",
    re.MULTILINE,
)
_FRAME = re.compile(r'^\s*File "(?P<file>.*)", line (?P<line>\d+)(?:, in (?P<method>.+?))?\s*$')
_REPEATED = re.compile(r"^\s*\[Previous line repeated \d+ more times?\]\s*$")
_GROUP = "Exception Group Traceback"


@dataclass
class Frame:
    """One ``File "...", line N, in f`` line."""

    file: str
    line: int
    method: str


@dataclass
class ParsedException:
    """One exception of a printed traceback: its frames outermost first, as Python prints them."""

    type_name: str
    message: str
    frames: list[Frame] = field(default_factory=list)
    elided: bool = False


def parse_traceback(text: str) -> list[ParsedException]:
    """The exceptions of a traceback text, in printed order (the one that escaped is last)."""
    return [parsed for segment in _CHAIN.split(text) if (parsed := _parse_segment(segment)) is not None]


def _parse_segment(segment: str) -> ParsedException | None:
    frames: list[Frame] = []
    tail: list[str] = []
    elided = False
    for line in segment.splitlines():
        match = _FRAME.match(line)
        if match and not tail:
            frames.append(Frame(match["file"], int(match["line"]), match["method"] or "<unknown>"))
        elif _REPEATED.match(line) and not tail:
            elided = True
        elif not tail and (not line.strip() or line.startswith((" ", "\t")) or line.startswith(_HEADER)):
            continue  # the header, source lines and ^^^^ markers
        else:
            tail.append(line)
    while tail and not tail[-1].strip():
        tail.pop()
    if not tail:
        return None if not frames else ParsedException("", "", frames, elided)
    type_name, _, first = tail[0].partition(":")
    message = "\n".join([first.strip(), *tail[1:]]).strip()
    return ParsedException(type_name.strip(), message, frames, elided)


def exception_details(type_name: str | None, message: str | None, stacktrace: str | None) -> list[dict[str, Any]]:
    """``ExceptionData.exceptions``: the escaped exception first, then its causes."""
    text = stacktrace or ""
    if _GROUP in text:
        return [_entry(1, 0, type_name or "Exception", message, None, stack=text)]
    parsed = parse_traceback(text) if text.strip() else []
    if not parsed:
        return [_entry(1, 0, type_name or "Exception", message, None, stack=text or None)]
    outer, causes = parsed[-1], parsed[-2::-1]
    entries = [_entry(1, 0, type_name or outer.type_name or "Exception", message or outer.message, outer)]
    for index, cause in enumerate(causes, start=2):
        entries.append(_entry(index, index - 1, cause.type_name or "Exception", cause.message, cause))
    return entries


def _entry(
    ident: int,
    outer_id: int,
    type_name: str,
    message: str | None,
    parsed: ParsedException | None,
    stack: str | None = None,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": ident,
        "outerId": outer_id,
        "typeName": type_name[:MAX_FIELD],
        "message": (message or type_name)[:MAX_MESSAGE],
        "hasFullStack": False,
    }
    if parsed is not None and parsed.frames:
        frames, complete = parsed_stack(parsed.frames)
        entry["parsedStack"] = frames
        entry["hasFullStack"] = complete and not parsed.elided
    elif stack:
        entry["stack"] = stack[:MAX_STACK_CHARS]
        entry["hasFullStack"] = len(stack) <= MAX_STACK_CHARS
    return entry


def parsed_stack(frames: list[Frame]) -> tuple[list[dict[str, Any]], bool]:
    """Frames innermost first (``level`` 0 raised), cut to :data:`MAX_STACK_CHARS`; and whether all fit."""
    out: list[dict[str, Any]] = []
    budget = MAX_STACK_CHARS
    for level, frame in enumerate(reversed(frames)):
        method, file_name = frame.method[:MAX_FIELD], frame.file[:MAX_FIELD]
        budget -= len(method) + len(file_name) + 32
        if budget < 0:
            return out, False
        out.append({"level": level, "method": method, "fileName": file_name, "line": frame.line})
    return out, True
