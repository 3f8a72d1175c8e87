"""Shared fixtures: a real `mlflow server` per test session, and CLI helpers."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ofexp.tracking.tether import Tethered

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny test models run several times faster on one thread than on 2 busy cores."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@contextmanager
def using_tracking_uri(uri: str):
    """ofexp.tracking.uri_scope.using_tracking_uri (this process's MLflow at `uri` for the block,
    then exactly what was there), imported on first use: collecting the tests loads no MLflow."""
    from ofexp.tracking.uri_scope import using_tracking_uri as scoped

    with scoped(uri):
        yield


@dataclass
class MlflowServer:
    uri: str
    root: Path
    process: "Tethered"  # `mlflow server` under its tether: it ends with this process, even on SIGKILL


def start_mlflow_server(root: Path, port: int | None = None, timeout: float = 180.0, *,
                        backend_store_uri: str | None = None, extra_args: tuple[str, ...] = (),
                        env: dict | None = None) -> MlflowServer:
    """Start `mlflow server` (SQLite backend unless `backend_store_uri`, proxied artifacts) and wait for /health.

    The server, its uvicorn worker and anything they start form one process group under a
    tether (ofexp/tracking/tether.py): if pytest is killed (a CI timeout, SIGKILL), the group
    is SIGKILLed and leaves no server on the port. MLflow's job runner (GenAI scorers; its
    own worker processes) is off: no test uses it.
    """
    from ofexp.errors import TrackingServerError
    from ofexp.tracking.server import wait_until_answering
    from ofexp.tracking.tether import start_tethered

    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    with open(root / "server.log", "ab") as log:
        process = start_tethered(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", backend_store_uri or f"sqlite:///{root / 'mlflow.db'}",
             "--artifacts-destination", str(root / "artifacts"), "--workers", "1", *extra_args],
            stdout=log, stderr=subprocess.STDOUT, cwd=root,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})},
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(uri, process, timeout, f"mlflow server (log: {root / 'server.log'})",
                             lambda: f" (exit code {process.returncode})")
    except TrackingServerError:
        process.kill()
        raise
    return MlflowServer(uri, root, process)


def serves(url: str, timeout: float = 5) -> bool:
    """Whether an MLflow server answers its health check at `url` now."""
    import urllib.request

    try:
        urllib.request.urlopen(f"{url}/health", timeout=timeout).close()
        return True
    except OSError:
        return False


def stop_mlflow_server(server: MlflowServer) -> None:
    """Stop the server's whole group (SIGTERM, then SIGKILL) and wait until its port is free."""
    server.process.stop()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> MlflowServer:
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    yield server
    stop_mlflow_server(server)


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def last_line(self) -> str:
        lines = self.stdout.strip().splitlines()
        return lines[-1] if lines else ""


def run_cli_in_process(args: list[str], uri: str, capsys) -> CliResult:
    """`ofexp ARGS` through the real entry point in this process: no ~5 s start-up per call."""
    from ofexp.cli import main

    capsys.readouterr()
    with using_tracking_uri(uri):
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
    out = capsys.readouterr()
    return CliResult(code, out.out, out.err)


def the_error_line(result: CliResult, code: int = 1) -> str:
    """The one `error:` line of a command that failed with exit `code` and no traceback."""
    assert result.returncode == code, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-2000:]
    return lines[0]


def run_cli(args: list[str], *, tracking_uri: str, cwd: Path, env: dict | None = None, timeout: float = 600) -> CliResult:
    """Run `ofexp ARGS` in a fresh process against `tracking_uri`."""
    # One torch thread: on 2 shared cores, tiny models run several times faster so.
    full_env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
                "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("MLFLOW_RUN_ID", None)
    proc = subprocess.run([str(BIN / "ofexp"), *args], capture_output=True, text=True, cwd=cwd, env=full_env,
                          timeout=timeout)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@dataclass
class TinyRuns:
    """Runs made once per session by the real CLI against the real server."""

    server: MlflowServer
    experiment: str
    workdir: Path
    parent_1: str
    parent_2: str
    other_arch: str
    fused: dict[str, str]
    evaluations: dict[str, str]

    def cli(self, args: list[str], **kwargs) -> CliResult:
        return run_cli(args, tracking_uri=self.server.uri, cwd=self.workdir, **kwargs)


def _must(result: CliResult) -> CliResult:
    assert result.returncode == 0, f"ofexp failed:\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="session")
def tiny_runs(mlflow_server, tmp_path_factory) -> TinyRuns:
    """Two tiny MLP parents, a VGG11 of another family, both fusions and four evaluations."""
    return make_tiny_runs(mlflow_server, tmp_path_factory.mktemp("tiny-runs"))


def make_tiny_runs(mlflow_server: MlflowServer, workdir: Path) -> TinyRuns:
    """The runs of `tiny_runs`, made by the real CLI against `mlflow_server`."""
    exp = ["--experiment-name", "tiny"]

    def cli(args):
        return _must(run_cli(args + exp, tracking_uri=mlflow_server.uri, cwd=workdir))

    common = ["train", "--model", "mlp", "--width", "0.25", "--epochs", "2"]
    parent_1 = cli(common + ["--seed", "1"]).last_line
    parent_2 = cli(common + ["--seed", "2", "--no-log-model"]).last_line
    other = cli(["train", "--model", "vgg11", "--width", "0.125", "--epochs", "1", "--no-log-model"]).last_line
    fuse_lines = cli(["fuse", "--parents", f"{parent_1},{parent_2}"]).stdout.split("\n")
    fused = dict(line.split() for line in fuse_lines if line.strip())
    kinds = {"parent_1": parent_1, "parent_2": parent_2,
             "naive_fused": fused["naive"], "geometric_fused": fused["geometric"]}
    evaluations = {kind: cli(["evaluate", "--model-run", run_id, "--label", kind]).last_line
                   for kind, run_id in kinds.items()}
    return TinyRuns(mlflow_server, "tiny", workdir, parent_1, parent_2, other, fused, evaluations)


def fake_train_run(client, experiment: str, files: dict[str, bytes], stage: str = "train") -> str:
    """A FINISHED run tagged `stage` whose artifacts are exactly `files` (artifact path -> bytes).

    For tests of what ofexp does with artifacts it did not write: corrupt, missing or hostile ones.
    """
    import tempfile

    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run_id = client.create_run(experiment_id, tags={"ofexp.stage": stage}).info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        for artifact_path, content in files.items():
            local = Path(tmp) / artifact_path
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(content)
            folder = str(Path(artifact_path).parent)
            client.log_artifact(run_id, str(local), None if folder == "." else folder)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def run_artifact_bytes(client, run_id: str, artifact_path: str) -> bytes:
    """The bytes of one artifact of a run."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return Path(client.download_artifacts(run_id, artifact_path, tmp)).read_bytes()


def log_artifact_bytes(client, run_id: str, artifact_path: str, content: bytes) -> None:
    """Log `content` as the artifact `artifact_path` of a run."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / Path(artifact_path).name
        local.write_bytes(content)
        folder = str(Path(artifact_path).parent)
        client.log_artifact(run_id, str(local), None if folder == "." else folder)


def clone_run(client, source_id: str, experiment_id: str, copied: tuple[str, ...], *, params: dict | None = None,
              files: dict[str, bytes] | None = None, drop_tags: tuple[str, ...] = (),
              set_tags: dict[str, str] | None = None, status: str = "FINISHED") -> str:
    """A copy of run `source_id` (its params, tags and the `copied` files) ending `status`, with
    `params` changed, `files` written over the copied ones, `drop_tags` deleted and `set_tags` set."""
    source = client.get_run(source_id)
    tags = {k: v for k, v in source.data.tags.items() if not k.startswith("mlflow.")}
    run_id = client.create_run(experiment_id, tags=tags, run_name="clone").info.run_id
    for key, value in {**source.data.params, **(params or {})}.items():
        client.log_param(run_id, key, value)
    for path in copied:
        log_artifact_bytes(client, run_id, path, run_artifact_bytes(client, source_id, path))
    for path, content in (files or {}).items():
        log_artifact_bytes(client, run_id, path, content)
    for tag in drop_tags:
        client.delete_tag(run_id, tag)
    for tag, value in (set_tags or {}).items():
        client.set_tag(run_id, tag, value)
    client.set_terminated(run_id, status)
    return run_id


POSTGRES_URI = os.environ.get("OFEXP_TEST_POSTGRES_URI", "postgresql://ofexp:ofexp@127.0.0.1:5432/ofexp")


@pytest.fixture(scope="session")
def slurm_cluster():
    """Skips, saying why, where no Slurm node is up to take jobs (.ci/install-slurm.sh starts one)."""
    import shutil

    if shutil.which("sinfo") is None:
        pytest.skip("Slurm is not installed; run .ci/install-slurm.sh")
    states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.split()
    if not {"idle", "mixed", "allocated"} & set(states):
        pytest.skip(f"no Slurm node takes jobs (sinfo: {states or 'no answer'}); run .ci/install-slurm.sh")


@pytest.fixture(scope="session")
def postgres_database() -> str:
    """A fresh, empty PostgreSQL database for this session (dropped after); its URI.

    Reaches the server at OFEXP_TEST_POSTGRES_URI (.ci/install-postgres.sh sets one up) and
    skips, saying so, only when psycopg2 is missing or no server answers there.
    """
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2 is not installed; run .ci/install-postgres.sh")
    try:
        admin = psycopg2.connect(POSTGRES_URI, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server at {POSTGRES_URI} ({str(exc).strip().splitlines()[0]}); "
                    "run .ci/install-postgres.sh or set OFEXP_TEST_POSTGRES_URI")
    name = f"ofexp_test_{uuid.uuid4().hex[:12]}"
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    # SQLAlchemy 2.1 reads plain postgresql:// as psycopg 3; name the psycopg2 driver installed here
    yield urlunsplit(urlsplit(POSTGRES_URI)._replace(scheme="postgresql+psycopg2", path=f"/{name}"))
    with admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


@pytest.fixture(scope="session")
def postgres_mlflow_server(postgres_database, tmp_path_factory) -> MlflowServer:
    """`mlflow server` with a PostgreSQL backend store and proxied artifacts."""
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-postgres"), backend_store_uri=postgres_database)
    yield server
    stop_mlflow_server(server)


@pytest.fixture(scope="session")
def postgres_tiny_runs(postgres_mlflow_server, tmp_path_factory) -> TinyRuns:
    """`tiny_runs`, on the PostgreSQL-backed server."""
    return make_tiny_runs(postgres_mlflow_server, tmp_path_factory.mktemp("tiny-runs-postgres"))


def sqlite_store_with_parents(root: Path, experiment: str, **train_options):
    """A SQLite store under `root` holding two FINISHED 1-epoch MLP (width 0.125) train runs on
    digits, seeds 1 and 2, in `experiment`: (uri, (parent_1, parent_2), splits, experiment_id).
    `train_options` are TrainConfig fields that differ from those (width=0.25, batchnorm=True)."""
    from dataclasses import replace

    import mlflow

    from ofexp.data import DataConfig, load_dataset
    from ofexp.pipeline.steps.train import TrainConfig, run_train
    from ofexp.training import make_recipe

    uri = f"sqlite:///{root}/mlflow.db"
    with using_tracking_uri(uri):
        experiment_id = mlflow.set_experiment(experiment).experiment_id
        splits = load_dataset(DataConfig())
        base = TrainConfig(model="mlp", width=0.125, recipe=make_recipe(epochs=1), log_model=False, progress=False,
                           device="cpu")
        parents = tuple(run_train(replace(base, seed=s, **train_options), splits) for s in (1, 2))
    return uri, parents, splits, experiment_id


def fake_model_steps(client, experiment_id: str, seed: int, kinds) -> tuple[list[tuple], dict[str, str]]:
    """FINISHED train runs of a study seed's two parents and fuse runs of its `<method>_fused` kinds,
    recording what `ofexp study` records (parent seeds 100·s + i, parents tag, method param), so a
    fake steps.csv of evaluate rows passes `ofexp report`'s map check: (steps.csv rows, {kind: run ID})."""
    ids, rows = {}, []
    for i in (1, 2):
        run_id = client.create_run(experiment_id, tags={"ofexp.stage": "train"}).info.run_id
        client.log_param(run_id, "seed", str(100 * seed + i))
        ids[f"parent_{i}"] = run_id
        rows.append((seed, f"parent_{i}", "train", run_id, False))
    for method in ("naive", "geometric"):
        if f"{method}_fused" in kinds:
            run_id = client.create_run(experiment_id, tags={"ofexp.stage": "fuse", "ofexp.parent_run_ids":
                                                            f"{ids['parent_1']},{ids['parent_2']}"}).info.run_id
            client.log_param(run_id, "method", method)
            ids[f"{method}_fused"] = run_id
            rows.append((seed, f"{method}_fused", "fuse", run_id, False))
    for run_id in ids.values():
        client.set_terminated(run_id, "FINISHED")
    return rows, ids


def pytest_terminal_summary(terminalreporter) -> None:
    """Name the cluster tests that passed, with their times: a CI log shows that Slurm really ran."""
    passed = [r for r in terminalreporter.stats.get("passed", []) if r.when == "call" and "test_slurm.py::" in r.nodeid]
    if passed:
        terminalreporter.section("Slurm end-to-end tests (a real one-node cluster)")
        for report in passed:
            terminalreporter.line(f"PASSED {report.nodeid} in {report.duration:.0f} s")
