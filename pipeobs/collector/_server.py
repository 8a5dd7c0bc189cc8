"""Serving the collector with uvicorn: on loopback unless told otherwise, reporting the port it got."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeobs.collector._app import create_app
from pipeobs.collector._body import DEFAULT_MAX_BODY
from pipeobs.collector._deps import INSTALL_HINT
from pipeobs.collector._sink import CollectedRun

try:
    import uvicorn

    from pipeobs.serving import DEFAULT_HOST, ReadyServer, bind_socket, is_loopback, url_of
except ImportError as exc:  # pragma: no cover - exercised by the light-import test
    raise ImportError(INSTALL_HINT) from exc

ZERO_KEY = "00000000-0000-0000-0000-000000000000"


class CollectorServer(ReadyServer):
    """The collector's server (see :class:`pipeobs.serving.ReadyServer`); ``collected_run`` is the
    run directory it writes (``stored()`` counts what it holds)."""

    def __init__(self, config: uvicorn.Config, collected_run: CollectedRun,
                 ready: Callable[[int], Any] | None = None) -> None:
        super().__init__(config, ready)
        self.collected_run = collected_run


def create_server(store_dir: str | Path, instrumentation_key: str | None = None, *, host: str = DEFAULT_HOST,
                  port: int = 0, max_body: int = DEFAULT_MAX_BODY,
                  ready: Callable[[int], Any] | None = None, ui: bool = False) -> CollectorServer:
    """A collector server (not yet running: call ``run()``, e.g. on a thread)."""
    ui_hosts = None
    if ui and is_loopback(host):
        from pipeobs.ui.server import allowed_hosts

        ui_hosts = allowed_hosts(host)
    app = create_app(store_dir, instrumentation_key, max_body, ui, ui_hosts)
    config = uvicorn.Config(app, host=host, port=port, lifespan="on", log_level="warning", access_log=False)
    return CollectorServer(config, app.state.collected_run, ready)


def serve(port: int = 0, host: str = DEFAULT_HOST, store_dir: str | Path = "collected",
          instrumentation_key: str | None = None, ready: Callable[[int], Any] | None = None, *,
          max_body: int = DEFAULT_MAX_BODY, ui: bool = False) -> None:
    """Run the collector until Ctrl-C (or SIGTERM), saying where it listens and how to point exporters at it."""

    def announce(bound: int) -> None:
        url = url_of(host, bound)
        print(f"pipeobs collector listening on {url} (store: {store_dir})", flush=True)
        print(f"  App Insights: APPLICATIONINSIGHTS_CONNECTION_STRING="
              f"'InstrumentationKey={instrumentation_key or ZERO_KEY};IngestionEndpoint={url}/'", flush=True)
        print(f"  OTLP/HTTP:    OTEL_EXPORTER_OTLP_ENDPOINT={url} OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf", flush=True)
        if ui:
            print(f"  web explorer: {url}/ui/", flush=True)
        if ready is not None:
            ready(bound)

    server = create_server(store_dir, instrumentation_key, host=host, port=port, max_body=max_body, ready=announce,
                           ui=ui)
    sock = bind_socket(host, port)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C once it has shut down cleanly
        pass
    counts = server.collected_run.stored()
    print(f"pipeobs collector stopped: {counts['spans']} spans, {counts['log_lines']} log lines, "
          f"{counts['metrics']} metric points stored in {store_dir}", flush=True)
