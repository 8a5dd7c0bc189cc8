"""``pipeobs diff RUN_A RUN_B``: what differs between two runs, so "it worked locally but fails on
the cluster" is one command.

* **config**: the ParallelRunConfig parameters, the runtime settings, the resolved entry script,
  source and model folders; and the entry script's **arguments**. Only what differs is listed.
* **environment**: what each run recorded when it started (:mod:`pipeobs.environment`): the
  interpreter fields that differ, packages added, removed or changed in B, and environment
  variable names (the config's and the process's) added or removed in B.
* **inputs**, per input: paths, file count and bytes (as recorded at the start; without a record,
  the files of the ledger and no bytes), mini-batches and items (the ledger), and the files B
  added or removed, named relative to the folder holding the input's files so runs on two
  machines compare.
* **outcome** of each run: status, duration, mini-batches, items, attempts and their p50 / p95
  duration (nearest rank), failures by error type, and each user metric's last value and mean.

Runs of two different steps may be compared; the result says so (``same_step``).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sqlite3
from pathlib import Path
from typing import Any

from pipeobs.environment import read_environment
from pipeobs.explorer.queries import failures_by_error, parse_json, run_summary, user_metrics
from pipeobs.explorer.render import seconds
from pipeobs.explorer.runs import open_run
from pipeobs.explorer.terminal import printable

Row = dict[str, Any]
INTERPRETER = ("python", "implementation", "executable", "platform")
SHOWN_FILES = 10  # files added or removed that the text names, per input and direction


def diff_runs(run_a: Path, run_b: Path) -> Row:
    """What differs between the runs in two run directories (A first, B second)."""
    a, b = describe_run(run_a), describe_run(run_b)
    return {
        "a": a["run"],
        "b": b["run"],
        "same_step": a["run"]["step"] == b["run"]["step"],
        "config": _changed(a["config"], b["config"]),
        "arguments": None if a["arguments"] == b["arguments"] else {"a": a["arguments"], "b": b["arguments"]},
        "environment": compare_environments(a["environment"], b["environment"]),
        "inputs": compare_inputs(a["inputs"], b["inputs"]),
        "outcome": {"a": a["outcome"], "b": b["outcome"]},
    }


def describe_run(run_dir: Path) -> Row:
    """One side of a diff: the run's identity, config, arguments, environment, inputs and outcome."""
    environment = read_environment(run_dir)
    with open_run(run_dir) as conn:
        row = conn.execute("SELECT * FROM runs ORDER BY started_at LIMIT 1").fetchone()
        run = dict(row) if row is not None else {}
        inputs = parse_json(run.get("inputs"), {}) or {}
        summary = run_summary(conn)
        return {
            "run": {"run_dir": str(run_dir), "step": summary["step"], "step_id": summary["step_id"],
                    "status": summary["status"], "start": summary["start"]},
            "config": {
                **(parse_json(run.get("config"), {}) or {}),
                **(parse_json(run.get("settings"), {}) or {}),
                "script_path": run.get("entry_script"),
                "source_dir": inputs.get("source_dir"),
                "model_dir": inputs.get("model_dir"),
            },
            "arguments": inputs.get("script_arguments") or [],
            "environment": environment,
            "inputs": _inputs(conn, inputs.get("datasets") or [], (environment or {}).get("inputs")),
            "outcome": _outcome(conn, summary),
        }


def compare_environments(a: Row | None, b: Row | None) -> Row:
    """Interpreter fields that differ, packages added / removed / changed in B, variable names added / removed."""
    recorded = {"a": a is not None, "b": b is not None}
    if a is None or b is None:
        return {"recorded": recorded, "interpreter": {}, "packages": {"added": {}, "removed": {}, "changed": {}},
                "env_vars": {"added": [], "removed": []}}
    packages_a, packages_b = a.get("packages") or {}, b.get("packages") or {}
    names_a, names_b = _variable_names(a), _variable_names(b)
    return {
        "recorded": recorded,
        "interpreter": _changed({k: a.get(k) for k in INTERPRETER}, {k: b.get(k) for k in INTERPRETER}),
        "packages": {
            "added": {name: packages_b[name] for name in sorted(packages_b.keys() - packages_a.keys())},
            "removed": {name: packages_a[name] for name in sorted(packages_a.keys() - packages_b.keys())},
            "changed": {name: {"a": packages_a[name], "b": packages_b[name]}
                        for name in sorted(packages_a.keys() & packages_b.keys()) if packages_a[name] != packages_b[name]},
        },
        "env_vars": {"added": sorted(names_b - names_a), "removed": sorted(names_a - names_b)},
    }


def compare_inputs(a: list[Row], b: list[Row]) -> list[Row]:
    """Input by input (by position): each run's numbers, and the files B added or removed."""
    compared = []
    for index in range(max(len(a), len(b))):
        side_a, side_b = (a[index] if index < len(a) else {}), (b[index] if index < len(b) else {})
        names_a, names_b = set(side_a.get("names", ())), set(side_b.get("names", ()))
        compared.append({"input": index, "a": _without_names(side_a), "b": _without_names(side_b),
                         "added": sorted(names_b - names_a), "removed": sorted(names_a - names_b)})
    return compared


def _without_names(side: Row) -> Row | None:
    return {key: value for key, value in side.items() if key != "names"} if side else None


def _changed(a: Row, b: Row) -> Row:
    return {key: {"a": a.get(key), "b": b.get(key)} for key in sorted(a.keys() | b.keys()) if a.get(key) != b.get(key)}


def _variable_names(environment: Row) -> set[str]:
    """The names a worker sees: the process's and the config's."""
    names = environment.get("env_vars") or {}
    return set(names.get("config") or []) | set(names.get("process") or [])


def _inputs(conn: sqlite3.Connection, datasets: list[Row], recorded: list[Row] | None) -> list[Row]:
    files: dict[int, set[str]] = {}
    counts: dict[int, list[int]] = {}
    for descriptor, total in conn.execute("SELECT descriptor, total FROM mini_batches ORDER BY id"):
        batch = parse_json(descriptor, {}) or {}
        index = batch.get("input_index", 0)
        files.setdefault(index, set()).update(batch.get("files") or [])
        count = counts.setdefault(index, [0, 0])
        count[0] += 1
        count[1] += total if total is not None else batch.get("item_count") or 0
    described = []
    for index, dataset in enumerate(datasets):
        paths = files.get(index, set())
        record = recorded[index] if recorded and index < len(recorded) else {}
        mini_batches, items = counts.get(index, [0, 0])
        described.append({
            "kind": dataset.get("kind"), "paths": dataset.get("paths"),
            "files": record.get("files", len(paths)), "bytes": record.get("bytes"),
            "mini_batches": mini_batches, "items": items, "names": _relative_names(paths),
        })
    return described


def _relative_names(paths: set[str]) -> list[str]:
    """The paths relative to the folder that holds them all: the same data in two places compares equal."""
    if not paths:
        return []
    top = os.path.commonpath([os.path.dirname(p) for p in paths])
    return sorted(os.path.relpath(p, top) for p in paths)


def _outcome(conn: sqlite3.Connection, summary: Row) -> Row:
    elapsed = [r[0] for r in conn.execute("SELECT elapsed FROM attempts WHERE elapsed IS NOT NULL ORDER BY elapsed")]
    return {
        "status": summary["status"],
        "duration": summary["duration"],
        "mini_batches": summary["mini_batches"],
        "items": summary["items"],
        "attempts": conn.execute("SELECT count(*) FROM attempts").fetchone()[0],
        "attempt_seconds": {"p50": _nearest_rank(elapsed, 0.5), "p95": _nearest_rank(elapsed, 0.95)},
        "failures": {
            f["error_type"]: {"attempts": f["count"], "mini_batches": f["mini_batches"], "message": f["error_message"]}
            for f in failures_by_error(conn)
        },
        "metrics": {m["name"]: {"last": m["last"], "mean": m["mean"]} for m in user_metrics(conn)},
    }


def _nearest_rank(ordered: list[float], q: float) -> float | None:
    return ordered[math.ceil(q * len(ordered)) - 1] if ordered else None


# ----------------------------------------------------------------------------- text
def diff_text(diff: Row) -> str:
    """The diff for people: each difference as ``A -> B``, then both outcomes; user text escaped."""
    lines = [_run_line("A", diff["a"]), _run_line("B", diff["b"])]
    if not diff["same_step"]:
        lines.append(f"note: runs of different steps: {diff['a']['step']} and {diff['b']['step']}")
    lines += ["", "config and arguments"]
    changes = [f"  {key}: {_show(v['a'])} -> {_show(v['b'])}" for key, v in diff["config"].items()]
    if diff["arguments"] is not None:
        changes.append(f"  arguments: {shlex.join(diff['arguments']['a'])} -> {shlex.join(diff['arguments']['b'])}")
    lines += changes or ["  same"]
    lines += ["", "environment", *_environment_lines(diff["environment"])]
    lines += ["", "inputs"]
    for compared in diff["inputs"]:
        lines += _input_lines(compared)
    lines += ["", *_outcome_lines(diff["outcome"]["a"], diff["outcome"]["b"])]
    return printable("\n".join(lines))


def _run_line(label: str, run: Row) -> str:
    return f"{label}  {run['step_id']}  {run['status']}  {run['run_dir']}"


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _environment_lines(env: Row) -> list[str]:
    missing = [label for label in ("A", "B") if not env["recorded"][label.lower()]]
    if missing:
        return [f"  environment: not recorded for {' and '.join(missing)} (a run from an older pipeobs)"]
    lines = [f"  {key}: {_show(v['a'])} -> {_show(v['b'])}" for key, v in env["interpreter"].items()]
    packages, names = env["packages"], env["env_vars"]
    if any(packages.values()):
        lines.append(f"  packages: {len(packages['added'])} added, {len(packages['removed'])} removed, "
                     f"{len(packages['changed'])} changed")
        lines += [f"    + {name} {version}" for name, version in packages["added"].items()]
        lines += [f"    - {name} {version}" for name, version in packages["removed"].items()]
        lines += [f"    ~ {name} {v['a']} -> {v['b']}" for name, v in packages["changed"].items()]
    if any(names.values()):
        lines.append(f"  environment variables (names): {len(names['added'])} added, {len(names['removed'])} removed")
        lines += [f"    + {name}" for name in names["added"]]
        lines += [f"    - {name}" for name in names["removed"]]
    return lines or ["  same"]


def _input_lines(compared: Row) -> list[str]:
    a, b = compared["a"] or {}, compared["b"] or {}
    parts = [] if a.get("paths") == b.get("paths") else [f"paths {_show(a.get('paths'))} -> {_show(b.get('paths'))}"]
    for name, key in (("files", "files"), ("bytes", "bytes"), ("mini-batches", "mini_batches"), ("items", "items")):
        change = "" if a.get(key) == b.get(key) else f" -> {_show(b.get(key))}"
        parts.append(f"{name} {_show(a.get(key))}{change}")
    lines = [f"  input {compared['input']} ({a.get('kind') or b.get('kind')}): {', '.join(parts)}"]
    for sign, names in (("+", compared["added"]), ("-", compared["removed"])):
        lines += [f"    {sign} {name}" for name in names[:SHOWN_FILES]]
        if len(names) > SHOWN_FILES:
            lines.append(f"    {sign} ... {len(names) - SHOWN_FILES} more")
    return lines


def _outcome_lines(a: Row, b: Row) -> list[str]:
    rows = [
        ("status", a["status"], b["status"]),
        ("duration", seconds(a["duration"]), seconds(b["duration"])),
        ("mini-batches", _counts(a["mini_batches"], "done"), _counts(b["mini_batches"], "done")),
        ("items", _counts(a["items"], "succeeded"), _counts(b["items"], "succeeded")),
        ("attempts", str(a["attempts"]), str(b["attempts"])),
        ("attempt p50", seconds(a["attempt_seconds"]["p50"]), seconds(b["attempt_seconds"]["p50"])),
        ("attempt p95", seconds(a["attempt_seconds"]["p95"]), seconds(b["attempt_seconds"]["p95"])),
    ]
    for error in sorted(a["failures"].keys() | b["failures"].keys()):
        rows.append((f"failed {error}", _failure(a["failures"].get(error)), _failure(b["failures"].get(error))))
    for name in sorted(a["metrics"].keys() | b["metrics"].keys()):
        metric_a, metric_b = a["metrics"].get(name) or {}, b["metrics"].get(name) or {}
        for stat in ("last", "mean"):
            rows.append((f"metric {name} {stat}", _show(metric_a.get(stat)), _show(metric_b.get(stat))))
    width, column = max(len(row[0]) for row in rows), max(len(row[1]) for row in rows)
    lines = [f"{'outcome':<{width + 2}}  {'A':<{column}}  B"]
    return lines + [f"  {label:<{width}}  {left:<{column}}  {right}" for label, left, right in rows]


def _counts(counts: Row, ok: str) -> str:
    return f"{counts.get(ok, 0)} {ok}, {counts.get('failed', 0)} failed of {counts.get('total', 0)}"


def _failure(failure: Row | None) -> str:
    if failure is None:
        return "-"
    message = f": {failure['message'].splitlines()[0]}" if failure["message"] else ""  # one line per row
    return f"{failure['attempts']} attempt(s){message}"
