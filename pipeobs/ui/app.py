"""The web explorer's ASGI app (Starlette + Jinja2): server-rendered pages, JSON for the parts that move.

Pages (each URL is a deep link: filters, time range and selection are query parameters):

* ``/`` runs; ``/runs/{run}`` a run (summary, worker-lane timeline, tables, charts);
  ``/runs/{run}/mini-batches/{id}``; ``/runs/{run}/spans/{span_id}``; ``/runs/{run}/logs``;
  ``/compare?run=A&run=B``; ``/runs/{run}/trace.json`` (Chrome trace, as a download).
* ``/api/runs/{run}/timeline|logs|progress|series`` the JSON the pages' scripts draw from.

A run is named by its directory's name (its step_id) among the run directories below the root;
nothing else in a URL reaches the file system, so a path in a URL can never leave the runs
folder. Stores are opened read-only per request (safe while a run is live). Every response
carries a strict Content-Security-Policy: scripts and styles only from ``/static``, no inline
script, no ``eval``; user text reaches the page only through Jinja's escaping or ``textContent``.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeobs.errors import ConfigError, RunDirError
from pipeobs.explorer import queries
from pipeobs.explorer.runs import find_run_dirs, nest_runs, open_run
from pipeobs.ui import data
from pipeobs.ui._deps import INSTALL_HINT, PERFETTO_URL

try:
    from jinja2 import Environment, PackageLoader, select_autoescape
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - exercised by the light-import test
    raise ImportError(INSTALL_HINT) from exc

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
STATIC = Path(__file__).parent / "static"
BASE_KEY = "pipeobs.ui.base"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
LARGEST = 2**63 - 1  # SQLite's integers
RELIST_SECONDS = 10.0  # how long a listing of the runs folder serves lookups by name
SORTS = {"start": "start", "duration": "duration", "status": "status", "step": "step",
         "failed": "failed_batches", "done": "done_batches", "items": "items", "alerts": "alerts"}


def create_ui_app(root: str | Path, perfetto_url: str = PERFETTO_URL,
                  allowed_hosts: Sequence[str] | None = None) -> ASGIApp:
    """The explorer over every run directory below ``root`` (or ``root`` itself, a run directory).

    ``perfetto_url``: the Perfetto UI that "Open in Perfetto" hands traces to (a self-hosted one
    behind a firewall, say); the trace goes by ``postMessage``, never through its server.
    ``allowed_hosts``: the Host headers answered (a server on loopback answers only loopback names,
    so a web page elsewhere cannot read runs through DNS rebinding); None: any.
    """
    ui = _UI(Path(root), perfetto_url)
    routes = [
        Route("/", ui.page(ui.runs_page)),
        Route("/compare", ui.page(ui.compare_page)),
        Route("/runs/{run}", ui.page(ui.run_page)),
        Route("/runs/{run}/logs", ui.page(ui.logs_page)),
        Route("/runs/{run}/mini-batches/{mb:int}", ui.page(ui.mini_batch_page)),
        Route("/runs/{run}/spans/{span_id}", ui.page(ui.span_page)),
        Route("/runs/{run}/trace.json", ui.chrome_trace),
        Route("/api/runs/{run}/timeline", ui.api(ui.timeline)),
        Route("/api/runs/{run}/logs", ui.api(ui.logs)),
        Route("/api/runs/{run}/progress", ui.api(ui.progress)),
        Route("/api/runs/{run}/series", ui.api(ui.series)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))] if allowed_hosts else []
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={HTTPException: ui.http_error})
    return SecurityHeaders(app)  # outermost: a 500 from Starlette's error middleware carries the headers too


class SecurityHeaders:
    """The Content-Security-Policy and friends on every HTTP response (pure ASGI: streaming stays streaming);
    it also notes the explorer's own prefix in the scope (``/ui`` inside the collector), for links."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope = {**scope, BASE_KEY: str(scope.get("root_path", "")).rstrip("/")}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _UI:
    def __init__(self, root: Path, perfetto_url: str) -> None:
        self.root = root
        self._known: tuple[float, dict[str, Path]] = (float("-inf"), {})
        self.templates = Environment(loader=PackageLoader("pipeobs.ui", "templates"),
                                     autoescape=select_autoescape(default=True), trim_blocks=True, lstrip_blocks=True)
        self.templates.filters.update(seconds=_seconds, utc=_utc, number=_number, shown=data.shown_value)
        self.templates.globals.update(json=_json, perfetto_url=perfetto_url)

    # ------------------------------------------------------------------ finding runs
    def run_dirs(self) -> dict[str, Path]:
        """Run directories by name (the first of equal names wins, in the order the runs folder sorts)."""
        found: dict[str, Path] = {}
        for path in find_run_dirs(self.root):
            found.setdefault(path.resolve().name, path)
        self._known = (time.monotonic(), found)
        return found

    def run_dir(self, name: str) -> Path:
        """A run's directory: from the last listing if it is recent (the pages of a live run poll every
        second), else from a new one; a name not found is always looked for again."""
        listed_at, known = self._known
        path = known.get(name) if time.monotonic() - listed_at < RELIST_SECONDS else None
        if path is None:
            path = self.run_dirs().get(name)
        if path is None:
            raise HTTPException(404, f"no run named '{name}' below {self.root}")
        return path

    @contextmanager
    def store(self, name: str) -> Iterator[sqlite3.Connection]:
        try:
            with open_run(self.run_dir(name)) as conn:
                yield conn
        except (RunDirError, sqlite3.DatabaseError) as exc:
            raise HTTPException(404, f"run '{name}' cannot be read: {exc}") from None

    # ------------------------------------------------------------------ plumbing
    def page(self, handler: Callable[[Request], tuple[str, dict[str, Any]]]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            template, context = await run_in_threadpool(handler, request)
            html = self.templates.get_template(template).render(request=request, base=_base(request), **context)
            return HTMLResponse(html)

        return endpoint

    def api(self, handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            try:
                result = await run_in_threadpool(handler, request)
            except ConfigError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            return Response(_json(result), media_type="application/json")

        return endpoint

    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if request.url.path.startswith(f"{_base(request)}/api/"):
            return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
        html = self.templates.get_template("error.html").render(
            request=request, base=_base(request), status=exc.status_code, message=exc.detail)
        return HTMLResponse(html, status_code=exc.status_code)

    # ------------------------------------------------------------------ pages
    def runs_page(self, request: Request) -> tuple[str, dict[str, Any]]:
        runs = [self._run_row(name, path) for name, path in self.run_dirs().items()]
        steps = sorted({r["step"] for r in runs if r["step"]})
        statuses = sorted({r["status"] for r in runs if r["status"]})
        status, step = request.query_params.get("status"), request.query_params.get("step")
        shown = [r for r in runs if (not status or r["status"] == status) and (not step or r["step"] == step)]
        sort = request.query_params.get("sort", "start")
        order = request.query_params.get("order", "desc" if sort == "start" else "asc")
        key = SORTS.get(sort, "start")
        shown.sort(key=lambda r: (r[key] is None, r[key] if r[key] is not None else 0), reverse=order == "desc")
        if order == "desc":  # keep runs without a value last
            shown.sort(key=lambda r: r[key] is None)
        shown = nest_runs(shown)  # a v2 pipeline's nodes right under it
        return "runs.html", {"runs": shown, "all_count": len(runs), "steps": steps, "statuses": statuses,
                             "status": status, "step": step, "sort": sort, "order": order, "root": str(self.root)}

    def _run_row(self, name: str, path: Path) -> dict[str, Any]:
        row: dict[str, Any] = {"name": name, "path": str(path), "step": None, "status": "unreadable", "start": None,
                               "duration": None, "done_batches": None, "failed_batches": None, "total_batches": None,
                               "items": None, "alerts": None, "error": None}
        try:
            with open_run(path) as conn:
                s = queries.run_summary(conn)
                fired = queries.alerts(conn)
        except (RunDirError, sqlite3.Error) as exc:
            row["error"] = str(exc)
            return row
        b = s["mini_batches"]
        row.update(step=s["step"], step_id=s["step_id"], parent_step_id=s["parent_step_id"], kind=s["kind"],
                   status=s["status"], start=s["start"], duration=s["duration"],
                   done_batches=b.get("done", 0), failed_batches=b.get("failed", 0), total_batches=b["total"],
                   items=s["items"]["total"], alerts=len(fired), error=s["error"], live=s["live"])
        return row

    def run_page(self, request: Request) -> tuple[str, dict[str, Any]]:
        name = request.path_params["run"]
        run_dir = self.run_dir(name)
        with self.store(name) as conn:
            shown = data.run_page(conn)
            lanes = data.lanes(conn)
        first = shown["failures"]["first_error"]
        replay = None
        if first:
            from pipeobs.replay import replay_command

            replay = replay_command(run_dir, first)
        return "run.html", {"name": name, "run_dir": str(run_dir), "s": shown["summary"], "shown": shown,
                            "first": first, "replay": replay, "lane_count": len(lanes)}

    def mini_batch_page(self, request: Request) -> tuple[str, dict[str, Any]]:
        mb = request.path_params["mb"]
        if mb > LARGEST:
            raise HTTPException(404, f"run '{request.path_params['run']}' has no mini-batch {mb}")
        return self._detail(request, "mini_batch.html", "mb", lambda conn: data.mini_batch(conn, mb), f"mini-batch {mb}")

    def span_page(self, request: Request) -> tuple[str, dict[str, Any]]:
        span_id = request.path_params["span_id"]
        return self._detail(request, "span.html", "span", lambda conn: data.span(conn, span_id), f"span {span_id}")

    def _detail(self, request: Request, template: str, key: str, find: Callable[[sqlite3.Connection], Any],
                what: str) -> tuple[str, dict[str, Any]]:
        name = request.path_params["run"]
        with self.store(name) as conn:
            found = find(conn)
            summary = queries.run_summary(conn)
        if found is None:
            raise HTTPException(404, f"run '{name}' has no {what}")
        return template, {"name": name, key: found, "s": summary}

    def logs_page(self, request: Request) -> tuple[str, dict[str, Any]]:
        name = request.path_params["run"]
        with self.store(name) as conn:
            summary = queries.run_summary(conn)
            workers = [lane["worker"] for lane in data.lanes(conn)]
        q = request.query_params
        filters = {key: q.get(key, "") for key in ("worker", "mini_batch", "level", "stream", "regex")}
        return "logs.html", {"name": name, "s": summary, "workers": workers, "filters": filters,
                             "levels": ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], "streams": data.STREAMS}

    def compare_page(self, request: Request) -> tuple[str, dict[str, Any]]:
        chosen = [*request.query_params.getlist("run")][:2]
        if len(chosen) != 2:
            raise HTTPException(404, "compare needs two runs: tick two runs on the runs page")
        with self.store(chosen[0]) as a, self.store(chosen[1]) as b:
            compared = data.compare(a, b)
        return "compare.html", {"names": chosen, "c": compared}

    # ------------------------------------------------------------------ downloads and JSON
    async def chrome_trace(self, request: Request) -> Response:
        name = request.path_params["run"]

        def build() -> str:
            from pipeobs.explorer.chrome import chrome_trace

            with self.store(name) as conn:
                return json.dumps(chrome_trace(conn), allow_nan=False, separators=(",", ":"))

        body = await run_in_threadpool(build)
        return Response(body, media_type="application/json",
                        headers={"content-disposition": f'attachment; filename="{_filename(name)}.trace.json"'})

    def timeline(self, request: Request) -> Any:
        q = request.query_params
        with self.store(request.path_params["run"]) as conn:
            return data.timeline(conn, _float(q, "start"), _float(q, "end"), _int(q, "width", 1200) or 1200)

    def logs(self, request: Request) -> Any:
        q = request.query_params
        with self.store(request.path_params["run"]) as conn:
            return data.log_page(conn, after=_int(q, "after", None), before=_int(q, "before", None),
                                 limit=_int(q, "limit", 200) or 200, worker=q.get("worker") or None,
                                 mini_batch=_int(q, "mini_batch", None), level=q.get("level") or None,
                                 stream=q.get("stream") or None, regex=q.get("regex") or None)

    def progress(self, request: Request) -> Any:
        with self.store(request.path_params["run"]) as conn:
            return data.progress(conn)

    def series(self, request: Request) -> Any:
        name = request.query_params.get("name")
        if not name:
            raise ConfigError("name the metric: ?name=METRIC")
        with self.store(request.path_params["run"]) as conn:
            return data.series(conn, name, _int(request.query_params, "points", 600) or 600)


# ----------------------------------------------------------------------------- helpers
def _base(request: Request) -> str:
    """The app's own prefix (``/ui`` when mounted inside the collector), whatever route answers."""
    return str(request.scope.get(BASE_KEY, ""))


def _float(q: Any, key: str) -> float | None:
    text = q.get(key)
    if text in (None, ""):
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"'{key}' must be a number (epoch seconds), not '{text}'") from None
    if not math.isfinite(value):
        raise ConfigError(f"'{key}' must be a finite number")
    return value


def _int(q: Any, key: str, default: int | None) -> int | None:
    text = q.get(key)
    if text in (None, ""):
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"'{key}' must be a whole number, not '{text}'") from None
    if abs(value) > LARGEST:
        raise ConfigError(f"'{key}' is out of range: {text}")
    return value


def _json(value: Any) -> str:
    """Strict JSON: NaN and infinities become strings (browsers' JSON.parse refuses them)."""
    from pipeobs.explorer.terminal import json_text

    return json_text(value)


def _filename(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "run"


def _seconds(value: Any) -> str:
    from pipeobs.explorer.render import seconds

    return seconds(value) if isinstance(value, int | float) else "-"


def _utc(value: Any) -> str:
    from pipeobs.explorer.render import utc

    return utc(value) if isinstance(value, int | float) else "-"


def _number(value: Any) -> str:
    return "-" if value is None else data.shown_value(value)
