"""(k) pipeobs on a Ray cluster (issue 15): ``pipeobs run --backend ray`` against a raw Ray ActorPool.

One two-raylet cluster on loopback (``tests.raycluster.two_raylets``, one CPU per raylet) serves the
whole section. Ray probes a public resolver for its own address, so the section runs only in a
network namespace with nothing but loopback. Both sides do the same work per item, round by round;
what is timed, and how, is :func:`_method` (the report prints it). The head driver's CPU is read from
``/proc`` while ``pipeobs run`` runs, and per mini-batch it says how many nodes one head serves.
Where a target is missed (or in a smoke run), :func:`explain` measures what limits it while the
cluster is still up: the job's phases, each worker's time, every process's CPU on both sides, and
the head driver's event loop under cProfile.
"""

from __future__ import annotations

import cProfile
import functools
import io
import json
import logging
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from bench import jobs
from bench.common import (
    PYTHON,
    BenchError,
    Section,
    Target,
    child_env,
    fmt,
    median,
    pipeobs_command,
    ratio,
    run_child,
)

KEY = "ray"
TITLE = "(k) `--backend ray` on two single-CPU raylets vs a raw Ray ActorPool"
NAMESPACE_ERROR = ("Ray must run in a network namespace with only loopback: unshare -n sh -c 'ip link set lo up "
                   "&& exec .venv/bin/python bench/run.py --only ray' (unshare -rn when not root)")
# A token left in ~/.ray/auth_token by any earlier local ray.init() turns token auth on for `ray start`, and
# the second raylet is then refused. This cluster is reachable from loopback in a private namespace only.
NO_AUTH = {"RAY_AUTH_MODE": "disabled"}
SAMPLE_SECONDS = 0.02
SLEEP_MS = 10.0
NODE_RATE = 100.0  # mini-batches/s of a node running one 10 ms worker: the rate node counts are given at
RUN_TIMEOUT = 600.0
LOCK_WAIT = "<method 'acquire' of '_thread.lock' objects>"  # threading.Event.wait: a poll with no fetch out
ENTRY = """
import time

SLEEP = {sleep}
LINES = {lines}

def run(mini_batch):
    if SLEEP:
        time.sleep(SLEEP)
    for i in range(LINES):
        print("line", i, "of", mini_batch[0])
    return mini_batch
"""


@dataclass(frozen=True)
class Workload:
    """What every mini-batch (or peer task) does: sleep, then print ``lines`` lines."""

    name: str
    n: int
    sleep_ms: float = 0.0
    lines: int = 0

    @property
    def label(self) -> str:
        return f"{self.sleep_ms:.0f} ms sleep" if self.sleep_ms else "no-op"


@dataclass
class Cluster:
    """The section's cluster and scratch folder: inputs per size, one fresh runs folder per job."""

    address: str
    root: Path
    ray_env: dict[str, str]  # what Ray's clients need here
    jobs_run: int = 0
    inputs: dict[int, Path] = field(default_factory=dict)

    def folder(self, n: int) -> Path:
        if n not in self.inputs:
            self.inputs[n] = jobs.make_files(self.root / f"in-{n}", n)
        return self.inputs[n]

    def command(self, workload: Workload, per_node: int) -> list[str]:
        """``pipeobs run`` arguments for ``workload``; a fresh runs folder, so no job reuses another."""
        self.jobs_run += 1
        script = jobs.write_script(self.root, f"{workload.name}.py",
                                   ENTRY.format(sleep=workload.sleep_ms / 1000, lines=workload.lines))
        return ["run", str(script), "--input", str(self.folder(workload.n)), "--mini-batch-size", "1",
                "--node-count", "2", "--process-count-per-node", str(per_node), "--output-action", "append_row",
                "--runs-dir", str(self.root / f"runs-{self.jobs_run}"), "--backend", "ray",
                "--ray-address", self.address]


# ---------------------------------------------------------------------- the pipeobs side
@contextmanager
def head_process(argv: list[str], env: dict[str, str], root: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The head driver in a subprocess, its output in files (read on failure); killed if left running."""
    with open(root / "head.out", "wb") as out, open(root / "head.err", "w+b") as err:
        process = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        try:
            yield process
        finally:
            if process.returncode is None:
                process.kill()
                process.wait()
        if process.returncode != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip()[-800:]
            raise BenchError(f"pipeobs run --backend ray exited {process.returncode}: {tail}")


def watch_cpu(process: subprocess.Popen[bytes], timeout: float) -> tuple[list[tuple[float, float]], float]:
    """Sample the process's CPU seconds (user+sys) every SAMPLE_SECONDS until it exits; then its total
    from ``wait4`` (exact, whatever happened after the last sample)."""
    import psutil

    handle, samples = psutil.Process(process.pid), list[tuple[float, float]]()
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return samples, usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            raise BenchError(f"pipeobs run did not finish within {timeout:.0f} s")
        try:
            times = handle.cpu_times()
            samples.append((time.time(), times.user + times.system))
        except psutil.NoSuchProcess:  # a zombie until the next wait4
            pass
        time.sleep(SAMPLE_SECONDS)


def cpu_between(samples: list[tuple[float, float]], total: float, start: float, end: float) -> float:
    """CPU seconds from the last sample at or before ``start`` to the first at or after ``end``."""
    before = max((cpu for at, cpu in samples if at <= start), default=0.0)
    after = min((cpu for at, cpu in samples if at >= end), default=total)
    return after - before


def read_run(runs_dir: Path, n: int) -> dict[str, Any]:
    """The stored JobResult and times of the job under ``runs_dir``; its output must hold ``n`` rows."""
    run_dir = next(runs_dir.glob("*/*/pipeobs.db")).parent
    rows = jobs.query(run_dir, "SELECT summary, started_at, ended_at FROM runs")
    summary, started_at, ended_at = json.loads(rows[0][0]), rows[0][1], rows[0][2]
    first, last_end, nodes = jobs.query(
        run_dir, "SELECT min(start_time), max(start_time + elapsed), count(DISTINCT substr(worker, 1, 1)) FROM attempts"
    )[0]
    written = Path(summary["output_path"]).read_text().count("\n")
    if summary["status"] != "Completed" or summary["mini_batches_succeeded"] != n or written != n:
        raise BenchError(f"the job ended {summary['status']} with {summary['mini_batches_succeeded']} of {n} "
                         f"mini-batches and {written} rows: {summary.get('reason')}")
    driver_start = ended_at - summary["duration_seconds"]  # the driver's clock, in epoch seconds
    return {"summary": summary, "run_dir": str(run_dir), "first": first, "last_end": last_end, "nodes": nodes,
            "steady": jobs.steady_rate(run_dir), "phases": {
                "plan, Ray connect, supervisors placed (before the duration)": driver_start - started_at,
                "driver start to the first attempt (workers start on the nodes)": first - driver_start,
                "first attempt start to the last attempt end": last_end - first,
                "last attempt end to the driver's end (workers stop, reports)": ended_at - last_end}}


def run_pipeobs(cluster: Cluster, workload: Workload, per_node: int, profile_to: Path | None = None,
                sampler: TreeSampler | None = None) -> dict[str, Any]:
    """One real ``pipeobs run --backend ray`` job: its rates and its head driver's CPU (``profile_to``:
    the head's event loop under cProfile, see :func:`profiled_head`)."""
    args = cluster.command(workload, per_node)
    argv = [*pipeobs_command(), *args] if profile_to is None else [
        PYTHON, "-m", "bench.child", "ray_backend:profiled_head", json.dumps({"out": str(profile_to), "argv": args})]
    began = time.perf_counter()
    with head_process(argv, child_env(cluster.ray_env), cluster.root) as process:
        if sampler is not None:
            sampler.head = process.pid
        samples, total = watch_cpu(process, RUN_TIMEOUT)
    run = read_run(cluster.root / f"runs-{cluster.jobs_run}", workload.n)
    n, duration = workload.n, run["summary"]["duration_seconds"]
    window = cpu_between(samples, total, run["first"], run["last_end"])
    return {**run, "rate": n / duration, "duration": duration, "wall": time.perf_counter() - began,
            "window": [run["first"], run["last_end"]], "window_us": window / n * 1e6, "total_us": total / n * 1e6}


def profiled_head(out: str, argv: list[str]) -> dict[str, Any]:
    """``pipeobs run ARGV`` in this process with the driver's event loop (``Driver._loop``: the
    mini-batches, not the imports, the Ray connection or the reports) under cProfile, dumped to ``out``."""
    from pipeobs import cli
    from pipeobs.driver.core import Driver

    loop, profiler = Driver._loop, cProfile.Profile()

    def profiled(self: Driver) -> None:
        profiler.enable()
        try:
            loop(self)
        finally:
            profiler.disable()
            profiler.dump_stats(out)

    Driver._loop = profiled  # type: ignore[method-assign]
    code = cli.main(argv)
    if code:
        sys.exit(code)
    return {}


# ---------------------------------------------------------------------- the peer (a child process)
def actor_pool(address: str, workloads: list[list[Any]], pools: list[int]) -> dict[str, Any]:
    """Ray's own pool on the same cluster. For each pool size, that many actors spread evenly over the
    two raylets (``num_cpus = 2 / size``), then each workload (folder, n, sleep_ms) mapped once over the
    folder's file paths, timed after ``ray.init`` and the actors' start-up; the driver's CPU (every
    thread) per task alongside."""
    import ray

    began = time.perf_counter()
    ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    try:
        connect = time.perf_counter() - began
        return {str(size): {**_pool_run(ray, size, workloads), "connect": connect} for size in pools}
    finally:
        ray.shutdown()


def _pool_run(ray: Any, size: int, workloads: list[list[Any]]) -> dict[str, Any]:
    from ray.util import ActorPool

    @ray.remote(num_cpus=2 / size)
    class Peer:
        def node(self) -> str:
            return str(ray.get_runtime_context().get_node_id())

        def run(self, item: str, sleep: float) -> str:
            if sleep:
                time.sleep(sleep)
            return item

    began = time.perf_counter()
    actors = [Peer.remote() for _ in range(size)]  # type: ignore[attr-defined]
    nodes = ray.get([actor.node.remote() for actor in actors], timeout=120)
    result: dict[str, Any] = {"actor_start": time.perf_counter() - began, "nodes": len(set(nodes)), "runs": []}
    for folder, n, sleep_ms in workloads:
        items = [str(Path(folder, f"f{i:07d}")) for i in range(n)]  # jobs.make_files's names
        pool, sleep = ActorPool(actors), sleep_ms / 1000
        cpu, wall, began = _cpu_self(), time.time(), time.perf_counter()
        done = len(list(pool.map_unordered(functools.partial(_submit, sleep), items)))
        seconds = time.perf_counter() - began
        if done != n:
            raise BenchError(f"ActorPool returned {done} of {n} results")
        result["runs"].append({"rate": n / seconds, "window": [wall, wall + seconds],
                               "driver_us": (_cpu_self() - cpu) / n * 1e6})
    for actor in actors:
        ray.kill(actor)
    return result


def _submit(sleep: float, actor: Any, item: str) -> Any:
    return actor.run.remote(item, sleep)


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------- the section
def workloads(sizes: dict[str, Any]) -> tuple[Workload, Workload]:
    return Workload("noop", sizes["cluster_noop_n"]), Workload("sleep", sizes["cluster_sleep_n"], sleep_ms=SLEEP_MS)


def bench_ray(sizes: dict[str, Any]) -> Section:
    """Everything on one cluster; what limits a missed target is measured before the cluster stops."""
    from tests.raycluster import RAY_ENV, only_loopback, two_raylets

    if not only_loopback():
        return Section(KEY, TITLE, "", error=NAMESPACE_ERROR)
    section = Section(KEY, TITLE, _method(sizes))
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp, mock.patch.dict(os.environ, NO_AUTH):
        root = Path(tmp)
        (root / "cluster").mkdir()
        began = time.perf_counter()
        with two_raylets(root / "cluster", num_gpus=0) as ray_cluster:
            cluster = Cluster(ray_cluster.address, root, {**RAY_ENV, **NO_AUTH})
            section.notes.append(f"The cluster started in {time.perf_counter() - began:.1f} s (not timed).")
            section.data = measure(cluster, sizes)
            _report(section, section.data, sizes)
            if section.missed or sizes["profile_always"]:
                try:
                    section.profile = explain(cluster, sizes)
                except Exception as exc:  # noqa: BLE001 - a failed profile is reported, the figures stand
                    section.profile = f"(profiling failed: {type(exc).__name__}: {exc})"
                    section.error = f"profiling failed: {exc}"
    return section


def measure(cluster: Cluster, sizes: dict[str, Any]) -> dict[str, Any]:
    """Round by round: each pipeobs job, then the peer (one ray.init) over the same workloads; then the
    head driver's CPU with printed lines."""
    per_nodes, both = sizes["cluster_per_node"], workloads(sizes)
    ours: dict[str, list[dict[str, Any]]] = {f"{w.name}/{p}": [] for p in per_nodes for w in both}
    peers = []
    for _ in range(sizes["repeats"]):
        for per_node in per_nodes:
            for workload in both:
                ours[f"{workload.name}/{per_node}"].append(run_pipeobs(cluster, workload, per_node))
        peers.append(run_peer(cluster, list(both), [2 * p for p in per_nodes]))
    lines: dict[str, list[dict[str, Any]]] = {str(k): [] for k in sizes["cluster_lines"]}
    for _ in range(sizes["repeats"]):
        for k in sizes["cluster_lines"]:
            lines[str(k)].append(run_pipeobs(cluster, Workload(f"lines{k}", sizes["cluster_lines_n"], lines=k), 1))
    return {"ours": ours, "peers": peers, "lines": lines}


def run_peer(cluster: Cluster, chosen: list[Workload], pools: list[int]) -> dict[str, Any]:
    work = [[str(cluster.folder(w.n)), w.n, w.sleep_ms] for w in chosen]
    return run_child("ray_backend:actor_pool", RUN_TIMEOUT, env=cluster.ray_env, address=cluster.address,
                     workloads=work, pools=pools)


def _method(sizes: dict[str, Any]) -> str:
    noop, sleep = workloads(sizes)
    return (
        f"Two raylets on loopback, 1 CPU each (`tests.raycluster.two_raylets`), one cluster for the section. pipeobs: "
        "a real `pipeobs run ENTRY --backend ray --ray-address ADDR --node-count 2 --process-count-per-node P` (the "
        "head driver, a subprocess) over N empty files, mini_batch_size 1, append_row, full telemetry (spans, "
        f"metrics, capture, store, ledger, output); run() returns its mini-batch (no-op, N = {noop.n:,}) or sleeps "
        f"{SLEEP_MS:.0f} ms first (N = {sleep.n:,}). Job rate = `mini_batches_total / duration_seconds` of the "
        "JobResult the driver stores (`runs.summary`): connecting to Ray and placing the node supervisors come "
        "before that clock, starting the worker processes on the nodes is inside it; steady = first to last "
        "attempt start (store), worker start-up excluded. Peer: `ray.util.ActorPool` over 2 actors (`num_cpus=1`, "
        "one per raylet; 4 actors of `num_cpus=0.5` against P = 2) returning the same item (after the same sleep), "
        f"`map_unordered`, timed after `ray.init` and the actors' start-up. {sizes['repeats']} round(s), each: "
        "every pipeobs job, then the peer; medians. Targets are judged on the job rate. Head-driver CPU: user+sys "
        f"of the `pipeobs run` process (psutil every {SAMPLE_SECONDS * 1000:.0f} ms, `wait4` at exit) over the "
        "mini-batch window (the sample before the first attempt start to the one after the last attempt end), per "
        "mini-batch; in all (interpreter, imports, Ray connect, reports) alongside."
    )


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(runs, key=lambda run: run["rate"])[len(runs) // 2]


def _report(section: Section, data: dict[str, Any], sizes: dict[str, Any]) -> None:
    for per_node in sizes["cluster_per_node"]:
        for index, workload in enumerate(workloads(sizes)):
            peer_runs = [round_[str(2 * per_node)] for round_ in data["peers"]]
            peer_rate = median([p["runs"][index]["rate"] for p in peer_runs])
            runs = data["ours"][f"{workload.name}/{per_node}"]
            ours = _median_run(runs)
            name = f"pipeobs --backend ray, {per_node} process(es)/node, {workload.label}"
            section.add(f"{name}: job", ours["rate"], "mini-batches/s", f"{ratio(ours['rate'], peer_rate)} ActorPool",
                        f"jobs: {', '.join(fmt(r['rate']) for r in runs)}/s; duration {ours['duration']:.2f} s, "
                        f"`pipeobs run` wall {ours['wall']:.2f} s; head CPU {ours['window_us']:.0f} µs per "
                        f"mini-batch; attempts on {ours['nodes']} nodes")
            section.add(f"{name}: steady", ours["steady"], "mini-batches/s",
                        f"{ratio(ours['steady'], peer_rate)} ActorPool", "first to last attempt start")
            actors = 2 * per_node
            section.add(f"Ray ActorPool, {actors} actors (num_cpus={2 / actors:g}), {workload.label}", peer_rate,
                        "tasks/s", "", _peer_note(peer_runs, index))
            if per_node == 1:
                achieved, steady = ours["rate"] / peer_rate, (ours["steady"] or 0) / peer_rate
                section.targets.append(Target(f">= 1x a raw Ray ActorPool, {workload.label} (2 raylets, 1 worker "
                                              "each)", f"{achieved:.2f}x (steady {steady:.2f}x)", achieved >= 1))
    _head_cpu(section, data, sizes)


def _peer_note(peer_runs: list[dict[str, Any]], index: int) -> str:
    rates = ", ".join(fmt(p["runs"][index]["rate"]) for p in peer_runs)
    first = peer_runs[0]
    return (f"rounds: {rates}/s; actors on {first['nodes']} nodes; driver CPU "
            f"{median([p['runs'][index]['driver_us'] for p in peer_runs]):.0f} µs per task; ray.init "
            f"{first['connect']:.2f} s + actors {first['actor_start']:.2f} s, not timed")


def _serves(us: float) -> str:
    if us <= 0:  # a smoke run's CPU can be below the clock's tick
        return "- (no CPU measured)"
    return f"{1e6 / us:,.0f}/s ({1e6 / us / NODE_RATE:,.1f} nodes)"


def _head_cpu(section: Section, data: dict[str, Any], sizes: dict[str, Any]) -> None:
    """Head-driver CPU per mini-batch: both workloads, then with printed lines; what one core serves."""
    noop, sleep = (data["ours"][f"{w.name}/1"] for w in workloads(sizes))
    rows = [("no-op, 0 lines", noop), (f"{SLEEP_MS:.0f} ms sleep, 0 lines", sleep),
            *((f"no-op, {k} lines printed", runs) for k, runs in data["lines"].items())]
    cost: dict[str, float] = {}
    for what, runs in rows:
        cost[what] = median([run["window_us"] for run in runs])
        section.add(f"head-driver CPU per mini-batch, {what}", cost[what], "µs", "",
                    f"jobs: {', '.join(fmt(run['window_us']) for run in runs)} µs; one head core: "
                    f"{_serves(cost[what])} at {NODE_RATE:.0f}/s per node; in all (start-up, reports) "
                    f"{median([run['total_us'] for run in runs]):,.0f} µs")
    most = max(data["lines"], key=int)
    batched, single = cost["no-op, 0 lines"], cost[f"{SLEEP_MS:.0f} ms sleep, 0 lines"]
    per_line = (cost[f"no-op, {most} lines printed"] - batched) / int(most)
    section.add("head-driver CPU per printed line", per_line, "µs", "", f"(no-op with {most} lines - no-op) / {most}")
    section.notes.append(
        f"What one head core serves, at {NODE_RATE:.0f} mini-batches/s per node (one worker on {SLEEP_MS:.0f} ms "
        f"mini-batches): {_serves(batched)} when each node's events reach the head in batches (no-op: "
        f"{batched:.0f} µs of head CPU per mini-batch) and {_serves(single)} when a fetch carries about one "
        f"mini-batch ({SLEEP_MS:.0f} ms mini-batches, one worker per node: {single:.0f} µs). The second is the floor "
        "for nodes this slow as long as the head keeps up (a busier head fetches less often, so batches should "
        "fill; not measured here). Each printed line adds "
        f"{per_line:.1f} µs: with L lines per mini-batch that is 1e6 / ({batched:.0f} + {per_line:.1f} L) and "
        f"1e6 / ({single:.0f} + {per_line:.1f} L) mini-batches/s: "
        + "; ".join(f"L = {k}: {_serves(batched + per_line * k)} to {_serves(single + per_line * k)}"
                    for k in sizes["cluster_lines"]) + "."
    )


# ---------------------------------------------------------------------- what limits it
def explain(cluster: Cluster, sizes: dict[str, Any]) -> str:
    """Each workload of ``cluster_explained`` (both, met or missed, at full size: the head's cost per
    mini-batch differs between them, and each bounds what one head serves) once more, with every
    process's CPU sampled on both sides: the job's phases and the workers' time; then the head under cProfile."""
    text = []
    for workload in (w for w in workloads(sizes) if w.name in sizes["cluster_explained"]):
        with TreeSampler() as sampler:
            ours = run_pipeobs(cluster, workload, 1, sampler=sampler)
            peer = run_peer(cluster, [workload], [2])["2"]["runs"][0]
        text += [f"**{workload.label}** ({workload.n:,} mini-batches, one worker per node), run once more:",
                 _fence("\n".join([*_phases(ours), *_worker_time(ours["run_dir"], peer["rate"], workload)]))]
        text.append(_fence(_split(workload, ours, sampler.window(*ours["window"]), peer,
                                  sampler.window(*peer["window"]), sampler.head_threads(*ours["window"]))))
        text += [f"The head driver's event loop (`Driver._loop`, the main thread of `pipeobs run`) under cProfile, "
                 f"{workload.label}; Ray's own threads are not seen; cProfile inflates small calls, compare shares; "
                 "µs per mini-batch:", _fence(profile_head(cluster, workload))]
    return "\n\n".join(text)


def _phases(run: dict[str, Any]) -> list[str]:
    lines = [f"pipeobs run: wall {run['wall']:.2f} s; JobResult duration {run['duration']:.2f} s "
             f"({run['rate']:,.0f}/s); steady {run['steady'] or 0:,.0f}/s"]
    lines += [f"  {seconds:6.2f} s  {phase}" for phase, seconds in run["phases"].items()]
    return lines


def _worker_time(run_dir: str, peer_rate: float, workload: Workload) -> list[str]:
    """Per mini-batch, the medians of each worker's time: in run(), in pipeobs around it, waiting for the next."""
    rows = jobs.query(run_dir, "SELECT worker, start_time, elapsed, run_seconds FROM attempts "
                               "ORDER BY worker, start_time")
    gaps = [b[1] - (a[1] + a[2]) for a, b in zip(rows, rows[1:], strict=False) if a[0] == b[0]]
    ran, elapsed = statistics.median(r[3] or 0.0 for r in rows), statistics.median(r[2] for r in rows)
    gap = statistics.median(gaps) if gaps else 0.0
    each = elapsed + gap
    return [f"each worker, per mini-batch (medians): run() {ran * 1e3:.2f} ms, pipeobs around it (span, markers, "
            f"result) {(elapsed - ran) * 1e3:.2f} ms, waiting for its next task {gap * 1e3:.2f} ms = {each * 1e3:.2f} "
            f"ms, i.e. {2 / each if each > 0 else 0:,.0f}/s for 2 workers",
            f"ActorPool: {peer_rate:,.0f}/s = {2 / peer_rate * 1e3:.2f} ms per task and actor, of which the "
            f"task's own work is {workload.sleep_ms:.0f} ms plus a call"]


def _split(workload: Workload, ours: dict[str, Any], mine: dict[str, float], peer: dict[str, Any],
           theirs: dict[str, float], threads: dict[str, float]) -> str:
    n = workload.n
    lines = ["CPU of every process of the cluster (psutil every 0.1 s, scaled to each side's window), µs per "
             "mini-batch:"]
    for name, rate, window, split in (("pipeobs --backend ray", ours["steady"] or ours["rate"], ours["window"], mine),
                                      ("Ray ActorPool", peer["rate"], peer["window"], theirs)):
        seconds, total = window[1] - window[0], sum(split.values())
        lines.append(f"{name}: {rate:,.0f}/s; {total / n * 1e6:,.0f} µs in all = {total / seconds:.2f} of the 2 "
                     f"cores busy over {seconds:.2f} s")
        lines += [f"  {cpu / n * 1e6:8,.0f}  {kind}" for kind, cpu in sorted(split.items(), key=lambda kv: -kv[1])]
    lines.append("the head driver (pipeobs run), by thread:")
    lines += [f"  {cpu / n * 1e6:8,.0f}  {kind}" for kind, cpu in sorted(threads.items(), key=lambda kv: -kv[1])[:6]]
    return "\n".join(lines)


def profile_head(cluster: Cluster, workload: Workload) -> str:
    """One job with the head driver's event loop under cProfile: the summary, and its Ray actor calls."""
    from bench.profiles import DRIVER_WAITS, OUT, _label, _shown, summarize

    OUT.mkdir(parents=True, exist_ok=True)
    kept = OUT / f"ray-head-{workload.name}.prof"
    run = run_pipeobs(cluster, workload, 1, profile_to=kept)
    stats = pstats.Stats(str(kept), stream=io.StringIO())
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    waits = (*DRIVER_WAITS, LOCK_WAIT, *(_label(f) for f in raw if f[2] == "wait" and "ray/_private" in f[0]))
    text = summarize(stats, f"head driver, Driver._loop ({run['steady'] or run['rate']:,.0f} mini-batches/s "
                            "profiled)", workload.n, waits)
    calls = [entry for func, entry in raw.items() if func[2] == "_actor_method_call"]
    fetches = sum(entry[1] for func, entry in raw.items() if func[2] == "_arm" and "ray_nodes" in func[0])
    if calls:
        count, cumulative, n = sum(e[1] for e in calls), sum(e[3] for e in calls), workload.n
        text += (f"\nRay actor calls from the head: {count / n:.2f} per mini-batch ({fetches / n:.2f} fetches "
                 f"re-armed, {(count - fetches) / n:.2f} command batches), {cumulative / count * 1e6:.0f} µs each "
                 "in Python (cumulative, cProfile)")
    return f"{text}\n\nProfile kept in {_shown(kept)}."


def _fence(text: str) -> str:
    return f"```\n{text}\n```"


class TreeSampler:
    """CPU seconds of every process under this one (raylets, GCS, supervisors, workers, the head, the
    peer), by kind, and of the head driver's threads, sampled on a thread every ``interval`` seconds."""

    def __init__(self, interval: float = 0.1) -> None:
        import psutil

        self.me, self.interval = psutil.Process(), interval
        self.head: int | None = None  # the pid of the head driver being run
        self.samples: list[tuple[float, dict[int, tuple[str, float]]]] = []
        self.threads: list[tuple[float, dict[str, tuple[str, float]]]] = []  # the head's, CPU by kind
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-tree", daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            now, seen = time.time(), {}
            for process in self.me.children(recursive=True):
                try:
                    times = process.cpu_times()
                    seen[process.pid] = (self._kind(process), times.user + times.system)
                    if process.pid == self.head:
                        self.threads.append((now, {kind: (kind, cpu) for kind, cpu in _thread_cpu(process).items()}))
                except (psutil.Error, OSError):  # gone meanwhile
                    continue
            self.samples.append((now, seen))
            self._stop.wait(self.interval)

    def _kind(self, process: Any) -> str:
        if process.pid == self.head:
            return "head driver (pipeobs run)"
        command = " ".join(process.cmdline())
        for needle, kind in (("pipeobs.worker", "pipeobs workers"), ("ray::Peer", "ActorPool actors"),
                             ("ray::NodeSupervisor", "node supervisors (Ray actors)"),
                             ("ray_backend:actor_pool", "ActorPool driver")):
            if needle in command:
                return kind
        return "Ray's own processes (raylets, GCS, agents, idle workers)"

    def window(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds per kind of process from ``start`` to ``end`` (epoch)."""
        return _delta(self.samples, start, end)

    def head_threads(self, start: float, end: float) -> dict[str, float]:
        """The head driver's CPU seconds per kind of thread from ``start`` to ``end``."""
        return _delta(self.threads, start, end)


def _thread_cpu(process: Any) -> dict[str, float]:
    """A process's CPU by thread: its main thread, its other Python threads, Ray's (by thread name)."""
    split: dict[str, float] = {}
    own = Path(f"/proc/{process.pid}/comm").read_text().strip()
    for thread in process.threads():
        try:
            name = Path(f"/proc/{process.pid}/task/{thread.id}/comm").read_text().strip()
        except OSError:
            continue
        if thread.id == process.pid:
            kind = "main thread: the driver loop (Python)"
        elif name == own:
            kind = "other Python threads (partitioner, exports)"
        else:
            kind = f"Ray thread '{name.rstrip('0123456789')}'"
        split[kind] = split.get(kind, 0.0) + thread.user_time + thread.system_time
    return split


def _delta(samples: list[tuple[float, dict[Any, tuple[str, float]]]], start: float, end: float) -> dict[str, float]:
    """Per kind, the CPU used between the samples around ``start`` and ``end``, scaled to the window."""
    first = max((at for at, _ in samples if at <= start), default=start)
    last = min((at for at, _ in samples if at >= end), default=end)
    before = {key: value for at, seen in samples if at <= start for key, value in seen.items()}  # last seen
    after = {key: value for at, seen in samples if at <= last for key, value in seen.items()}
    totals: dict[str, float] = {}
    for key, (kind, cpu) in after.items():
        used = cpu - before.get(key, (kind, 0.0))[1]  # 0 for what ended before ``start``
        totals[kind] = totals.get(kind, 0.0) + max(0.0, used)
    scale = (end - start) / (last - first) if last > first else 1.0
    return {kind: cpu * scale for kind, cpu in totals.items() if cpu > 0}
