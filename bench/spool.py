"""(h) Export spooling: a burst of N records into a full delivery queue, spooled and delivered.

Every subject runs in its own interpreter and handles the same N pipeobs log records:

* pipeobs, sender free: ``Delivery(no-op exporter, spool_dir, max_queue=Q)``, ``submit()`` x N,
  ``close()``; the exporter checks that every record arrives once, in order;
* pipeobs, sender stuck: the same, but the exporter's first ``export()`` waits until the burst is
  over, so everything beyond the queue goes through the spool on disk;
* the floor: ``json.dumps`` per record, one line each, into one file, then read back with
  ``json.loads`` (what any spool on disk must at least do);
* one file per record: each record written to its own file (write, then rename), then the folder
  listed once and every file read back and deleted (a spool that writes each overflowing record
  on its own); fewer records, as it is slow.

Cost = (first submit or write until everything is delivered or read back) / records; files =
spool files created (a counter around ``Spool.write``).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import BenchError, Section, Target, ratio, run_child

BATCH = 512  # pipeobs.export.delivery.BATCH_SIZE


def _record(i: int) -> dict[str, Any]:
    return {
        "type": "log", "step_id": "bench_20260101_000000_000000", "step_name": "bench", "worker": "0/process000",
        "time": time.time(), "level": "INFO", "stream": "stdout", "logger": None, "text": f"record {i}",
        "phase": "run", "mini_batch_id": i // 10, "attempt": 1, "custom_dimensions": {"i": i},
    }


class _CheckingExporter:
    """Accepts everything and checks that record ``i`` arrives as the ``i``-th; optionally stuck until released."""

    name = "bench"

    def __init__(self, release: threading.Event | None) -> None:
        self.release = release
        self.received = 0
        self.out_of_order = 0

    def export(self, records: Sequence[dict[str, Any]]) -> Any:
        from pipeobs.export.base import ExportResult

        if self.release is not None:
            self.release.wait()
        for record in records:
            self.out_of_order += record["custom_dimensions"]["i"] != self.received
            self.received += 1
        return ExportResult.ok(len(records))

    def shutdown(self) -> None:
        pass


# ---------------------------------------------------------------------- subjects (child processes)
def pipeobs_delivery(n: int, max_queue: int, stuck: bool) -> dict[str, Any]:
    from pipeobs.export.delivery import Delivery

    records = [_record(i) for i in range(n)]
    release = threading.Event() if stuck else None
    exporter = _CheckingExporter(release)
    with tempfile.TemporaryDirectory(prefix="bench-spool-") as tmp:
        delivery = Delivery(exporter, Path(tmp) / "spool", max_queue=max_queue, deadline=120)
        files: list[int] = []
        write = delivery.spool.write

        def counting_write(batch: Sequence[dict[str, Any]]) -> Path:
            files.append(len(batch))
            return write(batch)

        delivery.spool.write = counting_write  # type: ignore[method-assign]
        began = time.perf_counter()
        for record in records:
            delivery.submit(record)
        submitted = time.perf_counter()
        if release is not None:
            release.set()
        counts = delivery.close()
        ended = time.perf_counter()
    if exporter.received != n or counts["delivered"] != n:
        raise BenchError(f"delivered {exporter.received} of {n} records (counts {counts})")
    return {"seconds": ended - began, "submit_seconds": submitted - began, "files": len(files),
            "largest_file": max(files, default=0), "out_of_order": exporter.out_of_order}


def one_file(n: int) -> dict[str, Any]:
    records = [_record(i) for i in range(n)]
    with tempfile.TemporaryDirectory(prefix="bench-spool-") as tmp:
        path = Path(tmp) / "spool.jsonl"
        began = time.perf_counter()
        with open(path, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, default=str) + "\n")
        with open(path, encoding="utf-8") as handle:
            read = [json.loads(line) for line in handle]
        ended = time.perf_counter()
    if len(read) != n:
        raise BenchError(f"read back {len(read)} of {n} records")
    return {"seconds": ended - began, "files": 1}


def file_per_record(n: int) -> dict[str, Any]:
    records = [_record(i) for i in range(n)]
    with tempfile.TemporaryDirectory(prefix="bench-spool-") as tmp:
        folder = Path(tmp)
        began = time.perf_counter()
        for i, record in enumerate(records):
            temporary = folder / f".{i:09d}.tmp"
            with open(temporary, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(record, default=str) + "\n")
            os.replace(temporary, folder / f"{i:09d}.jsonl")
        read = 0
        for path in sorted(folder.glob("*.jsonl")):
            with open(path, encoding="utf-8") as handle:
                read += sum(1 for line in handle if json.loads(line))
            path.unlink()
        ended = time.perf_counter()
    if read != n:
        raise BenchError(f"read back {read} of {n} records")
    return {"seconds": ended - began, "files": n}


# ---------------------------------------------------------------------- the section
def bench_spool(sizes: dict[str, Any]) -> Section:
    n, queue, singles = sizes["spool_n"], sizes["spool_queue"], sizes["spool_single_files"]
    section = Section(
        "spool",
        f"(h) Export spooling: a burst of {n:,} records into a delivery queue of {queue:,}",
        f"Every subject runs in its own interpreter and handles the same pipeobs log records: pipeobs = "
        f"`Delivery(no-op exporter, spool_dir, max_queue={queue:,})`, `submit()` x {n:,}, `close()`, the exporter "
        "checking that every record arrives once and in order, once with the sender free and once with its first "
        "`export()` stuck until the burst is over (everything beyond the queue goes through the spool on disk); "
        f"the floor = `json.dumps` per record, a line each, into one file, read back with `json.loads` ({n:,} "
        f"records); one file per record = each written to its own file (write, then rename), the folder listed "
        f"once, every file read back and deleted ({singles:,} records). Cost = (first submit or write until "
        "everything is delivered or read back) / records; files = spool files created (a counter around "
        "`Spool.write`).",
    )
    results = {
        "pipeobs Delivery, sender free": run_child("spool:pipeobs_delivery", 600, n=n, max_queue=queue, stuck=False),
        "pipeobs Delivery, sender stuck until the burst ends": run_child(
            "spool:pipeobs_delivery", 600, n=n, max_queue=queue, stuck=True),
        "floor: json.dumps per line into one file, read back": run_child("spool:one_file", 600, n=n),
        "one file per record (write + rename), read back": run_child("spool:file_per_record", 600, n=singles),
    }
    for result, records in zip(results.values(), (n, n, n, singles), strict=True):
        result["us"] = result["seconds"] / records * 1e6
    floor = results["floor: json.dumps per line into one file, read back"]["us"]
    for name, result in results.items():
        detail = f"{result['seconds']:.2f} s, {result['files']:,} files"
        if "submit_seconds" in result:
            detail += (f" (largest {result['largest_file']:,} records); submit() {result['submit_seconds']:.3f} s; "
                       f"{result['out_of_order']:,} out of order")
        section.add(name, result["us"], "µs/record", f"{ratio(result['us'], floor)} the floor", detail)
    stuck = results["pipeobs Delivery, sender stuck until the burst ends"]
    bound = n // BATCH + 2
    section.targets.append(Target(f"spool files <= N / {BATCH} + 2 = {bound:,} (sender stuck)",
                                  f"{stuck['files']:,} files", stuck["files"] <= bound))
    ours = [r for name, r in results.items() if name.startswith("pipeobs")]
    disorder = sum(r["out_of_order"] for r in ours)
    section.targets.append(Target("every record delivered once, in order (pipeobs)",
                                  f"{disorder:,} of {2 * n:,} out of order", disorder == 0))
    section.data = {"results": results, "n": n}
    return section
