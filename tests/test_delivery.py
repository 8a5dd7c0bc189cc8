"""Delivery: bounded queue, retries with backoff and Retry-After, spool, accounting, deadline."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from pipeobs.export import delivery as delivery_module
from pipeobs.export.base import ExportResult, Record
from pipeobs.export.delivery import Delivery, Spool
from tests.test_collector import wait_for


class FakeExporter:
    """Answers from a script of results; records what it received."""

    name = "fake"

    def __init__(self, script: list[str] | None = None, hang: threading.Event | None = None) -> None:
        self.script = list(script or [])
        self.received: list[Record] = []
        self.calls: list[float] = []
        self.hang = hang

    def export(self, records: Sequence[Record]) -> ExportResult:
        self.calls.append(time.monotonic())
        if self.hang is not None:
            self.hang.wait(30)
        step = self.script.pop(0) if self.script else "ok"
        if step == "down":
            return ExportResult.retry_all(len(records), "connection refused")
        if step == "retry-after":
            return ExportResult.retry_all(len(records), "429", retry_after=0.4)
        if step == "partial":  # first record refused for good, second retried, rest accepted
            self.received.extend(records[2:])
            return ExportResult(delivered=len(records) - 2, retry=[1], rejected=[(0, "400 bad envelope")])
        if step == "raise":
            raise ConnectionError("boom")
        self.received.extend(records)
        return ExportResult.ok(len(records))

    def shutdown(self) -> None:
        pass


def records(n: int) -> list[Record]:
    return [{"type": "log", "text": f"r{i}", "time": float(i)} for i in range(n)]


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delivery_module, "BACKOFF_BASE", 0.01)


class TestDelivery:
    def test_everything_delivered_and_counted(self, tmp_path: Path) -> None:
        """All submitted records are delivered; the counts say so."""
        exporter = FakeExporter()
        delivery = Delivery(exporter, tmp_path / "spool")

        for record in records(1000):
            delivery.submit(record)
        counts = delivery.close()

        assert counts == {"emitted": 1000, "carried": 0, "delivered": 1000, "spooled": 0, "dropped": 0}
        assert [r["text"] for r in exporter.received] == [f"r{i}" for i in range(1000)]

    def test_outage_then_recovery_loses_nothing(self, tmp_path: Path) -> None:
        """Refused connections are retried with backoff until the endpoint comes back."""
        exporter = FakeExporter(["down", "down", "raise", "ok"])
        delivery = Delivery(exporter, tmp_path / "spool")

        for record in records(10):
            delivery.submit(record)
        counts = delivery.close()

        assert counts["delivered"] == 10 and counts["dropped"] == 0
        assert len(exporter.calls) == 4

    def test_retry_after_is_honoured(self, tmp_path: Path) -> None:
        """A Retry-After answer delays the next try by at least that long."""
        exporter = FakeExporter(["retry-after", "ok"])
        delivery = Delivery(exporter, tmp_path / "spool")

        delivery.submit(records(1)[0])
        delivery.close()

        assert exporter.calls[1] - exporter.calls[0] >= 0.4

    def test_partial_answer_retries_only_what_failed(self, tmp_path: Path) -> None:
        """A 206-style answer: refused items are dropped with a reason, retryable ones resent."""
        exporter = FakeExporter(["partial", "ok"])
        delivery = Delivery(exporter, tmp_path / "spool")

        for record in records(5):
            delivery.submit(record)
        counts = delivery.close()

        assert counts == {"emitted": 5, "carried": 0, "delivered": 4, "spooled": 0, "dropped": 1}
        assert sorted(r["text"] for r in exporter.received) == ["r1", "r2", "r3", "r4"]
        assert delivery.drop_reasons == {"400 bad envelope": 1}

    def test_full_queue_spills_to_disk_and_is_delivered(self, tmp_path: Path) -> None:
        """Beyond max_queue, records go to the spool and are still delivered."""
        gate = threading.Event()
        exporter = FakeExporter(hang=gate)
        delivery = Delivery(exporter, tmp_path / "spool", max_queue=10, batch_size=5)

        for record in records(100):
            delivery.submit(record)
        gate.set()
        counts = delivery.close()

        assert counts["delivered"] == 100 and counts["spooled"] == 0
        assert sorted(r["text"] for r in exporter.received) == sorted(f"r{i}" for i in range(100))

    def test_hanging_endpoint_never_blocks_past_the_deadline(self, tmp_path: Path) -> None:
        """A hanging export: close() returns by the deadline and spools everything undelivered."""
        gate = threading.Event()
        delivery = Delivery(FakeExporter(hang=gate), tmp_path / "spool", deadline=0.5)
        for record in records(50):
            delivery.submit(record)

        started = time.monotonic()
        counts = delivery.close()
        took = time.monotonic() - started
        gate.set()

        assert took < 1.5
        assert counts["spooled"] == 50 and counts["delivered"] == 0
        assert sum(count for _, count in Spool(tmp_path / "spool").listing()) == 50

    def test_spool_is_delivered_by_a_later_delivery(self, tmp_path: Path) -> None:
        """Spooled records are carried over and delivered next time, with the counts right."""
        first = Delivery(FakeExporter(["down"] * 1000), tmp_path / "run1", deadline=0.2)
        for record in records(7):
            first.submit(record)
        assert first.close()["spooled"] == 7

        exporter = FakeExporter()
        second = Delivery(exporter, tmp_path / "run2")
        second.carry_over(Spool(tmp_path / "run1").files())
        counts = second.close()

        assert counts == {"emitted": 0, "carried": 7, "delivered": 7, "spooled": 0, "dropped": 0}
        assert Spool(tmp_path / "run1").files() == []

    def test_submit_after_close_is_an_error(self, tmp_path: Path) -> None:
        """Use after close raises a clear RuntimeError; close is idempotent."""
        delivery = Delivery(FakeExporter(), tmp_path / "spool")
        delivery.close()

        assert delivery.close()["emitted"] == 0
        with pytest.raises(RuntimeError, match="closed"):
            delivery.submit({"type": "log"})


class TestSpooling:
    def test_full_queue_spools_a_few_files_and_keeps_order(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """2,000 submits into a queue of 10 (no-op exporter): a few spool files at most; every record once, in order."""
        written = count_spool_writes(monkeypatch)
        exporter = FakeExporter()
        delivery = Delivery(exporter, tmp_path / "spool", max_queue=10, batch_size=100)

        for record in records(2000):
            delivery.submit(record)
        counts = delivery.close()

        assert len(written) <= 2000 // 100 + 2
        assert [r["text"] for r in exporter.received] == [f"r{i}" for i in range(2000)]
        assert counts == {"emitted": 2000, "carried": 0, "delivered": 2000, "spooled": 0, "dropped": 0}

    def test_stuck_sender_spools_the_overflow_a_batch_per_file(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """While the sender is stuck the overflow goes to disk in full batches; afterwards all arrive once, in order."""
        written = count_spool_writes(monkeypatch)
        gate = threading.Event()
        exporter = FakeExporter(hang=gate)
        delivery = Delivery(exporter, tmp_path / "spool", max_queue=10, batch_size=100)

        for record in records(2000):
            delivery.submit(record)
        wait_for(lambda: sum(written) >= 1900, what="the overflow on disk")
        gate.set()
        counts = delivery.close()

        assert set(written) == {100} and len(written) <= 2000 // 100
        assert [r["text"] for r in exporter.received] == [f"r{i}" for i in range(2000)]
        assert counts == {"emitted": 2000, "carried": 0, "delivered": 2000, "spooled": 0, "dropped": 0}

    def test_submit_does_no_file_io_and_spool_writes_never_hold_the_lock(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With the queue full, submit writes nothing; another thread writes the spool, not holding the lock."""
        real_write = Spool.write
        writers: list[threading.Thread] = []

        def checked_write(spool: Spool, batch: list[Record]) -> Path:
            writers.append(threading.current_thread())
            free = delivery._lock.acquire(timeout=5)  # a Lock this very thread holds can never be acquired
            if not free:
                raise AssertionError("spool written while holding the delivery lock")
            delivery._lock.release()
            return real_write(spool, batch)

        monkeypatch.setattr(Spool, "write", checked_write)
        gate = threading.Event()
        delivery = Delivery(FakeExporter(hang=gate), tmp_path / "spool", max_queue=10, batch_size=50)

        for record in records(500):
            delivery.submit(record)
        wait_for(lambda: len(writers) >= 9, what="the overflow on disk")
        gate.set()
        counts = delivery.close()

        assert threading.current_thread() not in writers
        assert counts["delivered"] == 500

    def test_a_drain_lists_the_spool_folder_once(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Delivering 50 spool files lists their folder once, not once per file, and sends the oldest first."""
        folder = tmp_path / "spool"
        spool = Spool(folder)
        batches = records(100)
        for i in range(0, 100, 2):
            spool.write(batches[i : i + 2])
        listings = count_listings(monkeypatch, folder)
        exporter = FakeExporter()
        delivery = Delivery(exporter, folder)

        delivery.adopt_spool()
        counts = delivery.close()

        assert len(listings) == 1
        assert [r["text"] for r in exporter.received] == [f"r{i}" for i in range(100)]
        assert counts == {"emitted": 0, "carried": 100, "delivered": 100, "spooled": 0, "dropped": 0}

    def test_overflow_left_at_the_deadline_is_spooled_in_batches_for_the_next_run(self, tmp_path: Path) -> None:
        """A hanging endpoint and a full queue: close() spools every record in a few files; a later run sends each once."""
        gate = threading.Event()
        first = Delivery(FakeExporter(hang=gate), tmp_path / "run1", max_queue=10, batch_size=20, deadline=0.3)
        for record in records(200):
            first.submit(record)

        counts = first.close()
        gate.set()

        assert counts == {"emitted": 200, "carried": 0, "delivered": 0, "spooled": 200, "dropped": 0}
        assert len(Spool(tmp_path / "run1").files()) <= 200 // 20 + 2
        exporter = FakeExporter()
        second = Delivery(exporter, tmp_path / "run1")
        second.adopt_spool()
        assert second.close() == {"emitted": 0, "carried": 200, "delivered": 200, "spooled": 0, "dropped": 0}
        assert sorted(r["text"] for r in exporter.received) == sorted(f"r{i}" for i in range(200))

    def test_unreadable_spool_file_is_moved_aside_and_counted_as_dropped(self, tmp_path: Path) -> None:
        """A spool file that is not JSON lines is set aside as .bad and its records counted as dropped, with the reason."""
        folder = tmp_path / "spool"
        Spool(folder).write(records(3))
        (folder / "0-0-000000.jsonl").write_text('{"type": "log"}\nnot json\n')
        exporter = FakeExporter()
        delivery = Delivery(exporter, folder)

        delivery.adopt_spool()
        counts = delivery.close()

        assert counts == {"emitted": 0, "carried": 5, "delivered": 3, "spooled": 0, "dropped": 2}
        assert delivery.drop_reasons == {"unreadable spool file": 2}
        assert [p.name for p in folder.iterdir()] == ["0-0-000000.bad"]


def count_spool_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the size of every spool file written from now on."""
    real_write = Spool.write
    sizes: list[int] = []

    def counting_write(spool: Spool, batch: list[Record]) -> Path:
        sizes.append(len(batch))
        return real_write(spool, batch)

    monkeypatch.setattr(Spool, "write", counting_write)
    return sizes


def count_listings(monkeypatch: pytest.MonkeyPatch, folder: Path) -> list[str]:
    """Record every listing of ``folder`` (os.scandir, which pathlib's glob uses, and os.listdir)."""
    listings: list[str] = []
    for name in ("scandir", "listdir"):
        real = getattr(os, name)

        def counting(path: object = ".", real: object = real, name: str = name) -> object:
            if Path(os.fspath(path)) == folder:  # type: ignore[arg-type]
                listings.append(name)
            return real(path)  # type: ignore[operator]

        monkeypatch.setattr(os, name, counting)
    return listings


class TestRouterCarryOver:
    def test_carried_records_are_counted_once(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Spools of earlier runs and of this run's killed driver are each counted once."""
        from pipeobs.export import routing

        monkeypatch.setattr(routing, "create_exporter", lambda name, options=None: FakeExporter())
        Spool(tmp_path / "runs/step/old/export-spool/fake").write(records(3))
        Spool(tmp_path / "runs/step/new/export-spool/fake").write(records(2))
        router = routing.Router(tmp_path / "runs/step/new", ["fake"])

        carried = router.carry_over(tmp_path / "runs")
        counts = router.close()

        assert carried == {"fake": 5}
        assert counts["fake"] == {"emitted": 0, "carried": 5, "delivered": 5, "spooled": 0, "dropped": 0}
