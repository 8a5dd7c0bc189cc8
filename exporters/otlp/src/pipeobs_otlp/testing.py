"""Test helpers: a fake sender for unit tests, and a real OTLP/HTTP collector on loopback.

* :class:`FakeSender` stands in for one signal's official exporter in
  ``OtlpExporter(senders=...)``: it keeps what it was given and answers from a script.
* :class:`OtlpHttpCollector` is a real HTTP server on 127.0.0.1 (port 0) that receives OTLP
  requests, answers from a script (status, headers, or never), and decodes what it received with
  ``opentelemetry-proto``'s messages.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from pipeobs_otlp.senders import SIGNALS, SendOutcome

__all__ = ["FakeSender", "OtlpHttpCollector", "Received", "Reply"]


class FakeSender:
    """A :class:`~pipeobs_otlp.SignalSender` that records each batch and answers from a script."""

    def __init__(self, *outcomes: SendOutcome) -> None:
        self.outcomes = list(outcomes)
        self.sent: list[Any] = []
        self.shut_down = False

    @classmethod
    def for_all_signals(cls) -> dict[str, FakeSender]:
        """One fake per signal, each answering "sent"."""
        return {signal: cls() for signal in SIGNALS}

    def send(self, data: Any) -> SendOutcome:
        self.sent.append(data)
        return self.outcomes.pop(0) if self.outcomes else SendOutcome(ok=True)

    def shutdown(self) -> None:
        self.shut_down = True


@dataclass(frozen=True)
class Reply:
    """How the collector answers one request; ``hang`` never answers (until the collector stops)."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    hang: bool = False


@dataclass(frozen=True)
class Received:
    """One request the collector received (header names lower-cased), and the status it answered."""

    path: str
    headers: Mapping[str, str]
    body: bytes
    status: int | None  # None: never answered

    @property
    def accepted(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class OtlpHttpCollector:
    """A real OTLP/HTTP receiver on 127.0.0.1: ``replies`` answer the first requests, then 200."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = _QuietServer(("127.0.0.1", 0), _handler_class(self))
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="otlp-collector", daemon=True
        )

    @property
    def endpoint(self) -> str:
        """The base URL, as ``OTEL_EXPORTER_OTLP_ENDPOINT`` would give it."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> OtlpHttpCollector:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def traces(self) -> list[Any]:
        """Every ``ExportTraceServiceRequest`` accepted on ``/v1/traces``."""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        return self._decode("/v1/traces", ExportTraceServiceRequest)

    def logs(self) -> list[Any]:
        """Every ``ExportLogsServiceRequest`` accepted on ``/v1/logs``."""
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

        return self._decode("/v1/logs", ExportLogsServiceRequest)

    def metrics(self) -> list[Any]:
        """Every ``ExportMetricsServiceRequest`` accepted on ``/v1/metrics``."""
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

        return self._decode("/v1/metrics", ExportMetricsServiceRequest)

    def _decode(self, path: str, message: Any) -> list[Any]:
        with self._lock:
            bodies = [request.body for request in self.received if request.path == path and request.accepted]
        return [message.FromString(body) for body in bodies]

    def _take(self, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        with self._lock:
            reply = self.replies.pop(0) if self.replies else Reply()
            self.received.append(Received(path, headers, body, None if reply.hang else reply.status))
            return reply


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (timed out) mid-answer is expected here


def _handler_class(collector: OtlpHttpCollector) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real collectors do

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            reply = collector._take(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            if reply.hang:
                collector._stopping.wait(timeout=60)
                self.close_connection = True
                return
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
