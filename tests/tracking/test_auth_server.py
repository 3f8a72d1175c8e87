"""ofexp against `mlflow server --app-name basic-auth`, credentials from MLFLOW_TRACKING_USERNAME/PASSWORD."""
from __future__ import annotations

import pytest
from mlflow import MlflowClient

from conftest import run_cli_in_process, start_mlflow_server, stop_mlflow_server

pytestmark = pytest.mark.slow

ADMIN, PASSWORD = "admin", "ofexp-test-password-1"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """A real basic-auth server on its own stores; the admin's password comes from its config file."""
    root = tmp_path_factory.mktemp("mlflow-auth")
    config = root / "basic_auth.ini"
    config.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
        f"admin_username = {ADMIN}\n"
        f"admin_password = {PASSWORD}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    server = start_mlflow_server(root, extra_args=("--app-name", "basic-auth"),
                                 env={"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_FLASK_SERVER_SECRET_KEY": "ofexp-test-secret"})
    yield server
    stop_mlflow_server(server)


def _login(monkeypatch, user: str, password: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)


def test_train_fuse_evaluate_with_credentials(auth_server, monkeypatch, capsys):
    _login(monkeypatch, ADMIN, PASSWORD)
    uri = auth_server.uri

    def ofexp(*args: str) -> str:
        result = run_cli_in_process([*args, "--experiment-name", "auth"], uri, capsys)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.last_line

    train = ["train", "--width", "0.25", "--epochs", "1", "--no-log-model"]
    parents = [ofexp(*train, "--seed", str(seed)) for seed in (1, 2)]
    naive = ofexp("fuse", "--parents", ",".join(parents), "--method", "naive").split()[1]
    evaluation = ofexp("evaluate", "--model-run", naive)

    client = MlflowClient(uri)  # the same environment credentials
    for run_id in (*parents, naive, evaluation):
        assert client.get_run(run_id).info.status == "FINISHED"
    assert client.get_run(evaluation).data.tags["ofexp.model_run_id"] == naive


@pytest.mark.parametrize("user,password", [(ADMIN, "wrong-password"), ("nobody", PASSWORD), ("", "")],
                         ids=["wrong password", "unknown user", "no credentials"])
def test_bad_credentials_are_one_line(auth_server, monkeypatch, capsys, user, password):
    if user:
        _login(monkeypatch, user, password)
    else:
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    result = run_cli_in_process(["train", "--epochs", "1", "--experiment-name", "auth"], auth_server.uri, capsys)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    (line,) = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert auth_server.uri in line and "MLFLOW_TRACKING_USERNAME" in line
    assert result.stdout.strip() == ""


def test_a_read_only_user_gets_one_line_naming_the_user_and_the_permission(auth_server, monkeypatch, capsys):
    """A user with the server's default READ permission may look, not log: its first write used
    to end in a raw `403 != 200 ... Permission denied`."""
    from mlflow.server import get_app_client

    _login(monkeypatch, ADMIN, PASSWORD)
    get_app_client("basic-auth", tracking_uri=auth_server.uri).create_user("reader", "reader-password-1")
    client = MlflowClient(auth_server.uri)
    experiment_id = client.create_experiment("admins-only")
    before = len(client.search_runs([experiment_id]))
    _login(monkeypatch, "reader", "reader-password-1")
    result = run_cli_in_process(["train", "--epochs", "1", "--no-log-model", "--experiment-name", "admins-only"],
                                auth_server.uri, capsys)
    assert result.returncode != 0 and result.stdout.strip() == ""
    assert "Traceback" not in result.stderr
    (line,) = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert "user reader lacks permission on experiment 'admins-only'" in line and "EDIT" in line
    assert "403 != 200" not in line
    _login(monkeypatch, ADMIN, PASSWORD)
    assert len(MlflowClient(auth_server.uri).search_runs([experiment_id])) == before  # no run was left behind
