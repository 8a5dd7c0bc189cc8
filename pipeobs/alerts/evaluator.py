"""The live alert evaluator: a sink of the driver's record pipeline, ticked by the driver's loop.

It learns the run's series from the records that pass (built-in counters and gauges, user
``run.log`` scalars), never from the store, and evaluates every rule once per ``interval`` as
Prometheus does: a condition that holds makes its alert *pending*, *firing* once it has held for
the rule's ``for``, and *resolved* when it stops holding (or the job ends). Each change goes to
``on_change`` (the driver records it) and to the :class:`~pipeobs.alerts.notify.Notifier`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeobs.alerts.notify import Notifier, rfc3339
from pipeobs.alerts.rules import Rule, render
from pipeobs.alerts.signals import Observed, compute
from pipeobs.records import Event, Metric

PENDING, FIRING, RESOLVED = "pending", "firing", "resolved"
RESEND_DELAY = 60.0  # Prometheus's --rules.alert.resend-delay: Alertmanager forgets alerts not re-sent


@dataclass
class Alert:
    """One rule's alert in a run."""

    rule: Rule
    labels: dict[str, str]
    active_at: float  # when the condition began to hold (Prometheus's activeAt, sent as startsAt)
    value: float
    state: str = PENDING
    fired_at: float | None = None
    resolved_at: float | None = None

    @property
    def annotations(self) -> dict[str, str]:
        return {name: render(text, self.value, self.labels) for name, text in self.rule.annotations.items()}

    @property
    def summary(self) -> str:
        return self.annotations.get("summary") or f"{self.rule.expr} (value {self.value:g})"

    def posted(self, ends_at: str) -> dict[str, Any]:
        return {"labels": self.labels, "annotations": self.annotations, "startsAt": rfc3339(self.active_at),
                "endsAt": ends_at}

    def to_dict(self) -> dict[str, Any]:
        return {"alertname": self.rule.alert, "severity": self.rule.severity, "action": self.rule.action,
                "summary": self.summary, "value": self.value, "started": self.fired_at, "ended": self.resolved_at}


class AlertEvaluator:
    """Evaluates the rules over what the records say; tells ``on_change`` and the notifier what changed."""

    def __init__(self, rules: list[Rule], labels: dict[str, str], observed: Observed, interval: float,
                 on_change: Callable[[Alert], None], on_failure: Callable[[str], None] = lambda message: None,
                 notifier: Notifier | None = None, generator_url: str = "") -> None:
        self.rules = rules
        self.labels = labels  # step_id, step
        self.observed = observed
        self.interval = interval
        self.on_change = on_change
        self.on_failure = on_failure  # a delivery that failed, in words
        self.notifier = notifier
        self.generator_url = generator_url
        self.active: dict[str, Alert] = {}  # by alert name: pending or firing
        self.fired: list[Alert] = []  # every alert that fired, in order
        self._next = observed.start + interval
        self._next_resend = 0.0
        self._keep = max([r.window or 0 for r in rules] + [0]) + 2 * interval

    # ------------------------------------------------------------------ the record pipeline
    def add_metric(self, record: Metric) -> None:
        observed = self.observed
        if record.kind == "scalar":
            number, _ = record.number_or_json()
            if number is not None:
                observed.user[record.name] = number
        elif record.kind in ("counter", "gauge", "histogram"):
            key = (record.name, record.labels or "{}")
            if record.name == "pipeobs_attempts_total" and record.value > observed.latest.get(key, 0):
                observed.last_progress = max(observed.last_progress, record.time)
            observed.latest[key] = record.value

    def add_event(self, record: Event) -> None:
        """Records are taken as they come: the evaluator's own events need nothing from it."""

    # ------------------------------------------------------------------ the driver's clock
    def tick(self, now: float) -> Alert | None:
        """Evaluate when due; a firing alert whose rule's action is ``stop``, if one fired now."""
        self._record_failures()
        if now < self._next:
            return None
        self._next = now + self.interval
        self.observed.scrape(now, self._keep)
        stop = None
        for rule in self.rules:
            value = compute(rule, self.observed, now)
            changed = self._step(rule, value if value is not None and rule.holds(value) else None, now)
            if changed is not None and changed.state == FIRING and rule.action == "stop":
                stop = stop or changed
        self._resend(now)
        return stop

    def _step(self, rule: Rule, value: float | None, now: float) -> Alert | None:
        """One evaluation of one rule; the alert if it started firing or resolved."""
        alert = self.active.get(rule.alert)
        if value is None:
            if alert is None:
                return None
            del self.active[rule.alert]
            return self._resolve(alert, now) if alert.state == FIRING else None
        if alert is None:
            labels = {**rule.labels, **self.labels, "alertname": rule.alert, "severity": rule.severity}
            alert = self.active[rule.alert] = Alert(rule, labels, now, value)
        alert.value = value
        if alert.state == PENDING and now - alert.active_at >= rule.for_seconds:
            alert.state, alert.fired_at = FIRING, now
            self.fired.append(alert)
            self.on_change(alert)
            self._notify(FIRING, [alert], now)
            return alert
        return None

    def _resolve(self, alert: Alert, now: float) -> Alert:
        alert.state, alert.resolved_at = RESOLVED, now
        self.on_change(alert)
        self._notify(RESOLVED, [alert], now)
        return alert

    def firing(self) -> list[Alert]:
        return [a for a in self.active.values() if a.state == FIRING]

    # ------------------------------------------------------------------ notifications
    def _notify(self, status: str, alerts: list[Alert], now: float) -> None:
        if self.notifier is not None:
            ends = rfc3339(now) if status == RESOLVED else self._valid_until(now)
            self.notifier.send(status, [a.posted(ends) for a in alerts], self.generator_url)

    def _valid_until(self, now: float) -> str:
        """As Prometheus: a firing alert is valid for 4 resend delays, and re-sent before it lapses."""
        return rfc3339(now + 4 * max(RESEND_DELAY, self.interval))

    def _resend(self, now: float) -> None:
        if self.notifier is None or now < self._next_resend:
            return
        self._next_resend = now + RESEND_DELAY
        if self.notifier.alertmanager and self.firing():
            self.notifier.send(FIRING, [a.posted(self._valid_until(now)) for a in self.firing()], self.generator_url)

    def _record_failures(self) -> None:
        if self.notifier is not None:
            for failure in self.notifier.failures():
                self.on_failure(failure)

    def finish(self, now: float) -> None:
        """The job ended: its firing alerts resolve; queued notifications go out within their timeout."""
        self.observed.running = False
        for alert in list(self.active.values()):
            del self.active[alert.rule.alert]
            if alert.state == FIRING:
                self._resolve(alert, now)
        if self.notifier is not None:
            self.notifier.close()
        self._record_failures()
