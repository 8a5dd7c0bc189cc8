"""Pending spans: while a run is live, an invocation still running is in the store as a span without
an end (the web view draws it as a growing bar); the span that ends it replaces it, exporters never
see it, and a resumed run drops those a killed driver left."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeobs.errors import RunDirError
from pipeobs.explorer.runs import connect_readonly
from tests.conftest import write_files, write_rendezvous, write_script
from tests.test_run_lifecycle import wait_gone

GATED = """
import rendezvous
def run(mini_batch):
    rendezvous.wait_for({gate!r}, timeout=60)
    return mini_batch
"""
PENDING_SQL = "SELECT * FROM spans WHERE end_time IS NULL AND name = 'mini_batch'"


def read(run_dir: Path, sql: str, *args: object) -> list[sqlite3.Row]:
    """Rows from a read-only connection, as a live reader (the web view) opens it."""
    conn = connect_readonly(run_dir)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


class LiveRun:
    """``pipeobs run`` of one mini-batch on one worker; its run() waits for a gate file."""

    def __init__(self, folder: Path, *options: str, env: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.gate = folder / "gate"
        write_rendezvous(folder)
        write_script(folder, GATED.format(gate=str(self.gate)))
        write_files(folder, 1)
        self.driver = subprocess.Popen(
            [sys.executable, "-m", "pipeobs", "run", "score.py", "--input", "data", "--mini-batch-size", "1",
             "--process-count-per-node", "1", "--name", "live", *options],
            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
        )
        self.run_dir: Path | None = None

    def pending(self) -> sqlite3.Row:
        """The pending mini_batch span, once the store shows it (the run is live meanwhile)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self.run_dir = self.run_dir or next((self.folder / "runs" / "live").glob("*"), None)
            if self.run_dir is not None:
                try:
                    rows = read(self.run_dir, PENDING_SQL)
                except RunDirError:  # the driver has not created the store yet
                    rows = []
                if rows:
                    return rows[0]
            if self.driver.poll() is not None:
                raise AssertionError(f"the driver ended early: {self.driver.communicate()}")
            time.sleep(0.02)
        raise AssertionError("no pending mini_batch span appeared in the store")

    def finish(self) -> tuple[int, str]:
        """Open the gate and wait for the driver: its return code and output."""
        self.gate.touch()
        stdout, stderr = self.driver.communicate(timeout=120)
        return self.driver.returncode, stdout + stderr

    def spans(self, sql: str, *args: object) -> list[sqlite3.Row]:
        assert self.run_dir is not None
        return read(self.run_dir, sql, *args)

    def close(self) -> None:
        self.gate.touch()  # a worker a killed driver left behind runs on and exits
        if self.driver.poll() is None:
            self.driver.kill()
        self.driver.communicate()
        if self.run_dir is not None:
            for row in read(self.run_dir, "SELECT pid FROM workers"):
                wait_gone(row["pid"])


@pytest.fixture
def live() -> Iterator[list[LiveRun]]:
    runs: list[LiveRun] = []
    try:
        yield runs
    finally:
        for run in runs:
            run.close()


def no_pending_left(run: LiveRun) -> bool:
    return run.spans("SELECT * FROM spans WHERE end_time IS NULL OR attributes LIKE '%pipeobs.pending%'") == []


class TestPendingSpans:
    def test_a_running_mini_batch_is_a_pending_span_its_finished_span_replaces(
        self, live: list[LiveRun], tmp_path: Path
    ) -> None:
        """While run() runs, a read-only reader sees its mini_batch span with no end; after, that span ended OK."""
        run = LiveRun(tmp_path)
        live.append(run)

        pending = run.pending()
        attributes = json.loads(pending["attributes"])
        code, output = run.finish()
        ended = run.spans("SELECT * FROM spans WHERE span_id = ?", pending["span_id"])
        job = run.spans("SELECT * FROM spans WHERE name = 'job'")

        assert (pending["status"], pending["kind"], pending["end_time"]) == ("UNSET", "CONSUMER", None)
        assert (pending["worker"], pending["mini_batch_id"], pending["attempt"]) == ("0/process000", 0, 1)
        assert attributes["pipeobs.pending"] is True
        assert (attributes["pipeobs.worker"], attributes["pipeobs.mini_batch_id"], attributes["pipeobs.attempt"]) == \
            ("0/process000", 0, 1)
        assert attributes["pipeobs.step_id"] == run.spans("SELECT step_id FROM runs")[0][0]
        assert code == 0, output
        assert len(ended) == 1 and ended[0]["status"] == "OK" and ended[0]["end_time"] >= ended[0]["start_time"]
        assert (ended[0]["trace_id"], ended[0]["parent_span_id"]) == (pending["trace_id"], pending["parent_span_id"])
        assert pending["parent_span_id"] == job[0]["span_id"]
        assert "pipeobs.pending" not in json.loads(ended[0]["attributes"])
        assert no_pending_left(run)

    def test_exporters_never_see_a_pending_span(self, live: list[LiveRun], tmp_path: Path) -> None:
        """With --export jsonl, the exporter gets the mini_batch span once, ended, never the pending one."""
        target = tmp_path / "exported.jsonl"
        run = LiveRun(tmp_path, "--export", "jsonl", env={"PIPEOBS_EXPORT_JSONL": str(target)})
        live.append(run)

        pending = run.pending()
        code, output = run.finish()
        spans = [r for r in map(json.loads, target.read_text().splitlines()) if r["type"] == "span"]

        assert code == 0, output
        assert [s["end"] is not None for s in spans if s["span_id"] == pending["span_id"]] == [True]
        assert [s for s in spans if s["end"] is None or "pipeobs.pending" in s["attributes"]] == []

    def test_a_killed_attempt_replaces_its_pending_span(self, live: list[LiveRun], tmp_path: Path) -> None:
        """run_invocation_timeout kills the worker: the driver's killed span (ERROR) takes the pending row."""
        run = LiveRun(tmp_path, "--run_invocation_timeout", "4", "--run_max_try", "1")
        live.append(run)

        pending = run.pending()
        run.driver.communicate(timeout=120)  # the gate stays shut: the attempt times out
        ended = run.spans("SELECT * FROM spans WHERE span_id = ?", pending["span_id"])
        attributes = json.loads(ended[0]["attributes"])

        assert len(ended) == 1 and ended[0]["status"] == "ERROR" and ended[0]["end_time"] is not None
        assert (attributes["pipeobs.status"], attributes["pipeobs.mini_batch_id"]) == ("KILLED", 0)
        assert "did not finish in 4 seconds" in ended[0]["status_message"]
        assert no_pending_left(run)

    def test_a_resumed_run_drops_the_pending_spans_a_killed_driver_left(
        self, live: list[LiveRun], tmp_path: Path
    ) -> None:
        """SIGKILL of the driver mid-mini-batch leaves a pending span; --resume deletes it and runs the mini-batch."""
        run = LiveRun(tmp_path)
        live.append(run)
        pending = run.pending()
        run.driver.kill()
        run.driver.communicate()
        left = run.spans("SELECT span_id FROM spans WHERE end_time IS NULL")
        run.gate.touch()

        resumed = subprocess.run([sys.executable, "-m", "pipeobs", "run", "--resume", str(run.run_dir)],
                                 cwd=tmp_path, capture_output=True, text=True, timeout=120)

        assert [r["span_id"] for r in left] == [pending["span_id"]]
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert run.spans("SELECT * FROM spans WHERE span_id = ?", pending["span_id"]) == []
        assert len(run.spans("SELECT * FROM spans WHERE name = 'mini_batch' AND status = 'OK'")) == 1
        assert no_pending_left(run)
