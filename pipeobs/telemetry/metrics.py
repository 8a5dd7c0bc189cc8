"""The job's built-in metrics, with Prometheus names, kept in a prometheus-client registry.

The driver updates them as attempts finish; :meth:`JobMetrics.snapshot` lists the series that
changed, which the job telemetry sends down the record pipeline as metric records, so ``pipeobs metrics`` and the explorer read one time series
per name. Per-attempt observations (duration, peak RSS) are the attempt rows' ``elapsed`` and ``peak_rss``,
read as points carrying the mini-batch, attempt, worker and span they came from, and sent to the exporters as
records of kind ``observation``.

:class:`MetricsEndpoint` serves the same registry to Prometheus while the job runs
(``pipeobs run --metrics-port``), every series labelled with the run's ``step_id`` and ``step``,
and pushes it to a Pushgateway once the job has ended (``--pushgateway``): the endpoint goes away
with the run, so the pushed copy is the one that holds the final values (``pipeobs_job_running 0``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeobs.records import Metric

DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


class JobMetrics:
    """Counters, gauges and a histogram for one job (a private registry, not the global one)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=False)
        reg = self.registry
        self.mini_batches = Counter("pipeobs_mini_batches", "Mini-batches finished, by final status", ["status"], registry=reg)
        self.attempts = Counter("pipeobs_attempts", "Mini-batch attempts, by attempt status and worker", ["status", "worker"],
                                registry=reg)
        self.items = Counter("pipeobs_items", "Items processed, by status and worker", ["status", "worker"], registry=reg)
        self.duration = Histogram(
            "pipeobs_mini_batch_duration_seconds", "Duration of mini-batch attempts", buckets=DURATION_BUCKETS, registry=reg
        )
        self.retries = Counter("pipeobs_retries", "Mini-batch attempts re-queued after a failure", registry=reg)
        self.timeouts = Counter("pipeobs_timeouts", "Workers killed past their time budget", registry=reg)
        self.worker_restarts = Counter("pipeobs_worker_restarts", "Worker processes replaced", registry=reg)
        self.queue_depth = Gauge("pipeobs_queue_depth", "Mini-batches waiting to be dispatched", registry=reg)
        self.job_running = Gauge("pipeobs_job_running", "1 while the job runs", registry=reg)
        self.cpu = Gauge("pipeobs_process_cpu_percent", "CPU percent of a worker process", ["worker"], registry=reg)
        self.rss = Gauge("pipeobs_process_rss_bytes", "Resident memory of a worker process", ["worker"], registry=reg)
        self.peak_rss = Gauge(
            "pipeobs_mini_batch_peak_rss_bytes", "Peak resident memory of the last mini-batch", ["worker"], registry=reg
        )
        self.scheduled = Gauge("pipeobs_mini_batches_scheduled", "Mini-batches known so far", registry=reg)
        self.finished = Gauge("pipeobs_mini_batches_finished", "Mini-batches finished (succeeded or failed)", registry=reg)
        self.job_start = Gauge("pipeobs_job_start_timestamp_seconds", "When the job started (Unix time)", registry=reg)
        self.last_progress = Gauge(
            "pipeobs_last_progress_timestamp_seconds", "When an attempt last finished, else the job start (Unix time)",
            registry=reg,
        )
        self.run_invocation_timeout = Gauge(
            "pipeobs_run_invocation_timeout_seconds", "The job's run_invocation_timeout", registry=reg
        )
        self.progress_update_timeout = Gauge(
            "pipeobs_progress_update_timeout_seconds", "The job's progress_update_timeout (as in effect)", registry=reg
        )
        self.memory_limit = Gauge(
            "pipeobs_memory_limit_bytes", "The driver's cgroup memory limit, else the machine's memory", registry=reg
        )
        self.user_metric = Gauge("pipeobs_user_metric", "Last value of a numeric run.log metric", ["name"], registry=reg)
        self.alerts_firing = Gauge("pipeobs_alerts_firing", "1 while the alert fires", ["alertname", "severity"],
                                   registry=reg)
        self._last: dict[tuple[str, str], float] = {}

    def job_started(self, now: float, run_invocation_timeout: float, progress_update_timeout: float) -> None:
        """The series fixed at the start: the clock's origin, the job's time limits, the memory limit."""
        self.job_running.set(1)
        self.job_start.set(now)
        self.last_progress.set(now)
        self.run_invocation_timeout.set(run_invocation_timeout)
        self.progress_update_timeout.set(progress_update_timeout)
        self.memory_limit.set(memory_limit())

    def add_metric(self, record: Metric) -> None:
        """A sink of the record pipeline: a numeric ``run.log`` value becomes ``pipeobs_user_metric{name}``."""
        if record.kind == "scalar":
            value, _ = record.number_or_json()
            if value is not None:
                self.user_metric.labels(name=record.name).set(value)

    def snapshot(self) -> list[tuple[str, str, str, float]]:
        """``(name, kind, labels JSON, value)`` for each series that changed since the last call."""
        rows = []
        for family in self.registry.collect():
            if family.name == "pipeobs_user_metric":  # the user's own records hold these values
                continue
            kind = family.type
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                labels = json.dumps(sample.labels, sort_keys=True)
                key = (sample.name, labels)
                if self._last.get(key) == sample.value:
                    continue
                self._last[key] = sample.value
                rows.append((sample.name, kind, labels, float(sample.value)))
        return rows


_LABELS_JSON: dict[str, str] = {}


def status_labels(status: str) -> str:
    """``{"status": ...}`` as the store's labels JSON (cached: one per attempt status)."""
    labels = _LABELS_JSON.get(status)
    if labels is None:
        labels = _LABELS_JSON[status] = json.dumps({"status": status}, sort_keys=True)
    return labels


def memory_limit() -> float:
    """The tightest cgroup memory limit on this process or its parent groups, else the machine's total memory."""
    import psutil

    limits = [float(psutil.virtual_memory().total)]
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:  # not Linux
        return limits[0]
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2; "max" is no limit
            root, name = Path("/sys/fs/cgroup"), "memory.max"
        elif "memory" in controllers.split(","):  # cgroup v1; no limit is a huge number
            root, name = Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes"
        else:
            continue
        folder = root / path.lstrip("/")
        for group in (folder, *folder.parents[: len(folder.parents) - len(root.parents)]):
            with contextlib.suppress(OSError, ValueError):
                limits.append(float((group / name).read_text()))
    return min(limits)


class StepSeries:
    """A collector: the job's registry as Prometheus reads it, every series also labelled ``step_id`` and ``step``.

    The ``_created`` samples of counters and histograms are left out: Prometheus 2.x ignores them.
    """

    def __init__(self, registry: Any, labels: dict[str, str]) -> None:
        self._registry = registry
        self._labels = labels

    def collect(self) -> Iterator[Any]:
        from prometheus_client.metrics_core import Metric as Family

        for family in self._registry.collect():
            labelled = Family(family.name, family.documentation, family.type, family.unit)
            labelled.samples = [s._replace(labels={**self._labels, **s.labels})
                                for s in family.samples if not s.name.endswith("_created")]
            yield labelled


class MetricsEndpoint:
    """The job's metrics for Prometheus: served over HTTP while the job runs, pushed to a Pushgateway at its end."""

    def __init__(self, metrics: JobMetrics, step_id: str, step_name: str) -> None:
        from prometheus_client import CollectorRegistry

        self.step_id = step_id
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StepSeries(metrics.registry, {"step_id": step_id, "step": step_name}))
        self._server: Any = None
        self._thread: Any = None

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` (0: any free port) from a thread; the port. OSError if it is taken."""
        from prometheus_client import start_http_server

        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    def push(self, url: str, timeout: float) -> None:
        """The series as they are now, to a Pushgateway (``job="pipeobs"``, grouped by ``step_id``). OSError if it fails."""
        from prometheus_client import push_to_gateway

        push_to_gateway(url, job="pipeobs", registry=self.registry, grouping_key={"step_id": self.step_id},
                        timeout=timeout)

    def close(self) -> None:
        """Stop serving (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = None
