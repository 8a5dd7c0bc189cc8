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


def test_a_partial_run_replaces_its_sections_and_rows_and_keeps_the_rest() -> None:
    """`bench/run.py --only X` into an existing report: X's section and target rows are the new ones; the other
    sections, their rows and any chapter written by hand stay where they were; a new benchmark is added."""
    sys.path.insert(0, str(REPO))
    from bench.run import merge_report

    old = ("# report\n\nopening\n\n## Machine\n\n- cores: 2\n\n## Targets\n\n| benchmark | target | measured | verdict |\n"
           "|---|---|---|---|\n| a | t1 | 1 | MISSED |\n| a | t2 | 2 | met |\n| b | t | 3 | met |\n\n"
           "## Notes by hand\n\nkept\n\n## (a) A\n\n<!-- section: a -->\n\nold a\n\n## (b) B\n\n<!-- section: b -->\n\nold b\n")
    new = ("# report\n\nother opening\n\n## Machine\n\n- cores: 4\n\n## Targets\n\n| benchmark | target | measured | "
           "verdict |\n|---|---|---|---|\n| a | t1 | 9 | met |\n| c | t | 5 | met |\n\n"
           "## (a) A\n\n<!-- section: a -->\n\nnew a\n\n## (c) C\n\n<!-- section: c -->\n\nnew c\n")

    merged = merge_report(old, new)

    assert merged.startswith("# report\n\nopening\n\n## Machine\n\n- cores: 2\n")
    assert "| a | t1 | 9 | met |\n| b | t | 3 | met |\n| c | t | 5 | met |\n" in merged
    assert "| a | t2 |" not in merged and "old a" not in merged
    assert merged.index("## Notes by hand") < merged.index("new a") < merged.index("old b") < merged.index("new c")
    assert "new a\n\n## (b) B" in merged and merged.endswith("new c\n")  # a blank line before each heading
