"""(c) Time from ``pipeobs run`` to the first mini-batch running, and the driver's peak RSS.

The ``pipeobs run`` command is started as a subprocess; the entry script's first ``run()`` writes
``time.time()`` to a file (``O_EXCL``: the first worker to get there wins). Time to first
mini-batch = that time - the wall clock just before ``Popen``.

Driver peak RSS, two ways that must agree: (1) this process polls the driver's
``/proc/<pid>/status`` ``VmHWM`` (the kernel's peak-RSS high-water mark, so polling cannot miss
the peak) every 5 ms with psutil alongside; (2) the same command run through a wrapper that calls
``pipeobs.cli.main`` and prints ``getrusage(RUSAGE_SELF).ru_maxrss`` at the end. Both count the
driver process only; ``RUSAGE_CHILDREN`` (or ``wait4``) would report the largest *worker*, since
the workers are the driver's children.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import jobs
from bench.common import MB, PYTHON, BenchError, RssSampler, Section, Target, child_env, median, pipeobs_command

FIRST_SCRIPT = """
import os
import time

def run(mini_batch):
    try:
        fd = os.open(os.environ["BENCH_FIRST_FILE"], os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        return mini_batch
    os.write(fd, repr(time.time()).encode())
    os.close(fd)
    return mini_batch
"""

WRAPPER = (
    "import resource, sys\n"
    "from pipeobs.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print('BENCH-MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def _command(root: Path, script: Path, inputs: Path) -> list[str]:
    return ["run", str(script), "--input", str(inputs), "--mini-batch-size", "1", "--process-count-per-node", "2",
            "--output-action", "append_row", "--runs-dir", str(root / "runs")]


def one_start(root: Path, script: Path, inputs: Path, index: int) -> dict[str, Any]:
    first_file = root / f"first-{index}.txt"
    env = child_env({"BENCH_FIRST_FILE": str(first_file)})
    with open(root / f"out-{index}.txt", "wb") as out:
        started = time.time()
        began = time.perf_counter()
        proc = subprocess.Popen([*pipeobs_command(), *_command(root, script, inputs)], stdout=out, stderr=out, env=env)
        sampler = RssSampler(proc.pid, 0.005)
        code = proc.wait()
        wall = time.perf_counter() - began
        sampler.stop()
    if code != 0:
        raise BenchError(f"pipeobs run exited {code}: {(root / f'out-{index}.txt').read_text()[-500:]}")
    first = float(first_file.read_text())
    run_dir = next((root / "runs").glob("*/*"))  # each start has its own runs folder
    return {"first": first - started, "wall": wall, "peak": sampler.peak_kb * 1024,
            "phases": breakdown(str(run_dir), started, first)}


def breakdown(run_dir: str, started: float, first: float) -> dict[str, float]:
    """Where the time to the first mini-batch goes, from the store's own timestamps."""
    run = jobs.query(run_dir, "SELECT started_at FROM runs")[0][0]
    spawn = jobs.query(run_dir, "SELECT min(time) FROM events WHERE kind = 'worker_start'")[0][0]
    ready = jobs.query(run_dir, "SELECT min(time) FROM events WHERE kind = 'init_done'")[0][0]
    attempt = jobs.query(run_dir, "SELECT min(start_time) FROM attempts")[0][0]
    return {
        "interpreter start, CLI import, plan": run - started,
        "plan to first worker spawned": spawn - run,
        "worker spawned to init() done (interpreter, imports, connect)": ready - spawn,
        "init() done to first mini_batch span": attempt - ready,
        "span start to run() called": first - attempt,
    }


def wrapper_maxrss(root: Path, script: Path, inputs: Path) -> int:
    env = child_env({"BENCH_FIRST_FILE": str(root / "first-wrapper.txt")})
    done = subprocess.run([PYTHON, "-c", WRAPPER, *_command(root, script, inputs)], capture_output=True, text=True,
                          env=env, check=False)
    for line in done.stderr.splitlines():
        if line.startswith("BENCH-MAXRSS"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"the getrusage wrapper printed no result (exit {done.returncode}): {done.stderr[-500:]}")


def import_time(module: str) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    done = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=child_env(), check=True)
    return float(done.stdout.strip())


def interpreter_time() -> float:
    began = time.perf_counter()
    subprocess.run([PYTHON, "-c", "pass"], check=True, env=child_env())
    return time.perf_counter() - began


def bench_startup(sizes: dict[str, Any]) -> Section:
    repeats = sizes["start_repeats"]
    section = Section(
        "startup",
        "(c) Time from `pipeobs run` to the first mini-batch running; driver peak RSS",
        f"`pipeobs run` (the console script) as a subprocess over {sizes['start_files']} empty files, 2 workers; "
        f"median of {repeats} starts. " + (__doc__ or "").split("\n\n", 1)[1].replace("\n", " ").strip(),
    )
    with tempfile.TemporaryDirectory(prefix="bench-start-") as tmp:
        root = Path(tmp)
        inputs = jobs.make_files(root / "in", sizes["start_files"])
        script = jobs.write_script(root, "first.py", FIRST_SCRIPT)
        starts = []
        for index in range(repeats):
            run_root = root / f"r{index}"
            run_root.mkdir()
            starts.append(one_start(run_root, script, inputs, index))
        rusage_peak = wrapper_maxrss(root, script, inputs)
    firsts = [s["first"] for s in starts]
    first = median(firsts)
    section.add("pipeobs run -> first run() called", first * 1000, "ms", "",
                f"starts: {', '.join(f'{f * 1000:.0f}' for f in firsts)} ms")
    section.add("pipeobs run, whole command (tiny job)", median([s["wall"] for s in starts]) * 1000, "ms")
    section.add("driver peak RSS (VmHWM polled)", max(s["peak"] for s in starts) / MB, "MB")
    section.add("driver peak RSS (getrusage RUSAGE_SELF)", rusage_peak / MB, "MB")
    section.add("reference: `python -c pass`", interpreter_time() * 1000, "ms")
    section.add("reference: import pipeobs.cli", import_time("pipeobs.cli") * 1000, "ms")
    section.add("reference: import pipeobs.worker + opentelemetry.sdk.trace",
                import_time("pipeobs.worker, opentelemetry.sdk.trace") * 1000, "ms")
    phases = {name: median([s["phases"][name] for s in starts]) for name in starts[0]["phases"]}
    section.notes.append("Where the time goes (medians, from the store's timestamps): "
                         + "; ".join(f"{name} {value * 1000:.0f} ms" for name, value in phases.items()) + ".")
    section.targets.append(Target("first mini-batch running < 0.5 s after start", f"{first:.3f} s", first < 0.5))
    section.data = {"first": first, "starts": starts}
    return section
