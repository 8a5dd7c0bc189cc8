"""``pipeobs alerts export --prometheus``: rule files promtool accepts, unit tests it passes, and the
embedded evaluator and a real Prometheus firing the same alerts."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeobs.alerts.evaluator import AlertEvaluator
from pipeobs.alerts.export import RULES_FILE, TESTS_FILE, covered, export_prometheus, unit_test
from pipeobs.alerts.rules import AlertSettings, load_rules
from pipeobs.alerts.scenarios import INTERVAL, SCENARIOS, STEP, Scenario, Series, expand
from pipeobs.alerts.signals import Observed
from pipeobs.cli import main
from pipeobs.records import Invocation, Metric
from tests.alertmanager import Alertmanager, alertmanager  # noqa: F401 (a fixture)
from tests.prom import Prometheus, gated_run, get, need, prometheus
from tests.test_collector import wait_for

STALLED_RULES = """
rules:
  - alert: JobStalled
    expr: stalled_seconds > 3
    for: 0s
    severity: critical
    labels: {team: ml}
    annotations:
      summary: "step {{ $labels.step }}: no mini-batch finished for {{ $value }} s"
"""


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([need("promtool"), *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    assert main(["alerts", "export", "--prometheus", str(tmp_path / "rules")]) == 0
    return tmp_path / "rules"


class TestExportCommand:
    def test_writes_one_group_evaluated_at_the_evaluators_interval(self, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
        """The rule file holds one group, every default rule in it, at the embedded evaluator's default interval."""
        exported = tmp_path / "rules"

        assert main(["alerts", "export", "--prometheus", str(exported)]) == 0
        (group,) = yaml.safe_load((exported / RULES_FILE).read_text())["groups"]
        assert group["interval"] == "5s" and AlertSettings.interval == 5.0
        assert [r["alert"] for r in group["rules"]] == [r.alert for r in load_rules()]
        stalled = group["rules"][0]
        assert stalled == {
            "alert": "JobStalled",
            "expr": "((time() - pipeobs_last_progress_timestamp_seconds) * on(step_id, step) pipeobs_job_running) > 600",
            "for": "0s", "labels": {"severity": "critical"},
            "annotations": {"summary": "step {{ $labels.step }}: no mini-batch finished for {{ $value }} s"}}
        assert f"wrote {exported / RULES_FILE} (8 rules) and {exported / TESTS_FILE}" in capsys.readouterr().out

    def test_every_default_rule_has_a_unit_test(self, exported: Path) -> None:
        """The test file has a test for each default rule, with a check where it must not fire and one where it must."""
        tests = yaml.safe_load((exported / TESTS_FILE).read_text())

        assert tests["rule_files"] == [RULES_FILE]
        assert [t["name"] for t in tests["tests"]] == [r.alert for r in load_rules()]
        for test in tests["tests"]:
            expected = [bool(check["exp_alerts"]) for check in test["alert_rule_test"]]
            assert False in expected and True in expected, test["name"]

    def test_custom_rules_keep_their_labels_and_lose_the_tests_of_changed_conditions(self, tmp_path: Path) -> None:
        """--rules FILE: rule labels go with severity; a rule whose condition differs from the default is not tested."""
        rules = tmp_path / "mine.yml"
        rules.write_text(STALLED_RULES + '  - alert: AccuracyLow\n    expr: metric("accuracy") < 0.9\n'
                         "    severity: warning\n")

        assert main(["alerts", "export", "--prometheus", str(tmp_path / "out"), "--rules", str(rules)]) == 0
        group = yaml.safe_load((tmp_path / "out" / RULES_FILE).read_text())["groups"][0]
        assert group["rules"][0]["labels"] == {"severity": "critical", "team": "ml"}
        assert group["rules"][1] == {"alert": "AccuracyLow", "expr": '(max by (step_id, step) '
                                     '(pipeobs_user_metric{name="accuracy"})) < 0.9', "for": "0s",
                                     "labels": {"severity": "warning"}}
        assert yaml.safe_load((tmp_path / "out" / TESTS_FILE).read_text())["tests"] == []

    def test_a_missing_rules_file_is_a_one_line_error(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A rules file that cannot be read: exit 2 and one line naming it."""
        code = main(["alerts", "export", "--prometheus", str(tmp_path / "out"), "--rules", str(tmp_path / "no.yml")])

        assert code == 2
        assert capsys.readouterr().err == f"error: cannot read the alert rules file {tmp_path / 'no.yml'}: " \
                                          "No such file or directory\n"

    def test_a_file_in_place_of_the_folder_is_a_one_line_error(self, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
        """--prometheus naming an existing file: exit 2, and what to give instead."""
        (tmp_path / "taken").write_text("")

        assert main(["alerts", "export", "--prometheus", str(tmp_path / "taken")]) == 2
        assert capsys.readouterr().err.startswith(f"error: --prometheus '{tmp_path / 'taken'}' is a file: name a folder")


class TestPromtool:
    def test_check_rules_finds_no_lint(self, exported: Path) -> None:
        """``promtool check rules --lint=all --lint-fatal`` accepts the export without a finding."""
        result = promtool("check", "rules", "--lint=all", "--lint-fatal", str(exported / RULES_FILE))

        assert result.returncode == 0, result.stdout + result.stderr
        assert f"SUCCESS: {len(load_rules())} rules found" in result.stdout
        assert result.stderr == ""

    def test_check_rules_accepts_custom_rules(self, tmp_path: Path) -> None:
        """Rule labels and a user-metric rule export to rules promtool accepts."""
        rules = tmp_path / "mine.yml"
        rules.write_text(STALLED_RULES + '  - alert: AccuracyLow\n    expr: metric("accuracy") < 0.9\n')
        export_prometheus(tmp_path, rules)

        result = promtool("check", "rules", "--lint=all", "--lint-fatal", str(tmp_path / RULES_FILE))

        assert result.returncode == 0, result.stdout + result.stderr

    def test_unit_tests_pass(self, exported: Path) -> None:
        """``promtool test rules`` passes the generated unit tests: Prometheus fires as the scenarios say."""
        result = promtool("test", "rules", str(exported / TESTS_FILE))

        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout


# ---------------------------------------------------------------------- the embedded evaluator, same series
JOB_GAUGES: dict[str, Callable[[Observed, float], None]] = {  # the series the evaluator keeps as fields
    "pipeobs_job_running": lambda o, v: setattr(o, "running", bool(v)),
    "pipeobs_last_progress_timestamp_seconds": lambda o, v: setattr(o, "last_progress", v),
    "pipeobs_job_start_timestamp_seconds": lambda o, v: setattr(o, "start", v),
    "pipeobs_run_invocation_timeout_seconds": lambda o, v: setattr(o, "invocation_timeout", v),
    "pipeobs_memory_limit_bytes": lambda o, v: setattr(o, "memory_limit", v),
}


def feed(scenario: Scenario, evaluator: AlertEvaluator, index: int, now: float) -> None:
    """The scenario's samples at ``now``: job gauges as the evaluator's fields, the rest as metric records."""
    for series in scenario.series:
        values = series.samples()
        if index >= len(values):
            continue
        if series.name in JOB_GAUGES:
            JOB_GAUGES[series.name](evaluator.observed, values[index])
        else:
            kind = "counter" if series.name.endswith("_total") else "histogram" if "_bucket" in series.name else "gauge"
            evaluator.add_metric(Metric(Invocation("job"), kind, series.name, values[index], "", now,
                                        series.labels.get("worker"), json.dumps(series.labels, sort_keys=True)))


def evaluate(scenario: Scenario) -> dict[float, list[dict[str, Any]]]:
    """Feed a scenario to the embedded evaluator, sample by sample; its firing alerts at each check, as promtool lists them."""
    (rule,) = [r for r in load_rules() if r.alert == scenario.alert]
    start = next((expand(s.values)[0] for s in scenario.series if s.name == "pipeobs_job_start_timestamp_seconds"), 0.0)
    observed = Observed(start=start, invocation_timeout=0.0, memory_limit=0.0)
    evaluator = AlertEvaluator([rule], dict(STEP), observed, INTERVAL, on_change=lambda alert: None)
    checks = {check.at for check in scenario.checks}
    found = {}
    for index in range(int(max(checks) / INTERVAL) + 1):
        now = index * INTERVAL
        feed(scenario, evaluator, index, now)
        evaluator.tick(now)
        if now in checks:
            found[now] = [{"exp_labels": {k: v for k, v in a.labels.items() if k != "alertname"},
                           "exp_annotations": a.annotations} for a in evaluator.firing()]
    return found


class TestAgreement:
    @pytest.mark.parametrize("alert", list(SCENARIOS))
    def test_embedded_evaluator_fires_as_the_unit_test_expects(self, alert: str) -> None:
        """Fed the unit test's series, the embedded evaluator fires at the same times, with the same labels and value."""
        (rule,) = [r for r in load_rules() if r.alert == alert]
        expected = {check["eval_time"]: check["exp_alerts"] for check in unit_test(rule, SCENARIOS[alert])["alert_rule_test"]}

        found = evaluate(SCENARIOS[alert])

        assert {_duration(at): alerts for at, alerts in found.items()} == expected

    def test_every_default_rule_has_a_scenario(self) -> None:
        """No default rule goes without a scenario, so none escapes the agreement tests."""
        assert covered(load_rules()) == load_rules()

    def test_expanding_notation(self) -> None:
        """promtool's ``a+bxn``, ``a-bxn``, ``axn`` and plain numbers expand as promtool expands them."""
        assert expand("0+5x2 7 1-1x2 -3x1") == [0, 5, 10, 7, 1, 0, -1, -3, -3]
        assert Series("x", "1x2").samples() == [1, 1, 1]


def _duration(seconds: float) -> str:
    from pipeobs.alerts.rules import format_duration

    return format_duration(seconds)


# ---------------------------------------------------------------------- a real run, Prometheus and Alertmanager
def prometheus_alerts(prom: Prometheus, name: str) -> list[dict[str, Any]]:
    alerts = json.loads(get(f"{prom.url}/api/v1/alerts"))["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == name and a["state"] == "firing"]


def store_events(run_dir: Path, kind: str) -> list[str]:
    uri = f"{(run_dir / 'pipeobs.db').as_uri()}?{urllib.parse.urlencode({'mode': 'ro'})}"
    conn = sqlite3.connect(uri, uri=True)
    try:
        return [row[0] for row in conn.execute("SELECT message FROM events WHERE kind = ?", (kind,))]
    finally:
        conn.close()


class TestLiveRun:
    def test_stalled_job_fires_in_the_evaluator_prometheus_and_alertmanager(self, tmp_path: Path,
                                                                          alertmanager: Alertmanager) -> None:  # noqa: F811
        """A run that hangs: its evaluator (store, Alertmanager) and a Prometheus scraping it with the exported
        rules fire JobStalled, with one identity: Alertmanager would merge the two."""
        rules = tmp_path / "stalled.yml"
        rules.write_text(STALLED_RULES)
        export_prometheus(tmp_path / "prometheus-rules", rules)

        with gated_run(tmp_path / "job", "hangs", "--alerts", str(rules), "--alert-interval", "1",
                       "--alertmanager", alertmanager.url) as run, \
                prometheus(tmp_path / "prometheus", [run.target], [tmp_path / "prometheus-rules" / RULES_FILE]) as prom:
            (in_prometheus,) = wait_for(lambda: prometheus_alerts(prom, "JobStalled"), 60, "firing JobStalled in Prometheus")
            (in_manager,) = wait_for(lambda: alertmanager.alerts(alertname="JobStalled"), 60, "JobStalled in Alertmanager")
            (event,) = wait_for(lambda: store_events(run.run_dir(), "alert_firing"), 60, "an alert_firing event in the store")
            (gauge,) = wait_for(lambda: prom.query('pipeobs_alerts_firing{alertname="JobStalled"} == 1'), 60,
                                "pipeobs_alerts_firing in Prometheus")
            code, _ = run.finish()

        labels = {"alertname": "JobStalled", "severity": "critical", "team": "ml", "step": "hangs",
                  "step_id": run.run_dir().name}
        assert code == 0
        assert in_prometheus["labels"] == labels and float(in_prometheus["value"]) > 3
        assert in_manager["labels"] == labels and in_manager["generatorURL"] == run.run_dir().resolve().as_uri()
        assert event.startswith("Alert JobStalled (critical) firing: step hangs: no mini-batch finished for ")
        assert gauge["metric"]["severity"] == "critical" and gauge["metric"]["step_id"] == run.run_dir().name
        print("\nstore event:", event, "\nPrometheus /api/v1/alerts:", json.dumps(in_prometheus),
              "\nAlertmanager /api/v2/alerts:", json.dumps({k: in_manager[k] for k in
                                                           ("labels", "annotations", "startsAt", "generatorURL")}))
