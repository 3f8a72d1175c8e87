"""A step's identity, and finding a finished run that already did a step, so a study can reuse it.

`step_identity` is the one definition of "the same step": its stage, its params as MLflow
stores them, the tags that name its upstream runs, and the provenance (the ofexp version
and, where known, the git commit). The local study matches runs on it here; the Slurm
engine tags each step run with it (`ofexp.step_digest`) and matches on the tag.

Locally, the search is a server-side `search_runs` filter; the few candidates it returns
are then checked client-side by their identity, so a run with extra or missing params
never matches.
"""
from __future__ import annotations

import hashlib
import json
from typing import Mapping

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from ofexp.errors import OfexpError
from ofexp.tracking.names import CLAIM_PARAM, TAG_GIT_COMMIT, TAG_STAGE, TAG_VERSION
from ofexp.tracking.runs import base_tags, param_str, tracking_uri

_CANDIDATES = 20  # newest matching runs to check; one exact match is enough


def logged_params(params: Mapping[str, object]) -> dict[str, str]:
    """The params as MLflow stores them when a step logs `params` (lists joined by commas)."""
    return {str(k): param_str(v) for k, v in params.items()}


def step_identity(stage: str, params: Mapping[str, object], tags: Mapping[str, str] | None = None,
                  provenance: Mapping[str, str] | None = None) -> str:
    """What makes a step the same step, as a sha256: `stage`, `params` (as logged), the `tags` that
    must agree (upstream run IDs), and the ofexp version and git commit of `provenance` (a run's
    tags; by default this process's)."""
    made_by = base_tags(stage) if provenance is None else provenance
    identity = {"stage": stage, "params": logged_params(params), "tags": {str(k): str(v) for k, v in (tags or {}).items()},
                "version": made_by.get(TAG_VERSION), "commit": made_by.get(TAG_GIT_COMMIT)}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _quote_value(value: str) -> str | None:
    """A filter-string literal for `value`, or None when MLflow's grammar cannot express it.

    MLflow's filter strings have no escape character: a value with a single quote is
    written in double quotes, and one with both kinds cannot be written at all.
    """
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return None


def _clause(kind: str, key: str, value: str) -> str | None:
    literal = _quote_value(value)
    if literal is None or "`" in key:
        return None  # left to the client-side check
    return f"{kind}.`{key}` = {literal}"  # backticks: keys hold '.', '-', '/'


def cache_filter(stage: str, params: Mapping[str, str], tags: Mapping[str, str]) -> str:
    """The server-side filter string for FINISHED runs of `stage` with these params and tags.

    `tags` are added to the stage's provenance tags (ofexp.stage, ofexp.version, git commit).
    """
    required = {**base_tags(stage), **tags}
    clauses = ["attributes.status = 'FINISHED'"]
    clauses += [c for k, v in required.items() if (c := _clause("tags", k, str(v)))]
    clauses += [c for k, v in params.items() if (c := _clause("params", k, v))]
    return " and ".join(clauses)


def find_finished_run(experiment_id: str, stage: str, params: Mapping[str, object],
                      tags: Mapping[str, str] | None = None) -> Run | None:
    """The newest FINISHED run of `stage` in the experiment that did exactly this step, or None.

    `params` are the step's params before logging (converted as logging converts them);
    `tags` the upstream run IDs (e.g. {"ofexp.parent_run_ids": "A,B"}) and any other tag
    that must agree.
    """
    expected = logged_params(params)
    required = {**base_tags(stage), **(tags or {})}
    query = cache_filter(stage, expected, tags or {})
    try:
        candidates = mlflow.MlflowClient().search_runs(
            [experiment_id], filter_string=query, max_results=_CANDIDATES,
            order_by=["attributes.start_time DESC"],
        )
    except MlflowException as exc:
        raise OfexpError(f"cannot search {tracking_uri()} for a finished {stage} run to reuse: "
                         f"{str(exc).splitlines()[0][:300]}; check the server, or pass --no-cache") from exc
    wanted = step_identity(stage, params, tags)
    for run in candidates:
        found = run.data.tags
        # a resume's claim (runs.claim_run) says who trained it, not what: not part of the step
        done = {k: v for k, v in run.data.params.items() if not k.startswith(CLAIM_PARAM)}
        # the provenance this process knows (no commit outside a git checkout) is what must agree
        made_by = {k: found.get(k) for k in required}
        if step_identity(found.get(TAG_STAGE, ""), done, {k: found.get(k) for k in tags or {}}, made_by) == wanted:
            return run
    return None
