"""Exporters in a run: records routed through the driver, counts recorded and printed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeobs.errors import ConfigError
from pipeobs.export.routing import create_exporter
from tests.conftest import RunJob, write_files, write_script


class TestExportInARun:
    def test_every_span_log_and_metric_is_exported(self, run_job: RunJob, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """With --export jsonl, the exporter receives the run's spans, lines and metrics, counted."""
        target = tmp_path / "exported.jsonl"
        monkeypatch.setenv("PIPEOBS_EXPORT_JSONL", str(target))
        script = tmp_path / "score.py"
        script.write_text(
            "import logging\nfrom azureml.core import Run\n"
            "def run(mb):\n    print('hello')\n    logging.getLogger('x').warning('careful', extra={'custom_dimensions': {'k': 1}})\n"
            "    Run.get_context().log('n', len(mb))\n    return mb\n"
        )
        from pipeobs.config import ParallelRunConfig
        from pipeobs.datasets import FileDataset
        from pipeobs.step import ParallelRunStep

        step = ParallelRunStep(
            "export-test", ParallelRunConfig(entry_script=str(script), process_count_per_node=1, mini_batch_size=1),
            [FileDataset.from_files(str(write_files(tmp_path, 3)))],
        )
        result = step.run(tmp_path / "runs", exporters=["jsonl"])

        records = [json.loads(line) for line in target.read_text().splitlines()]
        counts = result.exports["jsonl"]
        spans = [r for r in records if r["type"] == "span"]
        logs = [r for r in records if r["type"] == "log" and r["text"] in ("hello", "careful")]
        assert counts["emitted"] == counts["delivered"] == len(records)
        assert counts["spooled"] == counts["dropped"] == 0
        assert {s["name"] for s in spans} >= {"job", "mini_batch"}
        assert len(logs) == 6
        careful = next(r for r in logs if r["text"] == "careful")
        assert careful["custom_dimensions"] == {"k": 1}
        assert careful["span_id"] and careful["mini_batch_id"] is not None
        assert any(r["type"] == "metric" and r["name"] == "n" for r in records)
        assert any(r["type"] == "metric" and r["name"] == "pipeobs_mini_batches_total" for r in records)

    def test_unknown_exporter_is_a_config_error(self) -> None:
        """An exporter that is not installed names the pip install line."""
        with pytest.raises(ConfigError, match="unknown exporter 'appinsightz'"):
            create_exporter("appinsightz")

    def test_cli_prints_export_counts(self, tmp_path: Path) -> None:
        """pipeobs run --export prints per exporter what was emitted, delivered, spooled, dropped."""
        write_script(tmp_path, "def run(mb):\n    return mb\n")
        write_files(tmp_path, 2)

        proc = subprocess.run(
            [sys.executable, "-m", "pipeobs", "run", "score.py", "--input", "data", "--export", "jsonl"],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
            env={**__import__("os").environ, "PIPEOBS_EXPORT_JSONL": str(tmp_path / "out.jsonl")},
        )

        assert proc.returncode == 0, proc.stderr
        assert "export jsonl: emitted" in proc.stdout
        assert "spooled 0, dropped 0" in proc.stdout

    def test_missing_exporter_configuration_fails_before_running(self, tmp_path: Path) -> None:
        """An exporter without its configuration fails with one line, exit 2, before any worker starts."""
        write_script(tmp_path, "def run(mb):\n    return mb\n")
        write_files(tmp_path, 1)
        env = {k: v for k, v in __import__("os").environ.items() if k != "PIPEOBS_EXPORT_JSONL"}

        proc = subprocess.run(
            [sys.executable, "-m", "pipeobs", "run", "score.py", "--input", "data", "--export", "jsonl"],
            cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env,
        )

        assert proc.returncode == 2
        assert "error: the jsonl exporter needs a file" in proc.stderr


class TestAzureLogHandlerInARun:
    def test_records_from_pool_children_arrive_with_custom_dimensions(self, run_job: RunJob) -> None:
        """AzureLogHandler in a worker and its forked pool children: every record reaches the driver once."""
        job = run_job(
            """
            import logging, multiprocessing
            from pipeobs_appinsights import AzureLogHandler
            log = logging.getLogger("scoring")
            log.addHandler(AzureLogHandler())
            def work(i):
                log.warning("from child %d", i, extra={"custom_dimensions": {"child": i}})
                return i
            def run(mini_batch):
                with multiprocessing.get_context("fork").Pool(2) as pool:
                    pool.map(work, range(4))
                log.error("parent done", {"run_id": "abc"})
                return mini_batch
            """,
            files=1,
            process_count_per_node=1,
        )

        children = job.query("SELECT * FROM log_lines WHERE text LIKE 'from child%' ORDER BY text")
        parent = job.query("SELECT * FROM log_lines WHERE text = 'parent done'")
        assert [r["text"] for r in children] == [f"from child {i}" for i in range(4)]
        assert [json.loads(r["attributes"])["child"] for r in children] == [0, 1, 2, 3]
        assert all(r["mini_batch_id"] == 0 and r["span_id"] for r in children)
        assert len(parent) == 1 and json.loads(parent[0]["attributes"])["run_id"] == "abc"


def test_yaml_export_key_turns_exporters_on(tmp_path: Path) -> None:
    """The job YAML's `export` key turns exporters on, like --export."""
    write_script(tmp_path, "def run(mb):\n    return mb\n")
    write_files(tmp_path, 2)
    (tmp_path / "job.yaml").write_text("entry_script: score.py\ninputs: [data]\nexport: [jsonl]\nexport_deadline: 5\n")

    proc = subprocess.run(
        [sys.executable, "-m", "pipeobs", "run", "-c", "job.yaml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**__import__("os").environ, "PIPEOBS_EXPORT_JSONL": str(tmp_path / "out.jsonl")},
    )

    assert proc.returncode == 0, proc.stderr
    assert "export jsonl: emitted" in proc.stdout
    assert (tmp_path / "out.jsonl").read_text().count('"type": "span"') == 2  # job, one mini_batch
