"""The study's tables, built from its runs' logged values alone.

The study run indexes its steps in one artifact, steps.csv: seed, model kind, stage,
run ID and whether the run was reused (reused runs from earlier studies included,
since they are not its children). From those runs' metrics come:

- results: every logged value as `Model,Space,Metric,Value` rows, per-seed rows
  `Model=<kind>_seed<k>`, then correlation rows `Model=<kind>`,
  `Space=correlation_space`, `Metric=<method>_<measure>`, `nan` when undefined;
  `report_files` writes it as the original study's `results.csv` (one prediction
  row per model, the report's measure names) and `prediction_metrics.csv`;
- summary: mean, std and count over seeds per (model kind, metric);
- correlations: every (method, measure, model kind) coefficient with n, p-value, bootstrap
  95 % interval and note, per model kind and pooled over every model (model_kind "pooled",
  in correlations.csv only: results.csv keeps the original study's per-kind rows);
- granulated (a study over several widths only, `ofexp.pipeline.study.widths`): each measure's
  granulated Kendall τ along width, with its permutation p-value and counts
  (granulated_kendall.csv).

`ofexp study` logs them, and `ofexp report` rebuilds them from the server.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Iterable, Mapping

import pandas as pd

from ofexp.metrics import MEASURES
from ofexp.metrics.correlation import (BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CORRELATION_COLUMNS, MEANINGFUL_N, POOLED,
                                       correlation_table)
from ofexp.errors import ArtifactError, RunLookupError
from ofexp.pipeline.study.step_map import STEPS_FILE, check_step_map
from ofexp.pipeline.study.widths import granulated_width_table, split_width, width_kind, width_label
from ofexp.tracking import queries
from ofexp.tracking.artifacts import read_text_artifact
from ofexp.tracking.names import TAG_KINDS
from ofexp.tracking.queries import RunData

RESULTS_COLUMNS = ["Model", "Space", "Metric", "Value"]
STEP_COLUMNS = ["seed", "kind", "stage", "run_id", "reused"]


@dataclass(frozen=True)
class StudyTables:
    results: pd.DataFrame  # RESULTS_COLUMNS: per-seed rows, then correlation rows
    summary: pd.DataFrame  # index (Kind, Metric); columns mean, std, count
    correlations: pd.DataFrame  # CORRELATION_COLUMNS: method, measure, model_kind, value, n, note, p_value, ci_*
    steps: pd.DataFrame  # STEP_COLUMNS
    granulated: pd.DataFrame | None = None  # GRANULATED_COLUMNS, for a study over several widths


# A study step's run name says seed, model and stage in as few characters as it can: the MLflow
# UI's runs table shows about the first 15 of a nested run's name.
_SHORT_KIND = {"naive_fused": "naive", "geometric_fused": "geometric", "naive_finetuned": "naive+ft",
               "geometric_finetuned": "geo+ft"}
_SHORT_STAGE = {"evaluate": "eval"}


def step_run_name(seed: int, kind: str, stage: str) -> str:
    """A study step's run name, told apart from the seed's others within its first 15 characters:
    "s3 parent_1 train", "s3 geometric fuse", "s3 ensemble", "s3 geo+ft eval"; in a width study
    the width comes second: "s3 w0.5 naive eval"."""
    base, width = split_width(kind)
    short = _SHORT_KIND.get(base, base)
    seed_part = f"s{seed}" if width is None else f"s{seed} w{width_label(width)}"
    return f"{seed_part} {short}" + ("" if stage == base else f" {_SHORT_STAGE.get(stage, stage)}")


def kinds_tag(steps: pd.DataFrame) -> dict[str, str]:
    """The study run's one tag beside steps.csv: the model kinds in the order the study made
    them (`ofexp.kinds`), which its tables and printed result keep."""
    # kinds in evaluation order: a kind made by a train step after the fusions (fine-tuning) keeps its place
    kinds = dict.fromkeys([*steps.loc[steps["stage"] == "evaluate", "kind"], *steps["kind"]])
    return {TAG_KINDS: ",".join(kinds)}


def study_kinds(tags: Mapping[str, str]) -> list[str]:
    """The model kinds a study's tags list (`kinds_tag`), in the study's order."""
    return [kind for kind in tags.get(TAG_KINDS, "").split(",") if kind]


def steps_from_csv(text: str, kinds: Iterable[str] = ()) -> pd.DataFrame:
    """The step table back from a study's steps.csv (its one step map), in the study's order."""
    steps = pd.read_csv(io.StringIO(text), dtype={"run_id": str})
    missing = [c for c in STEP_COLUMNS if c not in steps.columns]
    if missing:
        raise ValueError(f"steps.csv lacks column {missing[0]!r}")
    steps["reused"] = steps["reused"].astype(str).str.lower().eq("true")
    return sort_steps(steps[STEP_COLUMNS], kinds)


def study_steps(study: RunData) -> tuple[pd.DataFrame, dict[str, RunData]]:
    """A study's steps (from its steps.csv) and their runs, read back from the store."""
    try:
        steps = steps_from_csv(read_text_artifact(study.run_id, STEPS_FILE), study_kinds(study.tags))
    except (ArtifactError, ValueError, pd.errors.ParserError) as exc:
        raise RunLookupError(f"study run {study.run_id} has no readable {STEPS_FILE} ({str(exc)[:200]}): it is "
                             "unfinished or was made by an older ofexp; run the study again (finished steps "
                             "are reused)") from None
    runs = queries.runs_by_id(steps["run_id"], [study.experiment_id])
    check_step_map(study, steps, runs)  # an edited map would put one model's values under another's name
    return steps, runs


def sort_steps(steps: pd.DataFrame, kinds: Iterable[str] = ()) -> pd.DataFrame:
    order = {k: i for i, k in enumerate(kinds)}
    stage_order = {"train": 0, "fuse": 1, "ensemble": 1, "evaluate": 2}
    key = steps.assign(_k=steps["kind"].map(lambda k: order.get(k, len(order))),
                       _s=steps["stage"].map(stage_order))
    return key.sort_values(["seed", "_s", "_k", "kind"]).drop(columns=["_k", "_s"]).reset_index(drop=True)


def seed_rows(steps: pd.DataFrame, runs: Mapping[str, RunData]) -> pd.DataFrame:
    """Per-seed results rows from every evaluate step's logged metrics, in MEASURES order."""
    rows = []
    for step in steps[steps["stage"] == "evaluate"].itertuples():
        logged = runs[step.run_id].metrics
        label = f"{step.kind}_seed{step.seed}"
        rows += [(label, m.csv_space, m.name, logged[m.metric_key]) for m in MEASURES.values() if m.metric_key in logged]
    return pd.DataFrame(rows, columns=RESULTS_COLUMNS)


def long_values(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Per-seed results as (model_kind, seed, measure, value) rows, for correlation_table."""
    parts = per_seed["Model"].str.extract(r"^(?P<model_kind>.+)_seed(?P<seed>\d+)$")
    return pd.DataFrame({"model_kind": parts["model_kind"], "seed": parts["seed"].astype(int),
                         "measure": per_seed["Metric"], "value": per_seed["Value"].astype(float)})


def correlation_rows(correlations: pd.DataFrame) -> pd.DataFrame:
    """Correlation rows of results.csv: Model=<kind>, Metric=<method>_<measure>, NaN kept (written 'nan').

    Per model kind only, as the original study's results.csv: the pooled rows are in correlations.csv."""
    correlations = correlations[correlations["model_kind"] != POOLED]
    return pd.DataFrame({
        "Model": correlations["model_kind"], "Space": "correlation_space",
        "Metric": correlations["method"] + "_" + correlations["measure"], "Value": correlations["value"],
    }, columns=RESULTS_COLUMNS)


def summarise(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds of every (model kind, metric)."""
    frame = per_seed.assign(Kind=per_seed["Model"].str.replace(r"_seed\d+$", "", regex=True))
    return frame.groupby(["Kind", "Metric"], sort=False)["Value"].agg(["mean", "std", "count"])


def build_tables(steps: pd.DataFrame, runs: Mapping[str, RunData], accuracy_metric: str) -> StudyTables:
    """All of a study's tables from its steps and their runs (as read back from the store)."""
    per_seed = seed_rows(steps, runs)
    values = long_values(per_seed)
    correlations = correlation_table(values, accuracy_metric)
    correlations = correlations.sort_values(["model_kind", "measure", "method"], kind="stable",
                                            key=_kind_order(per_seed)).reset_index(drop=True)
    results = pd.concat([per_seed, correlation_rows(correlations)], ignore_index=True)
    return StudyTables(results, summarise(per_seed), correlations, steps,
                       granulated_width_table(values, accuracy_metric))


def _kind_order(per_seed: pd.DataFrame):
    # keep model kinds in the order the study made them, measures in MEASURES order
    kinds = list(dict.fromkeys(per_seed["Model"].str.replace(r"_seed\d+$", "", regex=True)))
    measures = list(MEASURES)

    def key(column: pd.Series) -> pd.Series:
        if column.name == "model_kind":
            return column.map(lambda k: kinds.index(k) if k in kinds else len(kinds))
        if column.name == "measure":
            return column.map(lambda m: measures.index(m) if m in measures else len(measures))
        return column

    return key


RESULTS_FILE = "results.csv"
PREDICTION_FILE = "prediction_metrics.csv"


def report_frames(results: pd.DataFrame, accuracy_metric: str) -> dict[str, pd.DataFrame]:
    """`results` split as the original study's reader needs it: {RESULTS_FILE, PREDICTION_FILE}.

    That reader takes each model's one prediction_space row as the metric every other
    measure is correlated with, and knows the input-space measure as `lipschitz_constant`.
    So results.csv holds, per model, exactly one prediction_space row (`accuracy_metric`)
    and the input and parameter measures under their report names, then the correlations
    of those measures; the other prediction values (test loss, training accuracy, ...) go
    to prediction_metrics.csv in the same four columns.
    """
    correlation = results["Space"] == "correlation_space"
    other_prediction = (results["Space"] == "prediction_space") & (results["Metric"] != accuracy_metric)
    names = {m.name: m.report_name for m in MEASURES.values()}
    kept = results[~correlation & ~other_prediction].copy()
    kept["Metric"] = kept["Metric"].map(lambda m: names.get(m, m))
    rows = results[correlation].copy()
    method_measure = rows["Metric"].str.extract(r"^(?P<method>[a-z]+)_(?P<measure>.+)$")
    spaces = {m.name: m.csv_space for m in MEASURES.values()}
    rows = rows[method_measure["measure"].map(spaces) != "prediction_space"]
    method_measure = method_measure.loc[rows.index]
    rows["Metric"] = method_measure["method"] + "_" + method_measure["measure"].map(lambda m: names.get(m, m))
    return {RESULTS_FILE: pd.concat([kept, rows], ignore_index=True),
            PREDICTION_FILE: results[other_prediction].reset_index(drop=True)}


def report_files(results: pd.DataFrame, accuracy_metric: str) -> dict[str, str]:
    """The CSV texts of `report_frames`: no blank cells, undefined values as 'nan' (readable as floats)."""
    return {name: results_csv(frame) for name, frame in report_frames(results, accuracy_metric).items()}


def results_csv(results: pd.DataFrame) -> str:
    """Rows as CSV text: no blank cells, undefined values as 'nan' (readable as floats)."""
    return results.to_csv(index=False, na_rep="nan")


def correlation_notes(correlations: pd.DataFrame) -> list[str]:
    """One line per undefined correlation: '<method>/<measure>/<kind>: <why>'."""
    undefined = correlations[correlations["value"].isna()]
    return [f"{r.method}/{r.measure}/{r.model_kind}: {r.note}" for r in undefined.itertuples()]


def correlation_metrics(correlations: pd.DataFrame) -> dict[str, float]:
    """`corr/<method>/<measure>/<model_kind>` for every defined coefficient (NaN is not a metric)."""
    defined = correlations.dropna(subset=["value"])
    return {f"corr/{r.method}/{r.measure}/{r.model_kind}": float(r.value) for r in defined.itertuples()}


def summary_metrics(summary: pd.DataFrame) -> dict[str, float]:
    """`summary/<metric>/<kind>_mean` and `_std` (std only where 2+ seeds give one)."""
    out = {}
    for (kind, metric), row in summary.iterrows():
        out[f"summary/{metric}/{kind}_mean"] = float(row["mean"])
        if pd.notna(row["std"]):
            out[f"summary/{metric}/{kind}_std"] = float(row["std"])
    return out


GAP = "generalisation_gap"
GAP_PERCENT = "generalisation_gap_pct"
GAP_NOTE = (f"{GAP} is the original study's 1 / |train accuracy - test accuracy| (a reciprocal, so that its "
            f"correlations have accuracy's sign: larger means a smaller gap); {GAP_PERCENT} = 100 / {GAP} is the "
            "gap itself in percentage points of accuracy (52 -> 1.9)")


def with_gap_percent(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Per-seed rows with, after each `generalisation_gap` row g, a `generalisation_gap_pct` row 100 / g
    (|train − test accuracy| in percentage points; g = inf, no gap, gives 0). For printing only."""
    gap = per_seed[per_seed["Metric"] == GAP]
    if gap.empty:
        return per_seed
    derived = gap.assign(Metric=GAP_PERCENT, Value=100.0 / gap["Value"].astype(float))
    derived.index = derived.index + 0.5  # right after its gap row
    return pd.concat([per_seed, derived]).sort_index(kind="stable").reset_index(drop=True)


def correlation_legend(accuracy_metric: str) -> list[str]:
    """What each printed correlation column is."""
    return [f"value: Kendall tau-b, Pearson r or Spearman rho (method) of the measure with {accuracy_metric}",
            "n: (measure, metric) pairs, a kind's seeds, or every kind's seeds for model_kind 'pooled'",
            "p_value: scipy's two-sided p for no association; ci95: percentile bootstrap 95 % interval "
            f"({BOOTSTRAP_RESAMPLES} resamples of the pairs, seed {BOOTSTRAP_SEED})",
            f"note: why a value is undefined (nan) or not meaningful; a positive correlation with {GAP} "
            "goes with a smaller gap"]


def correlation_view(correlations: pd.DataFrame) -> tuple[list[str], pd.DataFrame]:
    """The correlations `ofexp report` prints: (lines on what is left out, the rows with n ≥ 3).

    Rows from fewer than MEANINGFUL_N pairs are ±1 or undefined whatever the data; they stay in
    correlations.csv (with a note) but are not printed as findings: one line says so. The
    table's p_value is shown to 3 significant digits, the interval as ci95 "[low, high]". A
    table from an older correlations.csv (no p_value, ci_low, ci_high) prints with nan there.
    """
    table = correlations.reindex(columns=CORRELATION_COLUMNS)
    small = table["n"] < MEANINGFUL_N
    per_kind = table["model_kind"] != POOLED
    lines = []
    if (small & per_kind).any():
        if small[per_kind].all():
            seeds = int(table.loc[per_kind, "n"].max())
            lines.append(f"per-kind correlations are not meaningful with n < {MEANINGFUL_N} ({seeds} seed(s) with "
                         f"values: each is ±1 or undefined), so they are not printed; correlations.csv keeps "
                         f"them with a note. Run {MEANINGFUL_N} or more seeds.")
        else:
            lines.append(f"{int((small & per_kind).sum())} per-kind rows from fewer than {MEANINGFUL_N} seeds with "
                         "values are not printed (±1 or undefined); correlations.csv keeps them with a note.")
    if (small & ~per_kind).any():
        lines.append(f"pooled rows from fewer than {MEANINGFUL_N} models are not printed either.")
    shown = table[~small]
    interval = [f"[{lo:.2f}, {hi:.2f}]" if pd.notna(lo) else "nan" for lo, hi in zip(shown["ci_low"], shown["ci_high"])]
    view = pd.DataFrame({
        "method": shown["method"], "measure": shown["measure"], "model_kind": shown["model_kind"],
        "value": shown["value"].map(lambda v: f"{v:.3f}"), "n": shown["n"].astype(int),
        "p_value": shown["p_value"].map(lambda p: f"{p:.3g}"), "ci95": interval, "note": shown["note"].fillna(""),
    })
    return lines, view.reset_index(drop=True)


def study_outcome(study_run_id: str) -> str:
    """What a finished study found, for the terminal: per model kind, the accuracy metric's
    mean ± std over seeds and its ratio to the parents' mean, then where to look further."""
    study = queries.get_run_data(study_run_id, stage="study")
    metric = study.params.get("accuracy_metric", "accuracy")
    kinds = study_kinds(study.tags)
    mean = {k: study.metrics.get(f"summary/{metric}/{k}_mean") for k in kinds}
    std = {k: study.metrics.get(f"summary/{metric}/{k}_std") for k in kinds}
    width = max([len(k) for k in kinds] + [10])
    lines = [f"{'model':<{width}}  {metric:<17}  × parents"]
    for kind in kinds:
        if mean[kind] is None:
            continue
        reference = _parents_mean(mean, kind)
        spread = f" ± {std[kind]:.4f}" if std[kind] is not None else ""
        ratio = f"{mean[kind] / reference:.3f}" if reference else "-"
        lines.append(f"{kind:<{width}}  {f'{mean[kind]:.4f}{spread}':<17}  {ratio}")
    seeds = study.params.get("seeds", "?")
    reused = int(study.metrics.get("steps/reused", 0))
    total = reused + int(study.metrics.get("steps/new", 0))
    head = f"study {study_run_id}: seeds {seeds}, {total} steps ({reused} reused); {metric} over seeds:"
    tail = ["", "Look further:",
            f"  ofexp report {study_run_id}   per-seed values, every measure, correlations",
            "  ofexp ui   the runs, their plots and lineage in the MLflow UI"]
    return "\n".join([head, *lines, "(× parents: the mean over seeds, divided by the parents' mean"
                       + (" at the same width)" if any(split_width(k)[1] is not None for k in kinds) else ")"),
                       *tail])


def _parents_mean(mean: Mapping[str, float | None], kind: str) -> float | None:
    """The mean of the two parents' means that `kind` is compared with: those of its own width."""
    width = split_width(kind)[1]
    parents = [mean[p] for p in (width_kind(k, width) for k in ("parent_1", "parent_2")) if mean.get(p) is not None]
    return sum(parents) / len(parents) if parents else None
