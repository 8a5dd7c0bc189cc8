"""The default sender: one HTTP POST with ``http.client``, bounded by one total deadline.

A sender is any callable ``send(url, body, headers, timeout) -> (status, headers, body)``;
response header names are lower-cased. It raises on network failures (``OSError``,
``TimeoutError``, ``http.client.HTTPException``) and returns every HTTP status, redirects
included, so the exporter decides what each one means. Unlike ``urllib``'s per-operation
timeout, ``timeout`` here bounds the whole exchange: connect, send and read.

Proxies: ``proxies`` maps a scheme to a proxy URL (opencensus's option, a dict or its JSON
string); without it, the ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` environment is honoured,
as ``requests`` does.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import time
import urllib.request
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import SplitResult, unquote, urlsplit

from pipeobs.errors import ConfigError

MAX_RESPONSE_BYTES = 1024 * 1024

Response = tuple[int, dict[str, str], bytes]


class Sender(Protocol):
    """What the exporter calls to POST one batch."""

    def __call__(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> Response: ...


def parse_proxies(proxies: Mapping[str, str] | str | None) -> dict[str, str] | None:
    """opencensus's ``proxies`` option (a dict or a JSON string) as a dict; None means "from the environment"."""
    if proxies is None:
        return None
    if isinstance(proxies, str):
        try:
            proxies = json.loads(proxies or "{}")
        except ValueError as exc:
            raise ConfigError(f'proxies must be JSON such as {{"https": "http://proxy:8080"}}: {exc}') from None
    if not isinstance(proxies, Mapping) or not all(isinstance(v, str) for v in proxies.values()):
        raise ConfigError('proxies must map a scheme to a proxy URL, e.g. {"https": "http://proxy:8080"}')
    return dict(proxies) or None


class HttpSender:
    """POSTs with ``http.client`` (TLS verified with the system's CAs), within one deadline."""

    def __init__(self, proxies: Mapping[str, str] | str | None = None, ssl_context: ssl.SSLContext | None = None):
        self._proxies = parse_proxies(proxies)
        self._explicit = self._proxies is not None
        self._ssl = ssl_context

    def __call__(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> Response:
        deadline = time.monotonic() + timeout
        target = urlsplit(url)
        if target.scheme not in ("http", "https") or not target.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        proxy = self._proxy_for(target)
        conn, path, extra = self._connection(target, proxy, timeout)
        try:
            conn.connect()
            sock = conn.sock  # kept: http.client drops conn.sock once a response says "close"
            _bound(sock, deadline, timeout)
            conn.request("POST", path, body=body, headers={**headers, **extra})
            _bound(sock, deadline, timeout)
            response = conn.getresponse()
            chunks: list[bytes] = []
            size = 0
            while size < MAX_RESPONSE_BYTES:
                _bound(sock, deadline, timeout)
                chunk = response.read1(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            return response.status, {k.lower(): v for k, v in response.getheaders()}, b"".join(chunks)
        except TimeoutError as exc:
            raise TimeoutError(f"no answer from {target.hostname} within {timeout:g} s") from exc
        finally:
            conn.close()

    def _proxy_for(self, target: SplitResult) -> SplitResult | None:
        proxies = self._proxies if self._explicit else urllib.request.getproxies()
        if not proxies:
            return None
        if not self._explicit and urllib.request.proxy_bypass(target.hostname or ""):
            return None
        proxy = proxies.get(target.scheme)
        return urlsplit(proxy if "://" in proxy else "http://" + proxy) if proxy else None

    def _connection(
        self, target: SplitResult, proxy: SplitResult | None, timeout: float
    ) -> tuple[http.client.HTTPConnection, str, dict[str, str]]:
        path = (target.path or "/") + (f"?{target.query}" if target.query else "")
        port = target.port or (443 if target.scheme == "https" else 80)
        if proxy is None:
            return self._open(target.scheme, target.hostname or "", port, timeout), path, {}
        auth = _proxy_auth(proxy)
        # https: a CONNECT tunnel through the proxy, then TLS to the target (http.client's set_tunnel)
        conn = self._open(target.scheme, proxy.hostname or "", proxy.port or 8080, timeout)
        if target.scheme == "https":
            conn.set_tunnel(target.hostname or "", port, headers=auth)
            return conn, path, {}
        return conn, target.geturl(), auth  # a plain-HTTP proxy takes the absolute URL

    def _open(self, scheme: str, host: str, port: int, timeout: float) -> http.client.HTTPConnection:
        if scheme == "https":
            return http.client.HTTPSConnection(
                host, port, timeout=timeout, context=self._ssl or ssl.create_default_context()
            )
        return http.client.HTTPConnection(host, port, timeout=timeout)


def _bound(sock: socket.socket | None, deadline: float, timeout: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError(f"no answer within {timeout:g} s")
    if sock is not None:
        sock.settimeout(remaining)


def _proxy_auth(proxy: SplitResult) -> dict[str, str]:
    if proxy.username is None:
        return {}
    token = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}".encode()
    return {"Proxy-Authorization": "Basic " + base64.b64encode(token).decode("ascii")}
