"""What a run records about where it ran, once, when it is planned: ``<run dir>/environment.json``.

* the interpreter: Python version and implementation, executable, platform;
* every installed distribution and its version (``importlib.metadata``, as the driver sees
  them; workers run the same interpreter), by its normalized name (PEP 503);
* the *names* of environment variables: the config's ``environment_variables`` and the driver
  process's environment. Never their values, which may be secrets;
* each input's paths, file count and size in bytes as they were when the run started.

``pipeobs diff`` compares two of these, so a run on a laptop and one on a cluster can be told
apart by what they ran with.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeobs.record.rundir import read_json_record

if TYPE_CHECKING:
    from pipeobs.datasets import Dataset

ENVIRONMENT_FILE = "environment.json"


def describe_environment(config_variables: Iterable[str], datasets: Sequence[Dataset]) -> dict[str, Any]:
    """The environment record of a run with these config variable names and input datasets."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "packages": installed_packages(),
        "env_vars": {"config": sorted(config_variables), "process": sorted(os.environ)},
        "inputs": [_input_files(dataset) for dataset in datasets],
    }


def record_environment(run_dir: Path, config_variables: Iterable[str], datasets: Sequence[Dataset]) -> None:
    """Write the run's ``environment.json``."""
    record = describe_environment(config_variables, datasets)
    (run_dir / ENVIRONMENT_FILE).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


def read_environment(run_dir: Path) -> dict[str, Any] | None:
    """A run's environment record; None when it has none (an older run) or it is not JSON."""
    return read_json_record(run_dir / ENVIRONMENT_FILE)


def installed_packages() -> dict[str, str]:
    """Each distribution on ``sys.path`` and its version; where one is installed twice, the first
    found wins, as it does for imports.

    Read once per state of ``sys.path``'s folders (a run's fingerprint and its environment record
    both ask): installing or removing a package changes its folder's modification time.
    """
    return dict(_packages(tuple((entry, _mtime(entry)) for entry in sys.path)))


@functools.lru_cache(maxsize=1)
def _packages(path_state: tuple[tuple[str, float | None], ...]) -> tuple[tuple[str, str], ...]:
    from importlib.metadata import distributions

    packages: dict[str, str] = {}
    for dist in distributions():
        metadata = dist.metadata  # parsed on each access: once per distribution
        if metadata["Name"]:
            packages.setdefault(re.sub(r"[-_.]+", "-", metadata["Name"]).lower(), metadata["Version"])
    return tuple(sorted(packages.items()))


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path or ".").st_mtime
    except OSError:
        return None


def _input_files(dataset: Dataset) -> dict[str, Any]:
    files = dataset.files()
    return {"kind": dataset.kind, "paths": list(dataset.paths), "files": len(files),
            "bytes": sum(os.path.getsize(path) for path in files)}
