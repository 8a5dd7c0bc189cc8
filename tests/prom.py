"""Real Prometheus parts for tests: a Prometheus server and a Pushgateway on 127.0.0.1.

Both come from Debian's packages (``apt-get install prometheus prometheus-pushgateway``, as
``.ci/run`` does); a test that needs one is skipped where the binary is missing. Neither takes
port 0, so a free port is found by binding a socket, and a start that loses the port to another
process is retried on a new one. Each part runs in its own folder (configuration, storage, log)
and is stopped when the ``with`` block ends.

A live pipeobs run for them to scrape is :func:`gated_run`: ``pipeobs run --metrics-port 0`` in
a process of its own, whose last mini-batch waits until the test opens the gate.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import write_files, write_rendezvous, write_script

START_TRIES = 5
READY_SECONDS = 60.0


def need(binary: str) -> str:
    """The path of a Debian Prometheus binary; the test fails naming the package when it is missing
    (``.ci/run`` installs them: a test that skipped there would prove nothing)."""
    path = shutil.which(binary)
    if path is None:
        package = {"promtool": "prometheus"}.get(binary, binary)
        pytest.fail(f"{binary} is not installed: apt-get install {package} (.ci/run does)")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode())


@dataclass
class Server:
    """A started Prometheus part: its base URL and process."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class Prometheus(Server):
    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar, as one sample) the query API returns for ``expr`` now."""
        body = json.loads(get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
        assert body["status"] == "success", body
        data = body["data"]
        return data["result"] if data["resultType"] == "vector" else [{"metric": {}, "value": data["result"]}]

    def wait_for(self, expr: str, seconds: float = 60.0) -> list[dict[str, Any]]:
        """Poll ``expr`` until it returns a sample (a scrape or an evaluation may be due), or fail."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            result = self.query(expr)
            if result:
                return result
            time.sleep(0.2)
        raise AssertionError(f"{expr!r} returned nothing within {seconds} s; Prometheus log:\n{self.log.read_text()[-3000:]}")


@contextlib.contextmanager
def serve(argv: Sequence[str], folder: Path, ready_path: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start ``argv`` + ``--web.listen-address`` on a free port, retrying when the port is lost; stop it after."""
    log = folder / "server.log"
    for _ in range(START_TRIES):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with open(log, "wb") as out:
            process = subprocess.Popen([*argv, f"--web.listen-address=127.0.0.1:{port}"], stdout=out,
                                       stderr=subprocess.STDOUT, cwd=folder)
        try:
            if _wait_ready(url + ready_path, process):
                yield url, process
                return
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if "address already in use" not in log.read_text():
            raise AssertionError(f"{argv[0]} did not start:\n{log.read_text()[-3000:]}")
    raise AssertionError(f"{argv[0]} found no free port in {START_TRIES} tries")


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        try:
            get(url, timeout=1.0)
            return True
        except OSError:
            time.sleep(0.05)
    return False


@contextlib.contextmanager
def prometheus(folder: Path, targets: Sequence[str] = (), rule_files: Sequence[Path] = (),
               alertmanagers: Sequence[str] = (), interval: str = "1s") -> Iterator[Prometheus]:
    """A Prometheus scraping ``targets`` (``host:port``) and evaluating ``rule_files`` every ``interval``."""
    binary = need("prometheus")
    folder.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [{"job_name": "pipeobs", "static_configs": [{"targets": list(targets)}]}],
        "rule_files": [str(p) for p in rule_files],
    }
    if alertmanagers:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    argv = [binary, f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}"]
    with serve(argv, folder, "/-/ready") as (url, process):
        yield Prometheus(url, process, folder / "server.log")


@contextlib.contextmanager
def pushgateway(folder: Path) -> Iterator[Server]:
    """A Pushgateway (kept in memory)."""
    binary = need("prometheus-pushgateway")
    folder.mkdir(parents=True, exist_ok=True)
    with serve([binary], folder, "/-/ready") as (url, process):
        yield Server(url, process, folder / "server.log")


# A job for Prometheus to scrape: every attempt logs a user metric; the last mini-batch fails
# its first attempt, and its retry (the last task queued, so no other waits behind it) holds
# the job open until the gate opens.
GATED_SCRIPT = """
import os, rendezvous
from azureml.core import Run

def run(mini_batch):
    names = [os.path.basename(p) for p in mini_batch]
    Run.get_context().log("accuracy", 0.95)
    if "f005.txt" in names:
        if not os.path.exists("failed-once"):
            open("failed-once", "w").close()
            raise ValueError("the first attempt of f005 fails")
        rendezvous.wait_for({gate!r}, timeout=100)
    return names
"""


@dataclass
class GatedRun:
    """``pipeobs run --metrics-port 0`` held open at its last mini-batch; :meth:`finish` opens the gate."""

    step: str
    port: int
    process: subprocess.Popen[str]
    gate: Path
    folder: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def scrape(self) -> str:
        return get(f"http://{self.target}/metrics")

    def finish(self) -> tuple[int, str]:
        """Open the gate; the exit code and stderr of the run."""
        self.gate.touch()
        _, err = self.process.communicate(timeout=100)
        return self.process.returncode, err

    def run_dir(self) -> Path:
        (found,) = (self.folder / "runs" / self.step).iterdir()
        return found


@contextlib.contextmanager
def gated_run(folder: Path, step: str, *extra: str) -> Iterator[GatedRun]:
    """Start the gated job (2 workers, 6 mini-batches of one file, resource samples every second)."""
    folder.mkdir(parents=True, exist_ok=True)
    gate = folder / "gate"
    write_rendezvous(folder)
    write_script(folder, GATED_SCRIPT.format(gate=str(gate)))
    write_files(folder, 6)
    argv = [sys.executable, "-m", "pipeobs", "run", "score.py", "--input", "data", "--name", step,
            "--mini-batch-size", "1", "--process-count-per-node", "2", "--run-max-try", "3",
            "--resource-monitor-interval", "1", "--metrics-port", "0", *extra]
    process = subprocess.Popen(argv, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    run = None
    try:
        assert process.stderr is not None
        for line in process.stderr:
            found = re.search(r"metrics for Prometheus on http://127\.0\.0\.1:(\d+)/metrics", line)
            if found:
                run = GatedRun(step, int(found.group(1)), process, gate, folder)
                break
        assert run is not None, f"pipeobs run said no metrics port (exit {process.wait()})"
        yield run
    finally:
        gate.touch()
        if process.poll() is None:
            process.communicate(timeout=100)
