"""The driver's side of telemetry: the ``job`` span, built-in metrics, spans of killed workers and of
invocations still running."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from pipeobs.record.pipeline import Pipeline
from pipeobs.records import Invocation, Metric, Span
from pipeobs.telemetry.metrics import JobMetrics, status_labels
from pipeobs.telemetry.spans import (
    CallbackSpanExporter,
    context_from_traceparent,
    killed_span,
    make_tracer_provider,
    pending_span,
    traceparent_of,
)


class JobTelemetry:
    """Opens the job span, counts what happens, and closes the span with the job's outcome."""

    def __init__(self, step_id: str, step_name: str, pipeline: Pipeline, metrics: JobMetrics,
                 parent: str | None = None) -> None:
        """``parent``: the traceparent of a v2 pipeline's span, when the job is one of its nodes."""
        from opentelemetry.trace import SpanKind

        self.step_id = step_id
        self._pipeline = pipeline
        self.provider = make_tracer_provider(
            step_name, {"pipeobs.step_id": step_id}, CallbackSpanExporter(lambda r: pipeline.span(Span(r, "driver")))
        )
        tracer = self.provider.get_tracer("pipeobs")
        self.span = tracer.start_span(
            "job", kind=SpanKind.CONSUMER, attributes={"pipeobs.step_id": step_id, "pipeobs.step_name": step_name},
            context=context_from_traceparent(parent) if parent else None,
        )
        self.traceparent = traceparent_of(self.span)
        ctx = self.span.get_span_context()
        self.trace_id = f"{ctx.trace_id:032x}"
        self.span_id = f"{ctx.span_id:016x}"
        self._job = Invocation("job", None, None, self.trace_id, self.span_id)
        self.metrics = metrics
        self._children: dict[tuple[int, str, str | None], Any] = {}
        # What attempts added since the last publish(): prometheus-client is updated once a second, not per
        # mini-batch (each update takes a lock and more time than the rest of the bookkeeping).
        self._increments: dict[Any, float] = {}
        self._durations: list[float] = []
        self._peaks: dict[str, int] = {}
        self._last_progress: float | None = None
        # Where each attempt's duration and peak-RSS observations go as metric records: the exporters' sink
        # when the run has exporters, else nowhere. The store reads them from the attempt rows, and no
        # other sink uses them, so without exporters they are not built at all.
        self.observations: Callable[[Metric], None] | None = None

    def attempt(self, worker: str, mb_id: int, attempt: int, result: dict[str, Any], final: str | None) -> None:
        """One finished attempt; ``final`` is "succeeded"/"failed" when the mini-batch is finished."""
        m = self.metrics
        status = result["status"]
        add = self._add
        add(self._child(m.attempts, status, worker), 1)
        now = self._last_progress = time.time()
        if final is not None:
            add(self._child(m.mini_batches, final), 1)
        total, succeeded = result.get("total", 0) or 0, result.get("succeeded", 0) or 0
        if status == "RUN_DONE":
            add(self._child(m.items, "succeeded", worker), succeeded)
            if total > succeeded:
                add(self._child(m.items, "failed", worker), total - succeeded)
        elif final == "failed":
            add(self._child(m.items, "failed", worker), max(total, 1))
        elapsed, peak = result.get("elapsed"), result.get("peak_rss")
        if elapsed is not None:
            self._durations.append(elapsed)
        if peak:
            self._peaks[worker] = peak
        emit = self.observations
        if emit is not None:  # as the exporters have always received them
            inv = Invocation("run", mb_id, attempt, result.get("trace_id"), result.get("span_id"))
            labels = status_labels(status)
            if elapsed is not None:
                emit(Metric(inv, "observation", "pipeobs_mini_batch_duration_seconds", elapsed, "", now, worker, labels))
            if peak:
                emit(Metric(inv, "observation", "pipeobs_mini_batch_peak_rss_bytes", peak, "", now, worker, labels))

    def _add(self, child: Any, amount: float) -> None:
        self._increments[child] = self._increments.get(child, 0) + amount

    def _apply(self) -> None:
        """Hand what attempts added since the last call to prometheus-client."""
        increments, self._increments = self._increments, {}
        for child, amount in increments.items():
            child.inc(amount)
        durations, self._durations = self._durations, []
        observe = self.metrics.duration.observe
        for elapsed in durations:
            observe(elapsed)
        for worker, peak in self._peaks.items():
            self.metrics.peak_rss.labels(worker=worker).set(peak)
        self._peaks.clear()
        if self._last_progress is not None:
            self.metrics.last_progress.set(self._last_progress)

    def _child(self, metric: Any, status: str, worker: str | None = None) -> Any:
        """``metric.labels(status=..[, worker=..])``, cached: the lookup costs more than the increment."""
        key = (id(metric), status, worker)
        child = self._children.get(key)
        if child is None:
            labels = {"status": status} if worker is None else {"status": status, "worker": worker}
            child = self._children[key] = metric.labels(**labels)
        return child

    def resources(self, samples: dict[str, dict[str, float]]) -> None:
        for worker, sample in samples.items():
            self.metrics.cpu.labels(worker=worker).set(sample["cpu"])
            self.metrics.rss.labels(worker=worker).set(sample["rss"] + sample["children_rss"])

    def publish(self, queue_depth: int, scheduled: int, finished: int) -> None:
        """The built-in series that changed since the last call, as metric records."""
        self._apply()
        self.metrics.queue_depth.set(queue_depth)
        self.metrics.scheduled.set(scheduled)
        self.metrics.finished.set(finished)
        now = time.time()
        for name, kind, labels, value in self.metrics.snapshot():
            worker = json.loads(labels).get("worker")
            self._pipeline.metric(Metric(self._job, kind, name, value, "", now, worker, labels))

    def killed(self, worker: str, phase: str, start: float, reason: str, ids: tuple[str | None, str | None],
               mb_id: int | None = None, attempt: int | None = None) -> None:
        """Write the span of an invocation that a kill or crash cut short."""
        record = killed_span(_span_name(phase), ids[0] or self.trace_id, self.span_id, start, reason,
                             self._attributes(worker, mb_id, attempt), span_id=ids[1])
        self._pipeline.span(Span(record, worker))

    def pending(self, worker: str, span_id: str, inv: Invocation, start: float) -> Span:
        """The span of an invocation still running (no end), for the store alone: exporters, files and
        alerts get the span that ends it."""
        record = pending_span(_span_name(inv.phase), inv.trace_id or self.trace_id, self.span_id, span_id, start,
                              self._attributes(worker, inv.mini_batch_id, inv.attempt))
        return Span(record, worker)

    def _attributes(self, worker: str, mb_id: int | None, attempt: int | None) -> dict[str, Any]:
        """The attributes of a span the driver writes for a worker's invocation."""
        attributes: dict[str, Any] = {"pipeobs.step_id": self.step_id, "pipeobs.worker": worker}
        if mb_id is not None:
            attributes.update({"pipeobs.mini_batch_id": mb_id, "pipeobs.attempt": attempt})
        return attributes

    def end(self, ok: bool, reason: str | None, counts: dict[str, Any]) -> None:
        from opentelemetry.trace import Status, StatusCode

        self._apply()
        self.metrics.job_running.set(0)
        self.span.set_attributes({f"pipeobs.{k}": v for k, v in counts.items() if v is not None})
        self.span.set_status(Status(StatusCode.OK) if ok else Status(StatusCode.ERROR, reason or "failed"))
        self.span.end()
        self.provider.shutdown()


def _span_name(phase: str) -> str:
    """The span of an invocation's phase: ``mini_batch`` for ``run``, else the phase (``init``, ``shutdown``)."""
    return "mini_batch" if phase == "run" else phase
