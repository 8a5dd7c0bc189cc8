"""Capture and the run directory (issue: every line kept, tied to its mini-batch, Azure's tree)."""

from __future__ import annotations

import csv
from pathlib import Path

from pipeobs.record.driverlog import utc_stamp
from pipeobs.record.reports import PROCESSED_COLUMNS
from tests.conftest import RunJob


class TestCaptureSurvivesKills:
    def test_marker_printed_before_a_timeout_kill_is_kept_under_its_mini_batch(self, run_job: RunJob, tmp_path: Path) -> None:
        """A worker killed mid-batch loses nothing it printed: the marker is in every log, attributed."""
        job = run_job(
            f"""
            import os, sys, time
            MARK = {str(tmp_path / "hung-once")!r}
            def run(mini_batch):
                if not os.path.exists(MARK):
                    open(MARK, "w").close()
                    print("MARKER-BEFORE-KILL")
                    os.write(2, b"RAW-STDERR-BEFORE-KILL")
                    time.sleep(60)
                return mini_batch
            """,
            files=1,
            process_count_per_node=1,
            run_invocation_timeout=1,
        )

        rows = job.query("SELECT stream, mini_batch_id, attempt, worker FROM log_lines WHERE text LIKE '%BEFORE-KILL'")
        assert sorted(tuple(r) for r in rows) == [("stderr", 0, 1, "0/process000"), ("stdout", 0, 1, "0/process000")]
        assert "MARKER-BEFORE-KILL" in (job.run_dir / "logs/user/stdout/0/process000.stdout.txt").read_text()
        assert "RAW-STDERR-BEFORE-KILL" in (job.run_dir / "logs/user/stderr/0/process000.stderr.txt").read_text()
        assert "0/process000 mb=0 a=1 STDOUT MARKER-BEFORE-KILL" in job.driver_log()

    def test_c_stdio_output_is_attributed(self, run_job: RunJob) -> None:
        """Output a C extension prints through libc's buffered stdio lands under its mini-batch."""
        job = run_job(
            """
            import ctypes
            LIBC = ctypes.CDLL(None)
            def run(mini_batch):
                LIBC.printf(b"from C code\\n")
                return mini_batch
            """,
            files=2,
            mini_batch_size=1,
            process_count_per_node=1,
        )

        rows = job.query("SELECT mini_batch_id FROM log_lines WHERE text = 'from C code' ORDER BY mini_batch_id")
        assert [r["mini_batch_id"] for r in rows] == [0, 1]


class TestLogging:
    SCRIPT = """
    import logging
    from azureml_user.parallel_run import EntryScript
    def run(mini_batch):
        logging.getLogger("user.mod").debug("debug record")
        logging.getLogger("user.mod").info("info record")
        EntryScript().logger.debug("es debug")
        EntryScript().logger.warning("es warning")
        return mini_batch
    """

    def test_logging_level_info_filters_debug(self, run_job: RunJob) -> None:
        """At INFO (the default), DEBUG records of the root and EntryScript loggers are dropped."""
        job = run_job(self.SCRIPT, files=1, process_count_per_node=1)

        rows = job.query("SELECT text, level, logger, mini_batch_id FROM log_lines WHERE stream='log' AND phase='run'")
        texts = {r["text"] for r in rows}
        assert texts == {"info record", "es warning"}
        info = next(r for r in rows if r["text"] == "info record")
        assert (info["level"], info["logger"], info["mini_batch_id"]) == ("INFO", "user.mod", 0)

    def test_logging_level_debug_keeps_debug(self, run_job: RunJob) -> None:
        """logging_level=DEBUG keeps DEBUG records."""
        job = run_job(self.SCRIPT, files=1, process_count_per_node=1, logging_level="DEBUG")

        texts = {r["text"] for r in job.query("SELECT text FROM log_lines WHERE stream='log' AND phase='run'")}
        assert {"debug record", "es debug"} <= texts

    def test_entry_script_logger_has_its_own_file_and_root_goes_to_stdout(self, run_job: RunJob) -> None:
        """EntryScript().logger lands in entry_script_log; root logging in the stdout file (as Azure)."""
        job = run_job(self.SCRIPT, files=1, process_count_per_node=1)

        es_log = (job.run_dir / "logs/user/entry_script_log/0/process000.log.txt").read_text()
        stdout = (job.run_dir / "logs/user/stdout/0/process000.stdout.txt").read_text()
        assert "es warning" in es_log
        assert "info record" in stdout
        assert "es warning" not in stdout

    def test_pipeobs_records_are_not_user_output(self, run_job: RunJob) -> None:
        """pipeobs's own warnings go to the system log, never to the user's files."""
        job = run_job("def run(mb):\n    return mb * 3\n", files=1, process_count_per_node=1)

        sys_log = (job.run_dir / "logs/sys/node/0/process000.txt").read_text()
        stdout_file = job.run_dir / "logs/user/stdout/0/process000.stdout.txt"
        assert "which is more than input count 1" in sys_log
        assert not stdout_file.exists() or "more than input count" not in stdout_file.read_text()


class TestLogRecordsEndToEnd:
    SCRIPT = """
    import logging, sys
    from azureml_user.parallel_run import EntryScript
    def run(mini_batch):
        for i in range(300):  # many records per read: they travel and are stored in blocks
            logging.getLogger("user.mod").info("record %d", i, extra={"custom_dimensions": {"i": i}} if i % 7 == 0 else {})
            if i % 50 == 0:
                print("printed", i, file=sys.stderr)
                logging.getLogger("tab\\tlogger").warning("multi\\nline\\twith \\\\ and caf\\u00e9 %d", i)
                EntryScript().logger.info("entry script %d", i)
                logging.getLogger("pipeobs.user_side").info("system %d", i)
        return mini_batch
    """

    def expected(self) -> list[tuple[str, str, str, str | None, str]]:
        """(text, level, logger, attributes, file) of the records the script logs, in order."""
        rows: list[tuple[str, str, str, str | None, str]] = []
        for i in range(300):
            rows.append((f"record {i}", "INFO", "user.mod", f'{{"i": {i}}}' if i % 7 == 0 else None, "stdout"))
            if i % 50 == 0:
                rows.append((f"multi\nline\twith \\ and caf\u00e9 {i}", "WARNING", "tab\tlogger", None, "stdout"))
                rows.append((f"entry script {i}", "INFO", "0_process000", None, "entry_script"))
                rows.append((f"system {i}", "INFO", "pipeobs.user_side", None, "sys"))
        return rows

    def test_records_reach_the_store_files_and_driver_log_as_logged(self, run_job: RunJob) -> None:
        """Every record keeps its text, level, logger, dimensions and time in log_lines, lands in its file
        (system log, entry_script_log or stdout) and has its line in the driver log, in order."""
        job = run_job(self.SCRIPT, files=1, process_count_per_node=1)

        rows = job.query("SELECT time, text, level, logger, attributes, mini_batch_id, attempt, worker FROM log_lines "
                         "WHERE stream = 'log' AND phase = 'run' ORDER BY id")
        assert [tuple(r)[1:5] for r in rows] == [row[:4] for row in self.expected()]
        assert {(r["mini_batch_id"], r["attempt"], r["worker"]) for r in rows} == {(0, 1, "0/process000")}
        times = [r["time"] for r in rows]
        assert times == sorted(times)
        logs = job.run_dir / "logs"
        files = {"sys": "", "entry_script": "", "stdout": ""}
        for text, *_, kind in self.expected():
            files[kind] += text + "\n"
        assert (logs / "user/stdout/0/process000.stdout.txt").read_text() == files["stdout"]
        assert (logs / "user/entry_script_log/0/process000.log.txt").read_text() == files["entry_script"]
        assert files["sys"] in (logs / "sys/node/0/process000.txt").read_text()
        assert (logs / "user/stderr/0/process000.stderr.txt").read_text() == "".join(f"printed {i}\n" for i in range(0, 300, 50))
        driver_log, position = job.driver_log(), 0
        for r in rows:  # each record's line, in order (the driver's own lines may come between)
            line = f"{utc_stamp(r['time'])} 0/process000 mb=0 a=1 {r['level']} {r['text']}\n"
            position = driver_log.index(line, position) + len(line)


class TestLogsTree:
    def test_azure_tree_is_written(self, run_job: RunJob) -> None:
        """The run directory has Azure's logs tree, with one processed row per attempt."""
        job = run_job(
            """
            import sys
            def init():
                print("init says hi")
            def run(mini_batch):
                print("out", mini_batch[0][-8:])
                print("err", file=sys.stderr)
                if mini_batch[0].endswith("f001.txt"):
                    raise ValueError("boom")
                return mini_batch
            """,
            files=3,
            mini_batch_size=1,
            process_count_per_node=1,
            run_max_try=2,
            settings={"resource_monitor_interval": 0.1},
        )
        logs = job.run_dir / "logs"

        for relative in [
            "readme.txt", "job_result.txt", "job_error.txt", "sys/job_report/processed_mini-batches.csv",
            "sys/job_report/process_summary.csv", "sys/job_report/node_summary.csv", "sys/node/0/process000.txt",
            "user/stdout/0/process000.stdout.txt", "user/stderr/0/process000.stderr.txt",
            "user/error/0/process000.txt", "perf/0/processes_resource_usage.csv", "perf/0/node_resource_usage.csv",
        ]:
            assert (logs / relative).is_file(), relative
        assert len(list(logs.glob("job_progress_overview.*.txt"))) == 1
        with open(logs / "sys/job_report/processed_mini-batches.csv") as handle:
            rows = list(csv.DictReader(handle))
        assert tuple(rows[0]) == PROCESSED_COLUMNS
        assert len(rows) == 4  # 3 mini-batches, one retried
        assert sorted(r["Status"] for r in rows) == ["RUN_DONE", "RUN_DONE", "RUN_EXCEPTION", "RUN_EXCEPTION"]
        assert "boom" in (logs / "user/error/0/process000.txt").read_text()
        assert "ValueError: boom" in (logs / "job_error.txt").read_text()
        overview = next(logs.glob("job_progress_overview.*.txt")).read_text()
        assert "Scheduling finished. Scheduled 3 mini batches with 3 items" in overview
        assert "The error threshold is -1." in overview
        with open(logs / "perf/0/processes_resource_usage.csv") as handle:
            perf = list(csv.DictReader(handle))
        assert max(float(r["Rss (MB)"]) for r in perf) > 5  # a Python process holds MBs

    def test_driver_log_holds_every_line_in_order_with_prefixes(self, run_job: RunJob) -> None:
        """70_driver_log.txt has the driver's narrative and worker lines, greppable by mini-batch."""
        job = run_job(
            "def run(mb):\n    print('token', mb[0][-8:])\n    return mb\n",
            files=3,
            mini_batch_size=1,
            process_count_per_node=1,
        )

        log = job.driver_log().splitlines()
        mb1 = [line for line in log if " mb=1 " in line]
        assert any(line.endswith("STDOUT token f001.txt") for line in mb1)
        assert log[0].split(" ", 1)[1].startswith("driver - INFO Start job")
        assert all(line[:4].isdigit() and line[23] == "Z" for line in log)
        assert "Status: Completed" in log[-1]

    def test_job_result_names_first_error_and_traceback_file(self, run_job: RunJob) -> None:
        """A failed job's job_result.txt names the error, the user's file:line, the inputs and the traceback file."""
        job = run_job(
            "def run(mb):\n    return [1 / 0 for _ in mb]\n",
            files=2,
            mini_batch_size=2,
            process_count_per_node=1,
            run_max_try=1,
            error_threshold=0,
        )

        text = (job.run_dir / "logs/job_result.txt").read_text()
        assert "Status: Failed" in text
        assert "ZeroDivisionError: division by zero" in text
        assert "score.py:2" in text
        assert "mini batch 0 (attempt 1, 2 files: f000.txt, f001.txt)" in text
        assert "logs/user/error/0/process000.txt" in text


class TestAzuremlCompatibility:
    def test_entry_script_members(self, run_job: RunJob, tmp_path: Path) -> None:
        """EntryScript gives agent_name, log_dir, output_dir, working_dir, and is a singleton."""
        job = run_job(
            """
            from azureml_user.parallel_run import EntryScript
            def run(mini_batch):
                es = EntryScript()
                assert es is EntryScript()
                return [f"{es.agent_name}|{es.log_dir}|{es.output_dir}|{es.working_dir}"]
            """,
            files=1,
            process_count_per_node=1,
        )

        agent, log_dir, output_dir, working_dir = job.output_lines()[0].split("|")
        assert agent == "process000"
        assert log_dir == str(job.run_dir / "logs/user/entry_script_log/0")
        assert output_dir == str(tmp_path / "out")
        assert Path(working_dir).is_dir()

    def test_run_context_and_model_path(self, run_job: RunJob, tmp_path: Path) -> None:
        """azureml.core Run/Model work in workers: run.id is the step_id, metrics are stored, models resolve."""
        models = tmp_path / "models"
        (models / "digits").mkdir(parents=True)
        job = run_job(
            """
            from azureml.core import Model, Run
            def run(mini_batch):
                run = Run.get_context()
                run.log("batch_size", len(mini_batch))
                run.log_list("sizes", [1, 2])
                run.tag("phase", "scoring")
                return [f"{run.id} {Model.get_model_path('digits')}"]
            """,
            files=1,
            process_count_per_node=1,
            model_dir=models,
        )

        run_id, model_path = job.output_lines()[0].split()
        metrics = job.query(
            "SELECT name, kind, value, value_json, mini_batch_id, attempt, worker FROM metrics "
            "WHERE name NOT LIKE 'pipeobs_%' ORDER BY id"
        )
        assert run_id == job.result.step_id
        assert model_path == str(models / "digits")
        assert [(m["name"], m["kind"], m["value"], m["value_json"]) for m in metrics] == [
            ("batch_size", "scalar", 1.0, None), ("sizes", "list", None, "[1, 2]"), ("phase", "tag", None, '"scoring"'),
        ]
        assert {(m["mini_batch_id"], m["attempt"], m["worker"]) for m in metrics} == {(0, 1, "0/process000")}

    def test_offline_run_prints(self, capsys: object) -> None:
        """Outside a pipeobs run, Run.get_context() is an offline run that prints what it logs."""
        from pipeobs.azureml import Run

        run = Run.get_context()
        run.log("accuracy", 0.9)

        assert run.id.startswith("OfflineRun")
        assert run.get_metrics() == {"accuracy": 0.9}
        assert "Attempted to log scalar metric accuracy:\n0.9" in capsys.readouterr().out  # type: ignore[attr-defined]


class TestExceptionRecords:
    def test_logger_exception_keeps_the_traceback(self, run_job: RunJob) -> None:
        """logger.exception() inside run() is stored at ERROR with its traceback, under the mini-batch."""
        job = run_job(
            """
            import logging
            def run(mini_batch):
                try:
                    1 / 0
                except ZeroDivisionError:
                    logging.getLogger("user").exception("failed %s", "here")
                return mini_batch
            """,
            files=1,
            process_count_per_node=1,
        )

        row = job.query("SELECT * FROM log_lines WHERE level='ERROR'")[0]
        assert row["text"].startswith("failed here\nTraceback (most recent call last):")
        assert row["text"].endswith("ZeroDivisionError: division by zero")
        assert (row["mini_batch_id"], row["logger"]) == (0, "user")
