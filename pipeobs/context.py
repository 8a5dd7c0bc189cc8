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


def add_pipeobs_context(_logger: object, _method_name: str, event_dict: dict[str, object]) -> dict[str, object]:
    """A structlog processor adding the current step and mini-batch to every event.

    One line in the entry script::

        structlog.configure(processors=[pipeobs.add_pipeobs_context, structlog.processors.JSONRenderer()])

    Adds ``step_id``, ``worker``, ``mini_batch_id``, ``attempt``, ``trace_id`` and ``span_id``
    (the same values as the store's rows); outside a pipeobs worker it adds nothing.
    """
    info = _worker
    if info is None:
        return event_dict
    inv = current_invocation.get()
    event_dict.setdefault("step_id", info.step_id)
    event_dict.setdefault("worker", info.label)
    if inv.phase != IDLE.phase:
        event_dict.setdefault("phase", inv.phase)
    if inv.mini_batch_id is not None:
        event_dict.setdefault("mini_batch_id", inv.mini_batch_id)
        event_dict.setdefault("attempt", inv.attempt)
    if inv.trace_id is not None:
        event_dict.setdefault("trace_id", inv.trace_id)
        event_dict.setdefault("span_id", inv.span_id)
    return event_dict
