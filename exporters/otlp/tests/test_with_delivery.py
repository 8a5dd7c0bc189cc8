"""OtlpExporter under pipeobs's delivery layer (retries, Retry-After, deadline) and a real collector."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeobs.export.delivery import Delivery
from pipeobs_otlp import OtlpExporter
from pipeobs_otlp.testing import OtlpHttpCollector, Reply


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


class TestWithDelivery:
    def test_a_collector_that_recovers_gets_everything(self, tmp_path: Path, records: Any) -> None:
        """Two 503s, then the delivery layer's retries deliver every record exactly once."""
        busy = Reply(503, {"Retry-After": "0.1"})
        collector = OtlpHttpCollector(busy, busy)
        with collector:
            delivery = Delivery(OtlpExporter(endpoint=collector.endpoint, timeout=5), tmp_path / "spool")
            for number in range(20):
                delivery.submit(records.log(text=f"line {number}"))
            counts = delivery.close(10)

        assert counts["delivered"] == 20
        assert counts["dropped"] == counts["spooled"] == 0
        bodies = [
            log.body.string_value
            for request in collector.logs()
            for log in request.resource_logs[0].scope_logs[0].log_records
        ]
        assert sorted(bodies, key=lambda b: int(b.split()[1])) == [f"line {n}" for n in range(20)]

    def test_a_hanging_collector_does_not_hold_the_deadline(self, tmp_path: Path, records: Any) -> None:
        """With a request hanging, close() returns at its deadline and spools the batch."""
        collector = OtlpHttpCollector(Reply(hang=True))
        with collector:
            delivery = Delivery(OtlpExporter(endpoint=collector.endpoint, timeout=5), tmp_path / "spool")
            delivery.submit(records.span())
            wait_until(lambda: len(collector.received) == 1)
            started = time.monotonic()
            counts = delivery.close(0.5)
            elapsed = time.monotonic() - started

        assert counts["spooled"] == 1
        assert elapsed < 2
