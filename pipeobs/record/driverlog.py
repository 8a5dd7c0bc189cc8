"""Rendering of the merged driver log, ``azureml-logs/70_driver_log.txt``.

One line per record: ``<UTC time> <worker> <mini-batch> <LEVEL> <text>``, so that
``grep 'mb=17 '`` answers "what did mini-batch 17 print?".
"""

from __future__ import annotations

import time

from pipeobs.capture import Invocation


def utc_stamp(when: float) -> str:
    """ISO 8601 UTC with milliseconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when % 1 * 1000):03d}Z"


def invocation_label(inv: Invocation | None) -> str:
    if inv is None:
        return "-"
    if inv.phase == "run":
        return f"mb={inv.mini_batch_id} a={inv.attempt}"
    return inv.phase


def render_line(when: float, worker: str, inv: Invocation | None, level: str, text: str) -> str:
    return f"{utc_stamp(when)} {worker} {invocation_label(inv)} {level} {text}\n"
