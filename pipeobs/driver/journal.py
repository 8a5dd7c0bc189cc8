"""Everything the driver writes about a run: records into the pipeline, rows into the store, files.

:class:`RunJournal` owns the run directory's writers (the store, the logs tree, the driver log,
the exporters: the sinks of one :class:`~pipeobs.record.pipeline.Pipeline`), the job telemetry
and the resource monitor. The driver tells it what happened (a worker started or exited, an
attempt ended, the job stopped) and it records that in every place it belongs, so the driver's
loop holds decisions and the journal holds their paperwork.

The job's built-in metrics live from the journal's start to its close, and so does their
Prometheus endpoint (``pipeobs run --metrics-port``): a port that cannot be had fails the run
before any worker starts.
"""

from __future__ import annotations

import collections
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pipeobs.errors import ConfigError
from pipeobs.jobs import JobPlan, JobResult
from pipeobs.record.driverlog import DriverLogSink
from pipeobs.record.files import RunFiles
from pipeobs.record.liveness import INTERRUPTED, RUNNING, this_driver
from pipeobs.record.perf import ResourceMonitor
from pipeobs.record.pipeline import Pipeline
from pipeobs.record.store import LedgerRow, Store, WorkerRow
from pipeobs.records import Event
from pipeobs.telemetry.metrics import JobMetrics, MetricsEndpoint

if TYPE_CHECKING:
    from pipeobs.driver.ledger import MiniBatchState, Verdict
    from pipeobs.driver.slots import WorkerSlot

OVERVIEW_INTERVAL = 10.0  # Azure writes a progress line every 2 minutes; a laptop run is shorter


class RunJournal:
    """The writers of one run directory, and the job's telemetry."""

    def __init__(self, plan: JobPlan, now: float) -> None:
        self.plan = plan
        run_dir = plan.run_dir
        self.store = Store(run_dir.store, plan.step_id)
        self.files = RunFiles(run_dir)
        self.pipeline = Pipeline([self.store, self.files, DriverLogSink(lambda: self.files.open(run_dir.driver_log))])
        self.monitor = ResourceMonitor(run_dir.logs / "perf", plan.settings.resource_monitor_interval)
        self.telemetry: Any = None  # a JobTelemetry, from open()
        self.exports: Any = None  # a RunExports when exporters are on
        self.alerts: Any = None  # an AlertEvaluator when there are alert rules
        self.counts = collections.Counter[str]()  # retries, timeouts, worker_restarts
        self.first_error: dict[str, Any] | None = None
        self.next_overview = now + OVERVIEW_INTERVAL
        self._next_metrics = 0.0
        self.metrics = JobMetrics()  # the alert evaluator sets metrics.alerts_firing
        self.metrics.job_started(time.time(), plan.config.run_invocation_timeout,
                                 plan.settings.progress_timeout(plan.config.run_invocation_timeout))
        self.pipeline.add(self.metrics)
        self._pending: set[str] = set()  # span ids of invocations still open, stored as pending spans
        self.endpoint: MetricsEndpoint | None = None
        self.endpoint = self._metrics_endpoint()

    def _metrics_endpoint(self) -> MetricsEndpoint | None:
        """Serve the metrics on ``plan.metrics_address``, and say where (the port is recorded in the run row)."""
        plan = self.plan
        if plan.metrics_address is None and plan.pushgateway is None:
            return None
        endpoint = MetricsEndpoint(self.metrics, plan.step_id, plan.step_name)
        if plan.metrics_address is not None:
            host, port = plan.metrics_address
            try:
                port = endpoint.serve(host, port)
            except OSError as exc:
                message = (f"cannot serve metrics on {host}:{port} ({exc.strerror}): give --metrics-port a free port, "
                           f"or 0 for any free one")
                self.store.update_run(status="Failed", ended_at=time.time(), error=message)
                self.close()
                raise ConfigError(message) from None
            self.store.update_run(metrics_port=port)
            url = f"http://{host}:{port}/metrics"
            self.say("INFO", "metrics", f"Metrics for Prometheus on {url}")
            print(f"metrics for Prometheus on {url}", file=sys.stderr, flush=True)
        return endpoint

    def open(self) -> None:
        """Exporters and the job span (imported after the workers started: they take a while)."""
        from pipeobs.telemetry.job import JobTelemetry

        self.telemetry = JobTelemetry(self.plan.step_id, self.plan.step_name, self.pipeline, self.metrics,
                                      parent=self.plan.parent_traceparent)
        if self.plan.exporters:
            from pipeobs.export.run import RunExports

            self.exports = RunExports(self.plan.run_dir.path, self.store, self.plan.step_name, self.plan.exporters,
                                      self.plan.export_deadline, self.say,
                                      job=(self.telemetry.trace_id, self.telemetry.span_id))
            self.pipeline.add(self.exports)
            self.telemetry.observations = self.exports.add_metric  # the one sink that takes them as records
            self.exports.carry_over()
        self.alerts = self._alert_evaluator()
        if self.alerts is not None:
            self.pipeline.add(self.alerts)

    def _alert_evaluator(self) -> Any:
        """The live evaluator of the plan's alert rules (the default set unless the plan says), or None."""
        from pipeobs.alerts.rules import AlertSettings

        settings = self.plan.alerts or AlertSettings.from_options()
        if not settings.rules:
            return None
        from pipeobs.alerts.evaluator import AlertEvaluator
        from pipeobs.alerts.notify import Notifier
        from pipeobs.alerts.signals import Observed
        from pipeobs.telemetry.metrics import memory_limit

        now = time.time()
        observed = Observed(start=now, last_progress=now, memory_limit=memory_limit(),  # as pipeobs_memory_limit_bytes
                            invocation_timeout=self.plan.config.run_invocation_timeout)
        notifier = Notifier(settings.webhooks, settings.alertmanager) if settings.webhooks or settings.alertmanager \
            else None
        return AlertEvaluator(settings.rules, {"step_id": self.plan.step_id, "step": self.plan.step_name}, observed,
                              settings.interval, self._alert_changed, lambda message: self.say("WARNING", "alert_delivery", message),
                              notifier, self.plan.run_dir.path.resolve().as_uri())

    def _alert_changed(self, alert: Any) -> None:
        """An alert fired or resolved: an event (store, driver log, exporters) and the alerts gauge."""
        rule, firing = alert.rule, alert.state == "firing"
        self.say("WARNING" if firing else "INFO", f"alert_{alert.state}",
                 f"Alert {rule.alert} ({rule.severity}) {alert.state}: {alert.summary}")
        self.metrics.alerts_firing.labels(alertname=rule.alert, severity=rule.severity).set(1 if firing else 0)

    def check_alerts(self, now: float) -> str | None:
        """Evaluate the alert rules when due; the stop reason when an alert whose action is stop fired."""
        alert = self.alerts.tick(now) if self.alerts is not None else None
        return None if alert is None else f"Alert {alert.rule.alert} ({alert.rule.severity}) fired: {alert.summary}"

    def firing_alerts(self) -> tuple[str, ...]:
        return tuple(a.rule.alert for a in self.alerts.firing()) if self.alerts is not None else ()

    def started(self, resumed_finished: int | None, output_size: int) -> None:
        """The run row names this driver; pending spans a dead driver left (a resumed run) are gone."""
        self.store.drop_pending_spans()
        self.store.update_run(status=RUNNING, ended_at=None, error=None, summary=None, **this_driver())
        if resumed_finished is not None:
            self.say("INFO", "resume", f"Resuming: {resumed_finished} mini batches already finished, output cut "
                                       f"back to {output_size} bytes.")
        self.say("INFO", "start", f"Start job {self.plan.step_id} ({self.plan.describe()}).")
        self.files.progress("Start scheduling.")

    def scheduled(self, count: int, items: int, seconds: float) -> None:
        """Partitioning finished."""
        self.store.update_run(partitioned=1)
        message = f"Scheduling finished. Scheduled {count} mini batches with {items} items in {seconds:.2f} seconds."
        self.say("INFO", "scheduled", message)
        self.files.progress(message)

    def say(self, level: str, kind: str, message: str, worker: str | None = None) -> None:
        """An event of the driver's narrative (store, driver log, exporters)."""
        self.pipeline.event(Event(time.time(), level, kind, message, worker))

    def count(self, name: str) -> None:
        """One more retry, timeout or worker restart (the result's count and the built-in metric)."""
        self.counts[name] += 1
        getattr(self.metrics, name).inc()

    # ------------------------------------------------------------------ resume
    def committed_output_size(self) -> int:
        row = self.store.run_row()
        return row["output_size"] if row is not None else 0

    def partitioned_before(self) -> bool:
        """A resumed run whose inputs were all partitioned: its mini-batch count is known from the start."""
        row = self.store.run_row()
        return bool(row is not None and row["partitioned"])

    def ledger_rows(self) -> tuple[list[LedgerRow], Any]:
        from pipeobs.datasets import MiniBatch

        return self.store.restore_ledger(), MiniBatch.from_json

    # ------------------------------------------------------------------ workers
    def worker_row(self, worker: WorkerSlot, **end: Any) -> None:
        self.store.put_worker(WorkerRow(worker.label, worker.node, worker.name, worker.pid or 0, worker.gpu,
                                        worker.started or None, **end))

    def worker_exit(self, worker: WorkerSlot, returncode: int, was_stopping: bool) -> str:
        """Record a worker's exit; the reason in words ("" for a clean exit after shutdown)."""
        if worker.kill_reason is not None:
            reason = worker.kill_reason[1]
        else:
            reason = "" if was_stopping and returncode == 0 else describe_exit(returncode)
        self.worker_row(worker, ended=time.time(), returncode=returncode, reason=reason)
        level = "INFO" if was_stopping and (returncode == 0 or worker.kill_reason) else "WARNING"
        self.say(level, "worker_exit", f"{worker.label} exits with returncode {returncode}. {reason}".rstrip(),
                 worker.label)
        return reason

    def close_open_spans(self, worker: WorkerSlot, reason: str, now: float) -> None:
        """Invocations cut short by a kill or crash still end up as spans, with status ERROR."""
        for inv, start in worker.open_spans.values():
            self.telemetry.killed(worker.label, inv.phase, start, reason, (inv.trace_id, inv.span_id),
                                  inv.mini_batch_id, inv.attempt)
        if worker.inflight:  # killed while loading, before run() began: its span was never announced
            head = worker.inflight[0]
            key = (head.mini_batch.id, head.attempt)
            if not any((i.mini_batch_id, i.attempt) == key for i, _ in worker.open_spans.values()):
                start = time.time() - (now - worker.head_since)
                self.telemetry.killed(worker.label, "run", start, reason, (None, None), *key)
        worker.open_spans.clear()

    def init_failed(self, worker: WorkerSlot, error: dict[str, Any]) -> None:
        path = self.files.user_error(worker.label, "Entry script init() failed", error["traceback"])
        self.say("ERROR", "init_failed", f"Entry script init() failed for {error['type']}: {error['message']}",
                 worker.label)
        self.first_error = self.first_error or {
            **error, "mini_batch_id": None, "worker": worker.label, "phase": "init", "traceback_file": str(path)
        }

    def load_failed(self, worker: WorkerSlot, error: dict[str, Any]) -> str:
        """Record the entry script's import error; its traceback."""
        path = self.files.user_error(worker.label, "Loading the entry script failed", error["traceback"])
        self.first_error = self.first_error or {
            **error, "traceback_file": str(path), "mini_batch_id": None, "worker": worker.label
        }
        return str(error["traceback"])

    def bye(self, worker: WorkerSlot, error: dict[str, Any] | None, profile: bytes | None) -> None:
        if profile:
            self.files.write_bytes(self.plan.run_dir.sys_node_log(worker.node, worker.name).with_suffix(".profile"),
                                   profile)
        if error:
            self.files.user_error(worker.label, "Entry script shutdown() failed", error["traceback"])
            self.say("WARNING", "shutdown_failed",
                     f"Entry script shutdown() failed for {error['type']}: {error['message']}", worker.label)

    # ------------------------------------------------------------------ attempts
    def attempt(self, worker: WorkerSlot, mb_id: int, attempt: int, outcome: dict[str, Any], final: str | None) -> None:
        """An attempt's row, its line in the worker's system log, and its built-in metrics."""
        self.store.add_attempt(mb_id, attempt, worker.label, worker.pid, outcome)
        total, succeeded = outcome.get("total", 0), outcome.get("succeeded", 0)
        self.files.system(
            worker.label,
            f"mini batch {mb_id} attempt {attempt} {outcome['status']}: pid {worker.pid}, total {total}, "
            f"succeeded {succeeded}, failed {total - succeeded}, elapsed {outcome.get('elapsed', 0):.3f} s, "
            f"process time {outcome.get('process_seconds', 0):.3f} s, run method {outcome.get('run_seconds', 0):.3f} s",
        )
        self.telemetry.attempt(worker.label, mb_id, attempt, outcome, final)

    def attempt_failed(self, worker: WorkerSlot, mb_id: int, attempt: int, outcome: dict[str, Any],
                       verdict: Verdict) -> None:
        self.attempt(worker, mb_id, attempt, outcome, verdict.final)
        error, status = outcome.get("error") or {}, outcome["status"]
        inputs = verdict.state.descriptor.summary()
        traceback_file = None
        if error and status in ("RUN_EXCEPTION", "LOAD_ERROR"):
            traceback_file = self.files.user_error(
                worker.label, f"Entry script run() failed for mini batch {mb_id} (attempt {attempt}, {inputs})",
                error["traceback"],
            )
        self.say("ERROR", "attempt_failed", f"Mini batch {mb_id} attempt {attempt} failed ({status}): "
                 f"{error.get('type', status)}: {error.get('message', '')}", worker.label)
        if self.first_error is None:
            self.first_error = {**error, "mini_batch_id": mb_id, "attempt": attempt, "worker": worker.label,
                                "inputs": inputs, "phase": "run", "status": status,
                                "traceback_file": str(traceback_file) if traceback_file else None}
        if verdict.final is not None:
            self.say("ERROR", "mini_batch_failed", f"Mini batch {mb_id} failed after {attempt} tries.", worker.label)

    def finished(self, mb_id: int, state: MiniBatchState, worker: str, output_end: int | None) -> None:
        """The ledger's verdict, committed with the output size that covers its rows."""
        self.store.finish_mini_batch(mb_id, status=state.status, attempts=state.tries, total=state.total,
                                     succeeded=state.succeeded if state.status == "done" else 0, worker=worker,
                                     output_end=output_end)
        if output_end is not None:
            self.store.update_run(output_size=output_end)

    def stopped(self, reason: str) -> None:
        self.say("ERROR", "stop", f"Progress update stopped for reasons: [{reason}]")
        self.files.progress(f"Progress update stopped for reasons: [{reason}]", "ERROR")

    # ------------------------------------------------------------------ periodic
    def periodic(self, now: float, live: list[tuple[int, str, int]], queue_depth: int, scheduled: int,
                 finished: int) -> None:
        """Resource samples, built-in metrics and export counts, each at its own pace."""
        if self.monitor.due(now):
            self.monitor.sample(live, now)
            self.monitor.flush()
            self.telemetry.resources(self.monitor.last)
        if now >= self._next_metrics:
            self._next_metrics = now + 1.0
            self.telemetry.publish(queue_depth, scheduled, finished)
            if self.exports is not None:
                self.exports.checkpoint()

    def store_pending_spans(self, workers: Iterable[WorkerSlot]) -> None:
        """Each invocation still open, stored once as a pending span, so a live reader sees it running.

        The store only: exporters, files and alerts get the span that ends it (the worker's, or the
        driver's for a killed worker), which replaces the row; one that ends between two flushes costs nothing.
        """
        stored = self._pending
        self._pending = set()  # the ids still open: those that ended drop out
        for worker in workers:
            for span_id, (inv, start) in worker.open_spans.items():
                if span_id not in stored:
                    self.store.add_span(self.telemetry.pending(worker.label, span_id, inv, start))
                self._pending.add(span_id)

    def node_sampled(self, node: int, samples: list[tuple[str, int, dict[str, float]]],
                     machine: tuple[str, ...]) -> None:
        """A remote node's resource samples: the same CSV rows and metrics as local samples."""
        self.monitor.record(node, samples, machine)
        self.telemetry.resources(self.monitor.last)

    def overview(self, now: float, done: int, total: int, started: float) -> None:
        self.next_overview = now + OVERVIEW_INTERVAL
        elapsed = now - started
        remaining = elapsed / done * (total - done) if done else 0.0
        self.files.progress(f"Processed {done} of {total} mini batches in {_hms(elapsed)}. "
                            f"Estimate remaining {_hms(remaining)}.")

    def last_sample(self, live: list[tuple[int, str, int]], now: float) -> None:
        if self.monitor.interval > 0:  # a last sample while the workers still live
            self.monitor.sample(live, now)
            self.telemetry.resources(self.monitor.last)

    # ------------------------------------------------------------------ the end
    def conclude(self, result: JobResult, all_processed: bool, total: int, error_threshold: int) -> None:
        """Firing alerts resolved, the job span's end, the last metrics, export delivery, the run row and the reports."""
        if self.alerts is not None:
            self.alerts.finish(time.time())
            result.alerts = [a.to_dict() for a in self.alerts.fired]
        self.telemetry.end(result.ok, result.reason, {
            "mini_batches.total": result.mini_batches_total, "mini_batches.failed": result.mini_batches_failed,
            "items.total": result.items_total, "items.failed": result.items_failed, "status": result.status,
        })
        self.telemetry.publish(0, total, result.mini_batches_succeeded + result.mini_batches_failed)
        if self.plan.pushgateway and self.endpoint is not None:
            self._push(self.endpoint, self.plan.pushgateway)
        if self.exports is not None:
            self.pipeline.remove(self.exports)
            self.telemetry.observations = None
            result.exports = self.exports.finish()
        if all_processed:
            self.files.progress(f"All {total} mini batches have been processed.")
        self.files.progress(f"{result.headline()} The error threshold is {error_threshold}.",
                            "INFO" if result.ok else "ERROR")
        if result.reason:
            self.files.progress(result.reason, "ERROR")
        self.store.update_run(status=result.status, ended_at=time.time(), error=result.reason, summary=result.to_json())
        self.say("INFO" if result.ok else "ERROR", "end", result.headline())
        self.pipeline.flush()
        from pipeobs.record.reports import write_reports

        write_reports(self.files, self.store, result)

    def _push(self, endpoint: MetricsEndpoint, url: str) -> None:
        """The final values to a Pushgateway; a failure is said, and the job's outcome stands."""
        try:
            endpoint.push(url, self.plan.export_deadline)
        except Exception as exc:  # the exporter boundary: telemetry never fails a job
            message = f"Pushing the metrics to the Pushgateway {url} failed: {exc}"
            self.say("WARNING", "pushgateway", message)
            print(message, file=sys.stderr, flush=True)
        else:
            self.say("INFO", "pushgateway", f"Metrics pushed to the Pushgateway {url}")

    def abandon(self, signal_name: str) -> None:
        """The run could not conclude (interrupted again while ending): say so in the run row."""
        message = f"The run was interrupted by {signal_name} before it could conclude."
        self.say("ERROR", "end", message)
        self.store.update_run(status=INTERRUPTED, ended_at=time.time(), error=message)
        self.pipeline.flush()

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()
        self.monitor.close()
        self.pipeline.close()


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def describe_exit(returncode: int) -> str:
    """Words for a worker's exit status (negative: killed by a signal)."""
    import signal

    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (possibly out of memory: check dmesg)" if name == "SIGKILL" else ""
        return f"The worker process was killed by {name}{hint}."
    return f"The worker process exited with code {returncode}."
