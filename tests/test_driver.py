"""The job semantics of section 2, with real worker processes and adversarial entry scripts."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from pipeobs.datasets import FileDataset, TabularDataset
from tests.conftest import MemoryCgroup, RunJob, write_files, write_rendezvous, write_script

OOM_REASON = "The worker process was killed by SIGKILL (possibly out of memory: check dmesg)."
ECHO = """
import os
def run(mini_batch):
    return [os.path.basename(p) for p in mini_batch]
"""


class TestLifecycle:
    def test_init_once_per_worker_and_shutdown_called(self, run_job: RunJob) -> None:
        """init() runs once per worker process, run() per mini-batch, shutdown() at the end."""
        job = run_job(
            """
            import os
            def init():
                print("INIT", os.getpid())
            def run(mini_batch):
                print("RUN", os.getpid())
                return mini_batch
            def shutdown():
                print("SHUTDOWN", os.getpid())
            """,
            files=12,
            mini_batch_size=2,
        )

        texts = [r["text"] for r in job.query("SELECT text FROM log_lines WHERE stream='stdout'")]
        inits = [t for t in texts if t.startswith("INIT")]
        assert job.result.ok
        assert job.result.mini_batches_total == 6
        assert len(inits) == len(set(inits)) <= 2
        assert sum(t.startswith("RUN") for t in texts) == 6
        assert {t.split()[1] for t in texts if t.startswith("SHUTDOWN")} <= {t.split()[1] for t in inits}
        assert any(t.startswith("SHUTDOWN") for t in texts)

    def test_init_is_optional(self, run_job: RunJob) -> None:
        """A script with only run() works."""
        job = run_job(ECHO, files=3)

        assert job.result.ok
        assert sorted(job.output_lines()) == ["f000.txt", "f001.txt", "f002.txt"]

    def test_script_arguments_reach_sys_argv(self, run_job: RunJob) -> None:
        """Unknown arguments are passed through sys.argv for parse_known_args."""
        job = run_job(
            """
            import argparse
            def init():
                global MODEL
                parser = argparse.ArgumentParser()
                parser.add_argument("--model_name")
                MODEL = parser.parse_known_args()[0].model_name
            def run(mini_batch):
                return [MODEL for _ in mini_batch]
            """,
            files=2,
            arguments=["--model_name", "iris-prs"],
        )

        assert job.output_lines() == ["iris-prs", "iris-prs"]

    def test_output_path_variable_and_environment_variables(self, run_job: RunJob, tmp_path: Path) -> None:
        """AZUREML_BI_OUTPUT_PATH is the output folder; environment_variables reach workers."""
        job = run_job(
            """
            import os
            def run(mini_batch):
                return [os.environ["AZUREML_BI_OUTPUT_PATH"] + " " + os.environ["MY_FLAG"] for _ in mini_batch]
            """,
            files=1,
            environment_variables={"MY_FLAG": "on"},
        )

        assert job.output_lines() == [f"{tmp_path / 'out'} on"]

    def test_cuda_visible_devices_assignment(
        self, run_job: RunJob, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """With 2 GPUs and 4 processes, processes 0 and 1 get GPU 0 and 1, the others none."""
        monkeypatch.setenv("AZ_BATCHAI_GPU_COUNT_FOUND", "2")
        write_rendezvous(tmp_path)
        job = run_job(
            f"""
            import os, rendezvous
            from azureml_user.parallel_run import EntryScript
            def run(mini_batch):
                rendezvous.arrive_and_wait({str(tmp_path / "arrived")!r}, 4)  # every worker takes a mini-batch
                return [EntryScript().agent_name + "=" + os.environ.get("CUDA_VISIBLE_DEVICES", "none") for _ in mini_batch]
            """,
            files=8,
            mini_batch_size=1,
            process_count_per_node=4,
        )

        assert [r["error_message"] for r in job.query("SELECT error_message FROM attempts WHERE status != 'RUN_DONE'")] == []
        assert set(job.output_lines()) == {"process000=0", "process001=1", "process002=none", "process003=none"}


class TestReturnValues:
    def test_list_rows_are_str_plus_newline(self, run_job: RunJob) -> None:
        """append_row writes str(x) + newline for each list element."""
        job = run_job(
            """
            def run(mini_batch):
                return [{"a": 1}, 2.5, "text with spaces"][: len(mini_batch)]
            """,
            files=3,
            mini_batch_size=3,
        )

        assert job.output_lines() == ["{'a': 1}", "2.5", "text with spaces"]

    def test_dataframe_rows_space_separated_without_header(self, run_job: RunJob) -> None:
        """DataFrames are written space-separated, no header, no index, QUOTE_MINIMAL."""
        job = run_job(
            """
            import pandas as pd
            def run(mini_batch):
                return pd.DataFrame({"name": ["a b", "c"], "value": [1, None]}).head(len(mini_batch))
            """,
            files=2,
            mini_batch_size=2,
        )

        assert job.output_lines() == ['"a b" 1.0', "c "]

    def test_dataframe_header_opt_in_written_once(self, run_job: RunJob) -> None:
        """--append_row_dataframe_header writes the header once, at the top."""
        job = run_job(
            """
            import pandas as pd
            def run(mini_batch):
                return pd.DataFrame({"file": mini_batch, "n": range(len(mini_batch))})
            """,
            files=6,
            mini_batch_size=2,
            arguments=["--append_row_dataframe_header", "True"],
        )

        lines = job.output_lines()
        assert lines[0] == "file n"
        assert len(lines) == 7
        assert lines.count("file n") == 1

    def test_wrong_type_fails_the_attempt_with_azure_message(self, run_job: RunJob) -> None:
        """A return value that is not a list/tuple/DataFrame fails with Azure's message."""
        job = run_job("def run(mini_batch):\n    return None\n", files=2, mini_batch_size=2, run_max_try=1)

        error = job.result.first_error
        assert not job.result.ok
        assert error is not None
        assert "The return value 'None' is not a Pandas DataFrame or a list." in error["message"]
        assert "Please verify your entry script." in error["message"]

    def test_too_few_results_count_failed_items(self, run_job: RunJob) -> None:
        """Returning fewer elements counts the gap as failed items."""
        job = run_job("def run(mini_batch):\n    return mini_batch[:-1]\n", files=6, mini_batch_size=3)

        assert job.result.ok
        assert job.result.items_failed == 2
        assert job.result.items_succeeded == 4

    def test_too_many_results_capped_and_all_rows_written(self, run_job: RunJob) -> None:
        """More results than inputs: succeeded is capped, a warning is logged, all rows are kept."""
        job = run_job("def run(mini_batch):\n    return mini_batch * 2\n", files=2, mini_batch_size=2)

        assert job.result.items_succeeded == 2
        assert len(job.output_lines()) == 4
        assert "which is more than input count 2" in job.driver_log()

    def test_tuple_is_a_list(self, run_job: RunJob) -> None:
        """A tuple is accepted like a list."""
        job = run_job("def run(mini_batch):\n    return tuple(mini_batch)\n", files=2, output_action="summary_only")

        assert job.result.ok
        assert job.result.output_path is None

    def test_no_results_at_all_fails_append_row_job(self, run_job: RunJob) -> None:
        """An append_row job with no succeeded item fails with Azure's NoResultToAppend message."""
        job = run_job("def run(mini_batch):\n    return []\n", files=2)

        assert not job.result.ok
        assert job.result.reason is not None
        assert job.result.reason.startswith("There is no succeeded mini batch item returned from run().")


class TestFailuresAndRetries:
    def test_exception_is_retried_run_max_try_times(self, run_job: RunJob) -> None:
        """A raising run() is tried run_max_try times, then the mini-batch fails."""
        job = run_job(
            """
            def run(mini_batch):
                raise ValueError("bad input " + mini_batch[0][-8:])
            """,
            files=1,
            run_max_try=3,
            process_count_per_node=1,
        )

        attempts = job.query("SELECT attempt, status FROM attempts ORDER BY attempt")
        error = job.result.first_error
        assert [(a["attempt"], a["status"]) for a in attempts] == [(1, "RUN_EXCEPTION"), (2, "RUN_EXCEPTION"), (3, "RUN_EXCEPTION")]
        assert job.result.mini_batches_failed == 1
        assert error is not None and error["type"] == "ValueError"
        assert error["location"].endswith("score.py:3")
        assert "pipeobs/worker.py" not in error["traceback"]

    def test_retry_that_succeeds_has_no_duplicate_rows(self, run_job: RunJob, tmp_path: Path) -> None:
        """A mini-batch that fails once then succeeds contributes its rows exactly once."""
        job = run_job(
            f"""
            import os
            MARK = {str(tmp_path / "failed-once")!r}
            def run(mini_batch):
                rows = [os.path.basename(p) for p in mini_batch]
                if not os.path.exists(MARK):
                    open(MARK, "w").close()
                    raise RuntimeError("transient")
                return rows
            """,
            files=4,
            mini_batch_size=2,
            process_count_per_node=1,
        )

        assert job.result.ok
        assert sorted(job.output_lines()) == ["f000.txt", "f001.txt", "f002.txt", "f003.txt"]
        assert job.result.retries == 1

    def test_init_that_always_fails_fails_the_job(self, run_job: RunJob) -> None:
        """init() raising in every worker ends the job (exit 42) naming the user's error."""
        job = run_job(
            """
            def init():
                raise RuntimeError("model file missing")
            def run(mini_batch):
                return mini_batch
            """,
            files=2,
            process_count_per_node=1,
        )

        assert not job.result.ok
        assert job.result.first_error is not None
        assert job.result.first_error["message"] == "model file missing"
        assert "init()" in (job.result.reason or "")
        assert "model file missing" in (job.run_dir / "logs/user/error/0/process000.txt").read_text()


class TestCrashesAndTimeouts:
    def test_timeout_kills_replaces_and_reruns_init(self, run_job: RunJob, tmp_path: Path) -> None:
        """run_invocation_timeout kills the worker; a new processNNN runs init() again."""
        job = run_job(
            f"""
            import os, time
            MARK = {str(tmp_path / "hung-once")!r}
            def init():
                print("init pid", os.getpid())
            def run(mini_batch):
                if not os.path.exists(MARK):
                    open(MARK, "w").close()
                    time.sleep(60)
                return mini_batch
            """,
            files=2,
            mini_batch_size=1,
            process_count_per_node=1,
            run_invocation_timeout=1,
        )

        workers = job.query("SELECT worker, reason FROM workers ORDER BY worker")
        statuses = [r["status"] for r in job.query("SELECT status FROM attempts ORDER BY start_time")]
        inits = job.query("SELECT worker FROM log_lines WHERE text LIKE 'init pid%'")
        assert job.result.ok
        assert statuses[0] == "RUN_TIMEOUT"
        assert [w["worker"] for w in workers] == ["0/process000", "0/process001"]
        assert "did not finish in 1 seconds" in workers[0]["reason"]
        assert len(inits) == 2
        assert job.result.timeouts == 1

    @pytest.mark.parametrize(
        "crash",
        [
            "os._exit(13)",
            "os.kill(os.getpid(), signal.SIGKILL)",
            "ctypes.string_at(0)",
        ],
        ids=["os_exit", "sigkill", "segfault"],
    )
    def test_crash_is_retried_in_a_new_worker(self, run_job: RunJob, tmp_path: Path, crash: str) -> None:
        """A worker that dies mid-batch is replaced and the mini-batch retried."""
        job = run_job(
            f"""
            import ctypes, os, signal
            MARK = {str(tmp_path / "crashed-once")!r}
            def run(mini_batch):
                print("before the crash", flush=True)
                if not os.path.exists(MARK):
                    open(MARK, "w").close()
                    {crash}
                return mini_batch
            """,
            files=2,
            mini_batch_size=1,
            process_count_per_node=1,
        )

        first = job.query("SELECT status, error_message FROM attempts ORDER BY start_time")[0]
        assert job.result.ok
        assert len(job.output_lines()) == 2
        assert first["status"] == "PROCESS_CRASHED"
        assert job.result.worker_restarts == 1

    def test_crash_every_time_fails_mini_batch_after_max_tries(self, run_job: RunJob) -> None:
        """A mini-batch that always kills its worker fails after run_max_try tries."""
        job = run_job(
            """
            import os
            def run(mini_batch):
                if any(p.endswith("f001.txt") for p in mini_batch):
                    os._exit(1)
                return mini_batch
            """,
            files=3,
            mini_batch_size=1,
            process_count_per_node=1,
            run_max_try=2,
        )

        assert job.result.ok  # error_threshold -1: failures tolerated
        assert job.result.mini_batches_failed == 1
        assert job.result.items_failed == 1
        assert len(job.output_lines()) == 2

    def test_sigkill_is_reported_as_possibly_out_of_memory(self, run_job: RunJob) -> None:
        """A worker killed by SIGKILL fails its mini-batch, and the reason points at memory."""
        job = run_job(
            "import os, signal\ndef run(mini_batch):\n    os.kill(os.getpid(), signal.SIGKILL)\n",
            files=1,
            process_count_per_node=1,
            run_max_try=1,
        )

        workers = job.query("SELECT reason FROM workers")
        assert job.result.mini_batches_failed == 1
        assert workers[0]["reason"] == OOM_REASON

    def test_kernel_out_of_memory_kill_is_reported(self, tmp_path: Path, memory_cgroup: MemoryCgroup) -> None:
        """A worker the kernel's OOM killer kills (cgroup memory limit) is a crash reported as possibly out of memory."""
        write_script(
            tmp_path,
            """
            def run(mini_batch):
                chunks = [b"x" * (16 << 20) for _ in range(64)]  # 1 GiB, far past the cgroup's 256 MiB
                return mini_batch
            """,
        )
        write_files(tmp_path, 1)
        argv = [sys.executable, "-m", "pipeobs", "run", "score.py", "--input", "data", "--name", "oom",
                "--process-count-per-node", "1", "--run-max-try", "1"]

        proc = subprocess.run(memory_cgroup.command(argv), cwd=tmp_path, capture_output=True, text=True, timeout=100)

        with closing(sqlite3.connect(next((tmp_path / "runs" / "oom").glob("*/pipeobs.db")))) as db:
            attempts = db.execute("SELECT status, error_message FROM attempts").fetchall()
        assert memory_cgroup.oom_kills() == 1
        assert proc.returncode == 0, proc.stderr  # error_threshold -1: the failed mini-batch is tolerated
        assert attempts == [("PROCESS_CRASHED", OOM_REASON)]
        assert f"PROCESS_CRASHED: {OOM_REASON}" in proc.stdout

    def test_progress_update_timeout_stops_a_stuck_job(self, run_job: RunJob) -> None:
        """No mini-batch finishing within progress_update_timeout stops the job with a reason."""
        job = run_job(
            "import time\ndef run(mini_batch):\n    time.sleep(60)\n",
            files=1,
            process_count_per_node=1,
            run_invocation_timeout=100,
            settings={"progress_update_timeout": 1},
        )

        assert not job.result.ok
        assert job.result.reason == "No progress update in 1 seconds. Stopping processing." or (
            job.result.reason or ""
        ).startswith("No progress update in 1 seconds.")

    def test_first_task_creation_timeout(self, run_job: RunJob, tmp_path: Path) -> None:
        """An input whose listing hangs (a FIFO) stops the job at first_task_creation_timeout."""
        fifo = tmp_path / "stuck.csv"
        os.mkfifo(fifo)

        job = run_job(
            ECHO,
            inputs=[TabularDataset.from_delimited_files(str(fifo))],
            settings={"first_task_creation_timeout": 1},
        )

        assert not job.result.ok
        assert (job.result.reason or "").startswith("Unable to create any task within 1 seconds.")


class TestOutputFloods:
    def test_flood_of_output_and_binary_bytes_are_kept(self, run_job: RunJob) -> None:
        """20,000 lines and invalid UTF-8 are captured without loss or crash."""
        job = run_job(
            """
            import os, sys
            def run(mini_batch):
                for i in range(10000):
                    print("line", i)
                sys.stdout.flush()
                os.write(1, b"\\xff\\xfebinary\\n")
                for i in range(10000):
                    print("err", i, file=sys.stderr)
                return mini_batch
            """,
            files=1,
            process_count_per_node=1,
        )

        counts = job.query("SELECT stream, COUNT(*) AS n FROM log_lines WHERE phase='run' GROUP BY stream")
        binary = job.query("SELECT text FROM log_lines WHERE text LIKE '%binary'")
        assert {r["stream"]: r["n"] for r in counts} == {"stdout": 10001, "stderr": 10000}
        assert binary[0]["text"] == "\\xff\\xfebinary"

    def test_fork_and_subprocess_output_is_attributed(self, run_job: RunJob) -> None:
        """Output of a forked child and of a subprocess lands under the mini-batch."""
        job = run_job(
            """
            import os, subprocess, sys
            def run(mini_batch):
                pid = os.fork()
                if pid == 0:
                    print("from the fork", flush=True)
                    os._exit(0)
                os.waitpid(pid, 0)
                subprocess.run([sys.executable, "-c", "print('from a subprocess')"], check=True)
                return mini_batch
            """,
            files=1,
            process_count_per_node=1,
        )

        rows = job.query("SELECT text, mini_batch_id FROM log_lines WHERE text LIKE 'from %'")
        assert {r["text"]: r["mini_batch_id"] for r in rows} == {"from the fork": 0, "from a subprocess": 0}


class TestThresholds:
    FAIL_ODD = """
    def run(mini_batch):
        if int(mini_batch[0][-7:-4]) % 2:
            raise ValueError("odd")
        return mini_batch
    """

    def test_error_threshold_on_failed_items(self, run_job: RunJob) -> None:
        """More failed items than error_threshold fails the job with Azure's message."""
        job = run_job(self.FAIL_ODD, files=6, mini_batch_size=1, run_max_try=1, error_threshold=1)

        assert not job.result.ok
        assert "which exceeds error threshold 1." in (job.result.reason or "")
        assert "The number of failed items is" in (job.result.reason or "")

    def test_allowed_failed_count(self, run_job: RunJob) -> None:
        """allowed_failed_count counts failed mini-batches."""
        job = run_job(self.FAIL_ODD, files=6, mini_batch_size=1, run_max_try=1, allowed_failed_count=0)

        assert not job.result.ok
        assert "which exceeds allowed failed count 0." in (job.result.reason or "")

    def test_allowed_failed_percent(self, run_job: RunJob) -> None:
        """allowed_failed_percent compares failed mini-batches to all of them."""
        job = run_job(self.FAIL_ODD, files=6, mini_batch_size=1, run_max_try=1, allowed_failed_percent=10)

        assert not job.result.ok
        assert "which exceeds allowed failed percent 10." in (job.result.reason or "")

    def test_thresholds_not_exceeded(self, run_job: RunJob) -> None:
        """Failures within every threshold complete the job."""
        job = run_job(
            self.FAIL_ODD, files=6, mini_batch_size=1, run_max_try=1,
            error_threshold=3, allowed_failed_count=3, allowed_failed_percent=50,
        )

        assert job.result.ok
        assert job.result.items_failed == 3


class TestPartitionKeys:
    def test_mini_batch_context_has_partition_key_value(self, run_job: RunJob, tmp_path: Path) -> None:
        """With partition_keys, run(mini_batch, mini_batch_context) gets each key combination once."""
        root = tmp_path / "parts"
        for user, season, genre in [("u1", "s1", "jazz"), ("u1", "s2", "jazz"), ("u2", "s1", "pop")]:
            (root / user / season).mkdir(parents=True, exist_ok=True)
            (root / user / season / f"{genre}.wav").write_text("x")
        dataset = FileDataset.from_files(str(root), partition_format="{user}/{season}/{genres}.wav")

        job = run_job(
            """
            def run(mini_batch, mini_batch_context):
                kv = mini_batch_context.partition_key_value
                return [f"{kv['user']},{kv['genres']},{len(mini_batch)}"]
            """,
            inputs=[dataset],
            partition_keys=["user", "genres"],
        )

        assert sorted(job.output_lines()) == ["u1,jazz,2", "u2,pop,1"]


class TestTabular:
    def test_csv_rows_each_processed_once(self, run_job: RunJob, tmp_path: Path) -> None:
        """A CSV split by bytes gives every row exactly once, with its header's columns."""
        csv = tmp_path / "table.csv"
        csv.write_text("id,value\n" + "".join(f"{i},{i * 2}\n" for i in range(500)))

        job = run_job(
            """
            def run(df):
                return df.assign(double=df["value"] * 2)[["id", "double"]]
            """,
            inputs=[TabularDataset.from_delimited_files(str(csv))],
            mini_batch_size="1KB",
        )

        ids = sorted(int(line.split()[0]) for line in job.output_lines())
        assert ids == list(range(500))
        assert job.result.mini_batches_total > 3
        assert job.result.items_total == 500


class TestNodes:
    def test_node_count_runs_named_groups(self, run_job: RunJob, tmp_path: Path) -> None:
        """node_count=2 runs two groups of workers with per-node logs folders."""
        write_rendezvous(tmp_path)
        job = run_job(
            f"""
            import rendezvous
            def run(mini_batch):
                rendezvous.arrive_and_wait({str(tmp_path / "arrived")!r}, 2)  # both nodes take a mini-batch
                print("hello")
                return mini_batch
            """,
            files=4,
            mini_batch_size=1,
            node_count=2,
            process_count_per_node=1,
        )

        workers = {r["worker"] for r in job.query("SELECT worker FROM workers")}
        assert workers == {"0/process000", "1/process000"}
        for node in ("0", "1"):
            assert "hello" in (job.run_dir / f"logs/user/stdout/{node}/process000.stdout.txt").read_text()


def test_inputs_are_never_mixed_across_datasets(run_job: RunJob, tmp_path: Path) -> None:
    """Each input is partitioned separately: a mini-batch holds files of one input only."""
    a = write_files(tmp_path / "a", 3) if (tmp_path / "a").mkdir() is None else None
    b = write_files(tmp_path / "b", 3) if (tmp_path / "b").mkdir() is None else None
    assert a is not None and b is not None

    job = run_job(
        "def run(mb):\n    return [','.join(sorted({p.split('/')[-3] for p in mb}))]\n",
        inputs=[FileDataset.from_files(str(a)), FileDataset.from_files(str(b))],
        mini_batch_size=2,
    )

    assert sorted(job.output_lines()) == ["a", "a", "b", "b"]
