"""``--backend ray`` on a real Ray cluster of two raylets (see ``raycluster.py``): the same semantics and
records as the local backend, and what only a cluster has (node loss, inputs each node must see).

Every job runs as ``pipeobs run ... --backend ray --ray-address ADDR --node-count 2`` in its own
process (the head driver), as a user runs it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import write_files, write_rendezvous, write_script
from tests.raycluster import RayCluster
from tests.test_collector import wait_for
from tests.test_run_lifecycle import done, query

ECHO = """
import os
def run(mini_batch):
    return [os.path.basename(p) + " row" for p in mini_batch]
"""


class Job:
    def __init__(self, tmp_path: Path, proc: subprocess.CompletedProcess[str]) -> None:
        self.proc = proc
        found = sorted((tmp_path / "runs").glob("*/*/pipeobs.db"))
        self.run_dir = found[-1].parent if found else tmp_path

    def query(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        return query(self.run_dir, sql, *args)

    def rows(self) -> list[str]:
        return sorted((self.run_dir / "output" / "parallel_run_step.txt").read_text().splitlines())


def command(cluster: RayCluster, *args: str) -> list[str]:
    return [sys.executable, "-m", "pipeobs", "run", *args, "--backend", "ray", "--ray-address", cluster.address,
            "--output-action", "append_row"]


def run_on_ray(cluster: RayCluster, tmp_path: Path, source: str, files: int = 8, *args: str,
               timeout: float = 240) -> Job:
    write_script(tmp_path, source)
    write_files(tmp_path, files)
    proc = subprocess.run(command(cluster, "score.py", "--input", "data", "--node-count", "2", "--mini-batch-size", "1",
                                  "--process-count-per-node", "2", *args),
                          cwd=tmp_path, capture_output=True, text=True, timeout=timeout, env=cluster.env())
    return Job(tmp_path, proc)


CORRELATED = """
import logging, os
from azureml.core import Run

def init():
    print("init on", os.environ["PIPEOBS_WORKER"], "CUDA", os.environ.get("CUDA_VISIBLE_DEVICES"))

def run(mini_batch):
    name = os.path.basename(mini_batch[0])
    print("TOKEN-" + name, flush=True)
    logging.getLogger("score").warning("LOGGED-%s", name)
    Run.get_context().log("processed", 1)
    return [name + " row"]
"""


class TestSameSemanticsAsLocal:
    def test_two_nodes_each_with_its_processes_records_correlated_and_rows_once(
            self, ray_cluster: RayCluster, tmp_path: Path) -> None:
        job = run_on_ray(ray_cluster, tmp_path, CORRELATED, 16)

        assert job.proc.returncode == 0, job.proc.stdout + job.proc.stderr
        assert job.rows() == sorted(f"f{i:03d}.txt row" for i in range(16))
        workers = job.query("SELECT worker, node, name FROM workers ORDER BY worker")
        assert [(w["node"], w["name"]) for w in workers] == [(0, "process000"), (0, "process001"),
                                                             (1, "process000"), (1, "process001")]
        for node in (0, 1):  # the logs tree uses the real node indexes
            assert sorted(p.name for p in (job.run_dir / "logs" / "user" / "stdout" / str(node)).iterdir()) == [
                "process000.stdout.txt", "process001.stdout.txt"]
        placed = [r["message"] for r in job.query("SELECT message FROM events WHERE kind = 'node_start' ORDER BY message")]
        assert len(placed) == 2 and placed[0].startswith("Node 0") and placed[1].startswith("Node 1")
        assert len({m.split("Ray node ")[1].split(")")[0] for m in placed}) == 2  # two distinct Ray nodes
        inits = sorted(r["text"] for r in job.query("SELECT text FROM log_lines WHERE text LIKE 'init on%'"))
        assert [line.split()[2:] for line in inits] == [["0/process000", "CUDA", "0"], ["0/process001", "CUDA", "1"],
                                                        ["1/process000", "CUDA", "0"], ["1/process001", "CUDA", "1"]]
        spans = job.query("SELECT * FROM spans WHERE name = 'mini_batch'")
        assert len(spans) == 16
        for span in spans:
            key = (span["mini_batch_id"], span["attempt"])
            rows = [*job.query("SELECT * FROM log_lines WHERE text LIKE 'TOKEN-%' AND mini_batch_id=? AND attempt=?", *key),
                    *job.query("SELECT * FROM log_lines WHERE text LIKE 'LOGGED-%' AND mini_batch_id=? AND attempt=?", *key),
                    *job.query("SELECT * FROM metrics WHERE name='processed' AND mini_batch_id=? AND attempt=?", *key)]
            assert len(rows) == 3, key
            for row in rows:
                assert (row["step_id"], row["worker"], row["trace_id"], row["span_id"]) == (
                    span["step_id"], span["worker"], span["trace_id"], span["span_id"]), key

    def test_retries_thresholds_and_a_timeout_kill_with_a_new_process(self, ray_cluster: RayCluster,
                                                                       tmp_path: Path) -> None:
        write_rendezvous(tmp_path)
        job = run_on_ray(ray_cluster, tmp_path, f"""
            import os, time
            MARK = {str(tmp_path / "failed-once")!r}
            def run(mini_batch):
                name = os.path.basename(mini_batch[0])
                if name == "f001.txt" and not os.path.exists(MARK):
                    open(MARK, "w").close()
                    raise RuntimeError("first try fails")
                if name == "f003.txt" and not os.path.exists(MARK + ".slept"):
                    open(MARK + ".slept", "w").close()
                    time.sleep(120)
                return [name + " row"]
        """, 6, "--run-invocation-timeout", "3")

        assert job.proc.returncode == 0, job.proc.stdout + job.proc.stderr
        assert job.rows() == sorted(f"f{i:03d}.txt row" for i in range(6))
        statuses = sorted((r["mini_batch_id"], r["attempt"], r["status"]) for r in job.query(
            "SELECT mini_batch_id, attempt, status FROM attempts WHERE status != 'RUN_DONE'"))
        assert statuses == [(1, 1, "RUN_EXCEPTION"), (3, 1, "RUN_TIMEOUT")]
        killed = job.query("SELECT worker, reason FROM workers WHERE reason LIKE '%did not finish%'")
        assert len(killed) == 1
        node = killed[0]["worker"].split("/")[0]
        assert job.query("SELECT worker FROM workers WHERE worker = ?", f"{node}/process002")  # its replacement

    def test_each_node_samples_its_workers_resources_for_the_head(self, ray_cluster: RayCluster,
                                                                  tmp_path: Path) -> None:
        """The head cannot see other machines' pids: each supervisor samples its workers, the head records them."""
        # 16 x 0.3 s on 4 workers: each is alive across a publish of the built-in series (once a second)
        job = run_on_ray(ray_cluster, tmp_path, "import os, time\ndef run(mini_batch):\n    time.sleep(0.3)\n"
                         "    return [os.path.basename(p) for p in mini_batch]\n", 16,
                         "--resource-monitor-interval", "0.1")

        assert job.proc.returncode == 0, job.proc.stdout + job.proc.stderr
        for node in (0, 1):
            rows = (job.run_dir / "logs" / "perf" / str(node) / "processes_resource_usage.csv").read_text().splitlines()
            assert {row.split(",")[1] for row in rows[1:]} == {"process000", "process001"}, node
            assert len((job.run_dir / "logs" / "perf" / str(node) / "node_resource_usage.csv").read_text().splitlines()) > 1
        sampled = {r["worker"] for r in job.query("SELECT DISTINCT worker FROM metrics WHERE name = "
                                                  "'pipeobs_process_rss_bytes' AND value > 0")}
        assert sampled == {"0/process000", "0/process001", "1/process000", "1/process001"}

    def test_thresholds_fail_the_job_with_exit_42(self, ray_cluster: RayCluster, tmp_path: Path) -> None:
        job = run_on_ray(ray_cluster, tmp_path, "def run(mini_batch):\n    raise ValueError('always')\n", 6,
                         "--error-threshold", "2", "--run-max-try", "1")

        assert job.proc.returncode == 42, job.proc.stdout + job.proc.stderr
        assert "ValueError: always" in job.proc.stdout
        assert job.query("SELECT status FROM runs")[0]["status"] == "Failed"

    def test_a_segfault_loses_no_line_and_the_mini_batch_is_retried(self, ray_cluster: RayCluster,
                                                                    tmp_path: Path) -> None:
        job = run_on_ray(ray_cluster, tmp_path, f"""
            import ctypes, os
            MARK = {str(tmp_path / "crashed-once")!r}
            def run(mini_batch):
                name = os.path.basename(mini_batch[0])
                print("before the crash", name, flush=True)
                if name == "f002.txt" and not os.path.exists(MARK):
                    open(MARK, "w").close()
                    ctypes.string_at(0)
                return [name + " row"]
        """, 4)

        assert job.proc.returncode == 0, job.proc.stdout + job.proc.stderr
        assert job.rows() == sorted(f"f{i:03d}.txt row" for i in range(4))
        crashed = job.query("SELECT * FROM attempts WHERE status = 'PROCESS_CRASHED'")
        assert [(r["mini_batch_id"], r["attempt"]) for r in crashed] == [(2, 1)]
        before = job.query("SELECT * FROM log_lines WHERE text = 'before the crash f002.txt' ORDER BY attempt")
        assert [r["attempt"] for r in before] == [1, 2]
        fault = job.query("SELECT text FROM log_lines WHERE mini_batch_id = 2 AND attempt = 1 AND stream = 'stderr'")
        assert any("Segmentation fault" in r["text"] for r in fault)  # faulthandler's report, from the dead worker

    def test_resume_after_the_head_driver_is_sigkilled_keeps_each_row_once(
            self, ray_cluster: RayCluster, tmp_path: Path) -> None:
        gate = tmp_path / "driver-killed"
        write_rendezvous(tmp_path)
        write_script(tmp_path, f"""
            import os, rendezvous
            def run(mini_batch):
                names = [os.path.basename(p) for p in mini_batch]
                if max(names) >= "f020.txt":
                    rendezvous.wait_for({str(gate)!r}, timeout=120)
                return [name + " row" for name in names]
        """)
        write_files(tmp_path, 60)
        driver = subprocess.Popen(command(ray_cluster, "score.py", "--input", "data", "--node-count", "2",
                                          "--mini-batch-size", "2", "--process-count-per-node", "2", "--name", "resume-me"),
                                  cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ray_cluster.env())
        try:
            run_dir = wait_for(lambda: _with_done(tmp_path / "runs" / "resume-me", 10), timeout=120, what="progress")
        finally:
            driver.send_signal(signal.SIGKILL)
            driver.wait()
        done_before = done(run_dir)
        gate.touch()

        proc = subprocess.run([sys.executable, "-m", "pipeobs", "run", "--resume", str(run_dir)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=240, env=ray_cluster.env())

        lines = (run_dir / "output" / "parallel_run_step.txt").read_text().splitlines()
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert sorted(lines) == sorted(f"f{i:03d}.txt row" for i in range(60))
        assert done_before == 10
        assert json.loads(query(run_dir, "SELECT inputs FROM runs")[0][0])["backend"] == "ray"
        assert {r[0] for r in query(run_dir, "SELECT node FROM workers")} == {0, 1}


class TestClusterOnly:
    def test_a_lost_node_fails_its_attempts_node_lost_and_the_other_node_finishes(
            self, ray_cluster: RayCluster, tmp_path: Path) -> None:
        write_rendezvous(tmp_path)
        arrived = tmp_path / "arrived"
        write_script(tmp_path, f"""
            import os, time, rendezvous
            def run(mini_batch):
                name = os.path.basename(mini_batch[0])
                if os.environ["PIPEOBS_WORKER"].startswith("1/"):
                    open(os.path.join({str(arrived)!r}, name), "w").close()
                    time.sleep(120)  # node 1 holds its mini-batches until it is lost
                time.sleep(0.05)
                return [name + " row"]
        """)
        arrived.mkdir()
        write_files(tmp_path, 12)
        driver = subprocess.Popen(command(ray_cluster, "score.py", "--input", "data", "--node-count", "2",
                                          "--mini-batch-size", "1", "--process-count-per-node", "2"),
                                  cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=ray_cluster.env())
        try:
            wait_for(lambda: len(os.listdir(arrived)) >= 2, timeout=120, what="node 1 to hold two mini-batches")
            run_dir = next((tmp_path / "runs").glob("*/*"))
            placed = query(run_dir, "SELECT message FROM events WHERE kind = 'node_start' AND message LIKE 'Node 1%'")
            supervisor = int(placed[0][0].split("supervisor pid ")[1].split(",")[0])
            os.kill(supervisor, signal.SIGKILL)
            out, err = driver.communicate(timeout=180)
        finally:
            driver.kill()
            driver.wait()

        assert driver.returncode == 0, out + err
        lines = (run_dir / "output" / "parallel_run_step.txt").read_text().splitlines()
        assert sorted(lines) == sorted(f"f{i:03d}.txt row" for i in range(12))
        lost = query(run_dir, "SELECT mini_batch_id, worker FROM attempts WHERE status = 'NODE_LOST'")
        assert len(lost) == 2 and all(worker.startswith("1/") for _, worker in lost)
        retried = query(run_dir, "SELECT worker FROM attempts WHERE status = 'RUN_DONE' AND mini_batch_id IN "
                                  "(SELECT mini_batch_id FROM attempts WHERE status = 'NODE_LOST')")
        assert len(retried) == 2 and all(w.startswith("0/") for (w,) in retried)
        assert "node lost:    node 1" in out
        print(out)  # the transcript

    def test_an_input_a_node_cannot_see_is_refused_at_start(self, ray_cluster: RayCluster, tmp_path: Path) -> None:
        data = ray_cluster.hidden / f"data-{tmp_path.name}"
        data.mkdir()
        (data / "f000.txt").write_text("item\n")
        write_script(tmp_path, ECHO)

        proc = subprocess.run(command(ray_cluster, "score.py", "--input", str(data), "--node-count", "2"),
                              cwd=tmp_path, capture_output=True, text=True, timeout=120, env=ray_cluster.env())

        assert proc.returncode == 2, proc.stdout + proc.stderr
        error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(error) == 1 and str(data) in error[0] and "every node" in error[0]
        assert re.match(r"error: node [01] \(host [^,]+, Ray node [0-9a-f]+\) cannot see ", error[0])  # the one hiding it
        assert "Traceback" not in proc.stderr
        assert query(next((tmp_path / "runs").glob("*/*")), "SELECT status FROM runs")[0][0] == "Failed"

    def test_more_nodes_than_the_cluster_has_is_a_one_line_error(self, ray_cluster: RayCluster, tmp_path: Path) -> None:
        write_script(tmp_path, ECHO)
        write_files(tmp_path, 2)

        proc = subprocess.run(command(ray_cluster, "score.py", "--input", "data", "--node-count", "3"), cwd=tmp_path,
                              capture_output=True, text=True, timeout=120, env=ray_cluster.env())

        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "node_count 3 needs 3 Ray nodes" in proc.stderr and "Traceback" not in proc.stderr

    def test_the_python_api_and_yaml_take_the_backend(self, ray_cluster: RayCluster, tmp_path: Path) -> None:
        write_script(tmp_path, ECHO)
        write_files(tmp_path, 4)
        (tmp_path / "job.yaml").write_text(f"entry_script: score.py\ninputs: [data]\nnode_count: 2\nmini_batch_size: 1\n"
                                           f"backend: ray\nray_address: '{ray_cluster.address}'\n")
        code = ("from pipeobs import FileDataset, ParallelRunConfig, ParallelRunStep\n"
                "config = ParallelRunConfig(entry_script='score.py', error_threshold=0, output_action='append_row',"
                " node_count=2, process_count_per_node=1, mini_batch_size='1')\n"
                "step = ParallelRunStep('api', config, [FileDataset.from_files('data')], output='api-out')\n"
                f"result = step.run(backend='ray', ray_address={ray_cluster.address!r})\n"
                "print(result.status, result.mini_batches_succeeded)\n")

        api = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=180,
                             env=ray_cluster.env())
        yaml = subprocess.run([sys.executable, "-m", "pipeobs", "run", "-c", "job.yaml", "--name", "yaml"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=180, env=ray_cluster.env())

        assert api.returncode == 0 and api.stdout.splitlines()[-1] == "Completed 4", api.stdout + api.stderr
        assert yaml.returncode == 0, yaml.stdout + yaml.stderr
        nodes = {r[0] for r in query(next((tmp_path / "runs" / "yaml").glob("*")), "SELECT node FROM workers")}
        assert nodes == {0, 1}

    def test_exporters_run_in_the_head_only(self, ray_cluster: RayCluster, tmp_path: Path) -> None:
        target = tmp_path / "exported.jsonl"
        write_rendezvous(tmp_path)
        write_script(tmp_path, f"""
            import os, rendezvous
            NODES = {str(tmp_path / "nodes")!r}
            def run(mini_batch):  # each waits until both nodes run one: both nodes' spans are exported
                os.makedirs(NODES, exist_ok=True)
                open(os.path.join(NODES, os.environ["PIPEOBS_WORKER"].split("/")[0]), "w").close()
                for node in ("0", "1"):
                    rendezvous.wait_for(os.path.join(NODES, node), timeout=60)
                return [os.path.basename(p) for p in mini_batch]
        """)
        write_files(tmp_path, 6)

        proc = subprocess.run(command(ray_cluster, "score.py", "--input", "data", "--node-count", "2",
                                      "--mini-batch-size", "1", "--export", "jsonl"), cwd=tmp_path, capture_output=True,
                              text=True, timeout=180, env={**ray_cluster.env(), "PIPEOBS_EXPORT_JSONL": str(target)})

        assert proc.returncode == 0, proc.stdout + proc.stderr
        spans = [r for r in map(json.loads, target.read_text().splitlines()) if r.get("name") == "mini_batch"]
        assert len(spans) == 6  # the head's exporter received every worker's span, from both nodes
        assert {(s.get("worker") or s["attributes"]["pipeobs.worker"]).split("/")[0] for s in spans} == {"0", "1"}


def test_an_address_where_no_cluster_answers_is_a_one_line_error(tmp_path: Path) -> None:
    write_script(tmp_path, ECHO)
    write_files(tmp_path, 2)

    proc = subprocess.run([sys.executable, "-m", "pipeobs", "run", "score.py", "--input", "data", "--backend", "ray",
                           "--ray-address", "127.0.0.1:1"], cwd=tmp_path, capture_output=True, text=True, timeout=60)

    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: no Ray cluster answers at 127.0.0.1:1 (")
    assert proc.stderr.count("\n") == 1
    assert query(next((tmp_path / "runs").glob("*/*")), "SELECT status FROM runs")[0]["status"] == "Failed"


def test_a_supervisor_holds_a_bounded_number_of_items_for_the_head() -> None:
    """Past OUTBOX_LIMIT parsed items the supervisor stops reading pipes until the head fetches."""
    from pipeobs.executors.ray_supervisor import OUTBOX_LIMIT, Exited, Wrote, _Outbox

    outbox = _Outbox()
    outbox.worker_output("0/process000", ["line"] * (OUTBOX_LIMIT - 1))
    assert not outbox.full()
    outbox.worker_output("0/process000", ["line"])
    outbox.worker_exited("0/process000", 0)
    assert outbox.full()

    events = outbox.take(0)

    assert [type(e) for e in events] == [Wrote, Exited] and len(events[0].items) == OUTBOX_LIMIT
    assert not outbox.full() and outbox.take(0) == []


def test_a_supervisor_counts_the_lines_and_records_of_a_block() -> None:
    """A block of lines (one read of a pipe) or of log records counts as what it holds, so the bound holds
    whatever the reads look like."""
    from pipeobs.executors.ray_supervisor import OUTBOX_LIMIT, _Outbox
    from pipeobs.records import IDLE, LineBlock, RecordBlock

    outbox = _Outbox()
    outbox.worker_output("0/process000", [LineBlock("stdout", IDLE, ["line"] * (OUTBOX_LIMIT - 10), 0.0)])
    assert not outbox.full()
    outbox.worker_output("0/process000", [RecordBlock(IDLE, ("1.0",) * 10, ("INFO",) * 10, ("x",) * 10, ("m",) * 10)])
    assert outbox.full()


def test_without_ray_installed_the_backend_is_a_one_line_error_naming_the_extra(tmp_path: Path) -> None:
    blocker = tmp_path / "no-ray"
    (blocker / "ray").mkdir(parents=True)
    (blocker / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    write_script(tmp_path, ECHO)
    write_files(tmp_path, 2)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])}

    proc = subprocess.run([sys.executable, "-m", "pipeobs", "run", "score.py", "--input", "data", "--backend", "ray"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)

    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --backend ray needs Ray: pip install 'pipeobs[ray]'"
    assert not (tmp_path / "runs").exists()  # refused before anything was created


def _with_done(root: Path, at_least: int) -> Path | None:
    for run_dir in root.glob("*"):
        if (run_dir / "pipeobs.db").exists() and done(run_dir) >= at_least:
            return run_dir
    return None

