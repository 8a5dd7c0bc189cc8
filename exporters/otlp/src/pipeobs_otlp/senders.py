"""Senders: one per signal, each wrapping one of OpenTelemetry's official OTLP exporters.

pipeobs's delivery layer owns retries, backoff and ``Retry-After``, so a sender makes exactly one
attempt per batch and reports what happened (:class:`SendOutcome`). The official exporters
(1.45) retry by themselves: up to 6 attempts, backoff ``2**n x [0.8, 1.2]`` s, within one
overall deadline equal to their ``timeout``. Both senders turn that off through public
constructor parameters, so nothing is patched and other OTLP exporters in the process keep
their behaviour:

* **http/protobuf.** The exporter takes a ``session`` (a ``requests.Session``). Ours,
  :class:`_SingleAttemptSession`, records every attempt (status, reason, ``Retry-After``,
  error), and keeps the exporter from trying again:

  - a retryable answer (429, 502, 503, 504) reaches the exporter with a ``Retry-After`` far past
    its deadline; the exporter honours ``Retry-After`` and gives up when the wait would pass its
    deadline, so it returns at once. The server's own ``Retry-After`` is kept for pipeobs.
  - a connection error or timeout reaches the exporter as an exception that is not a
    ``requests`` connection error, which the exporter does not retry (not even the immediate
    reconnect it makes for stale pooled connections).

  If a future exporter version changed either rule, it would fall back to retrying, still
  bounded by its ``timeout`` (its one overall deadline); the tests count the requests a
  collector receives, so such a change is caught.
* **grpc.** The exporter takes ``retryable_error_codes``. An empty set would fall back to the
  defaults (the exporter tests it for truth), so the sender passes ``{StatusCode.OK}``, a code
  that no failed call carries: no failure is retried. The exporter still re-creates its channel
  after an UNAVAILABLE, which helps the next batch.

``timeout`` (seconds) bounds each attempt. None lets the official exporter resolve it as its
owners define: ``OTEL_EXPORTER_OTLP_{TRACES,LOGS,METRICS}_TIMEOUT``, then
``OTEL_EXPORTER_OTLP_TIMEOUT``, then 10 s. The same goes for the endpoint and headers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import requests
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

SIGNALS = ("traces", "logs", "metrics")
RETRYABLE_HTTP_STATUSES = frozenset({429, 502, 503, 504})
GRPC_INSTALL_HINT = "pip install 'pipeobs-otlp[grpc]'"

# Far past any export deadline: the official HTTP exporter stops retrying when the server's
# Retry-After would take it past its deadline.
_PAST_ANY_DEADLINE = str(10**9)


@dataclass(frozen=True)
class SendOutcome:
    """What one attempt to send a signal's batch came to.

    ``retryable`` says whether sending the same batch again may succeed (a 429/5xx answer, a
    connection error, a timeout) or not (the backend refused it: any other 4xx/5xx).
    """

    ok: bool
    retryable: bool = False
    error: str | None = None
    retry_after: float | None = None


class SignalSender(Protocol):
    """Sends one signal's SDK data (spans, log records or ``MetricsData``) in a single attempt."""

    def send(self, data: Any) -> SendOutcome: ...

    def shutdown(self) -> None: ...


def build_sender(
    signal: str, protocol: str, endpoint: str | None, headers: Mapping[str, str] | None, timeout: float | None
) -> SignalSender:
    """A sender backed by the official exporter of ``signal`` for ``protocol``."""
    if protocol == "grpc":
        return GrpcSender(signal, endpoint, headers, timeout)
    if endpoint is not None:
        # OTEL_EXPORTER_OTLP_ENDPOINT semantics: a base URL that gets the signal's path.
        endpoint = f"{endpoint.rstrip('/')}/v1/{signal}"
    return HttpSender(signal, endpoint, headers, timeout)


class HttpSender:
    """One attempt per batch through the official OTLP/HTTP (protobuf) exporter of a signal."""

    def __init__(
        self, signal: str, endpoint: str | None, headers: Mapping[str, str] | None, timeout: float | None
    ) -> None:
        exporter_class = {"traces": OTLPSpanExporter, "logs": OTLPLogExporter, "metrics": OTLPMetricExporter}[signal]
        self._session = _SingleAttemptSession()
        self._exporter = exporter_class(endpoint=endpoint, headers=headers, timeout=timeout, session=self._session)

    def send(self, data: Any) -> SendOutcome:
        self._session.attempts.clear()
        result = self._exporter.export(data)
        if result.name == "SUCCESS":
            return SendOutcome(ok=True)
        if not self._session.attempts:
            # The exporter refused the batch before sending it (encoding, max_request_size).
            return SendOutcome(ok=False, error="not sent: the OTLP exporter could not encode or size the batch")
        return self._session.attempts[-1]

    def shutdown(self) -> None:
        self._exporter.shutdown()


class GrpcSender:
    """One attempt per batch through the official OTLP/gRPC exporter of a signal."""

    def __init__(
        self, signal: str, endpoint: str | None, headers: Mapping[str, str] | None, timeout: float | None
    ) -> None:
        try:
            from grpc import StatusCode
            from opentelemetry.exporter.otlp.proto.grpc import _log_exporter as grpc_logs
            from opentelemetry.exporter.otlp.proto.grpc import metric_exporter as grpc_metrics
            from opentelemetry.exporter.otlp.proto.grpc import trace_exporter as grpc_traces
        except ImportError as error:
            raise ImportError(f"the OTLP gRPC protocol needs the grpc extra: {GRPC_INSTALL_HINT}") from error

        exporter_class = {
            "traces": grpc_traces.OTLPSpanExporter,
            "logs": grpc_logs.OTLPLogExporter,
            "metrics": grpc_metrics.OTLPMetricExporter,
        }[signal]
        self._signal = signal
        self._exporter = exporter_class(
            endpoint=endpoint, headers=headers, timeout=timeout, retryable_error_codes={StatusCode.OK}
        )

    def send(self, data: Any) -> SendOutcome:
        result = self._exporter.export(data)
        if result.name == "SUCCESS":
            return SendOutcome(ok=True)
        # The official gRPC exporter reports SUCCESS/FAILURE only (the status code goes to its log),
        # so every failure is worth another try.
        return SendOutcome(ok=False, retryable=True, error=f"OTLP/gRPC export of {self._signal} failed")

    def shutdown(self) -> None:
        self._exporter.shutdown()


class _SingleAttemptSession(requests.Session):
    """A ``requests.Session`` that records each attempt and keeps the exporter from retrying."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts: list[SendOutcome] = []

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        try:
            response = super().request(method, url, *args, **kwargs)
        except requests.RequestException as error:
            self.attempts.append(SendOutcome(ok=False, retryable=True, error=f"{type(error).__name__}: {error}"))
            raise _AttemptFailed(str(error)) from error
        status = response.status_code
        if status < 300:
            self.attempts.append(SendOutcome(ok=True))
            return response
        retryable = status in RETRYABLE_HTTP_STATUSES
        retry_after = parse_retry_after(response.headers.get("Retry-After")) if retryable else None
        message = f"HTTP {status} {response.reason or ''}".rstrip() + f" from {url}"
        self.attempts.append(SendOutcome(ok=False, retryable=retryable, error=message, retry_after=retry_after))
        if retryable:
            response.headers["Retry-After"] = _PAST_ANY_DEADLINE
        return response


class _AttemptFailed(Exception):
    """A failed attempt, in a type the official HTTP exporter does not retry."""


def parse_retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` header (delay-seconds or HTTP-date) in seconds from now; None if absent or bad."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None
