"""`ofexp study --widths`: what it refuses, each in one `error: ...; <fix>` line before any run exists,
and the size it announces (every seed's steps once per width), read from the Slurm dry run's plan count."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_cli_in_process

STUDY = ["study", "--epochs", "1", "--no-log-model", "--device", "cpu"]


def _refused(tmp_path: Path, capsys, args: list[str]) -> str:
    result = run_cli_in_process([*STUDY, *args], f"sqlite:///{tmp_path}/mlflow.db", capsys)
    assert result.returncode != 0 and result.stdout == "" and "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and len(line) < 300, line
    assert not (tmp_path / "mlflow.db").exists(), "refused before any run exists"
    return line


@pytest.mark.parametrize("args, says", [
    (["--width", "0.5", "--widths", "0.25,1"], "--width and --widths both set the width; pass only one"),
    (["--width", "1", "--widths", "0.25,1"], "--width and --widths both set the width; pass only one"),
    (["--widths", "0.5"], "--widths 0.5 lists one width; list two or more"),
    (["--widths", "0.5,1,0.50"], "--widths 0.5,1,0.5 lists a width twice; list each once"),
    (["--widths", "0.5,wide"], "--widths '0.5,wide' lists 'wide', not a number; pass comma-separated widths"),
    (["--widths", "0.5,,1"], "--widths '0.5,,1' has an empty item"),
    (["--widths", "0,1"], "--widths 0,1: width=0.0 is out of range; use a number in (0, 16]"),
    (["--widths", "0.5,1", "--model", "torchvision:resnet18"], "--widths does not apply to --model torchvision"),
    (["--widths", "0.5,1", "--backend", "slurm", "--dry-run"], "--widths runs in-process only for now; drop --backend"),
])
def test_bad_widths_are_refused_in_one_line(tmp_path, capsys, args, says):
    assert says in _refused(tmp_path, capsys, args)


def test_the_announced_size_counts_every_width(tmp_path, capsys, monkeypatch):
    from ofexp.cli import study_commands

    # stop right after the size is announced: nothing is trained
    monkeypatch.setattr(study_commands, "run_study", lambda cfg: (_ for _ in ()).throw(SystemExit(3)))
    result = run_cli_in_process([*STUDY, "--widths", "0.25,0.5,1", "--seeds", "2"],
                                f"sqlite:///{tmp_path}/mlflow.db", capsys)
    assert result.returncode == 3
    assert "study: 48 steps (2 seeds × 24 steps)" in result.stderr  # 8 steps per seed and width
