"""The collector's ASGI app (Starlette): App Insights and OTLP/HTTP endpoints over one run directory.

Reading the body is async and bounded (``max_body``, checked on Content-Length, on the bytes
received and on the decompressed size); decompressing, parsing and writing run in a worker
thread so a large body never blocks the event loop. Rows are committed before the answer.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from pipeobs.collector import _appinsights, _otlp
from pipeobs.collector._body import (
    DEFAULT_MAX_BODY,
    Refused,
    check_length,
    content_encoding,
    decode,
    media_type,
    read_limited,
)
from pipeobs.collector._deps import INSTALL_HINT
from pipeobs.collector._sink import CollectedRun, Rows

try:
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import BaseRoute, Mount, Route
    from starlette.types import ASGIApp, Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - exercised by the light-import test
    raise ImportError(INSTALL_HINT) from exc

logger = logging.getLogger(__name__)

TRACK_PATHS = ("/v2/track", "/v2.1/track")
OTLP_PATHS = {f"/v1/{name}": signal for name, signal in _otlp.SIGNALS.items()}
UI_PATH = "/ui"


def create_app(store_dir: str | Path, instrumentation_key: str | None = None,
               max_body: int = DEFAULT_MAX_BODY, ui: bool = False, ui_hosts: list[str] | None = None) -> Starlette:
    """The collector app writing into the run directory ``store_dir`` (``store_dir/pipeobs.db``).

    With ``instrumentation_key``, App Insights items carrying another iKey are rejected. With
    ``ui``, the web explorer over that run directory is served under ``/ui/`` (answering only the Host
    headers ``ui_hosts``, when given).
    The store opens at startup (or on the first request) and is marked Completed at shutdown.
    """
    run = CollectedRun(Path(store_dir), {"instrumentation_key": bool(instrumentation_key), "max_body": max_body})
    run.check()
    endpoints = Endpoints(run, instrumentation_key, max_body)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(run.open)
        try:
            yield
        finally:
            await run_in_threadpool(run.close)

    routes: list[BaseRoute] = [Route("/", endpoints.index, methods=["GET"])]
    routes += [Route(path, endpoints.track, methods=["POST"]) for path in TRACK_PATHS]
    routes += [Route(path, endpoints.otlp(signal), methods=["POST"]) for path, signal in OTLP_PATHS.items()]
    if ui:
        from pipeobs.ui.app import create_ui_app

        routes.append(Mount(UI_PATH, app=create_ui_app(store_dir, allowed_hosts=ui_hosts)))
    app = Starlette(routes=routes, middleware=[Middleware(NormalizePath)], lifespan=lifespan)
    app.state.collected_run = run
    return app


class NormalizePath:
    """``//v2.1/track`` and ``/v1/traces/`` route as ``/v2.1/track`` and ``/v1/traces``.

    OpenCensus appends ``/v2.1/track`` to the connection string's ``IngestionEndpoint``, which
    usually ends with a slash; a redirect would not do, as the exporters do not follow it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            while "//" in path:
                path = path.replace("//", "/")
            if len(path) > 1 and not path.startswith(UI_PATH):  # the explorer's pages keep their own slashes
                path = path.rstrip("/") or "/"
            if path != scope["path"]:
                scope = {**scope, "path": path}
        await self.app(scope, receive, send)


class Endpoints:
    """The request handlers, sharing one run directory, iKey and size limit."""

    def __init__(self, run: CollectedRun, instrumentation_key: str | None, max_body: int) -> None:
        self.run = run
        self.instrumentation_key = instrumentation_key
        self.max_body = max_body

    async def index(self, request: Request) -> Response:
        return JSONResponse({
            "service": "pipeobs collector", "store": str(self.run.path),
            "endpoints": [*TRACK_PATHS, *OTLP_PATHS], "stored": self.run.stored(),
        })

    async def _receive(self, request: Request, accepts: Callable[[str], bool]) -> tuple[bytes, str | None]:
        headers = request.headers
        kind = media_type(headers.get("content-type"))
        if not accepts(kind):
            raise Refused(415, f"unsupported Content-Type '{headers.get('content-type')}'")
        encoding = content_encoding(headers.get("content-encoding"))
        check_length(headers.get("content-length"), self.max_body)
        return await read_limited(request.stream(), self.max_body), encoding

    # ------------------------------------------------------------------------- App Insights
    async def track(self, request: Request) -> Response:
        try:
            raw, encoding = await self._receive(request, _appinsights.accepts)
            status, answer = await run_in_threadpool(self._track, raw, encoding)
        except Refused as exc:
            status, answer = exc.status, {"itemsReceived": 0, "itemsAccepted": 0, "errors": [], "message": exc.message}
        except Exception as exc:  # noqa: BLE001 - never an unhandled error for any body: say it, let the sender retry
            logger.exception("could not process a track request")
            status, answer = 500, {"itemsReceived": 0, "itemsAccepted": 0, "errors": [], "message": _internal(exc)}
        return JSONResponse(answer, status_code=status)

    def _track(self, raw: bytes, encoding: str | None) -> tuple[int, dict[str, Any]]:
        rows, received, errors = _appinsights.track(decode(raw, encoding, self.max_body), self.instrumentation_key)
        try:
            self._store(rows, len(errors))
        except Refused as exc:
            errors = [{"index": i, "statusCode": exc.status, "message": exc.message} for i in range(received)]
            return exc.status, {"itemsReceived": received, "itemsAccepted": 0, "errors": errors}
        return _appinsights.answer(received, errors)

    # ------------------------------------------------------------------------- OTLP
    def otlp(self, signal: _otlp.Signal) -> Callable[[Request], Awaitable[Response]]:
        accepted = _otlp.PROTOBUF_TYPES | _otlp.JSON_TYPES

        async def export(request: Request) -> Response:
            kind = media_type(request.headers.get("content-type"))
            try:
                raw, encoding = await self._receive(request, accepted.__contains__)
                body, content_type = await run_in_threadpool(self._export, signal, raw, encoding, kind)
                status = 200
            except Refused as exc:
                status = exc.status
                body, content_type = _otlp.error_body(exc.status, exc.message, kind)
            except Exception as exc:  # noqa: BLE001 - never an unhandled error for any body
                logger.exception("could not process an OTLP %s request", signal.name)
                status = 500
                body, content_type = _otlp.error_body(500, _internal(exc), kind)
            return Response(body, status_code=status, media_type=content_type)

        return export

    def _export(self, signal: _otlp.Signal, raw: bytes, encoding: str | None, kind: str) -> tuple[bytes, str]:
        request = _otlp.decode(signal, decode(raw, encoding, self.max_body), kind)
        rows, rejected, response = _otlp.export(signal, request)
        self._store(rows, rejected)
        return _otlp.encode(response, kind)

    # ------------------------------------------------------------------------- storage
    def _store(self, rows: Rows, rejected: int) -> None:
        """Commit the rows; a store that cannot take them is a 503, which exporters retry."""
        try:
            if len(rows):
                self.run.write(rows)
            if rejected:
                self.run.count_rejected(rejected)
        except (sqlite3.Error, OSError, RuntimeError) as exc:
            logger.error("could not store %d rows in %s: %s", len(rows), self.run.path, exc)
            raise Refused(503, f"the collector could not store the telemetry: {exc}") from None


def _internal(exc: BaseException) -> str:
    return f"the collector failed on this request ({type(exc).__name__}); see its log"
