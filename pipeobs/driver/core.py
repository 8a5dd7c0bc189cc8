"""The job: partition, schedule, retry, time out, count, write outputs, resume.

One thread runs an event loop (``selectors``) over the hub's listening socket, each worker's
channel, each worker's stdout/stderr pipe and each worker's exit (a pidfd). A second thread
partitions the inputs, so workers start (and the first mini-batch runs) while a big folder is
still being listed. The driver owns the clock: it knows when each mini-batch started (the
worker's begin marker), kills a worker past its budget, starts a replacement with a new
``processNNN`` name and re-queues the attempt.
"""

from __future__ import annotations

import collections
import enum
import os
import queue
import secrets
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge
from typing import Any

from pipeobs import env as variables
from pipeobs.capture import Boundary, Invocation, MetricPoint, SpanData, StreamParser
from pipeobs.errors import EntryScriptError, JobFailed, PipeobsError
from pipeobs.executors.local import LocalExecutor, WorkerProcess
from pipeobs.jobs import JobPlan, JobResult, Thresholds
from pipeobs.record.perf import ResourceMonitor
from pipeobs.record.recorder import Recorder, attempt_row
from pipeobs.record.rundir import RunDir
from pipeobs.record.store import Store

FLUSH_INTERVAL = 0.2
COALESCE_SECONDS = 0.0005
CLOCK_INTERVAL = 0.01  # timeouts are checked at most this often (they are seconds long)
OUTPUT_BUFFER = 4 << 20  # rows are written at each flush, or sooner past this many bytes
OVERVIEW_INTERVAL = 10.0  # Azure writes a progress line every 2 minutes; a laptop run is shorter
PREFETCH_MIN = 2  # tasks queued per worker, so a worker never waits for the driver...
PREFETCH_MAX = 32  # ...and more when mini-batches are short: about PREFETCH_SECONDS of work
PREFETCH_SECONDS = 0.02
NO_RESULT_MESSAGE = (
    "There is no succeeded mini batch item returned from run(). Please check 'response: run()' "
    "in https://aka.ms/batch-inference-documentation"
)


class WorkerState(enum.Enum):
    STARTING = "starting"  # spawned, not connected yet
    INIT = "init"  # connected; importing the entry script and running init()
    READY = "ready"
    STOPPING = "stopping"  # asked to stop: running shutdown()
    DEAD = "dead"


@dataclass
class Task:
    mini_batch: Any
    attempt: int
    dispatched: float


@dataclass
class Worker:
    proc: WorkerProcess
    label: str
    token: str
    state: WorkerState = WorkerState.STARTING
    conn: Connection | None = None
    since: float = field(default_factory=time.monotonic)  # start of the current state
    inflight: collections.deque[Task] = field(default_factory=collections.deque)
    head_since: float = 0.0  # when the head task became the one running
    run_began: dict[tuple[int, int], float] = field(default_factory=dict)
    parsers: dict[int, StreamParser] = field(default_factory=dict)
    kill_reason: tuple[str, str] | None = None  # (attempt status, message)
    open_spans: dict[str, tuple[Invocation, float]] = field(default_factory=dict)  # span_id -> (invocation, start)

    @property
    def name(self) -> str:
        return self.proc.name

    @property
    def node(self) -> int:
        return self.proc.node


@dataclass
class MiniBatchState:
    descriptor: Any
    tries: int = 0  # attempts that ended (failed or done)
    status: str = "pending"  # pending | done | failed
    last_failed: bool = False
    total: int | None = None
    succeeded: int = 0

    def failed_items(self) -> int:
        if self.status == "done":
            return (self.total or 0) - self.succeeded
        if self.status == "failed":
            return max(self.total or 0, 1)  # a batch that never loaded still failed something
        return 0


class Driver:
    """Runs one :class:`JobPlan` to completion and returns a :class:`JobResult`."""

    def __init__(self, plan: JobPlan, on_progress: Callable[[Driver], None] | None = None) -> None:
        self.plan = plan
        self.config = plan.config
        self.settings = plan.settings
        self.thresholds = Thresholds.from_config(plan.config)
        self.on_progress = on_progress
        self.run_dir: RunDir = plan.run_dir
        self.store = Store(self.run_dir.store)
        self.recorder = Recorder(self.run_dir, self.store, plan.step_id, plan.step_name)
        self.exports: Any = None  # a RunExports when exporters are on
        self.monitor = ResourceMonitor(self.run_dir.logs / "perf", plan.settings.resource_monitor_interval)
        self.telemetry: Any = None
        self._next_metrics = 0.0
        self._next_overview = time.monotonic() + OVERVIEW_INTERVAL
        self.selector = selectors.DefaultSelector()
        self.token = secrets.token_hex(8)
        self.authkey = secrets.token_bytes(32)
        self.workers: dict[str, Worker] = {}
        self.mini_batches: dict[int, MiniBatchState] = {}
        self.pending: collections.deque[tuple[int, int]] = collections.deque()
        self.partition_done = False
        self.partition_error: BaseException | None = None
        self.stop_reason: str | None = None
        self.fatal: PipeobsError | None = None
        self.first_error: dict[str, Any] | None = None
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.last_progress = self.started
        self.first_task_at: float | None = None
        self.next_index: dict[int, int] = collections.defaultdict(int)
        self.init_failures: dict[int, int] = collections.defaultdict(int)
        self.gpu_free: dict[int, list[int]] = {n: list(range(plan.gpu_count)) for n in range(self.config.node_count)}
        self.output_fd: int | None = None
        self.output_size = 0
        self._output_buffer = bytearray()
        self.counts = collections.Counter[str]()
        self._failed_items = 0
        self._failed_batches = 0
        self._partition_queue: queue.Queue[Any] = queue.Queue()
        self._wake_r, self._wake_w = os.pipe()
        self._last_flush = 0.0
        self._last_clock_check = 0.0
        self._mean_elapsed = 0.0

    # ----------------------------------------------------------------- lifecycle
    def run(self) -> JobResult:
        self.run_dir.lock()
        try:
            self._start()
            self._loop()
            self._finish_workers()
            return self._conclude()
        finally:
            self._close()

    def _start(self) -> None:
        # Workers first: they import Python and the entry script while the driver sets up the rest.
        self._listen()
        spawned = [
            self._spawn(node, announce=False)
            for node in range(self.config.node_count)
            for _ in range(self.config.effective_process_count())
        ]
        from pipeobs.telemetry.job import JobTelemetry

        self._start_exporters()
        self.telemetry = JobTelemetry(self.plan.step_id, self.plan.step_name, self.recorder.span)
        self._open_output()
        self._restore_ledger()
        self.recorder.event("INFO", "start", f"Start job {self.plan.step_id} ({self.plan.describe()}).")
        self.recorder.progress("Start scheduling.")
        for worker in spawned:
            self._announce(worker)
        os.set_blocking(self._wake_r, False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
        threading.Thread(target=self._partition, name="pipeobs-partition", daemon=True).start()

    def _start_exporters(self) -> None:
        if self.plan.exporters:
            from pipeobs.export.run import RunExports

            self.exports = RunExports(self.recorder, self.plan.exporters, self.plan.export_deadline)

    def _listen(self) -> None:
        # An abstract Unix socket: no file to leave behind when the driver is killed.
        name = f"pipeobs-hub-{os.getpid()}-{secrets.token_hex(8)}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind("\0" + name)
        sock.listen(128)
        sock.setblocking(False)
        self.listener = sock
        self.executor = LocalExecutor("@" + name, self.authkey)
        self.selector.register(sock, selectors.EVENT_READ, self._on_accept)

    def _close(self) -> None:
        for worker in self.workers.values():
            if worker.state is not WorkerState.DEAD:
                worker.proc.kill()
        self._write_output()
        if self.output_fd is not None:
            os.close(self.output_fd)
        self.monitor.close()
        self.recorder.close()
        self.run_dir.unlock()
        self.selector.close()
        self.listener.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # ----------------------------------------------------------------- partitioning
    def _partition(self) -> None:
        from pipeobs.datasets import partition

        try:
            for mini_batch in partition(self.plan.datasets, self.plan.mini_batch_size, self.config.partition_keys):
                self._partition_queue.put(mini_batch)
                os.write(self._wake_w, b"m")
        except BaseException as exc:  # noqa: BLE001 - reported by the driver thread
            self._partition_queue.put(exc)
        else:
            self._partition_queue.put(None)
        os.write(self._wake_w, b"d")

    def _on_wake(self, _fd: int) -> None:
        try:
            os.read(self._wake_r, 65536)
        except BlockingIOError:
            pass
        self._drain_partitions()

    def _drain_partitions(self) -> None:
        while True:
            try:
                item = self._partition_queue.get_nowait()
            except queue.Empty:
                return
            if item is None:
                self._partition_finished()
            elif isinstance(item, BaseException):
                self.partition_done = True
                self.fatal = item if isinstance(item, PipeobsError) else PipeobsError(f"partitioning failed: {item}")
            else:
                self._add_mini_batch(item)

    def _add_mini_batch(self, mini_batch: Any) -> None:
        if self.first_task_at is None:
            self.first_task_at = time.monotonic()
        known = self.mini_batches.get(mini_batch.id)
        if known is not None:  # resumed run: the ledger already has it
            if known.descriptor.to_json() != mini_batch.to_json():
                self.fatal = PipeobsError(
                    f"cannot resume: mini-batch {mini_batch.id} differs from the recorded one "
                    "(the inputs changed since the run started)"
                )
            return
        self.mini_batches[mini_batch.id] = MiniBatchState(mini_batch, total=mini_batch.item_count)
        self.store.queue("mini_batches", (mini_batch.id, mini_batch.to_json()))
        self.pending.append((mini_batch.id, 1))

    def _partition_finished(self) -> None:
        self.partition_done = True
        count = len(self.mini_batches)
        items = sum(s.descriptor.item_count or 0 for s in self.mini_batches.values())
        self.store.update_run(partitioned=1)
        message = (
            f"Scheduling finished. Scheduled {count} mini batches with {items} items in "
            f"{time.monotonic() - self.started:.2f} seconds."
        )
        self.recorder.event("INFO", "scheduled", message)
        self.recorder.progress(message)
        if count == 0:
            self.fatal = PipeobsError("the inputs hold no data: no mini-batch was created")

    # ----------------------------------------------------------------- workers
    def _spawn(self, node: int, announce: bool = True) -> Worker:
        index = self.next_index[node]
        self.next_index[node] += 1
        name = f"process{index:03d}"
        env = dict(self.plan.worker_env)
        gpu = self.gpu_free[node].pop(0) if self.gpu_free[node] else None
        if gpu is not None:
            env[variables.CUDA_DEVICES] = str(gpu)
        scratch = self.run_dir.scratch(node, name)
        scratch.mkdir(parents=True, exist_ok=True)
        proc = self.executor.start(name, node, env, str(scratch))
        proc.gpu = gpu
        label = f"{node}/{name}"
        worker = Worker(proc, label, self.token)
        for fd, stream in proc.streams.items():
            worker.parsers[fd] = StreamParser(stream, self.token)
            self.selector.register(fd, selectors.EVENT_READ, self._reader(worker, fd))
        if proc.pidfd is not None:
            self.selector.register(proc.pidfd, selectors.EVENT_READ, lambda _fd, w=worker: self._on_exit(w))
        self.workers[label] = worker
        proc.started = time.time()
        self.store.queue("workers", (label, node, name, proc.pid, gpu, proc.started, None, None, None))
        if announce:
            self._announce(worker)
        return worker

    def _announce(self, worker: Worker) -> None:
        self.recorder.event("INFO", "worker_start", f"Started {worker.label} (pid {worker.proc.pid}).", worker.label)

    def _on_accept(self, _fd: Any) -> None:
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(True)
        conn = Connection(sock.detach())
        try:
            deliver_challenge(conn, self.authkey)
            answer_challenge(conn, self.authkey)
            _, label, _pid = conn.recv()
        except Exception:  # noqa: BLE001 - a stranger (bad auth key) or a worker dying during the handshake
            conn.close()
            return
        worker = self.workers.get(label)
        if worker is None or worker.state is not WorkerState.STARTING:
            conn.close()
            return
        worker.conn = conn
        self._set_state(worker, WorkerState.INIT)
        self.selector.register(conn.fileno(), selectors.EVENT_READ, lambda _fd, w=worker: self._on_message(w))
        conn.send(self.plan.worker_setup(worker.proc, self.token, self.telemetry.traceparent))

    def _set_state(self, worker: Worker, state: WorkerState) -> None:
        worker.state = state
        worker.since = time.monotonic()

    def _reader(self, worker: Worker, fd: int) -> Callable[[int], None]:
        def read(_fd: int) -> None:
            self._read_stream(worker, fd)

        return read

    def _read_stream(self, worker: Worker, fd: int, until_eof: bool = False) -> None:
        parser = worker.parsers.get(fd)
        if parser is None:
            return
        while True:
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._close_stream(worker, fd)
                return
            self._consume(worker, parser.feed(data))
            if not until_eof and len(data) < 1 << 16:
                return  # drained: what the pipe held fitted in one read

    def _close_stream(self, worker: Worker, fd: int) -> None:
        parser = worker.parsers.pop(fd)
        self._consume(worker, parser.close())
        self.selector.unregister(fd)
        os.close(fd)

    def _consume(self, worker: Worker, items: Iterator[Any]) -> None:
        proc = worker.proc
        for item in items:
            if isinstance(item, Boundary):
                inv = item.invocation
                if inv is not None and item.stream == "stdout":
                    if inv.span_id is not None:
                        worker.open_spans.setdefault(inv.span_id, (inv, time.time()))
                    if inv.phase == "run" and inv.mini_batch_id is not None and inv.attempt is not None:
                        worker.run_began[(inv.mini_batch_id, inv.attempt)] = time.monotonic()
                continue
            if isinstance(item, SpanData):
                worker.open_spans.pop(item.record["span_id"], None)
                self.recorder.span(worker.label, item.record)
                continue
            if isinstance(item, MetricPoint):
                self.recorder.metric(worker.label, item)
                continue
            self.recorder.line(worker.label, proc.node, proc.name, item)

    def _on_message(self, worker: Worker) -> None:
        conn = worker.conn
        assert conn is not None
        while True:  # every message already here: one wake-up serves a batch of results
            try:
                message = conn.recv()
            except (EOFError, OSError):
                self._on_exit(worker)
                return
            self._handle_message(worker, message)
            if worker.conn is None or worker.state is WorkerState.DEAD or not conn.poll(0):
                return

    def _handle_message(self, worker: Worker, message: Any) -> None:
        kind = message[0]
        if kind == "result":
            self._on_result(worker, message[1], message[2], message[3])
        elif kind == "ready":
            self._set_state(worker, WorkerState.READY)
            self.recorder.event("INFO", "init_done", f"{worker.label} init() finished in {message[1]:.3f} s.", worker.label)
        elif kind == "init_failed":
            self._on_init_failed(worker, message[1])
        elif kind == "load_failed":
            self._on_load_failed(worker, message[1])
        elif kind == "bye" and len(message) > 2 and message[2]:
            path = self.run_dir.sys_node_log(worker.node, worker.name).with_suffix(".profile")
            path.write_bytes(message[2])
        if kind == "bye" and message[1]:
            err = message[1]
            self.recorder.user_error(worker.node, worker.name, "Entry script shutdown() failed", err["traceback"])
            self.recorder.event("WARNING", "shutdown_failed", f"Entry script shutdown() failed for {err['type']}: {err['message']}", worker.label)

    def _on_load_failed(self, worker: Worker, error: dict[str, Any]) -> None:
        path = self.recorder.user_error(worker.node, worker.name, "Loading the entry script failed", error["traceback"])
        error = {**error, "traceback_file": str(path)}
        self.fatal = EntryScriptError(
            f"entry script '{self.plan.entry_script}' failed to load:\n{error['traceback'].rstrip()}"
        )
        self.first_error = self.first_error or {**error, "mini_batch_id": None, "worker": worker.label}

    def _on_init_failed(self, worker: Worker, error: dict[str, Any]) -> None:
        self.init_failures[worker.node] += 1
        self.counts["init_failures"] += 1
        path = self.recorder.user_error(worker.node, worker.name, "Entry script init() failed", error["traceback"])
        self.recorder.event("ERROR", "init_failed", f"Entry script init() failed for {error['type']}: {error['message']}", worker.label)
        self.first_error = self.first_error or {
            **error, "mini_batch_id": None, "worker": worker.label, "phase": "init", "traceback_file": str(path)
        }

    # ----------------------------------------------------------------- exits and kills
    def _on_exit(self, worker: Worker) -> None:
        if worker.state is WorkerState.DEAD:
            return
        self._drain_channel(worker)
        for fd in list(worker.parsers):
            self._read_stream(worker, fd, until_eof=False)
        returncode = _wait(worker.proc)
        worker.proc.kill()  # the group: children the worker left behind
        was_stopping = worker.state is WorkerState.STOPPING
        self._set_state(worker, WorkerState.DEAD)
        self._unregister(worker)
        reason = self._exit_reason(worker, returncode, was_stopping)
        self.store.queue(
            "workers",
            (worker.label, worker.node, worker.name, worker.proc.pid, worker.proc.gpu,
             worker.proc.started or None, time.time(), returncode, reason),
        )
        if worker.proc.gpu is not None:
            self.gpu_free[worker.node].append(worker.proc.gpu)
            self.gpu_free[worker.node].sort()
        level = "INFO" if was_stopping and (returncode == 0 or worker.kill_reason) else "WARNING"
        self.recorder.event(level, "worker_exit", f"{worker.label} exits with returncode {returncode}. {reason}".rstrip(), worker.label)
        self._close_open_spans(worker, reason or "the worker process ended")
        self._fail_inflight(worker, reason)
        if not was_stopping:
            self._count("worker_restarts")
            self._replace(worker)

    def _close_open_spans(self, worker: Worker, reason: str) -> None:
        """Invocations cut short by a kill or crash still end up as spans, with status ERROR."""
        for inv, start in worker.open_spans.values():
            self.telemetry.killed(worker.label, inv.phase, start, reason, (inv.trace_id, inv.span_id), inv.mini_batch_id, inv.attempt)
        if worker.inflight:  # killed while loading, before run() began: its span was never announced
            head = worker.inflight[0]
            key = (head.mini_batch.id, head.attempt)
            if not any((i.mini_batch_id, i.attempt) == key for i, _ in worker.open_spans.values()):
                start = time.time() - (time.monotonic() - worker.head_since)
                self.telemetry.killed(worker.label, "run", start, reason, (None, None), *key)
        worker.open_spans.clear()

    def _count(self, name: str) -> None:
        self.counts[name] += 1
        metric = getattr(self.telemetry.metrics, name, None) if self.telemetry else None
        if metric is not None:
            metric.inc()

    def _exit_reason(self, worker: Worker, returncode: int, was_stopping: bool) -> str:
        if worker.kill_reason is not None:
            return worker.kill_reason[1]
        if was_stopping and returncode == 0:
            return ""
        return describe_exit(returncode)

    def _drain_channel(self, worker: Worker) -> None:
        conn = worker.conn
        if conn is None:
            return
        try:
            while conn.poll(0):
                message = conn.recv()
                if message[0] == "result":
                    self._on_result(worker, message[1], message[2], message[3])
                elif message[0] == "init_failed":
                    self._on_init_failed(worker, message[1])
                elif message[0] == "load_failed":
                    self._on_load_failed(worker, message[1])
        except (EOFError, OSError):
            pass

    def _unregister(self, worker: Worker) -> None:
        for fd in (worker.conn.fileno() if worker.conn else None, worker.proc.pidfd):
            if fd is not None:
                try:
                    self.selector.unregister(fd)
                except (KeyError, ValueError):
                    pass
        if worker.conn is not None:
            worker.conn.close()
        worker.proc.close_pidfd()
        for fd in list(worker.parsers):  # whatever is left after the group was killed
            self._read_stream(worker, fd, until_eof=True)

    def _fail_inflight(self, worker: Worker, reason: str) -> None:
        status = worker.kill_reason[0] if worker.kill_reason else "PROCESS_CRASHED"
        if worker.inflight:
            head = worker.inflight.popleft()
            self._attempt_failed(
                worker, head.mini_batch.id, head.attempt,
                {"status": status, "total": head.mini_batch.item_count or 0, "start_time": time.time(),
                 "error": {"type": status, "message": reason, "location": None, "traceback": reason}},
            )
        for task in reversed(worker.inflight):  # never started: back to the front, same attempt
            self.pending.appendleft((task.mini_batch.id, task.attempt))
        worker.inflight.clear()

    def _replace(self, worker: Worker) -> None:
        if self._finished() or self.stop_reason or self.fatal:
            return
        node = worker.node
        per_node = self.config.effective_process_count()
        if self.init_failures[node] >= 3 * per_node:
            self.recorder.event("ERROR", "node_gave_up", f"init() failed {self.init_failures[node]} times on node {node}; no new worker is started there.")
            return
        self._spawn(node)

    def _kill(self, worker: Worker, status: str, message: str) -> None:
        worker.kill_reason = (status, message)
        self.recorder.event("ERROR", "timeout", message + " Stopping this process.", worker.label)
        worker.proc.kill()
        if worker.proc.pidfd is None:
            self._on_exit(worker)

    # ----------------------------------------------------------------- results
    def _on_result(self, worker: Worker, mb_id: int, attempt: int, result: dict[str, Any]) -> None:
        if not worker.inflight or worker.inflight[0].mini_batch.id != mb_id:
            return  # a result for a task already failed (killed): ignore
        worker.inflight.popleft()
        worker.head_since = time.monotonic()
        if result.get("elapsed") is not None:  # a moving mean sets the prefetch depth
            self._mean_elapsed = result["elapsed"] if not self._mean_elapsed else 0.9 * self._mean_elapsed + 0.1 * result["elapsed"]
        worker.run_began.pop((mb_id, attempt), None)
        self.last_progress = time.monotonic()
        if result["status"] == "RUN_DONE":
            self._attempt_done(worker, mb_id, attempt, result)
        else:
            self._attempt_failed(worker, mb_id, attempt, result)

    def _update(self, state: MiniBatchState, **changes: Any) -> None:
        """Change a mini-batch's state, keeping the threshold tallies current (no rescans)."""
        self._failed_items -= state.failed_items()
        self._failed_batches -= state.last_failed
        for name, value in changes.items():
            setattr(state, name, value)
        self._failed_items += state.failed_items()
        self._failed_batches += state.last_failed

    def _attempt_done(self, worker: Worker, mb_id: int, attempt: int, result: dict[str, Any]) -> None:
        state = self.mini_batches[mb_id]
        state.tries += 1
        self._update(state, status="done", last_failed=False, total=result["total"], succeeded=result["succeeded"])
        self._record_attempt(worker, mb_id, attempt, result)
        self._append_output(result)
        self.store.queue(
            "done", ("done", state.tries, state.total, state.succeeded, (state.total or 0) - state.succeeded,
                     worker.label, self.output_size, mb_id),
        )
        self.store.update_run(output_size=self.output_size)
        self.telemetry.attempt(worker.label, mb_id, attempt, result, "succeeded")
        self._check_thresholds(final=False)

    def _record_attempt(self, worker: Worker, mb_id: int, attempt: int, result: dict[str, Any]) -> None:
        self.store.queue("attempts", attempt_row(mb_id, attempt, worker.label, worker.proc.pid, result))
        total, succeeded = result.get("total", 0), result.get("succeeded", 0)
        self.recorder.system(
            worker.node, worker.name,
            f"mini batch {mb_id} attempt {attempt} {result['status']}: pid {worker.proc.pid}, total {total}, "
            f"succeeded {succeeded}, failed {total - succeeded}, elapsed {result.get('elapsed', 0):.3f} s, "
            f"process time {result.get('process_seconds', 0):.3f} s, run method {result.get('run_seconds', 0):.3f} s",
        )

    def _append_output(self, result: dict[str, Any]) -> None:
        rows = result.get("rows")
        if not rows or self.output_fd is None:
            return
        if self.output_size == 0 and self.settings.append_row_dataframe_header and result.get("header"):
            rows = result["header"] + rows
        self._output_buffer += rows
        self.output_size += len(rows)
        if len(self._output_buffer) > OUTPUT_BUFFER:
            self._write_output()

    def _write_output(self) -> None:
        """Rows reach the file before the ledger commit that covers them (exactly-once)."""
        if self._output_buffer and self.output_fd is not None:
            view = memoryview(self._output_buffer)
            while view:
                view = view[os.write(self.output_fd, view) :]
            view.release()
            self._output_buffer.clear()

    def _flush(self) -> None:
        self._write_output()
        self.recorder.flush()

    def _attempt_failed(self, worker: Worker, mb_id: int, attempt: int, result: dict[str, Any]) -> None:
        state = self.mini_batches[mb_id]
        state.tries += 1
        self._update(state, last_failed=True, total=result.get("total") or state.total)
        self._record_attempt(worker, mb_id, attempt, result)
        error = result.get("error") or {}
        status = result["status"]
        self.counts[status] += 1
        traceback_file = None
        if error and status in ("RUN_EXCEPTION", "LOAD_ERROR"):
            traceback_file = self.recorder.user_error(
                worker.node, worker.name,
                f"Entry script run() failed for mini batch {mb_id} (attempt {attempt}, {state.descriptor.summary()})",
                error["traceback"],
            )
        self.recorder.event(
            "ERROR", "attempt_failed",
            f"Mini batch {mb_id} attempt {attempt} failed ({status}): {error.get('type', status)}: {error.get('message', '')}",
            worker.label,
        )
        if self.first_error is None:
            self.first_error = {**error, "mini_batch_id": mb_id, "attempt": attempt, "worker": worker.label,
                                "inputs": state.descriptor.summary(), "phase": "run", "status": status,
                                "traceback_file": str(traceback_file) if traceback_file else None}
        final = None if attempt < self.config.run_max_try else "failed"
        self.telemetry.attempt(worker.label, mb_id, attempt, result, final)
        if final is None:
            self.pending.append((mb_id, attempt + 1))
            self._count("retries")
        else:
            self._update(state, status="failed")
            self.store.queue("done", ("failed", state.tries, state.total, 0, state.total or 0, worker.label, None, mb_id))
            self.recorder.event("ERROR", "mini_batch_failed", f"Mini batch {mb_id} failed after {attempt} tries.", worker.label)
        self._check_thresholds(final=False)

    # ----------------------------------------------------------------- the loop
    def _loop(self) -> None:
        while not self._finished():
            self._dispatch()
            if self._finished():
                break
            events = self.selector.select(self._wait_time())
            for key, _ in events:
                key.data(key.fd)
                if self.fatal:
                    break
            now = time.monotonic()
            if now - self._last_clock_check >= CLOCK_INTERVAL:
                self._last_clock_check = now
                self._check_clocks(now)
            if now - self._last_flush >= FLUSH_INTERVAL:
                self._periodic(now)
            if events:
                # A short nap lets results and output pile up, so one wake-up serves many (the
                # workers hold queued tasks meanwhile): about 15% less driver CPU per mini-batch.
                time.sleep(COALESCE_SECONDS)

    def _periodic(self, now: float) -> None:
        if self.monitor.due(now):
            live = [(w.node, w.name, w.proc.pid) for w in self.workers.values() if w.state is not WorkerState.DEAD]
            self.monitor.sample(live, now)
            self.monitor.flush()
            self.telemetry.resources(self.monitor.last)
        if now >= self._next_metrics:
            self._next_metrics = now + 1.0
            self._store_metrics()
            if self.exports is not None:
                self.exports.checkpoint()
        if now >= self._next_overview and self.partition_done:
            self._next_overview = now + OVERVIEW_INTERVAL
            self.recorder.progress(self._progress_line(now))
        self._flush()
        self._last_flush = now
        if self.on_progress is not None:
            self.on_progress(self)

    def _store_metrics(self) -> None:
        for row in self.telemetry.rows(len(self.pending)):
            self.recorder.metric_row(row)

    def _progress_line(self, now: float) -> str:
        done = sum(1 for s in self.mini_batches.values() if s.status != "pending")
        total = len(self.mini_batches)
        elapsed = now - self.started
        remaining = elapsed / done * (total - done) if done else 0.0
        return f"Processed {done} of {total} mini batches in {_hms(elapsed)}. Estimate remaining {_hms(remaining)}."

    def _finished(self) -> bool:
        if self.fatal or self.stop_reason:
            return True
        if not self.partition_done or self.pending:
            return False
        return all(not w.inflight for w in self.workers.values())

    def _wait_time(self) -> float:
        return 0.05 if any(w.inflight for w in self.workers.values()) else 0.2

    def _dispatch(self) -> None:
        if not self.pending:
            return
        for worker in self.workers.values():
            if worker.state is not WorkerState.READY:
                continue
            room = self._prefetch() - len(worker.inflight)
            if room <= 0:
                continue
            now = time.monotonic()
            batch: list[tuple[Any, int]] = []
            while self.pending and len(batch) < room:
                mb_id, attempt = self.pending.popleft()
                task = Task(self.mini_batches[mb_id].descriptor, attempt, now)
                if not worker.inflight:
                    worker.head_since = now
                worker.inflight.append(task)
                batch.append((task.mini_batch, attempt))
            assert worker.conn is not None
            try:
                worker.conn.send(("tasks", batch))
            except OSError:
                pass  # the worker is gone: its exit re-queues the tasks
            if not self.pending:
                return

    def _prefetch(self) -> int:
        """How many tasks a worker holds: about PREFETCH_SECONDS of work, within bounds."""
        mean = self._mean_elapsed
        if mean <= 0:
            return PREFETCH_MIN
        return max(PREFETCH_MIN, min(PREFETCH_MAX, int(PREFETCH_SECONDS / mean)))

    def _check_clocks(self, now: float) -> None:
        cfg, settings = self.config, self.settings
        budget = cfg.run_invocation_timeout + settings.task_overhead_timeout
        for worker in list(self.workers.values()):
            if worker.kill_reason is not None or worker.state is WorkerState.DEAD:
                continue
            if worker.state in (WorkerState.STARTING, WorkerState.INIT) and now - worker.since > budget:
                self._kill(worker, "INIT_TIMEOUT", f"init() did not finish in {budget:g} seconds.")
            elif worker.inflight:
                self._check_task_clock(worker, now)
        self._check_job_clocks(now)

    def _check_task_clock(self, worker: Worker, now: float) -> None:
        head = worker.inflight[0]
        began = worker.run_began.get((head.mini_batch.id, head.attempt))
        timeout = self.config.run_invocation_timeout
        if began is not None and now - began > timeout:
            self._count("timeouts")
            self._kill(worker, "RUN_TIMEOUT", f"mini batch {head.mini_batch.id} did not finish in {timeout:g} seconds.")
        elif began is None and now - worker.head_since > self.settings.task_overhead_timeout + timeout:
            self._count("timeouts")
            self._kill(worker, "LOAD_TIMEOUT", f"mini batch {head.mini_batch.id} was not loaded in {self.settings.task_overhead_timeout:g} seconds.")

    def _check_job_clocks(self, now: float) -> None:
        settings = self.settings
        if self.first_task_at is None and now - self.started > settings.first_task_creation_timeout:
            self._stop(
                f"Unable to create any task within {settings.first_task_creation_timeout:g} seconds. Reduce the "
                "single input size or set the advanced argument '--first_task_creation_timeout' to a larger value."
            )
            return
        progress = settings.progress_timeout(self.config.run_invocation_timeout)
        if now - self.last_progress > progress:
            self._stop(f"No progress update in {progress:g} seconds.")
            return
        alive = [w for w in self.workers.values() if w.state is not WorkerState.DEAD]
        if not alive and not self._finished():
            n = self.counts["init_failures"]
            self._stop(
                f"The init() in the entry script had failed for {n} times and no worker is left. "
                "Check logs/user/error for the cause." if n else "No worker process is left."
            )
        limit = 2 * self.config.node_count * self.config.effective_process_count()
        if self.counts["init_failures"] >= limit:
            self._stop(
                f"The init() in the entry script had failed for {self.counts['init_failures']} times. "
                "Check logs/user/error for the cause."
            )

    def _stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.recorder.event("ERROR", "stop", f"Progress update stopped for reasons: [{reason}]")
            self.recorder.progress(f"Progress update stopped for reasons: [{reason}]", "ERROR")

    # ----------------------------------------------------------------- thresholds
    def _check_thresholds(self, final: bool) -> None:
        """Failed items; mini-batches whose latest attempt failed (a later success stops counting)."""
        message = self.thresholds.exceeded(
            self._failed_items, self._failed_batches, len(self.mini_batches), self.partition_done
        )
        if message and not final:
            self._stop(f"{message} Stopping processing.")
        elif message:
            self.stop_reason = self.stop_reason or message

    # ----------------------------------------------------------------- the end
    def _finish_workers(self) -> None:
        """Ask every worker to shutdown(), or kill them all when the job stops early."""
        early = bool(self.fatal or self.stop_reason)
        if self.monitor.interval > 0:  # a last sample while the workers still live
            live = [(w.node, w.name, w.proc.pid) for w in self.workers.values() if w.state is not WorkerState.DEAD]
            self.monitor.sample(live, time.monotonic())
        for worker in self.workers.values():
            if worker.state is WorkerState.DEAD:
                continue
            if early or worker.state is not WorkerState.READY:
                reason = "stopped: the job is ending" if early else "stopped: all work was done before its init() finished"
                worker.kill_reason = worker.kill_reason or ("STOPPED", reason)
                worker.state = WorkerState.STOPPING
                worker.proc.kill()
            else:
                self._set_state(worker, WorkerState.STOPPING)
                assert worker.conn is not None
                try:
                    worker.conn.send(("stop",))
                except OSError:
                    pass
        deadline = time.monotonic() + max(30.0, self.config.run_invocation_timeout)
        while any(w.state is not WorkerState.DEAD for w in self.workers.values()):
            if time.monotonic() > deadline:
                for worker in self.workers.values():
                    if worker.state is not WorkerState.DEAD:
                        worker.kill_reason = ("STOPPED", "shutdown() did not finish in time")
                        worker.proc.kill()
                deadline = time.monotonic() + 5
            for key, _ in self.selector.select(0.2):
                key.data(key.fd)
            for worker in self.workers.values():  # no pidfd: poll
                if worker.state is not WorkerState.DEAD and worker.proc.pidfd is None and worker.proc.popen.poll() is not None:
                    self._on_exit(worker)

    def _conclude(self) -> JobResult:
        if not self.fatal and not self.stop_reason:
            self._check_thresholds(final=True)
            if (
                not self.stop_reason
                and self.config.output_action == "append_row"
                and sum(s.succeeded for s in self.mini_batches.values()) == 0
            ):
                self.stop_reason = NO_RESULT_MESSAGE
        result = self.result()
        self.telemetry.end(result.ok, result.reason, {
            "mini_batches.total": result.mini_batches_total, "mini_batches.failed": result.mini_batches_failed,
            "items.total": result.items_total, "items.failed": result.items_failed, "status": result.status,
        })
        self._store_metrics()
        result.exports = self.exports.close() if self.exports is not None else {}
        if self.partition_done and not self.stop_reason and not self.fatal:
            self.recorder.progress(f"All {len(self.mini_batches)} mini batches have been processed.")
        self.recorder.progress(f"{result.headline()} The error threshold is {self.config.error_threshold}.",
                               "INFO" if result.ok else "ERROR")
        if result.reason:
            self.recorder.progress(result.reason, "ERROR")
        self.store.update_run(status=result.status, ended_at=time.time(), error=result.reason, summary=result.to_json())
        self.recorder.event("INFO" if result.ok else "ERROR", "end", result.headline())
        self._flush()
        from pipeobs.record.reports import write_reports

        write_reports(self, result)
        if self.fatal is not None and not isinstance(self.fatal, JobFailed):
            raise self.fatal
        return result

    def result(self) -> JobResult:
        states = self.mini_batches.values()
        done = [s for s in states if s.status == "done"]
        total_items = sum(s.total or 0 for s in states)
        succeeded_items = sum(s.succeeded for s in done)
        return JobResult(
            status="Failed" if (self.fatal or self.stop_reason) else "Completed",
            step_id=self.plan.step_id,
            step_name=self.plan.step_name,
            run_dir=str(self.run_dir.path),
            output_path=self.plan.output_file,
            output_dir=self.plan.output_dir,
            mini_batches_total=len(self.mini_batches),
            mini_batches_succeeded=len(done),
            mini_batches_failed=sum(1 for s in states if s.status == "failed"),
            items_total=total_items,
            items_succeeded=succeeded_items,
            items_failed=self._failed_items,
            duration_seconds=time.monotonic() - self.started,
            reason=self.stop_reason or (str(self.fatal) if self.fatal else None),
            first_error=self.first_error,
            retries=self.counts["retries"],
            timeouts=self.counts["timeouts"],
            worker_restarts=self.counts["worker_restarts"],
        )

    # ----------------------------------------------------------------- resume
    def _open_output(self) -> None:
        path = self.plan.output_file
        if path is None:
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.output_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def _restore_ledger(self) -> None:
        """On resume: cut the output back to what the ledger committed, keep done mini-batches."""
        from pipeobs.datasets import MiniBatch

        row = self.store.run_row()
        self.output_size = row["output_size"] if row is not None else 0
        if self.output_fd is not None:
            os.ftruncate(self.output_fd, self.output_size)
        tries = dict(self.store.conn.execute("SELECT mini_batch_id, MAX(attempt) FROM attempts GROUP BY mini_batch_id").fetchall())
        for rec in self.store.conn.execute("SELECT * FROM mini_batches ORDER BY id"):
            state = MiniBatchState(MiniBatch.from_json(rec["descriptor"]), tries=tries.get(rec["id"], 0) or 0)
            self._update(
                state,
                status=rec["status"],
                total=rec["total"] if rec["total"] is not None else state.descriptor.item_count,
                succeeded=rec["succeeded"] or 0,
                last_failed=rec["status"] == "failed",
            )
            self.mini_batches[rec["id"]] = state
            if state.status == "pending":
                attempt = state.tries + 1
                if attempt > self.config.run_max_try:
                    attempt = self.config.run_max_try
                self.pending.append((rec["id"], attempt))
        if self.mini_batches:
            self.recorder.event(
                "INFO", "resume",
                f"Resuming: {sum(1 for s in self.mini_batches.values() if s.status != 'pending')} mini batches "
                f"already finished, output cut back to {self.output_size} bytes.",
            )


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _wait(proc: WorkerProcess) -> int:
    try:
        return proc.popen.wait(timeout=5)
    except Exception:  # noqa: BLE001 - a process that will not die: kill it
        proc.kill()
        return proc.popen.wait()


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
