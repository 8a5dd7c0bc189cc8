"""The signals alert rules watch: for each, its PromQL and its computation inside the driver.

The PromQL reads the series the driver exposes (``--metrics-port``), aggregated ``by (step_id,
step)``; the embedded computation reads :class:`Observed`, what the evaluator saw of the same
series, sampled once per evaluation as a Prometheus scrape would. ``rate``/``increase`` and
``histogram_quantile`` follow Prometheus 2.x (``extrapolatedRate`` and ``bucketQuantile`` in
``promql/functions.go`` and ``promql/quantile.go``: ranges closed at both ends), so the driver and
a Prometheus loaded with the exported rules agree on when an alert fires.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeobs.alerts.rules import Rule

Samples = list[tuple[float, float]]  # (epoch seconds, value), oldest first
SeriesKey = tuple[str, str]  # (metric name, labels JSON with sorted keys)


@dataclass
class Observed:
    """The series the evaluator keeps: latest values from records, and their samples per evaluation."""

    start: float  # epoch seconds the job started
    invocation_timeout: float  # run_invocation_timeout, seconds
    memory_limit: float  # bytes: the cgroup limit or the machine's memory
    last_progress: float = 0.0  # epoch seconds of the last finished attempt (the start before any)
    running: bool = True
    latest: dict[SeriesKey, float] = field(default_factory=dict)
    history: dict[SeriesKey, Samples] = field(default_factory=dict)
    user: dict[str, float] = field(default_factory=dict)

    def scrape(self, now: float, keep: float) -> None:
        """Sample every series at ``now``; forget samples older than ``keep`` seconds."""
        for key, value in self.latest.items():
            samples = self.history.setdefault(key, [])
            samples.append((now, value))
            while samples and samples[0][0] < now - keep:
                del samples[0]

    def matrix(self, name: str, now: float, window: float) -> list[tuple[dict[str, str], Samples]]:
        """``name[window]`` at ``now``: each series' labels and its samples in ``[now - window, now]``."""
        return [(json.loads(labels), [s for s in samples if now - window <= s[0] <= now])
                for (n, labels), samples in self.history.items() if n == name]


@dataclass(frozen=True)
class Signal:
    name: str
    meaning: str
    promql: str  # with {window} for windowed signals
    compute: Callable[[Observed, float, Rule], float | None]
    windowed: bool = False


def promql(rule: Rule) -> str:
    """The rule's full PromQL condition, e.g. ``(...) > 300``."""
    if rule.signal == "metric":
        name = (rule.metric or "").replace("\\", "\\\\").replace('"', '\\"')
        query = f'max by (step_id, step) (pipeobs_user_metric{{name="{name}"}})'
    else:
        signal = SIGNALS[rule.signal]
        query = signal.promql.format(window=format_window(rule.window)) if signal.windowed else signal.promql
    return f"({query}) {rule.op} {go_float(rule.threshold)}"


def compute(rule: Rule, observed: Observed, now: float) -> float | None:
    """The rule's signal at ``now`` (None: no data, as an empty PromQL result)."""
    if rule.signal == "metric":
        return observed.user.get(rule.metric or "")
    return SIGNALS[rule.signal].compute(observed, now, rule)


def format_window(seconds: float | None) -> str:
    from pipeobs.alerts.rules import format_duration

    return format_duration(seconds or 0)


def go_float(value: float) -> str:
    """A float as Go's ``%v`` prints it (what Prometheus templates show for ``$value``)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    number = Decimal(repr(float(value))).normalize()  # repr: the shortest digits that read back, as Go's
    exponent = number.adjusted()
    if -4 <= exponent < 6:
        return format(number, "f")
    sign, digits, _ = number.as_tuple()
    text = "".join(map(str, digits))
    mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
    return f"{'-' if sign else ''}{mantissa}e{'+' if exponent >= 0 else '-'}{abs(exponent):02d}"


# ---------------------------------------------------------------------- Prometheus's functions
def extrapolated_rate(samples: Samples, now: float, window: float, is_rate: bool) -> float | None:
    """``rate``/``increase`` of one counter series over ``[now - window, now]`` (Prometheus 2.x)."""
    if len(samples) < 2:
        return None
    first_t, first_v = samples[0]
    last_t, last_v = samples[-1]
    result = last_v - first_v
    previous = 0.0
    for _, value in samples:  # a counter reset: add what was counted before it
        if value < previous:
            result += previous
        previous = value
    to_start, to_end = first_t - (now - window), now - last_t
    sampled = last_t - first_t
    average = sampled / (len(samples) - 1)
    if result > 0 and first_v >= 0:
        to_start = min(to_start, sampled * (first_v / result))  # never extrapolate below zero
    threshold = average * 1.1
    interval = sampled + (to_start if to_start < threshold else average / 2) + (to_end if to_end < threshold else average / 2)
    factor = interval / sampled / window if is_rate else interval / sampled  # one factor, as Prometheus: the same float
    return result * factor


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """``histogram_quantile`` over ``(upper bound, cumulative count)`` buckets (Prometheus's bucketQuantile)."""
    buckets = sorted(buckets)
    if not buckets or not math.isinf(buckets[-1][0]):
        return math.nan
    merged: list[tuple[float, float]] = []
    for bound, count in buckets:  # equal bounds add up; counts never go down
        if merged and merged[-1][0] == bound:
            merged[-1] = (bound, merged[-1][1] + count)
        else:
            merged.append((bound, max(count, merged[-1][1]) if merged else count))
    if len(merged) < 2 or merged[-1][1] == 0:
        return math.nan
    rank = q * merged[-1][1]
    b = next(i for i in range(len(merged)) if i == len(merged) - 1 or merged[i][1] >= rank)
    if b == len(merged) - 1:
        return merged[-2][0]
    if b == 0 and merged[0][0] <= 0:
        return merged[0][0]
    start, end, count = 0.0, merged[b][0], merged[b][1]
    if b > 0:
        start, count, rank = merged[b - 1][0], count - merged[b - 1][1], rank - merged[b - 1][1]
    return start + (end - start) * (rank / count)


# ---------------------------------------------------------------------- the signals
def _summed(observed: Observed, name: str, now: float, window: float, is_rate: bool,
            keep: Callable[[dict[str, str]], bool] = lambda labels: True) -> float | None:
    """``sum(rate|increase(name[window]))`` over the series ``keep`` accepts (None: no series with data)."""
    values = [extrapolated_rate(samples, now, window, is_rate)
              for labels, samples in observed.matrix(name, now, window) if keep(labels)]
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def _stalled(observed: Observed, now: float, rule: Rule) -> float | None:
    return now - observed.last_progress if observed.running else None


def _job_duration(observed: Observed, now: float, rule: Rule) -> float | None:
    return now - observed.start if observed.running else None


def _failure_ratio(observed: Observed, now: float, rule: Rule) -> float | None:
    window = rule.window or 0
    failed = _summed(observed, "pipeobs_attempts_total", now, window, False, lambda labels: labels.get("status") != "RUN_DONE")
    total = _summed(observed, "pipeobs_attempts_total", now, window, False)
    if failed is None or total is None:
        return None
    return failed / total if total else math.nan


def _counter(name: str, is_rate: bool) -> Callable[[Observed, float, Rule], float | None]:
    return lambda observed, now, rule: _summed(observed, name, now, rule.window or 0, is_rate)


def _p95_to_timeout(observed: Observed, now: float, rule: Rule) -> float | None:
    window = rule.window or 0
    buckets = []
    for labels, samples in observed.matrix("pipeobs_mini_batch_duration_seconds_bucket", now, window):
        rate = extrapolated_rate(samples, now, window, True)
        if rate is not None:
            buckets.append((float(labels["le"]), rate))
    if not buckets:
        return None
    return histogram_quantile(0.95, buckets) / observed.invocation_timeout


def _rss_to_limit(observed: Observed, now: float, rule: Rule) -> float | None:
    rss = [v for (name, _), v in observed.latest.items() if name == "pipeobs_process_rss_bytes"]
    return max(rss) / observed.memory_limit if rss else None


_BY = "sum by (step_id, step)"
SIGNALS: dict[str, Signal] = {s.name: s for s in (
    Signal("stalled_seconds", "seconds since the last finished attempt (or the start), while the job runs",
           "(time() - pipeobs_last_progress_timestamp_seconds) * on(step_id, step) pipeobs_job_running", _stalled),
    Signal("failure_ratio", "failed attempts / attempts over the window",
           f'{_BY} (increase(pipeobs_attempts_total{{{{status!="RUN_DONE"}}}}[{{window}}])) / '
           f"{_BY} (increase(pipeobs_attempts_total[{{window}}]))", _failure_ratio, windowed=True),
    Signal("retries_rate", "retries per second over the window",
           f"{_BY} (rate(pipeobs_retries_total[{{window}}]))", _counter("pipeobs_retries_total", True), windowed=True),
    Signal("timeouts_rate", "timeouts per second over the window",
           f"{_BY} (rate(pipeobs_timeouts_total[{{window}}]))", _counter("pipeobs_timeouts_total", True),
           windowed=True),
    Signal("worker_restarts", "worker processes replaced over the window",
           f"{_BY} (increase(pipeobs_worker_restarts_total[{{window}}]))",
           _counter("pipeobs_worker_restarts_total", False), windowed=True),
    Signal("duration_p95_to_timeout", "p95 attempt duration over the window / run_invocation_timeout",
           "histogram_quantile(0.95, sum by (le, step_id, step) (rate(pipeobs_mini_batch_duration_seconds_bucket"
           "[{window}]))) / on(step_id, step) pipeobs_run_invocation_timeout_seconds", _p95_to_timeout, windowed=True),
    Signal("rss_to_limit", "the largest worker RSS / the memory limit",
           "max by (step_id, step) (pipeobs_process_rss_bytes) / on(step_id, step) pipeobs_memory_limit_bytes",
           _rss_to_limit),
    Signal("job_duration_seconds", "seconds since the job started, while it runs",
           "(time() - pipeobs_job_start_timestamp_seconds) * on(step_id, step) pipeobs_job_running", _job_duration),
)}
