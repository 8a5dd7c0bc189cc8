"""The head driver: the loop that ties the ledger, the clocks, the executor and the sinks together.

One thread runs :meth:`Driver.run`: it dispatches queued attempts to ready workers, lets the
executor report what happened (:class:`~pipeobs.executors.base.ExecutorEvents`: connections,
protocol messages, parsed output, exits), checks the clocks, and flushes the run's records
(output rows first, then one store transaction, with a pending span for each invocation still
running) every :data:`FLUSH_INTERVAL`. A second thread
partitions the inputs, so workers start (and the first mini-batch runs) while a big folder is
still being listed.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pipeobs.driver.clocks import Budgets, job_clock, worker_clock
from pipeobs.driver.journal import RunJournal
from pipeobs.driver.ledger import Ledger
from pipeobs.driver.output import OutputFile
from pipeobs.driver.partition import DONE, Partitioner
from pipeobs.driver.pool import WorkerPool
from pipeobs.driver.slots import WorkerSlot, WorkerState
from pipeobs.errors import EntryScriptError, InputError, JobFailed, PipeobsError, Terminated
from pipeobs.executors.base import Executor
from pipeobs.jobs import JobPlan, JobResult, ProgressView, Thresholds
from pipeobs.protocol import Bye, Debugging, InitFailed, LoadFailed, Message, Ready, Result, Stop
from pipeobs.records import Span

FLUSH_INTERVAL = 0.2
COALESCE_SECONDS = 0.0005
CLOCK_INTERVAL = 0.01  # timeouts are checked at most this often (they are seconds long)
PREFETCH_MIN = 2  # tasks queued per worker, so a worker never waits for the driver...
PREFETCH_MAX = 32  # ...and more when mini-batches are short: about PREFETCH_SECONDS of work
PREFETCH_SECONDS = 0.02


class Driver:
    """Runs one :class:`JobPlan` to completion on an executor and returns a :class:`JobResult`."""

    def __init__(self, plan: JobPlan, on_progress: Callable[[ProgressView], None] | None = None,
                 executor: Executor | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.plan = plan
        self.config = plan.config
        self.budgets = Budgets.from_config(plan.config, plan.settings)
        self.on_progress = on_progress
        self.clock = clock  # monotonic seconds: every timing decision reads it (a fake one in tests)
        self.started = clock()
        self.journal = RunJournal(plan, self.started)  # first: it refuses a metrics port in use
        if executor is None:
            from pipeobs.executors.local import LocalExecutor

            executor = LocalExecutor()
        self.executor = executor
        self.token = secrets.token_hex(8)
        self.ledger = Ledger(Thresholds.from_config(plan.config), plan.config.run_max_try)
        self.output = OutputFile(plan.output_file, plan.settings.append_row_dataframe_header)
        self.stop_reason: str | None = None
        self.threshold_stop = False  # stop_reason is a threshold's: its counts are restated at the end
        self.interrupted_by: str | None = None  # "SIGINT" or "SIGTERM"
        self.concluded = False
        self.fatal: PipeobsError | None = None
        self.workers = WorkerPool(plan, executor, self.journal, clock)
        self.partitioner = Partitioner(plan.datasets, plan.mini_batch_size, plan.config.partition_keys, executor.wake)
        self.last_progress = self.started
        self.first_task_at: float | None = None
        self.known_total: int | None = None
        self._last_flush = 0.0
        self._last_clock_check = 0.0
        self._mean_elapsed = 0.0
        self._handlers: dict[type, Callable[[WorkerSlot, Any], None]] = {
            Result: self._on_result, Ready: self._on_ready, InitFailed: self._on_init_failed,
            LoadFailed: self._on_load_failed, Bye: self._on_bye, Debugging: self.workers.debugger_waiting,
        }

    # ----------------------------------------------------------------- lifecycle
    def run(self) -> JobResult:
        self.plan.run_dir.lock()
        try:
            with terminate_interrupts():
                try:
                    self._start()
                    self._loop()
                except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM: the run ends Interrupted
                    self._interrupted(exc)
                self._finish_workers()
                return self._conclude()
        finally:
            self._close()

    def _interrupted(self, exc: KeyboardInterrupt) -> None:
        if self.journal.telemetry is None:  # before the journal opened: _close() marks the run
            raise exc
        self.interrupted_by = exc.signal_name if isinstance(exc, Terminated) else "SIGINT"
        self.stop_reason = None  # the interruption is the reason, whatever else was going on
        self._stop(f"The run was interrupted by {self.interrupted_by}.")

    def _start(self) -> None:
        # Workers first: they import Python and the entry script while the driver sets up the rest.
        self.executor.open(self, self.token)
        spawned = [self.workers.spawn(node, announce=False) for node in range(self.config.node_count)
                   for _ in range(self.config.effective_process_count())]
        self.journal.open()
        self.output.open(self.journal.committed_output_size())
        finished = self.ledger.restore(*self.journal.ledger_rows())
        self.known_total = len(self.ledger) if self.journal.partitioned_before() else None  # a resumed run's
        self.journal.started(finished if len(self.ledger) else None, self.output.size)
        for sentence in self.executor.placement():
            self.journal.say("INFO", "node_start", sentence)
        for worker in spawned:
            self.workers.announce(worker)
        self.partitioner.start()

    def _close(self) -> None:
        if not self.concluded:  # interrupted again while ending, or before the journal opened
            self.journal.abandon(self.interrupted_by or "SIGINT")
        self.executor.close()
        self.output.close()
        self.journal.close()
        self.plan.run_dir.unlock()

    # ----------------------------------------------------------------- partitioning
    def _take_partitioned(self) -> None:
        for item in self.partitioner.take():
            if item is DONE:
                self._partition_finished()
            elif isinstance(item, BaseException):
                self.ledger.all_scheduled = True
                self.fatal = item if isinstance(item, PipeobsError) else PipeobsError(f"partitioning failed: {item}")
            else:
                self._add_mini_batch(item)

    def _add_mini_batch(self, mini_batch: Any) -> None:
        if self.first_task_at is None:
            self.first_task_at = self.clock()
        try:
            if self.ledger.add(mini_batch):
                self.journal.store.add_mini_batch(mini_batch.id, mini_batch.to_json())
        except PipeobsError as exc:  # a resumed run whose inputs changed
            self.fatal = exc

    def _partition_finished(self) -> None:
        self.ledger.all_scheduled = True
        self.journal.scheduled(len(self.ledger), self.ledger.items(), self.clock() - self.started)
        if not self.ledger:
            self.fatal = InputError("the inputs hold no data: no mini-batch was created")

    # ----------------------------------------------------------------- executor events
    def worker_connected(self, label: str, pid: int) -> None:
        worker = self.workers[label]
        worker.pid = worker.pid or pid
        stopping = worker.state is WorkerState.STOPPING  # the work ran out while it started
        if not stopping:
            worker.set_state(WorkerState.INIT, self.clock())
        self.executor.send(label, self.plan.worker_setup(worker.node, worker.name, self.token,
                                                         self.journal.telemetry.traceparent))
        if stopping:
            self.executor.send(label, Stop())

    def worker_message(self, label: str, message: Message) -> None:
        worker = self.workers[label]
        handler = self._handlers.get(type(message))
        if handler is None:
            raise PipeobsError(f"{label} sent an unexpected message: {type(message).__name__}")
        handler(worker, message)

    def worker_output(self, label: str, items: Sequence[Any]) -> None:
        self.workers.output(self.workers[label], items)

    def worker_exited(self, label: str, returncode: int) -> None:
        worker = self.workers[label]
        was_stopping = self.workers.exited(worker)
        reason = self.journal.worker_exit(worker, returncode, was_stopping)
        self.journal.close_open_spans(worker, reason or "the worker process ended", self.clock())
        self._fail_inflight(worker, reason)
        if not was_stopping:
            if worker.node not in self.workers.lost_nodes:  # a lost node's workers are not restarted
                self.journal.count("worker_restarts")
                if not self._finished():
                    self.workers.replace(worker)
            self._stop(self.workers.lost(self._finished()))

    def node_sampled(self, node: int, samples: list[tuple[str, int, dict[str, float]]],
                     machine: tuple[str, ...]) -> None:
        self.journal.node_sampled(node, samples, machine)

    def node_lost(self, node: int, reason: str) -> None:
        self.workers.lose_node(node, reason)
        self.journal.say("ERROR", "node_lost", f"Lost {reason}; its mini batches are retried on the other nodes.")

    def _fail_inflight(self, worker: WorkerSlot, reason: str) -> None:
        status = worker.kill_reason[0] if worker.kill_reason else "PROCESS_CRASHED"
        # Interrupted, or killed because the job is ending: the attempt was cut short, not failed (not
        # run; a resume runs it), so it never adds to the counts behind the stop's reason.
        if worker.inflight and not self.interrupted_by and status != "STOPPED":
            head = worker.inflight.popleft()
            self._attempt_failed(worker, head.mini_batch.id, head.attempt, {
                "status": status, "total": head.mini_batch.item_count or 0, "start_time": time.time(),
                "error": {"type": status, "message": reason, "location": None, "traceback": reason},
            })
        self.ledger.put_back([(task.mini_batch.id, task.attempt) for task in worker.inflight])
        worker.inflight.clear()

    # ----------------------------------------------------------------- messages
    def _on_ready(self, worker: WorkerSlot, message: Ready) -> None:
        if worker.state is WorkerState.INIT:
            worker.set_state(WorkerState.READY, self.clock())
        self.journal.say("INFO", "init_done", f"{worker.label} init() finished in {message.init_seconds:.3f} s.",
                        worker.label)

    def _on_init_failed(self, worker: WorkerSlot, message: InitFailed) -> None:
        self.workers.init_failures[worker.node] += 1
        self.journal.init_failed(worker, message.error)

    def _on_load_failed(self, worker: WorkerSlot, message: LoadFailed) -> None:
        error = self.journal.load_failed(worker, message.error)
        self.fatal = EntryScriptError(f"entry script '{self.plan.entry_script}' failed to load:\n{error.rstrip()}")

    def _on_bye(self, worker: WorkerSlot, message: Bye) -> None:
        self.journal.bye(worker, message.error, message.profile)

    def _on_result(self, worker: WorkerSlot, message: Result) -> None:
        mb_id, attempt, outcome = message.mini_batch_id, message.attempt, message.outcome
        if not worker.inflight or worker.inflight[0].mini_batch.id != mb_id:
            return  # a result for a task already failed (killed), whose span the driver wrote: ignore
        worker.inflight.popleft()
        span = outcome.pop("span", None)
        if span is not None:
            self.workers.span_ended(worker, Span(span, worker.label))
        now = self.clock()
        worker.head_since = now
        elapsed = outcome.get("elapsed")
        if elapsed is not None:  # a moving mean sets the prefetch depth
            self._mean_elapsed = elapsed if not self._mean_elapsed else 0.9 * self._mean_elapsed + 0.1 * elapsed
        worker.run_began.pop((mb_id, attempt), None)
        self.last_progress = now
        if outcome["status"] == "RUN_DONE":
            self._attempt_done(worker, mb_id, attempt, outcome)
        else:
            self._attempt_failed(worker, mb_id, attempt, outcome)

    def _attempt_done(self, worker: WorkerSlot, mb_id: int, attempt: int, outcome: dict[str, Any]) -> None:
        state = self.ledger.succeeded(mb_id, outcome["total"], outcome["succeeded"])
        self.output.append(outcome.get("rows"), outcome.get("header"))
        self.journal.attempt(worker, mb_id, attempt, outcome, "succeeded")
        self.journal.finished(mb_id, state, worker.label, self.output.size)
        self._check_thresholds(final=False)

    def _attempt_failed(self, worker: WorkerSlot, mb_id: int, attempt: int, outcome: dict[str, Any]) -> None:
        verdict = self.ledger.failed(mb_id, attempt, outcome.get("total"))
        self.journal.attempt_failed(worker, mb_id, attempt, outcome, verdict)
        if verdict.final is None:
            self.journal.count("retries")
        else:
            self.journal.finished(mb_id, verdict.state, worker.label, None)
        self._check_thresholds(final=False)

    def _check_thresholds(self, final: bool) -> None:
        message = self.ledger.exceeded()
        if message and not final:
            self.threshold_stop = self.threshold_stop or self.stop_reason is None
            self._stop(f"{message} Stopping processing.")
        elif message:
            self.stop_reason = self.stop_reason or message

    def _stop(self, reason: str | None) -> None:
        if reason is not None and self.stop_reason is None:
            self.stop_reason = reason
            self.journal.stopped(reason)

    # ----------------------------------------------------------------- the loop
    def _loop(self) -> None:
        poll = self.executor.poll
        while not self._finished():
            self._dispatch()
            if self._finished():
                break
            busy = poll(0.05 if self.workers.busy() else 0.2)
            if self.partitioner:
                self._take_partitioned()
            now = self.clock()
            if now - self._last_clock_check >= CLOCK_INTERVAL:
                self._last_clock_check = now
                self._check_clocks(now)
            if now - self._last_flush >= FLUSH_INTERVAL:
                self._periodic(now)
            if busy:
                # A short nap lets results and output pile up, so one wake-up serves many (the
                # workers hold queued tasks meanwhile): about 15% less driver CPU per mini-batch.
                time.sleep(COALESCE_SECONDS)

    def _finished(self) -> bool:
        if self.fatal or self.stop_reason:
            return True
        return self.ledger.complete and not self.workers.busy()

    def _dispatch(self) -> None:
        if self.ledger.pending:
            self.workers.dispatch(self.ledger, self._prefetch())

    def _prefetch(self) -> int:
        """How many tasks a worker holds: about PREFETCH_SECONDS of work, within bounds."""
        mean = self._mean_elapsed
        if mean <= 0:
            return PREFETCH_MIN
        return max(PREFETCH_MIN, min(PREFETCH_MAX, int(PREFETCH_SECONDS / mean)))

    def _check_clocks(self, now: float) -> None:
        for worker in self.workers:
            kill = worker_clock(worker, now, self.budgets)
            if kill is not None:
                if kill.is_timeout:
                    self.journal.count("timeouts")
                self.workers.kill(worker, kill.status, kill.message)
        self._stop(job_clock(self.started, self.first_task_at, self.last_progress, now, self.budgets,
                             self.workers.debugging()))

    def _periodic(self, now: float) -> None:
        self.journal.periodic(now, self.workers.live(), len(self.ledger.pending), len(self.ledger), self.ledger.finished)
        self._stop(self.journal.check_alerts(time.time()))  # alerts read wall-clock time, as the records carry
        if now >= self.journal.next_overview and self.ledger.all_scheduled:
            self.journal.overview(now, self.ledger.finished, len(self.ledger), self.started)
        self.journal.store_pending_spans(self.workers)
        self._flush()
        self._last_flush = now
        if self.on_progress is not None:
            total = len(self.ledger) if self.ledger.all_scheduled else self.known_total
            self.on_progress(ProgressView(self.plan.step_name, self.ledger.finished, total, self.started,
                                          self.journal.firing_alerts()))

    def _flush(self) -> None:
        self.output.flush()  # rows reach the file before the ledger commit that covers them
        self.journal.pipeline.flush()

    # ----------------------------------------------------------------- the end
    def _finish_workers(self) -> None:
        """Ask every worker to shutdown(), or kill them all when the job stops early."""
        self.journal.last_sample(self.workers.live(), self.clock())
        self.workers.stop_all(bool(self.fatal or self.stop_reason), max(30.0, self.budgets.init))

    def _conclude(self) -> JobResult:
        if not self.fatal and not self.stop_reason:
            self._check_thresholds(final=True)
        elif not self.interrupted_by:
            self._end_retries()
        if not self.fatal and not self.stop_reason and self.config.output_action == "append_row" and \
                not any(s.succeeded for s in self.ledger.states.values()):
            self.stop_reason = NO_RESULT_MESSAGE
        self.output.flush()
        result = self.result()
        self.journal.conclude(result, self.ledger.all_scheduled and not self.stop_reason and not self.fatal,
                             len(self.ledger), self.config.error_threshold)
        self.concluded = True
        if self.fatal is not None and not isinstance(self.fatal, JobFailed):
            raise self.fatal
        return result

    def _end_retries(self) -> None:
        """The job stopped early: mini-batches awaiting a retry failed, and a threshold's reason states
        the final counts (results still arrived while the workers stopped), as Azure's final error does."""
        failed = self.ledger.stop()
        if failed:
            self.journal.say("ERROR", "mini_batch_failed", f"{failed} mini batches whose latest attempt failed "
                             "count as failed: the job stopped before their retries.")
        if self.threshold_stop:
            self.stop_reason = self.ledger.exceeded() or self.stop_reason

    def result(self) -> JobResult:
        counts = self.journal.counts
        return JobResult(
            status="Interrupted" if self.interrupted_by else "Failed" if (self.fatal or self.stop_reason) else "Completed",
            interrupted_by=self.interrupted_by,
            step_id=self.plan.step_id, step_name=self.plan.step_name, run_dir=str(self.plan.run_dir.path),
            output_path=self.plan.output_file, output_dir=self.plan.output_dir, **self.ledger.totals(),  # type: ignore[arg-type]
            duration_seconds=self.clock() - self.started,
            reason=self.stop_reason or (str(self.fatal) if self.fatal else None),
            first_error=self.journal.first_error, retries=counts["retries"], timeouts=counts["timeouts"],
            worker_restarts=counts["worker_restarts"], lost_nodes=dict(self.workers.lost_nodes),
        )


@contextlib.contextmanager
def terminate_interrupts() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` in the driver's thread (the main thread only), as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


NO_RESULT_MESSAGE = (
    "There is no succeeded mini batch item returned from run(). Please check 'response: run()' "
    "in https://aka.ms/batch-inference-documentation"
)
