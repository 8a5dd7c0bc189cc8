"""A v2 ``type: command`` job (standalone, or a pipeline's command node), run locally and recorded.

The command runs as Azure runs it, in a shell (``bash -c``) in the code folder, and its run
directory reads like a step's: a ``runs`` row (``kind`` ``command``), every line of stdout and
stderr in ``log_lines`` (worker ``command``, phase ``command``) and in ``user_logs/std_log.txt``
(the name of Azure's command log), and one ``command`` span, a child of the pipeline's span when
there is one, so ``pipeobs show | logs | trace | runs`` and the web explorer work on it.

The command gets ``TRACEPARENT`` (its span's W3C context: the user's OpenTelemetry continues
the trace), MLflow's variables as a step's workers do (``MLFLOW_TRACKING_URI`` = ``<run dir>/mlruns``
unless the job sets it, :func:`pipeobs.mlflow_bridge.tracking_environment`) and ``AZUREML_RUN_ID``
(the step_id). It runs in its own process group, so a timeout or Ctrl-C ends
it and everything it started.

Two threads read the pipes (a full pipe never stalls the command while the other is read); the
caller's thread alone writes the store and the log file.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pipeobs.env import AZUREML_RUN_ID, TRACEPARENT
from pipeobs.errors import RunDirError, Terminated
from pipeobs.jobs import JobResult
from pipeobs.record.rundir import STORE_NAME, RunDir
from pipeobs.record.store import Store
from pipeobs.records import Event, Invocation, Line, Span

logger = logging.getLogger(__name__)

WORKER = "command"  # the worker and phase of the command's lines and span
STD_LOG = Path("user_logs") / "std_log.txt"
READ_SIZE = 1 << 16  # a line longer than this is stored in pieces of this size
FLUSH_INTERVAL = 0.2  # seconds between store transactions while the command runs
FLUSH_LINES = 10_000  # ...or sooner when this many lines wait
KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL of the process group
DRAIN_SECONDS = 2.0  # after bash exits, how long processes it left behind may keep its pipes open
FOLDER_OUTPUTS = ("uri_folder", "mltable")


@dataclass
class CommandRun:
    """One command to run, everything already resolved by the caller (the v2 loader or pipeline runner)."""

    name: str
    step_id: str
    run_dir: Path
    command: str
    code_dir: str
    environment_variables: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    outputs: dict[str, tuple[str, str]] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
    parent_traceparent: str | None = None
    parent_step_id: str | None = None
    echo: Callable[[str], None] | None = None


@dataclass
class _Outcome:
    status: str
    reason: str | None = None
    exit_code: int | None = None
    interrupted_by: str | None = None


def run_command(job: CommandRun) -> JobResult:
    """Run ``job.command`` to its end and record it; Ctrl-C or SIGTERM end it ``Interrupted`` and are re-raised."""
    from pipeobs.driver.core import terminate_interrupts

    recorder = CommandRecorder(job)
    try:
        with terminate_interrupts():
            try:
                outcome = _execute(job, recorder)
            except KeyboardInterrupt as exc:
                signal_name = exc.signal_name if isinstance(exc, Terminated) else "SIGINT"
                recorder.finish(_Outcome("Interrupted", f"The run was interrupted by {signal_name}.",
                                         interrupted_by=signal_name))
                raise
        return recorder.finish(outcome)
    finally:
        recorder.close()


def _execute(job: CommandRun, recorder: CommandRecorder) -> _Outcome:
    problem = _cannot_start(job)
    if problem is not None:
        return _Outcome("Failed", problem)
    try:
        process = subprocess.Popen(["bash", "-c", job.command], cwd=job.code_dir, env=recorder.environment(),
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True)
    except OSError as exc:
        return _Outcome("Failed", f"cannot start the command with bash: {exc.strerror or exc}")
    recorder.started(process.pid)
    with _Pipes(process, recorder) as pipes:
        if not pipes.wait(job.timeout):
            pipes.stop()
            return _Outcome("Failed", f"command ran longer than limits.timeout ({_seconds(job.timeout)} s)",
                            process.returncode)
    return _exit_outcome(process.returncode, recorder.last_stderr)


def _seconds(value: float | None) -> str:
    """``3600`` for 3600.0, ``0.5`` for 0.5: the limit as the YAML wrote it."""
    return str(int(value)) if value is not None and float(value).is_integer() else str(value)


def _cannot_start(job: CommandRun) -> str | None:
    """Why the command cannot start (its folder, its outputs' folders), in one line; None when it can."""
    if not Path(job.code_dir).is_dir():
        return f"the command's code folder '{job.code_dir}' does not exist: check the job's 'code'"
    for name, (kind, path) in job.outputs.items():
        folder = Path(path) if kind in FOLDER_OUTPUTS else Path(path).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return f"cannot create the folder of output '{name}' ({folder}): {exc.strerror or exc}"
    return None


def _exit_outcome(code: int, last_stderr: str | None) -> _Outcome:
    if code == 0:
        return _Outcome("Completed", exit_code=0)
    reason = f"command was killed by {_signal_name(-code)}" if code < 0 else f"command exited with code {code}"
    return _Outcome("Failed", reason + (f": {last_stderr}" if last_stderr else ""), code)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class CommandRecorder:
    """The run directory of one command: its runs row, log lines, ``std_log.txt`` and ``command`` span."""

    def __init__(self, job: CommandRun) -> None:
        self.job = job
        self.started_at = time.time()
        self._clock = time.monotonic()
        self.run_dir = _new_run_dir(job.run_dir)
        self.store = Store(self.run_dir.store, job.step_id)
        self.store.insert_run(_run_row(job, self.started_at))
        std_log = self.run_dir.path / STD_LOG
        std_log.parent.mkdir(parents=True, exist_ok=True)
        self.std_log: IO[str] = std_log.open("w", encoding="utf-8", errors="replace")
        self.last_stderr: str | None = None
        self.echo = job.echo  # None once the run is interrupted: the rest is recorded, not shown
        self._unterminated: str | None = None  # the stream whose last piece in std_log.txt had no newline
        self._last_flush = 0.0
        self._queued_lines = 0
        self._open_span()
        self.store.flush()

    def _open_span(self) -> None:
        from opentelemetry.trace import SpanKind

        from pipeobs.telemetry.spans import (
            CallbackSpanExporter,
            context_from_traceparent,
            ids_of,
            make_tracer_provider,
            pending_span,
            traceparent_of,
        )

        job = self.job
        self.provider = make_tracer_provider(
            job.name, {"pipeobs.step_id": job.step_id},
            CallbackSpanExporter(lambda record: self.store.add_span(Span(record, WORKER))),
        )
        parent = context_from_traceparent(job.parent_traceparent) if job.parent_traceparent else None
        attributes = {"pipeobs.step_id": job.step_id, "pipeobs.step_name": job.name, "pipeobs.command": job.command}
        self.span = self.provider.get_tracer("pipeobs").start_span(
            "command", context=parent, kind=SpanKind.INTERNAL, attributes=attributes)
        self.traceparent = traceparent_of(self.span)
        trace_id, span_id = ids_of(self.span)
        self._invocation = Invocation(WORKER, None, None, trace_id, span_id)
        parent_span = getattr(self.span, "parent", None)
        parent_id = f"{parent_span.span_id:016x}" if parent_span is not None else None
        pending = pending_span("command", trace_id, "", span_id, self.started_at, attributes)
        self.store.add_span(Span({**pending, "parent_span_id": parent_id}, WORKER))  # seen running by live readers

    def environment(self) -> dict[str, str]:
        """The command's environment: ours, the job's variables, then the run's identity."""
        from pipeobs.mlflow_bridge import tracking_environment

        variables = self.job.environment_variables
        env = {**os.environ, **tracking_environment(str(self.run_dir.path), variables), **variables}
        env[TRACEPARENT] = self.traceparent
        env[AZUREML_RUN_ID] = self.job.step_id
        return env

    def started(self, pid: int) -> None:
        self.span.set_attribute("process.pid", pid)
        self.store.add_event(Event(time.time(), "INFO", "start", f"Started the command (pid {pid}) in {self.job.code_dir}"))

    def line(self, stream: str, when: float, piece: str) -> None:
        """A line (with its newline, or a piece of a long or unterminated one) as read from ``stream``."""
        if self._unterminated not in (None, stream):  # another stream's unterminated piece: end it there
            self.std_log.write("\n")
        self.std_log.write(piece)
        self._unterminated = None if piece.endswith("\n") else stream
        text = piece[:-1] if piece.endswith("\n") else piece
        self.store.add_line(Line(stream, self._invocation, text, time=when, worker=WORKER))
        self._queued_lines += 1
        if stream == "stderr" and text.strip():
            self.last_stderr = text.strip()
        if self.echo is not None:
            self.echo(text)

    def flush(self, force: bool = False) -> None:
        """Commit the lines read so far, at most every :data:`FLUSH_INTERVAL` unless many wait."""
        now = time.monotonic()
        if force or self._queued_lines >= FLUSH_LINES or now - self._last_flush >= FLUSH_INTERVAL:
            self.std_log.flush()
            self.store.flush()
            self._last_flush, self._queued_lines = now, 0

    def finish(self, outcome: _Outcome) -> JobResult:
        """End the span, and record the outcome in the runs row."""
        from opentelemetry.trace import Status, StatusCode

        result = JobResult(
            status=outcome.status, step_id=self.job.step_id, step_name=self.job.name, run_dir=str(self.run_dir.path),
            output_path=None, output_dir=str(self.run_dir.path), mini_batches_total=0, mini_batches_succeeded=0,
            mini_batches_failed=0, items_total=0, items_succeeded=0, items_failed=0,
            duration_seconds=time.monotonic() - self._clock, reason=outcome.reason,
            interrupted_by=outcome.interrupted_by,
        )
        self.span.set_attribute("pipeobs.status", outcome.status)
        if outcome.exit_code is not None:
            self.span.set_attribute("pipeobs.exit_code", outcome.exit_code)
        self.span.set_status(Status(StatusCode.OK) if result.ok else Status(StatusCode.ERROR, outcome.reason))
        self.span.end()
        self.store.add_event(Event(time.time(), "INFO" if result.ok else "ERROR", "end",
                                   f"{outcome.status}" + (f": {outcome.reason}" if outcome.reason else "")))
        self.store.update_run(status=result.status, ended_at=time.time(), error=result.reason, summary=result.to_json())
        self.flush(force=True)
        return result

    def close(self) -> None:
        """Idempotent: the files and the store closed, the lock released (a failed run included)."""
        if self.std_log.closed:
            return
        self.provider.shutdown()
        self.std_log.close()
        self.store.close()
        self.run_dir.unlock()


def _new_run_dir(path: Path) -> RunDir:
    """The run directory, created (outputs may already live inside it) and locked; never another run's."""
    run_dir = RunDir(path)
    if (run_dir.path / STORE_NAME).exists():
        raise RunDirError(f"'{path}' already holds a run: give the command a new run directory")
    try:
        run_dir.path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create run directory '{path}': {exc.strerror or exc}") from None
    run_dir.lock()
    return run_dir


def _run_row(job: CommandRun, started_at: float) -> dict[str, Any]:
    """The ``runs`` row: the job's facts in ``config`` (so ``pipeobs diff`` compares them), its inputs in ``inputs``."""
    from pipeobs.record.liveness import this_driver

    config = {
        **job.record,
        "command": job.command,
        "code": job.code_dir,
        "environment_variables": job.environment_variables,
        "limits": {"timeout": job.timeout},
        "outputs": {name: {"type": kind, "path": path} for name, (kind, path) in job.outputs.items()},
    }
    return {
        "step_id": job.step_id, "step_name": job.name, "status": "Running", "started_at": started_at,
        "entry_script": job.command, "config": json.dumps(config, default=str),
        "inputs": json.dumps(job.record.get("inputs") or {}, default=str), "kind": "command",
        "parent_step_id": job.parent_step_id, **this_driver(),
    }


class _Pipes:
    """The command's stdout and stderr, each read line by line by a thread into one queue that the
    caller's thread drains into the recorder; leaving it ends the process group."""

    def __init__(self, process: subprocess.Popen[bytes], recorder: CommandRecorder) -> None:
        self.process = process
        self.recorder = recorder
        self.lines: queue.Queue[tuple[str, float, str | None]] = queue.Queue(maxsize=4096)
        self.open = {"stdout", "stderr"}
        self.threads = [
            threading.Thread(target=_read, args=(pipe, stream, self.lines), name=f"pipeobs-command-{stream}", daemon=True)
            for stream, pipe in (("stdout", process.stdout), ("stderr", process.stderr))
        ]

    def __enter__(self) -> _Pipes:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: Any) -> None:
        """Stop the command if it still runs (an interrupt), then read what is left."""
        if kind is not None:
            self.recorder.echo = None
        try:
            if self.process.poll() is None:
                self.stop()
            self._drain()
        finally:
            self.recorder.flush(force=True)

    def wait(self, timeout: float | None) -> bool:
        """Record lines until bash exits (True) or ``timeout`` seconds pass (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.process.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            self.pump(0.1 if left is None else min(0.1, left))
        return True

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after :data:`KILL_GRACE`; lines keep being recorded meanwhile."""
        _signal_group(self.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE
        try:
            while self.process.poll() is None and time.monotonic() < deadline:
                self.pump(0.05)
        finally:  # a second Ctrl-C while waiting still ends the command
            _signal_group(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def _drain(self) -> None:
        """Read to the end of both pipes; what bash left behind gets :data:`DRAIN_SECONDS`, then is killed
        (as Azure's container ends with the command); a process that left the group may keep its pipe."""
        self._pump_until(time.monotonic() + DRAIN_SECONDS)
        _signal_group(self.process.pid, signal.SIGKILL)
        self._pump_until(time.monotonic() + DRAIN_SECONDS)
        if self.open:
            logger.warning("stopped reading %s of command %s: a process outside its group holds it open",
                           " and ".join(sorted(self.open)), self.recorder.job.step_id)

    def _pump_until(self, deadline: float) -> None:
        while self.open and time.monotonic() < deadline:
            self.pump(min(0.1, max(0.0, deadline - time.monotonic())))

    def pump(self, timeout: float) -> None:
        """Record the lines read so far, waiting up to ``timeout`` for the first."""
        try:
            item = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.recorder.flush()
            return
        while True:
            stream, when, piece = item
            if piece is None:
                self.open.discard(stream)
            else:
                self.recorder.line(stream, when, piece)
            try:
                item = self.lines.get_nowait()
            except queue.Empty:
                break
        self.recorder.flush()


def _read(pipe: IO[bytes], stream: str, lines: queue.Queue[tuple[str, float, str | None]]) -> None:
    """Lines of one pipe, decoded as UTF-8 across piece boundaries, then None at its end."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    with pipe:
        for chunk in iter(lambda: pipe.readline(READ_SIZE), b""):
            text = decoder.decode(chunk)
            if text:
                lines.put((stream, time.time(), text))
        rest = decoder.decode(b"", final=True)
        if rest:
            lines.put((stream, time.time(), rest))
    lines.put((stream, time.time(), None))


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:  # the group has ended
        pass


def command_summary(result: JobResult) -> str:
    """What ``pipeobs`` prints after a command job: status, duration, where to look, and why it failed."""
    from pipeobs.explorer.terminal import printable

    lines = [
        f"{result.status}: command {result.step_name}, run {result.step_id}",
        f"  duration:     {result.duration_seconds:.2f} s",
        f"  run dir:      {result.run_dir}",
        f"  std log:      {Path(result.run_dir) / STD_LOG}",
    ]
    if result.reason:
        lines.append(f"  reason:       {result.reason}")
    return printable("\n".join(lines))


def print_command_result(result: JobResult, stream: Any = None) -> None:
    print(command_summary(result), file=stream or sys.stdout, flush=True)
