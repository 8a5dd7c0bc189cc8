"""CPU per no-op mini-batch, driver and workers apart: an A/B check between two checkouts.

    .venv/bin/python bench/cpu_per_mini_batch.py [FILES] [JOBS]
    git worktree add /tmp/base <commit> && PYTHONPATH=/tmp/base .venv/bin/python bench/cpu_per_mini_batch.py

The method of section (a) of RESULTS.md without its peers: a real ``ParallelRunStep.run()`` over FILES empty
files (default 20,000), mini_batch_size=1, 2 workers, append_row, full telemetry; CPU by getrusage (the
driver: this process, the workers: its children) minus a 2-file job's, per mini-batch; JOBS jobs (default 5),
the median printed last. Workers import pipeobs from where this process does (PYTHONPATH picks the checkout).
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

from pipeobs.config import ParallelRunConfig
from pipeobs.datasets import FileDataset
from pipeobs.step import ParallelRunStep


def cpu_seconds(before: resource.struct_rusage, after: resource.struct_rusage) -> float:
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def job(files: int, root: Path) -> tuple[float, float, float]:
    """(driver CPU s, workers CPU s, JobResult duration s) of one no-op job over ``files`` files."""
    data = root / "data"
    data.mkdir(parents=True)
    for index in range(files):
        (data / f"{index:06d}").write_bytes(b"")
    (root / "score.py").write_text("def run(mini_batch):\n    return mini_batch\n")
    config = ParallelRunConfig(entry_script=str(root / "score.py"), mini_batch_size="1", process_count_per_node=2,
                               output_action="append_row")
    step = ParallelRunStep(f"cpu-{files}", config, [FileDataset.from_files(str(data))], allow_reuse=False)
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = step.run(root / "runs")
    return (cpu_seconds(own, resource.getrusage(resource.RUSAGE_SELF)),
            cpu_seconds(children, resource.getrusage(resource.RUSAGE_CHILDREN)), result.duration_seconds)


def main() -> None:
    files = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    jobs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    root = Path(tempfile.mkdtemp(prefix="pipeobs-cpu-"))
    fixed = job(2, root / "fixed")
    rows = []
    for index in range(jobs):
        driver, workers, duration = job(files, root / f"job{index}")
        d, w = (driver - fixed[0]) / files * 1e6, (workers - fixed[1]) / files * 1e6
        rows.append((d + w, d, w, files / duration))
        print(f"driver {d:.0f} µs, workers {w:.0f} µs, total {d + w:.0f} µs per mini-batch; {files / duration:,.0f}/s",
              flush=True)
    total, driver, workers, rate = sorted(rows)[len(rows) // 2]
    print(f"median: driver {driver:.0f} µs, workers {workers:.0f} µs, total {total:.0f} µs; {rate:,.0f} mini-batches/s "
          f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")


if __name__ == "__main__":
    main()
