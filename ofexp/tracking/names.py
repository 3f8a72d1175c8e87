"""Every tag and param name ofexp writes or reads on MLflow runs, experiments and model versions.

One module, so that a name is spelled once; docs/run-contract.md says what each holds.
MLflow's own tags (`mlflow.*`) are here too, under the names ofexp uses for them.
"""
from __future__ import annotations

# --- MLflow's own tags --------------------------------------------------------------------
TAG_PARENT_RUN = "mlflow.parentRunId"  # the run a nested run belongs to (a study's steps)
TAG_RUN_NAME = "mlflow.runName"
TAG_NOTE = "mlflow.note.content"  # a run's or experiment's description in the UI
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"  # on the experiment

# --- what a run is ------------------------------------------------------------------------
STAGES = ("train", "fuse", "evaluate", "study", "ensemble")
TAG_STAGE = "ofexp.stage"  # one of STAGES
TAG_VERSION = "ofexp.version"
TAG_FAILURE = "ofexp.failure_reason"  # a FAILED or KILLED run's one-line reason
TAG_HOST = "ofexp.host"  # the machine and process that (last) ran the run, to tell a live run
TAG_PID = "ofexp.pid"  # from one killed there
TAG_LOG_MODEL = "ofexp.log_model"  # whether the run logs an MLflow model (not a param: it never changes weights)
TAG_LOGGED_MODEL = "ofexp.logged_model_id"  # the LoggedModel's ID
TAG_REGISTERED = "ofexp.registered_model"  # "<name>/<version>" in the Model Registry
TAG_WARNING_PREFIX = "ofexp.warning."  # + measure name: why its value is missing or doubtful
TAG_WARNINGS = "ofexp.warnings"  # comma-separated names of the measures with a warning tag
TAG_SHA256_PREFIX = "ofexp.sha256."  # + artifact path, e.g. ofexp.sha256.weights/final.pt
# set when a run starts: its writer records a digest for every tensor file, so one missing was deleted
TAG_DIGESTS = "ofexp.digests"
DIGEST_ALGORITHM = "sha256"

# --- lineage ------------------------------------------------------------------------------
TAG_PARENTS = "ofexp.parent_run_ids"  # a fuse or ensemble run's inputs, comma-joined, in order
TAG_MODEL_RUN = "ofexp.model_run_id"  # the run an evaluate run measured
TAG_INIT_FROM = "ofexp.init_from"  # the run whose weights a fine-tuning run started from
TAG_INIT_FROM_STAGE = "ofexp.init_from_stage"  # its stage: train or fuse
TAG_EXTENDS = "ofexp.extends"  # a train run that continues a FINISHED one: that run's ID
TAG_UNFINISHED_INPUTS = "ofexp.unfinished_inputs"  # inputs accepted while not FINISHED
TAG_LAUNCHER = "ofexp.launcher_run_id"  # a second top-level run under `mlflow run`: the run it made
TAG_RUN_ID = "ofexp.run_id"  # on a registered model version: the run that logged it
# tags whose values name other runs: a study's export follows them and its import rewrites them
LINEAGE_TAGS = (TAG_PARENT_RUN, TAG_PARENTS, TAG_MODEL_RUN, TAG_INIT_FROM, TAG_EXTENDS, TAG_LAUNCHER)

# --- export and import (`ofexp export`, `ofexp import`) -----------------------------------
TAG_IMPORTED_FROM = "ofexp.imported_from"  # an imported run: its ID in the store it was exported from
TAG_EXPORT_ID = "ofexp.export_id"  # an imported run: the export folder's ID (a second import is refused)


def parent_tag(i: int) -> str:
    """The tag naming a fuse or ensemble run's i-th input (1-based), beside TAG_PARENTS for the UI."""
    return f"ofexp.parent_{i}"


# --- train runs ---------------------------------------------------------------------------
TAG_EPOCHS = "ofexp.epochs"  # epoch count after `train --resume --epochs N` extended it (params are immutable)
CLAIM_PARAM = "ofexp.claim."  # + n: "<host>:<pid>:<token>" of the n-th process that resumed the run

# --- evaluate runs ------------------------------------------------------------------------
TAG_ACCURACY_METRIC = "ofexp.accuracy_metric"
# + a measure's text detail (metrics.registry.Measure.details), e.g. ofexp.hessian_trace_method
DETAIL_TAG_PREFIX = "ofexp."


def detail_tag(key: str) -> str:
    """The tag holding a measure's text detail `key`, e.g. ofexp.hessian_trace_method."""
    return DETAIL_TAG_PREFIX + key
BUDGET_PARAM_PREFIX = "budget."  # + a σ search budget's field

# --- study runs ---------------------------------------------------------------------------
TAG_KINDS = "ofexp.kinds"  # the model kinds, in the order the study made them
TAG_CACHE = "ofexp.cache"  # whether the study reused finished steps
TAG_JOBS = "ofexp.jobs"  # seeds run at once
TAG_STEP_DIGEST = "ofexp.step_digest"  # a cluster step's identity (entry point, params, version, commit)
TAG_SLURM_JOB = "ofexp.slurm_job_id"
TAG_SLURM_LOG = "ofexp.slurm_log"

# --- under `mlflow run` -------------------------------------------------------------------
RESOLVED_PREFIX = "resolved."  # + param: ofexp's value where the value `mlflow run` logged differs in kind
