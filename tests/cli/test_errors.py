"""Bad input: one line on stderr, a non-zero exit code, no traceback, no RUNNING run."""
from __future__ import annotations

import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

MISSING_RUN = "0123456789abcdef0123456789abcdef"

# (case id, argv builder taking the session's runs, expected words in the error line)
CASES = [
    ("unknown run id", lambda r: ["evaluate", "--model-run", MISSING_RUN], "does not exist"),
    ("malformed run id", lambda r: ["evaluate", "--model-run", "not/a run"], "is not a run ID"),
    ("evaluate run as model", lambda r: ["evaluate", "--model-run", r.evaluations["parent_1"]], "not a train or fuse run"),
    ("evaluate run as parent", lambda r: ["fuse", "--parents", f"{r.parent_1},{r.evaluations['parent_1']}"], "not a train or fuse run"),
    ("different architectures", lambda r: ["fuse", "--parents", f"{r.parent_1},{r.other_arch}"], "mlp"),
    ("single parent", lambda r: ["fuse", "--parents", r.parent_1], "at least 2"),
    ("unknown model", lambda r: ["train", "--model", "alexnet"], "alexnet"),
    ("unknown dataset", lambda r: ["train", "--dataset", "mnist"], "mnist"),
    ("zero epochs", lambda r: ["train", "--epochs", "0"], "--epochs"),
    ("zero seeds", lambda r: ["study", "--seeds", "0"], "--seeds"),
    ("unknown measure", lambda r: ["evaluate", "--model-run", r.parent_1, "--measures", "beauty"], "beauty"),
    ("wrong weight count", lambda r: ["fuse", "--parents", f"{r.parent_1},{r.parent_2}", "--fusion-weights", "1,2,3"], "--fusion-weights"),
    ("unavailable device", lambda r: ["train", "--device", "cuda:7"], "cuda"),
]


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize("case,argv,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_error(tiny_runs, case, argv, expected):
    result = tiny_runs.cli(argv(tiny_runs) + ["--experiment-name", "bad-input"])
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert expected in _error_line(result.stderr)
    assert result.stdout.strip() == ""


def test_cifar_without_data_offline_is_one_line(tiny_runs, tmp_path):
    # A proxy on a closed local port makes the download fail at once, online or not.
    closed = "http://127.0.0.1:9"
    offline = {"HTTPS_PROXY": closed, "HTTP_PROXY": closed, "https_proxy": closed, "http_proxy": closed,
               "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    result = tiny_runs.cli(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--experiment-name", "bad-input"],
                           env=offline)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    line = _error_line(result.stderr)
    assert "cifar-10-batches-py" in line and str(tmp_path) in line


def test_diverging_training_fails_the_run_with_its_reason(tiny_runs):
    result = tiny_runs.cli(["train", "--lr", "1e6", "--epochs", "3", "--grad-clip", "0", "--no-log-model",
                            "--experiment-name", "diverge"])
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "diverged at epoch 1" in _error_line(result.stderr)
    client = MlflowClient(tiny_runs.server.uri)
    experiment = client.get_experiment_by_name("diverge")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED"
    assert "diverged" in run.data.tags["ofexp.failure_reason"]


def test_debug_shows_the_traceback(tiny_runs):
    result = tiny_runs.cli(["--debug", "evaluate", "--model-run", MISSING_RUN])
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def test_bad_input_leaves_no_run_running(tiny_runs):
    client = MlflowClient(tiny_runs.server.uri)
    for name in ("bad-input", "diverge", tiny_runs.experiment):
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            continue
        assert client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'RUNNING'") == []
