"""Text from user code made safe for a terminal: the one escaping function every view uses.

A line the entry script printed, a log message, an exception message, a metric name or a span
attribute may hold escape sequences (ESC, CSI, OSC: clear the screen, retitle the window, hide
text with a carriage return or backspaces). Views show every C0 and C1 control character and
DEL the way Python writes it in a string (``\\x1b``, ``\\r``, ``\\x07``); tabs and newlines stay
as layout. The store and the per-process files keep the text as captured: ``pipeobs logs
--raw`` prints it so, and ``--json`` holds the original strings (as strict JSON: non-finite
numbers are the strings ``inf``, ``-inf``, ``nan``).
"""

from __future__ import annotations

import json
import math
from typing import Any

_CONTROLS = [*range(0x20), 0x7F, *range(0x80, 0xA0)]
_ESCAPES = {code: chr(code).encode("unicode_escape").decode("ascii") for code in _CONTROLS if chr(code) not in "\t\n"}


def printable(text: str) -> str:
    """``text`` with its control characters (but tab and newline) written as escapes."""
    return text.translate(_ESCAPES)


def json_text(value: Any) -> str:
    """``value`` as strict JSON: ``inf``, ``-inf`` and ``nan`` become those strings (JSON has no such numbers)."""
    return json.dumps(_finite(value), default=str, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
