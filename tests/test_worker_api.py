"""The worker API plugins use, inside and outside a worker, and the guard that plugins use nothing else."""

from __future__ import annotations

import ast
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType

import pytest

import pipeobs
from pipeobs import capture, context, worker_api
from pipeobs.capture import Invocation, Line, WorkerCapture
from pipeobs.records import expand
from pipeobs.streams import StreamParser

TOKEN = "0123456789abcdef"
INFO = context.WorkerInfo("step-1", "score-step", 2, "process003", "/r", "/o", "/w", "INFO")
ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = Path(pipeobs.__file__).resolve().parent

ALLOWED_IN_PLUGINS = frozenset(
    {
        "pipeobs",  # the names it exports, and __version__
        "pipeobs.worker_api",
        "pipeobs.errors",
        "pipeobs.export",  # the exporter interface package: base and delivery
        "pipeobs.export.base",
        "pipeobs.export.delivery",
    }
)
"""What a plugin's source may import from pipeobs; everything else is internal."""

Sent = Callable[[], list[Line]]


@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch) -> WorkerCapture:
    """Makes this process a pipeobs worker whose capture writes its markers to fd 2, as a real one does."""
    capture_ = WorkerCapture(TOKEN, "INFO")
    monkeypatch.setattr(context, "_worker", INFO)
    monkeypatch.setattr(capture, "_active", capture_)
    return capture_


@pytest.fixture
def sent(capfd: pytest.CaptureFixture[str]) -> Sent:
    """The log records the driver would read from fd 2, decoded by pipeobs's own stream parser."""

    def read() -> list[Line]:
        parser = StreamParser("stderr", TOKEN)
        data = capfd.readouterr().err.encode()
        items = expand([*parser.feed(data), *parser.close()])
        return [item for item in items if isinstance(item, Line) and item.stream == "log"]

    return read


@pytest.fixture
def handlers() -> Iterator[Callable[[logging.Logger, logging.Handler], None]]:
    """Adds handlers to loggers for one test and removes them afterwards."""
    added: list[tuple[logging.Logger, logging.Handler]] = []

    def add(logger: logging.Logger, handler: logging.Handler) -> None:
        logger.addHandler(handler)
        added.append((logger, handler))

    yield add
    for logger, handler in reversed(added):
        logger.removeHandler(handler)


class Probe(logging.Handler):
    """Asks captured_before() about every record it gets, and optionally forwards it."""

    def __init__(self, forward: bool = False) -> None:
        super().__init__()
        self.forward = forward
        self.answers: list[bool] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.answers.append(worker_api.captured_before(record, self))
        if self.forward and not self.answers[-1]:
            worker_api.send_log_record(record, {"via": "probe"})


class ForwardingProbe(Probe):
    forwards_to_pipeobs = True


def fresh_logger(request: pytest.FixtureRequest) -> logging.Logger:
    logger = logging.getLogger(f"plugin.{request.node.name}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = True
    return logger


class TestInWorker:
    def test_false_outside_a_worker(self) -> None:
        """A plain process (this test run) is not a worker."""
        assert worker_api.in_worker() is False

    def test_true_inside_a_worker(self, worker: WorkerCapture) -> None:
        """A worker with its capture active is one."""
        assert worker_api.in_worker() is True

    def test_false_before_capture_is_active(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A worker identity without an active capture cannot send records, so it does not count."""
        monkeypatch.setattr(context, "_worker", INFO)

        assert worker_api.in_worker() is False


class TestCurrentContext:
    def test_none_outside_a_worker(self) -> None:
        """Outside a worker there is no context."""
        assert worker_api.current_context() is None

    def test_idle_worker(self, worker: WorkerCapture) -> None:
        """Between invocations: the step and the worker, phase "worker", no mini-batch and no ids."""
        assert worker_api.current_context() == {
            "step_id": "step-1",
            "step_name": "score-step",
            "worker": "2/process003",
            "phase": "worker",
            "mini_batch_id": None,
            "attempt": None,
            "trace_id": None,
            "span_id": None,
        }

    def test_inside_a_mini_batch(self, worker: WorkerCapture) -> None:
        """During run(): the mini-batch, the attempt and the ids of the invocation's span."""
        token = context.current_invocation.set(Invocation("run", 17, 2, "a" * 32, "b" * 16))
        try:
            here = worker_api.current_context()
        finally:
            context.current_invocation.reset(token)

        assert here is not None
        assert (here["phase"], here["mini_batch_id"], here["attempt"]) == ("run", 17, 2)
        assert (here["trace_id"], here["span_id"], here["worker"]) == ("a" * 32, "b" * 16, "2/process003")


class TestSendLogRecord:
    def test_record_reaches_the_driver_with_its_dimensions(self, worker: WorkerCapture, sent: Sent) -> None:
        """One log marker on fd 2: level, logger, text and the dimensions (a read-only mapping is fine)."""
        record = logging.LogRecord("plugin.x", logging.WARNING, __file__, 1, "scored %d rows", (128,), None)

        worker_api.send_log_record(record, MappingProxyType({"rows": 128, "model": "v2"}))

        [line] = sent()
        assert (line.level, line.logger, line.text) == ("WARNING", "plugin.x", "scored 128 rows")
        assert line.custom_dimensions == {"rows": 128, "model": "v2"}

    def test_lone_dict_argument_is_sent_as_written(self, worker: WorkerCapture, sent: Sent) -> None:
        """A dict as the only argument is dimensions (opencensus's reading): the message is not %-formatted."""
        record = logging.LogRecord(
            "plugin.x", logging.ERROR, __file__, 1, "%(rows)s rows failed", ({"rows": 10},), None
        )

        worker_api.send_log_record(record, {"rows": 10})

        assert [line.text for line in sent()] == ["%(rows)s rows failed"]

    def test_capture_handler_does_not_send_it_again(
        self,
        worker: WorkerCapture,
        sent: Sent,
        handlers: Callable[[logging.Logger, logging.Handler], None],
        request: pytest.FixtureRequest,
    ) -> None:
        """A handler below the root's capture handler forwards the record: it reaches the driver once, with its dimensions."""
        log = fresh_logger(request)
        handlers(logging.getLogger(), capture.MarkerHandler(worker))
        handlers(log, Probe(forward=True))

        log.warning("once")

        assert [(line.text, line.custom_dimensions) for line in sent()] == [("once", {"via": "probe"})]

    def test_raises_outside_a_worker(self) -> None:
        """Outside a worker there is no driver to send to: RuntimeError naming in_worker()."""
        record = logging.LogRecord("plugin.x", logging.INFO, __file__, 1, "x", None, None)

        with pytest.raises(RuntimeError, match="in_worker"):
            worker_api.send_log_record(record)


class TestCapturedBefore:
    def test_handler_below_the_capture_handler_comes_first(
        self,
        worker: WorkerCapture,
        handlers: Callable[[logging.Logger, logging.Handler], None],
        request: pytest.FixtureRequest,
    ) -> None:
        """On a named logger, the handler sees the record before the root's capture handler."""
        log, probe = fresh_logger(request), Probe()
        handlers(logging.getLogger(), capture.MarkerHandler(worker))
        handlers(log, probe)

        log.warning("x")

        assert probe.answers == [False]

    def test_after_the_capture_handler_on_the_root(
        self,
        worker: WorkerCapture,
        sent: Sent,
        handlers: Callable[[logging.Logger, logging.Handler], None],
        request: pytest.FixtureRequest,
    ) -> None:
        """Added to the root after the capture handler, a plain handler gets a record already sent."""
        log, probe = fresh_logger(request), Probe()
        handlers(logging.getLogger(), capture.MarkerHandler(worker))
        handlers(logging.getLogger(), probe)

        log.warning("x")

        assert probe.answers == [True]
        assert [line.text for line in sent()] == ["x"]

    def test_capture_handler_on_a_lower_logger(
        self,
        worker: WorkerCapture,
        handlers: Callable[[logging.Logger, logging.Handler], None],
        request: pytest.FixtureRequest,
    ) -> None:
        """A capture handler on the record's own logger comes before a handler on the root."""
        log, probe = fresh_logger(request), Probe()
        handlers(log, capture.MarkerHandler(worker))
        handlers(logging.getLogger(), probe)

        log.warning("x")

        assert probe.answers == [True]

    def test_forwarding_handler_on_the_root_is_left_the_record(
        self,
        worker: WorkerCapture,
        sent: Sent,
        handlers: Callable[[logging.Logger, logging.Handler], None],
        request: pytest.FixtureRequest,
    ) -> None:
        """With forwards_to_pipeobs, the capture handler before it defers: the record goes out once, forwarded."""
        log, probe = fresh_logger(request), ForwardingProbe(forward=True)
        handlers(logging.getLogger(), capture.MarkerHandler(worker))
        handlers(logging.getLogger(), probe)

        log.warning("once")

        assert probe.answers == [False]
        assert [(line.text, line.custom_dimensions) for line in sent()] == [("once", {"via": "probe"})]

    def test_capture_handler_above_the_record_level(
        self,
        worker: WorkerCapture,
        handlers: Callable[[logging.Logger, logging.Handler], None],
        request: pytest.FixtureRequest,
    ) -> None:
        """A capture handler whose level filters the record out did not send it."""
        log, probe = fresh_logger(request), Probe()
        marker = capture.MarkerHandler(worker)
        marker.setLevel(logging.ERROR)
        handlers(logging.getLogger(), marker)
        handlers(logging.getLogger(), probe)

        log.warning("x")

        assert probe.answers == [False]

    def test_false_outside_a_worker(
        self, handlers: Callable[[logging.Logger, logging.Handler], None], request: pytest.FixtureRequest
    ) -> None:
        """Without a capture handler nothing was sent before."""
        log, probe = fresh_logger(request), Probe()
        handlers(logging.getLogger(), probe)

        log.warning("x")

        assert probe.answers == [False]


# -- plugins use the worker API and nothing else -----------------------------------------------


def is_pipeobs_module(dotted: str) -> bool:
    parts = dotted.split(".")
    if parts[0] != "pipeobs":
        return False
    base = PACKAGE_DIR.joinpath(*parts[1:])
    return (base / "__init__.py").is_file() or (len(parts) > 1 and base.with_suffix(".py").is_file())


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return None if head is None else f"{head}.{node.attr}"
    return None


def _imported_by_call(call: ast.Call) -> str | None:
    """The literal name given to ``importlib.import_module(...)`` or ``__import__(...)``."""
    called = (_dotted(call.func) or "").rsplit(".", 1)[-1]
    if called in ("import_module", "__import__") and call.args and isinstance(call.args[0], ast.Constant):
        return str(call.args[0].value)
    return None


def pipeobs_modules_used(source: str) -> set[str]:
    """Every pipeobs module ``source`` imports, by import statement, attribute path or import_module("...")."""
    used: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            used.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            used.add(node.module)  # `from pipeobs import capture` imports the module pipeobs.capture:
            used.update(f"{node.module}.{alias.name}" for alias in node.names)  # kept only if it is one
        elif isinstance(node, ast.Attribute):
            used.add(_dotted(node) or "")
        elif isinstance(node, ast.Call):
            used.add(_imported_by_call(node) or "")
    return {name for name in used if is_pipeobs_module(name)}


def plugin_sources() -> list[Path]:
    return sorted(ROOT.glob("exporters/*/src/**/*.py"))


class TestPluginsUseOnlyTheWorkerApi:
    def test_plugin_sources_import_only_public_modules(self) -> None:
        """No file under exporters/*/src reaches into pipeobs's internals (capture, context, worker, ...)."""
        sources = plugin_sources()

        found = {
            str(path.relative_to(ROOT)): sorted(pipeobs_modules_used(path.read_text()) - ALLOWED_IN_PLUGINS)
            for path in sources
        }

        assert len({path.parts[len(ROOT.parts) + 1] for path in sources}) >= 2  # appinsights and otlp
        assert {path: bad for path, bad in found.items() if bad} == {}

    @pytest.mark.parametrize(
        "source",
        [
            "import pipeobs.capture",
            "import pipeobs.context as context",
            "from pipeobs import capture",
            "from pipeobs.capture import MarkerHandler",
            "from pipeobs.export import routing",
            "import pipeobs\npipeobs.context.worker()",
            "import importlib\nimportlib.import_module('pipeobs.capture')",
        ],
    )
    def test_guard_catches_internal_imports(self, source: str) -> None:
        """The guard sees each way of reaching an internal module."""
        assert pipeobs_modules_used(source) - ALLOWED_IN_PLUGINS

    @pytest.mark.parametrize(
        "source",
        [
            "from pipeobs import worker_api, __version__, ConfigError",
            "import pipeobs.worker_api",
            "from pipeobs.errors import ConfigError",
            "from pipeobs.export.base import ExportResult, Record",
            "from pipeobs.export.delivery import Delivery",
            "from . import envelopes\nfrom pipeobs_appinsights.exporter import AppInsightsExporter",
        ],
    )
    def test_guard_allows_the_public_api(self, source: str) -> None:
        """The worker API, top-level names, errors and the exporter interface pass."""
        assert pipeobs_modules_used(source) - ALLOWED_IN_PLUGINS == set()
