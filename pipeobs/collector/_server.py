"""Serving the collector with uvicorn: on loopback unless told otherwise, reporting the port it got."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeobs.collector._app import create_app
from pipeobs.collector._body import DEFAULT_MAX_BODY
from pipeobs.collector._deps import INSTALL_HINT
from pipeobs.collector._sink import CollectedRun
from pipeobs.errors import ConfigError

try:
    import uvicorn
except ImportError as exc:  # pragma: no cover - exercised by the light-import test
    raise ImportError(INSTALL_HINT) from exc

DEFAULT_HOST = "127.0.0.1"
ZERO_KEY = "00000000-0000-0000-0000-000000000000"


class CollectorServer(uvicorn.Server):
    """uvicorn's server on a socket it binds itself, so port 0 yields one known port.

    ``port`` is set, and ``ready(port)`` called, once it accepts connections. Stop it with
    ``should_exit = True`` (or Ctrl-C / SIGTERM when it runs on the main thread).
    ``collected_run`` is the run directory it writes (``stored()`` counts what it holds).
    """

    def __init__(self, config: uvicorn.Config, collected_run: CollectedRun,
                 ready: Callable[[int], Any] | None = None) -> None:
        super().__init__(config)
        self.collected_run = collected_run
        self.port: int | None = None
        self.ready = ready

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        if sockets is None:
            sockets = [bind_socket(self.config.host, self.config.port)]
        await super().serve(sockets=sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self.port = self.servers[0].sockets[0].getsockname()[1]
            if self.ready is not None:
                self.ready(self.port)


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (IPv4 or IPv6, as ``host`` resolves)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from None
    return sock


def create_server(store_dir: str | Path, instrumentation_key: str | None = None, *, host: str = DEFAULT_HOST,
                  port: int = 0, max_body: int = DEFAULT_MAX_BODY,
                  ready: Callable[[int], Any] | None = None) -> CollectorServer:
    """A collector server (not yet running: call ``run()``, e.g. on a thread)."""
    app = create_app(store_dir, instrumentation_key, max_body)
    config = uvicorn.Config(app, host=host, port=port, lifespan="on", log_level="warning", access_log=False)
    return CollectorServer(config, app.state.collected_run, ready)


def serve(port: int = 0, host: str = DEFAULT_HOST, store_dir: str | Path = "collected",
          instrumentation_key: str | None = None, ready: Callable[[int], Any] | None = None, *,
          max_body: int = DEFAULT_MAX_BODY) -> None:
    """Run the collector until Ctrl-C (or SIGTERM), saying where it listens and how to point exporters at it."""

    def announce(bound: int) -> None:
        url = f"http://{f'[{host}]' if ':' in host else host}:{bound}"
        print(f"pipeobs collector listening on {url} (store: {store_dir})", flush=True)
        print(f"  App Insights: APPLICATIONINSIGHTS_CONNECTION_STRING="
              f"'InstrumentationKey={instrumentation_key or ZERO_KEY};IngestionEndpoint={url}/'", flush=True)
        print(f"  OTLP/HTTP:    OTEL_EXPORTER_OTLP_ENDPOINT={url} OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf", flush=True)
        if ready is not None:
            ready(bound)

    server = create_server(store_dir, instrumentation_key, host=host, port=port, max_body=max_body, ready=announce)
    sock = bind_socket(host, port)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C once it has shut down cleanly
        pass
    counts = server.collected_run.stored()
    print(f"pipeobs collector stopped: {counts['spans']} spans, {counts['log_lines']} log lines, "
          f"{counts['metrics']} metric points stored in {store_dir}", flush=True)
