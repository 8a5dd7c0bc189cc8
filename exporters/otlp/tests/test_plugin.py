"""The distribution: entry point, public facade, light import."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import pipeobs_otlp
import pipeobs_otlp.exporter
import pipeobs_otlp.senders
from pipeobs.export.base import ENTRY_POINT_GROUP


class TestPlugin:
    def test_entry_point_is_registered(self) -> None:
        """pipeobs finds the plugin as "otlp" under pipeobs.exporters, pointing at create_exporter."""
        (entry_point,) = entry_points(group=ENTRY_POINT_GROUP, name="otlp")

        assert entry_point.value == "pipeobs_otlp:create_exporter"
        assert entry_point.load() is pipeobs_otlp.create_exporter

    def test_public_names(self) -> None:
        """__all__ is sorted, and each name is the very object its module defines."""
        assert pipeobs_otlp.__all__ == ["OtlpExporter", "SendOutcome", "SignalSender", "create_exporter"]
        assert pipeobs_otlp.OtlpExporter is pipeobs_otlp.exporter.OtlpExporter
        assert pipeobs_otlp.create_exporter is pipeobs_otlp.exporter.create_exporter
        assert pipeobs_otlp.SendOutcome is pipeobs_otlp.senders.SendOutcome
        assert pipeobs_otlp.SignalSender is pipeobs_otlp.senders.SignalSender

    def test_import_is_light(self) -> None:
        """import pipeobs_otlp pulls in no requests, protobuf, grpc, nor its own modules until a name is used."""
        code = (
            "import sys, pipeobs_otlp; "
            "print([m for m in sys.modules if m.startswith(('requests', 'google.protobuf', 'grpc', 'pipeobs_otlp.'))]); "
            "pipeobs_otlp.create_exporter; "
            "print('pipeobs_otlp.exporter' in sys.modules)"
        )

        before, after = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()

        assert (before, after) == ("[]", "True")
