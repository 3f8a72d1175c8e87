"""Fast checks that the packaging files agree with each other and with the CLI.

- pyproject.toml and conda.yaml pin the same dependencies (torch/torchvision exactly);
- every MLproject entry point passes each parameter to the `ofexp` option of the
  same name ('_' for '-'), flags through their hidden `--NAME-value BOOL` form.
"""
from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
import yaml
from mlflow.projects._project_spec import load_project
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from ofexp.cli import cli
from ofexp.cli.options import _FLAG_DEFAULTS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "mlflow_projects" / "digits_quickstart"

# MLproject entry point -> the ofexp command it runs.
ENTRY_POINTS = {"train": "train", "fuse": "fuse", "evaluate": "evaluate", "main": "study"}
EXACT_PINS = {"torch": "==2.14.1", "torchvision": "==0.29.1"}


# --------------------------------------------------------------------------- dependencies

def _requirements(lines: list[str]) -> dict[str, Requirement]:
    reqs: dict[str, Requirement] = {}
    for line in lines:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name not in reqs, f"{name} is listed twice"
        reqs[name] = req
    return reqs


def _pyproject_requirements() -> dict[str, Requirement]:
    with open(REPO / "pyproject.toml", "rb") as f:
        return _requirements(tomllib.load(f)["project"]["dependencies"])


def _conda(path: Path) -> tuple[list[str], list[str]]:
    """(conda-level dependencies, pip lines) of a conda environment file."""
    spec = yaml.safe_load(path.read_text())
    conda_deps, pip_lines = [], []
    for dep in spec["dependencies"]:
        if isinstance(dep, dict):
            pip_lines += [str(line).strip() for line in dep.get("pip", [])]
        else:
            conda_deps.append(str(dep).strip())
    return conda_deps, pip_lines


def _conda_requirements() -> dict[str, Requirement]:
    _, pip_lines = _conda(REPO / "conda.yaml")
    return _requirements([line for line in pip_lines if not line.startswith("-e")])


def test_conda_yaml_has_only_python_and_pip_outside_the_pip_section():
    conda_deps, pip_lines = _conda(REPO / "conda.yaml")
    names = [re.split(r"[=<>! ]", dep, maxsplit=1)[0] for dep in conda_deps]
    assert sorted(names) == ["pip", "python"], f"conda-level dependencies not checked against pyproject: {conda_deps}"
    assert "-e ." in pip_lines, "conda.yaml must install ofexp itself (-e .)"


def test_conda_python_satisfies_requires_python():
    with open(REPO / "pyproject.toml", "rb") as f:
        requires = SpecifierSet(tomllib.load(f)["project"]["requires-python"])
    conda_deps, _ = _conda(REPO / "conda.yaml")
    python = next(dep for dep in conda_deps if dep.startswith("python"))
    version = python.split("=")[-1]
    assert version in requires, f"conda.yaml {python} is outside requires-python {requires}"


def test_pyproject_and_conda_dependencies_agree():
    pyproject = {name: str(req.specifier) for name, req in _pyproject_requirements().items()}
    conda = {name: str(req.specifier) for name, req in _conda_requirements().items()}
    assert set(pyproject) == set(conda), (
        f"only in pyproject.toml: {sorted(set(pyproject) - set(conda))}; "
        f"only in conda.yaml: {sorted(set(conda) - set(pyproject))}"
    )
    differ = {name: (pyproject[name], conda[name]) for name in pyproject if pyproject[name] != conda[name]}
    assert not differ, f"specifiers differ (pyproject, conda): {differ}"


@pytest.mark.parametrize("source", ["pyproject.toml", "conda.yaml"])
@pytest.mark.parametrize("name,pin", sorted(EXACT_PINS.items()))
def test_torch_is_pinned_exactly(source, name, pin):
    reqs = _pyproject_requirements() if source == "pyproject.toml" else _conda_requirements()
    assert name in reqs, f"{name} missing from {source}"
    assert str(reqs[name].specifier) == pin, f"{source}: {reqs[name]} is not pinned to {name}{pin}"


# --------------------------------------------------------------------------- MLproject vs CLI

def _options(command: click.Command) -> dict[str, click.Option]:
    return {opt: param for param in command.params if isinstance(param, click.Option)
            for opt in (*param.opts, *param.secondary_opts)}


def _check_entry_point(project_dir: Path, entry_point: str, command_name: str,
                       own_defaults: tuple[str, ...] = ()) -> None:
    """Every `{param}` is declared and passed to the ofexp option of its own name.

    The MLproject defaults must be valid values of the options and, except for
    the parameters in `own_defaults`, mean the same as the CLI's defaults.
    """
    spec = load_project(str(project_dir)).get_entry_point(entry_point)
    command = cli.get_command(None, command_name)
    options = _options(command)
    assert spec.command.split()[:4] == ["python", "-m", "ofexp", command_name], spec.command

    used = re.findall(r"\{(\w+)\}", spec.command)
    assert len(used) == len(set(used)), f"{entry_point}: a parameter is used twice in {spec.command!r}"
    assert set(used) <= set(spec.parameters), f"{entry_point}: undeclared {sorted(set(used) - set(spec.parameters))}"
    assert set(spec.parameters) <= set(used), f"{entry_point}: unused {sorted(set(spec.parameters) - set(used))}"

    ctx = click.Context(command)
    for name, param in spec.parameters.items():
        option = "--" + name.replace("_", "-")
        assert option in options, f"{entry_point}: parameter {name!r} is not an option of `ofexp {command_name}`"
        passed = re.findall(r"(\S+)\s+\{%s\}" % name, spec.command)
        if options[option].is_flag:
            # An MLproject cannot pass a bare flag: it must use the hidden value form.
            value_option = f"{option}-value"
            assert value_option in options and options[value_option].hidden, f"no hidden {value_option}"
            assert passed == [value_option], f"{entry_point}: {name} is passed as {passed}, not {value_option}"
            target = options[value_option]
            cli_default = _FLAG_DEFAULTS[options[option].name]
        else:
            assert passed == [option], f"{entry_point}: {name} is passed as {passed}, not {option}"
            target = options[option]
            cli_default = target.get_default(ctx)
        if param.default is None:  # required in the MLproject
            continue
        default = target.type.convert(str(param.default), target, ctx)
        if name not in own_defaults:
            assert default == cli_default, (
                f"{project_dir / 'MLproject'} {entry_point}: default {name}={param.default!r} differs from "
                f"`ofexp {command_name}` {option} default {cli_default!r}"
            )


@pytest.mark.parametrize("entry_point,command_name", sorted(ENTRY_POINTS.items()))
def test_mlproject_entry_points_pass_cli_options(entry_point, command_name):
    # under `mlflow run`, fuse makes one run: its method defaults to geometric, not both
    _check_entry_point(REPO, entry_point, command_name, own_defaults=("method",) if entry_point == "fuse" else ())


def test_mlproject_env_file_is_conda_yaml():
    project = load_project(str(REPO))
    assert Path(project.env_config_path) == REPO / "conda.yaml"


def test_quickstart_project_main_runs_the_study():
    _check_entry_point(QUICKSTART, "main", "study", own_defaults=("seeds",))
    quick = load_project(str(QUICKSTART)).get_entry_point("main")
    top = load_project(str(REPO)).get_entry_point("main")
    assert set(quick.parameters) == set(top.parameters), "quickstart params differ from the top-level main's"
    assert str(quick.parameters["model"].default) == "mlp"
    assert str(quick.parameters["seeds"].default) == "2"
    assert str(quick.parameters["dataset"].default) == "digits"


def test_quickstart_env_installs_ofexp_from_the_repo():
    project = load_project(str(QUICKSTART))
    env_file = Path(project.env_config_path)
    assert env_file.exists()
    _, pip_lines = _conda(env_file)
    local = [line.split(None, 1)[1] for line in pip_lines if line.startswith("-e ")]
    assert local, f"{env_file.name} does not install ofexp from the repo"
    assert (QUICKSTART / local[0]).resolve() == REPO


# --------------------------------------------------------------------------- MLproject vs the option definitions

def _also_listed(project_dir: Path, entry_point: str) -> set[str]:
    """The parameters the comment above an entry point lists after "also:" (passed only when given)."""
    lines = (project_dir / "MLproject").read_text().splitlines()
    end = lines.index(f"  {entry_point}:")
    start = end
    while start > 0 and lines[start - 1].strip().startswith("#"):
        start -= 1
    comment = " ".join(line.strip().lstrip("#").strip() for line in lines[start:end])
    if "also:" not in comment:
        return set()
    listed = re.sub(r"\([^)]*\)", "", comment.split("also:", 1)[1])
    return {name.strip() for name in listed.split(",") if name.strip()}


def _defined_options(*classes, exclude: tuple[str, ...] = ()) -> set[str]:
    from ofexp.options import option_fields, option_name

    return {option_name(f) for cls in classes for f in option_fields(cls) if f.name not in exclude}


def _entry_options():
    from ofexp.data import DataConfig
    from ofexp.pipeline.steps.options import EvaluateOptions, FusionOptions
    from ofexp.pipeline.study.run import EVALUATE_OPTIONS_THE_STUDY_SETS
    from ofexp.pipeline.steps.train import TrainConfig
    from ofexp.training import RecipeOptions, SpeedOptions

    train = (TrainConfig, DataConfig, RecipeOptions, SpeedOptions)
    return {"train": _defined_options(*train),
            "fuse": _defined_options(FusionOptions),
            "evaluate": _defined_options(EvaluateOptions),
            "main": _defined_options(*train, exclude=("seed",)) | _defined_options(FusionOptions)
            | _defined_options(EvaluateOptions, exclude=EVALUATE_OPTIONS_THE_STUDY_SETS)}


@pytest.mark.parametrize("entry_point", ["train", "fuse", "evaluate", "main"])
def test_mlproject_entry_points_declare_or_list_every_defined_option(entry_point):
    """The top-level MLproject is written by hand for people to read: each option defined as an
    `option()` field is declared there or named in its entry point's "also:" comment."""
    declared = set(load_project(str(REPO)).get_entry_point(entry_point).parameters)
    listed = _also_listed(REPO, entry_point)
    missing = _entry_options()[entry_point] - declared - listed
    assert not missing, f"MLproject {entry_point}: declare these or add them to its 'also:' comment: {sorted(missing)}"
    assert not (declared & listed), f"MLproject {entry_point}: declared and listed as 'also': {sorted(declared & listed)}"
