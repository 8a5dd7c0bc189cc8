"""A drop-in for opencensus's ``AzureLogHandler`` that routes through pipeobs.

::

    from pipeobs_appinsights import AzureLogHandler   # was: from opencensus.ext.azure.log_exporter import ...

    logger.addHandler(AzureLogHandler(connection_string="InstrumentationKey=..."))
    logger.info("scored", extra={"custom_dimensions": {"rows": 128}})
    logger.error("mini-batch failed", {"step_id": run.id})   # a lone dict argument = custom dimensions

It takes every opencensus option (:data:`OPENCENSUS_OPTIONS`); where they go:

* Inside a pipeobs worker, a record is handed to the worker
  (:func:`pipeobs.worker_api.send_log_record`) and travels to the driver with its custom dimensions,
  in order with the mini-batch's other output; the driver's exporters send it, so nothing is
  sent from the worker and nothing is lost when the worker is killed. Telemetry processors run
  here first: one returning ``False`` drops the record, and the properties they set travel as
  custom dimensions (tag edits cannot travel; set them in the driver's exporter).
* Outside a run, records become pipeobs log records and go to
  :class:`pipeobs.export.delivery.Delivery` (bounded queue, retries, a spool on disk, a bounded
  close) feeding an :class:`~pipeobs_appinsights.exporter.AppInsightsExporter`.
  ``connection_string``/``instrumentation_key``, ``credential``, ``proxies`` and ``timeout``
  configure the exporter; ``queue_capacity`` -> ``max_queue``, ``grace_period`` -> ``deadline``,
  ``storage_path`` -> the spool folder (default ``~/.pipeobs/spool/appinsights``);
  ``logging_sampling_rate`` keeps that share of records. ``enable_local_storage=False`` is
  accepted, but Delivery always spools what it could not send (pipeobs never drops silently). Batching (``export_interval``, ``max_batch_size``) and spool housekeeping
  (``storage_*``, ``minimum_retry_interval``) belong to Delivery and are accepted and ignored,
  like ``enable_standard_metrics`` and ``endpoint``.

A dict passed as the only argument after the message is taken as custom dimensions, not as
``%``-arguments: the message is sent as written. ``extra={"custom_dimensions": ...}`` wins on
the same key. Like opencensus, every record also carries ``process``, ``module``, ``fileName``,
``lineNumber`` and ``level``. Records of pipeobs's own loggers are never sent (no feedback loops).
"""

from __future__ import annotations

import copy
import logging
import os
import platform
import random
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipeobs import worker_api
from pipeobs.errors import ConfigError
from pipeobs_appinsights.envelopes import flatten_properties, log_envelopes
from pipeobs_appinsights.exporter import AppInsightsExporter, TelemetryProcessor, apply_telemetry_processors

logger = logging.getLogger(__name__)

OPENCENSUS_OPTIONS = frozenset(
    {
        "connection_string",
        "credential",
        "enable_local_storage",
        "enable_standard_metrics",
        "endpoint",
        "export_interval",
        "grace_period",
        "instrumentation_key",
        "logging_sampling_rate",
        "max_batch_size",
        "minimum_retry_interval",
        "proxies",
        "queue_capacity",
        "storage_maintenance_period",
        "storage_max_size",
        "storage_path",
        "storage_retention_period",
        "timeout",
    }
)
"""``opencensus.ext.azure.common.Options._default`` (1.1.15), all accepted."""
DEFAULT_SPOOL_DIR = Path("~/.pipeobs/spool/appinsights")
_OWN_LOGGERS = ("pipeobs", "pipeobs_appinsights")
_PLACEHOLDER_IKEY = "00000000-0000-0000-0000-000000000000"
_handlers: weakref.WeakSet[AzureLogHandler] = weakref.WeakSet()


class SamplingFilter(logging.Filter):
    """Keeps a record when ``random() < rate`` (opencensus's ``logging_sampling_rate``)."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def filter(self, record: logging.LogRecord) -> bool:
        return random.random() < self.rate


class AzureLogHandler(logging.Handler):
    """Sends log records to Application Insights through pipeobs; opencensus's options and processors."""

    forwards_to_pipeobs = True  # on the root logger, pipeobs's capture handler leaves records to this one

    def __init__(
        self,
        level: int | str = logging.NOTSET,
        *,
        sender: Any = None,
        delivery_factory: Callable[..., Any] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(level)
        unknown = sorted(set(options) - OPENCENSUS_OPTIONS)
        if unknown:
            warnings.warn(f"AzureLogHandler ignores unknown options {unknown}", stacklevel=2)
        self.options = {key: value for key, value in options.items() if key in OPENCENSUS_OPTIONS}
        rate = float(self.options.get("logging_sampling_rate", 1.0))
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"logging_sampling_rate must lie in [0, 1], not {rate}")
        if rate < 1.0:
            self.addFilter(SamplingFilter(rate))
        self._sender = sender
        self._delivery_factory = delivery_factory
        self._processors: list[TelemetryProcessor] = []
        self._exporter: AppInsightsExporter | None = None
        self._delivery: Any = None
        self._closed = False
        self._final_counts: dict[str, int] = {}
        self._state_lock = threading.Lock()
        self._warned: set[str] = set()
        self.dropped = 0  # records lost before reaching Delivery (after close, or no destination)
        if not worker_api.in_worker():
            self._exporter = self._build_exporter()  # fail now, as opencensus does, on a bad key
        _handlers.add(self)

    # -- opencensus API ----------------------------------------------------------------------

    def add_telemetry_processor(self, processor: TelemetryProcessor) -> None:
        """``processor(envelope)`` edits an envelope in place, or returns ``False`` to drop it."""
        self._processors.append(processor)
        if self._exporter is not None and self._exporter._processors is not self._processors:
            self._exporter.add_telemetry_processor(processor)

    def clear_telemetry_processors(self) -> None:
        self._processors.clear()
        if self._exporter is not None:
            self._exporter.clear_telemetry_processors()

    # -- logging.Handler ---------------------------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".", 1)[0] in _OWN_LOGGERS:
            return
        try:
            dimensions = custom_dimensions_of(record)
            if worker_api.in_worker():
                self._forward(record, dimensions)
            else:
                self._submit(record, dimensions)
        except Exception:  # noqa: BLE001 - logging must never fail the caller
            self.handleError(record)

    def flush(self) -> None:
        """Nothing to do: Delivery sends in the background and flushes, within its deadline, at close."""

    def close(self) -> None:
        """Flush and close Delivery within its deadline (the rest is spooled); idempotent."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            delivery, self._delivery = self._delivery, None
        try:
            if delivery is not None:
                final = delivery.close()
                self._final_counts = dict(final if isinstance(final, Mapping) else getattr(delivery, "counts", {}))
        finally:
            _handlers.discard(self)
            super().close()

    @property
    def counts(self) -> dict[str, int]:
        """Delivery's ``emitted/delivered/spooled/dropped``, plus records this handler dropped itself."""
        delivery = self._delivery
        counts = dict(getattr(delivery, "counts", None) or {}) if delivery is not None else dict(self._final_counts)
        for key in ("emitted", "delivered", "spooled", "dropped"):
            counts.setdefault(key, 0)
        counts["dropped"] += self.dropped
        return counts

    # -- inside a worker ---------------------------------------------------------------------

    def _forward(self, record: logging.LogRecord, dimensions: dict[str, Any]) -> None:
        if self._closed:
            return
        if worker_api.captured_before(record, self):
            self._warn_once(
                "order",
                "AzureLogHandler sits after pipeobs's root capture handler, which already sent the record; "
                "attach it to a named logger (logging.getLogger(__name__)) to keep its custom dimensions",
            )
            return  # sending it again would duplicate it in the driver
        if self._processors:
            processed = self._process_locally(record, dimensions)
            if processed is None:
                return
            dimensions = processed
        worker_api.send_log_record(record, dimensions)

    def _process_locally(self, record: logging.LogRecord, dimensions: dict[str, Any]) -> dict[str, Any] | None:
        """Run the processors on the envelope the driver would send: None if dropped, else the new dimensions."""
        plain = log_record_of(record, self._message_of(record), {})
        baseline = log_envelopes(plain, _PLACEHOLDER_IKEY)[0]["data"]["baseData"]["properties"]
        full = log_envelopes({**plain, "custom_dimensions": dimensions}, _PLACEHOLDER_IKEY)
        kept = apply_telemetry_processors(full, self._processors)
        if not kept:
            return None
        properties = kept[0]["data"]["baseData"].get("properties") or {}
        given = flatten_properties(dimensions)
        changed = {k: v for k, v in properties.items() if k in given or baseline.get(k) != v}
        if changed == given:
            return dimensions  # untouched: keep the original types for other exporters
        return changed

    # -- outside a run -----------------------------------------------------------------------

    def _submit(self, record: logging.LogRecord, dimensions: dict[str, Any]) -> None:
        delivery = self._ensure_delivery()
        if delivery is None:
            self.dropped += 1
            return
        delivery.submit(log_record_of(record, self._message_of(record), dimensions))

    def _ensure_delivery(self) -> Any:
        with self._state_lock:
            if self._closed:
                return None
            if self._delivery is None:
                try:
                    if self._exporter is None:
                        self._exporter = self._build_exporter()
                    self._delivery = self._build_delivery(self._exporter)
                except Exception as exc:  # noqa: BLE001 - no destination: count and say so once
                    self._warn_once("delivery", "AzureLogHandler cannot send: %s", exc)
                    return None
            return self._delivery

    def _build_exporter(self) -> AppInsightsExporter:
        opts = self.options
        exporter = AppInsightsExporter(
            connection_string=opts.get("connection_string"),
            timeout=float(opts.get("timeout", 10.0)),
            sender=self._sender,
            instrumentation_key=opts.get("instrumentation_key"),
            credential=opts.get("credential"),
            proxies=opts.get("proxies"),
        )
        exporter._processors = self._processors  # shared: processors added later apply too
        return exporter

    def _build_delivery(self, exporter: AppInsightsExporter) -> Any:
        factory = self._delivery_factory
        if factory is None:
            from pipeobs.export.delivery import Delivery

            factory = Delivery
        kwargs: dict[str, Any] = {}
        if "queue_capacity" in self.options:
            kwargs["max_queue"] = int(self.options["queue_capacity"])
        if "grace_period" in self.options:
            kwargs["deadline"] = float(self.options["grace_period"])
        return factory(exporter, spool_dir_of(self.options), **kwargs)

    def _message_of(self, record: logging.LogRecord) -> str:
        if isinstance(record.args, Mapping):
            record = copy.copy(record)
            record.args = None  # a lone dict argument is dimensions, not %-arguments
        return self.format(record)

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    def _after_fork_in_child(self) -> None:
        # Delivery's thread did not survive the fork, and its queue holds the parent's records
        self._delivery = None
        self._state_lock = threading.Lock()


def custom_dimensions_of(record: logging.LogRecord) -> dict[str, Any]:
    """opencensus's default properties, a lone dict argument, then ``extra={"custom_dimensions": ...}``."""
    dimensions: dict[str, Any] = {
        "process": record.processName,
        "module": record.module,
        "fileName": record.pathname,
        "lineNumber": record.lineno,
        "level": record.levelname,
    }
    if isinstance(record.args, Mapping):
        dimensions.update(record.args)
    extra = getattr(record, "custom_dimensions", None)
    if isinstance(extra, Mapping):
        dimensions.update(extra)
    return dimensions


def log_record_of(record: logging.LogRecord, message: str, dimensions: Mapping[str, Any]) -> dict[str, Any]:
    """A pipeobs ``log`` record for a LogRecord emitted outside a run (role: the script, as opencensus names it)."""
    trace_id, span_id = _trace_ids(record)
    here = worker_api.current_context()
    return {
        "type": "log",
        "step_id": here["step_id"] if here else None,
        "step_name": here["step_name"] if here else (os.path.basename(sys.argv[0]) or "Python Application"),
        "worker": here["worker"] if here else platform.node(),
        "time": record.created,
        "trace_id": trace_id,
        "span_id": span_id,
        "level": record.levelname,
        "stream": "log",
        "logger": record.name,
        "text": message,
        "phase": None,
        "custom_dimensions": dict(dimensions),
    }


def _trace_ids(record: logging.LogRecord) -> tuple[str | None, str | None]:
    """The active OpenTelemetry span's ids, else opencensus-ext-logging's ``traceId``/``spanId``."""
    if "opentelemetry.trace" in sys.modules:  # never import it just to find nothing
        from opentelemetry import trace

        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
    trace_id, span_id = getattr(record, "traceId", None), getattr(record, "spanId", None)
    if isinstance(trace_id, str) and trace_id.strip("0"):
        return trace_id, span_id if isinstance(span_id, str) and span_id.strip("0") else None
    return None, None


def spool_dir_of(options: Mapping[str, Any]) -> Path:
    """``storage_path``, else ``~/.pipeobs/spool/appinsights``."""
    path = options.get("storage_path")
    return Path(path).expanduser() if path else DEFAULT_SPOOL_DIR.expanduser()


def _reset_handlers_after_fork() -> None:
    for handler in list(_handlers):
        handler._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_handlers_after_fork)
