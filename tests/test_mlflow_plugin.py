"""ofexp's MLflow plugin answers only for `mlflow run` on an ofexp project (ofexp/mlflow_plugin.py)."""
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from ofexp.mlflow_plugin import OfexpProjectExperiment

REPO = Path(__file__).resolve().parents[1]


def _in_context(monkeypatch, argv: list[str]) -> bool:
    monkeypatch.setattr(sys, "argv", argv)
    return OfexpProjectExperiment().in_context()


def test_the_plugin_is_registered_where_mlflow_looks():
    # an editable install may list it twice (the venv's metadata and the checkout's egg-info)
    ours = [e for e in entry_points(group="mlflow.default_experiment_provider") if e.name == "ofexp"]
    assert ours and {e.load() for e in ours} == {OfexpProjectExperiment}


@pytest.mark.parametrize("args", [
    [str(REPO), "-e", "train"],
    ["-e", "fuse", "--env-manager", "local", str(REPO)],
    [str(REPO / "mlflow_projects" / "digits_quickstart")],
])
def test_mlflow_run_on_an_ofexp_project_is_answered(monkeypatch, args):
    assert _in_context(monkeypatch, ["/venv/bin/mlflow", "run", *args])


def test_other_projects_and_other_processes_keep_mlflows_default(monkeypatch, tmp_path):
    (tmp_path / "MLproject").write_text("name: someone-else\nentry_points:\n  main:\n    command: 'true'\n")
    assert not _in_context(monkeypatch, ["/venv/bin/mlflow", "run", str(tmp_path)])
    assert not _in_context(monkeypatch, ["/venv/bin/mlflow", "run", "https://github.com/x/ofexp"])
    assert not _in_context(monkeypatch, ["/venv/bin/mlflow", "run", str(REPO), "--backend", "kubernetes"])
    assert not _in_context(monkeypatch, ["/venv/bin/ofexp", "train"])
    assert not _in_context(monkeypatch, ["/venv/bin/mlflow", "server"])
