"""What the current worker process is and what it is running (read by shims and telemetry)."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from pipeobs.capture import IDLE, Invocation


@dataclass(frozen=True)
class WorkerInfo:
    """The identity and folders of one worker process."""

    step_id: str
    step_name: str
    node: int
    name: str  # processNNN
    run_dir: str
    output_dir: str
    working_dir: str
    logging_level: str

    @property
    def label(self) -> str:
        """The worker's name in telemetry: ``<node>/processNNN``."""
        return f"{self.node}/{self.name}"


_worker: WorkerInfo | None = None
current_invocation: contextvars.ContextVar[Invocation] = contextvars.ContextVar(
    "pipeobs_invocation", default=IDLE
)


def set_worker(info: WorkerInfo) -> None:
    global _worker
    _worker = info


def worker() -> WorkerInfo | None:
    """The worker this process is, or None outside a pipeobs worker."""
    return _worker
