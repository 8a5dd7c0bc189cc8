"""The web explorer in a real browser: Debian's chromium (headless) over real runs.

Each page is loaded for a finished run and for a live one; the DOM is checked (lanes = worker
processes, bars = mini-batches, user text shown as text, no dialog, no console error), the pages
are clicked through (runs -> run -> mini-batch -> logs) and each is saved as a screenshot in the
test's tmp dir.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.browser import Browser, Watched, demo_screenshot, explorer, launched
from tests.conftest import RunJob, write_files, write_rendezvous, write_script
from tests.test_collector import wait_for

XSS = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(2)>"

HOSTILE = f'''
import logging
from azureml.core import Run

XSS, IMG = {XSS!r}, {IMG!r}

def init():
    pass

def run(mini_batch):
    run = Run.get_context()
    print(f"print {{XSS}} {{IMG}}")
    logging.getLogger("hostile").warning("log %s %s", XSS, IMG)
    run.log(f"metric {{XSS}}", 1.5)
    run.tag(f"tag {{IMG}}", XSS)
    if any(str(path).endswith("f002.txt") for path in mini_batch):
        raise ValueError(f"boom {{XSS}} {{IMG}}")
    return [str(path) for path in mini_batch]
'''


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launched() as found:
        yield found


def ready(watched: Watched, flag: str) -> None:
    """Wait for the page's script to say it has drawn (locators only: the CSP forbids evaluated strings)."""
    attribute = "".join(f"-{c.lower()}" if c.isupper() else c for c in flag)
    watched.page.locator(f"body[data-{attribute}='true']").wait_for(timeout=20_000)


def eventually(check: Callable[[], Any], timeout: float = 30.0, what: str = "the page to change") -> Any:
    return wait_for(check, timeout=timeout, what=what)


def shot(watched: Watched, folder: Path, name: str) -> None:
    path = folder / "screenshots" / f"{name}.png"
    path.parent.mkdir(exist_ok=True)
    watched.page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 5_000


class TestFinishedRun:
    def test_click_through_runs_run_mini_batch_logs_with_user_text_shown_as_text(
            self, run_job: RunJob, browser: Browser, tmp_path: Path) -> None:
        job = run_job(HOSTILE, files=6, mini_batch_size=1, run_max_try=1, error_threshold=-1)
        workers = {r[0] for r in job.query("SELECT worker FROM workers")}
        watched = browser.page()
        page = watched.page

        with explorer(tmp_path / "runs") as url:
            page.goto(url + "/")
            assert page.locator("tr.run-row").count() == 1
            shot(watched, tmp_path, "runs")
            page.locator("a.run-link").click()
            ready(watched, "timelineReady")
            shot(watched, tmp_path, "run")

            assert page.locator("#timeline .lane-label").count() == len(workers) == 2
            assert page.locator("#timeline rect.bar").count() == 6
            assert page.locator("#timeline rect.bar.st-failed").count() == 1
            assert page.locator("figure.chart svg").count() >= 1  # charts drawn
            body = page.inner_text("body")
            assert f"boom {XSS} {IMG}" in body  # the first error, as text
            assert f"metric {XSS}" in body  # a user metric's chart

            page.locator("#timeline rect.bar.st-failed").click()
            page.wait_for_url("**/mini-batches/*")
            shot(watched, tmp_path, "mini-batch")
            body = page.inner_text("body")
            assert "Traceback (most recent call last)" in body and f"ValueError: boom {XSS} {IMG}" in body
            assert f"print {XSS} {IMG}" in body and f"log {XSS} {IMG}" in body
            assert f"tag {IMG}" in body

            page.get_by_text("this mini-batch's lines").click()
            ready(watched, "logsReady")
            shot(watched, tmp_path, "logs")
            rows = page.locator("#log-rows .log-row")
            assert rows.count() >= 2
            assert all(f"{XSS} {IMG}" in text for text in rows.locator(".text").all_inner_texts())

            assert page.locator("img").count() == 0  # no user <img> became an element anywhere we went
        watched.assert_clean()

    def test_logs_page_filters_and_pages_a_large_run_with_a_bounded_dom(
            self, run_job: RunJob, browser: Browser, tmp_path: Path) -> None:
        job = run_job("def run(mini_batch):\n    for i in range(2500):\n        print('line', i)\n"
                      "    return [str(p) for p in mini_batch]\n", files=4, mini_batch_size=1)
        total, last_id = job.query("SELECT count(*), max(id) FROM log_lines")[0]
        watched = browser.page()
        page = watched.page

        with explorer(tmp_path / "runs") as url:
            page.goto(f"{url}/runs/{job.run_dir.name}/logs?regex=line%20249%5Cd")
            ready(watched, "logsReady")
            assert page.locator("#log-rows .log-row").count() == 40  # 'line 2490'..'line 2499' in 4 mini-batches
            page.goto(f"{url}/runs/{job.run_dir.name}/logs")
            ready(watched, "logsReady")
            rows = page.locator("#log-rows")
            last_row = page.locator("#log-rows .log-row").last

            def scrolled(to: str, row: Any) -> int:
                rows.evaluate(f"r => {{ r.scrollTop = {to}; }}")
                page.wait_for_timeout(50)
                return int(row.get_attribute("data-id") or 0)

            eventually(lambda: scrolled("r.scrollHeight", last_row) == last_id, timeout=60, what="the last line")
            held = page.locator("#log-rows .log-row").count()
            first_held = int(page.locator("#log-rows .log-row").first.get_attribute("data-id") or 0)
            eventually(lambda: scrolled("0", page.locator("#log-rows .log-row").first) == 1, timeout=60,
                       what="the first line again")
            held_back = page.locator("#log-rows .log-row").count()
        assert total >= 10_000 and first_held > 1
        assert held <= 1_500 and held_back <= 1_500  # the DOM stays bounded both ways
        watched.assert_clean()

    def test_compare_two_runs_from_the_runs_page(self, run_job: RunJob, browser: Browser, tmp_path: Path) -> None:
        source = "def run(mini_batch):\n    return [str(p) for p in mini_batch]\n"
        run_job(source, files=4, mini_batch_size=1, arguments=["--threshold", "0.5"])
        run_job(source, files=4, mini_batch_size=2, arguments=["--threshold", "0.9"])
        watched = browser.page()
        page = watched.page

        with explorer(tmp_path / "runs") as url:
            page.goto(url + "/")
            boxes = page.locator("input[name=run]")
            assert boxes.count() == 2
            boxes.nth(0).check()
            boxes.nth(1).check()
            page.locator("#compare-button").click()
            page.wait_for_url("**/compare?*")
            shot(watched, tmp_path, "compare")
            config = page.inner_text("#compare-config")
        assert "config.mini_batch_size" in config and "inputs.script_arguments" in config and "0.9" in config
        watched.assert_clean()

    def test_download_chrome_trace(self, run_job: RunJob, browser: Browser, tmp_path: Path) -> None:
        job = run_job("def run(mini_batch):\n    return [str(p) for p in mini_batch]\n", files=3, mini_batch_size=1)
        watched = browser.page()
        page = watched.page

        with explorer(tmp_path / "runs") as url:
            page.goto(f"{url}/runs/{job.run_dir.name}")
            ready(watched, "timelineReady")
            with page.expect_download() as download:
                page.locator("#download-trace").click()
            trace = json.loads(Path(download.value.path()).read_text())
        assert list(trace)[0] == "traceEvents"
        assert sum(1 for e in trace["traceEvents"] if e.get("name", "").startswith("mini_batch")) == 3
        watched.assert_clean()


FAKE_PERFETTO = b"""<!doctype html><title>perfetto</title><script>
window.addEventListener("message", event => {
  if (event.data === "PING") { event.source.postMessage("PONG", event.origin); return; }
  if (event.data && event.data.perfetto) {
    const trace = JSON.parse(new TextDecoder().decode(event.data.perfetto.buffer));
    document.title = "received " + trace.traceEvents.length + " events: " + event.data.perfetto.title;
  }
});
</script>"""


@pytest.fixture
def fake_perfetto() -> Iterator[str]:
    """A page that speaks Perfetto's postMessage protocol (PING/PONG, then the trace buffer), on loopback."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the handler's name is http.server's
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.end_headers()
            self.wfile.write(FAKE_PERFETTO)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_open_in_perfetto_hands_the_trace_over_by_post_message(
        run_job: RunJob, browser: Browser, tmp_path: Path, fake_perfetto: str) -> None:
    job = run_job("def run(mini_batch):\n    return [str(p) for p in mini_batch]\n", files=3, mini_batch_size=1)
    watched = browser.page()
    page = watched.page

    with explorer(tmp_path / "runs", perfetto_url=fake_perfetto) as url:
        page.goto(f"{url}/runs/{job.run_dir.name}")
        ready(watched, "timelineReady")
        with page.expect_popup() as popup:
            page.locator("#open-perfetto").click()
        title = eventually(lambda: popup.value.title() if popup.value.title().startswith("received") else None,
                           what="the trace to reach the Perfetto page")
        status = page.inner_text("#perfetto-status")
    assert title.endswith(f"events: {job.run_dir.name}") and int(title.split()[1]) > 3
    assert status == "sent to Perfetto"
    watched.assert_clean()


def test_a_large_run_is_aggregated_by_pixel_then_zooms_to_bars_with_a_deep_link(
        browser: Browser, tmp_path: Path) -> None:
    from bench.explorer import STEP_ID, build_store

    run_dir = tmp_path / "runs" / "bench" / STEP_ID
    run_dir.mkdir(parents=True)
    build_store(str(run_dir), 20_000, 20_000)
    watched = browser.page()
    page = watched.page

    with explorer(tmp_path / "runs") as url:
        page.goto(f"{url}/runs/{STEP_ID}")
        ready(watched, "timelineReady")
        assert page.locator("#timeline .lane-label").count() == 8
        assert page.locator("#timeline rect.cell").count() > 100 and page.locator("#timeline rect.bar").count() == 0
        assert "aggregated per pixel" in page.inner_text("#view-range")
        for _ in range(4):  # 1/16 of the run: about 1,250 mini-batches in view, drawn one by one
            before = page.inner_text("#view-range")
            page.locator("#zoom-in").click()
            eventually(lambda before=before: page.inner_text("#view-range") != before, what="the zoomed view")
        eventually(lambda: page.locator("#timeline rect.bar").count() > 1_000, what="single bars")
        assert page.locator("#timeline rect.cell").count() == 0
        deep_link, shown = page.url, page.inner_text("#view-range")
        assert "start=" in deep_link and "end=" in deep_link

        again = browser.page()
        again.page.goto(deep_link)
        ready(again, "timelineReady")
        assert again.page.inner_text("#view-range") == shown
    watched.assert_clean()
    again.assert_clean()


class TestLiveRun:
    def test_running_mini_batches_grow_lines_stream_and_the_end_shows_without_reload(
            self, browser: Browser, tmp_path: Path) -> None:
        write_rendezvous(tmp_path)
        release = tmp_path / "release"
        script = write_script(tmp_path, f'''
            import os

            import rendezvous

            def run(mini_batch):
                name = os.path.basename(mini_batch[0])
                print("before the gate", name, flush=True)
                rendezvous.wait_for({str(release)!r}, timeout=90)
                print("after the gate", name, flush=True)
                return [name]
        ''')
        data = write_files(tmp_path, 4)
        command = [sys.executable, "-m", "pipeobs", "run", str(script), "--input", str(data), "--mini-batch-size", "1",
                   "--process-count-per-node", "2", "--runs-dir", str(tmp_path / "runs")]
        with subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as driver, \
                explorer(tmp_path / "runs") as url:
            try:
                store = wait_for(lambda: next((tmp_path / "runs").glob("*/*/pipeobs.db"), None), timeout=60)
                run_name = store.parent.name
                wait_for(lambda: _count(store, "SELECT count(*) FROM log_lines WHERE text LIKE 'before the gate%'") == 2,
                         timeout=60)
                run_page = browser.page()
                page = run_page.page
                page.goto(f"{url}/runs/{run_name}")
                ready(run_page, "timelineReady")
                page.locator("#timeline rect.bar.open").nth(1).wait_for(timeout=20_000)  # both running mini-batches
                open_bar = page.locator("#timeline rect.bar.open").first
                first_width = float(open_bar.get_attribute("width") or 0)
                eventually(lambda: float(open_bar.get_attribute("width") or 0) > first_width,
                           what="the open bar to grow as the run goes on")
                assert "Running" in page.inner_text("#run-status")
                shot(run_page, tmp_path, "live-run")

                logs_page = browser.page()
                logs_page.page.goto(f"{url}/runs/{run_name}/logs")
                ready(logs_page, "logsReady")
                assert logs_page.page.locator("#log-rows .log-row").count() == 2

                with page.expect_event("load", timeout=60_000):  # the page reloads itself when the job ends
                    release.touch()
                ready(run_page, "timelineReady")
                eventually(lambda: logs_page.page.locator("#log-rows .log-row").count() == 8,
                           what="the lines after the gate to stream in")
                assert "Completed" in page.inner_text("#run-status")
                assert page.locator("#timeline rect.bar.open").count() == 0
                assert page.locator("#timeline rect.bar").count() == 4
                assert page.locator("#slowest tbody tr").count() == 4  # the tables are the finished run's
                assert page.inner_text("#run-batches").startswith("4 done")
                shot(run_page, tmp_path, "live-run-ended")
            finally:
                release.touch()
                driver.wait(60)
        assert driver.returncode == 0
        run_page.assert_clean()
        logs_page.assert_clean()


def _count(store: Path, sql: str) -> int:
    try:
        conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
        try:
            return conn.execute(sql).fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return -1


def test_the_demo_job_run_page_screenshot(browser: Browser, tmp_path: Path) -> None:
    """The harness that makes the README's screenshot works (``python -m tests.browser FILE`` writes it)."""
    out = tmp_path / "run-page.png"

    demo_screenshot(out, tmp_path / "demo", browser)

    assert out.stat().st_size > 20_000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.path.isdir(tmp_path / "demo" / "runs")
