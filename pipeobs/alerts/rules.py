"""Alert rules: the YAML schema, its checks, and the parsed :class:`Rule`.

A rules file holds a list under ``rules``; each rule names a pipeobs signal in a small DSL
(``SIGNAL[WINDOW] OP NUMBER`` or ``metric("NAME") OP NUMBER``, see :mod:`pipeobs.alerts.signals`)::

    rules:
      - alert: JobStalled
        expr: stalled_seconds > 300
        for: 0s
        severity: critical
        labels: {team: ml}
        annotations:
          summary: "step {{ $labels.step }}: no mini-batch finished for {{ $value }} s"
        action: notify          # notify | stop

The same rules run in the driver (:mod:`pipeobs.alerts.evaluator`) and export to Prometheus.
Every problem is one :class:`~pipeobs.errors.ConfigError` line naming the rule and the fix.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from pipeobs.errors import ConfigError

ACTIONS = ("notify", "stop")
OPS = (">", ">=", "<", "<=", "==", "!=")
KEYS = ("alert", "expr", "for", "severity", "labels", "annotations", "action")
RESERVED_LABELS = ("alertname", "severity", "step_id", "step")

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_EXPR = re.compile(
    r'\s*(?:metric\(\s*"(?P<metric>[^"\\]+)"\s*\)|(?P<signal>[A-Za-z_][A-Za-z0-9_]*)(?:\[(?P<window>[^\]]*)\])?)'
    rf"\s*(?P<op>[<>=!]+)\s*(?P<threshold>{_NUMBER})\s*\Z"
)
_DURATION = re.compile(r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?\Z")
_UNITS = (("y", 365 * 86400), ("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1), ("ms", 0.001))
_TEMPLATE = re.compile(r"{{(.*?)}}")
_TEMPLATE_FIELD = re.compile(r"\s*\$(?:value|labels\.[A-Za-z_][A-Za-z0-9_]*)\s*\Z")


@dataclass(frozen=True)
class Rule:
    """One alerting rule, as written and as parsed."""

    alert: str
    expr: str
    for_seconds: float
    severity: str
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    action: str = "notify"
    signal: str = ""  # a name of pipeobs.alerts.signals.SIGNALS, or "metric"
    window: float | None = None  # seconds, for windowed signals
    metric: str | None = None  # the user metric's name, for metric("NAME")
    op: str = ">"
    threshold: float = 0.0

    def holds(self, value: float) -> bool:
        """The condition on one value (NaN never holds, as in PromQL)."""
        t = self.threshold
        return {">": value > t, ">=": value >= t, "<": value < t, "<=": value <= t, "==": value == t,
                "!=": value != t}[self.op] and value == value


def load_rules(path: str | os.PathLike[str] | None = None) -> list[Rule]:
    """The rules of a YAML file (None: the default set shipped with pipeobs)."""
    import yaml

    if path is None:
        text = resources.files("pipeobs.alerts").joinpath("default_rules.yaml").read_text(encoding="utf-8")
        where = "the default rules"
    else:
        where = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise ConfigError(f"cannot read the alert rules file {where}: {exc.strerror or exc}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_rules(document, where)


def parse_rules(document: Any, where: str = "the alert rules") -> list[Rule]:
    """Check a loaded rules document and parse each rule."""
    if not isinstance(document, dict) or not isinstance(document.get("rules"), list):
        raise ConfigError(f"{where}: expected a mapping with a list under 'rules' (rules: [- alert: ..., expr: ...])")
    rules: list[Rule] = []
    for index, entry in enumerate(document["rules"]):
        rule = parse_rule(entry, f"{where}: rule {index + 1}")
        if any(r.alert == rule.alert for r in rules):
            raise ConfigError(f"{where}: alert name '{rule.alert}' is used twice: give each rule its own name")
        rules.append(rule)
    return rules


def parse_rule(entry: Any, where: str) -> Rule:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping with the keys {', '.join(KEYS)}")
    unknown = sorted(set(entry) - set(KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (a rule takes {', '.join(KEYS)})")
    alert = entry.get("alert")
    if not isinstance(alert, str) or not _NAME.match(alert):
        raise ConfigError(f"{where}: 'alert' must be a name of letters, digits and _ (not starting with a digit), "
                          f"not {alert!r}")
    where = f"{where} ({alert})"
    expr = entry.get("expr")
    if not isinstance(expr, str):
        raise ConfigError(f"{where}: 'expr' must be a string such as 'stalled_seconds > 300'")
    action = entry.get("action", "notify")
    if action not in ACTIONS:
        raise ConfigError(f"{where}: action {action!r} is not one of {', '.join(ACTIONS)}")
    severity = entry.get("severity", "warning")
    if not isinstance(severity, str) or not severity:
        raise ConfigError(f"{where}: 'severity' must be a string such as warning or critical")
    return Rule(alert=alert, expr=expr, for_seconds=parse_duration(str(entry.get("for", "0s")), f"{where}: 'for'"),
                severity=severity, labels=_labels(entry.get("labels"), where),
                annotations=_annotations(entry.get("annotations"), where), action=action, **parse_expr(expr, where))


def parse_expr(expr: str, where: str) -> dict[str, Any]:
    """The parsed fields of an expression: signal, window, metric, op, threshold."""
    from pipeobs.alerts.signals import SIGNALS

    match = _EXPR.match(expr)
    if match is None:
        raise ConfigError(f"{where}: cannot read expr {expr!r}: write SIGNAL[WINDOW] OP NUMBER or "
                          f'metric("NAME") OP NUMBER, with OP one of {" ".join(OPS)}')
    if match["op"] not in OPS:
        raise ConfigError(f"{where}: {match['op']!r} is not a comparison: use one of {' '.join(OPS)}")
    parsed: dict[str, Any] = {"op": match["op"], "threshold": float(match["threshold"])}
    if match["metric"] is not None:
        return {**parsed, "signal": "metric", "metric": match["metric"]}
    signal = SIGNALS.get(match["signal"])
    if signal is None:
        raise ConfigError(f"{where}: unknown signal '{match['signal']}': use one of {', '.join(SIGNALS)} "
                          'or metric("NAME")')
    window = match["window"]
    if signal.windowed and window is None:
        raise ConfigError(f"{where}: {signal.name} needs a window: {signal.name}[5m]")
    if not signal.windowed and window is not None:
        raise ConfigError(f"{where}: {signal.name} takes no window: remove [{window}]")
    seconds = None if window is None else parse_duration(window, f"{where}: window")
    if seconds is not None and seconds <= 0:
        raise ConfigError(f"{where}: the window must be longer than 0s")
    return {**parsed, "signal": signal.name, "window": seconds}


def parse_duration(text: str, where: str) -> float:
    """A Prometheus duration (``30s``, ``5m``, ``1h30m``) in seconds."""
    match = _DURATION.match(text.strip()) if text.strip() else None
    if match is None or not any(match.groups()):
        raise ConfigError(f"{where}: {text!r} is not a duration: write it as Prometheus does (30s, 5m, 1h30m)")
    return sum(int(n) * unit for n, (_, unit) in zip(match.groups(), _UNITS, strict=True) if n)


def for_duration(rule: Rule) -> str:
    """The rule's ``for`` as Prometheus writes durations (``5m``, ``1h30m``, ``0s``)."""
    return format_duration(rule.for_seconds)


def format_duration(seconds: float) -> str:
    millis = round(seconds * 1000)
    parts = []
    for name, unit in _UNITS:
        count, millis = divmod(millis, round(unit * 1000))
        if count:
            parts.append(f"{count}{name}")
    return "".join(parts) or "0s"


def _labels(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and _NAME.match(k) for k in value):
        raise ConfigError(f"{where}: 'labels' must map label names (letters, digits, _) to values")
    taken = sorted(set(value) & set(RESERVED_LABELS))
    if taken:
        raise ConfigError(f"{where}: label '{taken[0]}' is set by pipeobs: remove it from 'labels'")
    return {k: str(v) for k, v in value.items()}


def _annotations(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and _NAME.match(k) for k in value):
        raise ConfigError(f"{where}: 'annotations' must map names (letters, digits, _) to texts")
    for name, text in value.items():
        for match in _TEMPLATE.finditer(str(text)):
            if not _TEMPLATE_FIELD.match(match[1]):
                raise ConfigError(f"{where}: annotation '{name}' uses {{{{{match[1]}}}}}: only {{{{ $value }}}} and "
                                  "{{ $labels.NAME }} are supported")
    return {k: str(v) for k, v in value.items()}


def render(template: str, value: float, labels: dict[str, str]) -> str:
    """An annotation with ``{{ $value }}`` and ``{{ $labels.NAME }}`` filled in, as Prometheus prints them."""
    from pipeobs.alerts.signals import go_float

    def field(match: re.Match[str]) -> str:
        name = match[1].strip()
        return go_float(value) if name == "$value" else labels.get(name.removeprefix("$labels."), "")

    return _TEMPLATE.sub(field, template)


@dataclass(frozen=True)
class AlertSettings:
    """What ``pipeobs run`` alerts on and whom it tells: ``--alerts``, ``--alert-webhook``, ``--alertmanager``,
    ``--alert-interval``."""

    rules: list[Rule]
    webhooks: list[str] = field(default_factory=list)
    alertmanager: str | None = None
    interval: float = 5.0

    @classmethod
    def from_options(cls, rules: str | None = None, webhooks: list[str] | None = None,
                     alertmanager: str | None = None, interval: float | None = None) -> AlertSettings:
        """Checked settings (``rules``: a file, ``"none"``, or None for the default set)."""
        for url in [*(webhooks or []), *([alertmanager] if alertmanager else [])]:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"alert destination {url!r} is not an http(s) URL: write http://HOST:PORT/...")
        if interval is not None and not interval > 0:
            raise ConfigError(f"--alert-interval must be more than 0 seconds, not {interval}")
        return cls([] if rules == "none" else load_rules(rules), list(webhooks or []), alertmanager,
                   5.0 if interval is None else interval)
