"""Step reuse (Azure's ``allow_reuse``): reusing an earlier run with the same fingerprint
(:mod:`pipeobs.fingerprint`), recording the decision, and why (``pipeobs why``).

A run is reused when reuse is allowed and an earlier ``Completed`` run of the same step (same
runs folder, same step name) has the same fingerprint and intact outputs: its ``append_row`` file
still has the size it committed, and no later run of the step wrote to its output folder. The
new run gets its own run directory and step_id, recording ``reused_from`` (``pipeobs runs``
shows it as ``Reused``); its output folder receives a **copy** of the reused run's output files
(nothing is copied when both name the same folder), and no worker starts.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sqlite3
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeobs.errors import RunDirError
from pipeobs.fingerprint import COMPONENTS
from pipeobs.record.rundir import STORE_NAME, read_json_record

if TYPE_CHECKING:
    from pipeobs.fingerprint import Fingerprint
    from pipeobs.jobs import JobPlan, JobResult

FINGERPRINT_FILE = "fingerprint.json"
COMPLETED = "Completed"
SHOWN_FILES = 10  # names listed per change; the rest are counted
REUSE_OFF = "reuse is off (allow_reuse=False or --no-reuse)"


# ----------------------------------------------------------------------------- earlier runs
@dataclass(frozen=True)
class EarlierRun:
    """What the reuse check reads of a run: its ``runs`` row."""

    step_id: str
    run_dir: Path
    status: str
    started_at: float
    fingerprint: str | None
    reused_from: str | None
    source_dir: str | None
    output_dir: str | None
    output_path: str | None
    output_size: int
    summary: dict[str, Any] = field(default_factory=dict)


def read_run(run_dir: Path) -> EarlierRun | None:
    """The run's row, read-only; None for a folder that holds no readable run."""
    from pipeobs.record.store import connect

    try:
        conn = connect(run_dir / STORE_NAME, readonly=True)
        try:
            row = conn.execute("SELECT * FROM runs").fetchone()
        finally:
            conn.close()
        if row is None:
            return None
        run = dict(row)
        inputs = json.loads(run.get("inputs") or "{}")
        summary = json.loads(run.get("summary") or "{}")
    except (sqlite3.Error, ValueError):
        return None
    return EarlierRun(run["step_id"], run_dir, run["status"] or "", run["started_at"] or 0.0, run.get("fingerprint"),
                      run.get("reused_from"), inputs.get("source_dir"), inputs.get("output_dir"),
                      run.get("output_path"), run.get("output_size") or 0, summary)


def runs_of_step(step_dir: Path) -> list[EarlierRun]:
    """Every readable run of one step, newest first."""
    found = (read_run(store.parent) for store in step_dir.glob(f"*/{STORE_NAME}"))
    return sorted((r for r in found if r is not None), key=lambda r: r.started_at, reverse=True)


def read_fingerprint(run_dir: Path) -> dict[str, Any] | None:
    """A run's ``fingerprint.json`` (digest, components, decision); None when it has none."""
    return read_json_record(run_dir / FINGERPRINT_FILE)


# ----------------------------------------------------------------------------- the decision
@dataclass
class Decision:
    """Reuse an earlier run, or run, and why (``fingerprint.json`` keeps it as :meth:`to_dict`)."""

    allow_reuse: bool = True
    reused_from: str | None = None  # the run whose workers made the outputs
    compared_with: str | None = None  # the step_id of the run the fingerprint was compared with
    reasons: list[str] = field(default_factory=list)
    source: EarlierRun | None = None  # the run whose outputs are copied (it may itself be a reused run)

    def text(self, past: bool = False) -> str:
        """One line: ``reused run X: ...`` or ``re-running because ...``."""
        if self.reused_from:
            return f"reused run {self.reused_from}: nothing changed since it ran"
        verb = ("re-ran" if past else "re-running") if self.compared_with else ("ran" if past else "running")
        since = f" (compared with run {self.compared_with})" if self.compared_with else ""
        return f"{verb} because {'; '.join(self.reasons)}{since}"

    def to_dict(self) -> dict[str, Any]:
        return {"allow_reuse": self.allow_reuse, "reused_from": self.reused_from,
                "compared_with": self.compared_with, "reasons": self.reasons}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        return cls(bool(data.get("allow_reuse", True)), data.get("reused_from"), data.get("compared_with"),
                   list(data.get("reasons") or []))


def decide(fingerprint: Fingerprint, step_name: str, runs_dir: str | os.PathLike[str], allow_reuse: bool) -> Decision:
    """Compare with the runs of the step under ``runs_dir``: which one to reuse, or what changed."""
    earlier = runs_of_step(Path(runs_dir) / step_name)
    previous = next((r for r in earlier if r.status == COMPLETED and r.fingerprint), None)
    decision = Decision(allow_reuse, compared_with=previous.step_id if previous else None)
    if not allow_reuse:
        decision.reasons = [REUSE_OFF]
        return decision
    match, blocked = _reusable(earlier, fingerprint.digest)
    if match is not None:
        return Decision(reused_from=match.reused_from or match.step_id, compared_with=match.step_id, source=match)
    if previous is None:
        decision.reasons = [f"no completed run of step {step_name} in {runs_dir} to reuse"]
        return decision
    recorded = read_fingerprint(previous.run_dir)
    if recorded is not None and recorded.get("digest") != fingerprint.digest:
        changes = explain(recorded["components"], fingerprint.components)
        decision.reasons = [phrase for phrases in changes.values() for phrase in phrases]
        if "source_directory" in changes:
            source = fingerprint.components["source_directory"]["path"]
            decision.reasons += shared_source(Path(runs_dir), step_name, source)
    decision.reasons += [blocked] if blocked else []
    decision.reasons = decision.reasons or [f"the fingerprint of run {previous.step_id} cannot be read"]
    return decision


def _reusable(earlier: list[EarlierRun], digest: str) -> tuple[EarlierRun | None, str | None]:
    """The newest completed run with this fingerprint and intact outputs; else why none could be used."""
    written: dict[str, str] = {}  # output folder -> the newest run that wrote to it
    blocked = None
    for run in earlier:
        if run.status == COMPLETED and run.fingerprint == digest and run.summary:
            problem = _outputs_problem(run, written)
            if problem is None:
                return run, None
            blocked = blocked or problem
        if run.output_dir:
            written.setdefault(os.path.realpath(run.output_dir), run.step_id)
    return None, blocked


def _outputs_problem(run: EarlierRun, written: dict[str, str]) -> str | None:
    later = written.get(os.path.realpath(run.output_dir)) if run.output_dir else None
    if later:
        return f"run {run.step_id} had the same fingerprint, but run {later} has written to its output folder since"
    path = run.output_path
    if path and not (os.path.isfile(path) and os.path.getsize(path) == run.output_size):
        return f"run {run.step_id} had the same fingerprint, but its output file '{path}' is gone or changed"
    return None


def shared_source(runs_root: Path, step_name: str, source: str) -> list[str]:
    """The guide's warning: other steps in this runs folder whose latest run used the same source_directory."""
    phrases = []
    for step_dir in sorted(p for p in runs_root.iterdir() if p.is_dir() and p.name != step_name):
        latest = next(filter(None, map(read_run, sorted(step_dir.iterdir(), reverse=True))), None)  # step_ids sort by time
        if latest is not None and latest.source_dir == source:
            phrases.append(f"two steps share source_directory '{shown_path(source)}': a change made for step "
                           f"{step_dir.name} re-runs step {step_name}")
    return phrases


def shown_path(path: str) -> str:
    """A folder as the user would write it: relative to the working directory when inside it."""
    relative = os.path.relpath(path)
    return (path if relative.startswith("..") else relative).rstrip("/") + "/"


# ----------------------------------------------------------------------------- recording and reusing
def record(plan: JobPlan, fingerprint: Fingerprint, decision: Decision) -> None:
    """Write the new run's ``fingerprint.json`` and its digest into the run row."""
    from pipeobs.record.store import Store

    recorded = {"digest": fingerprint.digest, "components": fingerprint.components, "decision": decision.to_dict()}
    (plan.run_dir.path / FINGERPRINT_FILE).write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    store = Store(plan.run_dir.store)
    store.update_run(fingerprint=fingerprint.digest)
    store.close()


def complete_reused(plan: JobPlan, decision: Decision) -> JobResult:
    """End the new run as a reuse of ``decision.source``: outputs copied, the earlier result as its own."""
    from pipeobs.jobs import JobResult
    from pipeobs.record.driverlog import DriverLog
    from pipeobs.record.store import Store

    source = decision.source
    assert source is not None  # decide() names the run it reuses
    folder = source.output_dir
    if folder and os.path.isdir(folder) and os.path.realpath(folder) != os.path.realpath(plan.output_dir):
        shutil.copytree(folder, plan.output_dir, dirs_exist_ok=True)
    known = {f.name for f in fields(JobResult)}
    result = replace(
        JobResult(**{k: v for k, v in source.summary.items() if k in known}),
        step_id=plan.step_id, run_dir=str(plan.run_dir.path), output_path=plan.output_file,
        output_dir=plan.output_dir, exports={}, reused_from=decision.reused_from,
    )
    plan.run_dir.driver_log.parent.mkdir(parents=True, exist_ok=True)
    with open(plan.run_dir.driver_log, "w", encoding="utf-8") as handle:
        DriverLog(handle).write(time.time(), "driver", None, "INFO", f"{decision.text()}; no worker started")
    size = os.path.getsize(plan.output_file) if plan.output_file and os.path.isfile(plan.output_file) else 0
    store = Store(plan.run_dir.store)
    store.update_run(status=COMPLETED, ended_at=time.time(), output_size=size, summary=result.to_json(),
                     reused_from=decision.reused_from)
    store.close()
    return result


# ----------------------------------------------------------------------------- pipeobs why
def why(run_dir: Path) -> dict[str, Any]:
    """Why a run re-ran or reused another, and each component compared with the run it was compared with."""
    recorded = read_fingerprint(run_dir)
    if recorded is None:
        raise RunDirError(f"run '{run_dir}' has no {FINGERPRINT_FILE}: it was not started by 'pipeobs run' or "
                          "ParallelRunStep.run() of a pipeobs that fingerprints steps, so there is nothing to explain")
    decision = Decision.from_dict(recorded.get("decision") or {})
    other = decision.reused_from or decision.compared_with
    compared = read_fingerprint(run_dir.parent / other) if other else None
    changes = explain(compared["components"], recorded["components"]) if compared else {}
    return {
        "run": run_dir.name,
        "why": decision.text(past=True),
        **decision.to_dict(),
        "components": {name: changes.get(name, []) for name in COMPONENTS} if compared else None,
        "compared_with": other,
    }


def why_text(answer: dict[str, Any]) -> str:
    lines = [f"{answer['run']} {answer['why']}"]
    if answer["components"] is not None:
        lines.append(f"compared with run {answer['compared_with']}:")
        width = max(map(len, COMPONENTS))
        for name, phrases in answer["components"].items():
            shown = "; ".join(p.removeprefix(f"{name} changed: ") for p in phrases)
            lines.append(f"  {name:<{width}}  {shown or 'same'}")
    elif answer["compared_with"]:
        lines.append(f"the fingerprint of run {answer['compared_with']} can no longer be read: nothing to compare with")
    return "\n".join(lines)


def command_why(run: str, runs_dir: str, as_json: bool) -> int:
    """``pipeobs why RUN [--json]``."""
    from pipeobs.explorer.runs import resolve_run
    from pipeobs.explorer.terminal import printable

    answer = why(resolve_run(run, runs_dir))
    print(json.dumps(answer, indent=2) if as_json else printable(why_text(answer)))
    return 0


# ----------------------------------------------------------------------------- what changed
def explain(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[str]]:
    """For each component that differs between two fingerprints, what changed, in phrases."""
    changes = {}
    for name in COMPONENTS:
        before, after = old.get(name), new.get(name)
        if before != after:
            if before is None or after is None:
                changes[name] = [f"{name} {'added' if before is None else 'removed'}"]
            else:
                changes[name] = _DESCRIBE[name](before, after) or [f"{name} changed"]
    return changes


def file_changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """``score.py (modified)``, ``util.py (added)``, ``old.py (removed)``, in path order."""
    status = dict.fromkeys(after.keys() - before.keys(), "added")
    status |= dict.fromkeys(before.keys() - after.keys(), "removed")
    status |= {p: "modified" for p in before.keys() & after.keys() if before[p] != after[p]}
    names = [f"{p} ({status[p]})" for p in sorted(status)]
    return names[:SHOWN_FILES] + ([f"and {len(names) - SHOWN_FILES} more"] if len(names) > SHOWN_FILES else [])


def shown_value(value: Any) -> str:
    return "unset" if value is None else json.dumps(value)


def changed_values(before: dict[str, Any], after: dict[str, Any], shown: Any = shown_value) -> list[str]:
    """``key old -> new``, ``key new (added)``, ``key (removed)``; with ``shown=None`` no value is shown."""
    changed = []
    for key in sorted(before.keys() | after.keys()):
        if key not in after:
            changed.append(f"{key} (removed)")
        elif key not in before:
            changed.append(f"{key} {shown(after[key])} (added)" if shown else f"{key} (added)")
        elif before[key] != after[key]:
            changed.append(f"{key} {shown(before[key])} -> {shown(after[key])}" if shown else f"{key} (modified)")
    return changed


def _labelled(label: str, parts: list[str]) -> list[str]:
    return [f"{label} changed: {', '.join(parts)}"] if parts else []


def _folder(label: str, before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    moved = before["path"] != after["path"]
    phrases = [f"{label} moved: '{shown_path(before['path'])}' -> '{shown_path(after['path'])}'"] if moved else []
    return phrases + _labelled(label, file_changes(before["files"], after["files"]))


def _inputs(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[str]:
    phrases = [f"input '{old['name']}' removed" for old in before[len(after):]]
    phrases += [f"input '{new['name']}' added" for new in after[len(before):]]
    for old, new in zip(before, after, strict=False):
        phrases += _labelled(f"input '{new['name']}'", _input_changes(old, new))
    return phrases


def _input_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``3 files added, 1 file modified`` and any change of kind, options or partition_format."""
    old_files, new_files = old["files"], new["files"]
    counts = {
        "added": len(new_files.keys() - old_files.keys()),
        "modified": sum(old_files[p] != new_files[p] for p in old_files.keys() & new_files.keys()),
        "removed": len(old_files.keys() - new_files.keys()),
    }
    parts = [f"{n} file{'' if n == 1 else 's'} {what}" for what, n in counts.items() if n]
    definition = [{k: v for k, v in d.items() if k not in ("name", "files")} for d in (old, new)]
    return parts + changed_values(*definition)


def _python(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    parts = [f"Python {before[k]} -> {after[k]}" for k in ("implementation", "version") if before[k] != after[k]]
    parts += changed_values(before["packages"], after["packages"], shown=str)
    return _labelled("Python environment", parts)


_DESCRIBE: dict[str, Any] = {
    "source_directory": lambda a, b: _folder("source_directory", a, b),
    "entry_script": lambda a, b: [f"entry_script changed: '{a}' -> '{b}'"],
    "config": lambda a, b: _labelled("config", changed_values(a, b)),
    "arguments": lambda a, b: [f"arguments changed: '{shlex.join(a)}' -> '{shlex.join(b)}'"],
    "environment_variables": lambda a, b: _labelled("environment_variables", changed_values(a, b, shown=None)),
    "inputs": _inputs,
    "model_dir": lambda a, b: _folder("model_dir", a, b),
    "python": _python,
}
