"""Alert rules as Prometheus rule files, with ``promtool test rules`` unit tests for them.

``pipeobs alerts export --prometheus DIR`` writes two files:

- ``pipeobs-rules.yml``: one rule group evaluated every :data:`~pipeobs.alerts.scenarios.INTERVAL`
  (the embedded evaluator's default), an alerting rule per pipeobs rule: ``alert``, ``expr``
  (:func:`~pipeobs.alerts.signals.promql`), ``for``, ``labels`` (``severity`` and the rule's own)
  and ``annotations``. Only fields Prometheus 2.42 reads and 3.x still reads are written.
- ``pipeobs-rules.test.yml``: for each rule with a scenario in :mod:`pipeobs.alerts.scenarios`
  whose condition it shares, the scenario's series and the alerts expected at each check, the
  annotations filled in as Prometheus fills them. The embedded evaluator's tests use the same
  scenarios, so ``promtool test rules`` passing means Prometheus fires when pipeobs does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeobs.alerts.rules import Rule, for_duration, format_duration, load_rules, render
from pipeobs.alerts.scenarios import INTERVAL, SCENARIOS, STEP, Scenario, selector
from pipeobs.alerts.signals import promql
from pipeobs.errors import ConfigError

RULES_FILE = "pipeobs-rules.yml"
TESTS_FILE = "pipeobs-rules.test.yml"
GROUP = "pipeobs"


def rules_document(rules: list[Rule]) -> dict[str, Any]:
    """The Prometheus rule file: one group holding an alerting rule per pipeobs rule."""
    return {"groups": [{"name": GROUP, "interval": format_duration(INTERVAL), "rules": [alerting_rule(r) for r in rules]}]}


def alerting_rule(rule: Rule) -> dict[str, Any]:
    entry: dict[str, Any] = {"alert": rule.alert, "expr": promql(rule), "for": for_duration(rule),
                             "labels": {"severity": rule.severity, **rule.labels}}
    if rule.annotations:
        entry["annotations"] = dict(rule.annotations)
    return entry


def tests_document(rules: list[Rule]) -> dict[str, Any]:
    """The ``promtool test rules`` file: one test per rule that a scenario covers."""
    return {"rule_files": [RULES_FILE], "evaluation_interval": format_duration(INTERVAL),
            "tests": [unit_test(rule, SCENARIOS[rule.alert]) for rule in covered(rules)]}


def covered(rules: list[Rule]) -> list[Rule]:
    """The rules with a scenario: a default rule's, unchanged in what decides when it fires."""
    defaults = {rule.alert: rule for rule in load_rules()}
    return [rule for rule in rules if rule.alert in SCENARIOS and _condition(rule) == _condition(defaults[rule.alert])]


def _condition(rule: Rule) -> tuple[Any, ...]:
    return rule.signal, rule.window, rule.metric, rule.op, rule.threshold, rule.for_seconds


def unit_test(rule: Rule, scenario: Scenario) -> dict[str, Any]:
    labels = {"severity": rule.severity, **rule.labels, **STEP}
    checks = []
    for check in scenario.checks:
        expected = []
        if check.value is not None:
            annotations = {name: render(text, check.value, STEP) for name, text in rule.annotations.items()}
            expected.append({"exp_labels": dict(labels), "exp_annotations": annotations})  # a copy: no YAML anchors
        checks.append({"eval_time": format_duration(check.at), "alertname": rule.alert, "exp_alerts": expected})
    return {"name": rule.alert, "interval": format_duration(INTERVAL),  # 2.42 needs it per test
            "input_series": [{"series": selector(s), "values": s.values} for s in scenario.series],
            "alert_rule_test": checks}


def export_prometheus(directory: str | os.PathLike[str], rules_path: str | os.PathLike[str] | None = None) -> str:
    """Write the rule file and its unit tests into ``directory``; a line saying what was written."""
    import yaml

    rules = load_rules(rules_path)
    folder = Path(directory)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--prometheus '{folder}' is a file: name a folder for the rule files (it is created if missing)")
    tested = covered(rules)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, document in ((RULES_FILE, rules_document(rules)), (TESTS_FILE, tests_document(rules))):
            (folder / name).write_text(yaml.safe_dump(document, sort_keys=False, width=1000), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the rule files into '{folder}': {exc.strerror or exc}") from None
    return (f"wrote {folder / RULES_FILE} ({len(rules)} rules) and {folder / TESTS_FILE} (unit tests for "
            f"{len(tested)} of them); check them with: promtool check rules --lint=all {folder / RULES_FILE} && "
            f"promtool test rules {folder / TESTS_FILE}")


def command_export(prometheus: str, rules: str | None) -> int:
    """``pipeobs alerts export --prometheus DIR [--rules FILE]``."""
    print(export_prometheus(prometheus, rules))
    return 0
