"""`ofexp study --widths`: what it refuses, each in one `error: ...; <fix>` line before any run exists,
the size it announces (every seed's steps once per width), and the Slurm dry run of a width study: one job
per step of each width, each train job at its width, each other job on the runs of its own width."""
from __future__ import annotations

import json
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
    (["--widths", "0.5,1", "--width", "0.5", "--backend", "slurm", "--dry-run"], "--width and --widths both set"),
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


def test_a_slurm_dry_run_renders_every_widths_steps(tmp_path, capsys):
    result = run_cli_in_process([*STUDY, "--widths", "0.25,0.5", "--method", "naive", "--backend", "slurm",
                                 "--backend-config", json.dumps({"log_dir": str(tmp_path / "logs")}), "--dry-run"],
                                f"sqlite:///{tmp_path}/mlflow.db", capsys)
    assert result.returncode == 0, result.stderr
    assert "study: 12 steps (1 seed × 12 steps)" in result.stderr  # 6 steps per width
    scripts = {s.split(" ", 1)[0]: s for s in result.stdout.split("# step ")[1:]}
    assert len(scripts) == 12 and not (tmp_path / "mlflow.db").exists(), "a dry run submits and logs nothing"
    for key, width in (("w0p25", "0.25"), ("w0p5", "0.5")):
        assert f"--width {width} " in scripts[f"train-seed1-parent1-{key}"]
        fuse = scripts[f"fuse-seed1-naive-{key}"]
        assert f"--parents RUN_ID_OF_train-seed1-parent1-{key},RUN_ID_OF_train-seed1-parent2-{key}" in fuse
        assert f"--model-run RUN_ID_OF_fuse-seed1-naive-{key}" in scripts[f"evaluate-seed1-naive-fused-{key}"]
