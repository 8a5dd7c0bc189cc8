"""Input series for each default rule and when its alert must fire: one source for two evaluators.

``pipeobs alerts export`` turns these scenarios into ``promtool test rules`` unit tests, and the
embedded evaluator's tests feed the same series, sample by sample, to
:class:`~pipeobs.alerts.evaluator.AlertEvaluator`: both must fire each alert at the same
evaluation times with the same value. Series are written in promtool's expanding notation
(``0+5x20`` is 0, 5, ..., 100; ``1x3`` is 1, 1, 1, 1), one sample per :data:`INTERVAL` from time 0,
labelled with :data:`STEP` besides their own labels. A check at a time just before an alert fires
and one at the time it fires pin down *when* it fires, not only *that* it does.

Windows are chosen so that every range in a check is covered by samples at both ends (no
extrapolation at the edges), which keeps the expected values exact. Exact means as Prometheus 2.x
computes them: ``rate`` multiplies the increase by one factor, (extrapolated interval / sampled
interval) / range, so a rate of 55 over 5m is ``55 * (1 / 300)``, one unit in the last place above
``55 / 300``, and ``{{ $value }}`` shows the difference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pipeobs.alerts.rules import AlertSettings

INTERVAL = AlertSettings.interval  # seconds between samples and between evaluations: the evaluator's default
STEP = {"step_id": "score-1", "step": "score"}

_NUMBER = r"[\d.]+(?:e[-+]?\d+)?"
_TERM = re.compile(rf"(?P<start>[-+]?{_NUMBER})(?:(?P<sign>[-+])(?P<step>{_NUMBER}))?x(?P<count>\d+)\Z")


@dataclass(frozen=True)
class Series:
    """One input series: its name, its own labels (the step's are added), and its values."""

    name: str
    values: str  # promtool's expanding notation
    labels: dict[str, str] = field(default_factory=dict)

    def samples(self) -> list[float]:
        """The values, one per :data:`INTERVAL` from time 0 (``_`` and ``stale`` are not used here)."""
        return expand(self.values)


@dataclass(frozen=True)
class Check:
    """At ``at`` seconds, the alert fires with ``value`` (None: it does not fire)."""

    at: float
    value: float | None = None


@dataclass(frozen=True)
class Scenario:
    """A default rule's input series and the checks both evaluators must pass."""

    alert: str
    series: tuple[Series, ...]
    checks: tuple[Check, ...]


def expand(values: str) -> list[float]:
    """promtool's expanding notation (``a``, ``axn``, ``a+bxn``, ``a-bxn``) as a list of numbers."""
    numbers: list[float] = []
    for term in values.split():
        match = _TERM.match(term)
        if match is None:
            numbers.append(float(term))
            continue
        start, count = float(match["start"]), int(match["count"])
        step = float(match["step"] or 0) * (-1 if match["sign"] == "-" else 1)
        numbers.extend(start + step * i for i in range(count + 1))
    return numbers


def selector(series: Series) -> str:
    """``name{labels}`` as promtool reads it, with the step's labels."""
    labels = {**STEP, **series.labels}
    return series.name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


_RUNNING = Series("pipeobs_job_running", "1x300")

SCENARIOS: dict[str, Scenario] = {s.alert: s for s in (
    # Progress every 5 s until 100 s, then none: stalled for more than 600 s from 705 s; the job ends at 720 s.
    Scenario("JobStalled", (
        Series("pipeobs_job_running", "1x143 0x16"),
        Series("pipeobs_last_progress_timestamp_seconds", "0+5x20 100x139"),
    ), (Check(700), Check(705, 605), Check(715, 615), Check(720))),
    # 2 attempts/s succeed; from 505 s 1 attempt/s fails as well: over 5m the ratio is (t - 500) / (t + 100),
    # above 0.1 from 570 s, firing after 1m.
    Scenario("FailureRatioHigh", (
        Series("pipeobs_attempts_total", "0+10x300", {"status": "RUN_DONE"}),
        Series("pipeobs_attempts_total", "0x100 5+5x200", {"status": "RUN_EXCEPTION"}),
    ), (Check(625), Check(630, 130 / 730))),
    # One retry per 5 s from 505 s: over 5m (t - 500) / 1500 per second, above 0.1 from 655 s, firing after 2m.
    Scenario("RetriesHigh", (
        Series("pipeobs_retries_total", "0x100 1+1x200"),
    ), (Check(770), Check(775, 55 * (1 / 300)))),
    # One timeout per 5 s from 505 s: above 0.02/s over 5m from 535 s, firing after 2m.
    Scenario("TimeoutsHigh", (
        Series("pipeobs_timeouts_total", "0x100 1+1x200"),
    ), (Check(650), Check(655, 31 * (1 / 300)))),
    # One restart per 5 s from 1005 s: more than 3 in 15m from 1020 s, firing after 1m.
    Scenario("WorkerRestarts", (
        Series("pipeobs_worker_restarts_total", "0x200 1+1x100"),
    ), (Check(1075), Check(1080, 16))),
    # One attempt per 5 s: under 5 s until 1000 s, then 55 s (run_invocation_timeout 60 s). Over 10m the p95 is
    # 5 + 55 (s - 0.05) / s for a slow share s = (t - 1000) / 600: above 0.8 x 60 s from 1140 s, firing after 5m.
    Scenario("DurationNearTimeout", (
        Series("pipeobs_mini_batch_duration_seconds_bucket", "0+1x200 200x300", {"le": "5"}),
        Series("pipeobs_mini_batch_duration_seconds_bucket", "0+1x500", {"le": "60"}),
        Series("pipeobs_mini_batch_duration_seconds_bucket", "0+1x500", {"le": "+Inf"}),
        Series("pipeobs_run_invocation_timeout_seconds", "60x500"),
    ), (Check(1435), Check(1440, 0.9375))),
    # process000 grows by 10 MB per 5 s from 500 MB (limit 1 GB): above 0.9 from 205 s, firing after 1m.
    Scenario("MemoryNearLimit", (
        Series("pipeobs_process_rss_bytes", "500000000+10000000x60", {"worker": "process000"}),
        Series("pipeobs_process_rss_bytes", "100000000x60", {"worker": "process001"}),
        Series("pipeobs_memory_limit_bytes", "1000000000x60"),
    ), (Check(260), Check(265, 1.03))),
    # The job started 86000 s before the first sample: over 86400 s (24h) from 405 s.
    Scenario("JobOverBudget", (
        _RUNNING,
        Series("pipeobs_job_start_timestamp_seconds", "-86000x300"),
    ), (Check(400), Check(405, 86405))),
)}
