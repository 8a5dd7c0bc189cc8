"""The distribution: entry point, public facade, light import."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import pipeobs_otlp
from pipeobs.export.base import ENTRY_POINT_GROUP


class TestPlugin:
    def test_entry_point_is_registered(self) -> None:
        """pipeobs finds the plugin as "otlp" under pipeobs.exporters, pointing at create_exporter."""
        (entry_point,) = entry_points(group=ENTRY_POINT_GROUP, name="otlp")

        assert entry_point.value == "pipeobs_otlp:create_exporter"
        assert entry_point.load() is pipeobs_otlp.create_exporter

    def test_public_names(self) -> None:
        """__all__ is sorted and every name in it resolves."""
        assert pipeobs_otlp.__all__ == sorted(pipeobs_otlp.__all__)
        assert pipeobs_otlp.__all__ == ["OtlpExporter", "SendOutcome", "SignalSender", "create_exporter"]
        for name in pipeobs_otlp.__all__:
            assert getattr(pipeobs_otlp, name) is not None

    def test_import_is_light(self) -> None:
        """import pipeobs_otlp pulls in no requests, protobuf or grpc."""
        code = (
            "import sys, pipeobs_otlp; "
            "heavy = [m for m in ('requests', 'google.protobuf', 'grpc') if m in sys.modules]; "
            "print(heavy)"
        )

        output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout

        assert output.strip() == "[]"
