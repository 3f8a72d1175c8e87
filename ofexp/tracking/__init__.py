"""The one module of ofexp that talks to MLflow: runs, tags, artifacts, lookups."""
from ofexp.tracking.artifacts import (
    DEFAULT_WEIGHTS,
    MODEL_STAGES,
    ModelRun,
    data_config_to_dict,
    fetch_model_run,
    get_run_checked,
    load_checkpoint_from_run,
    load_model,
    load_spec_from_run,
    load_weights_from_run,
    log_dataset_input,
    log_mlflow_model,
    log_spec,
    log_state_dict,
    log_tensors,
)
from ofexp.tracking.names import STAGES, TAG_FAILURE, TAG_LOGGED_MODEL, TAG_MODEL_RUN, TAG_PARENTS, TAG_STAGE
from ofexp.tracking.runs import (
    active_run_id,
    configure_tracking,
    log_metrics,
    log_text,
    set_description,
    set_tags,
    stage_run,
    tracking_uri,
)
from ofexp.tracking.cache import find_finished_run
from ofexp.tracking.artifacts import check_weights_intact
from ofexp.tracking.integrity import parent_run_ids
from ofexp.tracking import model_uris  # models by MLflow URI: runs:/, models:/
from ofexp.tracking import running_runs  # RUNNING runs and their processes: `ofexp runs`
from ofexp.tracking.queries import RunData, get_run_data, runs_by_id, search

__all__ = [
    "RunData", "check_weights_intact", "model_uris", "find_finished_run", "parent_run_ids", "running_runs", "get_run_data", "runs_by_id", "search",
    "DEFAULT_WEIGHTS", "MODEL_STAGES", "ModelRun", "fetch_model_run", "STAGES", "TAG_FAILURE", "TAG_LOGGED_MODEL", "TAG_MODEL_RUN", "TAG_PARENTS",
    "TAG_STAGE", "active_run_id", "configure_tracking", "log_metrics", "log_text", "set_tags", "data_config_to_dict", "get_run_checked",
    "load_checkpoint_from_run", "load_model", "load_spec_from_run", "load_weights_from_run",
    "log_dataset_input", "log_mlflow_model", "log_spec", "log_state_dict", "log_tensors",
    "set_description", "stage_run", "tracking_uri",
]
