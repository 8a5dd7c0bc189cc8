"""The worker process: load the entry script, ``init()`` once, run mini-batches, ``shutdown()``.

Started by an executor as ``python -m pipeobs.worker`` with the hub address and auth key in its
environment. It connects to the driver's hub, receives its setup, and then serves tasks one at a
time. Results are sent only after the invocation's end markers are written to fds 1 and 2, so
the driver always holds a mini-batch's output before its result; the result carries the attempt's
finished ``mini_batch`` span (pickled with it: no JSON to encode here or decode in the driver).
Between two mini-batches of one batch of tasks, the end of the first and the begin of the next
share one write per stream.

Exit codes follow Azure's worker codes (section 2.7): 0 done, 72 ``init()`` failed, 3 the entry
script could not be loaded.
"""

from __future__ import annotations

import faulthandler
import inspect
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection
from typing import TYPE_CHECKING, Any

from pipeobs import context, env, mlflow_bridge
from pipeobs.accept import accept
from pipeobs.capture import Invocation, WorkerCapture, emit_span
from pipeobs.datasets.load import MiniBatchContext
from pipeobs.debugger import DEBUGPY_MISSING, breakpoint_at_first_line, import_debugpy
from pipeobs.entry import describe_error, load_entry_script
from pipeobs.process_stats import peak_rss, profile_bytes, reset_peak_rss, start_profiler
from pipeobs.protocol import (
    Bye,
    Debug,
    Debugging,
    Hello,
    InitFailed,
    LoadFailed,
    Message,
    Ready,
    Result,
    Setup,
    Stop,
    Tasks,
    decode,
    to_bytes,
)

if TYPE_CHECKING:
    from pipeobs.telemetry.recorded import RecordedSpan

EXIT_INIT_FAILED = 72
EXIT_LOAD_FAILED = 3
EXIT_ORPHANED = 82  # Azure's "asked to stop"
SHARED_WRITE_RESULT = 256 * 1024  # output rows above this: the next attempt begins after the result is sent


@dataclass(slots=True)
class Attempt:
    """A mini-batch attempt as a worker runs it: its span and invocation, the result it builds, its data."""

    mini_batch: Any
    attempt: int
    span: RecordedSpan
    invocation: Invocation
    result: dict[str, Any]
    started: float = 0.0  # perf_counter() when its clocks started (:func:`_start_clocks`)
    cpu: float = 0.0  # process_time() then
    data: Any = None
    loaded: bool = False  # load_mini_batch() returned (else its result is a LOAD_ERROR)
    begun: bool = False  # its begin marker is written


@dataclass
class RunContext(MiniBatchContext):
    """``mini_batch_context`` as a worker passes it: Azure's context also names the mini-batch
    (``minibatch_index``, read by Azure's own batch-scoring entry script)."""

    minibatch_index: int = -1


def takes_context(run: Callable[..., Any]) -> bool:
    """Whether ``run`` accepts a second positional argument (``run(mini_batch, mini_batch_context)``
    or ``*args``): only such a run() is passed the context, with partition keys or without."""
    try:
        parameters = inspect.signature(run).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): called with the mini-batch alone
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in parameters)


class WorkerLoop:
    """The life of one worker process, serving the driver over ``conn``."""

    def __init__(self, conn: Connection, setup: Setup) -> None:
        self.conn = conn
        self.setup = setup
        self.capture = WorkerCapture(setup.token, setup.logging_level)
        self.module: Any = None
        self.run_takes_context = False  # read from run()'s signature once the entry script is loaded
        self.datasets: list[Any] = []
        self.parent_context: Any = None
        self.skip_exit_hooks = False  # the user's exporters hang: do not wait for them again at exit
        self.debug: Debug | None = None  # the attempt to run under a debugger, when the driver names one
        info = setup.worker
        self.base_attributes = {"pipeobs.step_id": info["step_id"], "pipeobs.worker": f"{info['node']}/{info['name']}"}

    def send(self, message: Message) -> None:
        self.conn.send_bytes(to_bytes(message))

    def serve(self) -> int:
        self.capture.install()
        self._prepare_process()
        self._setup_tracing()
        self.profiler = start_profiler(self.setup.profiling_module or "")
        if not self._load():
            return EXIT_LOAD_FAILED
        if not self._init():
            self._flush_user_telemetry()
            return EXIT_INIT_FAILED
        while True:
            message = decode(self.conn.recv())
            if type(message) is Tasks:
                self.run_tasks(message.items)
            elif type(message) is Debug:
                self.debug = message
            elif type(message) is Stop:
                break
            else:
                raise RuntimeError(f"unexpected message from the driver: {message!r:.80}")
        self._shutdown()
        return 0

    def _prepare_process(self) -> None:
        setup = self.setup
        context.set_worker(context.WorkerInfo(**setup.worker))
        sys.argv = [setup.entry_script, *setup.script_arguments]
        shims = os.path.join(os.path.dirname(__file__), "_shims")
        sys.path.append(shims)  # appended: a real azureml installation is never shadowed
        mlflow_bridge.install()  # the entry script's mlflow calls, if it makes any, also reach the store
        os.makedirs(setup.scratch_dir, exist_ok=True)
        os.chdir(setup.scratch_dir)  # as on Azure: each worker runs in a private folder
        if setup.datasets:
            from pipeobs.datasets import Dataset

            self.datasets = [Dataset.from_dict(d) for d in setup.datasets]

    def _setup_tracing(self) -> None:
        """The global tracer provider (the entry script's spans), and what pipeobs's own spans need: the
        OpenTelemetry SDK is loaded here, not when the worker module is imported."""
        from opentelemetry import context as otel_context
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind

        from pipeobs.telemetry import compose
        from pipeobs.telemetry.recorded import ID_GENERATOR, RecordedSpan
        from pipeobs.telemetry.spans import (
            CallbackSpanExporter,
            context_from_traceparent,
            make_tracer_provider,
            wire_record,
        )

        provider = make_tracer_provider(
            self.setup.worker["step_name"],
            self.base_attributes,
            CallbackSpanExporter(emit_span, lambda span: compose.encode_span(span, wire_record)),
            id_generator=ID_GENERATOR,  # not the global random, which entry scripts seed
        )
        trace.set_tracer_provider(provider)  # the user's spans in run() nest under mini_batch
        compose.install(provider)  # ... and the user's own providers and handlers compose with ours
        self.parent_span = trace.get_current_span(context_from_traceparent(self.setup.traceparent)).get_span_context()
        self._new_span, self._kinds = RecordedSpan, (SpanKind.CONSUMER, SpanKind.INTERNAL)
        self._make_current = lambda span: otel_context.attach(trace.set_span_in_context(span))
        self._restore = otel_context.detach

    def _start_span(self, name: str, attributes: dict[str, Any]) -> tuple[RecordedSpan, Invocation]:
        """pipeobs's own span (init, mini_batch, shutdown), a child of the job span, recorded directly; a
        mini_batch span's record leaves in its result (:meth:`_end_attempt`)."""
        mini_batch = name == "mini_batch"
        span = self._new_span(name, self._kinds[0] if mini_batch else self._kinds[1], self.parent_span,
                              {**self.base_attributes, **attributes}, None if mini_batch else emit_span)
        ctx = span.get_span_context()
        phase = "run" if name == "mini_batch" else name
        return span, Invocation(phase, attributes.get("pipeobs.mini_batch_id"), attributes.get("pipeobs.attempt"),
                                f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")

    def _invoke(self, span: Any, invocation: Invocation, call: Any, begin: bool = True) -> Any:
        """Run user code inside its span (current for the OpenTelemetry API), its capture markers and its context;
        ``begin=False``: its begin marker is already written."""
        if begin:
            self.capture.begin(invocation)
        token = context.current_invocation.set(invocation)
        otel_token = self._make_current(span)
        try:
            return call()
        finally:
            self._restore(otel_token)
            context.current_invocation.reset(token)

    def _load(self) -> bool:
        try:
            self.module = load_entry_script(self.setup.entry_script)
        except BaseException as exc:  # noqa: BLE001 - user code: report, never crash silently
            self.send(LoadFailed(describe_error(exc, self.setup.source_dir)))
            return False
        self.run_takes_context = takes_context(self.module.run)
        return True

    def _init(self) -> bool:
        started = time.perf_counter()
        error = self._call_hook("init")
        if error is not None:
            self.send(InitFailed(error))
            return False
        self.send(Ready(time.perf_counter() - started))
        return True

    def _shutdown(self) -> None:
        error = self._call_hook("shutdown")
        self._flush_user_telemetry()
        self.send(Bye(error, profile_bytes(self.profiler)))

    def _flush_user_telemetry(self) -> None:
        """Flush the entry script's own exporters (bounded), so the end of a worker loses nothing."""
        from pipeobs.telemetry import compose

        late = compose.flush()
        if late:
            import logging

            logging.getLogger("pipeobs.worker").warning(
                "The entry script's own telemetry (%s) did not flush within %.0f s; the worker exits "
                "without waiting for it again.", ", ".join(late), compose.FLUSH_SECONDS,
            )
            self.skip_exit_hooks = True

    def _call_hook(self, name: str) -> dict[str, Any] | None:
        """Call init() or shutdown() (if defined) in its span; the error it raised, if any."""
        hook = getattr(self.module, name, None)
        if not callable(hook):
            return None
        span, invocation = self._start_span(name, {})
        error = None
        try:
            self._invoke(span, invocation, hook)
        except BaseException as exc:  # noqa: BLE001 - user code
            error = describe_error(exc, self.setup.source_dir)
            _record_error(span, error)
        finally:
            span.end()
            self.capture.end()
        return error

    def run_tasks(self, items: Sequence[tuple[Any, int]]) -> None:
        """Run a batch of tasks in order, each Result sent once the attempt's end marker is written.

        When the next task is in hand and loading it is instantaneous (a file mini-batch's data is its list of
        paths), its span starts and it is loaded as this attempt ends, and the end and begin markers go out in
        one write per stream: the driver's run() clock, started by the begin marker, still starts after loading,
        and the next attempt's own clocks and peak RSS start once this result is sent.
        """
        upcoming: Attempt | None = None
        for index, (mini_batch, attempt) in enumerate(items):
            current = upcoming or self._start_attempt(mini_batch, attempt)
            try:
                self._run_attempt(current)
            except BaseException:
                self._end_attempt(current, None)
                raise
            following = items[index + 1] if index + 1 < len(items) else None
            at_once = following is not None and self._begins_at_once(current, *following)
            upcoming = self._end_attempt(current, following if at_once else None)
            self.send(Result(mini_batch.id, attempt, current.result))
            if upcoming is not None:
                _start_clocks(upcoming)

    def _begins_at_once(self, current: Attempt, mini_batch: Any, attempt: int) -> bool:
        """Whether this task may begin as the ``current`` attempt ends: loading it is instantaneous, no debugger
        waits for it, and the current result is small (its send, between the begin marker and run(), is quick)."""
        rows = current.result.get("rows")
        return (mini_batch.kind == "file" and self._debugger_for(mini_batch.id, attempt) is None
                and (rows is None or len(rows) <= SHARED_WRITE_RESULT))

    def _debugger_for(self, mini_batch_id: int, attempt: int) -> Debug | None:
        """The debugger the driver named for this attempt, if any."""
        return self.debug if self.debug and self.debug[:2] == (mini_batch_id, attempt) else None

    def _start_attempt(self, mini_batch: Any, attempt: int, clocks: bool = True) -> Attempt:
        """The attempt's mini_batch span started and its data loaded (a failed load is its LOAD_ERROR result);
        ``clocks=False``: one begun with the previous attempt's end starts its clocks and peak RSS once that
        result is sent (:func:`_start_clocks`)."""
        span, invocation = self._start_span(
            "mini_batch",
            {"pipeobs.mini_batch_id": mini_batch.id, "pipeobs.attempt": attempt, "pipeobs.inputs": mini_batch.summary()},
        )
        result: dict[str, Any] = {
            "start_time": span.start_time / 1e9,
            "total": mini_batch.item_count or 0,
            "trace_id": invocation.trace_id,
            "span_id": invocation.span_id,
        }
        current = Attempt(mini_batch, attempt, span, invocation, result)
        if clocks:
            _start_clocks(current)
        try:
            from pipeobs.datasets import load_mini_batch

            current.data = load_mini_batch(mini_batch)
        except Exception as exc:  # noqa: BLE001 - bad input data is the user's error
            result.update(status="LOAD_ERROR", error=describe_error(exc, self.setup.source_dir), run_seconds=0.0)
            return current
        current.loaded = True
        result["total"] = len(current.data)
        return current

    def _end_attempt(self, current: Attempt, following: tuple[Any, int] | None) -> Attempt | None:
        """Close the attempt's span (its record travels in the result, ``span``) and write its end marker if it
        began; then the ``following`` task, started and loaded, begins in the same writes (and is returned)
        unless its load failed."""
        result = current.result
        result["elapsed"] = time.perf_counter() - current.started
        result["process_seconds"] = time.process_time() - current.cpu
        result["peak_rss"] = peak_rss()
        _close_mini_batch_span(current.span, result)
        result["span"] = current.span.wire_record()
        if not current.begun:
            return None
        upcoming = None if following is None else self._start_attempt(*following, clocks=False)
        then = upcoming.invocation if upcoming is not None and upcoming.loaded else None
        self.capture.end(then)  # one write per stream: the end, and the next begin
        if upcoming is not None:
            upcoming.begun = then is not None
        return upcoming

    def _run_attempt(self, current: Attempt) -> None:
        """Call run() on the loaded data (under a debugger when the driver asked for one), and accept its result."""
        if not current.loaded:
            return
        mini_batch, result, data = current.mini_batch, current.result, current.data
        debug = self._debugger_for(mini_batch.id, current.attempt)
        if debug is not None and not self._wait_for_debugger(debug, result):
            return
        run_started = time.perf_counter()
        begin, current.begun = not current.begun, True
        try:
            returned = self._invoke(current.span, current.invocation,
                                    lambda: self._call_run(mini_batch, data, debug is not None), begin)
            result.update(accept(returned, len(data), self.setup.output_action))
            result["status"] = "RUN_DONE"
        except BaseException as exc:  # noqa: BLE001 - user code
            result.update(status="RUN_EXCEPTION", error=describe_error(exc, self.setup.source_dir))
        result["run_seconds"] = time.perf_counter() - run_started

    def _wait_for_debugger(self, debug: Debug, result: dict[str, Any]) -> bool:
        """Listen with debugpy where the driver asked, tell it the address, and wait until a debugger
        attaches (as ``debugpy --wait-for-client`` does: no time limit; Ctrl-C ends the run)."""
        self.debug = None
        try:
            debugpy = import_debugpy(DEBUGPY_MISSING)
            host, port = debugpy.listen((debug.host, debug.port))
        except Exception as exc:  # noqa: BLE001 - the attempt fails with the reason, in the summary
            result.update(status="DEBUGGER_ERROR", error=describe_error(exc, self.setup.source_dir), run_seconds=0.0)
            return False
        self.send(Debugging(debug.mini_batch_id, debug.attempt, host, port))
        debugpy.wait_for_client()
        return True

    def _call_run(self, mini_batch: Any, data: Any, debugged: bool = False) -> Any:
        run = self.module.run
        args = self.run_arguments(mini_batch, data)
        if not debugged:
            return run(*args)
        with breakpoint_at_first_line(run):
            return run(*args)

    def run_arguments(self, mini_batch: Any, data: Any) -> tuple[Any, ...]:
        """``(mini_batch,)``, or ``(mini_batch, mini_batch_context)`` for a run() that takes two."""
        if not self.run_takes_context:
            return (data,)
        from pipeobs.datasets import mini_batch_context

        dataset = self.datasets[mini_batch.input_index]
        fields = {**vars(mini_batch_context(mini_batch, dataset)), "minibatch_index": mini_batch.id}
        return data, RunContext(**fields)

def _start_clocks(current: Attempt) -> None:
    """Start an attempt's clocks, peak RSS and span start: as it starts, or, for one begun with the previous
    attempt's end (its span made, its begin marker written), once that result is sent, so they count nothing of
    sending it."""
    current.started, current.cpu = time.perf_counter(), time.process_time()
    current.span.start_time = time.time_ns()
    current.result["start_time"] = current.span.start_time / 1e9
    reset_peak_rss()


def _record_error(span: RecordedSpan, error: dict[str, Any]) -> None:
    """ERROR status (whatever the script set) and an OpenTelemetry exception event with the user's traceback."""
    span.fail(f"{error['type']}: {error['message']}", {
        "exception.type": error["type"],
        "exception.message": error["message"],
        "exception.stacktrace": error["traceback"],
        "code.location": error.get("location") or "",
    })


def _close_mini_batch_span(span: RecordedSpan, result: dict[str, Any]) -> None:
    total = result.get("total", 0)
    succeeded = result.get("succeeded", 0)
    span.attributes.update(  # pipeobs's own values: no validation needed
        {
            "pipeobs.items.total": total,
            "pipeobs.items.succeeded": succeeded,
            "pipeobs.items.failed": total - succeeded,
            "pipeobs.status": result.get("status", "UNKNOWN"),
            "pipeobs.peak_rss_bytes": result.get("peak_rss") or 0,
        }
    )
    if result.get("error"):
        _record_error(span, result["error"])
    elif result.get("status") == "RUN_DONE":
        span.succeed()  # run() returned and its result was accepted (a status the script set stays)
    span.end()


def _exit_with_parent() -> None:
    """A worker whose driver died (even by SIGKILL) exits instead of running on as an orphan."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="pipeobs-parent-watch", daemon=True).start()


def main() -> int:
    faulthandler.enable()  # a segfault leaves a Python traceback in the worker's stderr
    _exit_with_parent()
    address = os.environ[env.HUB]  # "@name" (abstract Unix socket) or "host:port"
    family = "AF_UNIX" if address.startswith(("@", "/")) else "AF_INET"
    target: Any = "\0" + address[1:] if address.startswith("@") else address
    if family == "AF_INET":
        host, port = address.rsplit(":", 1)
        target = (host, int(port))
    conn = Client(target, family=family, authkey=bytes.fromhex(os.environ[env.AUTHKEY]))
    conn.send_bytes(to_bytes(Hello(os.environ[env.WORKER], os.getpid())))
    setup = decode(conn.recv())
    if type(setup) is not Setup:
        raise RuntimeError(f"expected the driver's setup, got {setup!r:.80}")
    loop = WorkerLoop(conn, setup)
    code = loop.serve()
    sys.stdout.flush()
    sys.stderr.flush()
    conn.close()
    if loop.skip_exit_hooks:
        os._exit(code)  # the exit hooks of the user's exporters would wait for the hanging endpoint again
    return code


if __name__ == "__main__":
    sys.exit(main())
