"""(a) no-op dispatch throughput and (b) 1 ms mini-batches: pipeobs against the engines, 2 workers.

Each subject runs in its own child process (``bench.child``); the functions below are what runs
there. Peers are timed after their start-up (pool warm-up, ``ray.init`` + actor creation, Dask
cluster start), which is reported separately; pipeobs's rate is the JobResult's
``mini_batches_total / duration_seconds``, so it *includes* starting its two worker processes.
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import jobs
from bench.common import (
    BenchError,
    Section,
    Skipped,
    Target,
    fmt,
    importable,
    median,
    per_second,
    pipeobs_command,
    ratio,
    run_child,
)

IDEAL_1MS = 2000.0  # two workers, 1 ms each
BASE_N = 2  # the baseline job: fixed costs only


def noop(x: int) -> int:
    return x


def sleep_1ms(x: int) -> int:
    time.sleep(0.001)
    return x


def _task(sleep_ms: float) -> Any:
    return sleep_1ms if sleep_ms else noop


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------- children
def pipeobs_job(n: int, sleep_ms: float, repeats: int) -> dict[str, Any]:
    """``repeats`` real jobs of ``n`` one-file mini-batches; the median rate and every figure.

    A 2-mini-batch job runs first: it loads the driver's modules in this process (so no job
    below pays for imports) and gives the fixed CPU cost of a job (worker start-up, imports,
    reports), which the marginal CPU per mini-batch leaves out.
    """
    with tempfile.TemporaryDirectory(prefix="bench-dispatch-") as tmp:
        root = Path(tmp)
        inputs = jobs.make_files(root / "in", n)
        script = jobs.write_script(root, "entry.py", jobs.SLEEP_SCRIPT if sleep_ms else jobs.NOOP_SCRIPT)
        base = jobs.run_step(script, jobs.make_files(root / "base", BASE_N), root / "runs")
        runs = []
        for _ in range(repeats):
            run = jobs.run_step(script, inputs, root / "runs")
            lines = Path(run["output_path"]).read_text().count("\n")
            if lines != n:
                raise BenchError(f"output has {lines} rows, expected {n}")
            run["steady_rate"] = jobs.steady_rate(run["run_dir"])
            runs.append(run)
    best = sorted(runs, key=lambda r: r["rate"])[len(runs) // 2]
    extra = max(1, n - BASE_N)
    return {
        "rate": best["rate"],
        "rates": [r["rate"] for r in runs],
        "steady_rate": best["steady_rate"],
        "wall": best["wall"],
        "duration": best["duration"],
        "driver_cpu_us": max(0.0, best["driver_cpu"] - base["driver_cpu"]) / extra * 1e6,
        "workers_cpu_us": max(0.0, best["workers_cpu"] - base["workers_cpu"]) / extra * 1e6,
        "fixed_cpu": {"driver": base["driver_cpu"], "workers": base["workers_cpu"], "duration": base["duration"]},
        "driver_maxrss": best["driver_maxrss"],
    }


def pipeobs_cli(n: int, sleep_ms: float) -> dict[str, Any]:
    """Wall clock of the whole ``pipeobs run`` command (interpreter start to exit)."""
    import subprocess

    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        root = Path(tmp)
        inputs = jobs.make_files(root / "in", n)
        script = jobs.write_script(root, "entry.py", jobs.SLEEP_SCRIPT if sleep_ms else jobs.NOOP_SCRIPT)
        command = [*pipeobs_command(), "run", str(script), "--input", str(inputs), "--mini-batch-size", "1",
                   "--process-count-per-node", "2", "--output-action", "append_row", "--runs-dir", str(root / "runs")]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise BenchError(f"pipeobs run exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return {"wall": wall, "rate": n / wall}


def pool(n: int, sleep_ms: float, repeats: int) -> dict[str, Any]:
    import multiprocessing

    task = _task(sleep_ms)
    started = time.perf_counter()
    cpu_before = _cpu_self()
    with multiprocessing.Pool(2) as workers:
        list(workers.imap_unordered(task, range(4), chunksize=1))
        startup = time.perf_counter() - started
        rates = []
        for _ in range(repeats):
            began = time.perf_counter()
            list(workers.imap_unordered(task, range(n), chunksize=1))
            rates.append(n / (time.perf_counter() - began))
        workers.close()
        workers.join()
    total_cpu = _cpu_self() - cpu_before + _cpu_children()
    return {"rate": median(rates), "rates": rates, "startup": startup, "cpu_us": total_cpu / (n * repeats) * 1e6}


def process_pool(n: int, sleep_ms: float, repeats: int) -> dict[str, Any]:
    from concurrent.futures import ProcessPoolExecutor

    task = _task(sleep_ms)
    started = time.perf_counter()
    with ProcessPoolExecutor(2) as executor:
        list(executor.map(task, range(4)))
        startup = time.perf_counter() - started
        rates = []
        for _ in range(repeats):
            began = time.perf_counter()
            list(executor.map(task, range(n)))
            rates.append(n / (time.perf_counter() - began))
    return {"rate": median(rates), "rates": rates, "startup": startup}


def ray_actor_pool(n: int, sleep_ms: float, repeats: int) -> dict[str, Any]:
    if not importable("ray"):
        raise Skipped("not installed")
    import os

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray.util import ActorPool

    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        init = time.perf_counter() - started

        @ray.remote(num_cpus=1)
        class Worker:
            def run(self, x: int) -> int:
                if sleep_ms:
                    time.sleep(sleep_ms / 1000)
                return x

        began = time.perf_counter()
        actors = [Worker.remote() for _ in range(2)]
        ray.get([a.run.remote(0) for a in actors])
        actor_start = time.perf_counter() - began
        rates = []
        for _ in range(repeats):
            actor_pool = ActorPool(actors)
            began = time.perf_counter()
            list(actor_pool.map_unordered(lambda actor, value: actor.run.remote(value), range(n)))
            rates.append(n / (time.perf_counter() - began))
    finally:
        ray.shutdown()
    return {"rate": median(rates), "rates": rates, "startup": init, "actor_start": actor_start}


def dask_cluster(n: int, sleep_ms: float, repeats: int) -> dict[str, Any]:
    if not importable("distributed"):
        raise Skipped("not installed")
    from dask.distributed import Client, LocalCluster

    task = _task(sleep_ms)
    started = time.perf_counter()
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    try:
        client.gather(client.map(task, range(2), pure=False))
        startup = time.perf_counter() - started
        rates = []
        for _ in range(repeats):
            began = time.perf_counter()
            client.gather(client.map(task, range(n), pure=False))
            rates.append(n / (time.perf_counter() - began))
    finally:
        client.close()
        cluster.close()
    return {"rate": median(rates), "rates": rates, "startup": startup}


def sleep_accuracy(count: int = 500) -> float:
    """What ``time.sleep(0.001)`` really takes here (the kernel's timer slack adds to it)."""
    began = time.perf_counter()
    for _ in range(count):
        time.sleep(0.001)
    return (time.perf_counter() - began) / count


# ---------------------------------------------------------------------- the sections
def _peer(section: Section, name: str, function: str, reference: float | None, timeout: float, **kwargs: Any) -> dict[str, Any] | None:
    try:
        result = run_child(f"dispatch:{function}", timeout, **kwargs)
    except Skipped as exc:
        section.skip(name, str(exc))
        return None
    except BenchError as exc:
        section.skip(name, f"failed: {str(exc).splitlines()[0]}")
        section.notes.append(f"{name} failed: {exc}")
        return None
    note = f"start-up {result['startup']:.2f} s, not timed" if "startup" in result else ""
    if "actor_start" in result:
        note = f"ray.init {result['startup']:.2f} s + 2 actors {result['actor_start']:.2f} s, not timed"
    section.add(name, result["rate"], "mini-batches/s", f"pipeobs = {ratio(reference, result['rate'])}", note)
    return result


def bench_noop(sizes: dict[str, Any]) -> Section:
    n, repeats = sizes["noop_n"], sizes["repeats"]
    section = Section(
        "dispatch",
        "(a) No-op dispatch throughput, 2 workers",
        f"pipeobs: a real `ParallelRunStep(...).run()` over {n:,} empty files, mini_batch_size=1, "
        "process_count_per_node=2, append_row, entry script `def run(mb): return mb`, full telemetry "
        "(spans, metrics, capture, store, ledger, output). Rate = `mini_batches_total / duration_seconds` "
        f"from the JobResult (worker start-up included), median of {repeats} jobs. Peers run no-op tasks (Pool "
        f"{sizes['pool_n']:,}, ProcessPoolExecutor {n:,}, Ray {sizes['ray_n']:,}, Dask {sizes['dask_n']:,} per round), "
        f"median of {repeats} rounds, timed after their start-up. Ratios are pipeobs / peer.",
    )
    ours = run_child("dispatch:pipeobs_job", 600, n=n, sleep_ms=0, repeats=repeats)
    rate = ours["rate"]
    section.add("pipeobs ParallelRunStep.run()", rate, "mini-batches/s", "",
                f"jobs: {', '.join(fmt(r) for r in ours['rates'])}/s; wall of run() {ours['wall']:.2f} s")
    if ours.get("steady_rate"):
        section.add("pipeobs, steady state", ours["steady_rate"], "mini-batches/s", "",
                    "first to last attempt start (worker start-up excluded)")
    cli = run_child("dispatch:pipeobs_cli", 600, n=n, sleep_ms=0)
    section.add("pipeobs run (whole command)", cli["rate"], "mini-batches/s", "",
                f"wall {cli['wall']:.2f} s incl. interpreter start and report writing")
    pool_result = _peer(section, "multiprocessing.Pool(2).imap_unordered(chunksize=1)", "pool", rate, 600,
                        n=sizes["pool_n"], sleep_ms=0, repeats=repeats)
    _peer(section, "ProcessPoolExecutor(2).map", "process_pool", rate, 600, n=n, sleep_ms=0, repeats=repeats)
    ray_result = None
    if sizes["engines"]:
        ray_result = _peer(section, "Ray ActorPool (2 actors)", "ray_actor_pool", rate, 600,
                           n=sizes["ray_n"], sleep_ms=0, repeats=repeats)
        _peer(section, "Dask LocalCluster(n_workers=2, threads_per_worker=1)", "dask_cluster", rate, 600,
              n=sizes["dask_n"], sleep_ms=0, repeats=repeats)
    else:
        for name in ("Ray ActorPool (2 actors)", "Dask LocalCluster(n_workers=2, threads_per_worker=1)"):
            section.skip(name, "smoke run: its start-up alone takes seconds")
    per_mb = ours["driver_cpu_us"] + ours["workers_cpu_us"]
    fixed = ours["fixed_cpu"]
    section.notes.append(
        f"Marginal CPU per mini-batch (pipeobs, getrusage, minus a {BASE_N}-mini-batch job's fixed cost of "
        f"{fixed['driver']:.2f} s driver + {fixed['workers']:.2f} s workers CPU and {fixed['duration']:.2f} s duration): "
        f"driver {ours['driver_cpu_us']:.0f} µs, "
        f"workers {ours['workers_cpu_us']:.0f} µs, total {per_mb:.0f} µs; on 2 cores that caps the rate at "
        f"about {per_second(per_mb, 2)}/s, and the single driver thread alone at {per_second(ours['driver_cpu_us'])}/s."
        + (f" multiprocessing.Pool spends {pool_result['cpu_us']:.0f} µs of CPU per task." if pool_result else "")
    )
    section.notes.append(f"Driver peak RSS (getrusage RUSAGE_SELF of the driver process): {ours['driver_maxrss'] / 2**20:.0f} MB.")
    if pool_result:
        achieved = rate / pool_result["rate"]
        section.targets.append(Target(">= 0.5x multiprocessing.Pool(chunksize=1)", f"{achieved:.2f}x", achieved >= 0.5))
    else:
        section.targets.append(Target(">= 0.5x multiprocessing.Pool(chunksize=1)", "Pool failed", None))
    if ray_result:
        achieved = rate / ray_result["rate"]
        section.targets.append(Target(">= 10x a Ray ActorPool", f"{achieved:.2f}x", achieved >= 10))
    else:
        why = "Ray skipped (not installed)" if sizes["engines"] and not importable("ray") else "Ray skipped"
        section.targets.append(Target(">= 10x a Ray ActorPool", why, None))
    section.data = {"ours": ours, "pool": pool_result, "ray": ray_result}
    return section


def bench_1ms(sizes: dict[str, Any]) -> Section:
    n, repeats = sizes["ms_n"], sizes["repeats"]
    section = Section(
        "one_ms",
        "(b) 1 ms mini-batches, 2 workers: efficiency against the ideal 2,000/s",
        f"As (a) with `time.sleep(0.001)` in run(), {n:,} mini-batches, median of {repeats} jobs; efficiency = "
        "rate / 2,000. The ideal is also shown with what `time.sleep(0.001)` really takes on this machine "
        "(timer slack), measured in the same run. multiprocessing.Pool with the same task as a reference.",
    )
    slept = run_child("dispatch:sleep_accuracy_child", 60, count=sizes["sleep_count"])["seconds"]
    real_ideal = 2 / slept
    ours = run_child("dispatch:pipeobs_job", 600, n=n, sleep_ms=1, repeats=repeats)
    rate = ours["rate"]
    section.add("pipeobs ParallelRunStep.run()", rate, "mini-batches/s", f"{rate / IDEAL_1MS:.1%} of 2,000/s",
                f"{rate / real_ideal:.1%} of {real_ideal:,.0f}/s (sleep(0.001) = {slept * 1e3:.3f} ms here)")
    if ours.get("steady_rate"):
        steady = ours["steady_rate"]
        section.add("pipeobs, steady state", steady, "mini-batches/s", f"{steady / IDEAL_1MS:.1%} of 2,000/s",
                    f"worker start-up excluded; {steady / real_ideal:.1%} of {real_ideal:,.0f}/s")
    peer_rate = None
    try:
        peer = run_child("dispatch:pool", 600, n=n, sleep_ms=1, repeats=repeats)
        peer_rate = peer["rate"]
        section.add("multiprocessing.Pool(2).imap_unordered(chunksize=1)", peer_rate, "mini-batches/s",
                    f"{peer_rate / IDEAL_1MS:.1%} of 2,000/s",
                    f"pipeobs = {ratio(rate, peer_rate)}; {peer_rate / real_ideal:.1%} of {real_ideal:,.0f}/s; "
                    "its start-up is not timed")
    except (BenchError, Skipped) as exc:
        section.skip("multiprocessing.Pool", str(exc))
    section.notes.append(
        f"Of the {1e6 / rate * 2:.0f} µs each worker spends per mini-batch, {slept * 1e6:.0f} µs is the sleep; "
        f"pipeobs CPU per mini-batch: driver {ours['driver_cpu_us']:.0f} µs, workers {ours['workers_cpu_us']:.0f} µs."
    )
    section.targets.append(Target(">= 90% of the ideal 2,000/s", f"{rate / IDEAL_1MS:.1%}", rate / IDEAL_1MS >= 0.9))
    # Issue 16 states it against the real-sleep ideal, and Pool in the same run.
    issue16 = ">= 90% of the real-sleep ideal, at or above Pool"
    if peer_rate:
        section.targets.append(Target(issue16, f"{rate / real_ideal:.1%}, {rate / peer_rate:.2f}x Pool",
                                      rate / real_ideal >= 0.9 and rate >= peer_rate))
    else:
        section.targets.append(Target(issue16, "Pool failed", None))
    section.data = {"ours": ours, "slept": slept}
    return section


def sleep_accuracy_child(count: int) -> dict[str, Any]:
    return {"seconds": sleep_accuracy(count)}
