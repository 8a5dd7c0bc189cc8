"""A run's exporters as the driver sees them: a sink of the record pipeline, counts, a killed driver's loss.

:class:`RunExports` turns each record into the exporters' dict form and submits it to the
:class:`~pipeobs.export.routing.Router` (queue, delivery, spool). The counts of every exporter
are kept in the store's ``exports`` table: a ``checkpoint`` row once a second, a ``run`` row at
the end (or ``retry`` for ``pipeobs export --retry``), and a ``lost`` row when a resumed run
finds that the previous driver was killed holding undelivered records.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pipeobs.export.routing import Router
from pipeobs.record.store import Store
from pipeobs.records import Event, Line, Metric, Span
from pipeobs.telemetry.spans import full_record

Counts = dict[str, int]
EventSink = Callable[[str, str, str], None]  # (level, kind, message)


class RunExports:
    """The exporters of one run: a sink for records, with counts written to the store."""

    def __init__(self, run_dir: Path, store: Store, step_name: str, names: list[str], deadline: float,
                 say: EventSink, job: tuple[str | None, str | None] = (None, None)) -> None:
        self.store = store
        self.job = job  # (trace_id, span_id) of the job span: the operation of the driver's own records
        self.step_id = store.step_id
        self.step_name = step_name
        self._say = say
        self._account_killed_driver()
        self.router = Router(run_dir, names, deadline=deadline)
        self._submit = self.router.submit
        self._runs_root = run_dir.parent.parent

    def carry_over(self) -> None:
        """Take over what earlier runs under the same runs folder spooled (after this sink is registered)."""
        for name, count in self.router.carry_over(self._runs_root).items():
            if count:
                self._say("INFO", "export_carry_over", f"{name}: carrying over {count} spooled records of earlier runs.")

    # ------------------------------------------------------------------ the sink
    def add_line(self, line: Line) -> None:
        inv = line.invocation
        self._submit({
            "type": "log", "time": line.time, "step_id": self.step_id, "step_name": self.step_name,
            "worker": line.worker, "stream": line.stream, "phase": inv.phase, "mini_batch_id": inv.mini_batch_id,
            "attempt": inv.attempt, "level": line.level, "logger": line.logger, "text": line.text,
            **self._operation(inv.trace_id, inv.span_id), "custom_dimensions": line.custom_dimensions or {},
            **({"sent_to": line.sent_to} if line.sent_to else {}),
        })

    def add_metric(self, metric: Metric) -> None:
        inv = metric.invocation
        number, encoded = metric.number_or_json()
        self._submit({
            "type": "metric", "time": metric.time, "step_id": self.step_id, "step_name": self.step_name,
            "worker": metric.worker, "phase": inv.phase, "mini_batch_id": inv.mini_batch_id, "attempt": inv.attempt,
            "name": metric.name, "kind": metric.kind, "value": number,
            "value_json": encoded, "description": metric.description,
            "labels": json.loads(metric.labels) if metric.labels else {}, **self._operation(inv.trace_id, inv.span_id),
        })

    def add_span(self, span: Span) -> None:
        record = span.record
        where = span.where()
        self._submit({
            **full_record(record), "type": "span", "time": record["start"], "step_id": self.step_id,
            "step_name": self.step_name, "worker": where[0] or span.worker, "mini_batch_id": where[1],
            "attempt": where[2],
        })

    def add_event(self, event: Event) -> None:
        self._submit({
            "type": "log", "time": event.time, "step_id": self.step_id, "step_name": self.step_name,
            "worker": event.worker or "driver", "stream": "log", "phase": "driver", "mini_batch_id": None,
            "attempt": None, "level": event.level, "logger": "pipeobs.driver", "text": event.message,
            **self._operation(None, None), "custom_dimensions": {"event": event.kind},
        })

    def _operation(self, trace_id: str | None, span_id: str | None) -> dict[str, str | None]:
        """A record's trace and parent span; outside any span, the job's (one operation holds the whole run)."""
        if trace_id is None:
            trace_id, span_id = self.job
        return {"trace_id": trace_id, "span_id": span_id}

    # ------------------------------------------------------------------ accounting
    def _account_killed_driver(self) -> None:
        """On resume: what a killed driver held in memory for its exporters is counted as dropped.

        Whatever was emitted but neither delivered, spooled nor dropped at the last checkpoint was
        in memory when the driver died: it is recorded as dropped and said in the driver log.
        """
        for row in self.store.last_export_checkpoints():
            lost = row["emitted"] + row["carried"] - row["delivered"] - row["spooled"] - row["dropped"]
            if lost > 0:
                counts = {"emitted": 0, "carried": 0, "delivered": 0, "spooled": 0, "dropped": lost}
                self.store.add_export_counts(row["exporter"], "lost", counts, {"driver killed": lost})
                self._say(
                    "WARNING", "export_lost",
                    f"{row['exporter']}: the previous driver was killed holding up to {lost} undelivered records; "
                    "they are counted as dropped (all of them are in this run's store).",
                )

    def checkpoint(self) -> None:
        for name, counts in self.router.counts().items():
            self.store.add_export_counts(name, "checkpoint", counts)

    def finish(self) -> dict[str, Counts]:
        """Deliver within the deadline, spool the rest, record and say the counts.

        Remove this sink from the pipeline first: records after this point are not exported.
        """
        results = self.router.close()
        reasons = self.router.drop_reasons()
        for name, c in results.items():
            self.store.add_export_counts(name, "run", c, reasons.get(name))
            self._say(
                "INFO" if not c["spooled"] and not c["dropped"] else "WARNING", "export",
                f"{name}: emitted {c['emitted']}, delivered {c['delivered']}, spooled {c['spooled']}, dropped {c['dropped']}"
                + (f" (carried over {c['carried']})" if c["carried"] else ""),
            )
            if self.router.sent_by_user[name]:
                c["sent_by_user"] = self.router.sent_by_user[name]
                self._say("INFO", "export", f"{name}: {c['sent_by_user']} records were sent to the same "
                          "destination by the entry script's own instrumentation; pipeobs did not send them again")
        return results
