"""``import pipeobs`` stays light, and the public facade matches ``__all__``."""

from __future__ import annotations

import subprocess
import sys

import pipeobs

HEAVY = ("pandas", "pyarrow", "numpy", "grpc", "google.protobuf", "ray", "requests", "rich", "yaml", "structlog", "opentelemetry")


class TestImports:
    def test_import_pipeobs_pulls_in_no_heavy_module(self) -> None:
        """Importing pipeobs, its worker and its worker API (done by every worker) loads no optional dependency."""
        code = "import sys, pipeobs, pipeobs.worker, pipeobs.worker_api; print(' '.join(sorted(sys.modules)))"

        loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())

        assert not [m for m in HEAVY if m in loaded]

    def test_all_matches_exports(self) -> None:
        """Every name in __all__ resolves, and __all__ is sorted."""
        assert pipeobs.__all__ == sorted(pipeobs.__all__)
        for name in pipeobs.__all__:
            assert getattr(pipeobs, name) is not None

    def test_unknown_attribute_raises(self) -> None:
        """A missing name is an AttributeError, not a silent None."""
        try:
            pipeobs.NotAThing  # noqa: B018
        except AttributeError as exc:
            assert "NotAThing" in str(exc)
        else:
            raise AssertionError("expected AttributeError")
