"""Serving an ASGI app with uvicorn on a socket bound here, so port 0 yields one known port.

Shared by ``pipeobs collect`` and ``pipeobs ui`` (both import it only when they serve: it loads uvicorn).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any

from pipeobs.errors import ConfigError

try:
    import uvicorn
except ImportError as exc:  # pragma: no cover - the callers name their extra
    raise ImportError("serving needs uvicorn: pip install 'pipeobs[ui]' or 'pipeobs[collector]'") from exc

DEFAULT_HOST = "127.0.0.1"


class ReadyServer(uvicorn.Server):
    """uvicorn's server that knows its port: ``port`` is set, and ``ready(port)`` called, once it
    accepts connections. Stop it with ``should_exit = True`` (or Ctrl-C / SIGTERM on the main thread)."""

    def __init__(self, config: uvicorn.Config, ready: Callable[[int], Any] | None = None) -> None:
        super().__init__(config)
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


def url_of(host: str, port: int) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
