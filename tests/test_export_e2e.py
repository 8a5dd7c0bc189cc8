"""Runs exporting to a real local collector: correlation across, outages spooled, kills accounted."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import write_files, write_rendezvous, write_script
from tests.test_collector import running, wait_for

KEY = "00000000-0000-0000-0000-000000000001"
SCRIPT = """
import logging
from opentelemetry import trace
def run(mini_batch):
    with trace.get_tracer("user").start_as_current_span("score"):
        print("scored", len(mini_batch))
        logging.getLogger("user").warning("careful", extra={"custom_dimensions": {"batch": len(mini_batch)}})
    return mini_batch
"""
GATED = """
import os, rendezvous, score
def run(mini_batch):
    if max(os.path.basename(p) for p in mini_batch) >= "f010.txt":  # the first 10 finish before the kill
        rendezvous.wait_for({gate!r}, timeout=60)
    return score.run(mini_batch)
"""


def connection_string(port: int) -> str:
    return f"InstrumentationKey={KEY};IngestionEndpoint=http://127.0.0.1:{port}/"


def pipeobs(*args: str, cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeobs", *args], cwd=cwd, env={**os.environ, **env},
        capture_output=True, text=True, timeout=timeout,
    )


def query(db: Path, sql: str, *args: object) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def checkpoints(db: Path) -> list[sqlite3.Row]:
    try:
        return query(db, "SELECT * FROM exports WHERE action='checkpoint' AND emitted > 20")
    except sqlite3.OperationalError:  # the driver has not created the tables yet
        return []


def run_dir_of(root: Path) -> Path:
    return next(p.parent for p in (root / "runs").glob("*/*/pipeobs.db"))


@pytest.fixture
def refusing_socket() -> Iterator[socket.socket]:
    """A socket bound to a free port on 127.0.0.1 but not listening: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock


@pytest.fixture
def job(tmp_path: Path) -> Path:
    write_script(tmp_path, SCRIPT)
    write_files(tmp_path, 6)
    return tmp_path


class TestExportToCollector:
    @pytest.mark.parametrize("exporter", ["appinsights", "otlp"])
    def test_run_telemetry_arrives_with_the_same_ids(self, job: Path, exporter: str) -> None:
        """Spans and log lines of a run reach the collector with the run's trace and span ids."""
        with running(job / "collected") as server:
            env = {
                "APPLICATIONINSIGHTS_CONNECTION_STRING": connection_string(server.port),
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.port}",
            }
            proc = pipeobs("run", "score.py", "--input", "data", "--mini-batch-size", "2", "--export", exporter, cwd=job, env=env)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            run_db = run_dir_of(job) / "pipeobs.db"
            local = {r["span_id"]: r for r in query(run_db, "SELECT * FROM spans WHERE name IN ('mini_batch', 'score')")}
            collected_db = job / "collected" / "pipeobs.db"
            wanted = "SELECT * FROM spans WHERE span_id IN ({})".format(",".join("?" * len(local)))
            arrived = wait_for(
                lambda: (rows := query(collected_db, wanted, *local)) and len(rows) == len(local) and rows,
                what="the run's spans at the collector",
            )

        assert f"export {exporter}: emitted" in proc.stdout and "spooled 0, dropped 0" in proc.stdout
        for span in arrived:
            assert span["trace_id"] == local[span["span_id"]]["trace_id"]
        lines = query(collected_db, "SELECT * FROM log_lines WHERE text LIKE '%careful%'")
        mine = {(r["trace_id"], r["span_id"]) for r in query(run_db, "SELECT * FROM log_lines WHERE text = 'careful'")}
        assert {(r["trace_id"], r["span_id"]) for r in lines} == mine


class TestOutages:
    def test_refused_endpoint_spools_then_retry_delivers_everything(
        self, job: Path, refusing_socket: socket.socket
    ) -> None:
        """With the endpoint down the job still completes; export --retry later delivers all of it."""
        env = {"APPLICATIONINSIGHTS_CONNECTION_STRING": connection_string(refusing_socket.getsockname()[1])}

        proc = pipeobs("run", "score.py", "--input", "data", "--export", "appinsights", "--export-deadline", "1", cwd=job, env=env)

        assert proc.returncode == 0, proc.stdout + proc.stderr
        run_dir = run_dir_of(job)
        row = query(run_dir / "pipeobs.db", "SELECT * FROM exports WHERE action='run'")[0]
        assert row["delivered"] == 0 and row["spooled"] == row["emitted"] > 0 and row["dropped"] == 0
        assert f"pipeobs export --retry {run_dir}" in proc.stdout

        with running(job / "collected", refusing_socket):
            retry = pipeobs("export", str(run_dir), "--retry", cwd=job, env=env)

        assert retry.returncode == 0, retry.stdout + retry.stderr
        assert f"appinsights: delivered {row['emitted']} of {row['emitted']} spooled records, 0 still spooled" in retry.stdout
        assert not list((run_dir / "export-spool" / "appinsights").glob("*.jsonl"))

    def test_driver_killed_mid_export_is_accounted_on_resume(self, tmp_path: Path) -> None:
        """A driver killed while its endpoint hangs: on --resume the lost records are counted, the rest delivered."""
        gate = tmp_path / "driver-killed"
        write_rendezvous(tmp_path)
        write_script(tmp_path, SCRIPT)
        write_script(tmp_path, GATED.format(gate=str(gate)), "gated.py")
        write_files(tmp_path, 60)
        with hanging_endpoint() as port:
            env = {"APPLICATIONINSIGHTS_CONNECTION_STRING": connection_string(port)}
            cmd = [sys.executable, "-m", "pipeobs", "run", "gated.py", "--input", "data", "--mini-batch-size", "1",
                   "--process-count-per-node", "1", "--export", "appinsights", "--name", "killed"]
            driver = subprocess.Popen(cmd, cwd=tmp_path, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                db = wait_for(lambda: next(iter((tmp_path / "runs").glob("killed/*/pipeobs.db")), None), what="the store")
                wait_for(lambda: checkpoints(db), what="a checkpoint")
            finally:
                driver.send_signal(signal.SIGKILL)
                driver.wait()

        checkpoint = query(db, "SELECT * FROM exports WHERE action='checkpoint' ORDER BY rowid DESC LIMIT 1")[0]
        gate.touch()  # the resumed run finishes every mini-batch
        with running(tmp_path / "collected") as server:
            env = {"APPLICATIONINSIGHTS_CONNECTION_STRING": connection_string(server.port)}
            proc = pipeobs("run", "--resume", str(db.parent), cwd=tmp_path, env=env)

        assert proc.returncode == 0, proc.stdout + proc.stderr
        lost = query(db, "SELECT * FROM exports WHERE action='lost'")
        final = query(db, "SELECT * FROM exports WHERE action='run'")[-1]
        expected_lost = checkpoint["emitted"] + checkpoint["carried"] - checkpoint["delivered"] - checkpoint["spooled"] - checkpoint["dropped"]
        assert lost and lost[0]["dropped"] == expected_lost > 0
        assert final["spooled"] == 0 and final["dropped"] == 0
        assert final["delivered"] == final["emitted"] + final["carried"]
        assert "counted as dropped" in (db.parent / "azureml-logs" / "70_driver_log.txt").read_text()


class hanging_endpoint:  # noqa: N801 - a context manager used like a function
    """A TCP server on 127.0.0.1 that accepts requests and never answers."""

    def __enter__(self) -> int:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.stop = threading.Event()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()
        return self.sock.getsockname()[1]

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.held.append(conn)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for conn in self.held:
            conn.close()
        self.sock.close()
