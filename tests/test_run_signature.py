"""run(mini_batch) or run(mini_batch, mini_batch_context): chosen from run()'s signature, partition keys or not."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from pipeobs.datasets import FileDataset
from pipeobs.worker import takes_context
from tests.conftest import RunJob, write_script


def one(mini_batch: Any) -> None: ...


def two(mini_batch: Any, mini_batch_context: Any) -> None: ...


def two_with_default(mini_batch: Any, mini_batch_context: Any = None) -> None: ...


def star_args(*args: Any) -> None: ...


def keyword_only(mini_batch: Any, *, mini_batch_context: Any = None) -> None: ...


def keywords(mini_batch: Any, **kwargs: Any) -> None: ...


class Scorer:
    def run(self, mini_batch: Any, mini_batch_context: Any) -> None: ...

    def run_one(self, mini_batch: Any) -> None: ...

    def __call__(self, mini_batch: Any, mini_batch_context: Any) -> None: ...


class TestTakesContext:
    @pytest.mark.parametrize("run", [two, two_with_default, star_args, Scorer().run, Scorer(), functools.partial(two)])
    def test_second_positional_parameter(self, run: Any) -> None:
        """A second positional parameter, or *args, takes the context (methods without their self)."""
        assert takes_context(run)

    @pytest.mark.parametrize(
        "run", [one, keyword_only, keywords, Scorer().run_one, functools.partial(two, mini_batch_context=None)]
    )
    def test_one_positional_parameter(self, run: Any) -> None:
        """One positional parameter (keyword-only or **kwargs besides) gets the mini-batch alone."""
        assert not takes_context(run)


def key_partitions(tmp_path: Path) -> FileDataset:
    root = tmp_path / "parts"
    for user, genre in [("u1", "jazz"), ("u1", "pop"), ("u2", "pop")]:
        (root / user).mkdir(parents=True, exist_ok=True)
        (root / user / f"{genre}.wav").write_text("x")
    return FileDataset.from_files(str(root), partition_format="{user}/{genre}.wav")


DESCRIBE = """
import os

def describe(mini_batch, context):
    files = sorted(os.path.basename(p) for p in context.dataset.files())
    keys = ",".join(f"{k}={v}" for k, v in sorted(context.partition_key_value.items())) or "-"
    return f"{context.minibatch_index} {keys} {'+'.join(files)} {len(mini_batch)}"
"""


@pytest.fixture
def describe(tmp_path: Path) -> None:
    """``from describe import describe`` in entry scripts: one line naming what run() was passed."""
    write_script(tmp_path, DESCRIBE, "describe.py")


class TestRunCalls:
    def test_one_argument_run_with_partition_keys(self, run_job: RunJob, tmp_path: Path) -> None:
        """With partition_keys, a run(mini_batch) is called with the partition's files alone."""
        job = run_job(
            """
            def run(mini_batch):
                return [str(len(mini_batch))]
            """,
            inputs=[key_partitions(tmp_path)],
            partition_keys=["user"],
        )

        assert job.result.ok
        assert sorted(job.output_lines()) == ["1", "2"]

    @pytest.mark.usefixtures("describe")
    def test_two_argument_run_without_partition_keys(self, run_job: RunJob) -> None:
        """Without partition keys, run(mini_batch, ctx) gets no key values, the mini-batch's files and its id."""
        job = run_job(
            """
            from describe import describe

            def run(mini_batch, mini_batch_context):
                return [describe(mini_batch, mini_batch_context)]
            """,
            files=3,
            mini_batch_size=2,
        )

        assert sorted(job.output_lines()) == ["0 - f000.txt+f001.txt 2", "1 - f002.txt 1"]

    @pytest.mark.usefixtures("describe")
    def test_two_argument_run_with_partition_keys(self, run_job: RunJob, tmp_path: Path) -> None:
        """With partition keys, the context holds the partition's key values, files and mini-batch id."""
        job = run_job(
            """
            from describe import describe

            def run(mini_batch, mini_batch_context):
                return [describe(mini_batch, mini_batch_context)]
            """,
            inputs=[key_partitions(tmp_path)],
            partition_keys=["user"],
        )

        assert sorted(line.split(" ", 1)[1] for line in job.output_lines()) == [
            "user=u1 jazz.wav+pop.wav 2",
            "user=u2 pop.wav 1",
        ]
        assert sorted(line.split(" ", 1)[0] for line in job.output_lines()) == ["0", "1"]

    @pytest.mark.usefixtures("describe")
    def test_star_args_run_gets_the_context(self, run_job: RunJob) -> None:
        """run(*args) is passed the mini-batch and its context."""
        job = run_job(
            """
            from describe import describe

            def run(*args):
                return [describe(*args)]
            """,
            files=2,
            mini_batch_size=2,
        )

        assert job.output_lines() == ["0 - f000.txt+f001.txt 2"]

    @pytest.mark.usefixtures("describe")
    def test_bound_method_run(self, run_job: RunJob) -> None:
        """run bound to an object's method (self, mini_batch, ctx) is passed the context."""
        job = run_job(
            """
            from describe import describe

            class Scorer:
                def score(self, mini_batch, mini_batch_context):
                    return [describe(mini_batch, mini_batch_context)]

            run = Scorer().score
            """,
            files=1,
        )

        assert job.output_lines() == ["0 - f000.txt 1"]

    def test_bound_method_without_context(self, run_job: RunJob) -> None:
        """run bound to a method (self, mini_batch) is called with the mini-batch alone."""
        job = run_job(
            """
            class Scorer:
                def count(self, mini_batch):
                    return [len(mini_batch)]

            run = Scorer().count
            """,
            files=1,
        )

        assert job.output_lines() == ["1"]
