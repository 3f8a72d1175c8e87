"""`ofexp export` and `ofexp import`: a study, its steps and their lineage, moved between tracking stores.

Export takes the study run, every run its steps.csv lists (reused runs of earlier studies
included) and every run their lineage tags name, transitively (a fine-tuning source, a fused
run's parents...), and writes them to a new folder (tracking.transfer's format). Import creates
them anew in the store in use, each in an experiment of its original name, with every run ID
rewritten to its new one, so that `ofexp report` on the imported study gives the original's tables.
"""
from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import mlflow

from ofexp import __version__
from ofexp.errors import ConfigError
from ofexp.pipeline.study.report import study_steps
from ofexp.tracking import queries, transfer
from ofexp.tracking.names import TAG_EXPORT_ID, TAG_FAILURE, TAG_IMPORTED_FROM
from ofexp.tracking.runs import tracking_uri


@dataclass(frozen=True)
class ExportConfig:
    study_run_id: str
    folder: Path
    with_weights: bool = False


@dataclass(frozen=True)
class ExportSummary:
    folder: Path
    runs: int
    artifacts: int
    left_out: int  # tensor files not written (no --with-weights)
    models: int
    missing: tuple[str, ...]  # run IDs lineage tags name that the store no longer has


def check_export_folder(folder: Path) -> None:
    """Refuse a target that exists and is not an empty folder: an export never overwrites."""
    if folder.is_file() or folder.is_symlink():
        raise ConfigError(f"{folder} is a file; pass a new folder for the export")
    if folder.is_dir() and any(folder.iterdir()):
        raise ConfigError(f"{folder} exists and is not empty; export never overwrites: pass a new or empty folder")
    if not folder.parent.is_dir():
        raise ConfigError(f"folder {folder.parent} does not exist; create it or pick another path")


def export_study(cfg: ExportConfig) -> ExportSummary:
    """Write the study, its steps and their lineage to cfg.folder; the folder appears only when complete."""
    check_export_folder(cfg.folder)
    study = queries.get_run_data(cfg.study_run_id, stage="study")
    steps, _ = study_steps(study)
    runs, missing = transfer.lineage_closure([study.run_id, *steps["run_id"]])
    transfer.check_not_running(runs)
    # written beside the target, then renamed: an interrupted export leaves no half folder behind
    staging = cfg.folder.parent / f".{cfg.folder.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        written = [transfer.export_run(run, staging / transfer.RUNS_DIR / run.info.run_id, cfg.with_weights)
                   for run in runs]
        transfer.write_manifest(staging, {
            "export_id": uuid.uuid4().hex, "study_run_id": study.run_id, "study_name": study.name,
            "ofexp_version": __version__, "mlflow_version": mlflow.__version__,
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "with_weights": cfg.with_weights, "runs": [run.info.run_id for run in runs],
            "missing_runs": missing,
        })
        check_export_folder(cfg.folder)  # again: it may have appeared meanwhile
        if cfg.folder.is_dir():
            cfg.folder.rmdir()  # empty (checked): replaced by the complete export
        os.rename(staging, cfg.folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportSummary(cfg.folder, len(written), sum(w.artifacts for w in written), sum(w.left_out for w in written),
                         sum(w.models for w in written), tuple(missing))


def import_study(folder: Path) -> tuple[str, int]:
    """Create the exported runs in the store in use; return the new study run's ID and the run count.

    Refuses (one line) a folder already imported into this store. A failure part-way marks
    the runs made so far FAILED and deletes them, so the import can be run again.
    """
    manifest = transfer.read_manifest(folder)
    export_id = str(manifest.get("export_id", ""))
    earlier = transfer.find_run_tagged(queries.all_experiment_ids(),
                                       {TAG_EXPORT_ID: export_id, TAG_IMPORTED_FROM: manifest["study_run_id"]})
    if earlier:
        raise ConfigError(f"{folder} was imported into {tracking_uri()} already (its study is run {earlier}); "
                          "use that run, or delete its runs to import again")
    records = {run_id: transfer.read_run_record(folder, run_id) for run_id in manifest["runs"]}
    created: dict[str, str] = {}
    try:
        experiments = {r["experiment_name"]: transfer.experiment_for(r["experiment_name"]) for r in records.values()}
        for old, record in records.items():
            created[old] = transfer.create_run(record, experiments[record["experiment_name"]])
        models = {}
        for old, record in records.items():
            models.update(transfer.create_models(folder / transfer.RUNS_DIR / old, record,
                                                 experiments[record["experiment_name"]], created[old]))
        rewrite = transfer.IdRewriter({**created, **models})
        for old, record in records.items():
            source = folder / transfer.RUNS_DIR / old
            transfer.fill_run(created[old], source, record, rewrite, {TAG_IMPORTED_FROM: old, TAG_EXPORT_ID: export_id})
            transfer.fill_models(source, record, rewrite)
            transfer.end_run(created[old], record)
    except BaseException as exc:
        transfer.abandon_runs(created.values(), f"import of {folder} stopped: {' '.join(str(exc).split())[:300]}",
                              TAG_FAILURE)
        raise
    return created[manifest["study_run_id"]], len(created)
