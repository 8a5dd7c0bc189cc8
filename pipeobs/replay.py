"""``pipeobs replay RUN [--mini-batch N] [--attempt K]``: one mini-batch of a recorded run, again, here.

The replay reads the run's store, without writing to it, for the mini-batch's descriptor (its
files, byte range or row groups, partition values) and the run's config, script arguments,
environment variables and model dir, then runs ``init()``, ``run(mini_batch)`` and ``shutdown()``
in this one process, in the foreground, as a worker does (:mod:`pipeobs.replay_worker`). Without
``--mini-batch`` it replays the first mini-batch, which is how an ``init()`` failure is replayed.
``--attempt K`` (default: the last) names the attempt repeated: the replay takes its worker's
name (``processNNN``); the inputs are the same for every attempt.

Each replay has a folder of its own next to the run's, ``<run dir>-replay-<n>/``, holding
``replay.json`` (the run replayed, ``replay_of``, and the mini-batch and attempt), the scratch
folder the code runs in (``tmp/<node>/<processNNN>/``) and ``output/`` (``AZUREML_BI_OUTPUT_PATH``,
and the rows of ``append_row``). Nothing is written into the run replayed. The folder holds no
store: ``pipeobs runs`` does not list it.

Exit codes: 0 ``run()`` returned a result a worker accepts; 1 ``init()`` or ``run()`` raised, the
mini-batch could not be read, or ``run()`` returned what a worker rejects (the user's traceback
is shown) or the debugger was quit; 2 no such run, mini-batch or attempt, an input file gone, or
a bad debugger option; 3 the entry script cannot be loaded.

Importing this module is cheap (the CLI imports it to build its parser); the replay itself
loads :mod:`pipeobs.replay_worker` and :mod:`pipeobs.replay_debug` when it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeobs.errors import ConfigError, InputError, RunDirError

if TYPE_CHECKING:
    from pipeobs.datasets import MiniBatch
    from pipeobs.jobs import JobPlan

NOTE = "replay.json"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_WORKER = "0/process000"  # the name a replay takes for a mini-batch never tried


def replay_command(run_dir: str | os.PathLike[str], error: dict[str, Any]) -> str:
    """The command that replays the mini-batch of a run's first ``error``.

    An error outside ``run()`` (``init()``, loading the entry script) is replayed with the first
    mini-batch, which runs ``init()`` first.
    """
    command = f"pipeobs replay {shlex.quote(str(run_dir))}"
    if error.get("mini_batch_id") is not None:
        command += f" --mini-batch {error['mini_batch_id']}"
        if error.get("attempt") is not None:
            command += f" --attempt {error['attempt']}"
    return command


def say(text: str) -> None:
    """One line of the replay's own on stderr (the entry script's output keeps stdout)."""
    print(f"replay: {text}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the command
def add_subcommand(subparsers: Any) -> None:
    """Add ``replay`` to an argparse subparsers object (its parser class is kept)."""
    description = "run one mini-batch of a recorded run again, in this process, under a debugger if asked"
    p = subparsers.add_parser("replay", help=description, description=description, allow_abbrev=False)
    p.add_argument("run", metavar="RUN", help="a run directory (holding pipeobs.db) or a step_id under --runs-dir")
    p.add_argument("--runs-dir", "--runs_dir", dest="runs_dir", default="runs", metavar="DIR",
                   help="where step_ids are looked up (default: runs)")
    p.add_argument("--mini-batch", "--mini_batch", dest="mini_batch", type=int, metavar="N",
                   help="the mini-batch to replay (default: the first, which also replays init())")
    p.add_argument("--attempt", type=int, metavar="K", help="the attempt to repeat (default: the last)")
    p.add_argument("--pdb", action="store_true", help="stop in pdb at the first line of run()")
    p.add_argument("--pm", action="store_true", help="open pdb post-mortem when init() or run() raises")
    p.add_argument("--debugpy", type=parse_address, metavar="[HOST:]PORT",
                   help=f"listen for a debugger (VS Code) with debugpy, on {DEFAULT_HOST} unless HOST is given; "
                   "port 0 picks a free one")
    p.add_argument("--wait", action="store_true", help="with --debugpy: wait for the debugger before the entry script loads")
    p.add_argument("--vscode", action="store_true",
                   help="write .vscode/launch.json to attach to the debugpy port (implies --debugpy 5678 --wait)")


def parse_address(text: str) -> tuple[str, int]:
    """``[HOST:]PORT``: the host defaults to 127.0.0.1; port 0 lets debugpy pick a free one."""
    host, _, port = text.rpartition(":")
    number = int(port) if port.isdigit() else -1
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"invalid [HOST:]PORT '{text}' (a port from 0 to 65535; 0 picks a free one)")
    return host.strip("[]") or DEFAULT_HOST, number


def command_replay(args: argparse.Namespace) -> int:
    """Replay the mini-batch; the exit code says whether ``run()`` returned (see the module's docstring)."""
    import bdb

    from pipeobs.replay_debug import Debugging
    from pipeobs.replay_worker import ReplayWorker

    debugging = Debugging.from_args(args)
    target = find_target(args.run, args.runs_dir, args.mini_batch, args.attempt)
    debugging.listen(target.plan.source_dir)  # before anything is created: a busy port fails early
    folder = make_replay_dir(target.run_dir)
    (folder / NOTE).write_text(json.dumps(target.note(), indent=2) + "\n", encoding="utf-8")
    say(target.headline())
    say(f"folder {folder}")
    worker = ReplayWorker(target.plan_in(folder), target.worker, debugging)
    try:
        return 0 if worker.replay(target.mini_batch) else 1
    except bdb.BdbQuit:
        say("quit in the debugger: run() did not finish")
        return 1


# ----------------------------------------------------------------------------- what is replayed
@dataclass(frozen=True)
class Target:
    """What a replay runs: the recorded run's plan, one of its mini-batches, and the attempt it repeats."""

    run_dir: Path
    plan: JobPlan
    mini_batch: MiniBatch
    attempt: dict[str, Any] | None  # the attempt's row (attempt, worker, status, error); None if never tried

    @property
    def worker(self) -> str:
        """``<node>/processNNN``: the worker of the attempt, whose name the replay takes."""
        return (self.attempt or {}).get("worker") or DEFAULT_WORKER

    def plan_in(self, folder: Path) -> JobPlan:
        """The run's plan with the replay's folder as run directory, id and output: the run's stay untouched."""
        from pipeobs.record.rundir import RunDir

        return replace(self.plan, run_dir=RunDir(folder), step_id=folder.name, output_dir=str(folder / "output"))

    def note(self) -> dict[str, Any]:
        """``replay.json``: the link to the run replayed."""
        return {"replay_of": str(self.run_dir), "step_id": self.plan.step_id, "mini_batch_id": self.mini_batch.id,
                "attempt": (self.attempt or {}).get("attempt"), "worker": self.worker,
                "inputs": json.loads(self.mini_batch.to_json())}

    def headline(self) -> str:
        text = f"mini-batch {self.mini_batch.id} of run {self.plan.step_id} ({self.mini_batch.summary()})"
        attempt = self.attempt
        if attempt is None:
            return text + ", never tried"
        error = f": {attempt['error_type']}: {attempt['error_message']}" if attempt["error_type"] else ""
        return text + f", attempt {attempt['attempt']} on {attempt['worker']}: {attempt['status']}{error}"


def find_target(run: str, runs_dir: str, mini_batch_id: int | None, attempt: int | None) -> Target:
    """The run, mini-batch and attempt asked for, read from the run's store; one-line errors for what is not there."""
    from pipeobs.datasets import MiniBatch
    from pipeobs.entry import check_entry_script
    from pipeobs.explorer.runs import STORE_NAME, resolve_run
    from pipeobs.record.rundir import RunDir
    from pipeobs.step import recorded_plan

    run_dir = resolve_run(run, runs_dir).resolve()
    try:
        with read_unchanged(run_dir / STORE_NAME) as conn:
            row = conn.execute("SELECT * FROM runs").fetchone()
            if row is None:
                raise RunDirError(f"'{run_dir}' holds no recorded run: pass the folder printed by 'pipeobs run'")
            ledger = _ledger_row(conn, row["step_id"], mini_batch_id)
            attempts = [dict(r) for r in conn.execute(
                "SELECT attempt, worker, status, error_type, error_message FROM attempts WHERE mini_batch_id = ? "
                "ORDER BY attempt", (ledger["id"],))]
            plan = recorded_plan(row, RunDir(run_dir))
    except sqlite3.Error as exc:
        raise RunDirError(f"cannot read the store of '{run_dir}': {exc}") from None
    check_entry_script(plan.entry_script)
    mini_batch = MiniBatch.from_json(ledger["descriptor"])
    gone = [path for path in mini_batch.files if not os.path.exists(path)]
    if gone:
        raise InputError(f"input '{gone[0]}' of mini-batch {mini_batch.id} no longer exists: the replay reads the "
                         "files the run read")
    return Target(run_dir, plan, mini_batch, _pick_attempt(attempts, attempt, mini_batch.id))


def _ledger_row(conn: sqlite3.Connection, step_id: str, mini_batch_id: int | None) -> sqlite3.Row:
    if mini_batch_id is None:
        row = conn.execute("SELECT id, descriptor FROM mini_batches ORDER BY id LIMIT 1").fetchone()
        if row is None:
            raise RunDirError(f"run {step_id} has no mini-batch to replay: it stopped before its inputs were partitioned")
        return row
    row = conn.execute("SELECT id, descriptor FROM mini_batches WHERE id = ?", (mini_batch_id,)).fetchone()
    if row is None:
        low, high = conn.execute("SELECT min(id), max(id) FROM mini_batches").fetchone()
        known = f"its mini-batches are {low} to {high}" if low is not None else "it has none"
        raise ConfigError(f"run {step_id} has no mini-batch {mini_batch_id}: {known}")
    return row


def _pick_attempt(attempts: list[dict[str, Any]], wanted: int | None, mini_batch_id: int) -> dict[str, Any] | None:
    if wanted is None:
        return attempts[-1] if attempts else None
    for attempt in attempts:
        if attempt["attempt"] == wanted:
            return attempt
    tried = f"its attempts are {', '.join(str(a['attempt']) for a in attempts)}" if attempts else "it was never tried"
    raise ConfigError(f"mini-batch {mini_batch_id} has no attempt {wanted}: {tried}")


@contextmanager
def read_unchanged(store: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to a run's store that leaves the run directory as it is.

    SQLite reads a WAL store by creating its ``-wal`` and ``-shm`` files when they are missing,
    and a read-only connection cannot remove them; so the store of an ended run (no ``-wal``
    file) is opened ``immutable``. A live run's store has them already.
    """
    from pipeobs.record.store import connect

    if Path(f"{store}-wal").exists():
        conn = connect(store, readonly=True)
    else:
        conn = sqlite3.connect(f"{store.resolve().as_uri()}?immutable=1", uri=True)
        conn.row_factory = sqlite3.Row
    try:
        yield conn
    finally:
        conn.close()


def make_replay_dir(run_dir: Path) -> Path:
    """``<run dir>-replay-<n>``, next to the run's: a new folder for every replay."""
    n = 1
    while True:
        folder = run_dir.with_name(f"{run_dir.name}-replay-{n}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            n += 1
        except OSError as exc:
            raise RunDirError(f"cannot create the replay folder '{folder}': {exc.strerror or exc}") from None
