"""The distribution: entry point, public names, and an import that costs nothing optional."""

from __future__ import annotations

import subprocess
import sys
import types
from importlib.metadata import distribution, entry_points

import pytest

import pipeobs_appinsights
from pipeobs.export.base import ENTRY_POINT_GROUP
from pipeobs_appinsights.testing import CONNECTION_STRING


class TestEntryPoint:
    def test_registered(self) -> None:
        """pip install registers appinsights = pipeobs_appinsights:create_exporter under pipeobs.exporters."""
        found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}

        assert found["appinsights"].value == "pipeobs_appinsights:create_exporter"
        assert found["appinsights"].load() is pipeobs_appinsights.create_exporter

    def test_pipeobs_creates_it_by_name(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """pipeobs's router finds the plugin by name and the factory reads the environment."""
        from pipeobs.export.routing import create_exporter

        monkeypatch.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", CONNECTION_STRING)

        exporter = create_exporter("appinsights")

        assert exporter.name == "appinsights"
        exporter.shutdown()

    def test_runtime_dependencies(self) -> None:
        """At runtime the distribution needs pipeobs only; opencensus is a test extra."""
        requires = distribution("pipeobs-appinsights").requires or []
        runtime = [r for r in requires if "extra ==" not in r]

        assert runtime == ["pipeobs"]
        assert any(r.startswith("opencensus-ext-azure") and 'extra == "test"' in r for r in requires)


class TestPublicNames:
    def test_all_is_sorted_and_complete(self) -> None:
        """__all__ is sorted and every name in it exists."""
        assert pipeobs_appinsights.__all__ == sorted(pipeobs_appinsights.__all__)
        assert all(hasattr(pipeobs_appinsights, name) for name in pipeobs_appinsights.__all__)

    def test_exposed_members_match_all(self) -> None:
        """Nothing public is exposed by accident (submodules aside)."""
        public = {
            name
            for name, value in vars(pipeobs_appinsights).items()
            if not name.startswith("_") and not isinstance(value, types.ModuleType)
        }

        assert public == set(pipeobs_appinsights.__all__) - {"__version__"}


def test_import_is_light() -> None:
    """Importing the plugin loads no opencensus, requests, azure or OpenTelemetry SDK."""
    code = (
        "import sys, pipeobs_appinsights\n"
        "heavy = [m for m in ('opencensus', 'requests', 'azure', 'opentelemetry.sdk', 'urllib3') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)

    assert out.stdout.strip() == ""
