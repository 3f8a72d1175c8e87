"""`ofexp study --backend kubernetes`, on paper: the Jobs that `--dry-run` renders for a two-seed study.

No cluster and no tracking server: the dry run contacts neither. The rendered
Jobs are checked for their structure, the `ofexp` command each carries (parsed
by the real CLI), the tracking env, and the chaining: each fuse step takes its
two train steps' run IDs, each evaluate step its model's, always from steps
that come earlier. test_engines.py runs the driver for real, on MLflow Projects' local
backend against a real server, and compares its study with the local engine's.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import re
import shlex
from pathlib import Path

import click
import pytest
import yaml

from conftest import run_cli_in_process
from ofexp.cli import cli

REPO = Path(__file__).resolve().parents[3]
TEMPLATE = REPO / "mlflow_projects" / "cluster_steps" / "kubernetes_job_template.yaml"
POD_URI = "http://tracking.example:5000"
BACKEND = {"kube-context": "test", "repository-uri": "registry.example/ofexp-study",
           "kube-job-template-path": str(TEMPLATE)}
STUDY = ["study", "--model", "mlp", "--width", "0.25", "--epochs", "1", "--seeds", "2"]
PLACEHOLDER = re.compile(r"RUN_ID_OF_([a-z0-9-]+)")


def dry_run(capsys, *extra: str, backend: dict = BACKEND):
    args = [*STUDY, "--backend", "kubernetes", "--backend-config", json.dumps(backend), "--dry-run", *extra]
    return run_cli_in_process(args, POD_URI, capsys)


@pytest.fixture
def jobs(capsys) -> list[dict]:
    result = dry_run(capsys)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _container(job: dict) -> dict:
    return job["spec"]["template"]["spec"]["containers"][0]


def _ofexp_options(job: dict) -> tuple[str, dict]:
    """(ofexp command, its parsed options) of a job's container command, parsed by the real CLI."""
    command = _container(job)["command"]
    assert command[:3] == ["python", "-m", "ofexp"], command
    name = command[3]
    # as `ofexp` parses it: the group's context reads `--activation_samples` as `--activation-samples`
    group = click.Context(cli, info_name="ofexp", **cli.context_settings)
    return name, cli.get_command(None, name).make_context(name, command[4:], parent=group).params


def _step(job: dict) -> str:
    return job["metadata"]["labels"]["ofexp/step"]


def test_dry_run_renders_one_job_per_step(jobs):
    names = [_ofexp_options(job)[0] for job in jobs]
    # Per seed: two parents, a naive and a geometric fusion, four evaluations.
    assert sorted(names) == sorted(["train"] * 4 + ["fuse"] * 4 + ["evaluate"] * 8)
    template = yaml.safe_load(TEMPLATE.read_text())
    for job in jobs:
        assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
        assert job["metadata"]["namespace"] == template["metadata"]["namespace"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"]), job["metadata"]["name"]
        assert len(job["metadata"]["name"]) <= 63
        container = _container(job)
        assert container["name"] == "ofexp-cluster-steps"
        assert container["image"].startswith("registry.example/ofexp-study")
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["MLFLOW_TRACKING_URI"] == POD_URI
        assert {"MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "OMP_NUM_THREADS"} <= set(env), "template env kept, MLflow's added"
        assert container["resources"] == template["spec"]["template"]["spec"]["containers"][0]["resources"]
        assert job["spec"]["template"]["metadata"]["labels"]["ofexp/step"] == _step(job)
    assert len({job["metadata"]["name"] for job in jobs}) == len(jobs)


def test_train_jobs_carry_the_study_options_and_parent_seeds(jobs):
    trains = [_ofexp_options(job)[1] for job in jobs if _ofexp_options(job)[0] == "train"]
    assert sorted(p["seed"] for p in trains) == [101, 102, 201, 202]  # 100·s + i
    for params in trains:
        assert (params["model"], params["width"], params["epochs"], params["dataset"]) == ("mlp", 0.25, 1, "digits")
        assert params["recipe"] == "default" and params["bias_value"] is False and params["log_model_value"] is True
        assert params["tf32_value"] is False and params["channels_last_value"] is False


def test_train_jobs_carry_the_speed_flags(capsys):
    """A cluster is where the GPUs are: --tf32 and --channels-last must reach the train jobs."""
    result = dry_run(capsys, "--tf32", "--channels-last")
    assert result.returncode == 0, result.stderr
    trains = [_ofexp_options(doc)[1] for doc in yaml.safe_load_all(result.stdout)
              if doc and _ofexp_options(doc)[0] == "train"]
    assert len(trains) == 4
    for params in trains:
        assert (params["tf32_value"], params["channels_last_value"], params["compile_value"]) == (True, True, False)


def test_fuse_and_evaluate_jobs_take_earlier_steps_run_ids(jobs):
    order = {_step(job): i for i, job in enumerate(jobs)}
    entry = {_step(job): _ofexp_options(job)[0] for job in jobs}
    fuse_methods = set()
    for i, job in enumerate(jobs):
        name, params = _ofexp_options(job)
        step = _step(job)
        seed = re.search(r"seed(\d)", step).group(1)
        if name == "fuse":
            parents = PLACEHOLDER.findall(params["parents"])
            assert parents == [f"train-seed{seed}-parent1", f"train-seed{seed}-parent2"], params["parents"]
            fuse_methods.add((seed, params["method"]))
        elif name == "evaluate":
            (model,) = PLACEHOLDER.findall(params["model_run"])
            kind = params["label"].removesuffix(f"_seed{seed}")
            expected = {"parent_1": f"train-seed{seed}-parent1", "parent_2": f"train-seed{seed}-parent2",
                        "naive_fused": f"fuse-seed{seed}-naive", "geometric_fused": f"fuse-seed{seed}-geometric"}
            assert model == expected[kind], (params["label"], model)
            assert entry[model] == ("train" if kind.startswith("parent") else "fuse")
        else:
            assert not PLACEHOLDER.findall(" ".join(_container(job)["command"])), "train needs no other step"
        for needed in PLACEHOLDER.findall(" ".join(_container(job)["command"])):
            assert order[needed] < i, f"{step} needs {needed}, which comes later"
    assert fuse_methods == {(s, m) for s in "12" for m in ("naive", "geometric")}


def _mlflow_job_definition():
    """MLflow's own `_get_kubernetes_job_definition`, taken from its source.

    Importing mlflow.projects.kubernetes needs the kubernetes and docker
    packages, which only a submitting machine has; the two functions that fill
    the template need neither.
    """
    import datetime
    import logging
    import os

    import mlflow.projects

    source = (Path(mlflow.projects.__file__).parent / "kubernetes.py").read_text()
    wanted = {"_get_kubernetes_job_definition", "_get_run_command"}
    tree = ast.Module([n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name in wanted], [])
    namespace = {"os": os, "datetime": datetime.datetime, "quote": shlex.quote, "split": shlex.split,
                 "_logger": logging.getLogger("mlflow-kubernetes-source")}
    exec(compile(tree, "mlflow/projects/kubernetes.py", "exec"), namespace)
    return namespace["_get_kubernetes_job_definition"], namespace["_get_run_command"]


def test_job_is_filled_in_as_mlflow_fills_it(jobs, monkeypatch):
    from ofexp.pipeline.engines.kubernetes import job_definition

    monkeypatch.delenv("KUBE_MLFLOW_TRACKING_URI", raising=False)
    mlflow_definition, mlflow_run_command = _mlflow_job_definition()
    template = yaml.safe_load(TEMPLATE.read_text())
    command = "python -m ofexp evaluate --model-run abc --label 'a b'"
    env = {"MLFLOW_RUN_ID": "r1", "MLFLOW_TRACKING_URI": POD_URI, "MLFLOW_EXPERIMENT_ID": "7"}
    theirs = mlflow_definition("ofexp-cluster-steps", "img:1", "sha256:d", mlflow_run_command([command]), dict(env),
                               yaml.safe_load(TEMPLATE.read_text()))
    ours = job_definition(template, project_name="ofexp-cluster-steps", image="img:1@sha256:d", command=command,
                          env=env, job_name=theirs["metadata"]["name"])
    assert ours == theirs


@pytest.mark.parametrize("backend,uri,message", [
    ({"repository-uri": "r"}, POD_URI, "lacks kube-job-template-path"),
    ({**BACKEND, "kube-job-template-path": "no/such.yaml"}, POD_URI, "is not a file"),
    (BACKEND, "sqlite:///mlflow.db", "pods cannot reach the tracking store"),
])
def test_bad_cluster_setup_is_one_line_error(capsys, backend, uri, message):
    args = [*STUDY, "--backend", "kubernetes", "--backend-config", json.dumps(backend), "--dry-run"]
    result = run_cli_in_process(args, uri, capsys)
    assert result.returncode != 0 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_dry_run_without_a_cluster_backend_is_refused(capsys):
    result = run_cli_in_process([*STUDY, "--dry-run"], POD_URI, capsys)
    assert result.returncode != 0 and "add --backend slurm or kubernetes" in result.stderr


@pytest.mark.skipif(all(importlib.util.find_spec(name) for name in ("kubernetes", "docker")),
                    reason="MLflow's Kubernetes client is installed here: the study would be submitted")
def test_submitting_without_the_kubernetes_client_says_what_to_install(capsys):
    args = [*STUDY, "--backend", "kubernetes", "--backend-config", json.dumps(BACKEND)]
    result = run_cli_in_process(args, POD_URI, capsys)
    assert result.returncode != 0 and result.stdout == ""
    missing = [name for name in ("kubernetes", "docker") if importlib.util.find_spec(name) is None]
    assert f"pip install {' '.join(missing)}" in result.stderr and "Traceback" not in result.stderr


def test_backend_config_may_be_a_file(capsys, tmp_path):
    config = tmp_path / "backend.json"
    config.write_text(json.dumps(BACKEND))
    args = [*STUDY, "--backend", "kubernetes", "--backend-config", str(config), "--dry-run"]
    result = run_cli_in_process(args, POD_URI, capsys)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("kind: Job") == 16


def test_a_fine_tuning_study_renders_ensemble_and_finetune_jobs_the_cli_reads(capsys):
    result = dry_run(capsys, "--finetune-epochs", "2")
    assert result.returncode == 0, result.stderr
    jobs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    by_step = {_step(job): _ofexp_options(job) for job in jobs}
    assert len(jobs) == 28  # per seed: 7 models, 7 evaluations
    name, params = by_step["finetune-seed2-geometric"]
    assert name == "train" and PLACEHOLDER.findall(params["init_from"]) == ["fuse-seed2-geometric"]
    assert (params["epochs"], params["seed"], params["warmup_epochs"]) == (2, 200, 0.0)
    name, params = by_step["ensemble-seed1"]
    assert name == "ensemble" and PLACEHOLDER.findall(params["parents"]) == ["train-seed1-parent1", "train-seed1-parent2"]


def test_a_width_studys_jobs_train_each_width_and_chain_runs_of_the_same_width(capsys):
    args = ["study", "--model", "mlp", "--widths", "0.25,0.5", "--epochs", "1", "--seeds", "1", "--method", "naive",
            "--backend", "kubernetes", "--backend-config", json.dumps(BACKEND), "--dry-run"]
    result = run_cli_in_process(args, POD_URI, capsys)
    assert result.returncode == 0, result.stderr
    jobs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    steps = [_step(job) for job in jobs]
    assert len(jobs) == 12 and len(set(steps)) == 12, "6 steps per width, one Job each"
    chained = 0
    for job in jobs:
        step, (name, options) = _step(job), _ofexp_options(job)
        width = step.rsplit("-w", 1)[1].replace("p", ".")
        if name == "train":
            assert options["width"] == float(width), step
        for needed in PLACEHOLDER.findall(" ".join(_container(job)["command"])):
            assert needed.endswith(f"-w{width.replace('.', 'p')}"), (step, needed)
            chained += 1
    assert chained == 2 * 2 + 2 * 3, "per width: the fuse job takes 2 parents, each evaluate job 1 model"
