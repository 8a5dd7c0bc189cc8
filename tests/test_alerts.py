"""Alert rules: the rules file, the evaluator's Prometheus semantics, and live alerts in real runs."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pipeobs.alerts.evaluator import AlertEvaluator
from pipeobs.alerts.rules import Rule, load_rules, parse_rules
from pipeobs.alerts.signals import Observed, extrapolated_rate, histogram_quantile, promql
from pipeobs.cli import main
from pipeobs.errors import ConfigError
from pipeobs.records import IDLE, Metric
from tests.alertmanager import Alertmanager, alertmanager  # noqa: F401 (a fixture)
from tests.conftest import write_files, write_rendezvous, write_script

HANG = """
import os
from rendezvous import wait_for

def run(mini_batch):
    wait_for(os.path.join(os.path.dirname(__file__), "gate"), timeout=60)
    return [os.path.basename(p) for p in mini_batch]
"""
STALLED = """
rules:
  - alert: JobStalled
    expr: stalled_seconds > 2
    severity: critical
    annotations:
      summary: "step {{{{ $labels.step }}}} made no progress"
    action: {action}
"""


def rule(expr: str, for_: str = "0s", action: str = "notify") -> Rule:
    return parse_rules({"rules": [{"alert": "A", "expr": expr, "for": for_, "action": action}]})[0]


def events(run_dir: Path, kind: str) -> list[str]:
    with sqlite3.connect(run_dir / "pipeobs.db") as conn:
        return [m for (m,) in conn.execute("SELECT message FROM events WHERE kind = ? ORDER BY time", (kind,))]


class TestRulesFile:
    def test_default_rules_load(self) -> None:
        """The shipped default set loads and covers the catalogue's signals."""
        rules = load_rules()

        assert {r.signal for r in rules} >= {"stalled_seconds", "failure_ratio", "retries_rate", "timeouts_rate",
                                              "worker_restarts", "duration_p95_to_timeout", "rss_to_limit",
                                              "job_duration_seconds"}

    def test_parsed_fields(self) -> None:
        """An expression is parsed into signal, window, op and threshold; metric() into the metric's name."""
        windowed, user = rule("failure_ratio[5m] >= 0.25"), rule('metric("accuracy") < 0.9')

        assert (windowed.signal, windowed.window, windowed.op, windowed.threshold) == ("failure_ratio", 300, ">=", 0.25)
        assert (user.signal, user.metric, user.op) == ("metric", "accuracy", "<")
        assert promql(user) == '(max by (step_id, step) (pipeobs_user_metric{name="accuracy"})) < 0.9'

    @pytest.mark.parametrize(("entry", "message"), [
        ({"alert": "A", "expr": "stuck_seconds > 1"}, "unknown signal 'stuck_seconds'"),
        ({"alert": "A", "expr": "failure_ratio[5 minutes] > 1"}, "'5 minutes' is not a duration"),
        ({"alert": "A", "expr": "failure_ratio > 1"}, "failure_ratio needs a window"),
        ({"alert": "A", "expr": "stalled_seconds => 1"}, "'=>' is not a comparison"),
        ({"alert": "A", "expr": "stalled_seconds > 1", "action": "page"}, "action 'page' is not one of notify, stop"),
        ({"alert": "A", "expr": "stalled_seconds > 1", "for": "soon"}, "'soon' is not a duration"),
        ({"alert": "A", "expr": "stalled_seconds > 1", "annotations": {"s": "{{ .Foo }}"}}, "only {{ $value }}"),
    ], ids=["signal", "window", "no-window", "op", "action", "for", "template"])
    def test_bad_rule_is_one_line_config_error(self, entry: dict[str, Any], message: str) -> None:
        """Each mistake is a ConfigError naming the rule and what to write instead."""
        with pytest.raises(ConfigError, match="rule 1 \\(A\\)") as caught:
            parse_rules({"rules": [entry]}, "rules.yaml")

        assert message in str(caught.value)
        assert "\n" not in str(caught.value)

    def test_duplicate_alert_names(self) -> None:
        """Two rules with one name are refused."""
        entry = {"alert": "A", "expr": "stalled_seconds > 1"}

        with pytest.raises(ConfigError, match="alert name 'A' is used twice"):
            parse_rules({"rules": [entry, entry]})

    def test_cli_bad_rules_file_exits_2(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """``pipeobs run --alerts`` with a bad file: ``error: ...`` and exit 2, before anything runs."""
        write_script(tmp_path, "def run(mb):\n    return mb\n")
        rules = tmp_path / "rules.yaml"
        rules.write_text("rules:\n  - alert: A\n    expr: nope > 1\n")

        code = main(["run", str(tmp_path / "score.py"), "--input", str(write_files(tmp_path, 1)), "--alerts", str(rules),
                     "--runs-dir", str(tmp_path / "runs")])

        assert code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "unknown signal 'nope'" in err


class TestPrometheusFunctions:
    def test_increase_extrapolates_to_the_window(self) -> None:
        """increase() over samples 15 s apart in a 60 s window extrapolates as Prometheus does."""
        samples = [(t, v) for t, v in zip((15.0, 30.0, 45.0, 60.0), (10.0, 20.0, 30.0, 40.0), strict=True)]

        # The counter's zero point (15 s before the first sample at this slope) is the range's start: 30 * 60 / 45.
        assert extrapolated_rate(samples, 60.0, 60.0, False) == pytest.approx(40.0)
        assert extrapolated_rate(samples, 60.0, 60.0, True) == pytest.approx(40.0 / 60)

    def test_increase_of_a_counter_that_reset(self) -> None:
        """A counter reset adds the value before it."""
        samples = [(0.0, 5.0), (10.0, 8.0), (20.0, 2.0)]

        assert extrapolated_rate(samples, 20.0, 20.0, False) == pytest.approx(8.0 - 5.0 + 2.0)

    def test_one_sample_is_no_data(self) -> None:
        """rate() needs two samples."""
        assert extrapolated_rate([(0.0, 1.0)], 0.0, 60.0, True) is None

    def test_histogram_quantile_interpolates_in_the_bucket(self) -> None:
        """p95 of 100 observations, 90 under 1 s and 10 under 2 s, is 1.5 s."""
        assert histogram_quantile(0.95, [(1.0, 90.0), (2.0, 100.0), (float("inf"), 100.0)]) == pytest.approx(1.5)


class FakeRun:
    """An evaluator fed synthetic records, with a fake clock."""

    def __init__(self, *rules: Rule, interval: float = 1.0) -> None:
        self.changes: list[tuple[str, str]] = []
        self.evaluator = AlertEvaluator(
            list(rules), {"step_id": "s1", "step": "score"}, Observed(start=0.0, invocation_timeout=60, memory_limit=1e9),
            interval, lambda a: self.changes.append((a.rule.alert, a.state)),
        )

    def counter(self, name: str, value: float, t: float, **labels: str) -> None:
        self.evaluator.add_metric(Metric(IDLE, "counter", name, value, "", t, None, json.dumps(labels, sort_keys=True)))

    def tick(self, t: float) -> Any:
        return self.evaluator.tick(t)


class TestEvaluator:
    def test_for_holds_pending_then_fires(self) -> None:
        """With for: 3s, the alert is pending for 3 s of a true condition, then fires; then resolves when false."""
        run = FakeRun(rule("stalled_seconds > 2", "3s"))

        for t in (1.0, 2.0, 3.0, 4.0, 5.0):
            run.tick(t)
        assert run.changes == []  # true from 3 s (3 > 2): pending at 3, 4, 5
        run.tick(6.0)
        assert run.changes == [("A", "firing")]
        run.counter("pipeobs_attempts_total", 1, 6.5, status="RUN_DONE")
        run.tick(7.0)
        assert run.changes == [("A", "firing"), ("A", "resolved")]

    def test_pending_alert_that_clears_never_fires(self) -> None:
        """A condition that stops holding before ``for`` elapses sends nothing."""
        run = FakeRun(rule("stalled_seconds > 2", "5s"))

        for t in (3.0, 4.0):
            run.tick(t)
        run.counter("pipeobs_attempts_total", 1, 4.5, status="RUN_DONE")
        for t in (5.0, 6.0, 7.0):
            run.tick(t)

        assert run.changes == []

    def test_stop_action_returns_the_alert(self) -> None:
        """A firing rule whose action is stop is returned to the driver."""
        run = FakeRun(rule("stalled_seconds > 2", action="stop"))

        assert run.tick(2.0) is None
        assert run.tick(3.0).rule.alert == "A"

    def test_failure_ratio_over_window(self) -> None:
        """failure_ratio[10s] is the share of failed attempts among the attempts of the window."""
        run = FakeRun(rule("failure_ratio[10s] > 0.4"))

        for t in range(0, 11):
            run.counter("pipeobs_attempts_total", 2.0 * t, t, status="RUN_DONE")
            run.counter("pipeobs_attempts_total", 2.0 * t, t, status="RUN_EXCEPTION")
            run.tick(float(t))

        assert run.changes == [("A", "firing")]

    def test_user_metric_rule(self) -> None:
        """metric("accuracy") < 0.9 fires on the last logged value."""
        run = FakeRun(rule('metric("accuracy") < 0.9'))

        run.evaluator.add_metric(Metric(IDLE, "scalar", "accuracy", 0.95, "", 0.5))
        run.tick(1.0)
        run.evaluator.add_metric(Metric(IDLE, "scalar", "accuracy", 0.5, "", 1.5))
        run.tick(2.0)

        assert run.changes == [("A", "firing")]


# ---------------------------------------------------------------------- real runs
class Receiver(BaseHTTPRequestHandler):
    """A webhook receiver: keeps each JSON body; a firing alert runs ``on_firing`` and opens the job's gate."""

    bodies: list[dict[str, Any]]
    gate: Path
    on_firing: list[Callable[[], None]]

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.bodies.append(body)
        if body["status"] == "firing":
            for call in self.on_firing:
                call()
            self.gate.touch()
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook(tmp_path: Path) -> Iterator[Any]:
    """``(url, bodies, on_firing)`` of a receiver on 127.0.0.1."""
    bodies: list[dict[str, Any]] = []
    on_firing: list[Callable[[], None]] = []
    handler = type("Handler", (Receiver,), {"bodies": bodies, "gate": tmp_path / "gate", "on_firing": on_firing})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", bodies, on_firing
    server.shutdown()
    server.server_close()


def run_hanging(tmp_path: Path, action: str, *extra: str) -> tuple[int, Path]:
    write_script(tmp_path, HANG)
    write_rendezvous(tmp_path)
    (tmp_path / "rules.yaml").write_text(STALLED.format(action=action))
    code = main(["run", str(tmp_path / "score.py"), "--input", str(write_files(tmp_path, 1)), "--name", "hang",
                 "--runs-dir", str(tmp_path / "runs"), "--alerts", str(tmp_path / "rules.yaml"),
                 "--alert-interval", "0.5", "--process-count-per-node", "1", *extra])
    (run_dir,) = (tmp_path / "runs" / "hang").iterdir()
    return code, run_dir


class TestLiveAlerts:
    def test_stalled_job_alert_fires_and_resolves(self, tmp_path: Path, webhook: Any,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
        """A job stalled past 2 s fires JobStalled: event, driver log, summary; the webhook gets firing then resolved."""
        url, bodies, _ = webhook

        code, run_dir = run_hanging(tmp_path, "notify", "--alert-webhook", url)

        assert code == 0
        firing = events(run_dir, "alert_firing")
        assert firing == ["Alert JobStalled (critical) firing: step hang made no progress"]
        assert events(run_dir, "alert_resolved") == ["Alert JobStalled (critical) resolved: step hang made no progress"]
        assert firing[0] in (run_dir / "azureml-logs" / "70_driver_log.txt").read_text()
        assert "alert:        JobStalled (critical) fired for" in capsys.readouterr().out
        assert [b["status"] for b in bodies] == ["firing", "resolved"]
        alert = bodies[0]["alerts"][0]
        assert alert["labels"] == {"alertname": "JobStalled", "severity": "critical", "step": "hang",
                                   "step_id": run_dir.name}
        assert alert["generatorURL"] == run_dir.resolve().as_uri()
        assert bodies[1]["alerts"][0]["endsAt"] > alert["startsAt"]
        assert main(["show", str(run_dir), "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)["alerts"]
        assert [(a["alert"], a["severity"], a["summary"]) for a in shown] == [
            ("JobStalled", "critical", "step hang made no progress")]
        assert shown[0]["end"] >= shown[0]["start"]
        assert main(["show", str(run_dir)]) == 0
        assert "alerts (1 fired)" in capsys.readouterr().out

    def test_stop_action_fails_the_job(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """action: stop ends the job Failed, exit 42, with the alert as its reason."""
        code, run_dir = run_hanging(tmp_path, "stop")

        assert code == 42
        out = capsys.readouterr().out
        assert "Failed: step hang" in out
        assert "reason:       Alert JobStalled (critical) fired: step hang made no progress" in out
        assert events(run_dir, "stop") == [
            "Progress update stopped for reasons: [Alert JobStalled (critical) fired: step hang made no progress]"]

    def test_alertmanager_receives_the_live_alert(self, tmp_path: Path, webhook: Any,
                                                  alertmanager: Alertmanager) -> None:  # noqa: F811
        """A real Alertmanager lists the live alert pipeobs sent, with its labels, while the job runs."""
        url, _, on_firing = webhook
        seen: list[dict[str, Any]] = []
        on_firing.append(lambda: seen.extend(alertmanager.alerts(alertname="JobStalled", step="hang")))

        code, run_dir = run_hanging(tmp_path, "notify", "--alertmanager", alertmanager.url, "--alert-webhook", url)

        assert code == 0
        (alert,) = seen
        assert alert["labels"] == {"alertname": "JobStalled", "severity": "critical", "step": "hang",
                                   "step_id": run_dir.name}
        assert alert["annotations"] == {"summary": "step hang made no progress"}
        assert alert["generatorURL"] == run_dir.resolve().as_uri()

    def test_user_metric_rule_fires(self, tmp_path: Path, webhook: Any) -> None:
        """metric("accuracy") < 0.9 fires when the entry script logs accuracy 0.5."""
        url, bodies, _ = webhook
        write_rendezvous(tmp_path)
        write_script(tmp_path, """
            import os
            from azureml.core import Run
            from rendezvous import wait_for

            def run(mini_batch):
                Run.get_context().log("accuracy", 0.5)
                wait_for(os.path.join(os.path.dirname(__file__), "gate"), timeout=60)
                return mini_batch
        """)
        (tmp_path / "rules.yaml").write_text('rules:\n  - alert: LowAccuracy\n    expr: metric("accuracy") < 0.9\n')

        code = main(["run", str(tmp_path / "score.py"), "--input", str(write_files(tmp_path, 1)), "--name", "acc",
                     "--runs-dir", str(tmp_path / "runs"), "--alerts", str(tmp_path / "rules.yaml"),
                     "--alert-interval", "0.2", "--alert-webhook", url])

        (run_dir,) = (tmp_path / "runs" / "acc").iterdir()
        assert code == 0
        assert events(run_dir, "alert_firing") == ['Alert LowAccuracy (warning) firing: metric("accuracy") < 0.9 '
                                                   "(value 0.5)"]
        assert bodies[0]["alerts"][0]["labels"]["alertname"] == "LowAccuracy"
