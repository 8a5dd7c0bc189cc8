"""A real Alertmanager (Debian's ``prometheus-alertmanager``) on 127.0.0.1, for tests that send it alerts."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.prom import need, serve

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


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Alertmanager]:
    """Alertmanager with a tmp storage dir, clustering off, listening on a free port."""
    config = tmp_path / "alertmanager.yml"
    config.write_text(CONFIG)
    argv = [need(BINARY), f"--config.file={config}", f"--storage.path={tmp_path / 'am-data'}",
            "--cluster.listen-address="]
    with serve(argv, tmp_path, "/-/ready") as (url, _process):
        yield Alertmanager(url)
