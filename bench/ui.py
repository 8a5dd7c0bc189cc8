"""(j) The web explorer at scale: ``pipeobs ui`` over a large run, measured in a real browser (issue 13).

The run is the one (i) synthesizes (``explorer.build_store``: M mini-batches on 8 workers, L
captured lines, written row by row through ``Store``); full size M = 100,000, L = 1,000,000.
``pipeobs ui`` serves its folder in a subprocess (port 0, the URL read from its first line) and
Debian's chromium, headless and driven by Playwright, loads each page cold (a fresh browser
context: no cache, no cookies) ``repeats`` times; the median is reported. Each time is read in
the page, from navigation start (``performance.now()``): the runs page at ``DOMContentLoaded``
(its table is server-rendered), the run page when ``app.js`` sets ``data-timeline-ready`` (the
timeline and its minimap drawn), the logs page when it sets ``data-logs-ready`` (the first rows
shown). A mutation observer injected before any page script records the moment the attribute is
set, so polling from Python adds nothing to the figure.

Also measured: the bytes of the timeline JSON for three views (the whole run at 1400 px, 1/100 of
the run, and the widest view the server still sends as single bars), the server's RSS (psutil)
after all loads and its peak (``VmHWM``), and the peer in the same run: ``pipeobs trace RUN`` and
``pipeobs logs RUN`` to their first line (``explorer.measure``).

``explain_ui`` (a missed target, or any smoke run) profiles the server side: every request the
three pages make, in process through the ASGI app, timed and under ``cProfile``.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import json
import os
import pstats
import re
import select
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from bench.common import (
    MB,
    REPO,
    BenchError,
    Section,
    Target,
    child_env,
    median,
    pipeobs_command,
    proc_status_kb,
    ratio,
    run_child,
)
from bench.explorer import STEP_ID, WORKERS

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1400, "height": 1000}
TIMELINE_WIDTH = 1400
PAGE_SECONDS = 1.0
LOGS_SECONDS = 0.5
VIEW_MB = 2.0
SERVER_RSS_MB = 200
LOAD_TIMEOUT_MS = 120_000
# Injected before any page script: the page-relative time at which app.js sets each readiness flag.
READY_SCRIPT = """
(() => {
  const ready = {};
  window.__benchReady = ready;
  new MutationObserver(() => {
    const body = document.body;
    if (!body) return;
    for (const key of ["timelineReady", "logsReady"]) {
      if (body.dataset[key] === "true" && !(key in ready)) ready[key] = performance.now();
    }
  }).observe(document, {subtree: true, attributes: true, attributeFilter: ["data-timeline-ready", "data-logs-ready"]});
})();
"""
PAGE_FIGURES = """
() => {
  const nav = performance.getEntriesByType("navigation")[0];
  return {
    ready: window.__benchReady,
    html_end: nav.responseEnd, dom_content_loaded: nav.domContentLoadedEventEnd,
    requests: performance.getEntriesByType("resource")
      .map(r => ({url: r.name, type: r.initiatorType, start: r.startTime, end: r.responseEnd,
                  bytes: r.encodedBodySize})),
    error: (document.getElementById("ui-error") || {}).textContent || null,
    rows: document.querySelectorAll("#runs .run-row, #log-rows .log-row, #timeline rect.bar, #timeline rect.cell")
      .length,
  };
}
"""


# ---------------------------------------------------------------------- the server
@contextmanager
def serving(root: str) -> Iterator[tuple[str, int]]:
    """``pipeobs ui ROOT --port 0`` in a subprocess: yields its base URL (no trailing slash) and pid."""
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen([*pipeobs_command(), "ui", root, "--port", "0"], stdout=subprocess.PIPE,
                                   stderr=errors, env=child_env())
        try:
            yield _announced_url(process, errors), process.pid
        finally:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _announced_url(process: subprocess.Popen[bytes], errors: Any, timeout: float = 30.0) -> str:
    """The URL in the server's first line (``pipeobs ui: http://127.0.0.1:PORT/ ...``)."""
    assert process.stdout is not None
    deadline, text = time.monotonic() + timeout, b""
    while b"\n" not in text and time.monotonic() < deadline:
        readable, _, _ = select.select([process.stdout], [], [], 0.1)
        if readable:
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                break
            text += chunk
    found = re.search(rb"(http://[^\s/]+)/", text)
    if found is None:
        errors.seek(0)
        raise BenchError(f"pipeobs ui printed no URL within {timeout:.0f} s: {text!r} {errors.read()[-1000:]!r}")
    return found.group(1).decode()


def _get(url: str) -> tuple[bytes, float]:
    """GET over loopback, never through a proxy: the body and the seconds it took."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    began = time.perf_counter()
    with opener.open(url, timeout=120) as response:
        body = response.read()
    return body, time.perf_counter() - began


# ---------------------------------------------------------------------- the browser (child process)
def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise BenchError("Debian's chromium is missing: apt-get install chromium")
    return path


def _load(browser: Any, url: str, flag: str | None) -> dict[str, Any]:
    """One cold load of ``url`` in a fresh context, ready at ``flag`` (set by app.js) or else DOMContentLoaded."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    context = browser.new_context(viewport=VIEWPORT)
    try:
        context.add_init_script(READY_SCRIPT)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        began = time.perf_counter()
        page.goto(url, wait_until="domcontentloaded", timeout=LOAD_TIMEOUT_MS)
        if flag is not None:
            try:
                page.wait_for_function(f"() => window.__benchReady.{flag} !== undefined", timeout=LOAD_TIMEOUT_MS,
                                       polling=10)
            except PlaywrightTimeout:
                figures = page.evaluate(PAGE_FIGURES)
                raise BenchError(f"{url} never set {flag}: {figures['error'] or errors}") from None
        wall = time.perf_counter() - began
        figures = page.evaluate(PAGE_FIGURES)
    finally:
        context.close()
    if errors or figures["error"] or figures["rows"] == 0:
        raise BenchError(f"{url}: {figures['rows']} rows shown, errors: {errors or figures['error']}")
    ready_ms = figures["dom_content_loaded"] if flag is None else figures["ready"][flag]
    return {"seconds": ready_ms / 1000, "wall": wall, "html_end": figures["html_end"] / 1000,
            "requests": [{**r, "start": r["start"] / 1000, "end": r["end"] / 1000} for r in figures["requests"]]}


def _timeline_views(api: str) -> list[dict[str, Any]]:
    """Bytes of the timeline JSON: the whole run, 1/100 of it, and the widest view still sent as single bars."""

    def view(label: str, start: float | None = None, end: float | None = None) -> dict[str, Any]:
        query = {"width": TIMELINE_WIDTH, **({"start": repr(start), "end": repr(end)} if start is not None else {})}
        body, seconds = _get(f"{api}?{urlencode(query)}")
        data = json.loads(body)
        items = len(data["density"]) if data["mode"] == "density" else len(data["bars"])
        return {"label": label, "bytes": len(body), "seconds": seconds, "mode": data["mode"], "items": items,
                "attempts": data["attempts_in_view"], "run": data["run"]}

    whole = view(f"whole run, width {TIMELINE_WIDTH}")
    start, end = whole["run"]["start"], whole["run"]["end"]
    middle, span = (start + end) / 2, end - start
    hundredth = view("1/100 of the run", middle - span / 200, middle + span / 200)
    if whole["mode"] == "bars":
        return [whole, hundredth, {**whole, "label": "widest single-bars view: the whole run"}]
    # Bisect the view's span (around the middle) for the widest one still sent as bars.
    best = hundredth if hundredth["mode"] == "bars" else None
    narrow, wide = (span / 100, span) if best is not None else (0.0, span / 100)
    for _ in range(10):
        half = (narrow + wide) / 4
        probe = view("widest single-bars view", middle - half, middle + half)
        if probe["mode"] == "bars":
            narrow, best = 2 * half, probe
        else:
            wide = 2 * half
    if best is None:
        raise BenchError("no view of the run came back as single bars")
    return [whole, hundredth, {**best, "label": f"widest single-bars view ({best['attempts']:,} attempts)"}]


def measure_web(root: str, run: str, repeats: int) -> dict[str, Any]:
    """The three pages loaded cold ``repeats`` times each, the timeline views, then the server's RSS."""
    import psutil
    from playwright.sync_api import sync_playwright

    pages = {"runs": ("/", None), "run": (f"/runs/{quote(run)}", "timelineReady"),
             "logs": (f"/runs/{quote(run)}/logs", "logsReady")}
    with serving(root) as (base, pid), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        try:
            loads = {name: [_load(browser, base + path, flag) for _ in range(repeats)]
                     for name, (path, flag) in pages.items()}
        finally:
            browser.close()
        views = _timeline_views(f"{base}/api/runs/{quote(run)}/timeline")
        rss = psutil.Process(pid).memory_info().rss
        peak = (proc_status_kb(pid, "VmHWM") or 0) * 1024
    return {"loads": loads, "views": views, "rss": rss, "peak": peak}


# ---------------------------------------------------------------------- the section
def bench_ui(sizes: dict[str, Any]) -> Section:
    mini_batches, lines, repeats = sizes["ui_mini_batches"], sizes["ui_lines"], sizes["repeats"]
    section = Section(
        "ui",
        f"(j) The web explorer at scale: `pipeobs ui` over {lines:,} lines and {mini_batches:,} mini-batches, in "
        "headless chromium",
        f"The run of (i), at this size: {mini_batches:,} mini-batches on {WORKERS} workers with "
        f"{lines // mini_batches:,} captured lines each, written row by row through `pipeobs.record.store.Store`. "
        "`pipeobs ui` serves its folder in a subprocess; Debian's chromium (headless, Playwright) loads each page "
        f"cold (a fresh browser context) {repeats} time(s), median shown. Times are read in the page, from "
        "navigation start: the runs page at DOMContentLoaded (its table is server-rendered), the run page when "
        "app.js flags the timeline (and its minimap) drawn (the run has no metrics, so no charts), the logs page "
        "when it flags the first rows shown. Timeline JSON is fetched with urllib. Server RSS: psutil after the page "
        "loads and the timeline requests; peak: `VmHWM`. "
        "The peer: `pipeobs trace RUN` and `pipeobs logs RUN` to their first line (stdout to a pipe, as in (i)).",
    )
    with tempfile.TemporaryDirectory(prefix="bench-ui-") as tmp:
        run_dir = Path(tmp) / STEP_ID
        run_dir.mkdir()
        store = run_child("explorer:build_store", 900, run_dir=str(run_dir), mini_batches=mini_batches, lines=lines)
        web = run_child("ui:measure_web", 900, root=tmp, run=STEP_ID, repeats=repeats)
        cli = {name: run_child("explorer:measure", 1800, argv=[*pipeobs_command(), command, str(run_dir)])
               for name, command in (("pipeobs trace RUN", "trace"), ("pipeobs logs RUN", "logs"))}
    _add_rows(section, web, cli)
    _add_targets(section, web)
    section.notes.append(f"The store: {store['lines']:,} lines and {store['spans']:,} spans, synthesized through "
                         f"`Store` (`explorer.build_store`) in {store['seconds']:.1f} s before any measurement.")
    section.notes.append(_walls(web["loads"]))
    section.data = {"web": web, "cli": cli, "store": store, "mini_batches": mini_batches, "lines": lines}
    return section


def _ready(web: dict[str, Any], page: str) -> float:
    return median([load["seconds"] for load in web["loads"][page]])


def _add_rows(section: Section, web: dict[str, Any], cli: dict[str, dict[str, Any]]) -> None:
    trace, logs = cli["pipeobs trace RUN"], cli["pipeobs logs RUN"]
    peers = {"runs": None, "run": ("pipeobs trace RUN", trace), "logs": ("pipeobs logs RUN", logs)}
    labels = {"runs": "runs page: table shown", "run": "run page: timeline drawn",
              "logs": "logs page: first rows shown"}
    for page, label in labels.items():
        runs = ", ".join(f"{load['seconds']:.3f}" for load in web["loads"][page])
        peer = peers[page]
        versus = f"{ratio(_ready(web, page), peer[1]['first_line'])} `{peer[0]}` first line" if peer else ""
        section.add(label, _ready(web, page), "s", versus, f"cold loads: {runs} s")
    for name, result in cli.items():
        detail = f"{result['lines']:,} lines, {result['bytes'] / MB:.1f} MB of output"
        section.add(f"{name}: first line", result["first_line"], "s")
        section.add(f"{name}: total", result["seconds"], "s", "", detail)
        section.add(f"{name}: peak RSS", result["peak"] / MB, "MB")
    for view in web["views"]:
        what = "density cells" if view["mode"] == "density" else "bars"
        section.add(f"timeline JSON, {view['label']}", view["bytes"] / 1024, "KB", "",
                    f"mode {view['mode']}: {view['items']:,} {what} for {view['attempts']:,} attempts; "
                    f"{view['seconds'] * 1000:.0f} ms")
    section.add("server RSS after the loads", web["rss"] / MB, "MB")
    section.add("server peak RSS (VmHWM)", web["peak"] / MB, "MB")


def _add_targets(section: Section, web: dict[str, Any]) -> None:
    for page, label in (("runs", "runs page"), ("run", "run page")):
        seconds = _ready(web, page)
        section.targets.append(Target(f"{label} first render < {PAGE_SECONDS:.0f} s", f"{seconds:.2f} s",
                                      seconds < PAGE_SECONDS))
    largest = max(web["views"], key=lambda v: v["bytes"])
    section.targets.append(Target(f"timeline data < {VIEW_MB:.0f} MB per view",
                                  f"{largest['bytes'] / MB:.2f} MB at most ({largest['label']})",
                                  largest["bytes"] / MB < VIEW_MB))
    seconds = _ready(web, "logs")
    section.targets.append(Target(f"logs page first rows < {LOGS_SECONDS} s", f"{seconds:.2f} s",
                                  seconds < LOGS_SECONDS))
    section.targets.append(Target(f"server RSS < {SERVER_RSS_MB} MB", f"{web['peak'] / MB:.0f} MB peak",
                                  web["peak"] / MB < SERVER_RSS_MB))


def _walls(loads: dict[str, list[dict[str, Any]]]) -> str:
    shown = "; ".join(f"{page} {median([load['wall'] for load in runs]):.2f} s" for page, runs in loads.items())
    return (f"Cross-check, Python's clock around `goto` and the wait for the flag (adds Playwright's round trips and "
            f"10 ms polling), medians: {shown}.")


# ---------------------------------------------------------------------- what bounds it
def explain_ui(section: Section, sizes: dict[str, Any], _smoke: bool, _sections: dict[str, Section]) -> None:
    """The browser's split of each page's time, then every request the pages make, served in process and profiled."""
    web = section.data["web"]
    requests = _page_requests(web)
    with tempfile.TemporaryDirectory(prefix="bench-ui-profile-") as tmp:
        run_dir = Path(tmp) / STEP_ID
        run_dir.mkdir()
        run_child("explorer:build_store", 900, run_dir=str(run_dir), mini_batches=section.data["mini_batches"],
                  lines=section.data["lines"])
        profile = run_child("ui:profile_server", 900, root=tmp, requests=requests, repeats=sizes["repeats"])
    text = ["In the browser (the median load of each page; seconds from navigation start):",
            _fence(_browser_split(web)),
            f"Server side: each request the pages made, served in process through the ASGI app (no HTTP, no browser; "
            f"handlers run inline so cProfile sees them), median of {sizes['repeats']}, then once more under cProfile: "
            "the pipeobs functions by cumulative time, and the time inside sqlite3 calls and template rendering.",
            _fence(profile["text"]), f"Profile kept in {profile['file']}."]
    section.profile = "\n\n".join(text)


def _fence(text: str) -> str:
    return f"```\n{text}\n```"


def _median_load(loads: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(loads, key=lambda load: load["seconds"])[len(loads) // 2]


def _browser_split(web: dict[str, Any]) -> str:
    lines = []
    for page, loads in web["loads"].items():
        load = _median_load(loads)
        lines.append(f"{page} page: HTML received {load['html_end']:.3f}")
        lines += [f"  {r['type']:6} {r['start']:.3f}-{r['end']:.3f} {r['bytes'] / 1024:6.0f} KB  "
                  f"{_shown_path(r['url'])}" for r in load["requests"]]
        lines.append(f"  ready {load['seconds']:.3f}")
    return "\n".join(lines)


def _path(url: str) -> str:
    return re.sub(r"^https?://[^/]+", "", url)


def _shown_path(url: str) -> str:
    return _path(url).replace(quote(STEP_ID), "RUN")


def _page_requests(web: dict[str, Any]) -> dict[str, list[str]]:
    """Per page, the paths it requested in its median load: the HTML, then its style sheet, script and fetches."""
    run = quote(STEP_ID)
    paths = {"runs": "/", "run": f"/runs/{run}", "logs": f"/runs/{run}/logs"}
    return {page: [paths[page], *(_path(r["url"]) for r in _median_load(loads)["requests"])]
            for page, loads in web["loads"].items()}


def profile_server(root: str, requests: dict[str, list[str]], repeats: int) -> dict[str, Any]:
    """Serve ``requests`` through the app in this thread: wall time per request, then a cProfile per page."""
    import httpx

    from bench.profiles import OUT
    from pipeobs.ui import app as ui_app

    async def inline(func: Any, *args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    ui_app.run_in_threadpool = inline  # type: ignore[assignment]  # one thread, so cProfile sees the handlers
    asgi = ui_app.create_ui_app(root)

    async def serve_all() -> tuple[list[str], dict[str, pstats.Stats]]:
        lines, stats = [], {}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://127.0.0.1") as client:
            for page, paths in requests.items():
                for path in paths:
                    timings, size = [], 0
                    for _ in range(repeats):
                        began = time.perf_counter()
                        response = await client.get(path)
                        timings.append(time.perf_counter() - began)
                        if response.status_code != 200:
                            raise BenchError(f"GET {path}: {response.status_code} {response.text[:300]}")
                        size = len(response.content)
                    lines.append(f"{page:5} {median(timings) * 1000:8.1f} ms {size / 1024:8.0f} KB  "
                                 f"GET {_shown_path(path)}")
                profiler = cProfile.Profile()
                profiler.enable()
                for path in paths:
                    await client.get(path)
                profiler.disable()
                stats[page] = pstats.Stats(profiler, stream=io.StringIO())
        return lines, stats

    lines, stats = asyncio.run(serve_all())
    text = ["page  median     size      request", *lines]
    for page, page_stats in stats.items():
        text += ["", _summary(page, page_stats)]
    first, *others = stats.values()
    merged = first.add(*others)  # after the summaries: add() changes ``first`` in place
    OUT.mkdir(parents=True, exist_ok=True)
    kept = OUT / "ui-server.prof"
    merged.dump_stats(str(kept))
    return {"text": "\n".join(text), "file": str(kept.relative_to(REPO) if kept.is_relative_to(REPO) else kept)}


def _summary(page: str, stats: pstats.Stats, top: int = 12) -> str:
    """The page's requests once: pipeobs functions by cumulative time; sqlite3 and Jinja2's share."""
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = max(entry[3] for entry in raw.values())
    sqlite = sum(entry[2] for func, entry in raw.items() if func[0] == "~" and "sqlite3" in func[2])
    render = sum(entry[3] for func, entry in raw.items() if func[2] == "render" and "jinja2" in func[0])
    lines = [f"{page} page, its requests once under cProfile: {total * 1000:.1f} ms; inside sqlite3 calls "
             f"{sqlite * 1000:.1f} ms (rows a Python loop steps count as its own time); Jinja2 render "
             f"{render * 1000:.1f} ms. Top pipeobs functions (calls, cumulative ms, own ms):"]
    ours = [(func, entry) for func, entry in raw.items() if "/pipeobs/" in func[0]]
    for func, (_cc, calls, tottime, cumtime, _callers) in sorted(ours, key=lambda kv: -kv[1][3])[:top]:
        where = "pipeobs/" + func[0].rsplit("/pipeobs/", 1)[1]
        lines.append(f"  {calls:>7,}  {cumtime * 1000:8.1f}  {tottime * 1000:8.1f}  {where}:{func[1]}({func[2]})")
    return "\n".join(lines)
