"""``import pipeobs`` stays light, and the public facade matches ``__all__``."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pipeobs

HEAVY = ("pandas", "pyarrow", "numpy", "grpc", "google.protobuf", "ray", "requests", "rich", "yaml", "structlog", "opentelemetry",
         "starlette", "jinja2", "uvicorn")

# The public facade: each name and the module it comes from.
PUBLIC = {
    "ConfigError": "pipeobs.errors",
    "EntryScript": "pipeobs.entry",
    "EntryScriptError": "pipeobs.errors",
    "FileDataset": "pipeobs.datasets",
    "InputError": "pipeobs.errors",
    "JobFailed": "pipeobs.errors",
    "JobResult": "pipeobs.jobs",
    "ParallelRunConfig": "pipeobs.config",
    "ParallelRunStep": "pipeobs.step",
    "PipeobsError": "pipeobs.errors",
    "RunData": "pipeobs.loading",
    "RunDirError": "pipeobs.errors",
    "TabularDataset": "pipeobs.datasets",
    "add_pipeobs_context": "pipeobs.context",
    "load": "pipeobs.loading",
}


class TestImports:
    def test_import_pipeobs_pulls_in_no_heavy_module(self) -> None:
        """Importing pipeobs, its worker and its worker API (done by every worker) loads no optional dependency."""
        code = "import sys, pipeobs, pipeobs.worker, pipeobs.worker_api; print(' '.join(sorted(sys.modules)))"

        loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())

        assert not [m for m in HEAVY if m in loaded]

    def test_all_matches_exports(self) -> None:
        """__all__ is the sorted public facade, and each name is the very object its module defines."""
        assert pipeobs.__all__ == sorted(PUBLIC)
        for name, module in PUBLIC.items():
            assert getattr(pipeobs, name) is getattr(importlib.import_module(module), name), name

    def test_public_names_load_on_first_use(self) -> None:
        """import pipeobs loads none of the modules behind its names; using a name loads its module."""
        code = (
            "import sys, pipeobs; "
            "print(sorted(m for m in sys.modules if m.startswith('pipeobs.'))); "
            "pipeobs.ParallelRunStep; "
            "print('pipeobs.step' in sys.modules)"
        )

        before, after = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()

        assert (before, after) == ("[]", "True")

    def test_unknown_attribute_raises(self) -> None:
        """A missing name is an AttributeError, not a silent None."""
        try:
            pipeobs.NotAThing  # noqa: B018
        except AttributeError as exc:
            assert "NotAThing" in str(exc)
        else:
            raise AssertionError("expected AttributeError")
