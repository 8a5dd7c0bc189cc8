"""(f) Application Insights items delivered per second to a local sink, and what was dropped.

One sink (``bench.sink``, its own process, 127.0.0.1, port 0) per client; each client runs in its
own interpreter and sends N log records in a burst:

* pipeobs: ``pipeobs.export.delivery.Delivery(AppInsightsExporter(connection string), spool_dir)``,
  ``submit()`` N pipeobs log records, then ``close()``;
* pipeobs's drop-in ``pipeobs_appinsights.AzureLogHandler`` on a logger, N ``logger.info()``, ``close()``;
* opencensus's ``AzureLogHandler`` (default options; local storage in a temporary folder) on a
  logger, N ``logger.info()``, ``close()``; its "Queue is full" warnings are counted.

Delivered/s = items the sink received / (time of the last item - start of the burst); dropped =
N - received. Statsbeat is disabled (``APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL``) so nothing
is sent anywhere but the sink.
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import PYTHON, REPO, BenchError, Section, Skipped, Target, child_env, importable, ratio, run_child

IKEY = "00000000-0000-0000-0000-000000000001"
CHILD_ENV = {"APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true"}


def connection_string(url: str) -> str:
    return f"InstrumentationKey={IKEY};IngestionEndpoint={url}/"


class Sink:
    """``bench.sink`` in a subprocess; ``stats()`` asks it what it received."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([PYTHON, "-m", "bench.sink"], cwd=REPO, env=child_env(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.close()
            raise BenchError(f"the sink did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"

    def stats(self) -> dict[str, Any]:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(self.url + "/stats", timeout=10) as response:
            return json.loads(response.read())

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------- clients (child processes)
def _record(i: int) -> dict[str, Any]:
    return {
        "type": "log", "step_id": "bench_20260101_000000_000000", "step_name": "bench", "worker": "0/process000",
        "time": time.time(), "level": "INFO", "stream": "log", "logger": "bench", "text": f"record {i}",
        "phase": "run", "mini_batch_id": i // 10, "attempt": 1, "custom_dimensions": {"i": i},
    }


class _Timed:
    """Wraps a callable (the HTTP sender) or an exporter's ``export`` and adds up its wall time."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, *args: Any) -> Any:
        began = time.perf_counter()
        try:
            return self.inner(*args)
        finally:
            self.seconds += time.perf_counter() - began
            self.calls += 1


class _TimedExporter:
    """The exporter as Delivery sees it, with the time spent in ``export()`` measured."""

    def __init__(self, exporter: Any) -> None:
        self.name = exporter.name
        self._exporter = exporter
        self.export = _Timed(exporter.export)

    def force_flush(self, timeout_s: float | None = None) -> bool:
        return bool(self._exporter.force_flush(timeout_s))

    def shutdown(self) -> None:
        self._exporter.shutdown()


def pipeobs_delivery(n: int, url: str) -> dict[str, Any]:
    """Delivery + AppInsightsExporter; the time inside export() and inside the HTTP sender is measured too."""
    if not importable("pipeobs_appinsights"):
        raise Skipped("pipeobs_appinsights not installed")
    from pipeobs_appinsights import AppInsightsExporter
    from pipeobs_appinsights.transport import HttpSender

    from pipeobs.export.delivery import Delivery

    sender = _Timed(HttpSender())
    exporter = _TimedExporter(AppInsightsExporter(connection_string(url), sender=sender))
    with tempfile.TemporaryDirectory(prefix="bench-spool-") as tmp:
        delivery = Delivery(exporter, Path(tmp) / "spool", deadline=120)  # type: ignore[arg-type]
        started = time.time()
        for i in range(n):
            delivery.submit(_record(i))
        emitted = time.time()
        counts = delivery.close()
        closed = time.time()
    return {"started": started, "emit_seconds": emitted - started, "close_seconds": closed - emitted, "counts": counts,
            "export_seconds": exporter.export.seconds, "http_seconds": sender.seconds, "batches": exporter.export.calls}


def pipeobs_handler(n: int, url: str) -> dict[str, Any]:
    if not importable("pipeobs_appinsights"):
        raise Skipped("pipeobs_appinsights not installed")
    from pipeobs_appinsights import AzureLogHandler

    with tempfile.TemporaryDirectory(prefix="bench-spool-") as tmp:
        handler = AzureLogHandler(connection_string=connection_string(url), storage_path=str(Path(tmp) / "spool"),
                                  grace_period=120)
        log = _logger("bench.pipeobs", handler)
        started = time.time()
        for i in range(n):
            log.info("record %d", i)
        emitted = time.time()
        handler.close()
        closed = time.time()
        counts = handler.counts
        counts = dict(counts() if callable(counts) else counts)  # a property today; a method would do too
    return {"started": started, "emit_seconds": emitted - started, "close_seconds": closed - emitted, "counts": counts}


class _QueueFull(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "Queue is full" in record.getMessage():
            self.count += 1


def opencensus_handler(n: int, url: str) -> dict[str, Any]:
    if not importable("opencensus.ext.azure"):
        raise Skipped("not installed")
    from opencensus.ext.azure.log_exporter import AzureLogHandler

    full = _QueueFull()
    schedule = logging.getLogger("opencensus.common.schedule")
    schedule.addHandler(full)
    schedule.propagate = False
    with tempfile.TemporaryDirectory(prefix="bench-opencensus-") as tmp:
        handler = AzureLogHandler(connection_string=connection_string(url), storage_path=str(Path(tmp) / "storage"))
        log = _logger("bench.opencensus", handler)
        started = time.time()
        for i in range(n):
            log.info("record %d", i)
        emitted = time.time()
        handler.close(timeout=120)
        closed = time.time()
    return {"started": started, "emit_seconds": emitted - started, "close_seconds": closed - emitted,
            "queue_full": full.count}


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    log = logging.getLogger(name)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return log


# ---------------------------------------------------------------------- the section
def _client(function: str, n: int) -> dict[str, Any]:
    with Sink() as sink:
        result = run_child(f"exporters:{function}", 600, env=CHILD_ENV, n=n, url=sink.url)
        stats = sink.stats()
    result["received"] = stats["items"]
    result["requests"] = stats["requests"]
    span = (stats["last"] or result["started"]) - result["started"]
    result["rate"] = stats["items"] / span if stats["items"] and span > 0 else 0.0
    result["dropped"] = n - stats["items"]
    return result


def bench_exporters(sizes: dict[str, Any]) -> Section:
    n = sizes["export_n"]
    section = Section(
        "exporters",
        f"(f) Application Insights delivery to a local sink, a burst of {n:,} log records",
        "One sink per client: `bench.sink`, its own process on 127.0.0.1 (port 0), answering 200 with the "
        "ingestion service's `itemsReceived`/`itemsAccepted` JSON and counting items. Each client runs in its own "
        f"interpreter and sends {n:,} log records in a burst, then closes: pipeobs = "
        "`pipeobs.export.delivery.Delivery(AppInsightsExporter(connection_string), spool_dir)`, `submit()` x N, "
        "`close()`; pipeobs's drop-in `pipeobs_appinsights.AzureLogHandler` on a logger, `logger.info()` x N, "
        "`close()`; opencensus's `AzureLogHandler` (default options, local storage in a temporary folder), "
        "`logger.info()` x N, `close()`, counting its 'Queue is full' warnings. Delivered/s = items the sink "
        "received / (time of the last item - start of the burst); dropped = N - received. Statsbeat is disabled "
        "(`APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL`), so nothing goes anywhere but the sink.",
    )
    results: dict[str, dict[str, Any] | None] = {}
    for name, function in (
        ("pipeobs Delivery + AppInsightsExporter", "pipeobs_delivery"),
        ("pipeobs_appinsights.AzureLogHandler (drop-in)", "pipeobs_handler"),
        ("opencensus AzureLogHandler", "opencensus_handler"),
    ):
        try:
            results[name] = _client(function, n)
        except Skipped as exc:
            results[name] = None
            section.skip(name, str(exc))
        except BenchError as exc:
            results[name] = None
            section.skip(name, f"failed: {str(exc).splitlines()[0]}")
            section.notes.append(f"{name}: {exc}")
    census = results.get("opencensus AzureLogHandler")
    census_rate = census["rate"] if census else None
    for name, result in results.items():
        if result is None:
            continue
        detail = (f"received {result['received']:,} in {result['requests']:,} requests, dropped {result['dropped']:,}; "
                  f"burst {result['emit_seconds']:.2f} s, close {result['close_seconds']:.2f} s")
        if "queue_full" in result:
            detail += f"; {result['queue_full']:,} 'Queue is full' warnings"
        if "counts" in result:
            counts = result["counts"]
            detail += f"; counts {', '.join(f'{k} {v:,}' for k, v in counts.items())}"
        if "export_seconds" in result:
            detail += (f"; export() {result['export_seconds']:.2f} s over {result['batches']} batches, "
                       f"of which HTTP {result['http_seconds']:.2f} s")
        section.add(name, result["rate"], "items/s", f"{ratio(result['rate'], census_rate)} opencensus" if census_rate and name != "opencensus AzureLogHandler" else "", detail)
    ours = results.get("pipeobs Delivery + AppInsightsExporter")
    if ours and census_rate:
        achieved = ours["rate"] / census_rate
        section.targets.append(Target(">= 5x opencensus AzureLogHandler", f"{achieved:.2f}x", achieved >= 5))
    else:
        why = "pipeobs_appinsights not importable" if not ours else "opencensus skipped (not installed)"
        section.targets.append(Target(">= 5x opencensus AzureLogHandler", why, None))
    if ours:
        section.targets.append(Target("nothing dropped (pipeobs)", f"dropped {ours['dropped']:,} of {n:,}", ours["dropped"] == 0))
    else:
        section.targets.append(Target("nothing dropped (pipeobs)", "pipeobs_appinsights not importable", None))
    section.data = {"results": results}
    return section
