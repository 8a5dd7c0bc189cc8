"""Shared helpers: write an entry script and inputs, run a job with real worker processes."""

from __future__ import annotations

import sqlite3
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeobs.config import ParallelRunConfig, make_settings
from pipeobs.datasets import FileDataset
from pipeobs.jobs import JobResult
from pipeobs.step import ParallelRunStep


@dataclass
class Job:
    result: JobResult
    run_dir: Path

    def output_lines(self) -> list[str]:
        assert self.result.output_path is not None
        return Path(self.result.output_path).read_text().splitlines()

    def query(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        conn = sqlite3.connect(self.run_dir / "pipeobs.db")
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def driver_log(self) -> str:
        return (self.run_dir / "azureml-logs" / "70_driver_log.txt").read_text()


def write_script(folder: Path, source: str, name: str = "score.py") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(source))
    return path


def write_files(folder: Path, count: int) -> Path:
    data = folder / "data"
    data.mkdir(exist_ok=True)
    for i in range(count):
        (data / f"f{i:03d}.txt").write_text(f"item {i}\n")
    return data


RunJob = Callable[..., Job]


@pytest.fixture
def run_job(tmp_path: Path) -> RunJob:
    """Run ``source`` over ``files`` input files; keyword arguments go to ParallelRunConfig."""

    def run(
        source: str,
        files: int = 6,
        inputs: list[Any] | None = None,
        arguments: list[str] | None = None,
        settings: dict[str, Any] | None = None,
        model_dir: Path | None = None,
        **config: Any,
    ) -> Job:
        script = write_script(tmp_path, source)
        config.setdefault("process_count_per_node", 2)
        config.setdefault("output_action", "append_row")
        cfg = ParallelRunConfig(entry_script=str(script), **config)
        datasets = inputs if inputs is not None else [FileDataset.from_files(str(write_files(tmp_path, files)))]
        step = ParallelRunStep("test-step", cfg, datasets, output=str(tmp_path / "out"), arguments=arguments)
        if settings:
            step.settings = make_settings({**step.settings_values, **settings})
        result = step.run(tmp_path / "runs", model_dir=model_dir)
        return Job(result, Path(result.run_dir))

    return run
