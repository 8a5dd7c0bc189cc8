"""The debuggers of a replay: pdb in the terminal, or debugpy for VS Code (any DAP client).

* ``--pdb`` stops at the first line of ``run()`` (as ``pdb.runcall`` does); ``--pm`` opens pdb
  post-mortem on an exception of ``init()`` or ``run()``.
* ``--debugpy [HOST:]PORT`` listens with ``debugpy.listen`` before the entry script is loaded
  (port 0: debugpy picks one; the line ``debugpy listening on HOST:PORT`` says which); with
  ``--wait`` the replay waits for a client to attach first, so breakpoints set on attaching hold
  from the script's first line on. ``--vscode`` implies ``--debugpy 5678 --wait`` and adds the
  configuration ``pipeobs replay`` (attach to that port, the source folder mapped to itself) to
  ``.vscode/launch.json`` in the current folder. debugpy is imported only here, when asked for:
  ``pip install 'pipeobs[debug]'``.
"""

from __future__ import annotations

import argparse
import json
import pdb
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeobs.debugger import import_debugpy
from pipeobs.errors import ConfigError
from pipeobs.replay import DEFAULT_HOST, say

VSCODE_PORT = 5678  # debugpy's customary port, VS Code's default for attaching
LAUNCH_NAME = "pipeobs replay"


@dataclass
class Debugging:
    """How a replay is debugged: pdb at ``run()`` and/or post-mortem, or a debugpy listener."""

    stop_in_run: bool = False
    post_mortem_on_error: bool = False
    address: tuple[str, int] | None = None
    wait: bool = False
    vscode: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Debugging:
        address = args.debugpy or ((DEFAULT_HOST, VSCODE_PORT) if args.vscode else None)
        if address is None and args.wait:
            raise ConfigError("--wait waits for a debugger to attach to debugpy: add --debugpy [HOST:]PORT")
        if address is not None and (args.pdb or args.pm):
            raise ConfigError("--debugpy (or --vscode) and --pdb/--pm are two debuggers at once: use one")
        return cls(args.pdb, args.pm, address, args.wait or args.vscode, args.vscode)

    def listen(self, source_dir: str) -> None:
        """With ``--debugpy``: listen (and with ``--vscode`` write the launch configuration for the port)."""
        if self.address is None:
            return
        debugpy = import_debugpy("--debugpy and --vscode need debugpy")
        try:
            host, port = debugpy.listen(self.address)
        except (RuntimeError, OSError) as exc:
            raise ConfigError(f"debugpy cannot listen on {self.address[0]}:{self.address[1]}: {exc}") from None
        say(f"debugpy listening on {host}:{port}")
        if self.vscode:
            add_launch_configuration(Path.cwd() / ".vscode" / "launch.json", attach_configuration(host, port, source_dir))

    def wait_for_client(self) -> None:
        if self.address is not None and self.wait:
            say(f"waiting for a debugger to attach (VS Code: Run and Debug, '{LAUNCH_NAME}')")
            import_debugpy("--debugpy and --vscode need debugpy").wait_for_client()

    def call(self, run: Any, *arguments: Any) -> Any:
        """``run(*arguments)``; with ``--pdb`` in pdb from its first line, as ``pdb.runcall`` does it, except
        that quitting pdb raises ``BdbQuit`` (runcall returns None) and no debugger frame sits in a traceback."""
        if not self.stop_in_run:
            return run(*arguments)
        debugger = pdb.Pdb()
        debugger.reset()
        sys.settrace(debugger.trace_dispatch)
        try:
            return run(*arguments)
        finally:
            debugger.quitting = True
            sys.settrace(None)

    def post_mortem(self, exc: BaseException) -> None:
        if self.post_mortem_on_error:
            pdb.post_mortem(exc.__traceback__)


def attach_configuration(host: str, port: int, source_dir: str) -> dict[str, Any]:
    """A VS Code launch configuration attaching to ``host:port``, the entry script's folder mapped to itself."""
    return {
        "name": LAUNCH_NAME,
        "type": "debugpy",
        "request": "attach",
        "connect": {"host": host, "port": port},
        "pathMappings": [{"localRoot": source_dir, "remoteRoot": source_dir}],
    }


def add_launch_configuration(path: Path, configuration: dict[str, Any]) -> None:
    """Put ``configuration`` in ``launch.json`` at ``path`` (in place of one of the same name).

    VS Code lets the file hold comments; one that is not plain JSON is left as it is, and the
    configuration is printed to be added by hand.
    """
    launch: dict[str, Any] = {"version": "0.2.0", "configurations": []}
    if path.exists():
        try:
            launch = json.loads(path.read_text(encoding="utf-8"))
            launch["configurations"] = [c for c in launch["configurations"] if c.get("name") != configuration["name"]]
        except (ValueError, TypeError, KeyError, AttributeError):
            say(f"{path} is not plain JSON (comments?), so it is left as it is; add this configuration to it:\n"
                + json.dumps(configuration, indent=4))
            return
    launch["configurations"].append(configuration)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(launch, indent=4) + "\n", encoding="utf-8")
    say(f"wrote the configuration '{configuration['name']}' to {path}")
