"""Exporter plugins by name (entry points), and the router the driver hands records to."""

from __future__ import annotations

import collections
import logging
import time
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pipeobs.errors import ConfigError
from pipeobs.export.base import ENTRY_POINT_GROUP, Exporter, Record
from pipeobs.export.delivery import Delivery, Spool

log = logging.getLogger(__name__)

SPOOL_DIR = "export-spool"
PLUGINS = {"appinsights": "pipeobs-appinsights", "otlp": "pipeobs-otlp"}


def installed_exporters() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def create_exporter(name: str, options: dict[str, str] | None = None) -> Exporter:
    """The exporter registered as ``name`` under ``pipeobs.exporters``, configured."""
    found = installed_exporters()
    if name not in found:
        hint = f"pip install {PLUGINS[name]}" if name in PLUGINS else "install the plugin that provides it"
        have = ", ".join(sorted(found)) or "none"
        raise ConfigError(f"unknown exporter '{name}' (installed: {have}); {hint}")
    factory = found[name].load()
    return factory(dict(options or {}))


class Router:
    """One :class:`Delivery` per exporter; ``submit`` hands a record to each of them."""

    def __init__(self, run_dir: Path, names: list[str], deadline: float = 10.0, max_queue: int = 100_000) -> None:
        self.run_dir = run_dir
        self.deadline = deadline
        self.deliveries: dict[str, Delivery] = {}
        self.destinations: dict[str, str] = {}  # exporter name -> its destination, when it names one
        self.sent_by_user: collections.Counter[str] = collections.Counter()
        for name in dict.fromkeys(names):
            exporter = create_exporter(name)
            self.deliveries[name] = Delivery(exporter, run_dir / SPOOL_DIR / name, max_queue=max_queue, deadline=deadline)
            destination = getattr(exporter, "destination", None)
            if isinstance(destination, str):
                self.destinations[name] = destination

    def carry_over(self, runs_root: Path) -> dict[str, int]:
        """Adopt what earlier runs under ``runs_root`` left in their spools ("the next run").

        A run whose lock is held (its driver is alive, or an ``export --retry`` delivers its spool)
        is left alone; the others are locked while their spool files move.
        """
        from pipeobs.record.rundir import RunDir

        carried = {name: delivery.adopt_spool() for name, delivery in self.deliveries.items()}  # this run's own first
        for run_dir in sorted({p.parent.resolve() for p in runs_root.glob(f"*/*/{SPOOL_DIR}")} - {self.run_dir.resolve()}):
            other = RunDir(run_dir)
            if not other.try_lock():
                continue
            try:
                for name, delivery in self.deliveries.items():
                    files = Spool(run_dir / SPOOL_DIR / name).files()
                    carried[name] += delivery.carry_over(files) if files else 0
            finally:
                other.unlock()
        return carried

    def counts(self) -> dict[str, dict[str, int]]:
        return {name: d.snapshot() for name, d in self.deliveries.items()}

    def submit(self, record: Record) -> None:
        """Hand ``record`` to every exporter, except those its ``sent_to`` says it already reached."""
        sent_to = record.get("sent_to")
        if sent_to and self.destinations:
            for name, delivery in self.deliveries.items():
                if self.destinations.get(name) in sent_to:
                    self.sent_by_user[name] += 1
                else:
                    delivery.submit(record)
            return
        for delivery in self.deliveries.values():
            delivery.submit(record)

    def close(self) -> dict[str, dict[str, int]]:
        """Close every delivery within one shared deadline."""
        end = time.monotonic() + self.deadline
        return {name: d.close(max(0.0, end - time.monotonic())) for name, d in self.deliveries.items()}

    def drop_reasons(self) -> dict[str, dict[str, int]]:
        return {name: dict(d.drop_reasons) for name, d in self.deliveries.items()}


def retry_spool(run_dir: Path, deadline: float = 60.0) -> dict[str, dict[str, int]]:
    """``pipeobs export --retry RUN``: deliver what the run's spools still hold."""
    folders = sorted(p for p in (run_dir / SPOOL_DIR).glob("*") if p.is_dir())
    if not folders:
        return {}
    results = {}
    for folder in folders:
        files = Spool(folder).files()
        if not files:
            results[folder.name] = {"emitted": 0, "carried": 0, "delivered": 0, "spooled": 0, "dropped": 0}
            continue
        delivery = Delivery(create_exporter(folder.name), folder, deadline=deadline)
        delivery.adopt_spool()
        results[folder.name] = delivery.close()
    return results
