"""What limits pipeobs where a target is missed: profiles plus arithmetic on the measured figures.

``explain(section, ...)`` fills ``section.profile`` with text for RESULTS.md. Every number in it
is measured in this run (by the section itself, by another section of the same run, or by the
profiled job started here); nothing is quoted from elsewhere.
"""

from __future__ import annotations

import subprocess
from typing import Any

from bench.common import PYTHON, BenchError, Section, Skipped, child_env, importable, per_second, run_child

PIPE_KIB = 64


def explain(section: Section, sizes: dict[str, Any], smoke: bool, sections: dict[str, Section]) -> None:
    handler = {
        "dispatch": _dispatch,
        "one_ms": _one_ms,
        "startup": _startup,
        "linecost": _linecost,
        "capture": _capture,
        "exporters": _exporters,
        "memory": _memory,
        "spool": _spool,
        "explorer": _explorer,
    }[section.key]
    section.profile = handler(section, sizes, sections).strip()


def _fence(text: str) -> str:
    return f"```\n{text}\n```"


def _dispatch_profile(sizes: dict[str, Any]) -> dict[str, Any]:
    return run_child("profiles:profile_dispatch", 600, n=sizes["profile_n"])


def _dispatch(section: Section, sizes: dict[str, Any], _sections: dict[str, Section]) -> str:
    ours, pool = section.data["ours"], section.data.get("pool")
    driver, workers = ours["driver_cpu_us"], ours["workers_cpu_us"]
    total = driver + workers
    text = [
        f"Measured without a profiler in (a): each no-op mini-batch costs **{driver:.0f} µs of driver CPU and "
        f"{workers:.0f} µs of worker CPU** (getrusage, marginal: a tiny job's fixed cost taken out). "
        "The driver and the two workers are three busy processes on 2 cores, so the rate cannot pass "
        f"2 cores / {total:.0f} µs = **{per_second(total, 2)}/s**, and the driver's single event-loop thread alone "
        f"caps it at 1 / {driver:.0f} µs = {per_second(driver)}/s.",
    ]
    if pool:
        goal = 0.5 * pool["rate"]
        text.append(
            f"multiprocessing.Pool ran {pool['rate']:,.0f}/s on {pool['cpu_us']:.0f} µs of CPU per task; 0.5x Pool = "
            f"{goal:,.0f}/s needs at most {2e6 / goal:.0f} µs of CPU per mini-batch in all (driver + worker), "
            f"{total / (2e6 / goal):.1f} times less than now. Where that CPU goes, profiled "
            f"({sizes['profile_n']:,} no-op mini-batches; cProfile inflates small calls, compare shares):"
        )
    profile = _dispatch_profile(sizes)
    section.data["profile"] = profile
    text += [_fence(profile["text"]), f"Profiles kept in {', '.join(profile['files'])}."]
    return "\n\n".join(text)


def _one_ms(section: Section, sizes: dict[str, Any], sections: dict[str, Section]) -> str:
    ours = section.data["ours"]
    n = sizes["ms_n"]
    steady = ours.get("steady_rate") or ours["rate"]
    startup_share = max(0.0, ours["duration"] - n / steady)
    per_worker = 2e6 / ours["rate"]
    text = [
        f"Each worker spends {per_worker:.0f} µs per mini-batch on average (2 workers / the rate). Measured parts: "
        f"the sleep itself (see the ideal with real sleeps above); worker CPU per mini-batch {ours['workers_cpu_us']:.0f} µs "
        f"(span, markers, result message); driver CPU {ours['driver_cpu_us']:.0f} µs; and the job's start-up: the JobResult duration "
        f"({ours['duration']:.2f} s) includes starting both workers, about {startup_share:.2f} s here "
        f"({startup_share / ours['duration']:.0%} of the job), while the steady state runs at {steady:,.0f}/s "
        f"({steady / 2000:.0%} of 2,000/s).",
        f"`time.sleep(0.001)` itself takes {section.data['slept'] * 1e6:.0f} µs here, so two workers with no overhead "
        f"at all would reach {2 / section.data['slept']:,.0f}/s = {1 / section.data['slept'] / 1000:.1%} of 2,000/s: on this "
        "machine the 90 % target leaves "
        f"{max(0.0, 1e6 / 900 - section.data['slept'] * 1e6):.0f} µs per mini-batch for everything else. The worker's own "
        "CPU per mini-batch adds to the sleep serially (a worker runs one mini-batch at a time), and the driver's CPU "
        "competes for the same 2 cores.",
        "The per-mini-batch overhead is the same as in (a); its profile:",
    ]
    dispatch_section = sections.get("dispatch")
    profile = dispatch_section.data.get("profile") if dispatch_section else None
    if profile is None:
        profile = _dispatch_profile(sizes)
        if dispatch_section is not None:
            dispatch_section.data["profile"] = profile
        text.append(_fence(profile["text"]))
    else:
        text.append("(see (a)'s profile above).")
    return "\n\n".join(text)


def _startup(section: Section, _sizes: dict[str, Any], _sections: dict[str, Section]) -> str:
    modules = "pipeobs.cli, pipeobs.step, pipeobs.driver, pipeobs.telemetry.job, pipeobs.summary"
    driver = _import_times(modules)
    worker = _import_times("pipeobs.worker, opentelemetry.sdk.trace, pipeobs.telemetry.spans, pipeobs.datasets")
    return "\n\n".join([
        "The breakdown above splits the time to the first mini-batch with the store's own timestamps. "
        "Import time of what each side loads before its first mini-batch (`python -X importtime`, "
        "top-level packages, cumulative ms):",
        _fence("driver: " + driver + "\n\nworker: " + worker),
    ])


def _import_times(modules: str) -> str:
    """Total import time, the top-level packages, and the heaviest nested imports (cumulative ms)."""
    done = subprocess.run([PYTHON, "-X", "importtime", "-c", f"import {modules}"], capture_output=True, text=True,
                          env=child_env(), check=False)
    tops: list[tuple[int, str]] = []
    nested: list[tuple[int, str]] = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _self, cumulative, raw = line.split(":", 1)[1].split("|")
        cumulative = cumulative.strip()
        if not cumulative.isdigit():
            continue
        (nested if raw.startswith("  ") else tops).append((int(cumulative), raw.strip()))
    tops.sort(reverse=True)
    nested.sort(reverse=True)
    total = sum(us for us, _ in tops)
    return (f"{total / 1000:.0f} ms in all; top level: " + ", ".join(f"{name} {us / 1000:.0f}" for us, name in tops[:6])
            + "; heaviest nested: " + ", ".join(f"{name} {us / 1000:.0f}" for us, name in nested[:6]))


def _linecost(section: Section, sizes: dict[str, Any], sections: dict[str, Section]) -> str:
    ours, burst, peers = section.data["ours"], section.data["burst"], section.data["peers"]
    floor = peers.get("reference: line-buffered print() into a pipe (reader: cat)")
    capture = sections.get("capture")
    text = []
    if capture is not None and "print" in capture.data:
        per_line = capture.data["print"]["driver_cpu_us"]
        per_record = capture.data["log"]["driver_cpu_us"]
        text.append(
            f"Sustained, a captured print() costs {ours['print']:.1f} µs and a record {ours['log']:.1f} µs in run(): once the "
            f"{PIPE_KIB} KiB pipe is full the worker waits for the driver, which spends {per_line:.1f} µs of CPU per "
            f"printed line and {per_record:.1f} µs per record (measured in (e)) parsing, recording (store row, "
            "driver log line, per-worker user log) and writing it."
            + (f" In a burst (the worker's pipes enlarged to 1 MiB, so they never fill) the worker-side cost alone is {burst['print']:.1f} µs per print() "
               f"and {burst['log']:.1f} µs per record." if burst["print"] is not None else "")
        )
    if floor and burst["print"] is not None:
        worker_side = burst["print"]
        text.append(
            f"Worker side, a print() in a burst costs {worker_side:.2f} µs; for reference, a line-buffered print() into a "
            f"pipe drained by `cat` costs {floor:.2f} µs (one write syscall and a reader wake-up per line) and a buffered "
            f"print() into a file {peers.get('print() into a file') or 0:.2f} µs."
        )
        driver_line = capture.data["print"]["driver_cpu_us"] if capture is not None and "print" in capture.data else None
        if worker_side <= 2.0 and driver_line:
            text.append(
                "So the worker's own path meets 2 µs; sustained, the worker runs at the driver's pace. To keep up with one "
                f"worker printing a line every 2 µs the driver may spend at most 2 µs of CPU per line (1 µs with both "
                f"workers printing), against {driver_line:.1f} µs now: the per-line work must leave the event loop or be "
                "batched (see the driver profile below)."
            )
        elif worker_side > 2.0:
            text.append(
                "The worker's own path is above 2 µs: with one write syscall per line as the floor here, 2 µs needs fewer "
                "syscalls than one per line (block buffering flushed at the invocation markers), not a faster driver alone."
            )
    for kind in ("print", "log") if sizes["line_variants"] else ("print",):
        profile = run_child("profiles:profile_lines", 600, kind=kind, k=sizes["profile_lines"])
        label = "print()" if kind == "print" else "logging.info()"
        text += [f"Profile of a job whose run() calls {label} {sizes['profile_lines']:,} times "
                 "(µs per line; cProfile inflates small calls, compare shares):", _fence(profile["text"])]
    return "\n\n".join(text)


def _capture(section: Section, _sizes: dict[str, Any], _sections: dict[str, Section]) -> str:
    parts = []
    for kind in ("print", "log"):
        if kind in section.data:
            run = section.data[kind]
            parts.append(f"{kind}: driver {run['driver_cpu_us']:.1f} µs + workers {run['workers_cpu_us']:.1f} µs of CPU per line")
    return ("No target here. Marginal CPU per captured line (getrusage, minus the same job printing nothing): " + "; ".join(parts)
            + ". The driver's share is the bound: one event-loop thread parses, records and writes every line. "
            "(d) carries the profiles.")


def _exporters(section: Section, sizes: dict[str, Any], _sections: dict[str, Section]) -> str:
    from bench.exporters import Sink

    results = section.data["results"]
    ours = results.get("pipeobs Delivery + AppInsightsExporter")
    census = results.get("opencensus AzureLogHandler")
    if not importable("pipeobs_appinsights"):
        return "pipeobs_appinsights is not importable here: nothing to profile."
    try:
        with Sink() as sink:
            profile = run_child("profiles:profile_exporter", 600, url=sink.url, batches=sizes["profile_batches"])
    except (BenchError, Skipped) as exc:
        return f"(the exporter could not be profiled: {exc})"
    text = []
    if ours and ours.get("export_seconds"):
        received = max(1, ours["received"])
        span = received / ours["rate"] if ours["rate"] else 0.0
        export_us = ours["export_seconds"] / received * 1e6
        http_us = ours["http_seconds"] / received * 1e6
        text.append(
            f"Measured inside the same run (a timing wrapper around `export()` and around the HTTP sender, no profiler): "
            f"Delivery's one sender thread spent {ours['export_seconds']:.2f} s of the {span:.2f} s in `export()` for "
            f"{ours['batches']} batches, i.e. **{export_us:.1f} µs per record**: {export_us - http_us:.1f} µs building and "
            f"JSON-encoding the envelopes and {http_us:.1f} µs in the HTTP exchange (a new connection per batch; the "
            f"sink parses the JSON). One batch is in flight at a time, so export() alone caps delivery at "
            f"{per_second(export_us)} records/s, and the sender spent {ours['export_seconds'] / span:.0%} of the "
            "delivery time inside it"
            + (": export() is the bound (during the burst its time also includes waiting for the GIL held by the "
               "submitting thread)." if ours["export_seconds"] / span > 0.8 else
               "; the rest is the queue hand-off and the submitting thread holding the GIL.")
        )
    if ours and census and census["rate"]:
        goal = 5 * census["rate"]
        text.append(
            f"opencensus delivered {census['rate']:,.0f}/s (and dropped {census['dropped']:,}); 5x is {goal:,.0f}/s, "
            f"i.e. at most {1e6 / goal:.1f} µs per record end to end. pipeobs achieved {ours['rate']:,.0f}/s."
        )
    text += [f"Profile of export() alone, {sizes['profile_batches']} batches of 512 in the main thread (µs per record; "
             "cProfile inflates small calls, compare shares):", _fence(profile["text"]),
             f"Profile kept in {', '.join(profile['files'])}."]
    return "\n\n".join(text)


def _memory(section: Section, _sizes: dict[str, Any], sections: dict[str, Section]) -> str:
    data = section.data
    rss = data["rss"]
    startup = sections.get("startup")
    baseline = None
    if startup is not None:
        peaks = [s["peak"] for s in startup.data.get("starts", [])]
        baseline = min(peaks) if peaks else None
    after = data["max_sample_after_last_mini_batch"]
    text = [
        f"While mini-batches run the driver's RSS is {rss['0.1'] / 2**20:.0f} MB at 10 % and {rss['0.95'] / 2**20:.0f} MB at 95 %; "
        f"the highest RSS while mini-batches were still running was {data['max_before_last_mini_batch'] / 2**20:.0f} MB. "
        f"The highest sample ({data['max_sample'] / 2**20:.0f} MB; VmHWM peak {data['peak'] / 2**20:.0f} MB) was taken "
        f"{after:+.2f} s after the last mini-batch finished (store: max(start_time + elapsed) of attempts)"
        + (", i.e. in the end-of-run phase (`Driver._conclude()`: the result over the whole ledger, metrics, and "
           "`write_reports`, which builds `processed_mini-batches.csv` in an `io.StringIO` from a join over every "
           "attempt)." if after > 0 else ".")
    ]
    if baseline and data["mini_batches"] >= 10_000 and rss["0.1"] > baseline:
        per = (rss["0.1"] - baseline) / data["mini_batches"]
        text.append(
            f"The plateau is set by the number of mini-batches, not by the lines: the driver holds the ledger of every "
            f"mini-batch in memory (partitioned up front). Against the {baseline / 2**20:.0f} MB peak of a tiny job in (c), "
            f"that is about {per / 1024:.1f} KB per mini-batch here (an estimate: one run, one size)."
        )
    return "\n\n".join(text)


def _spool(section: Section, _sizes: dict[str, Any], _sections: dict[str, Section]) -> str:
    results, n = section.data["results"], section.data["n"]
    free = results["pipeobs Delivery, sender free"]
    stuck = results["pipeobs Delivery, sender stuck until the burst ends"]
    floor = results["floor: json.dumps per line into one file, read back"]
    per_record = results["one file per record (write + rename), read back"]
    return (
        f"No profile: the figures split the time. `submit()` cost {free['submit_seconds'] / n * 1e6:.1f} µs per record "
        f"with the sender free and {stuck['submit_seconds'] / n * 1e6:.1f} µs with it stuck (a full queue only appends "
        f"to the in-memory overflow; the spool thread writes it). With the sender stuck, {n:,} records went through "
        f"{stuck['files']:,} spool files and the whole burst, spool and delivery took {stuck['seconds']:.2f} s, "
        f"{stuck['seconds'] / floor['seconds']:.2f}x the floor's {floor['seconds']:.2f} s (json.dumps + write + read "
        f"back of one file); one file per record costs {per_record['us']:.0f} µs per record."
    )


def _explorer(section: Section, _sizes: dict[str, Any], _sections: dict[str, Section]) -> str:
    results = section.data["results"]
    trace, logs = results["pipeobs trace RUN"], results["pipeobs logs RUN --json"]
    floor = next(r for name, r in results.items() if name.startswith("floor"))

    def per_line(result: dict[str, Any]) -> float:
        return (result["seconds"] - result["first_line"]) / max(1, result["lines"]) * 1e6

    return (
        f"No profile: the figures split the time. Before its first line `pipeobs trace` spends {trace['first_line']:.2f} s "
        "(the interpreter and imports, the spans' ids, parents and start times, and one SQLite statement placing every "
        f"line under its span in a temporary table); then {per_line(trace):.0f} µs per line of the tree (a span's row, "
        f"events and lines read when the walk reaches it, a rich `Text` label per node). `pipeobs logs --json` writes "
        f"{per_line(logs):.1f} µs per line against the floor's {per_line(floor):.1f} µs (`json.dumps` of the row as it "
        "is, without the level, the parsed attributes or the check for non-finite numbers)."
    )
