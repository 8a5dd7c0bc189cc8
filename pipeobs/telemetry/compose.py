"""The entry script's own instrumentation, composed with pipeobs's inside a worker process.

Users keep the telemetry set-up they wrote for Azure: an opencensus ``AzureLogHandler``, the
Azure Monitor OpenTelemetry distro (``configure_azure_monitor()``), or a plain OpenTelemetry
SDK set-up in ``init()``. pipeobs adds its context to what they send and never fights them:

* **Tracing.** pipeobs's tracer provider stays the global one (its ``mini_batch`` span must be
  the parent of every span opened in ``run()``). When the entry script calls
  ``trace.set_tracer_provider(its_provider)`` with an SDK provider, pipeobs adopts it instead
  of refusing it ("Overriding of current TracerProvider is not allowed"): every span the user's
  code opens through the global API is also handed to that provider's span processors (so to
  its exporters), as a child of the mini-batch span, in the job's trace, with the adopted
  provider's resource (the last one's, if the script sets several). pipeobs's own spans (job,
  init, mini_batch, shutdown) are not forwarded: they go where pipeobs exports them. The adopted
  provider's sampler is not applied: pipeobs records every span.
* **Context on the user's records.** Spans opened in the user's code get ``pipeobs.step_id``,
  ``pipeobs.worker``, ``pipeobs.mini_batch_id`` and ``pipeobs.attempt`` (unless they set them);
  log records through an OpenTelemetry ``LoggerProvider`` the script installs, and measurements
  of its ``MeterProvider``'s synchronous instruments, get ``step_id``, ``worker``,
  ``mini_batch_id`` and ``attempt`` attributes (the user's own attributes win on a clash).
  Note that ``mini_batch_id`` on a metric makes one series per mini-batch.
* **opencensus.** Every ``AzureLogHandler``/``AzureEventHandler`` created in a worker gets a
  filter that adds the custom dimensions ``step_id``, ``worker``, ``mini_batch_id``, ``attempt``
  (as strings, as the schema types ``properties``; a dict passed as the only argument, as the Azure guide writes it, and
  ``extra={"custom_dimensions": ...}`` win on a clash) and sets the record's ``traceId``/``spanId``
  to the current pipeobs span, so the envelope's ``ai.operation.id`` is the job's trace and its
  ``ai.operation.parentId`` the mini-batch span. Every ``AzureExporter`` gets the same keys on
  its spans' attributes.
* **One record, one delivery per destination.** A log record or span that the user's own
  instrumentation sends to an Application Insights resource is marked with that destination
  (``sent_to``, see :mod:`pipeobs.export.base`); pipeobs still stores it, and its own exporter
  for the same instrumentation key does not send it again. A log record counts as sent by a
  handler that sits on its way up the logger hierarchy with a level it passes (handler filters,
  such as opencensus's sampling, are not consulted). Other destinations get it from both.
* **Flush at the end.** When a worker ends (after ``shutdown()``, or after ``init()`` failed),
  the user's providers and opencensus handlers are flushed and shut down, within
  :data:`FLUSH_SECONDS` in all. If they do not finish in time, a warning names them and the
  worker exits without running the libraries' exit hooks, which would otherwise wait for a
  hanging endpoint again. A worker killed on timeout or by a crash cannot flush.

The hooks are installed once per worker, before the entry script is imported: pipeobs replaces
``opentelemetry.trace.set_tracer_provider``, ``opentelemetry._logs.set_logger_provider`` and
``opentelemetry.metrics.set_meter_provider`` (so ``from opentelemetry.trace import
set_tracer_provider`` in a library imported later gets pipeobs's), and patches opencensus's
Azure classes when they are imported. Nothing here imports opencensus or the OpenTelemetry
logs and metrics SDKs unless the entry script does (the trace SDK is loaded by every worker).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.trace import SpanProcessor

from pipeobs import capture, context
from pipeobs.export.base import appinsights_destination

FLUSH_SECONDS = 5.0
OWN_SCOPE = "pipeobs"  # the instrumentation scope of pipeobs's own spans

log = logging.getLogger("pipeobs.worker")


def context_attributes() -> dict[str, Any]:
    """``step_id`` and ``worker``, plus ``mini_batch_id`` and ``attempt`` inside a mini-batch."""
    info = context.worker()
    if info is None:
        return {}
    attributes: dict[str, Any] = {"step_id": info.step_id, "worker": info.label}
    invocation = context.current_invocation.get()
    if invocation.mini_batch_id is not None:
        attributes["mini_batch_id"] = invocation.mini_batch_id
        attributes["attempt"] = invocation.attempt
    return attributes


# -- destinations -----------------------------------------------------------------------------

# Attributes followed from a provider, processor, handler or exporter to the exporters behind it
# (OpenTelemetry SDK 1.2x-1.4x, azure-monitor-opentelemetry-exporter, opencensus-ext-azure).
_FOLLOW = (
    "_active_span_processor", "_span_processors", "_multi_log_record_processor", "_log_record_processors",
    "_logger_provider", "_batch_processor", "_exporter", "span_exporter", "exporter",
)


def destinations(root: Any) -> frozenset[str]:
    """The Application Insights destinations that ``root`` (a provider, processor, handler or
    exporter) sends to: each object reachable through :data:`_FOLLOW` that knows an
    instrumentation key (``_instrumentation_key`` of Azure Monitor's exporters, ``options.
    instrumentation_key`` of opencensus's) names one."""
    found: set[str] = set()
    seen: set[int] = set()
    stack: list[tuple[Any, int]] = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        if node is None or id(node) in seen or depth > 8:
            continue
        seen.add(id(node))
        if isinstance(node, tuple | list):
            stack.extend((child, depth + 1) for child in node)
            continue
        own = getattr(node, "__dict__", None) or {}
        key, options = own.get("_instrumentation_key"), own.get("options")
        if key is None and options is not None:
            key = getattr(options, "instrumentation_key", None)
        if isinstance(key, str) and key:
            found.add(appinsights_destination(key))
        for name in _FOLLOW:
            child = getattr(node, name, None)
            if child is not None:
                stack.append((child, depth + 1))
    return frozenset(found)


_cache: dict[int, tuple[Any, frozenset[str]]] = {}


def _destinations_of(owner: Any, version: Any) -> frozenset[str]:
    """:func:`destinations` of ``owner``, walked again only when ``version`` changes: the SDKs
    replace a provider's tuple of processors on each add, so its identity is the version."""
    cached = _cache.get(id(owner))
    if cached is not None and cached[0] is version:
        return cached[1]
    found = destinations(owner)
    _cache[id(owner)] = (version, found)
    return found


class _Destinations:
    """Which destinations the user's log handlers send to, and which log record they send."""

    def __init__(self) -> None:
        self.handlers: weakref.WeakKeyDictionary[logging.Handler, frozenset[str]] = weakref.WeakKeyDictionary()
        self.logger_providers: list[Any] = []

    def active(self) -> bool:
        return bool(self.handlers) or bool(self.logger_providers)

    def of_handler(self, handler: logging.Handler) -> frozenset[str]:
        known = self.handlers.get(handler)
        if known is not None:
            return known
        provider = getattr(handler, "_logger_provider", None)  # an OpenTelemetry LoggingHandler
        if provider is None or not self.logger_providers:
            return frozenset()
        multi = getattr(provider, "_multi_log_record_processor", None)
        return _destinations_of(provider, getattr(multi, "_log_record_processors", None))

    def of_record(self, record: logging.LogRecord) -> tuple[str, ...]:
        """The destinations of the handlers on ``record``'s way up the logger hierarchy."""
        found: set[str] = set()
        node: logging.Logger | None = logging.root.manager.loggerDict.get(record.name)  # type: ignore[assignment]
        if not isinstance(node, logging.Logger):
            node = logging.root
        while node is not None:
            for handler in node.handlers:
                if record.levelno >= handler.level:
                    found.update(self.of_handler(handler))
            node = node.parent if node.propagate else None
        return tuple(sorted(found))


user_destinations = _Destinations()
to_flush: list[tuple[str, Any]] = []  # (name, provider or handler) finished by flush()


def _sent_to(record: logging.LogRecord) -> tuple[str, ...]:
    return user_destinations.of_record(record) if user_destinations.active() else ()


# -- tracing ----------------------------------------------------------------------------------


class ComposingSpanProcessor(SpanProcessor):
    """On pipeobs's tracer provider: puts the context on the user's spans and hands them to the
    span processors of the providers the entry script installed."""

    def __init__(self) -> None:
        self.providers: list[Any] = []

    def adopt(self, provider: Any) -> None:
        if provider not in self.providers:
            self.providers.append(provider)

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if _own(span):
            return
        attributes = span.attributes or {}
        for key, value in context_attributes().items():
            name = f"pipeobs.{key}"
            if attributes.get(name) is None:
                span.set_attribute(name, value)
        if self.providers:
            # the user's spans carry the user's resource, as their logs and metrics do (one cloud role)
            span._resource = getattr(self.providers[-1], "_resource", span.resource)
            for provider in self.providers:
                provider._active_span_processor.on_start(span, parent_context=parent_context)

    def _on_ending(self, span: Any) -> None:
        if self.providers and not _own(span):
            for provider in self.providers:
                on_ending = getattr(provider._active_span_processor, "_on_ending", None)
                if on_ending is not None:
                    on_ending(span)

    def on_end(self, span: Any) -> None:
        if self.providers and not _own(span):
            for provider in self.providers:
                provider._active_span_processor.on_end(span)

    def sent_to(self) -> frozenset[str]:
        """The destinations the adopted providers send the user's spans to."""
        return frozenset().union(*(
            _destinations_of(p, getattr(p._active_span_processor, "_span_processors", None)) for p in self.providers
        ))

    def shutdown(self) -> None:
        pass  # the user's providers are shut down by flush() (or their own exit hooks)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all(p.force_flush(timeout_millis) is not False for p in self.providers)


def _own(span: Any) -> bool:
    scope = span.instrumentation_scope
    return scope is not None and scope.name == OWN_SCOPE


_composer = ComposingSpanProcessor()


def encode_span(span: Any, encode: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """A finished span's wire record, marked with the destinations the user's providers sent it to."""
    record = encode(span)
    if _composer.providers and not _own(span):
        sent_to = _composer.sent_to()
        if sent_to:
            record["sent_to"] = sorted(sent_to)
    return record


# -- logs and metrics ---------------------------------------------------------------------------


def _log_context_processor() -> Any:
    from opentelemetry.sdk._logs import LogRecordProcessor

    class LogContext(LogRecordProcessor):
        """First processor of the user's LoggerProvider: adds the context before exporters see the record."""

        def on_emit(self, log_record: Any) -> None:
            record = getattr(log_record, "log_record", log_record)
            attributes = record.attributes
            if attributes is None:
                return
            for key, value in context_attributes().items():
                if key not in attributes:
                    attributes[key] = value

        emit = on_emit  # SDKs before 1.39 call emit()

        def shutdown(self) -> None:
            pass

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    return LogContext()


def _adopt_logger_provider(provider: Any) -> None:
    multi = getattr(provider, "_multi_log_record_processor", None)
    if multi is None or not isinstance(getattr(multi, "_log_record_processors", None), tuple):
        return
    with getattr(multi, "_lock", None) or contextlib.nullcontext():  # first: before the exporters see a record
        multi._log_record_processors = (_log_context_processor(), *multi._log_record_processors)
    user_destinations.logger_providers.append(provider)
    to_flush.append(("logger provider", provider))


def _adopt_meter_provider(provider: Any) -> None:
    consumer: Any = getattr(provider, "_measurement_consumer", None)
    consume = getattr(consumer, "consume_measurement", None)
    if consume is None:
        return

    def consume_measurement(measurement: Any) -> None:
        added = context_attributes()
        if added:
            if measurement.attributes:
                added.update(measurement.attributes)
            measurement = dataclasses.replace(measurement, attributes=added)
        consume(measurement)

    consumer.consume_measurement = consume_measurement
    to_flush.append(("meter provider", provider))


# -- installing and flushing -----------------------------------------------------------------------

_installed = False


def install(pipeobs_provider: Any) -> None:
    """Compose with whatever the entry script sets up later (call before it is imported)."""
    global _installed
    if _installed:
        return
    _installed = True
    pipeobs_provider.add_span_processor(_composer)
    to_flush.append(("tracer provider", _composer))

    from opentelemetry import trace

    original_set_tracer = trace.set_tracer_provider

    @functools.wraps(original_set_tracer)
    def set_tracer_provider(tracer_provider: Any) -> None:
        if (
            trace.get_tracer_provider() is pipeobs_provider
            and tracer_provider is not pipeobs_provider
            and hasattr(tracer_provider, "_active_span_processor")
        ):
            _composer.adopt(tracer_provider)
            log.debug("the entry script's tracer provider receives its spans through pipeobs's")
            return
        original_set_tracer(tracer_provider)

    trace.set_tracer_provider = set_tracer_provider
    _wrap_setter("opentelemetry._logs", "set_logger_provider", _adopt_logger_provider)
    _wrap_setter("opentelemetry.metrics", "set_meter_provider", _adopt_meter_provider)
    capture.set_sent_to_hook(_sent_to)
    from pipeobs.telemetry import opencensus

    opencensus.install()


def _wrap_setter(module_name: str, name: str, adopt: Callable[[Any], None]) -> None:
    import importlib

    module = importlib.import_module(module_name)
    original = getattr(module, name)

    @functools.wraps(original)
    def setter(provider: Any) -> None:
        original(provider)
        try:
            adopt(provider)
        except Exception:  # noqa: BLE001 - an SDK we do not know: leave it uncomposed
            log.debug("could not compose with %r", provider, exc_info=True)

    setattr(module, name, setter)


def flush(timeout: float = FLUSH_SECONDS) -> list[str]:
    """Flush and shut down the user's providers and handlers within ``timeout`` seconds in all.

    Returns the names of those that did not finish in time (empty when all did).
    """
    if not to_flush:
        return []
    pending = list(to_flush)
    to_flush.clear()
    done: list[str] = []

    def work() -> None:
        for name, target in pending:
            _finish(target)
            done.append(name)

    thread = threading.Thread(target=work, name="pipeobs-user-flush", daemon=True)
    thread.start()
    thread.join(timeout)
    return [name for name, _ in pending[len(done):]]


def _finish(target: Any) -> None:
    try:
        if isinstance(target, ComposingSpanProcessor):
            for provider in target.providers:
                provider.shutdown()  # flushes its processors; unregisters its exit hook
        elif isinstance(target, logging.Handler):  # opencensus log handlers: flush, stop the worker thread
            target.flush()
            target.close()
        elif hasattr(target, "_worker") and hasattr(target._worker, "stop"):  # opencensus AzureExporter
            target._worker.stop()
        elif callable(getattr(target, "shutdown", None)):  # logger and meter providers
            target.shutdown()
    except Exception:  # noqa: BLE001 - the user's exporter failing must not fail the worker
        log.warning("flushing the entry script's telemetry failed", exc_info=True)
