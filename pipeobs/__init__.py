"""pipeobs: run Azure ML ParallelRunStep entry scripts locally, and observe every part.

The public names are loaded on first use, so ``import pipeobs`` stays light (worker processes
import it too).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ConfigError": "pipeobs.errors",
    "RunData": "pipeobs.loading",
    "add_pipeobs_context": "pipeobs.context",
    "load": "pipeobs.loading",
    "EntryScript": "pipeobs.entry",
    "EntryScriptError": "pipeobs.errors",
    "FileDataset": "pipeobs.datasets",
    "InputError": "pipeobs.errors",
    "JobFailed": "pipeobs.errors",
    "JobResult": "pipeobs.jobs",
    "ParallelRunConfig": "pipeobs.config",
    "ParallelRunStep": "pipeobs.step",
    "PipeobsError": "pipeobs.errors",
    "RunDirError": "pipeobs.errors",
    "TabularDataset": "pipeobs.datasets",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeobs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
