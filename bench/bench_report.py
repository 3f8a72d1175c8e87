"""Report queries: `ofexp report` on a 5-seed study and `ofexp compare` over 500 runs, against a local server.

A real `mlflow server` (SQLite backend, proxied artifacts, free localhost port) is
started in a temp dir for the benchmark and always stopped. Synthetic runs are logged
straight through `MlflowClient` (one `log_batch` per run), shaped like what `ofexp
study` leaves: per seed two train runs, two fuse runs and four evaluate runs carrying
every measure in `ofexp.metrics.MEASURES`, and a study run indexing them in its
steps.csv. Before timing, `ofexp report --csv` is run
once and its per-seed rows are checked against the logged values.

ofexp side: the real CLI in this process (`ofexp.cli.main(["report", ID])`, stdout
captured), which fetches the step runs with a few server-side `run_id IN (...)`
searches. Baseline, a straightforward client script: `get_run` per step run and
`get_metric_history` per measure of each evaluate run, then the same tables. For
`compare`: the CLI over N run IDs against one `get_run` per run and the same table.
Target (issues 5 and 7): ofexp at most 2 s each.
"""
from __future__ import annotations

import contextlib
import io
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import Result, time_pair

KINDS = ("parent_1", "parent_2", "naive_fused", "geometric_fused")
STAGE_OF_KIND = {"parent_1": "train", "parent_2": "train", "naive_fused": "fuse", "geometric_fused": "fuse"}
TARGET_S = 2.0


# -- a local tracking server -------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, timeout: float = 180.0) -> tuple[str, subprocess.Popen]:
    """`mlflow server` on SQLite with proxied artifacts under `root`; (URI, process) once /health answers."""
    from ofexp.errors import TrackingServerError
    from ofexp.tracking.server import wait_until_answering

    port = _free_port()
    log = open(root / "server.log", "ab")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination",
         str(root / "artifacts"), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(uri, process, timeout, f"mlflow server (log: {root / 'server.log'})",
                             lambda: f" (exit code {process.returncode})")
    except TrackingServerError:
        stop_server(process)
        raise
    return uri, process


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# -- synthetic runs ------------------------------------------------------------------------

def _log_run(client, experiment_id: str, name: str, tags: dict, params: dict, metrics: dict) -> str:
    from mlflow.entities import Metric, Param

    run = client.create_run(experiment_id, run_name=name, tags=tags)
    now = int(time.time() * 1000)
    client.log_batch(run.info.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                     params=[Param(k, str(v)) for k, v in params.items()])
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def log_study(client, seeds: int, rng: np.random.Generator) -> tuple[str, pd.DataFrame]:
    """A study run with `seeds` × 4 kinds of step runs; (study run ID, logged (Model, Metric, Value))."""
    from mlflow.entities import Param

    from ofexp.metrics import MEASURES

    experiment_id = client.create_experiment("bench-report-study")
    study_id = client.create_run(experiment_id, run_name="study vgg11 digits (synthetic)",
                                 tags={"ofexp.stage": "study"}).info.run_id
    client.log_batch(study_id, params=[Param("accuracy_metric", "accuracy")])
    nested = {"mlflow.parentRunId": study_id}
    rows, logged = [], []
    for seed in range(1, seeds + 1):
        for kind in KINDS:
            stage = STAGE_OF_KIND[kind]
            model_id = _log_run(client, experiment_id, f"{stage} {kind} seed{seed}",
                                {**nested, "ofexp.stage": stage}, {"seed": seed, "model": "vgg11"}, {})
            values = {m.metric_key: rng.uniform(0.1, 1.0) for m in MEASURES.values()}
            eval_id = _log_run(client, experiment_id, f"evaluate {kind} seed{seed}",
                               {**nested, "ofexp.stage": "evaluate", "ofexp.model_run_id": model_id},
                               {"seed": seed, "accuracy_metric": "accuracy"}, values)
            rows += [(seed, kind, stage, model_id, False), (seed, kind, "evaluate", eval_id, False)]
            logged += [(f"{kind}_seed{seed}", m.name, values[m.metric_key]) for m in MEASURES.values()]
    columns = ["seed", "kind", "stage", "run_id", "reused"]  # steps.csv, as `ofexp study` writes it
    client.log_text(study_id, pd.DataFrame(rows, columns=columns).to_csv(index=False), "steps.csv")
    client.set_tag(study_id, "ofexp.kinds", ",".join(KINDS))
    client.set_terminated(study_id, "FINISHED")
    return study_id, pd.DataFrame(logged, columns=["Model", "Metric", "Value"])


def log_many(client, count: int, rng: np.random.Generator) -> list[str]:
    """`count` evaluate-like runs with a few params and a dozen metrics each, for `compare`."""
    experiment_id = client.create_experiment("bench-report-compare")
    keys = [f"prediction/{k}" for k in ("accuracy", "test_loss", "train_accuracy", "train_loss")] + \
           [f"param/m{i}" for i in range(8)]
    return [_log_run(client, experiment_id, f"evaluate synthetic {i}", {"ofexp.stage": "evaluate"},
                     {"seed": i % 5 + 1, "model": "vgg11", "width": 0.125, "lr": 0.05},
                     {k: rng.uniform() for k in keys}) for i in range(count)]


# -- the two sides -------------------------------------------------------------------------

def cli_stdout(args: list[str]) -> str:
    """`ofexp ARGS` through the real entry point in this process; its stdout (RuntimeError if it fails)."""
    from ofexp.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
        except SystemExit as exc:
            code = exc.code or 0
    if code:
        raise RuntimeError(f"ofexp {' '.join(args[:2])} failed ({code}): {err.getvalue().strip()[-300:]}")
    return out.getvalue()


def _naive_run(client, run_id: str, metric_keys=()):
    """RunData from `get_run`, metrics re-read one `get_metric_history` call each (last value)."""
    from ofexp.tracking.queries import RunData

    run = client.get_run(run_id)
    metrics = dict(run.data.metrics)
    for key in metric_keys:
        history = client.get_metric_history(run_id, key)
        metrics[key] = max(history, key=lambda m: (m.step, m.timestamp)).value
    return RunData(run.info.run_id, run.info.run_name or "", run.info.status, run.info.experiment_id,
                   run.info.start_time, dict(run.data.params), metrics, dict(run.data.tags))


def naive_report(client, study_id: str):
    """The report's tables the straightforward way: a request per run and per metric."""
    from ofexp.metrics import MEASURES
    from ofexp.pipeline.study.report import build_tables, steps_from_csv

    study = client.get_run(study_id)
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(client.download_artifacts(study_id, "steps.csv", tmp)).read_text()
    steps = steps_from_csv(text, study.data.tags.get("ofexp.kinds", ""))
    runs = {}
    for step in steps.itertuples():
        keys = [m.metric_key for m in MEASURES.values()] if step.stage == "evaluate" else ()
        runs[step.run_id] = _naive_run(client, step.run_id, keys)
    return build_tables(steps, runs, study.data.params.get("accuracy_metric", "accuracy"))


def naive_compare(client, run_ids: list[str]) -> str:
    from ofexp.cli.report_commands import _WIDE, compare_table

    table = compare_table([_naive_run(client, r) for r in run_ids])
    with pd.option_context(*[x for item in _WIDE.items() for x in item]):
        return table.fillna("").to_string() + "\n"


# -- the benchmark -------------------------------------------------------------------------

def _check_report(study_id: str, logged: pd.DataFrame, tmp: Path) -> None:
    """`ofexp report --csv` once: its per-seed rows (results.csv and the other prediction values
    beside it, under ofexp's measure names) must be exactly the logged values."""
    from ofexp.metrics import MEASURES

    cli_stdout(["report", study_id, "--csv", str(tmp / "results.csv")])
    rows = pd.concat([pd.read_csv(tmp / "results.csv"), pd.read_csv(tmp / "results.prediction.csv")])
    rows["Metric"] = rows["Metric"].replace({m.report_name: m.name for m in MEASURES.values()})
    per_seed = rows[rows["Space"] != "correlation_space"].merge(logged, on=["Model", "Metric"], how="outer")
    if len(per_seed) != len(logged) or not np.allclose(per_seed["Value_x"], per_seed["Value_y"]):
        raise RuntimeError("ofexp report's results.csv does not match the logged synthetic values")


def _startup_s() -> float:
    """Wall seconds of one `ofexp --help` in a fresh process (the CLI's import cost)."""
    start = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "ofexp"), "--help"], check=True, capture_output=True)
    return time.perf_counter() - start


def run(quick: bool, repeats: int) -> list[Result]:
    import mlflow

    from ofexp.tracking.uri_scope import using_tracking_uri

    with tempfile.TemporaryDirectory(prefix="ofexp-bench-report-") as tmp:
        uri, process = start_server(Path(tmp))
        try:
            with using_tracking_uri(uri):
                return _run(quick, repeats, Path(tmp), mlflow.MlflowClient(uri))
        finally:
            stop_server(process)


def _run(quick: bool, repeats: int, tmp: Path, client) -> list[Result]:
    from ofexp.metrics import MEASURES

    seeds, count = 5, 100 if quick else 500
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # MLflow prints a "View run" URL per run to stdout
        study_id, logged = log_study(client, seeds, rng)
        run_ids = log_many(client, count, rng)
    print(f"[bench] report: logged {seeds * 8 + 1 + count} runs in {time.perf_counter() - start:.1f} s",
          file=sys.stderr, flush=True)
    _check_report(study_id, logged, tmp)

    ours_s, base_s, ours_out, base_tables = time_pair(lambda: cli_stdout(["report", study_id]),
                                                      lambda: naive_report(client, study_id), repeats)
    base_rows = base_tables.results[base_tables.results["Space"] != "correlation_space"]
    merged = base_rows.merge(logged, on=["Model", "Metric"])
    agree = bool(len(merged) == len(logged) == len(base_rows) and np.allclose(merged["Value_x"], merged["Value_y"])
                 and f"# study {study_id}" in ours_out)
    report = Result(f"report: study of {seeds} seeds x 4 kinds x {len(MEASURES)} measures", "ofexp report (CLI)",
                    "get_run per run + get_metric_history per metric", ours_s, base_s,
                    target=f"ofexp <= {TARGET_S} s", passed=bool(np.median(ours_s) <= TARGET_S),
                    notes={"server": "local mlflow server, sqlite", "step_runs": seeds * 8,
                           "both_match_logged_values": agree, "ofexp_help_startup_s": round(_startup_s(), 2)})

    ours_s, base_s, ours_out, base_out = time_pair(lambda: cli_stdout(["compare", *run_ids]),
                                                   lambda: naive_compare(client, run_ids), repeats)
    compare = Result(f"compare: {count} synthetic runs", "ofexp compare (CLI)", "get_run per run",
                     ours_s, base_s, target=f"ofexp <= {TARGET_S} s", passed=bool(np.median(ours_s) <= TARGET_S),
                     notes={"server": "local mlflow server, sqlite", "same_table": ours_out == base_out})
    return [report, compare]
