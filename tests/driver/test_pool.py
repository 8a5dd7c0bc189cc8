"""The worker pool's reading of a worker's output: begin markers and finished spans on two streams."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from pipeobs.driver.pool import WorkerPool
from pipeobs.driver.slots import Task, WorkerSlot
from pipeobs.records import Invocation, Span
from pipeobs.streams import Boundary


def pool() -> tuple[WorkerPool, list[Any]]:
    spans: list[Any] = []
    config = SimpleNamespace(node_count=1, effective_process_count=lambda: 1)
    plan: Any = SimpleNamespace(config=config, gpu_count=0, debug=None)
    journal: Any = SimpleNamespace(pipeline=SimpleNamespace(lines=None, metric=None, span=spans.append))
    return WorkerPool(plan, executor=None, journal=journal, clock=lambda: 0.0), spans  # type: ignore[arg-type]


def running(mini_batch_id: int, attempt: int) -> WorkerSlot:
    """A worker holding one dispatched attempt."""
    worker = WorkerSlot(0, "process000", None, since=0.0)
    worker.inflight.append(Task(SimpleNamespace(id=mini_batch_id), attempt))
    return worker


def test_a_span_read_before_its_stdout_marker_does_not_stay_open() -> None:
    """stdout and stderr are read independently: the stderr marker and the span may come first."""
    workers, spans = pool()
    worker = running(1, 1)
    inv = Invocation("run", 1, 1, "a" * 32, "b" * 16)
    span = Span({"span_id": "b" * 16, "name": "mini_batch"}, worker=worker.label)

    workers.output(worker, [Boundary("stderr", inv), span])
    workers.output(worker, [Boundary("stdout", inv)])  # the stdout pipe, read later

    assert spans == [span]
    assert worker.open_spans == {}  # nothing for the driver to close as "killed" when the worker exits


def test_a_begin_marker_read_after_the_result_opens_nothing() -> None:
    """A mini-batch's span travels in its result, on the channel, which may be read before the stderr pipe that
    holds its begin marker: the attempt has ended by then, and nothing is left open or timed."""
    workers, spans = pool()
    worker = running(1, 1)
    inv = Invocation("run", 1, 1, "a" * 32, "b" * 16)
    span = Span({"span_id": "b" * 16, "name": "mini_batch"}, worker=worker.label)

    worker.inflight.popleft()  # the driver took the result ...
    workers.span_ended(worker, span)  # ... and filed its span
    workers.output(worker, [Boundary("stderr", inv)])  # the stderr pipe, read later

    assert spans == [span]
    assert worker.open_spans == {} and worker.run_began == {}


def test_an_invocation_without_its_span_stays_open() -> None:
    workers, _ = pool()
    worker = running(1, 1)
    inv = Invocation("run", 1, 1, "a" * 32, "b" * 16)

    workers.output(worker, [Boundary("stdout", inv), Boundary("stderr", inv)])

    assert list(worker.open_spans) == ["b" * 16]
    assert worker.run_began == {(1, 1): 0.0}


def test_a_worker_is_topped_up_in_batches_once_it_holds_half_its_share() -> None:
    """With a prefetch of 8, a worker holding 5 tasks gets none (no message per finished task); holding 4, it
    gets 4 in one message."""
    from pipeobs.datasets import MiniBatch
    from pipeobs.driver.ledger import Ledger
    from pipeobs.driver.slots import WorkerState
    from pipeobs.jobs import Thresholds

    sent: list[tuple[str, Any]] = []
    workers, _ = pool()
    workers.executor = SimpleNamespace(send=lambda label, message: sent.append((label, message)))  # type: ignore[assignment]
    ledger = Ledger(Thresholds(), run_max_try=1)
    for index in range(20):
        ledger.add(MiniBatch(index, 0, "file", (f"f{index}",), item_count=1))
    worker = WorkerSlot(0, "process000", None, since=0.0)
    worker.set_state(WorkerState.READY, 0.0)
    workers.slots[worker.label] = worker

    workers.dispatch(ledger, prefetch=8)
    for _ in range(3):
        worker.inflight.popleft()  # three results came in: 5 left
        workers.dispatch(ledger, prefetch=8)
    worker.inflight.popleft()  # 4 left
    workers.dispatch(ledger, prefetch=8)

    assert [len(message.items) for _label, message in sent] == [8, 4]
    assert len(worker.inflight) == 8
