"""The benchmarks' smoke run (``bench/run.py --smoke``) works end to end, so the suite never rots.

No speed is asserted: the smoke sizes are tiny and CI machines are shared.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("dispatch", "one_ms", "startup", "linecost", "capture", "exporters", "memory", "spool", "explorer", "ui",
            "ray")
MACHINE_FIELDS = ("- cores:", "- CPU:", "- RAM:", "- Python:", "- libraries:")


class TestBenchSmoke:
    def test_smoke_run_writes_every_section_and_the_machine(self, tmp_path: Path) -> None:
        """`python bench/run.py --smoke` exits 0 and its report has the machine block and every benchmark."""
        out = tmp_path / "RESULTS.md"

        done = subprocess.run(
            [sys.executable, "bench/run.py", "--smoke", "--out", str(out)],
            cwd=REPO, capture_output=True, text=True, timeout=110, check=False,
        )

        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        report = out.read_text(encoding="utf-8")
        assert "## Machine" in report
        assert all(field in report for field in MACHINE_FIELDS)
        assert f"bench/run.py --smoke --out {out}`" in report
        assert [key for key in SECTIONS if f"<!-- section: {key} -->" not in report] == []
        assert "ERROR" not in report
