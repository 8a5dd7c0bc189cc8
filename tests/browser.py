"""A real browser for the web explorer's tests: Debian's chromium (headless), driven by Playwright.

``explorer(root)`` serves ``pipeobs ui`` over a runs folder on 127.0.0.1 (port 0) in a thread;
``Browser.page()`` opens a page that records console errors, page errors and dialogs (an XSS that
ran would show as a dialog). A missing chromium fails the test (``.ci/run`` installs it).
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium is missing: apt-get install chromium (bash .ci/run installs it)")
    return path


@dataclass
class Watched:
    """A page and what went wrong on it."""

    page: Any
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.dialogs == [], f"a dialog opened (script ran): {self.dialogs}"
        assert self.errors == [], f"browser console errors: {self.errors}"


class Browser:
    def __init__(self, browser: Any) -> None:
        self.browser = browser

    def page(self, width: int = 1400, height: int = 1000) -> Watched:
        page = self.browser.new_page(viewport={"width": width, "height": height}, accept_downloads=True)
        watched = Watched(page)
        page.on("console", lambda m: watched.errors.append(f"{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: watched.errors.append(f"pageerror: {e}"))

        def dialog(d: Any) -> None:
            watched.dialogs.append(d.message)
            d.dismiss()

        page.on("dialog", dialog)
        return watched


@contextmanager
def launched() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            yield Browser(browser)
        finally:
            browser.close()


@contextmanager
def explorer(root: Path, **options: Any) -> Iterator[str]:
    """``pipeobs ui root`` on a free loopback port, in a thread; yields its base URL."""
    from pipeobs.ui.server import create_server

    ready = threading.Event()
    server = create_server(root, "127.0.0.1", 0, lambda port: ready.set(), **options)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert ready.wait(15), "the explorer did not start"
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.should_exit = True
        thread.join(10)


def demo_screenshot(out: Path, workdir: Path, browser: Browser | None = None) -> None:
    """Run the demo job in ``workdir`` and save its run page, as the README shows it, to ``out``."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "pipeobs", "demo", "--dir", str(workdir), "--images", "200"],
                   check=True, capture_output=True, timeout=300)
    with explorer(workdir / "runs") as url, (launched() if browser is None else nullcontext(browser)) as found:
        watched = found.page(width=1280, height=900)
        page = watched.page
        page.goto(url + "/")
        page.locator("a.run-link").first.click()
        page.locator("body[data-timeline-ready='true']").wait_for(timeout=20_000)
        page.wait_for_timeout(500)  # the charts draw after the timeline
        page.screenshot(path=str(out), full_page=False)
        watched.assert_clean()


if __name__ == "__main__":  # python -m tests.browser docs/ui-run-page.png
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        demo_screenshot(Path(sys.argv[1]), Path(scratch) / "demo")
    print(f"wrote {sys.argv[1]}")
