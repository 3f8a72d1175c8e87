"""`--backend slurm` without a cluster: the backend config, the job parameters, and --dry-run."""
from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from conftest import run_cli_in_process
from ofexp.cli import cli
from ofexp.errors import ConfigError
from ofexp.pipeline.engines.slurm_jobs import SlurmConfig, render_script, sbatch_options
from ofexp.tracking.cache import step_identity


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
    ({"time": 0}, "time must be a whole number from 1 to 525600"),
    ({"gpus": -1}, "gpus must be a whole number from 0 to 1024"),
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
    assert result.stderr == "study: 8 steps (1 seed × 8 steps)\n", "the size, on stderr"
    out = result.stdout
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


def test_a_steps_identity_names_its_command():
    params = {"model_run": "abc", "measures": "accuracy"}
    assert step_identity("evaluate", params) == step_identity("evaluate", dict(reversed(params.items())))
    assert step_identity("evaluate", params) != step_identity("evaluate", {**params, "model_run": "abd"})
    assert step_identity("evaluate", params) != step_identity("train", params)


# --- every key's value checked by type and form (issue #27) -------------------------------------

CLEAN = {"partition": "debug", "account": "lab", "time": 60, "cpus_per_task": 2, "mem": "4G", "gpus": 1,
         "sbatch": ["--qos=normal"], "setup": ["module load cuda"], "log_dir": "logs", "python": "/usr/bin/python3"}
HOSTILE = ["debug\ntouch pwned #", "x\rtouch pwned", "$(touch pwned)", "`touch pwned`", "a;touch pwned",
           "a\x1b[2Jpwned", "a\x00pwned", "a\u2028touch pwned", "", " ", 5, -1, 0, 10**30, 1.5, True, None, ["x"],
           ["x\ntouch pwned"], ["--qos=normal\ntouch pwned"], {"a": 1}]


def _lines_outside_single_quotes(script: str) -> list[str]:
    return [re.sub(r"'[^']*'", "''", line) for line in script.splitlines()]


@pytest.mark.parametrize("key", sorted(CLEAN))
def test_no_key_but_setup_can_add_a_line_or_shell_code_to_a_job_script(key, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    clean = render_script(SlurmConfig.from_mapping({key: CLEAN[key]}), "ofexp-step")
    refused = 0
    for value in HOSTILE:
        try:
            cfg = SlurmConfig.from_mapping({key: value})
        except ConfigError as err:
            (line,) = str(err).splitlines()
            assert line.startswith(f"--backend-config: {key} ") or line.startswith("--backend-config: sbatch line ")
            assert "; " in line, "a fix is named"
            refused += 1
            continue
        script = render_script(cfg, "ofexp-step")
        if key == "setup":  # shell lines by design, each item one line
            assert len(script.splitlines()) == len(clean.splitlines()) + len(cfg.setup) - 1, repr(value)
            continue
        assert len(script.splitlines()) <= len(clean.splitlines()), f"{key}={value!r} added a line"
        assert not any("pwned" in line for line in _lines_outside_single_quotes(script)), \
            f"{key}={value!r} reached the script unquoted"
    assert refused >= len(HOSTILE) // 2, f"{key} took most hostile values"


@pytest.mark.parametrize("config, named", [
    ({"setup": 5}, "setup must be a list of strings, got 5"),
    ({"sbatch": None}, "sbatch must be a list of strings, got null"),
    ({"log_dir": 5}, "log_dir must be a path"),
    ({"python": ["x"]}, 'python must be a path (a non-empty string without control characters), or null, got ["x"]'),
    ({"mem": ["4G"]}, 'mem must be a size like "4G"'),
    ({"mem": "4 GB"}, 'mem must be a size like "4G"'),
    ({"partition": "debug\ntouch pwned #"}, 'partition must be a Slurm name'),
    ({"account": "lab\ntouch pwned #"}, 'account must be a Slurm name'),
    ({"account": "a,b"}, 'account must be a Slurm name'),
    ({"setup": ["module load x\ntouch pwned"]}, "setup must be a list of one-line strings"),
    ({"time": 10**30}, "time must be a whole number from 1 to 525600"),
    ({"cpus_per_task": True}, "cpus_per_task must be a whole number from 1 to 65534"),
])
def test_a_wrongly_typed_value_is_refused_naming_key_value_and_what_is_allowed(config, named):
    with pytest.raises(ConfigError, match=re.escape(named)) as caught:
        SlurmConfig.from_mapping(config)
    assert len(str(caught.value).splitlines()) == 1


def test_good_values_of_every_form_are_taken():
    cfg = SlurmConfig.from_mapping({**CLEAN, "partition": "gpu,cpu", "mem": 4096, "setup": "source a\tb",
                                    "sbatch": ["--mail_type=END", "--comment=two words"]})
    assert cfg.partition == "gpu,cpu" and cfg.mem == "4096" and cfg.setup == ("source a\tb",)
    assert "#SBATCH --comment='two words'" in render_script(cfg, "ofexp-step")


def test_a_hostile_partition_is_refused_by_the_cli_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = json.dumps({"partition": "debug\ntouch pwned #"})
    result = run_cli_in_process(["study", "--backend", "slurm", "--backend-config", config, "--dry-run"],
                                f"sqlite:///{tmp_path}/mlflow.db", capsys)
    assert result.returncode != 0 and result.stdout == "" and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line == ('error: --backend-config: partition must be a Slurm name (letters, digits, _ . : + @ % -), or '
                    'several comma-separated, or null, got "debug\\ntouch pwned #"; fix partition in the JSON')
    assert list(tmp_path.iterdir()) == []


def test_the_interpreter_is_one_quoted_shell_word(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    script = render_script(SlurmConfig.from_mapping({"python": "/opt/my env/bin/python"}), "ofexp-step")
    assert "'/opt/my env/bin/python' -u -m submitit.core._submit" in script


# --- the Kubernetes backend config, checked the same way -----------------------------------------

KUBE = {"kube-context": "test", "repository-uri": "registry.example/ofexp-study",
        "kube-job-template-path": "mlflow_projects/cluster_steps/kubernetes_job_template.yaml"}


WORD, PATH = "without spaces or control characters", "without control characters (a path)"


@pytest.mark.parametrize("key, value, shown, allowed", [
    ("repository-uri", "registry.example/x\nmalicious", '"registry.example/x\\nmalicious"', WORD),
    ("repository-uri", ["registry.example/x"], '["registry.example/x"]', WORD),
    ("kube-context", 5, "5", WORD),
    ("kube-context", "a b", '"a b"', WORD),
    ("kube-job-template-path", None, "null", PATH),
    ("kube-job-template-path", "job.yaml\r", '"job.yaml\\r"', PATH),
])
def test_a_bad_kubernetes_config_value_is_refused_naming_the_key(key, value, shown, allowed, capsys):
    args = ["study", "--backend", "kubernetes", "--backend-config", json.dumps({**KUBE, key: value}), "--dry-run"]
    result = run_cli_in_process(args, "http://tracking.example:5000", capsys)
    assert result.returncode != 0 and result.stdout == "" and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line == f"error: --backend-config: {key} must be a non-empty string {allowed}, got {shown}; fix {key} in the JSON"
