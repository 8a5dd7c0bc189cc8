"""Run the benchmarks of issue 6 and write ``bench/RESULTS.md``.

    python bench/run.py [--smoke] [--only NAME ...] [--out bench/RESULTS.md]

With ``--only``, an existing report keeps the sections not run (and any text added by hand); the sections run
and their target rows are replaced.

Every benchmark compares pipeobs with its peers in the same run and prints ratios; the report
holds the exact command, the date, the machine and whether each target of the issue is met.
Where a target is missed, the job is profiled (driver and workers) and the report says what
limits it, with the numbers. ``--smoke`` uses tiny sizes (seconds in total), judges nothing, and
profiles every section once so the profiling code never rots; CI runs it through
``tests/test_bench_smoke.py``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import dispatch, explorer, exporters, linecost, memory, ray_backend, spool, startup, throughput, ui  # noqa: E402
from bench.analysis import explain  # noqa: E402
from bench.common import REPO, Section, machine_info  # noqa: E402

SIZES: dict[str, dict[str, object]] = {
    "full": {
        "repeats": 3,
        "noop_n": 20_000, "pool_n": 50_000, "ray_n": 3_000, "dask_n": 1_000,
        "ms_n": 4_000,
        "start_files": 8, "start_repeats": 9,
        "line_k": 50_000, "line_warmup": 2_000,
        "capture_print": (200, 5_000), "capture_log": (200, 5_000),  # the 1,000,000 of each
        "export_n": 100_000,
        "spool_n": 50_000, "spool_queue": 1_000, "spool_single_files": 5_000,
        "explorer_lines": 200_000, "explorer_mini_batches": 20_000,
        "ui_lines": 1_000_000, "ui_mini_batches": 100_000,
        "memory_mini_batches": 100_000, "memory_lines": 10, "memory_interval": 0.5,
        "profile_n": 5_000, "profile_lines": 20_000, "profile_batches": 40,
        "engines": True, "line_variants": True, "sleep_count": 500,
        "cluster_noop_n": 3_000, "cluster_sleep_n": 600, "cluster_lines_n": 1_000, "cluster_lines": (10, 100),
        "cluster_per_node": (1, 2), "cluster_explained": ("noop", "sleep"), "profile_always": False,
    },
    "smoke": {
        "repeats": 1,
        "noop_n": 200, "pool_n": 200, "ray_n": 20, "dask_n": 20,
        "ms_n": 100,
        "start_files": 4, "start_repeats": 1,
        "line_k": 500, "line_warmup": 50,
        "capture_print": (4, 100), "capture_log": (4, 50),
        "export_n": 300,
        "spool_n": 500, "spool_queue": 10, "spool_single_files": 200,
        "explorer_lines": 2_000, "explorer_mini_batches": 200,
        "ui_lines": 2_000, "ui_mini_batches": 200,
        "memory_mini_batches": 200, "memory_lines": 5, "memory_interval": 0.05,
        "profile_n": 100, "profile_lines": 200, "profile_batches": 2,
        "engines": False, "line_variants": False, "sleep_count": 50,
        "cluster_noop_n": 40, "cluster_sleep_n": 20, "cluster_lines_n": 20, "cluster_lines": (100,),
        "cluster_per_node": (1,), "cluster_explained": ("noop",), "profile_always": True,
    },
}
ALWAYS_EXPLAINED = {"startup", "capture", "memory"}  # cheap: no extra jobs, and the evidence helps either way
BENCHMARKS: dict[str, Callable[[dict[str, object]], Section]] = {
    "dispatch": dispatch.bench_noop,
    "one_ms": dispatch.bench_1ms,
    "startup": startup.bench_startup,
    "linecost": linecost.bench_linecost,
    "capture": throughput.bench_capture,
    "exporters": exporters.bench_exporters,
    "memory": memory.bench_memory,
    "spool": spool.bench_spool,
    "explorer": explorer.bench_explorer,
    "ui": ui.bench_ui,
    "ray": ray_backend.bench_ray,
}
# Sections that explain themselves (the rest go through bench.analysis.explain).
EXPLAINERS: dict[str, Callable[[Section, dict[str, object], bool, dict[str, Section]], None]] = {"ui": ui.explain_ui}
# Sections that profile themselves (where "profile_always" says so, or a target is missed) while what they
# measure still runs: ray's cluster lives only inside its section.
SELF_EXPLAINED = {"ray"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, no targets judged (what CI runs)")
    parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS), metavar="NAME",
                        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")
    parser.add_argument("--out", default=str(REPO / "bench" / "RESULTS.md"), help="report path (default bench/RESULTS.md)")
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "full"
    out = Path(args.out).resolve()
    # Profiles: bench/out/profiles (ignored by git) for a report in the repository, else beside the report.
    profile_dir = REPO / "bench" / "out" / "profiles" if out.is_relative_to(REPO) else out.parent / "profiles"
    os.environ["BENCH_PROFILE_DIR"] = str(profile_dir)
    sizes = SIZES[mode]
    machine = machine_info()
    load_before = os.getloadavg()
    started = time.perf_counter()
    begun_at = datetime.datetime.now(datetime.UTC)
    sections = []
    for name in args.only or list(BENCHMARKS):
        print(f"== {name} ...", file=sys.stderr, flush=True)
        sections.append(_run_one(name, sizes, args.smoke))
        print(render_section_text(sections[-1]), flush=True)
    for section in sections:
        if section.error or section.key in SELF_EXPLAINED:
            continue
        if args.smoke or section.missed or section.key in ALWAYS_EXPLAINED:
            print(f"== profiling {section.key} ...", file=sys.stderr, flush=True)
            began = time.perf_counter()
            try:
                EXPLAINERS.get(section.key, explain)(section, sizes, args.smoke, {s.key: s for s in sections})
            except Exception as exc:  # noqa: BLE001 - a failed profile is reported, the figures stand
                section.profile = f"(profiling failed: {type(exc).__name__}: {exc})"
                section.error = section.error or f"profiling failed: {exc}"
                traceback.print_exc()
            section.seconds += time.perf_counter() - began
    total = time.perf_counter() - started
    interpreter = Path(sys.executable)
    shown = interpreter.relative_to(REPO) if interpreter.is_relative_to(REPO) else interpreter
    command = " ".join(shlex.quote(str(a)) for a in [shown, "bench/run.py", *(sys.argv[1:] if argv is None else argv)])
    report = render_report(sections, machine, command, begun_at, total, mode, (load_before, os.getloadavg()))
    if args.only and out.exists():  # a partial run replaces its own sections and target rows, and keeps the rest
        report = merge_report(out.read_text(encoding="utf-8"), report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report, encoding="utf-8")
    print(render_targets_text(sections, args.smoke))
    print(f"\nwrote {out} in {total:.0f} s", file=sys.stderr)
    return 1 if any(s.error for s in sections) else 0


def _run_one(name: str, sizes: dict[str, object], smoke: bool) -> Section:
    began = time.perf_counter()
    try:
        section = BENCHMARKS[name](sizes)
    except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others
        traceback.print_exc()
        section = Section(name, name, "", error=f"{type(exc).__name__}: {exc}")
    if smoke:
        for target in section.targets:
            target.met = None  # tiny sizes say nothing about speed
    section.seconds = time.perf_counter() - began
    return section


# ---------------------------------------------------------------------- rendering
def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return out


def render_section_text(section: Section) -> str:
    lines = [f"\n{section.title}  [{section.seconds:.0f} s]"]
    if section.error:
        lines.append(f"  ERROR: {section.error}")
    rows = [[r.subject, r.shown(), r.unit, r.ratio] for r in section.rows]
    lines += ["  " + line for line in _table(["subject", "value", "unit", "ratio"], rows)]
    for target in section.targets:
        lines.append(f"  target {target.text}: {target.measured} -> {target.verdict}")
    return "\n".join(lines)


def render_targets_text(sections: list[Section], smoke: bool) -> str:
    rows = [[s.key, t.text, t.measured, t.verdict] for s in sections for t in s.targets]
    head = "\nTargets" + (" (smoke run: not judged)" if smoke else "")
    return "\n".join([head, *_table(["benchmark", "target", "measured", "verdict"], rows)])


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_report(sections: list[Section], machine: dict[str, str], command: str, begun_at: datetime.datetime,
                  total: float, mode: str, load: tuple[tuple[float, ...], tuple[float, ...]]) -> str:
    out = [
        "# pipeobs benchmarks (issue 6)",
        "",
        f"Produced by `{command}` (from the repository root, after the README's set-up and "
        "`.venv/bin/pip install -e '.[bench]' -e exporters/appinsights`), "
        f"{begun_at:%Y-%m-%d %H:%M} UTC, {mode} sizes, {total:.0f} s in all. "
        "Figures drift between runs: compare ratios within one run.",
        "",
        "## Machine",
        "",
        f"- cores: {machine['cores']}",
        f"- CPU: {machine['cpu']}",
        f"- RAM: {machine['ram']}",
        f"- OS: {machine['os']}",
        f"- Python: {machine['python']}",
        f"- libraries: {machine['libraries']}",
        f"- load average (1/5/15 min) before: {' / '.join(f'{v:.2f}' for v in load[0])}, after: "
        f"{' / '.join(f'{v:.2f}' for v in load[1])} (other processes share this machine)",
        "- environment: benchmark children run without `PYTHONUNBUFFERED` (Python's default buffering); "
        "(d) also measures print() with it set",
        "",
        "## Targets",
        "",
        "| benchmark | target | measured | verdict |",
        "|---|---|---|---|",
    ]
    for section in sections:
        for target in section.targets:
            verdict = target.verdict if mode == "full" else "not judged (smoke)"
            out.append(f"| {section.key} | {_md_cell(target.text)} | {_md_cell(target.measured)} | {verdict} |")
        if section.error:
            out.append(f"| {section.key} | (benchmark failed) | {_md_cell(section.error)} | ERROR |")
    for section in sections:
        out += render_section_md(section, begun_at)
    return "\n".join(out) + "\n"


def _chunks(report: str) -> tuple[str, list[str]]:
    """The text before the first ``## `` heading, and each chunk from one ``## `` heading to the next."""
    head, *chunks = re.split(r"(?m)^(?=## )", report)
    return head, chunks


def _chunk_key(chunk: str) -> str:
    """A benchmark section's key (its ``<!-- section: KEY -->`` marker), else its heading line."""
    found = re.search(r"<!-- section: (\w+) -->", chunk)
    return found.group(1) if found else chunk.splitlines()[0]


def _target_key(row: str) -> str | None:
    """The benchmark a row of the targets table belongs to (None for its header lines and other text)."""
    cells = row.split("|")
    return cells[1].strip() if row.startswith("| ") and len(cells) > 2 and cells[1].strip() != "benchmark" else None


def merge_report(old: str, new: str) -> str:
    """``old`` with the sections and target rows that ``new`` (a run of some benchmarks) holds put in their
    place: every other section, and any text written by hand (its opening, an added chapter), stays."""
    _, new_chunks = _chunks(new)
    fresh = {_chunk_key(chunk): chunk for chunk in new_chunks}
    head, old_chunks = _chunks(old)
    merged = []
    for chunk in old_chunks:
        key = _chunk_key(chunk)
        if key == "## Targets":
            chunk = _merge_targets(chunk, fresh.get(key, ""))
        elif key in fresh and key != "## Machine":
            chunk = fresh[key]
        merged.append(chunk)
    known = {_chunk_key(chunk) for chunk in old_chunks}
    merged += [chunk for key, chunk in fresh.items() if key not in known]
    return head + "".join(chunk.rstrip("\n") + "\n\n" for chunk in merged).rstrip("\n") + "\n"


def _merge_targets(old: str, new: str) -> str:
    """The old targets table with each benchmark's rows replaced by the new ones of that benchmark."""
    rows: dict[str, list[str]] = {}
    for row in new.splitlines():
        key = _target_key(row)
        if key is not None:
            rows.setdefault(key, []).append(row)
    lines, placed = [], set()
    for row in old.splitlines():
        key = _target_key(row)
        if key in rows:
            if key not in placed:
                lines += rows[key]
                placed.add(key)
            continue
        lines.append(row)
    missing = [row for key, group in rows.items() if key not in placed for row in group]
    if missing:  # benchmarks the old table had no row for: after its last row
        last = max(i for i, line in enumerate(lines) if line.startswith("|"))
        lines[last + 1:last + 1] = missing
    return "\n".join(lines) + "\n"


def render_section_md(section: Section, begun_at: datetime.datetime) -> list[str]:
    out = ["", f"## {section.title}", "", f"<!-- section: {section.key} -->", ""]
    if section.method:
        out += [section.method, ""]
    if section.error:
        out += [f"**Error:** `{section.error}`", ""]
    if section.rows:
        out += ["| subject | value | unit | ratio | notes |", "|---|---:|---|---|---|"]
        out += [f"| {_md_cell(r.subject)} | {r.shown()} | {r.unit} | {_md_cell(r.ratio)} | {_md_cell(r.note)} |"
                for r in section.rows]
        out.append("")
    for target in section.targets:
        out.append(f"- Target {target.text}: **{target.measured}**, {target.verdict}.")
    if section.targets:
        out.append("")
    out += [f"{note}" + "\n" for note in section.notes]
    if section.profile:
        heading = "What limits it" if section.missed else "Where the memory goes" if section.key == "memory" else "Where the time goes"
        out += [f"### {heading}", "", section.profile, ""]
    out.append(f"_({section.seconds:.0f} s, run {begun_at:%Y-%m-%d %H:%M} UTC)_")
    return out


if __name__ == "__main__":
    sys.exit(main())
