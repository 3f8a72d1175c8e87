"""Report queries: `ofexp report` on a 5-seed study and `ofexp compare` over 500 runs, against a local server.

A real `mlflow server` (SQLite backend, proxied artifacts, free localhost port) is
started in a temp dir for the benchmark and always stopped. Synthetic runs are logged
straight through `MlflowClient` (one `log_batch` per run), shaped like what `ofexp
study` leaves: its plan's steps (`ofexp.pipeline.study.plan`; per seed two train runs,
two fuse runs and four evaluate runs carrying every measure in `ofexp.metrics.MEASURES`)
with the params and lineage tags the study's own configs give them, and a study run
indexing them in its steps.csv. Before timing, `ofexp report --csv` is run once (its
check of steps.csv against the runs included) and its per-seed rows are checked
against the logged values.

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

def _log_run_data(client, run_id: str, params: dict, metrics: dict) -> None:
    """`params` and `metrics` in one `log_batch`."""
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                     params=[Param(k, str(v)) for k, v in params.items()])


def _log_run(client, experiment_id: str, name: str, tags: dict, params: dict, metrics: dict) -> str:
    run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    _log_run_data(client, run_id, params, metrics)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def study_config(seeds: int):
    """What `ofexp study --model vgg11 --seeds N --measures all` runs: its plan gives the fake study's steps."""
    from ofexp.pipeline.steps.options import EvaluateOptions
    from ofexp.pipeline.steps.train import TrainConfig
    from ofexp.pipeline.study.run import StudyConfig

    return StudyConfig(train=TrainConfig(model="vgg11"), seeds=tuple(range(1, seeds + 1)),
                       evaluation=EvaluateOptions(measures="all"))


def _step_record(step, cfg, inputs: list[str]) -> tuple[dict, dict]:
    """(params, tags) of the run `ofexp study` makes for plan step `step`, built by the study's own
    config classes (a parent's torch seed is the plan's; a fuse run names its parents; an evaluate
    run its model; `inputs`: the run IDs of the step's inputs), so that `ofexp report`'s check of
    steps.csv against the runs accepts them."""
    from ofexp.pipeline.steps.evaluate import EvalConfig, evaluate_params
    from ofexp.pipeline.steps.fuse import FuseConfig
    from ofexp.pipeline.steps.options import option_values
    from ofexp.tracking.names import TAG_MODEL_RUN, TAG_PARENTS

    if step.stage == "train" and not inputs:
        return step.config.params(), {}
    if step.stage == "fuse":
        fuse = FuseConfig(**option_values(step.config), parents=tuple(inputs), device=cfg.train.device)
        return fuse.params(fuse.methods[0]), {TAG_PARENTS: ",".join(inputs)}
    if step.stage == "evaluate":
        evaluate = EvalConfig(**option_values(step.config), model_run=inputs[0], device=cfg.train.device)
        return evaluate_params(evaluate), {TAG_MODEL_RUN: inputs[0]}
    raise ValueError(f"the report bench fakes no {step.stage} step with inputs (its study has no --finetune-epochs)")


def log_study(client, seeds: int, rng: np.random.Generator) -> tuple[str, pd.DataFrame]:
    """A study run and its step runs, as `ofexp study` plans them for `seeds` seeds, each evaluate run
    with a random value of every measure; (study run ID, the logged (Model, Metric, Value) rows)."""
    from ofexp.metrics import MEASURES
    from ofexp.pipeline.study.plan import plan, study_kinds
    from ofexp.pipeline.study.report import STEP_COLUMNS, STEPS_FILE, sort_steps
    from ofexp.pipeline.study.run import study_params
    from ofexp.tracking.names import TAG_KINDS, TAG_PARENT_RUN
    from ofexp.tracking.runs import base_tags, param_str

    cfg = study_config(seeds)
    experiment_id = client.create_experiment("bench-report-study")
    study_id = client.create_run(experiment_id, run_name=f"{cfg.run_name} (synthetic)",
                                 tags={**base_tags("study"), TAG_KINDS: ",".join(study_kinds(cfg))}).info.run_id
    rows, logged, model_runs = [], [], {}
    for step in plan(cfg):
        params, tags = _step_record(step, cfg, [model_runs[step.seed, kind] for kind in step.inputs])
        values = {m.metric_key: rng.uniform(0.1, 1.0) for m in MEASURES.values()} if step.stage == "evaluate" else {}
        run_id = _log_run(client, experiment_id, step.run_name,
                          {**base_tags(step.stage), TAG_PARENT_RUN: study_id, **tags},
                          {k: param_str(v) for k, v in params.items()}, values)
        if step.makes_model:
            model_runs[step.seed, step.kind] = run_id
        rows.append((step.seed, step.kind, step.stage, run_id, False))
        logged += [(f"{step.kind}_seed{step.seed}", m.name, values[m.metric_key])
                   for m in MEASURES.values() if values]
    _log_run_data(client, study_id, {k: param_str(v) for k, v in study_params(cfg).items()},
                  {"steps/new": len(rows), "steps/reused": 0})
    steps = sort_steps(pd.DataFrame(rows, columns=STEP_COLUMNS), study_kinds(cfg))  # as `ofexp study` writes it
    client.log_text(study_id, steps.to_csv(index=False), STEPS_FILE)
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
    """`ofexp compare`'s table the straightforward way: `get_run` per run, one column each (the rows
    laid out as `ofexp.pipeline.browse.compare_table` lays them out, so that the printed tables can be compared)."""
    from ofexp.cli.report_commands import _WIDE

    columns = {}
    for run_id in run_ids:
        run = _naive_run(client, run_id)
        columns[run.run_id] = {"name": run.name, "stage": run.stage or "", "status": run.status,
                               **{f"param.{k}": v for k, v in sorted(run.params.items())},
                               **{f"metric.{k}": v for k, v in sorted(run.metrics.items())}}
    table = pd.DataFrame(columns)
    head = ["name", "stage", "status"]
    table = table.reindex(head + sorted(i for i in table.index if i not in head))
    with pd.option_context(*[x for item in _WIDE.items() for x in item]):
        return table.fillna("").to_string() + "\n"


# -- the benchmark -------------------------------------------------------------------------

def check_report(study_id: str, logged: pd.DataFrame, tmp: Path) -> None:
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
    check_report(study_id, logged, tmp)

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
