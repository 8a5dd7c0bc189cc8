"""The job's built-in metrics, with Prometheus names, kept in a prometheus-client registry.

The driver updates them as attempts finish; :meth:`JobMetrics.snapshot` lists the series that
changed, which the job telemetry sends down the record pipeline as metric records, so ``pipeobs metrics`` and the explorer read one time series
per name. Per-attempt observations (duration, peak RSS) are also stored as points carrying the
mini-batch, attempt, worker and span they came from.
"""

from __future__ import annotations

import json

DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


class JobMetrics:
    """Counters, gauges and a histogram for one job (a private registry, not the global one)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=False)
        reg = self.registry
        self.mini_batches = Counter("pipeobs_mini_batches", "Mini-batches finished, by final status", ["status"], registry=reg)
        self.attempts = Counter("pipeobs_attempts", "Mini-batch attempts, by attempt status", ["status"], registry=reg)
        self.items = Counter("pipeobs_items", "Items processed, by status", ["status"], registry=reg)
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
        self._last: dict[tuple[str, str], float] = {}

    def snapshot(self) -> list[tuple[str, str, str, float]]:
        """``(name, kind, labels JSON, value)`` for each series that changed since the last call."""
        rows = []
        for family in self.registry.collect():
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
