"""docs/study.md's progress-estimate table and step times and docs/commands.md's recipe figures are what
docs/results/page_figures.py computes from the committed step_times.csv and quality.csv (issue #26):
the pages hold them today, and changing a committed value makes the check fail. No training: it reads files."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path("docs/results/page_figures.py")
TIMES = Path("docs/results/study_estimates/step_times.csv")
QUALITY = Path("docs/results/digits_fusion/quality.csv")


def _run(root: Path) -> subprocess.CompletedProcess:
    """The script of the tree at `root`, as a reader runs it (estimates.py imports ofexp from this tree)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(root / SCRIPT)], capture_output=True, text=True, cwd=root,
                          env=env, timeout=120)


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for path in ("docs/study.md", "docs/commands.md", "docs/results/page_figures.py", "docs/results/figures.py", TIMES,
                 "docs/results/study_estimates/estimates.py", QUALITY):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / path, root / path)
    return root


def test_study_and_commands_pages_hold_the_computed_figures():
    done = _run(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "MISSING" not in done.stdout
    assert done.stdout.count("ok      docs/study.md") == 3 and "ok      docs/commands.md" in done.stdout


def test_a_changed_step_time_breaks_the_check(tmp_path):
    root = _copy(tmp_path)
    times = pd.read_csv(root / TIMES)
    evaluate = times.index[(times["study"].str.startswith("Fashion")) & (times["kind"] == "evaluate")]
    times.loc[evaluate[0], "seconds"] = 2.0  # the first evaluate step, now the fastest
    times.to_csv(root / TIMES, index=False)
    done = _run(root)
    assert done.returncode == 1
    assert "MISSING docs/study.md: \"Fashion-MNIST's first four evaluate steps took 2–12 s" in done.stdout


def test_a_changed_fused_accuracy_breaks_the_check(tmp_path):
    root = _copy(tmp_path)
    quality = pd.read_csv(root / QUALITY)
    row = quality.index[(quality["arch"] == "vgg11") & (quality["lr"] == 0.1) & (quality["epochs"] == 10)
                        & (quality["model"] == "geometric_activations") & (quality["seed"] == 1)
                        & ~quality["bias"] & ~quality["batchnorm"] & (quality["solver"] == "exact")]
    quality.loc[row, "accuracy"] = 0.91
    quality.to_csv(root / QUALITY, index=False)
    done = _run(root)
    assert done.returncode == 1
    assert "MISSING docs/commands.md" in done.stdout and "0.910 and 0.955 with this recipe" in done.stdout
