"""A study through a real Slurm cluster against a real `mlflow server` (.ci/install-slurm.sh starts one).

A job cancelled mid-study fails its step with the job named and is finished by a rerun,
and a stopped driver cancels its jobs, checked by Slurm's own record of the jobs. That a
Slurm study equals the local one, kind for kind and value for value: test_engines.py.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import run_cli

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
TINY = ["--model", "mlp", "--width", "0.25", "--epochs", "1", "--no-log-model"]


def _backend_config(tmp_path: Path) -> str:
    path = tmp_path / "slurm.json"
    path.write_text(json.dumps({"time": 20, "cpus_per_task": 1, "log_dir": str(tmp_path / "slurm-logs")}))
    return str(path)


def _study(server, tmp_path: Path, experiment: str, *extra: str, seeds: str = "2"):
    return run_cli(["study", *TINY, "--seeds", seeds, "--experiment-name", experiment, *extra],
                   tracking_uri=server.uri, cwd=tmp_path)


def _steps(client: MlflowClient, study_id: str, tmp_path: Path) -> pd.DataFrame:
    return pd.read_csv(client.download_artifacts(study_id, "steps.csv", str(tmp_path / uuid.uuid4().hex)))


def _sacct_states(job_ids: list[str]) -> dict[str, str]:
    """Slurm's own record of the jobs: `sacct`, or `sacct -c` (the job-completion log) without accounting."""
    args = [a for j in job_ids for a in ("-j", j)]
    for extra in ([], ["-c"]):
        out = subprocess.run(["sacct", *extra, "-n", "-X", "-P", "-o", "JobID,State", *args],
                             capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            return dict(line.split("|")[:2] for line in out.stdout.strip().splitlines())
    return {}


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _job_of_running_train(client: MlflowClient, experiment: str) -> tuple[str, str] | None:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    for run in client.search_runs([exp.experiment_id], "tags.`ofexp.stage` = 'train'"):
        job = run.data.tags.get("ofexp.slurm_job_id")
        state = subprocess.run(["squeue", "-h", "-j", job or "0", "-o", "%T"], capture_output=True, text=True).stdout
        if job and state.strip() == "RUNNING":
            return run.info.run_id, job
    return None


def _start_study(server, tmp_path: Path, experiment: str) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_RUN_ID", None)
    return subprocess.Popen([str(BIN / "ofexp"), "study", *TINY, "--seeds", "1", "--experiment-name", experiment,
                             "--backend", "slurm", "--backend-config", _backend_config(tmp_path)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_cancelled_job_fails_its_step_by_name_and_a_rerun_finishes_the_study(slurm_cluster, mlflow_server, tmp_path):
    client = MlflowClient(mlflow_server.uri)
    experiment = f"slurm-cancel-{uuid.uuid4().hex[:8]}"
    driver = _start_study(mlflow_server, tmp_path, experiment)
    run_id, job = _wait_for(lambda: _job_of_running_train(client, experiment), 120, "a running train job")
    subprocess.run(["scancel", job], check=True)
    out, err = driver.communicate(timeout=300)
    assert driver.returncode != 0, out
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert f"(run {run_id}) failed: Slurm job {job} ended CANCELLED (log: " in lines[0]
    assert "rerun the same study to finish it" in lines[0]

    failed = client.get_run(run_id)
    assert failed.info.status == "FAILED"
    assert f"Slurm job {job} ended CANCELLED" in failed.data.tags["ofexp.failure_reason"]
    exp = client.get_experiment_by_name(experiment)
    finished_before = {r.info.run_id for r in client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'")
                       if r.data.tags.get("ofexp.stage") != "study"}
    assert finished_before, "the other parent's job should have finished"

    rerun = _study(mlflow_server, tmp_path, experiment, "--backend", "slurm",
                   "--backend-config", _backend_config(tmp_path), seeds="1")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    steps = _steps(client, rerun.last_line, tmp_path)
    assert set(steps.loc[steps["reused"], "run_id"]) == finished_before, "every finished step is reused"
    assert len(steps) == 8 and run_id not in set(steps["run_id"])


def _train_jobs(client: MlflowClient, experiment: str) -> list[str] | None:
    """The Slurm job IDs of a 1-seed study's two train runs, once both are submitted."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.`ofexp.stage` = 'train'") if exp else []
    jobs = [r.data.tags.get("ofexp.slurm_job_id") for r in runs]
    return jobs if len(jobs) == 2 and all(jobs) else None


def _assert_cancelled_and_gone(jobs: list[str]) -> None:
    """Slurm recorded every job CANCELLED, and each leaves the queue (a cancelled job is listed
    as COMPLETING for a moment while its node tears it down)."""
    def gone():
        queue = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
        return not set(jobs) & set(queue)

    _wait_for(gone, 30, f"jobs {jobs} to leave the queue")
    states = _wait_for(lambda: (lambda st: st if set(st) == set(jobs) else None)(_sacct_states(jobs)), 30,
                       f"Slurm's record of jobs {jobs}")
    assert all(state.startswith("CANCELLED") for state in states.values()), states  # "CANCELLED by <uid>" with accounting


def test_stopping_the_driver_cancels_the_studys_jobs(slurm_cluster, mlflow_server, tmp_path):
    client = MlflowClient(mlflow_server.uri)
    experiment = f"slurm-stop-{uuid.uuid4().hex[:8]}"
    driver = _start_study(mlflow_server, tmp_path, experiment)

    jobs = _wait_for(lambda: _train_jobs(client, experiment), 120, "both train jobs submitted")
    driver.send_signal(signal.SIGTERM)
    driver.communicate(timeout=120)
    assert driver.returncode != 0
    _assert_cancelled_and_gone(jobs)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"], "no run is left RUNNING"


@pytest.mark.parametrize("presses,gap_s", [(2, 0.3), (5, 0.1)], ids=["twice 0.3 s apart", "five times 0.1 s apart"])
def test_ctrl_c_again_still_cancels_every_job_and_marks_every_run(slurm_cluster, mlflow_server, tmp_path,
                                                                  presses, gap_s):
    # issue #27 item 5: the second Ctrl-C, 0.3 s after the first, abandoned the first one's cleanup:
    # a job went on in Slurm and two train runs stayed RUNNING. A later stop now waits for it, and
    # one during the interpreter's shutdown no longer prints a traceback.
    client = MlflowClient(mlflow_server.uri)
    experiment = f"slurm-twice-{uuid.uuid4().hex[:8]}"
    driver = _start_study(mlflow_server, tmp_path, experiment)

    jobs = _wait_for(lambda: _train_jobs(client, experiment), 120, "both train jobs submitted")
    for press in range(presses):
        if press:
            time.sleep(gap_s)
        driver.send_signal(signal.SIGINT)
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == 130, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    _assert_cancelled_and_gone(jobs)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"], "no run is left RUNNING"
    assert {r.info.status for r in runs if r.data.tags.get("ofexp.stage") == "train"} == {"KILLED"}
