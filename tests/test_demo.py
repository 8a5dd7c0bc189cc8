"""The digit-identification demo: images, model, and a real run through worker processes."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from pipeobs.cli import main
from pipeobs.demo import make_images, run_demo
from pipeobs.errors import PipeobsError

LINE = re.compile(r"^digit_(\d+)_(\d)\.png: (\d)$")


def test_make_images_is_deterministic_and_counted(tmp_path: Path) -> None:
    from PIL import Image

    first = make_images(tmp_path / "a", 12)
    second = make_images(tmp_path / "b", 12)
    assert len(first) == 12
    assert [p.name for p in first] == [p.name for p in second]
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    assert sorted(p.name for p in (tmp_path / "a" / "images").iterdir()) == sorted(p.name for p in first)
    assert all(re.fullmatch(r"digit_\d+_\d\.png", p.name) for p in first)
    with Image.open(first[0]) as image:
        assert image.mode == "L"
        assert image.size == (28, 28)

    # existing files are kept as they are, and a larger count only adds the missing ones
    stamp = first[0].stat().st_mtime_ns
    more = make_images(tmp_path / "a", 15)
    assert more[:12] == first
    assert first[0].stat().st_mtime_ns == stamp
    assert len(list((tmp_path / "a" / "images").iterdir())) == 15


def test_run_demo_scores_every_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(tmp_path, images=30) == 0

    assert (tmp_path / "model" / "digits.pkl").is_file()
    lines = (tmp_path / "output" / "mnist_outputs.txt").read_text().splitlines()
    assert len(lines) == 30
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    assert sorted(int(m.group(1)) for m in matches if m) == list(range(30))
    correct = sum(m.group(2) == m.group(3) for m in matches if m)
    assert correct / 30 >= 0.8

    out = capsys.readouterr().out
    assert "Completed" in out
    assert "accuracy:" in out
    assert "70_driver_log.txt" in out
    assert "pipeobs run " in out and "-- --model_dir " in out
    # the closing lines say how to explore the run, and those commands work as printed
    explore = out.split("explore this run:\n", 1)[1].splitlines()
    commands = [shlex.split(line.split("   (")[0]) for line in explore if line.startswith("  pipeobs ")]
    assert [c[1] for c in commands] == ["show", "logs", "trace", "runs"]
    assert commands[-1][2] == str(tmp_path.resolve() / "runs")
    capsys.readouterr()
    for command in commands:
        assert main(command[1:]) == 0, command
    assert "predict-digits-mnist" in capsys.readouterr().out


def test_missing_demo_dependencies_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(PipeobsError, match=r"pip install 'pipeobs\[demo\]'"):
        make_images(tmp_path, 3)
