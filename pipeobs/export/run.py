"""A run's exporters as the driver sees them: start, checkpoint, close, and a killed driver's loss.

The counts of every exporter are kept in the store's ``exports`` table: a ``checkpoint`` row once
a second, a ``run`` row at the end (or ``retry`` for ``pipeobs export --retry``), and a ``lost``
row when a resumed run finds that the previous driver was killed holding undelivered records.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pipeobs.export.routing import Router

Counts = dict[str, int]


def exports_row(name: str, action: str, counts: Counts, reasons: dict[str, int] | None = None) -> tuple[Any, ...]:
    """A row of the ``exports`` table."""
    return (
        time.time(), name, action, counts["emitted"], counts["carried"], counts["delivered"], counts["spooled"],
        counts["dropped"], json.dumps(reasons or {}),
    )


class RunExports:
    """The router of one run, wired to its recorder (records in) and store (counts out)."""

    def __init__(self, recorder: Any, names: list[str], deadline: float) -> None:
        self.recorder = recorder
        self.store = recorder.store
        run_dir = recorder.run_dir.path
        self._account_killed_driver()
        self.router = Router(run_dir, names, deadline=deadline)
        recorder.exports = self.router
        for name, count in self.router.carry_over(run_dir.parent.parent).items():
            if count:
                recorder.event("INFO", "export_carry_over", f"{name}: carrying over {count} spooled records of earlier runs.")

    def _account_killed_driver(self) -> None:
        """On resume: what a killed driver held in memory for its exporters is counted as dropped.

        Whatever was emitted but neither delivered, spooled nor dropped at the last checkpoint was
        in memory when the driver died: it is recorded as dropped and said in the driver log.
        """
        rows = self.store.conn.execute(
            "SELECT exporter, emitted, carried, delivered, spooled, dropped FROM exports WHERE action='checkpoint' "
            "AND rowid IN (SELECT MAX(rowid) FROM exports WHERE action='checkpoint' GROUP BY exporter)"
        ).fetchall()
        for row in rows:
            lost = row["emitted"] + row["carried"] - row["delivered"] - row["spooled"] - row["dropped"]
            if lost > 0:
                counts = {"emitted": 0, "carried": 0, "delivered": 0, "spooled": 0, "dropped": lost}
                self.store.queue("exports", exports_row(row["exporter"], "lost", counts, {"driver killed": lost}))
                self.recorder.event(
                    "WARNING", "export_lost",
                    f"{row['exporter']}: the previous driver was killed holding up to {lost} undelivered records; "
                    "they are counted as dropped (all of them are in this run's store).",
                )

    def checkpoint(self) -> None:
        for name, counts in self.router.counts().items():
            self.store.queue("exports", exports_row(name, "checkpoint", counts))

    def close(self) -> dict[str, Counts]:
        """Deliver within the deadline, spool the rest, record and log the counts."""
        self.recorder.exports = None
        results = self.router.close()
        reasons = self.router.drop_reasons()
        for name, c in results.items():
            self.store.queue("exports", exports_row(name, "run", c, reasons.get(name)))
            self.recorder.event(
                "INFO" if not c["spooled"] and not c["dropped"] else "WARNING", "export",
                f"{name}: emitted {c['emitted']}, delivered {c['delivered']}, spooled {c['spooled']}, dropped {c['dropped']}"
                + (f" (carried over {c['carried']})" if c["carried"] else ""),
            )
        return results
