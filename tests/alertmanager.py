"""A real Alertmanager (Debian's ``prometheus-alertmanager``) on 127.0.0.1, for tests that send it alerts."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BINARY = "prometheus-alertmanager"
CONFIG = "route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n"


@dataclass
class Alertmanager:
    url: str

    def alerts(self, **labels: str) -> list[dict[str, Any]]:
        """``GET /api/v2/alerts`` filtered by ``labels``."""
        query = urllib.parse.urlencode([("filter", f'{k}="{v}"') for k, v in labels.items()])
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts?{query}", timeout=5) as response:
            return json.load(response)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Alertmanager]:
    """Alertmanager with a tmp storage dir, clustering off, listening on a free port."""
    binary = shutil.which(BINARY)
    if binary is None:
        pytest.fail(f"{BINARY} is not installed: apt-get install prometheus-alertmanager (.ci/run does)")
    config = tmp_path / "alertmanager.yml"
    config.write_text(CONFIG)
    port = _free_port()
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.path={tmp_path / 'am-data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    manager = Alertmanager(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{manager.url}/-/ready", timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{BINARY} did not become ready on port {port}") from None
                time.sleep(0.05)
        yield manager
    finally:
        process.terminate()
        process.wait(10)
