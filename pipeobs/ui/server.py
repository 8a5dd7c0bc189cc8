"""Serving the explorer with uvicorn: on loopback unless told otherwise, printing its URL."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeobs.ui._deps import INSTALL_HINT

try:
    import uvicorn

    from pipeobs.serving import ReadyServer, bind_socket, is_loopback, url_of
    from pipeobs.ui.app import create_ui_app
except ImportError as exc:  # pragma: no cover - exercised by the light-import test
    raise ImportError(INSTALL_HINT) from exc


def create_server(root: str | Path, host: str = "127.0.0.1", port: int = 0,
                  ready: Callable[[int], Any] | None = None, **options: Any) -> ReadyServer:
    """An explorer server over ``root`` (not yet running: call ``run()``, e.g. on a thread)."""
    if is_loopback(host):
        options.setdefault("allowed_hosts", allowed_hosts(host))
    config = uvicorn.Config(create_ui_app(root, **options), host=host, port=port, lifespan="off", log_level="warning",
                            access_log=False)
    return ReadyServer(config, ready)


def allowed_hosts(host: str) -> list[str]:
    """The Host headers a loopback server answers: its own address and the loopback names."""
    from pipeobs.ui.app import LOOPBACK_HOSTS

    return sorted({host, *LOOPBACK_HOSTS})


def off_loopback_warning(host: str) -> str | None:
    """The warning for a server anyone on the network can reach (run data, paths and logs included)."""
    if is_loopback(host):
        return None
    return (f"warning: listening on {host}, not loopback: anyone who can reach this machine can read these runs "
            "(their logs, paths and arguments); there is no login. Use --host 127.0.0.1 unless you mean it.")


def serve(root: str | Path, host: str = "127.0.0.1", port: int = 0,
          ready: Callable[[int], Any] | None = None, **options: Any) -> None:
    """Run the explorer until Ctrl-C (or SIGTERM)."""

    def announce(bound: int) -> None:
        print(f"pipeobs ui: {url_of(host, bound)}/  (runs below {root}; Ctrl-C stops)", flush=True)
        if ready is not None:
            ready(bound)

    warning = off_loopback_warning(host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    server = create_server(root, host, port, announce, **options)
    sock = bind_socket(host, port)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C once it has shut down cleanly
        pass
