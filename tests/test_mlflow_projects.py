"""The MLflow projects under mlflow_projects/, loaded with MLflow's own project loader.

- every project's entry points pass each parameter to the `ofexp` option of the
  same name ('_' for '-'; flags through their hidden `--NAME-value BOOL` form),
  and the command MLflow renders from the defaults parses as that ofexp command;
- the four report projects carry the report's settings (one table below);
- with the data absent and offline, a report project's command fails with the
  one-line CIFAR error that says where to put the data.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
from mlflow.projects._project_spec import load_project

from ofexp.cli import cli
from ofexp.cli.options import pop_flag

REPO = Path(__file__).resolve().parents[1]
PROJECTS = REPO / "mlflow_projects"

# The report's configurations (docs/design.md §1, §3): architecture and data set per project ...
REPORT_PROJECTS = {
    "vgg11_cifar10": ("vgg11", "cifar10"),
    "vgg11_cifar100": ("vgg11", "cifar100"),
    "resnet18_cifar10": ("resnet18", "cifar10"),
    "resnet18_cifar100": ("resnet18", "cifar100"),
}
# ... and the settings they share: the report recipe, 30 epochs, 5 seeds, full width,
# no bias, no batch-norm, every measure.
REPORT_SETTINGS = {"recipe": "report", "epochs": 30, "seeds": "5", "width": 1.0, "bias": False,
                   "batchnorm": False, "measures": "all"}

# project folder -> {entry point: ofexp command}
ENTRY_POINTS = {
    **{name: {"main": "study"} for name in REPORT_PROJECTS},
    "digits_quickstart": {"main": "study"},
    "fashion_mnist": {"main": "study"},
    "cluster_steps": {"train": "train", "fuse": "fuse", "evaluate": "evaluate"},
}


def _entry(project: str, entry_point: str):
    return load_project(str(PROJECTS / project)).get_entry_point(entry_point)


# Values for the parameters a project requires (the Kubernetes project's, which the study driver fills).
REQUIRED_VALUES = {"parents": "RUN1,RUN2", "model_run": "RUN1", "label": "parent_1_seed1", "data_dir": "./data",
                   "epochs": "2", "batch_size": "64", "lr": "0.1", "weight_decay": "0.0005", "init": "kaiming", "warmup_epochs": "1",
                   "grad_clip": "1.0", "fusion_weights": "0.5,0.5"}


def _rendered_args(project: str, entry_point: str, **params: str) -> list[str]:
    """The command MLflow runs for these parameters (defaults for the rest), as argv."""
    entry = _entry(project, entry_point)
    required = {name: REQUIRED_VALUES[name] for name, p in entry.parameters.items() if p.default is None}
    return shlex.split(entry.compute_command({**required, **params}, storage_dir="/tmp"))


def _parse(command_name: str, args: list[str]) -> dict:
    # as `ofexp` parses it: the group's context reads `fashion-mnist` as the choice `fashion_mnist`
    group = click.Context(cli, info_name="ofexp", **cli.context_settings)
    command = cli.get_command(None, command_name)
    return command.make_context(command_name, list(args), parent=group, resilient_parsing=False).params


def test_every_project_folder_is_listed():
    found = {p.parent.name for p in PROJECTS.glob("*/MLproject")}
    assert found == set(ENTRY_POINTS), f"untested or missing projects: {found ^ set(ENTRY_POINTS)}"


@pytest.mark.parametrize("project,entry_point,command_name", [
    (project, entry, command) for project, entries in sorted(ENTRY_POINTS.items())
    for entry, command in sorted(entries.items())
])
def test_parameters_are_the_cli_options(project, entry_point, command_name):
    entry = _entry(project, entry_point)
    command = cli.get_command(None, command_name)
    options = {opt: p for p in command.params if isinstance(p, click.Option) for opt in (*p.opts, *p.secondary_opts)}
    assert entry.command.split()[:4] == ["python", "-m", "ofexp", command_name], entry.command

    used = re.findall(r"\{(\w+)\}", entry.command)
    assert sorted(used) == sorted(set(used)), f"a parameter is used twice in {entry.command!r}"
    assert set(used) == set(entry.parameters), f"declared but unused, or used but undeclared: {set(used) ^ set(entry.parameters)}"
    for name in entry.parameters:
        option = "--" + name.replace("_", "-")
        assert option in options, f"{project}:{entry_point}: {name!r} is not an option of `ofexp {command_name}`"
        passed = re.findall(r"(\S+)\s+\{%s\}" % name, entry.command)
        expected = f"{option}-value" if options[option].is_flag else option
        assert passed == [expected], f"{project}:{entry_point}: {name} is passed as {passed}, not {expected}"

    # The command rendered from the defaults is a valid `ofexp COMMAND` call.
    args = _rendered_args(project, entry_point)
    _parse(command_name, args[4:])


@pytest.mark.parametrize("project", sorted(REPORT_PROJECTS))
def test_report_projects_carry_the_report_settings(project):
    model, dataset = REPORT_PROJECTS[project]
    args = _rendered_args(project, "main")
    params = _parse("study", args[4:])
    resolved = {"model": params["model"], "dataset": params["dataset"], "recipe": params["recipe"],
                "epochs": params["epochs"], "seeds": params["seeds"], "width": params["width"],
                "measures": params["measures"],
                "bias": pop_flag(dict(params), "bias"), "batchnorm": pop_flag(dict(params), "batchnorm")}
    assert resolved == {"model": model, "dataset": dataset, **REPORT_SETTINGS}
    # MLflow runs the command in the project's folder: the default data_dir is the repo's data/.
    data_dir = params["data_dir"]
    assert (PROJECTS / project / data_dir).resolve() == REPO / "data"


@pytest.mark.parametrize("project", sorted(REPORT_PROJECTS))
def test_report_project_env_installs_ofexp_from_the_repo(project):
    import yaml

    env_file = Path(load_project(str(PROJECTS / project)).env_config_path)
    pip_lines = next(dep["pip"] for dep in yaml.safe_load(env_file.read_text())["dependencies"] if isinstance(dep, dict))
    (local,) = [line.split(None, 1)[1] for line in pip_lines if line.startswith("-e ")]
    assert (env_file.parent / local).resolve() == REPO


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('projects') / 'mlflow.db'}"


@pytest.mark.parametrize("project", sorted(REPORT_PROJECTS))
def test_report_project_without_data_offline_fails_with_one_line(project, tmp_path, sqlite_uri, capsys):
    from conftest import run_cli_in_process

    _, dataset = REPORT_PROJECTS[project]
    folder = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[dataset]
    args = _rendered_args(project, "main", data_dir=str(tmp_path), download="false")
    result = run_cli_in_process(args[3:], sqlite_uri, capsys)
    assert result.returncode != 0
    # (MLflow's own INFO lines about creating the SQLite store may come first.)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(tmp_path / folder) in lines[0] and "--data-dir" in lines[0], lines[0]
    assert result.stdout == ""


def test_fashion_mnist_project_runs_the_benchmark_configuration():
    params = _parse("study", _rendered_args("fashion_mnist", "main")[4:])
    assert (params["dataset"], params["model"], params["width"], params["seeds"], params["measures"]) == (
        "fashion_mnist", "vgg11", 0.25, "5", "all")
    assert not pop_flag(dict(params), "bias") and not pop_flag(dict(params), "batchnorm")
    resnet = _parse("study", _rendered_args("fashion_mnist", "main", model="resnet18", width="0.125",
                                            batchnorm="true")[4:])
    assert (resnet["model"], resnet["width"], pop_flag(dict(resnet), "batchnorm")) == ("resnet18", 0.125, True)
