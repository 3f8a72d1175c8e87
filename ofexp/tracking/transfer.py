"""Runs written to a folder and read back into any tracking store: `ofexp export` and `ofexp import`.

The folder's format (FORMAT, version FORMAT_VERSION; docs/commands.md "export and import"):

    ofexp-export.json                  the manifest: format, version, export ID, study run ID, run order
    runs/<run ID>/run.json             experiment name, run name, status, start/end time, params, tags,
                                       every artifact's path and size and whether it is in the folder
    runs/<run ID>/metrics.csv          every logged value of every metric: key, step, timestamp, value
    runs/<run ID>/artifacts/...        the run's artifacts, tensor files (*.pt) only with weights
    runs/<run ID>/models/<model ID>/   with weights: each MLflow logged model of the run
        model.json, artifacts/...

Run IDs are the store's own: an import creates new runs, so every run ID (and logged-model ID)
of the export is rewritten wherever it is written down, in tags, params, text artifacts and
MLmodel files (`IdRewriter`). Tensor files are never rewritten, so their sha256 tags still hold.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from ofexp.errors import ConfigError, RunLookupError
from ofexp.tracking.names import LINEAGE_TAGS, TAG_SHA256_PREFIX, parent_tag

FORMAT = "ofexp-study-export"
FORMAT_VERSION = 1
MANIFEST = "ofexp-export.json"
RUNS_DIR = "runs"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.csv"
ARTIFACTS_DIR = "artifacts"
MODELS_DIR = "models"
MODEL_FILE = "model.json"
METRIC_COLUMNS = ["key", "step", "timestamp", "value"]
WEIGHT_SUFFIXES = (".pt", ".pth", ".safetensors", ".ckpt")  # tensor files: weights, checkpoints, plans
TEXT_SUFFIXES = (".csv", ".json", ".txt", ".md", ".yaml", ".yml")  # rewritten on import (with MLmodel)
_MAX_REWRITE_BYTES = 20 * 1024 * 1024
_RUN_ID = re.compile(r"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")
_LOG_BATCH = {"metrics": 1000, "params": 100, "tags": 100}  # MLflow's per-request limits


@dataclass(frozen=True)
class ExportedRun:
    """What `export_run` wrote for one run."""

    run_id: str
    artifacts: int  # files in the folder
    left_out: int  # tensor files left out (no --with-weights)
    models: int  # logged models written


def _client() -> mlflow.MlflowClient:
    return mlflow.MlflowClient()


def is_weight_file(path: str) -> bool:
    return path.lower().endswith(WEIGHT_SUFFIXES)


def named_run_ids(tags: Mapping[str, str]) -> list[str]:
    """The run IDs a run's lineage tags name (parents, measured model, fine-tuning source, study...)."""
    lineage = [v for k, v in tags.items() if k in LINEAGE_TAGS or re.fullmatch(parent_tag(0)[:-1] + r"\d+", k)]
    return list(dict.fromkeys(i for value in lineage for i in _RUN_ID.findall(value)))


def lineage_closure(run_ids: Iterable[str]) -> tuple[list[mlflow.entities.Run], list[str]]:
    """The runs, then every run their lineage tags name, transitively: (runs found, IDs not found)."""
    client, found, missing = _client(), {}, []
    queue = list(dict.fromkeys(run_ids))
    while queue:
        run_id = queue.pop(0)
        if run_id in found or run_id in missing:
            continue
        try:
            run = client.get_run(run_id)
        except MlflowException:
            missing.append(run_id)
            continue
        if run.info.lifecycle_stage == "deleted":
            missing.append(run_id)
            continue
        found[run_id] = run
        queue += [i for i in named_run_ids(run.data.tags) if i not in found]
    return list(found.values()), missing


def _artifact_files(run_id: str, path: str | None = None) -> list[tuple[str, int]]:
    files = []
    for info in _client().list_artifacts(run_id, path):
        files += _artifact_files(run_id, info.path) if info.is_dir else [(info.path, info.file_size or 0)]
    return files


def export_run(run: mlflow.entities.Run, folder: Path, with_weights: bool) -> ExportedRun:
    """Write one run (run.json, metrics.csv, its artifacts, its logged models with weights) to `folder`."""
    client, run_id = _client(), run.info.run_id
    folder.mkdir(parents=True)
    files = _artifact_files(run_id)
    kept = [(p, size) for p, size in files if with_weights or not is_weight_file(p)]
    artifacts = folder / ARTIFACTS_DIR
    artifacts.mkdir()
    for path, _ in kept:
        (artifacts / path).parent.mkdir(parents=True, exist_ok=True)
        _download(run_id, path, artifacts)
    rows = [(m.key, m.step, m.timestamp, m.value) for key in sorted(run.data.metrics)
            for m in client.get_metric_history(run_id, key)]
    pd.DataFrame(rows, columns=METRIC_COLUMNS).to_csv(folder / METRICS_FILE, index=False, na_rep="nan")
    models = _export_models(run, folder / MODELS_DIR) if with_weights else []
    record = {
        "run_id": run_id, "experiment_name": client.get_experiment(run.info.experiment_id).name,
        "run_name": run.info.run_name, "status": run.info.status, "start_time": run.info.start_time,
        "end_time": run.info.end_time, "params": dict(run.data.params), "tags": dict(run.data.tags),
        "artifacts": [{"path": p, "size": size, "included": with_weights or not is_weight_file(p)} for p, size in files],
        "logged_models": models,
    }
    (folder / RUN_FILE).write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
    return ExportedRun(run_id, len(kept), len(files) - len(kept), len(models))


def _download(run_id: str, path: str, artifacts: Path) -> None:
    # download_artifacts puts `path` under dst as its own relative path
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(_client().download_artifacts(run_id, path, tmp))
        shutil.move(str(local), artifacts / path)


def _export_models(run: mlflow.entities.Run, folder: Path) -> list[str]:
    """Each MLflow logged model the run made: model.json and its artifacts; their IDs."""
    client = _client()
    found = client.search_logged_models([run.info.experiment_id],
                                        filter_string=f"source_run_id = '{run.info.run_id}'")
    ids = []
    for model in found:
        target = folder / model.model_id
        target.mkdir(parents=True)
        with tempfile.TemporaryDirectory() as tmp:
            # the download is a folder named after the location's last part: moved to artifacts/
            local = mlflow.artifacts.download_artifacts(artifact_uri=model.artifact_location, dst_path=tmp)
            shutil.move(local, target / ARTIFACTS_DIR)
        record = {"model_id": model.model_id, "name": model.name, "model_type": model.model_type,
                  "status": str(model.status), "params": dict(model.params or {}), "tags": dict(model.tags or {})}
        (target / MODEL_FILE).write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
        ids.append(model.model_id)
    return ids


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST).write_text(json.dumps({"format": FORMAT, "version": FORMAT_VERSION, **manifest}, indent=1),
                                   encoding="utf-8")


def read_manifest(folder: Path) -> dict:
    """The export's manifest; ConfigError (one line) for a folder that is not an export ofexp can read."""
    path = folder / MANIFEST
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder; pass the folder `ofexp export` wrote")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{folder} has no {MANIFEST}: it is not an `ofexp export` folder; pass one") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} cannot be read as JSON ({str(exc)[:120]}); export the study again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ConfigError(f"{path} is not of format {FORMAT!r}; pass a folder `ofexp export` wrote")
    if manifest.get("version") != FORMAT_VERSION:
        raise ConfigError(f"{folder} is in {FORMAT} version {manifest.get('version')!r}, this ofexp reads version "
                          f"{FORMAT_VERSION}; import it with the ofexp that exported it, or export it again")
    runs = manifest.get("runs")
    if not isinstance(runs, list) or not runs or not all((folder / RUNS_DIR / str(r) / RUN_FILE).is_file() for r in runs):
        raise ConfigError(f"{folder} lacks a {RUNS_DIR}/<ID>/{RUN_FILE} for a run its manifest lists: the export "
                          "is incomplete; copy the whole folder or export again")
    if manifest.get("study_run_id") not in runs or not manifest.get("export_id"):
        raise ConfigError(f"{path} lacks its study run or export ID; export the study again")
    return manifest


class IdRewriter:
    """Replaces each exported run or logged-model ID with the ID its import got, in any text."""

    def __init__(self, mapping: Mapping[str, str]) -> None:
        self.mapping = dict(mapping)
        ids = sorted(self.mapping, key=len, reverse=True)
        # whole IDs only: never the middle of a longer hex string
        alternatives = "|".join(re.escape(i) for i in ids)
        self._pattern = re.compile(f"(?<![0-9a-f])(?:{alternatives})(?![0-9a-f])") if ids else None

    def __call__(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(lambda m: self.mapping[m.group(0)], text)


def find_run_tagged(experiment_ids: list[str], tags: Mapping[str, str]) -> str | None:
    """The ID of an active run in the experiments with every tag of `tags` (an earlier import's study)."""
    if not experiment_ids:
        return None
    query = " AND ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    found = _client().search_runs(experiment_ids, filter_string=query, max_results=1)
    return found[0].info.run_id if found else None


def experiment_for(name: str) -> str:
    """The ID of the experiment `name` in the store, made if it does not exist."""
    client = _client()
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(name)
    if found.lifecycle_stage == "deleted":
        raise ConfigError(f"experiment {name!r} is deleted in {mlflow.get_tracking_uri()}; restore it "
                          "(mlflow experiments restore) or delete it for good, then import again")
    return found.experiment_id


def create_run(record: dict, experiment_id: str) -> str:
    return _client().create_run(experiment_id, start_time=record.get("start_time"),
                                run_name=record.get("run_name")).info.run_id


def fill_run(run_id: str, folder: Path, record: dict, rewrite: IdRewriter, extra_tags: Mapping[str, str]) -> None:
    """Log an exported run's params, tags, metric histories and artifacts to the new run `run_id`."""
    client = _client()
    params = [Param(k, rewrite(v)) for k, v in record["params"].items()]
    # `extra_tags` as they are: they name the exported IDs on purpose
    tags = [RunTag(k, rewrite(v)) for k, v in record["tags"].items() if k not in extra_tags]
    tags += [RunTag(k, v) for k, v in extra_tags.items()]
    values = read_metrics(folder / METRICS_FILE)
    for kind, items in (("params", params), ("tags", tags), ("metrics", values)):
        size = _LOG_BATCH[kind]
        for start in range(0, len(items), size):
            client.log_batch(run_id, **{kind: items[start:start + size]})
    artifacts = folder / ARTIFACTS_DIR
    # git keeps no empty folder: an export that went through a repository lacks a run's empty artifacts/
    if artifacts.is_dir() and any(artifacts.iterdir()):
        hashed = {k[len(TAG_SHA256_PREFIX):] for k in record["tags"] if k.startswith(TAG_SHA256_PREFIX)}
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / ARTIFACTS_DIR
            shutil.copytree(artifacts, staged)
            rewrite_text_files(staged, rewrite, skip=hashed)
            client.log_artifacts(run_id, str(staged))


def read_metrics(path: Path) -> list[Metric]:
    """An exported run's metric history; ConfigError naming the file if it is not one."""
    try:
        metrics = pd.read_csv(path, dtype={"key": str})
        return [Metric(r.key, float(r.value), int(r.timestamp), int(r.step))
                for r in metrics[METRIC_COLUMNS].itertuples()]
    except (OSError, KeyError, ValueError, pd.errors.ParserError) as exc:
        raise ConfigError(f"{path} is not a metric history ({METRIC_COLUMNS}: {' '.join(str(exc).split())[:150]}); "
                          "export the study again") from None


def read_run_record(folder: Path, run_id: str) -> dict:
    """runs/<run_id>/run.json; ConfigError naming the file if it is not a run's record."""
    path = folder / RUNS_DIR / run_id / RUN_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not all(isinstance(record.get(k), dict) for k in ("params", "tags")) or not record.get("experiment_name"):
            raise ValueError("no params, tags or experiment_name")
        return record
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not a run's record ({str(exc)[:150]}); export the study again") from None


def rewrite_text_files(root: Path, rewrite: IdRewriter, skip: Iterable[str] = ()) -> None:
    """Rewrite the IDs in every text file under `root` (by suffix, or named MLmodel), in place."""
    skipped = set(skip)
    for path in root.rglob("*"):
        relative = path.relative_to(root).as_posix()
        if not path.is_file() or relative in skipped or path.stat().st_size > _MAX_REWRITE_BYTES:
            continue
        if path.name != "MLmodel" and not path.name.lower().endswith(TEXT_SUFFIXES):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        new = rewrite(text)
        if new != text:
            path.write_text(new, encoding="utf-8")


def create_models(folder: Path, record: dict, experiment_id: str, run_id: str) -> dict[str, str]:
    """Make the run's logged models (without artifacts yet): {exported model ID: new model ID}."""
    mapping = {}
    for model_id in record.get("logged_models", []):
        model = json.loads((folder / MODELS_DIR / model_id / MODEL_FILE).read_text(encoding="utf-8"))
        created = _client().create_logged_model(experiment_id, name=model["name"], source_run_id=run_id,
                                                model_type=model.get("model_type"))
        mapping[model_id] = created.model_id
    return mapping


def fill_models(folder: Path, record: dict, rewrite: IdRewriter) -> None:
    """Log each logged model's params, tags and artifacts (IDs rewritten) and mark it READY."""
    client = _client()
    for model_id in record.get("logged_models", []):
        source = folder / MODELS_DIR / model_id
        model = json.loads((source / MODEL_FILE).read_text(encoding="utf-8"))
        new_id = rewrite.mapping[model_id]
        if model.get("tags"):
            client.set_logged_model_tags(new_id, {k: rewrite(v) for k, v in model["tags"].items()})
        if model.get("params"):
            client.log_model_params(new_id, {k: rewrite(v) for k, v in model["params"].items()})
        if (source / ARTIFACTS_DIR).is_dir():
            with tempfile.TemporaryDirectory() as tmp:
                staged = Path(tmp) / ARTIFACTS_DIR
                shutil.copytree(source / ARTIFACTS_DIR, staged)
                rewrite_text_files(staged, rewrite)
                client.log_model_artifacts(new_id, str(staged))
        client.finalize_logged_model(new_id, "READY")


def end_run(run_id: str, record: dict) -> None:
    _client().set_terminated(run_id, record.get("status") or "FINISHED", end_time=record.get("end_time"))


def abandon_runs(run_ids: Iterable[str], reason: str, failure_tag: str) -> None:
    """A failed import's runs: marked FAILED with the reason, then deleted (restorable with
    `mlflow runs restore`), so that the import can simply be run again."""
    client = _client()
    for run_id in run_ids:
        try:
            client.set_tag(run_id, failure_tag, reason[:5000])
            client.set_terminated(run_id, "FAILED")
            client.delete_run(run_id)
        except MlflowException:
            pass  # the store that failed the import may fail this too; the error already says why


def check_not_running(runs: Iterable[mlflow.entities.Run]) -> None:
    running = [r.info.run_id for r in runs if r.info.status in ("RUNNING", "SCHEDULED")]
    if running:
        raise RunLookupError(f"run {running[0]} is {len(running) > 1 and f'one of {len(running)} runs ' or ''}still "
                             "RUNNING: wait until it ends, or close it (`ofexp runs --stale --close`), then export")
