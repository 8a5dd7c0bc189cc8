"""``grafana/``: the dashboards and provisioning files, and every PromQL expression in them run
against a real Prometheus that scraped a real ``pipeobs run``."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeobs.alerts.rules import for_duration, load_rules
from pipeobs.alerts.signals import go_float, promql
from tests.prom import Prometheus, gated_run, need, prometheus

GRAFANA = Path(__file__).resolve().parent.parent / "grafana"
PROVISIONING = GRAFANA / "provisioning"
STEP = "grafana-step"
# What Grafana puts in place of its built-in variables; $step and $worker come from the run.
BUILT_INS = {"__rate_interval": "1m", "__interval": "5s", "__range": "1m"}
# Queries that are empty while a run is healthy, with why; each is checked to be empty.
EMPTY_FOR_A_HEALTHY_RUN = {
    "Firing alerts/A": "pipeobs_alerts_firing has a series only once an alert fires, and none fires here",
}
COVERED_SERIES = (  # the job's parts the dashboard must show
    "pipeobs_job_running", "pipeobs_mini_batches_finished", "pipeobs_mini_batches_scheduled",
    "pipeobs_job_start_timestamp_seconds", "pipeobs_last_progress_timestamp_seconds", "pipeobs_attempts_total",
    "pipeobs_items_total", "pipeobs_mini_batch_duration_seconds_bucket", "pipeobs_retries_total",
    "pipeobs_timeouts_total", "pipeobs_worker_restarts_total", "pipeobs_process_rss_bytes",
    "pipeobs_process_cpu_percent", "pipeobs_alerts_firing", "pipeobs_user_metric",
)
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def dashboards() -> list[dict[str, Any]]:
    found = [json.loads(path.read_text()) for path in sorted((GRAFANA / "dashboards").glob("*.json"))]
    assert found, "no dashboards in grafana/dashboards"
    return found


def provisioned(kind: str) -> dict[str, Any]:
    (path,) = (PROVISIONING / kind).glob("*.yaml")
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def alert_rules() -> list[dict[str, Any]]:
    (group,) = provisioned("alerting")["groups"]
    rules: list[dict[str, Any]] = group["rules"]
    return rules


def panels() -> list[dict[str, Any]]:
    return [panel for board in dashboards() for panel in board["panels"] if panel["type"] != "row"]


def expressions() -> dict[str, str]:
    """Every PromQL expression in grafana/: the dashboards' targets and the alert rules' queries, by name."""
    found = {f"{panel['title']}/{target['refId']}": target["expr"] for panel in panels() for target in panel["targets"]}
    for rule in alert_rules():
        for query in rule["data"]:
            if query["datasourceUid"] != "__expr__":
                found[f"rule {rule['title']}/{query['refId']}"] = query["model"]["expr"]
    return found


def substitute(expr: str, step: str) -> str:
    """The query Grafana sends for ``expr`` with ``step`` chosen and every worker."""
    values = {**BUILT_INS, "step": step, "worker": ".*"}
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], expr)


def variables(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in board["templating"]["list"]}


class TestDashboards:
    def test_panels_have_unique_ids_and_do_not_overlap_on_the_grid(self) -> None:
        """Each panel (rows too) has its own id and a gridPos inside the 24 columns, overlapping no other."""
        for board in dashboards():
            ids = [panel["id"] for panel in board["panels"]]
            cells: set[tuple[int, int]] = set()
            for panel in board["panels"]:
                x, y, w, h = (panel["gridPos"][k] for k in "xywh")
                assert all(isinstance(v, int) for v in (x, y, w, h)) and x >= 0 and w > 0 and h > 0 and x + w <= 24
                taken = {(col, line) for col in range(x, x + w) for line in range(y, y + h)}
                assert not taken & cells, panel["title"]
                cells |= taken

            assert len(ids) == len(set(ids))
            assert board["uid"] and board["title"] and "id" not in board  # provisioning upserts by uid

    def test_every_panel_and_query_reads_the_datasource_variable(self) -> None:
        """No panel names a datasource of its own: each follows the ``datasource`` variable."""
        for panel in panels():
            assert panel["datasource"] == DATASOURCE, panel["title"]
            assert panel["targets"], panel["title"]
            assert [t["refId"] for t in panel["targets"]] == ["ABCDEFG"[i] for i in range(len(panel["targets"]))]
            assert all(target["datasource"] == DATASOURCE for target in panel["targets"]), panel["title"]

    def test_has_the_datasource_step_and_worker_variables(self) -> None:
        """``datasource`` picks a Prometheus, ``step`` lists the steps seen, ``worker`` the step's workers (all by default)."""
        for board in dashboards():
            found = variables(board)

            assert found["datasource"]["type"] == "datasource" and found["datasource"]["query"] == "prometheus"
            assert found["step"]["type"] == "query" and found["step"]["datasource"] == DATASOURCE
            assert found["step"]["query"]["query"] == "label_values(pipeobs_job_running, step)"
            assert found["worker"]["query"]["query"] == 'label_values(pipeobs_process_rss_bytes{step="$step"}, worker)'
            assert found["worker"]["multi"] and found["worker"]["includeAll"] and found["worker"]["allValue"] == ".*"

    def test_queries_use_only_defined_variables(self) -> None:
        """Every ``$name`` in a query is a variable of the dashboard or one Grafana defines."""
        for board in dashboards():
            known = set(variables(board)) | set(BUILT_INS)
            used = {name for panel in board["panels"] for target in panel.get("targets", [])
                    for name in re.findall(r"\$\{?(\w+)", target["expr"])}

            assert used <= known, used - known

    def test_shows_every_part_of_a_job(self) -> None:
        """Status, progress, ETA, throughput, errors, durations, retries/timeouts, workers, alerts and user metrics."""
        queried = " ".join(expressions().values())
        titles = {panel["title"] for panel in panels()}

        assert [name for name in COVERED_SERIES if name not in queried] == []
        assert {"Status", "Progress", "ETA", "Error ratio, by worker", "RSS per worker", "CPU per worker", "Firing alerts",
                "User metrics (Run.log)"} <= titles
        by_title = {panel["title"]: " ".join(t["expr"] for t in panel.get("targets", [])) for panel in panels()}
        for title in ("Attempts per second (throughput), by worker and status", "Error ratio, by worker"):
            assert "sum by (worker" in by_title[title] and 'worker=~"$worker"' in by_title[title]


class TestProvisioning:
    def test_the_datasource_is_the_prometheus_the_alert_rules_query(self) -> None:
        (source,) = provisioned("datasources")["datasources"]

        assert provisioned("datasources")["apiVersion"] == 1
        assert source["type"] == "prometheus" and source["access"] == "proxy"
        assert {q["datasourceUid"] for rule in alert_rules() for q in rule["data"]} == {source["uid"], "__expr__"}

    def test_the_dashboard_provider_loads_the_folder_the_readme_mounts(self) -> None:
        """The provider reads files from the path grafana/README.md mounts grafana/dashboards at."""
        (provider,) = provisioned("dashboards")["providers"]
        readme = (GRAFANA / "README.md").read_text()

        assert provider["type"] == "file"
        assert f"grafana/dashboards:{provider['options']['path']}" in readme
        assert "grafana/provisioning:/etc/grafana/provisioning" in readme

    def test_the_alert_rules_are_the_default_rules(self) -> None:
        """One Grafana rule per default rule: ``(A) OP N`` is the rule's PromQL, with its ``for``, labels and summary."""
        found = {rule["title"]: rule for rule in alert_rules()}

        assert list(found) == [rule.alert for rule in load_rules()]
        for rule in load_rules():
            grafana = found[rule.alert]
            query, reduce, condition = (q["model"] for q in grafana["data"])
            assert grafana["condition"] == condition["refId"] == "C"
            assert (reduce["type"], reduce["expression"], reduce["reducer"]) == ("reduce", "A", "last")
            assert condition == {"refId": "C", "type": "math", "expression": f"$B {rule.op} {go_float(rule.threshold)}"}
            assert f"({query['expr']}) {rule.op} {go_float(rule.threshold)}" == promql(rule)
            assert grafana["for"] == for_duration(rule) and grafana["noDataState"] == "OK"
            assert grafana["labels"] == {"severity": rule.severity, **rule.labels}
            assert grafana["annotations"] == {k: v.replace("$value", "$values.B.Value") for k, v in rule.annotations.items()}
        assert len({rule["uid"] for rule in found.values()}) == len(found)


class TestQueries:
    def test_every_expression_parses(self, tmp_path: Path) -> None:
        """promtool accepts a rules file holding each expression (variables filled in) as a recording rule."""
        rules = [{"record": f"pipeobs:grafana_query_{i}", "expr": substitute(expr, STEP)}
                 for i, expr in enumerate(expressions().values())]
        path = tmp_path / "grafana-queries.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "grafana", "rules": rules}]}))

        checked = subprocess.run([need("promtool"), "check", "rules", "--lint=all", str(path)], capture_output=True,
                                 text=True, timeout=60)

        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert f"SUCCESS: {len(rules)} rules found" in checked.stdout

    def test_every_expression_returns_data_from_a_prometheus_scraping_a_run(self, scraped: Prometheus) -> None:
        """Each query has samples for the live run; those listed as empty for a healthy run have none."""
        for name, expr in expressions().items():
            query = substitute(expr, STEP)
            if name in EMPTY_FOR_A_HEALTHY_RUN:
                assert scraped.query(query) == [], name
            else:
                assert all(s["metric"].get("step", STEP) == STEP for s in scraped.wait_for(query, seconds=30)), name
        assert set(EMPTY_FOR_A_HEALTHY_RUN) <= set(expressions())

    def test_the_variables_list_the_runs_step_and_workers(self, scraped: Prometheus) -> None:
        """The series behind each ``label_values`` variable carry the run's step and its two workers."""
        found = {}
        for name, variable in variables(dashboards()[0]).items():
            call = re.fullmatch(r"label_values\((.+), (\w+)\)", variable.get("definition", ""))
            if call:
                series = scraped.wait_for(substitute(call.group(1), STEP))
                found[name] = sorted({s["metric"][call.group(2)] for s in series})

        assert found == {"step": [STEP], "worker": ["0/process000", "0/process001"]}


@pytest.fixture
def scraped(tmp_path: Path) -> Iterator[Prometheus]:
    """A Prometheus scraping a live run (user metric logged, one attempt failed and retried) every second."""
    with gated_run(tmp_path / "job", STEP) as run, prometheus(tmp_path / "prometheus", targets=[run.target]) as server:
        wait_until_settled(server)
        yield server


def wait_until_settled(server: Prometheus) -> None:
    """Wait until Prometheus has seen the run at its gate: five mini-batches finished, both workers sampled."""
    server.wait_for(f'pipeobs_mini_batches_finished{{step="{STEP}"}} == 5')
    server.wait_for(f'count(pipeobs_process_rss_bytes{{step="{STEP}"}}) == 2')
