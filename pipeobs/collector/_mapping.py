"""What App Insights and OTLP mapping share: the keys that fill columns, ids and levels."""

from __future__ import annotations

from typing import Any

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# attribute / property names that fill a column of their own (first one found wins)
MINI_BATCH_KEYS = ("pipeobs.mini_batch_id", "mini_batch_id")
ATTEMPT_KEYS = ("pipeobs.attempt", "attempt")
WORKER_KEYS = ("pipeobs.worker",)
PHASE_KEYS = ("pipeobs.phase", "phase")
COLUMN_KEYS = frozenset((*MINI_BATCH_KEYS, *ATTEMPT_KEYS, *WORKER_KEYS, *PHASE_KEYS))
_LEVEL_ALIASES = {"WARN": "WARNING", "FATAL": "CRITICAL", "TRACE": "DEBUG", "VERBOSE": "DEBUG", "INFORMATION": "INFO"}


def first(mapping: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = mapping.get(key)
        if value is not None and value != "":
            return value
    return None


def int_or_none(value: Any) -> int | None:
    """``3``, ``"3"`` or ``3.0`` as 3; anything else (``"abc"``, None, True) as None."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def without(mapping: dict[str, Any], keys: Any) -> dict[str, Any]:
    """``mapping`` less the keys whose values went into a column."""
    return {k: v for k, v in mapping.items() if k not in keys}


def placement(attributes: dict[str, Any]) -> dict[str, Any]:
    """The mini-batch, attempt and phase columns named by pipeobs attributes, when present."""
    return {
        "mini_batch_id": int_or_none(first(attributes, MINI_BATCH_KEYS)),
        "attempt": int_or_none(first(attributes, ATTEMPT_KEYS)),
        "phase": first(attributes, PHASE_KEYS),
    }


def hex_id(value: str | bytes | None, length: int | None = None) -> str | None:
    """An id as lowercase hex; empty, all-zero (no context) or, with ``length``, mis-sized ids are None."""
    if isinstance(value, bytes):
        value = value.hex()
    if not value:
        return None
    value = value.strip().lower()
    if not value or set(value) == {"0"}:
        return None
    if length is not None and len(value) != length:
        return None
    return value


def level_from_text(name: Any) -> str:
    """A level name from another vocabulary (OTel, .NET, App Insights) as one of :data:`LEVELS`."""
    name = name.strip().upper() if isinstance(name, str) else ""
    name = _LEVEL_ALIASES.get(name, name)
    return name if name in LEVELS else "INFO"


def level_name(number: int | None) -> str:
    """App Insights ``severityLevel`` 0..4 as a level name (INFO when absent or out of range)."""
    if number is None or not 0 <= number < len(LEVELS):
        return "INFO"
    return LEVELS[number]
