"""The web explorer's server: pages, JSON endpoints, escaping, the CSP and the runs-folder boundary.

Served on 127.0.0.1 (a thread of this process) over the synthetic store of ``test_explorer`` (4 mini-batches
on 3 workers: a retry after a timeout, a failed one, one still running) and over real runs.
The pages in a real browser are in ``test_ui_browser.py``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeobs.record.store import Store
from pipeobs.ui import data
from pipeobs.ui.app import CSP
from pipeobs.ui.server import off_loopback_warning
from tests.browser import explorer
from tests.test_explorer import STEP_ID, T0, W0, W1, W2, build_store

XSS = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(2)>"


@contextmanager
def serving(root: Path) -> Iterator[httpx.Client]:
    with explorer(root) as url, httpx.Client(base_url=url, timeout=30) as session:
        yield session


@pytest.fixture
def client(tmp_path: Path) -> Iterator[httpx.Client]:
    build_store(tmp_path)
    with serving(tmp_path / "runs") as session:
        yield session


def api(client: httpx.Client, path: str, **params: Any) -> Any:
    response = client.get(f"/api/runs/{STEP_ID}/{path}", params=params)
    assert response.status_code == 200, response.text
    return response.json()


class TestTimeline:
    def test_one_lane_per_worker_process_and_one_bar_per_attempt(self, client: httpx.Client) -> None:
        found = api(client, "timeline", width=800)

        assert [lane["worker"] for lane in found["lanes"]] == [W0, W1, W2]
        assert found["mode"] == "bars"
        ended = [b for b in found["bars"] if not b[7]]
        assert sorted((b[3], b[4], b[5]) for b in ended) == [
            (0, 1, "RUN_DONE"), (1, 1, "RUN_TIMEOUT"), (1, 2, "RUN_DONE"), (2, 1, "RUN_EXCEPTION"), (2, 2, "RUN_EXCEPTION")]
        lane_of = {(b[3], b[4]): found["lanes"][b[0]]["worker"] for b in ended}
        assert lane_of[(1, 1)] == W1 and lane_of[(2, 2)] == W2

    def test_a_running_mini_batch_is_an_open_bar_up_to_the_latest_time_known(self, client: httpx.Client) -> None:
        found = api(client, "timeline")

        running = [b for b in found["bars"] if b[7]]
        assert len(running) == 1
        lane, start, end, mb, attempt, status, _, _ = running[0]
        assert (found["lanes"][lane]["worker"], mb, attempt, status) == (W2, 3, 1, "RUNNING")
        assert start == T0 + 8.0 and end == pytest.approx(T0 + 9.5)  # the latest point the store holds
        assert found["run"]["live"] is True

    def test_retries_timeouts_and_kills_are_markers_init_is_a_phase(self, client: httpx.Client) -> None:
        found = api(client, "timeline")

        kinds = {m[2] for m in found["markers"]}
        assert "retry" in kinds
        assert [(p[1], found["lanes"][p[0]]["worker"]) for p in found["phases"]] == [("init", W0)]

    def test_a_view_holds_only_the_attempts_inside_it(self, client: httpx.Client) -> None:
        found = api(client, "timeline", start=T0 + 4.4, end=T0 + 5.2)

        assert [(b[3], b[4]) for b in found["bars"]] == [(1, 2)]
        assert found["view"] == {"start": T0 + 4.4, "end": T0 + 5.2, "width": 1200}

    def test_past_the_bar_limit_each_lane_is_aggregated_by_pixel(self, client: httpx.Client,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(data, "BAR_LIMIT", 2)

        found = api(client, "timeline", width=100)

        assert found["mode"] == "density"
        assert sum(cell[2] for cell in found["density"]) == 5  # every attempt counted once
        assert sum(cell[3] for cell in found["density"]) == 3  # the failed ones
        assert all(0 <= cell[1] < 100 and 0 < cell[4] <= 1 for cell in found["density"])
        assert [b[3] for b in found["bars"]] == [3]  # running ones stay bars

    @pytest.mark.parametrize(("params", "message"), [
        ({"start": "soon"}, "'start' must be a number"),
        ({"start": T0 + 5, "end": T0 + 1}, "start < end"),
        ({"width": "wide"}, "'width' must be a whole number"),
        ({"end": "inf"}, "finite"),
    ])
    def test_a_bad_parameter_is_a_400_naming_it(self, client: httpx.Client, params: dict[str, Any], message: str) -> None:
        response = client.get(f"/api/runs/{STEP_ID}/timeline", params=params)

        assert response.status_code == 400
        assert message in response.json()["error"]


class TestLogsEndpoint:
    def test_pages_forward_and_back_by_id(self, client: httpx.Client) -> None:
        first = api(client, "logs", limit=4)
        rest = api(client, "logs", after=first["scanned_to"], limit=100)
        back = api(client, "logs", before=rest["lines"][0]["id"], limit=2)

        texts = [line["text"] for line in first["lines"] + rest["lines"]]
        assert len(texts) == 10 and texts[0] == "init called"
        assert first["more"] is True and rest["more"] is False
        assert [line["id"] for line in back["lines"]] == [first["lines"][2]["id"], first["lines"][3]["id"]]
        assert first["live"] is True and first["max_id"] == 10

    @pytest.mark.parametrize(("params", "expected"), [
        ({"worker": W2}, ["bad pixel at 3,4", "debug detail", "still scoring mb 3"]),
        ({"worker": "process001"}, ["scoring mb 1 slowly"]),
        ({"mini_batch": 1}, ["scoring mb 1 slowly", "scoring mb 1"]),
        ({"level": "ERROR"}, ["bad pixel at 3,4", "bad pixel at 3,4"]),
        ({"stream": "stderr"}, ["warning from C"]),
        ({"regex": r"mb \d$"}, ["scoring mb 0", "scoring mb 1", "still scoring mb 3"]),
    ])
    def test_filters(self, client: httpx.Client, params: dict[str, Any], expected: list[str]) -> None:
        assert [line["text"] for line in api(client, "logs", **params)["lines"]] == expected

    def test_a_sparse_regex_scans_a_bounded_number_of_rows_and_says_where_it_stopped(
            self, client: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(data, "LOG_SCAN_MAX", 3)

        found = api(client, "logs", regex="still")
        then = api(client, "logs", regex="still", after=found["scanned_to"])

        assert found["lines"] == [] and found["scanned_to"] == 3 and found["more"] is True
        assert then["scanned_to"] == 6

    @pytest.mark.parametrize(("params", "message"), [
        ({"regex": "("}, "invalid regular expression"),
        ({"level": "LOUD"}, "LOUD"),
        ({"stream": "stdin"}, "unknown stream 'stdin'"),
        ({"mini_batch": "x"}, "'mini_batch' must be a whole number"),
    ])
    def test_a_bad_filter_is_a_400_naming_it(self, client: httpx.Client, params: dict[str, Any], message: str) -> None:
        response = client.get(f"/api/runs/{STEP_ID}/logs", params=params)

        assert response.status_code == 400
        assert message in response.json()["error"]


class TestOtherEndpoints:
    def test_progress_of_a_live_run(self, client: httpx.Client) -> None:
        found = api(client, "progress")

        assert found["status"] == "Running" and found["live"] is True
        assert found["mini_batches"]["total"] == 4 and found["log_max_id"] == 10

    def test_series_per_worker_averaged_into_buckets(self, tmp_path: Path) -> None:
        run_dir = build_store(tmp_path)
        store = Store(run_dir / "pipeobs.db", STEP_ID)
        for i in range(1000):
            store.insert("metrics", {"time": T0 + i / 100, "worker": W0, "name": "acc", "kind": "scalar", "value": i % 2})
        store.flush()
        store.close()

        with serving(tmp_path / "runs") as session:
            found = api(session, "series", name="acc", points=10)
            rss = api(session, "series", name="pipeobs_process_rss_bytes")

        (series,) = found["series"]
        assert series["key"] == W0 and len(series["points"]) == 10
        assert all(v == pytest.approx(0.5, abs=0.02) for _, v in series["points"])
        assert {s["key"] for s in rss["series"]} == {W0, W1}

    def test_chrome_trace_download(self, client: httpx.Client) -> None:
        response = client.get(f"/runs/{STEP_ID}/trace.json")

        assert response.status_code == 200
        assert "attachment" in response.headers["content-disposition"]
        trace = response.json()
        assert list(trace)[0] == "traceEvents" and trace["otherData"]["step_id"] == STEP_ID


class TestPages:
    def test_each_page_renders_for_a_live_run(self, client: httpx.Client) -> None:
        for path in ("/", f"/runs/{STEP_ID}", f"/runs/{STEP_ID}/logs?worker={W0}", f"/runs/{STEP_ID}/mini-batches/2",
                     f"/runs/{STEP_ID}/spans/m2b", f"/compare?run={STEP_ID}&run={STEP_ID}"):
            response = client.get(path)
            assert response.status_code == 200, path
            assert response.headers["content-type"].startswith("text/html")

    def test_the_mini_batch_page_holds_attempts_errors_and_lines(self, client: httpx.Client) -> None:
        html = client.get(f"/runs/{STEP_ID}/mini-batches/2").text

        assert "bad pixel again" in html and "score.py:12 in run" in html
        assert html.count('class="attempt"') == 2
        assert "Traceback (most recent call last)" in html

    def test_runs_are_filtered_and_sorted_by_query_parameters(self, tmp_path: Path) -> None:
        build_store(tmp_path)
        second = tmp_path / "runs" / "step-b" / "step-b_20270116_080000_bbbbbb"
        second.mkdir(parents=True)
        store = Store(second / "pipeobs.db", second.name)
        store.insert_run({"step_id": second.name, "step_name": "step-b", "status": "Completed", "started_at": T0 + 86400,
                          "ended_at": T0 + 86400 + 99})
        store.flush()
        store.close()
        order = re.compile(r'class="run-link" href="/runs/([^"]+)"')

        with serving(tmp_path / "runs") as app:
            newest_first = order.findall(app.get("/").text)
            by_duration = order.findall(app.get("/", params={"sort": "duration", "order": "desc"}).text)
            by_step = order.findall(app.get("/", params={"sort": "step", "order": "asc"}).text)
            running = app.get("/", params={"status": "Running"}).text.count('class="run-row"')
            completed = order.findall(app.get("/", params={"status": "Completed"}).text)
            other = app.get("/", params={"step": "other"}).text.count('class="run-row"')

        assert newest_first == [second.name, STEP_ID]
        assert by_duration == [second.name, STEP_ID]  # 99 s, then the live run (0 s: its start is ahead of now)
        assert by_step == [STEP_ID, second.name]
        assert (running, completed, other) == (1, [second.name], 0)

    @pytest.mark.parametrize("path", [
        "/runs/..%2F..%2F..%2Fetc%2Fpasswd", "/runs/../../etc/passwd", "/runs/%2e%2e", "/runs/nope",
        "/runs/nope/logs", f"/runs/{STEP_ID}/mini-batches/99", f"/runs/{STEP_ID}/spans/nope",
        "/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2Fdata.py", "/api/runs/..%2Fx/timeline",
    ])
    def test_nothing_outside_the_runs_folder_is_reachable(self, client: httpx.Client, path: str) -> None:
        response = client.get(path)

        assert response.status_code == 404, path
        assert "import" not in response.text and "root:" not in response.text

    @pytest.mark.parametrize(("path", "status"), [
        (f"/runs/{STEP_ID}/mini-batches/99999999999999999999999", 404),
        (f"/api/runs/{STEP_ID}/logs?after=99999999999999999999999", 400),
        (f"/api/runs/{STEP_ID}/logs?mini_batch=-99999999999999999999999", 400),
        (f"/api/runs/{STEP_ID}/timeline?width=99999999999999999999999", 400),
    ])
    def test_numbers_sqlite_cannot_hold_are_refused_not_a_500(self, client: httpx.Client, path: str,
                                                              status: int) -> None:
        response = client.get(path)

        assert response.status_code == status
        assert response.headers["content-security-policy"] == CSP

    def test_a_host_header_other_than_loopback_is_refused(self, client: httpx.Client) -> None:
        """A page on another site that rebinds its name to 127.0.0.1 cannot read runs."""
        assert client.get("/", headers={"host": "attacker.example:8080"}).status_code == 400
        assert client.get(f"/api/runs/{STEP_ID}/logs", headers={"host": "attacker.example"}).status_code == 400
        assert client.get("/", headers={"host": "localhost:1234"}).status_code == 200

    def test_a_runs_folder_with_hash_and_question_mark_in_its_path_is_read_and_never_written(
            self, tmp_path: Path) -> None:
        odd = tmp_path / "a#b?c"
        build_store(odd)
        before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

        with serving(odd / "runs") as session:
            runs = session.get("/").text
            timeline = api(session, "timeline")

        assert runs.count('class="run-row"') == 1 and "Running" in runs
        assert len(timeline["lanes"]) == 3
        after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if not p.name.endswith(("-wal", "-shm")))
        assert after == before  # no store appeared where the path was cut

    def test_every_response_carries_the_content_security_policy(self, client: httpx.Client) -> None:
        for path in ("/", f"/runs/{STEP_ID}", "/static/app.js", f"/api/runs/{STEP_ID}/progress", "/runs/nope"):
            headers = client.get(path).headers
            assert headers["content-security-policy"] == CSP, path
            assert headers["x-content-type-options"] == "nosniff"
        assert "'unsafe-inline'" not in CSP and "'unsafe-eval'" not in CSP and "script-src 'self'" in CSP

    def test_no_page_has_inline_script_or_style(self, client: httpx.Client) -> None:
        for path in ("/", f"/runs/{STEP_ID}", f"/runs/{STEP_ID}/logs", f"/runs/{STEP_ID}/mini-batches/1"):
            html = client.get(path).text
            assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == [], path
            assert " style=" not in html and "<style" not in html and " on" + "click=" not in html


class TestEscaping:
    def test_user_text_is_escaped_in_every_page(self, tmp_path: Path) -> None:
        run_dir = build_store(tmp_path)
        store = Store(run_dir / "pipeobs.db", STEP_ID)
        hostile = f"{XSS} {IMG}"
        store.insert("log_lines", {"time": T0 + 9.6, "worker": W0, "stream": "stdout", "phase": "run",
                                   "mini_batch_id": 0, "attempt": 1, "text": hostile})
        store.insert("metrics", {"time": T0 + 9.6, "worker": W0, "phase": "run", "mini_batch_id": 0, "attempt": 1,
                                 "name": f"m {XSS}", "kind": "scalar", "value": 1.0})
        store.insert("metrics", {"time": T0 + 9.6, "worker": W0, "phase": "run", "mini_batch_id": 0, "attempt": 1,
                                 "name": f"t {IMG}", "kind": "tag", "value_json": json.dumps(XSS)})
        store.insert("attempts", {"mini_batch_id": 0, "attempt": 2, "worker": W0, "start_time": T0 + 9.7,
                                  "elapsed": 0.1, "status": "RUN_EXCEPTION", "error_type": "ValueError",
                                  "error_message": hostile, "traceback": f"Traceback\nValueError: {hostile}"})
        store.update_run(error=hostile, step_name=f"step {XSS}")
        store.flush()
        store.close()

        with serving(tmp_path / "runs") as app:
            pages = {path: app.get(path).text for path in (
                "/", f"/runs/{STEP_ID}", f"/runs/{STEP_ID}/mini-batches/0", f"/runs/{STEP_ID}/logs",
                f"/compare?run={STEP_ID}&run={STEP_ID}")}

        for path, html in pages.items():
            assert XSS not in html and IMG not in html, path
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, path
        mb_page = pages[f"/runs/{STEP_ID}/mini-batches/0"]
        assert "&lt;img src=x onerror=alert(2)&gt;" in mb_page  # the line, the tag's name, the error


class TestServing:
    def test_pipeobs_ui_prints_its_loopback_url_and_serves(self, tmp_path: Path) -> None:
        build_store(tmp_path)
        with subprocess.Popen([sys.executable, "-m", "pipeobs", "ui", str(tmp_path / "runs")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
            try:
                assert process.stdout is not None
                line = process.stdout.readline()
                url = re.search(r"http://127\.0\.0\.1:\d+/", line)
                assert url, line
                assert httpx.get(url.group(0) + f"runs/{STEP_ID}").status_code == 200
            finally:
                process.terminate()
                process.wait(10)

    def test_a_runs_dir_that_is_not_a_folder_is_a_one_line_error(self, tmp_path: Path) -> None:
        done = subprocess.run([sys.executable, "-m", "pipeobs", "ui", str(tmp_path / "missing")],
                              capture_output=True, text=True, timeout=60)

        assert done.returncode == 2
        assert done.stderr.count("\n") == 1 and "is not a folder" in done.stderr

    @pytest.mark.parametrize(("host", "warned"), [("127.0.0.1", False), ("::1", False), ("localhost", False),
                                                  ("0.0.0.0", True), ("192.168.1.5", True)])
    def test_a_non_loopback_host_is_warned_about(self, host: str, warned: bool) -> None:
        assert (off_loopback_warning(host) is not None) is warned

    def test_pipeobs_ui_on_every_interface_warns_on_stderr(self, tmp_path: Path) -> None:
        build_store(tmp_path)
        with subprocess.Popen([sys.executable, "-m", "pipeobs", "ui", str(tmp_path / "runs"), "--host", "0.0.0.0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
            try:
                assert process.stderr is not None and process.stdout is not None
                warning = process.stderr.readline()
                url = process.stdout.readline()
            finally:
                process.terminate()
                process.wait(10)
        assert warning.startswith("warning: listening on 0.0.0.0") and "no login" in warning
        assert "http://0.0.0.0:" in url

    def test_the_collector_serves_the_explorer_over_what_it_collects(self, tmp_path: Path) -> None:
        from pipeobs.collector import create_server

        ready = threading.Event()
        server = create_server(tmp_path / "collected", port=0, ready=lambda port: ready.set(), ui=True)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            assert ready.wait(15)
            base = f"http://127.0.0.1:{server.port}"
            span = {"resourceSpans": [{"resource": {"attributes": []}, "scopeSpans": [{"spans": [{
                "traceId": "4bf92f3577b34da6a3ce929d0e0e4736", "spanId": "00f067aa0ba902b7", "name": f"op {XSS}",
                "kind": 1, "startTimeUnixNano": "1800000000000000000", "endTimeUnixNano": "1800000001000000000"}]}]}]}
            assert httpx.post(f"{base}/v1/traces", json=span).status_code == 200
            runs = httpx.get(f"{base}/ui/")
            name = re.search(r'href="/ui/runs/([^"]+)"', runs.text)
            assert runs.status_code == 200 and name, runs.text
            page = httpx.get(f"{base}/ui/runs/{name.group(1)}/spans/00f067aa0ba902b7")
            assert page.status_code == 200 and "op &lt;script&gt;" in page.text
            assert httpx.get(f"{base}/ui/static/app.js").status_code == 200
            assert httpx.get(f"{base}/ui/runs/{name.group(1)}/trace.json").status_code == 200
        finally:
            server.should_exit = True
            thread.join(10)
