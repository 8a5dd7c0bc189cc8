"""A job stopped by a failure threshold reports counts that agree with the reason it gives.

Each job runs through real worker processes; the result, the printed summary, the driver log,
the progress overview and the store's ``runs`` row must all tell the same story as the reason.
"""

from __future__ import annotations

import io
import json
import re

from pipeobs.jobs import JobResult
from pipeobs.summary import print_result
from tests.conftest import Job, RunJob
from tests.driver.test_ledger import ledger

ALWAYS_FAILS = """
def run(mini_batch):
    raise ValueError("always")
"""

# f000.txt fails at once; every other mini-batch is still running when the job stops (and is killed).
FIRST_FAILS_OTHERS_HANG = """
import time

def run(mini_batch):
    if mini_batch[0].endswith("f000.txt"):
        raise ValueError("first")
    time.sleep(60)
    return mini_batch
"""


def reason_number(result: JobResult) -> float:
    """The count (or percentage) the reason states."""
    match = re.match(r"The (?:number|percentage) of failed (?:items|mini batches) is ([\d.]+)%?, which exceeds",
                     result.reason or "")
    assert match, result.reason
    return float(match[1])


def assert_every_record_agrees(job: Job) -> None:
    """The summary, the driver log, the progress overview and the runs row restate the result and its reason."""
    result = job.result
    printed = io.StringIO()
    print_result(result, printed)
    not_run = f"{result.mini_batches_not_run} not run, " if result.mini_batches_not_run else ""
    assert (f"mini-batches: {result.mini_batches_succeeded} succeeded, {result.mini_batches_failed} failed, "
            f"{not_run}{result.mini_batches_total} total") in printed.getvalue()
    assert f"reason:       {result.reason}" in printed.getvalue()
    assert result.headline() in job.driver_log().splitlines()[-1]
    overview = next((job.run_dir / "logs").glob("job_progress_overview.*.txt")).read_text().splitlines()
    assert f"|ERROR|{result.headline()} The error threshold is " in overview[-2]
    assert overview[-1].endswith(f"|ERROR|{result.reason}")
    [row] = job.query("SELECT status, error, summary FROM runs")
    assert (row["status"], row["error"]) == ("Failed", result.reason)
    assert JobResult(**json.loads(row["summary"])) == result


class TestThresholdStopCounts:
    def test_allowed_failed_count_counts_mini_batches_awaiting_a_retry_as_failed(self, run_job: RunJob) -> None:
        """Failed attempts that stop the job before their retries count as failed mini-batches and items."""
        job = run_job(ALWAYS_FAILS, files=4, mini_batch_size=1, allowed_failed_count=1)

        result = job.result
        assert result.status == "Failed"
        assert reason_number(result) == result.mini_batches_failed >= 2
        assert result.reason is not None and result.reason.endswith("which exceeds allowed failed count 1.")
        assert result.items_failed == result.mini_batches_failed and result.items_succeeded == 0
        assert result.mini_batches_not_run == result.mini_batches_total - result.mini_batches_failed
        assert_every_record_agrees(job)

    def test_error_threshold_counts_the_items_of_every_failed_mini_batch(self, run_job: RunJob) -> None:
        """The failed-items count of the reason is the items of all failed mini-batches, retried ones included."""
        job = run_job(ALWAYS_FAILS, files=8, mini_batch_size=2, run_max_try=2, error_threshold=1)

        result = job.result
        assert reason_number(result) == result.items_failed == 2 * result.mini_batches_failed >= 2
        assert result.reason is not None and result.reason.endswith("which exceeds error threshold 1.")
        assert_every_record_agrees(job)

    def test_allowed_failed_percent_is_the_share_of_failed_mini_batches(self, run_job: RunJob) -> None:
        """The percentage of the reason is failed over all mini-batches, as the summary counts them."""
        job = run_job(ALWAYS_FAILS, files=4, mini_batch_size=1, run_max_try=1, allowed_failed_percent=10)

        result = job.result
        assert reason_number(result) == round(100 * result.mini_batches_failed / result.mini_batches_total, 2) > 10
        assert result.reason is not None and result.reason.endswith("which exceeds allowed failed percent 10.")
        assert_every_record_agrees(job)

    def test_mini_batches_cut_short_by_the_stop_are_not_run_not_failed(self, run_job: RunJob) -> None:
        """Killing the workers to stop the job fails no attempt: what they were running counts as not run."""
        job = run_job(FIRST_FAILS_OTHERS_HANG, files=4, mini_batch_size=1, run_max_try=1, allowed_failed_count=0,
                      run_invocation_timeout=120)

        result = job.result
        assert (result.mini_batches_succeeded, result.mini_batches_failed, result.mini_batches_not_run) == (0, 1, 3)
        assert result.reason == "The number of failed mini batches is 1, which exceeds allowed failed count 0."
        assert (result.items_succeeded, result.items_failed, result.items_not_run) == (0, 1, 3)
        assert "Processed 1 mini batches containing 1 items, 0 succeeded, 1 failed." in result.headline()
        assert "(STOPPED)" not in job.driver_log()
        assert_every_record_agrees(job)


class TestLedgerStop:
    def test_a_stop_fails_what_awaits_a_retry_and_leaves_the_rest_not_run(self) -> None:
        """After a stop, a retry-pending failure is a failed mini-batch with its items; an unrun one stays pending."""
        book = ledger(3, allowed_failed_count=0)
        book.take(3)
        book.failed(0, 1, total=2)
        book.succeeded(1, total=2, succeeded=2)

        assert book.stop() == 1

        assert book.totals() == {"mini_batches_total": 3, "mini_batches_succeeded": 1, "mini_batches_failed": 1,
                                 "items_total": 6, "items_succeeded": 2, "items_failed": 2}
        assert book.exceeded() == "The number of failed mini batches is 1, which exceeds allowed failed count 0."
        assert list(book.pending) == [] and book.states[2].status == "pending"
