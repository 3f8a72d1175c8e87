"""The run `mlflow run` made: an entry point's step logs into it (one step, one run).

`mlflow run . -e train` creates a run, logs the entry point's parameters into it
(shell-quoted, as MLflow passes them to the command) and hands its ID to the
command in MLFLOW_RUN_ID. ofexp's first top-level step run in that process
*is* that run: it adds its tags, params, metrics and artifacts to it. A second
top-level run of the same process (`ofexp fuse --method both` makes two) is
logged as a child of it, tagged `ofexp.launcher_run_id`.

MLflow forbids changing a logged param. The MLproject entry points therefore
declare only parameters whose default ofexp logs in the same form; options that
ofexp resolves (a recipe's learning rate, the data folder) are passed only when
given (`-P lr=0.05`, which MLflow appends as `--lr 0.05`). Where a given value
and ofexp's value differ only in spelling (`width=1` and `1.0`, a relative and
an absolute path), the run keeps the spelling given; where they differ in kind
(`measures=all` and the list it resolves to), ofexp logs its value as
`resolved.<name>`. See docs/run-contract.md.
"""
from __future__ import annotations

import math
import os
import shlex
from pathlib import Path
from typing import Mapping

from ofexp.tracking.names import RESOLVED_PREFIX


# Read once at import: the variable must not leak into the processes ofexp starts (a study's
# --jobs workers), which would otherwise all log into the same launcher run.
_launcher_run_id: str | None = os.environ.pop("MLFLOW_RUN_ID", None)
_taken = False


def launcher_run_id() -> str | None:
    """The ID of the run `mlflow run` made for this process, if it runs under `mlflow run`."""
    return _launcher_run_id


def take_launcher_run() -> str | None:
    """The launcher run, for the first top-level step run of this process; None after that or without one."""
    global _taken
    if _launcher_run_id is None or _taken:
        return None
    _taken = True
    return _launcher_run_id


def params_beside_request(requested: Mapping[str, str], resolved: Mapping[str, str]) -> dict[str, str]:
    """The params to log into a run that already holds `requested` (the launcher's), for ofexp's `resolved`.

    A key the request lacks is logged as is; one it holds with the same meaning is
    skipped; one it holds with another meaning goes to `resolved.<key>`.
    """
    out = {}
    for key, value in resolved.items():
        given = requested.get(key)
        if given is None:
            out[key] = value
        elif not same_meaning(given, value):
            out[f"{RESOLVED_PREFIX}{key}"] = value
    return out


def same_meaning(given: str, value: str) -> bool:
    """Whether a value MLflow logged (shell-quoted, as typed) means ofexp's logged `value`."""
    try:
        words = shlex.split(given)
    except ValueError:
        words = [given]
    text = " ".join(words)
    if text == value:
        return True
    if text.lower() in ("true", "false") and value in ("true", "false"):
        return text.lower() == value
    try:
        a, b = float(text), float(value)
        return a == b or (math.isnan(a) and math.isnan(b))
    except ValueError:
        pass
    if os.sep in text or os.sep in value:
        return Path(text).expanduser().resolve() == Path(value).expanduser().resolve()
    return False
