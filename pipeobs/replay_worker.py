"""The process of a replay: a :class:`~pipeobs.worker.WorkerLoop` with the terminal in place of a driver.

:meth:`ReplayWorker.replay` sets the process up as the executor and the worker set up a worker
(the run's environment variables, ``AZUREML_BI_OUTPUT_PATH``, the model dir, ``sys.argv``, the
scratch folder as working directory, the azureml shims), so ``Run.get_context()`` and
``EntryScript`` work as in a worker; then it loads the entry script and the mini-batch with
pipeobs's own loaders and calls ``init()``, ``run()`` and ``shutdown()``. Output goes to the
terminal as it is written; log records and ``run.log()`` points are printed on stderr
(:class:`TerminalCapture`); no span is recorded.
"""

from __future__ import annotations

import bdb
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from pipeobs.accept import WrongReturnType, accept
from pipeobs.capture import IDLE, WorkerCapture, _flush_stdio
from pipeobs.entry import load_entry_script, user_traceback
from pipeobs.errors import EntryScriptError
from pipeobs.replay import say
from pipeobs.streams import _decode_log
from pipeobs.worker import WorkerLoop, takes_context

if TYPE_CHECKING:
    from pipeobs.datasets import MiniBatch
    from pipeobs.jobs import JobPlan
    from pipeobs.replay_debug import Debugging


class TerminalCapture(WorkerCapture):
    """A worker's capture with no driver to read its marker lines: log records and metric points
    are printed to stderr as they come, in order with the output."""

    def write_marker(self, kind: bytes, body: bytes) -> None:
        if kind == b"L":
            line = _decode_log(IDLE, body)
            self._print(f"{line.level}:{line.logger}:{line.text}")

    def write_record(self, record: dict[str, object], kind: bytes) -> None:
        if kind == b"M":  # a run.log() point; finished spans (S) have nobody to go to
            self._print(f"metric {record['n']} ({record['k']}): {record['v']}")

    def _print(self, text: str) -> None:
        with self._lock:
            _flush_stdio()
            print(text, file=sys.stderr, flush=True)


class ReplayWorker(WorkerLoop):
    """One mini-batch run as a worker runs it, in this process and in the foreground."""

    def __init__(self, plan: JobPlan, worker: str, debugging: Debugging) -> None:
        node, _, name = worker.partition("/")
        super().__init__(cast(Any, None), plan.worker_setup(int(node), name, token="", traceparent=""))  # no driver
        self.plan = plan
        self.capture = TerminalCapture(self.setup.token, self.setup.logging_level)
        self.debugging = debugging

    def replay(self, mini_batch: MiniBatch) -> bool:
        """``init()``, ``run(mini_batch)``, ``shutdown()``: whether ``run()`` returned a result a worker accepts."""
        os.environ.update(self.plan.worker_env)
        os.makedirs(self.plan.output_dir, exist_ok=True)
        self.capture.install()
        self._prepare_process()
        self.debugging.wait_for_client()
        self._load_entry_script()
        initialized, error = self._user_call(self._hook("init"))
        if not initialized:
            say(f"init() raised {type(error).__name__}: run() was not called")
            return False
        ok = self._run(mini_batch)
        self._user_call(self._hook("shutdown"))
        return ok

    def _load_entry_script(self) -> None:
        try:
            self.module = load_entry_script(self.setup.entry_script)
            self.run_takes_context = takes_context(self.module.run)
        except (EntryScriptError, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001 - the script's own import error, shown as a run shows it
            raise EntryScriptError(
                f"entry script '{self.setup.entry_script}' failed to load:\n{user_traceback(exc).rstrip()}"
            ) from None

    def _hook(self, name: str) -> Callable[[], Any]:
        hook = getattr(self.module, name, None)
        return hook if callable(hook) else lambda: None

    def _run(self, mini_batch: MiniBatch) -> bool:
        from pipeobs.datasets import load_mini_batch

        loaded, data = self._user_call(lambda: load_mini_batch(mini_batch))
        if not loaded:
            say(f"mini-batch {mini_batch.id} could not be read: run() was not called")
            return False
        arguments = self.run_arguments(mini_batch, data)
        ran, returned = self._user_call(lambda: self.debugging.call(self.module.run, *arguments))
        if not ran:
            say(f"run() raised {type(returned).__name__}")
            return False
        try:
            accepted = accept(returned, len(data), self.setup.output_action)
        except WrongReturnType as exc:
            say(f"{type(exc).__name__}: {exc}")
            return False
        self._write_rows(accepted)
        say(f"run() returned {accepted['returned']} items for {len(data)} inputs")
        return True

    def _user_call(self, call: Callable[[], Any]) -> tuple[bool, Any]:
        """Call user code as a worker does: an exception is the user's, shown with their traceback
        (and opened in pdb with ``--pm``); ``(False, exception)`` then, else ``(True, value)``."""
        try:
            return True, call()
        except (KeyboardInterrupt, bdb.BdbQuit):
            raise
        except BaseException as exc:  # noqa: BLE001 - user code, caught as a worker catches it
            _flush_stdio()
            print(user_traceback(exc), end="", file=sys.stderr, flush=True)
            self.debugging.post_mortem(exc)
            return False, exc

    def _write_rows(self, accepted: dict[str, Any]) -> None:
        """``append_row``: the rows go to the replay's output file, as the driver would append them."""
        from pipeobs.driver.output import OutputFile

        if not accepted.get("rows"):
            return
        output = OutputFile(self.plan.output_file, self.plan.settings.append_row_dataframe_header)
        output.open(0)
        output.append(accepted["rows"], accepted.get("header"))
        output.close()
        say(f"rows written to {self.plan.output_file}")
