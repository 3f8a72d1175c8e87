"""Bad input: one line on stderr, a non-zero exit code, no traceback, no RUNNING run.

Most cases run through the real entry point in this process (`run_cli_in_process`):
the same `main()` as the console script, without ~5 s of start-up per case. Only
what needs a fresh process (its own working directory) spawns one.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess

import pytest
from mlflow import MlflowClient

from conftest import fake_train_run, run_artifact_bytes, run_cli, run_cli_in_process

pytestmark = pytest.mark.slow

MISSING_RUN = "0123456789abcdef0123456789abcdef"
EXPERIMENT = "bad-input"


@pytest.fixture(scope="module")
def bad_runs(tiny_runs) -> dict[str, str]:
    """Runs that are wrong in one way each: deleted, without weights, with corrupt weights."""
    client = MlflowClient(tiny_runs.server.uri)
    spec = run_artifact_bytes(client, tiny_runs.parent_1, "spec.json")
    good = run_artifact_bytes(client, tiny_runs.parent_1, "weights/final.pt")
    deleted = fake_train_run(client, "bad-parents", {"spec.json": spec, "weights/final.pt": good})
    client.delete_run(deleted)
    return {
        "deleted": deleted,
        "no_weights": fake_train_run(client, "bad-parents", {"spec.json": spec}),
        "corrupt": fake_train_run(client, "bad-parents", {"spec.json": spec, "weights/final.pt": good[: len(good) // 2]}),
    }


def _parents(*ids: str) -> list[str]:
    return ["fuse", "--parents", ",".join(ids)]


# (case id, argv builder taking (tiny_runs, bad_runs), words expected in the error line)
CASES = [
    # train
    ("unknown model", lambda r, b: ["train", "--model", "alexnet"], "alexnet"),
    ("unknown dataset", lambda r, b: ["train", "--dataset", "mnist"], "mnist"),
    ("zero epochs", lambda r, b: ["train", "--epochs", "0"], "--epochs"),
    ("negative epochs", lambda r, b: ["train", "--epochs", "-3"], "--epochs"),
    ("zero batch size", lambda r, b: ["train", "--batch-size", "0"], "--batch-size"),
    ("negative batch size", lambda r, b: ["train", "--batch-size", "-64"], "--batch-size"),
    ("unknown device", lambda r, b: ["train", "--device", "tpu"], "tpu"),
    ("unavailable device", lambda r, b: ["train", "--device", "cuda:7"], "cuda"),
    ("resume a run of another experiment",
     lambda r, b: ["train", "--resume", r.parent_1, "--experiment-name", "elsewhere"], "belongs to experiment"),
    ("resume a malformed run id", lambda r, b: ["train", "--resume", "../etc/passwd"], "is not a run ID"),
    # fuse
    ("malformed run id", lambda r, b: _parents(r.parent_1, "not/a run"), "is not a run ID"),
    ("deleted parent", lambda r, b: _parents(r.parent_1, b["deleted"]), "is deleted"),
    ("parent without weights", lambda r, b: _parents(r.parent_1, b["no_weights"]), "weights/final.pt"),
    ("parent with corrupt weights", lambda r, b: _parents(r.parent_1, b["corrupt"]), "corrupt"),
    ("evaluate run as parent", lambda r, b: _parents(r.parent_1, r.evaluations["parent_1"]), "not a train or fuse run"),
    ("different architectures", lambda r, b: _parents(r.parent_1, r.other_arch), "mlp"),
    ("single parent", lambda r, b: _parents(r.parent_1), "at least 2"),
    ("wrong weight count", lambda r, b: [*_parents(r.parent_1, r.parent_2), "--fusion-weights", "1,2,3"],
     "--fusion-weights"),
    ("fuse on unknown device", lambda r, b: [*_parents(r.parent_1, r.parent_2), "--device", "quantum"], "quantum"),
    # evaluate
    ("unknown run id", lambda r, b: ["evaluate", "--model-run", MISSING_RUN], "does not exist"),
    ("evaluate run as model", lambda r, b: ["evaluate", "--model-run", r.evaluations["parent_1"]],
     "not a train or fuse run"),
    ("unknown measure", lambda r, b: ["evaluate", "--model-run", r.parent_1, "--measures", "beauty"], "beauty"),
    ("evaluate a deleted run", lambda r, b: ["evaluate", "--model-run", b["deleted"]], "is deleted"),
    # study
    ("zero seeds", lambda r, b: ["study", "--seeds", "0"], "--seeds"),
    ("negative seeds", lambda r, b: ["study", "--seeds", "-2"], "--seeds"),
    ("study with zero batch size", lambda r, b: ["study", "--batch-size", "0"], "--batch-size"),
]
if importlib.util.find_spec("ofexp.cli.report_commands") is not None:
    CASES += [
        ("report of an unknown run", lambda r, b: ["report", MISSING_RUN], MISSING_RUN),
        ("report of a malformed run id", lambda r, b: ["report", "--study-run", "not/a run"], "not/a run"),
        ("report of a deleted run", lambda r, b: ["report", b["deleted"]], "deleted"),
    ]
# commands that take --experiment-name; the cases run in their own experiment
WITH_EXPERIMENT = ("train", "fuse", "evaluate", "study")


def _error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-2000:]
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr[-2000:]
    return lines[0]


def _running(client: MlflowClient, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs([found.experiment_id], filter_string="attributes.status = 'RUNNING'")


@pytest.mark.parametrize("case,argv,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_error(tiny_runs, bad_runs, capsys, case, argv, expected):
    args = argv(tiny_runs, bad_runs)
    if args[0] in WITH_EXPERIMENT and "--experiment-name" not in args:
        args += ["--experiment-name", EXPERIMENT]
    result = run_cli_in_process(args, tiny_runs.server.uri, capsys)
    assert result.returncode != 0
    assert expected in _error_line(result.stderr)
    assert result.stdout.strip() == ""
    client = MlflowClient(tiny_runs.server.uri)
    assert _running(client, EXPERIMENT) == [] and _running(client, "elsewhere") == []


def test_enough_distinct_bad_inputs_across_commands():
    assert len({case for case, _, _ in CASES}) >= 15
    assert {argv(_Any(), _Any())[0] for _, argv, _ in CASES} >= {"train", "fuse", "evaluate", "study"}


class _Any:
    """Stands in for the run fixtures when only the command name of a case is wanted."""

    parent_1 = parent_2 = other_arch = "x" * 32
    evaluations = {"parent_1": "x" * 32}

    def __getitem__(self, key):
        return "x" * 32


def test_diverging_training_fails_fast_naming_the_epoch(tiny_runs, capsys):
    result = run_cli_in_process(["train", "--lr", "1e6", "--epochs", "50", "--grad-clip", "0", "--no-log-model",
                                 "--experiment-name", "diverge"], tiny_runs.server.uri, capsys)
    assert result.returncode != 0
    assert "diverged at epoch 1" in _error_line(result.stderr)
    client = MlflowClient(tiny_runs.server.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("diverge").experiment_id])
    assert run.info.status == "FAILED"
    assert "diverged at epoch 1" in run.data.tags["ofexp.failure_reason"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == []  # it stopped in epoch 1


@pytest.fixture
def unwritable_dir(tmp_path):
    """A folder this process cannot create files in, even as root (where chmod alone does not stop it)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = False
    if os.access(folder, os.W_OK):
        immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        if not immutable:
            pytest.skip("cannot make a folder unwritable for this user (root without chattr)")
    yield folder
    if immutable:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o755)


def test_unwritable_working_directory_with_the_default_store(unwritable_dir):
    # The default store is ./mlflow.db: a fresh process in the folder, as a user would start it.
    result = run_cli(["train", "--epochs", "1", "--no-log-model"], tracking_uri="sqlite:///mlflow.db",
                     cwd=unwritable_dir, timeout=120)
    assert result.returncode != 0
    line = _error_line(result.stderr)
    assert str(unwritable_dir) in line and "MLFLOW_TRACKING_URI" in line
    assert result.stdout.strip() == ""
    assert list(unwritable_dir.iterdir()) == []


def test_read_only_store_file_in_a_writable_folder_is_one_line(tmp_path):
    """An immutable mlflow.db used to print 91 lines, an SQLAlchemy traceback among them."""
    import mlflow

    db = tmp_path / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{db}").create_experiment("existing")
    before = db.read_bytes()
    if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
        pytest.skip("cannot make a file immutable here (no chattr, or not root)")
    try:
        result = run_cli(["train", "--epochs", "1", "--no-log-model"], tracking_uri=f"sqlite:///{db}", cwd=tmp_path,
                         timeout=120)
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)
    assert result.returncode != 0 and result.stdout.strip() == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    line = _error_line(result.stderr)
    assert str(db) in line and "read-only" in line and "MLFLOW_TRACKING_URI" in line
    assert db.read_bytes() == before


@pytest.mark.parametrize("argv", [["train", "--epochs", "1"], ["fuse", "--parents", f"{MISSING_RUN},{'1' * 32}"],
                                  ["evaluate", "--model-run", MISSING_RUN], ["study", "--seeds", "1"], ["runs"]],
                         ids=lambda argv: argv[0])
def test_server_down_at_start_names_the_uri(capsys, argv):
    uri = "http://127.0.0.1:9"  # nothing listens there: ofexp must say so without minutes of retries
    result = run_cli_in_process([*argv, "--experiment-name", EXPERIMENT], uri, capsys)
    assert result.returncode != 0
    line = _error_line(result.stderr)
    assert uri in line and "server" in line


def test_debug_shows_the_traceback(tiny_runs):
    result = tiny_runs.cli(["--debug", "evaluate", "--model-run", MISSING_RUN])
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def test_cifar_without_data_offline_is_one_line(tiny_runs, tmp_path):
    # A proxy on a closed local port makes the download fail at once, online or not.
    closed = "http://127.0.0.1:9"
    offline = {"HTTPS_PROXY": closed, "HTTP_PROXY": closed, "https_proxy": closed, "http_proxy": closed,
               "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    result = tiny_runs.cli(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--experiment-name", EXPERIMENT],
                           env=offline)
    assert result.returncode != 0
    line = _error_line(result.stderr)
    assert "cifar-10-batches-py" in line and str(tmp_path) in line
