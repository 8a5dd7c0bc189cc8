"""The run directory: ``runs/<step-name>/<step_id>/`` and the paths inside it (Azure's tree)."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from pipeobs.errors import RunDirError

STORE_NAME = "pipeobs.db"


def read_json_record(path: Path) -> dict[str, Any] | None:
    """A JSON object a run wrote beside its store (``environment.json``, ``fingerprint.json``); None when the
    file is missing (an older run), unreadable, not JSON, or not an object."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def new_step_id(step_name: str) -> str:
    """``<step-name>_<UTC yyyymmdd_HHMMSS>_<6 hex>``: sortable, unique, readable."""
    stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime())
    return f"{step_name}_{stamp}_{secrets.token_hex(3)}"


class RunDir:
    """Paths of one run directory, and the lock that keeps a second driver out."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).resolve()
        self._lock_fd: int | None = None

    @classmethod
    def create(cls, runs_root: str | os.PathLike[str], step_name: str, step_id: str) -> RunDir:
        path = Path(runs_root) / step_name / step_id
        try:
            path.mkdir(parents=True, exist_ok=False)
        except OSError as exc:
            raise RunDirError(f"cannot create run directory '{path}': {exc.strerror or exc}") from None
        return cls(path)

    @classmethod
    def existing(cls, path: str | os.PathLike[str]) -> RunDir:
        run_dir = cls(path)
        if not (run_dir.path / STORE_NAME).is_file():
            raise RunDirError(
                f"'{path}' is not a pipeobs run directory (no {STORE_NAME}); "
                "pass the folder printed by 'pipeobs run'"
            )
        return run_dir

    def lock(self) -> None:
        """An exclusive lock for the driver's lifetime (or an ``export --retry``); a killed driver releases it."""
        if not self.try_lock():
            raise RunDirError(f"run directory '{self.path}' is in use by another pipeobs process (its driver, or "
                              "an 'export --retry'); wait until it ends")

    def try_lock(self) -> bool:
        """Take the lock if nobody holds it; whether it was taken."""
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def store(self) -> Path:
        return self.path / STORE_NAME

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def user_log(self, kind: str, node: int, name: str, suffix: str) -> Path:
        """``logs/user/<kind>/<node>/<name><suffix>``, e.g. ``stdout/0/process000.stdout.txt``."""
        return self.logs / "user" / kind / str(node) / f"{name}{suffix}"

    def sys_node_log(self, node: int, name: str) -> Path:
        return self.logs / "sys" / "node" / str(node) / f"{name}.txt"

    @property
    def driver_log(self) -> Path:
        return self.path / "azureml-logs" / "70_driver_log.txt"

    def scratch(self, node: int, name: str) -> Path:
        """The private working folder a worker runs in (Azure switches workers to a temp dir)."""
        return self.path / "tmp" / str(node) / name
