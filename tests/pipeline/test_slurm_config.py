"""`--backend slurm` without a cluster: the backend config, the job parameters, and --dry-run."""
from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from conftest import run_cli_in_process
from ofexp.cli import cli
from ofexp.errors import ConfigError
from ofexp.pipeline.slurm_jobs import SlurmConfig, sbatch_options
from ofexp.tracking.cluster_runs import step_digest


def test_backend_config_becomes_submitit_parameters():
    cfg = SlurmConfig.from_mapping({"partition": "gpu", "account": "lab", "time": 90, "cpus_per_task": 4,
                                    "mem": "16G", "gpus": 1, "sbatch": ["--qos=high", "#SBATCH --exclusive"],
                                    "setup": "module load cuda"})
    params = cfg.parameters("ofexp-train-seed1-parent1")
    assert params["partition"] == "gpu" and params["account"] == "lab" and params["mem"] == "16G"
    assert params["time"] == 90 and params["cpus_per_task"] == 4 and params["gres"] == "gpu:1"
    assert params["additional_parameters"] == {"qos": "high", "exclusive": True}
    assert params["setup"] == ["module load cuda"], "a single setup line may be given as a string"


@pytest.mark.parametrize("config, named", [
    ({"partiton": "gpu"}, "unknown key 'partiton'"),
    ({"time": 0}, "time must be a whole number of at least 1"),
    ({"gpus": -1}, "gpus must be a whole number of at least 0"),
    ({"sbatch": ["qos=high"]}, "sbatch line 'qos=high' is not a long sbatch option"),
    ({"setup": [3]}, "setup must be a list of strings"),
])
def test_a_bad_backend_config_is_refused_by_name(config, named):
    with pytest.raises(ConfigError, match=re.escape(named)):
        SlurmConfig.from_mapping(config)


def test_sbatch_lines_keep_their_values():
    assert sbatch_options(["--constraint=a100|h100", "--mail-type=END"]) == {"constraint": "a100|h100",
                                                                             "mail_type": "END"}


def test_dry_run_prints_each_jobs_script_and_command_with_run_id_placeholders(tmp_path):
    config = tmp_path / "slurm.json"
    config.write_text(json.dumps({"partition": "debug", "time": 15, "gpus": 1, "setup": ["source /shared/venv/bin/activate"],
                                  "log_dir": str(tmp_path / "logs")}))
    result = CliRunner().invoke(cli, ["study", "--backend", "slurm", "--backend-config", str(config), "--dry-run",
                                      "--seeds", "1", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith("# 8 Slurm jobs, submitted in 3 waves; dry run, nothing submitted.")
    scripts = out.split("# step ")[1:]
    assert len(scripts) == 8
    for script in scripts:
        assert "#SBATCH --partition=debug" in script and "#SBATCH --time=15" in script
        assert "#SBATCH --gres=gpu:1" in script and "source /shared/venv/bin/activate" in script
        assert "-m submitit.core._submit" in script, "submitit writes the script and runs the job"
    fuse = next(s for s in scripts if s.startswith("fuse-seed1-geometric"))
    assert "waits for train-seed1-parent1, train-seed1-parent2" in fuse
    assert "--parents RUN_ID_OF_train-seed1-parent1,RUN_ID_OF_train-seed1-parent2" in fuse
    evaluate = next(s for s in scripts if s.startswith("evaluate-seed1-naive-fused"))
    assert "--model-run RUN_ID_OF_fuse-seed1-naive" in evaluate
    assert not (tmp_path / "logs").exists(), "a dry run submits nothing and writes nothing"


def test_slurm_needs_a_tracking_server_the_nodes_reach(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    result = run_cli_in_process(["study", "--backend", "slurm", "--seeds", "1"], f"sqlite:///{tmp_path}/mlflow.db",
                                capsys)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: Slurm jobs cannot reach the tracking store sqlite:///")
    assert "MLFLOW_TRACKING_URI=http://HOST:PORT" in line
    assert not (tmp_path / "mlflow.db").exists(), "refused before any run exists"


def test_a_steps_digest_names_its_command():
    params = {"model_run": "abc", "measures": "accuracy"}
    assert step_digest("evaluate", params) == step_digest("evaluate", dict(reversed(params.items())))
    assert step_digest("evaluate", params) != step_digest("evaluate", {**params, "model_run": "abd"})
    assert step_digest("evaluate", params) != step_digest("train", params)
