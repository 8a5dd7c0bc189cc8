"""The ledger with plain values: queue order, verdicts, tallies, thresholds, resume."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from pipeobs.driver.ledger import Ledger
from pipeobs.errors import PipeobsError
from pipeobs.jobs import Thresholds
from pipeobs.record.store import LedgerRow


@dataclass
class Batch:
    id: int
    item_count: int = 2

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "item_count": self.item_count})

    @classmethod
    def from_json(cls, text: str) -> Batch:
        return cls(**json.loads(text))


def ledger(count: int = 3, run_max_try: int = 3, **thresholds: object) -> Ledger:
    book = Ledger(Thresholds(**thresholds), run_max_try)  # type: ignore[arg-type]
    for i in range(count):
        book.add(Batch(i))
    book.all_scheduled = True
    return book


class TestQueue:
    def test_new_mini_batches_queue_as_first_attempts_in_order(self) -> None:
        """take() hands out (descriptor, attempt) in the order they were added."""
        book = ledger(3)

        taken = book.take(2)

        assert [(b.id, a) for b, a in taken] == [(0, 1), (1, 1)]
        assert list(book.pending) == [(2, 1)]

    def test_put_back_returns_attempts_to_the_front_in_order(self) -> None:
        """Tasks a dead worker never started go first, same attempt numbers."""
        book = ledger(4)
        book.take(3)

        book.put_back([(1, 1), (2, 1)])

        assert list(book.pending) == [(1, 1), (2, 1), (3, 1)]

    def test_a_known_mini_batch_is_not_queued_twice_and_a_changed_one_is_an_error(self) -> None:
        """Resume: partitioning yields what the ledger has; a different descriptor means changed inputs."""
        book = ledger(1)

        assert book.add(Batch(0)) is False
        with pytest.raises(PipeobsError, match="differs from the recorded one"):
            book.add(Batch(0, item_count=5))


class TestVerdicts:
    def test_a_failure_with_tries_left_is_requeued_as_the_next_attempt(self) -> None:
        """failed() appends attempt + 1 and says not final."""
        book = ledger(1, run_max_try=2)
        book.take(1)

        verdict = book.failed(0, 1, total=2)

        assert verdict.final is None and list(book.pending) == [(0, 2)]
        assert book.failed_batches == 1 and book.failed_items == 0

    def test_the_last_try_fails_the_mini_batch_and_its_items(self) -> None:
        """At run_max_try the mini-batch fails: all its items (at least one) count as failed."""
        book = ledger(1, run_max_try=1)
        book.take(1)

        verdict = book.failed(0, 1, total=None)

        assert verdict.final == "failed" and verdict.state.status == "failed"
        assert book.failed_items == 2 and book.finished == 1 and not book.pending

    def test_a_later_success_stops_counting_the_earlier_failure(self) -> None:
        """allowed_failed_count counts mini-batches whose latest attempt failed."""
        book = ledger(2, allowed_failed_count=0)
        book.failed(0, 1, total=2)
        assert book.exceeded() is not None

        book.succeeded(0, total=2, succeeded=2)

        assert book.failed_batches == 0 and book.exceeded() is None

    def test_fewer_results_than_inputs_are_failed_items(self) -> None:
        """A done mini-batch with 1 of 2 items succeeded adds one failed item, no failed mini-batch."""
        book = ledger(1, error_threshold=0)

        book.succeeded(0, total=2, succeeded=1)

        assert (book.failed_items, book.failed_batches) == (1, 0)
        assert book.exceeded() == "The number of failed items is 1, which exceeds error threshold 0."

    def test_allowed_failed_percent_waits_until_everything_is_scheduled(self) -> None:
        """The percent check starts after all mini-batches have been scheduled."""
        book = ledger(2, allowed_failed_percent=10.0, run_max_try=1)
        book.all_scheduled = False
        book.failed(0, 1, total=2)
        assert book.exceeded() is None

        book.all_scheduled = True

        assert "The percentage of failed mini batches is 50.00%" in (book.exceeded() or "")

    def test_totals_add_up(self) -> None:
        """The result's counts come from the states."""
        book = ledger(3, run_max_try=1)
        book.succeeded(0, total=2, succeeded=2)
        book.succeeded(1, total=2, succeeded=1)
        book.failed(2, 1, total=2)

        assert book.totals() == {"mini_batches_total": 3, "mini_batches_succeeded": 2, "mini_batches_failed": 1,
                                 "items_total": 6, "items_succeeded": 3, "items_failed": 3}


class TestRestore:
    def test_restore_keeps_finished_work_and_queues_the_rest_as_their_next_attempt(self) -> None:
        """A resumed ledger: done stays done, pending resumes at tries + 1 (capped at run_max_try)."""
        book = Ledger(Thresholds(), run_max_try=2)
        rows = [
            LedgerRow(0, Batch(0).to_json(), "done", 2, 2, 1),
            LedgerRow(1, Batch(1).to_json(), "pending", None, 0, 1),
            LedgerRow(2, Batch(2).to_json(), "pending", None, 0, 2),
            LedgerRow(3, Batch(3).to_json(), "failed", 2, 0, 2),
        ]

        finished = book.restore(rows, Batch.from_json)

        assert finished == 2
        assert list(book.pending) == [(1, 2), (2, 2)]
        assert book.failed_batches == 1 and book.failed_items == 2
