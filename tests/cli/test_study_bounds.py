"""Seeds torch cannot take, and studies too big to start unasked (issue #27, items 3 and 4).

Each case runs the real entry point in this process against a SQLite store of its own
and asserts one `error: ...; <fix>` line, no traceback, and no store (so no run) made.
Accepted sizes are checked with the Slurm dry run, which plans every step and starts none.
"""
from __future__ import annotations

import re
import tracemalloc
from pathlib import Path

import pytest
import torch

from conftest import run_cli_in_process
from ofexp.pipeline.steps.options import SEED_MAX, SEED_MIN
from ofexp.pipeline.study.run import MAX_UNCONFIRMED_STEPS, STUDY_SEED_MAX, parent_seed
from ofexp.training.loop import SHUFFLE_SEED_OFFSET

STUDY = ["study", "--model", "mlp", "--width", "0.125", "--epochs", "1", "--no-log-model", "--device", "cpu"]
DRY_RUN = ["--backend", "slurm", "--dry-run"]


def _refused(tmp_path: Path, capsys, args: list[str]) -> str:
    """The one error line of a command refused before any store or run exists."""
    result = run_cli_in_process(args, f"sqlite:///{tmp_path}/mlflow.db", capsys)
    assert result.returncode != 0 and result.stdout == "" and "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "; " in line, line
    assert not (tmp_path / "mlflow.db").exists(), "refused before any run exists"
    return line


def _dry_run(tmp_path: Path, capsys, args: list[str]):
    result = run_cli_in_process([*STUDY, *DRY_RUN, *args], f"sqlite:///{tmp_path}/mlflow.db", capsys)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


# --- 3. seeds torch cannot take are refused where they enter ----------------------------------

def test_the_seed_bounds_are_what_torch_takes_with_ofexps_offsets():
    # train seeds its shuffle generator with seed + SHUFFLE_SEED_OFFSET; both ends must be torch seeds
    for seed in (SEED_MIN, SEED_MAX + SHUFFLE_SEED_OFFSET, parent_seed(STUDY_SEED_MAX, 2) + SHUFFLE_SEED_OFFSET):
        torch.Generator().manual_seed(seed)
    assert SEED_MAX + SHUFFLE_SEED_OFFSET == 2**63 - 1, "int64: torch reads a negative seed s as 2**64 + s"
    assert parent_seed(STUDY_SEED_MAX + 1, 2) > SEED_MAX >= parent_seed(STUDY_SEED_MAX, 2)
    with pytest.raises(ValueError, match="Overflow"):
        torch.Generator().manual_seed(2**64)


@pytest.mark.parametrize("seeds, named", [
    ("3,18446744073709551617", "18446744073709551617"),
    (str(STUDY_SEED_MAX + 1), str(STUDY_SEED_MAX + 1)),
    (f"1,{STUDY_SEED_MAX + 1}", str(STUDY_SEED_MAX + 1)),
    ("1," + "9" * 5000, "9999"),
])
def test_a_study_seed_beyond_torchs_seeds_is_refused_before_any_run(tmp_path, capsys, seeds, named):
    line = _refused(tmp_path, capsys, [*STUDY, "--seeds", seeds])
    assert line.startswith("error: --seeds ") and named in line
    assert f"seeds are integers from 1 to {STUDY_SEED_MAX}" in line or "not an integer" in line
    assert len(line) < 400


def test_the_largest_study_seed_is_taken(tmp_path, capsys):
    out = _dry_run(tmp_path, capsys, ["--seeds", f"1,{STUDY_SEED_MAX}"]).stdout
    assert f"--seed {parent_seed(STUDY_SEED_MAX, 2)} " in out


@pytest.mark.parametrize("value", [str(2**64 + 1), str(SEED_MAX + 1), str(SEED_MIN - 1)])
def test_a_split_seed_beyond_torchs_seeds_is_refused_before_any_run(tmp_path, capsys, value):
    line = _refused(tmp_path, capsys, [*STUDY, "--split-seed", value])
    assert line.startswith(f"error: --split-seed {value} is outside the seeds torch takes")
    assert f"from {SEED_MIN} to {SEED_MAX}" in line


@pytest.mark.parametrize("value", [str(SEED_MIN), "-1", str(SEED_MAX)])
def test_split_seeds_at_the_bounds_are_taken(tmp_path, capsys, value):
    # the train steps' commands carry it as MLflow appends a parameter: --split_seed VALUE
    assert f"--split_seed {value} " in _dry_run(tmp_path, capsys, ["--split-seed", value]).stdout


# --- 4. a study says its size, and past 1,000 steps needs --yes ----------------------------------

@pytest.mark.parametrize("count", ["1000000", "10000000000000000"])
def test_a_huge_study_is_refused_without_yes_and_without_listing_its_seeds(tmp_path, capsys, count):
    tracemalloc.start()
    try:
        line = _refused(tmp_path, capsys, [*STUDY, "--seeds", count])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    steps = f"{int(count) * 8:,}"
    assert line == (f"error: --seeds {count} makes a study of {steps} steps ({int(count):,} seeds × 8 steps), "
                    f"more than {MAX_UNCONFIRMED_STEPS:,}; add --yes to start it, or pass fewer seeds")
    assert peak < 4 * 2**20, f"{peak} bytes: the seeds were listed before the refusal"


def test_the_size_counts_every_step_of_the_plan(tmp_path, capsys):
    line = _refused(tmp_path, capsys, [*STUDY, "--seeds", "72", "--finetune-epochs", "1"])
    assert "1,008 steps (72 seeds × 14 steps)" in line, "fine-tuning adds an ensemble and two fine-tuned models"
    line = _refused(tmp_path, capsys, [*STUDY, "--seeds", "1,2,3," + ",".join(map(str, range(10, 500))),
                                       "--method", "naive"])
    assert "2,958 steps (493 seeds × 6 steps)" in line and line.startswith("error: --seeds 1,2,3,10,11,")


def _started(monkeypatch, seeds: tuple[int, ...]) -> None:
    """Stop `ofexp study` where the local study would start, after checking the seeds it got."""
    from ofexp.cli import study_commands
    from ofexp.errors import ConfigError

    def started(cfg):
        assert isinstance(cfg.seeds, tuple) and cfg.seeds == seeds
        raise ConfigError("the study started; stop here")

    monkeypatch.setattr(study_commands, "run_study", started)


def _stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if not re.search(r" INFO |^\s*$", line)]


def test_a_local_study_prints_its_size_before_it_starts(tmp_path, capsys, monkeypatch):
    _started(monkeypatch, (1, 2, 3))
    result = run_cli_in_process([*STUDY, "--seeds", "3"], f"sqlite:///{tmp_path}/mlflow.db", capsys)
    assert _stderr_lines(result) == ["study: 24 steps (3 seeds × 8 steps)", "error: the study started; stop here"]


def test_a_study_of_1000_steps_starts_unasked_and_one_more_seed_needs_yes(tmp_path, capsys, monkeypatch):
    _started(monkeypatch, tuple(range(1, 126)))
    result = run_cli_in_process([*STUDY, "--seeds", "125"], f"sqlite:///{tmp_path}/mlflow.db", capsys)
    assert _stderr_lines(result)[0] == "study: 1,000 steps (125 seeds × 8 steps)"
    assert "add --yes" in _refused(tmp_path / "refused", capsys, [*STUDY, "--seeds", "126"])
    _started(monkeypatch, tuple(range(1, 127)))
    result = run_cli_in_process([*STUDY, "--seeds", "126", "--yes"], f"sqlite:///{tmp_path}/mlflow.db", capsys)
    assert _stderr_lines(result) == ["study: 1,008 steps (126 seeds × 8 steps)", "error: the study started; stop here"]


@pytest.mark.parametrize("seeds, method", [((1,), "both"), ((1, 2, 5), "both"), ((3, 4), "naive"),
                                           ((7,), "geometric")])
def test_the_size_is_the_number_of_steps_the_cluster_backends_plan(seeds, method):
    from ofexp.pipeline.steps.options import FusionOptions, METHODS
    from ofexp.pipeline.engines.cluster_steps import plan_study
    from ofexp.pipeline.study.run import StudyConfig, planned_step_count

    methods = METHODS if method == "both" else (method,)
    cfg = StudyConfig(seeds=seeds, fusion=FusionOptions(methods=methods))
    assert planned_step_count(cfg) == len(plan_study(cfg)) == len(seeds) * (4 + 2 * len(methods))
    assert planned_step_count(StudyConfig(seeds=range(1, 10**15), fusion=FusionOptions(methods=methods))) \
        == (10**15 - 1) * (4 + 2 * len(methods))
