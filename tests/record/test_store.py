"""The store owns its SQL: named methods queue rows, one flush writes them, readers see named columns."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from pipeobs.record.store import Store, WorkerRow
from pipeobs.records import Event, Invocation, Line, Metric, Span

RUN = Invocation("run", 2, 1, "a" * 32, "b" * 16)


def read(path: Path, sql: str) -> list[sqlite3.Row]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


class TestStoreWrites:
    def test_records_of_the_pipeline_land_in_their_tables_with_their_attribution(self, tmp_path: Path) -> None:
        """A line, a metric, a span and an event: one flush, each row named and attributed."""
        path = tmp_path / "pipeobs.db"
        store = Store(path, "step-1")

        store.add_line(Line("log", RUN, "careful", level="WARNING", logger="x", time=5.0, worker="0/process001",
                            custom_dimensions={"k": 1}))
        store.add_metric(Metric(RUN, "list", "scores", [1, 2], "", 6.0, "0/process001"))
        store.add_span(Span({"span_id": "s1", "trace_id": "t", "parent_span_id": None, "name": "job", "kind": "CONSUMER",
                             "start": 1.0, "end": 2.0, "status": "OK", "status_message": None,
                             "attributes": {"pipeobs.step_id": "step-1"}, "events": []}, "driver"))
        store.add_event(Event(7.0, "INFO", "start", "Start job"))
        assert read(path, "SELECT COUNT(*) AS n FROM log_lines")[0]["n"] == 0
        store.flush()

        line = read(path, "SELECT * FROM log_lines")[0]
        assert (line["step_id"], line["worker"], line["mini_batch_id"], line["span_id"]) == ("step-1", "0/process001", 2, "b" * 16)
        assert json.loads(line["attributes"]) == {"k": 1}
        metric = read(path, "SELECT * FROM metrics")[0]
        assert metric["value"] is None and json.loads(metric["value_json"]) == [1, 2]
        span = read(path, "SELECT * FROM spans")[0]
        assert span["worker"] is None and span["step_id"] == "step-1"
        assert read(path, "SELECT kind FROM events")[0]["kind"] == "start"
        store.close()

    def test_a_mini_batch_verdict_commits_with_the_output_size(self, tmp_path: Path) -> None:
        """The ledger row and runs.output_size are written in the same transaction."""
        path = tmp_path / "pipeobs.db"
        store = Store(path, "step-1")
        store.insert_run({"step_id": "step-1", "status": "Running"})
        store.add_mini_batch(0, json.dumps({"id": 0}))
        store.add_attempt(0, 1, "0/process000", 42, {"status": "RUN_DONE", "total": 3, "succeeded": 2})

        store.finish_mini_batch(0, status="done", attempts=1, total=3, succeeded=2, worker="0/process000", output_end=12)
        store.update_run(output_size=12)
        store.close()

        row = read(path, "SELECT * FROM mini_batches")[0]
        assert (row["status"], row["failed"], row["output_end"]) == ("done", 1, 12)
        assert read(path, "SELECT output_size FROM runs")[0]["output_size"] == 12
        reopened = Store(path, "step-1")
        assert [(r.id, r.status, r.tries) for r in reopened.restore_ledger()] == [(0, "done", 1)]
        reopened.close()

    def test_rows_by_column_name_fill_step_id_and_encode_json(self, tmp_path: Path) -> None:
        """insert() takes a dict by column name (the collector's rows); unknown columns stay NULL."""
        path = tmp_path / "pipeobs.db"
        store = Store(path, "collected")

        store.insert("metrics", {"time": 1.0, "name": "m", "kind": "gauge", "value": 2.0, "labels": {"b": 1, "a": 2}})
        store.insert("spans", {"span_id": "s", "trace_id": "t", "name": "n", "kind": "INTERNAL", "start_time": 1.0,
                               "status": "OK"})
        store.put_worker(WorkerRow("0/process000", 0, "process000", 7, started=1.0))
        store.close()

        metric = read(path, "SELECT * FROM metrics")[0]
        assert metric["step_id"] == "collected" and metric["labels"] == '{"a": 2, "b": 1}'
        span = read(path, "SELECT attributes, events FROM spans")[0]
        assert (span["attributes"], span["events"]) == ("{}", "[]")
        assert read(path, "SELECT pid FROM workers")[0]["pid"] == 7

    def test_report_queries_read_attempts_and_workers(self, tmp_path: Path) -> None:
        """The end-of-run reports read through named queries, not SQL of their own."""
        store = Store(tmp_path / "pipeobs.db", "s")
        store.add_mini_batch(0, "{}")
        store.put_worker(WorkerRow("0/process000", 0, "process000", 7))
        store.add_attempt(0, 1, "0/process000", 7, {"status": "RUN_EXCEPTION", "total": 1, "start_time": 1.0,
                                                    "error": {"type": "E", "message": "m"}})
        store.add_attempt(0, 2, "0/process000", 7, {"status": "RUN_DONE", "total": 1, "succeeded": 1, "start_time": 2.0})
        store.flush()

        assert [r["status"] for r in store.failed_attempts()] == ["RUN_EXCEPTION"]
        assert [r[1] for r in store.attempts_for_report()] == [1, 2]
        by_worker = store.attempt_totals("worker")[0]
        assert (by_worker["k"], by_worker[1], by_worker[2]) == ("0/process000", 2, 1)
        assert set(store.workers()) == {"0/process000"}
        store.close()
