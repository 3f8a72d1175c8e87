"""`ofexp --version` and `ofexp --help` import no command: no torch, MLflow, pandas or scipy.

A property of what is imported, not a timing (the timings are in bench/bench_startup.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from ofexp.cli import COMMANDS, cli

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "mlflow", "pandas", "scipy", "sklearn", "ot", "torchvision")

_PROBE = """
import json, sys
from ofexp.cli import main
code = 0  # main returns when the command ends normally
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def _modules_after(*argv: str, cwd: Path | None = None, env: dict | None = None) -> tuple[int, set[str], str]:
    """Run `ofexp ARGV` in a fresh interpreter; its exit code, the modules it had imported, its stdout."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, env=env,
                          timeout=300, cwd=cwd)
    probe = json.loads(done.stderr.strip().splitlines()[-1])
    return probe["code"], set(probe["modules"]), done.stdout


@pytest.mark.parametrize("argv", [("--version",), ("--help",), ()])
def test_version_and_help_import_no_heavy_library(argv):
    code, modules, stdout = _modules_after(*argv)
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == [], f"`ofexp {' '.join(argv)}` imported {heavy[:10]}"
    assert code == (0 if argv else 2)  # a bare `ofexp` shows the help with click's usage status


def test_bare_ofexp_shows_the_help_as_help_not_as_an_error_line():
    code, _, stdout = _modules_after("--help")
    done = subprocess.run([sys.executable, "-m", "ofexp"], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2  # click's usage status: no command was given
    assert done.stderr == stdout and "error:" not in done.stderr
    assert all(f"\n  {name} " in stdout for name in COMMANDS)


def test_package_modules_import_no_heavy_library():
    code = ("import sys, ofexp, ofexp.errors, ofexp.signals, ofexp.cli; "
            f"print([m for m in sys.modules if m.split('.')[0] in {HEAVY!r}])")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "[]"


def test_a_command_imports_its_module_when_it_runs():
    code, modules, stdout = _modules_after("runs", "--help")
    assert code == 0 and "--stale" in stdout  # the command's own options: it was loaded
    assert "ofexp.cli.commands" in modules
    assert "ofexp.cli.report_commands" not in modules  # another command's module stays out


def test_each_commands_listed_help_is_its_docstrings_first_paragraph():
    for name, (where, listed) in COMMANDS.items():
        command = cli.get_command(None, name)
        assert isinstance(command, click.Command), f"{name}: {where} is not a click command"
        assert command.name == name
        first_paragraph = " ".join(command.help.partition("\n\n")[0].split())
        assert listed == first_paragraph, f"COMMANDS[{name!r}]'s help differs from the command's docstring"


def test_help_lists_the_same_lines_before_and_after_the_commands_are_loaded():
    lazy = cli.__class__(name="ofexp", lazy=COMMANDS)
    loaded = click.Group(name="ofexp", commands=[cli.get_command(None, name) for name in COMMANDS])
    assert lazy.get_help(click.Context(lazy)) == loaded.get_help(click.Context(loaded))


@pytest.fixture(scope="module")
def digits_train_step(tmp_path_factory) -> set[str]:
    """The modules a real `ofexp train` digits step (1 epoch, no MLflow model) had imported when it ended."""
    folder = tmp_path_factory.mktemp("train-step")
    code, modules, stdout = _modules_after("train", "--epochs", "1", "--no-log-model", cwd=folder,
                                           env={"MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db"})
    assert code == 0 and len(stdout.split()[-1]) == 32  # it trained and printed its run ID
    assert "torch" in modules and "mlflow" in modules
    return modules


def test_a_digits_train_step_imports_no_torchvision_and_no_pot(digits_train_step):
    """What a cluster step pays before its work: torchvision (with torch._dynamo, about 1 s) only
    for the data sets and models that use it, POT (optimal transport, over 1 s with the
    scikit-learn it pulls in) only for a fusion."""
    assert not any(m.split(".")[0] in ("torchvision", "ot") for m in digits_train_step)


def test_a_digits_train_step_imports_no_matplotlib(digits_train_step):
    """matplotlib (about 0.3 s) is imported where a fuse run or a study draws a figure, not by every
    step process."""
    plotting = sorted(m for m in digits_train_step if m.split(".")[0] == "matplotlib")
    assert plotting == [], f"a train step that draws nothing imported {plotting[:10]}"


def test_the_step_commands_import_no_plotting_and_no_statistics():
    """What a train, fuse or evaluate step process imports before its work: its command's module and
    what that imports. No matplotlib, scipy.stats (a study's correlations) nor scipy.linalg (the
    Hessian measures): each is imported where it is used. (A digits step still loads scipy.stats
    with scikit-learn, which reads digits and imports it itself: that is its data's cost.)"""
    code = ("import json, sys; from ofexp.cli import cli; "
            "loaded = [cli.get_command(None, name).name for name in ('train', 'fuse', 'evaluate')]; "
            "print(json.dumps([loaded, sorted(sys.modules)]))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    loaded, modules = json.loads(done.stdout)
    assert loaded == ["train", "fuse", "evaluate"] and "torch" in modules and "mlflow" in modules
    unused = [m for m in modules if m.split(".")[0] == "matplotlib" or m.startswith(("scipy.stats", "scipy.linalg"))]
    assert unused == [], f"the step commands imported {unused[:10]}"
