"""The OTLP exporter: pipeobs records to any OTLP backend, through OpenTelemetry's own exporters.

:class:`OtlpExporter` converts a batch (:mod:`pipeobs_otlp.convert`), sends each signal once
through its sender (:mod:`pipeobs_otlp.senders`), and maps the outcomes back onto the batch's
record indexes: delivered, worth a retry (429/502/503/504, connection errors, timeouts; with the
server's ``Retry-After``), or rejected for good (records that cannot be converted, and any other
HTTP error status, which the OTLP specification says must not be retried).

Configuration follows OpenTelemetry's variables, as the official exporters define them:

* protocol: the ``protocol`` argument, else ``OTEL_EXPORTER_OTLP_{TRACES,LOGS,METRICS}_PROTOCOL``,
  else ``OTEL_EXPORTER_OTLP_PROTOCOL``, else ``http/protobuf``. ``grpc`` needs the ``grpc``
  extra. (``http/json`` has no official Python exporter.)
* endpoint: the ``endpoint`` argument is a base URL for all signals, like
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` (``/v1/<signal>`` is appended for HTTP). Without it the official
  exporters read ``OTEL_EXPORTER_OTLP_{SIGNAL}_ENDPOINT`` (used as is), then
  ``OTEL_EXPORTER_OTLP_ENDPOINT``, then ``http://localhost:4318`` / ``localhost:4317``.
* headers: merged by the official exporters with ``OTEL_EXPORTER_OTLP_[SIGNAL_]HEADERS``
  (the HTTP exporter merges, the gRPC exporter lets the argument replace the variable).
* timeout: seconds per attempt; None lets the exporters read ``OTEL_EXPORTER_OTLP_[SIGNAL_]TIMEOUT``
  (seconds), default 10. With one attempt per signal, ``export`` returns within about
  (number of signals in the batch) x timeout.
* compression, certificates, ``OTEL_EXPORTER_OTLP_INSECURE``: read by the official exporters.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from types import TracebackType

from opentelemetry import context
from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_LOGS_PROTOCOL,
    OTEL_EXPORTER_OTLP_METRICS_PROTOCOL,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
)
from opentelemetry.util.re import parse_env_headers

from pipeobs.errors import ConfigError
from pipeobs.export.base import ExportResult, Record
from pipeobs_otlp.convert import RecordConverter
from pipeobs_otlp.senders import SIGNALS, SendOutcome, SignalSender, build_sender

logger = logging.getLogger(__name__)

PROTOCOLS = ("http/protobuf", "grpc")
OPTIONS = ("endpoint", "headers", "protocol", "timeout")

_PROTOCOL_VARIABLES = {
    "traces": OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    "logs": OTEL_EXPORTER_OTLP_LOGS_PROTOCOL,
    "metrics": OTEL_EXPORTER_OTLP_METRICS_PROTOCOL,
}


class OtlpExporter:
    """A pipeobs exporter sending spans, logs and metrics over OTLP (``http/protobuf`` or ``grpc``).

    ``senders`` replaces the official exporters for some or all signals (``"traces"``,
    ``"logs"``, ``"metrics"``), e.g. with :class:`pipeobs_otlp.testing.FakeSender`.
    """

    name = "otlp"

    def __init__(
        self,
        protocol: str | None = None,
        endpoint: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        *,
        senders: Mapping[str, SignalSender] | None = None,
    ) -> None:
        if timeout is not None and not timeout > 0:
            raise ConfigError(f"the OTLP exporter timeout must be a positive number of seconds, not {timeout!r}")
        given = dict(senders or {})
        protocols = {signal: resolve_protocol(protocol, signal) for signal in SIGNALS if signal not in given}
        self._senders: dict[str, SignalSender] = {
            signal: given[signal]
            if signal in given
            else build_sender(signal, protocols[signal], endpoint, headers, timeout)
            for signal in SIGNALS
        }
        self._converter = RecordConverter()
        self._export_lock = threading.Lock()  # one batch at a time: a sender records one attempt
        self._state_lock = threading.Lock()
        self._closed = False

    def export(self, records: Sequence[Record]) -> ExportResult:
        """Send ``records`` once per signal; never retries, never raises for a backend's trouble."""
        with self._export_lock:
            if self._closed:
                raise RuntimeError("OtlpExporter.export() called after shutdown()")
            batch = self._converter.convert(records)
            result = ExportResult(rejected=list(batch.rejected))
            errors = []
            for signal, indexes, data in batch.signals():
                outcome = self._send(signal, data)
                if outcome.ok:
                    result.delivered += len(indexes)
                    continue
                errors.append(f"{signal}: {outcome.error}")
                if outcome.retryable:
                    result.retry.extend(indexes)
                    if outcome.retry_after is not None:
                        result.retry_after = max(result.retry_after or 0.0, outcome.retry_after)
                else:
                    result.rejected.extend((index, f"{signal}: {outcome.error}") for index in indexes)
            result.retry.sort()
            result.rejected.sort()
            result.error = "; ".join(errors) or None
            return result

    def force_flush(self, timeout_s: float | None = None) -> bool:
        """Nothing is buffered here (the delivery layer holds the queue)."""
        return True

    def shutdown(self) -> None:
        """Close every sender's connections; idempotent.

        It does not wait for a batch in flight (the delivery layer calls it at its deadline, when
        a request may still hang): closing the connections ends that request early.
        """
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            for signal, sender in self._senders.items():
                try:
                    sender.shutdown()
                except Exception:
                    logger.warning("shutting down the OTLP %s sender failed", signal, exc_info=True)

    def __enter__(self) -> OtlpExporter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()

    def _send(self, signal: str, data: object) -> SendOutcome:
        # As the SDK's span processors do: an instrumented HTTP/gRPC client must not trace the
        # export request itself (a feedback loop through the exporters).
        token = context.attach(context.set_value(context._SUPPRESS_INSTRUMENTATION_KEY, True))
        # The exporter boundary: whatever goes wrong below is reported on the batch, never raised.
        try:
            return self._senders[signal].send(data)
        except Exception as error:
            logger.warning("the OTLP %s sender raised; the batch is dropped", signal, exc_info=True)
            return SendOutcome(ok=False, error=f"{type(error).__name__}: {error}")
        finally:
            context.detach(token)


def resolve_protocol(protocol: str | None, signal: str) -> str:
    """The OTLP protocol of ``signal``: the argument, else the signal's variable, else the general one."""
    value = protocol or os.environ.get(_PROTOCOL_VARIABLES[signal]) or os.environ.get(OTEL_EXPORTER_OTLP_PROTOCOL)
    value = (value or "http/protobuf").strip().lower()
    if value not in PROTOCOLS:
        raise ConfigError(
            f"OTLP protocol {value!r} is not supported (protocol option or {OTEL_EXPORTER_OTLP_PROTOCOL}); "
            "use 'http/protobuf' or 'grpc'"
        )
    return value


def create_exporter(options: Mapping[str, str]) -> OtlpExporter:
    """The ``pipeobs.exporters`` entry point: options ``protocol``, ``endpoint``, ``headers``, ``timeout``.

    ``headers`` is written like ``OTEL_EXPORTER_OTLP_HEADERS`` (``k1=v1,k2=v2``), ``timeout`` in
    seconds. Whatever is not given comes from the ``OTEL_EXPORTER_OTLP_*`` environment variables.
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"unknown otlp exporter option {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
    timeout = options.get("timeout") or None
    try:
        timeout_s = float(timeout) if timeout is not None else None
    except ValueError:
        raise ConfigError(f"otlp exporter option timeout={timeout!r} is not a number of seconds") from None
    headers = options.get("headers")
    return OtlpExporter(
        protocol=options.get("protocol") or None,
        endpoint=options.get("endpoint") or None,
        headers=dict(parse_env_headers(headers, liberal=True)) if headers else None,
        timeout=timeout_s,
    )
