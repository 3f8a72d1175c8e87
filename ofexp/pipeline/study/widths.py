"""A study over several widths (`ofexp study --widths 0.25,0.5,1`) and its granulated Kendall τ.

Everything in a study is keyed by (seed, model kind): steps.csv, the step map check, the
seeds' model runs, the tables, the metrics' names. A width study keeps that key and makes
its kinds width-qualified: parent_1 at width 0.5 is the kind `parent_1_w0.5` (`width_kind`),
so each width's models are separate kinds with their own rows, cache keys (the train runs'
`width` param differs) and per-kind correlations over seeds, and `split_width` is the one
place that reads a width back from a kind. The granulated τ (`ofexp.metrics.granulated`)
then groups the models by (kind, seed) and asks whether each measure orders their widths as
the accuracy metric does.
"""
from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import TYPE_CHECKING

import pandas as pd

from ofexp.errors import ConfigError
from ofexp.models.spec import ModelSpec
from ofexp.metrics.granulated import GRANULATED_COLUMNS, PERMUTATIONS, PERMUTATION_SEED, granulated_table, wide_values

if TYPE_CHECKING:
    from ofexp.pipeline.steps.train import TrainConfig

WIDTH_AXIS = "width"
_WIDTH_KIND = re.compile(r"^(?P<kind>.+)_w(?P<width>\d+(?:\.\d+)?(?:e[+-]?\d+)?)$")


def width_label(width: float) -> str:
    """0.25 -> '0.25', 1.0 -> '1': the shortest form that reads back as the same float."""
    return f"{width:g}" if float(f"{width:g}") == width else repr(float(width))


def width_kind(kind: str, width: float | None) -> str:
    """The kind of a width study's model: `parent_1_w0.5`; `kind` itself when the study has one width."""
    return kind if width is None else f"{kind}_w{width_label(width)}"


def split_width(kind: str) -> tuple[str, float | None]:
    """(`parent_1`, 0.5) from `parent_1_w0.5`; (kind, None) for a kind of a one-width study."""
    match = _WIDTH_KIND.match(kind)
    return (match["kind"], float(match["width"])) if match else (kind, None)


def check_widths(widths: tuple[float, ...], train: TrainConfig) -> None:
    """ConfigError, in one line, for --widths a study cannot run: fewer than two, repeated, out of the
    model's range, combined with --width, or for a model that has no width option."""
    shown = ",".join(map(width_label, widths))
    if len(widths) < 2:
        raise ConfigError(f"--widths {shown} lists one width; list two or more (e.g. 0.5,1), or use --width")
    if train.width != 1.0:
        raise ConfigError(f"--width {train.width:g} and --widths {shown} both set the width; pass only one")
    if len({width_label(w) for w in widths}) != len(widths):
        raise ConfigError(f"--widths {shown} lists a width twice; list each once")
    for width in widths:
        try:
            replace(train, width=width)  # a model that takes no --width refuses here
            ModelSpec(arch=train.model, num_classes=2, in_channels=3, input_size=32, width=width)
        except ConfigError as exc:
            reason = str(exc).removeprefix("model spec: ").replace("--width", "--widths")
            raise ConfigError(f"--widths {shown}: {reason}") from None


def granulated_values(long: pd.DataFrame) -> pd.DataFrame | None:
    """Long (model_kind, seed, measure, value) rows with the width split off the kind into its own
    column, or None when the study has fewer than two widths (nothing to granulate)."""
    split = long["model_kind"].map(split_width)
    widths = {w for _, w in split}
    if None in widths or len(widths) < 2:
        return None
    return long.assign(model_kind=[k for k, _ in split], **{WIDTH_AXIS: [w for _, w in split]})


def granulated_width_table(long: pd.DataFrame, target: str) -> pd.DataFrame | None:
    """ψ_width of every measure against `target` (GRANULATED_COLUMNS), or None for a one-width study."""
    values = granulated_values(long)
    if values is None:
        return None
    return granulated_table(wide_values(values, (WIDTH_AXIS,)), target, (WIDTH_AXIS,))


GRANULATED_FILE = "granulated_kendall.csv"


def granulated_metrics(table: pd.DataFrame) -> dict[str, float]:
    """`granulated/<axis>/<measure>` (ψ) and `.../<measure>_p` (its p-value) for every defined row of an axis."""
    out = {}
    for row in table[table["axis"] == WIDTH_AXIS].dropna(subset=["value"]).itertuples():
        out[f"granulated/{row.axis}/{row.measure}"] = float(row.value)
        out[f"granulated/{row.axis}/{row.measure}_p"] = float(row.p_value)
    return out


def granulated_legend(target: str) -> list[str]:
    """What each printed column of the granulated table is."""
    return [f"value: ψ, the mean over groups of Kendall tau-b of the measure with {target} over models that differ "
            "only in width (a group: one model kind and seed)",
            "groups: groups with a tau; skipped: groups where the measure or metric is constant (no tau); "
            "models: models in the counted groups",
            f"p_value: permutation test, each group's measure permuted across its widths ({PERMUTATIONS} draws, "
            f"seed {PERMUTATION_SEED}); two-sided"]


def granulated_view(table: pd.DataFrame) -> tuple[list[str], pd.DataFrame]:
    """What `ofexp report` prints: (lines on rows left out, the rows whose numbers mean something).

    A row whose note says it is not meaningful (too few groups) or undefined is not printed as a
    number; one line per such row says why, and granulated_kendall.csv keeps it."""
    table = table.reindex(columns=GRANULATED_COLUMNS)
    hidden = table["note"].fillna("").str.startswith(("not meaningful", "undefined")) | table["value"].isna()
    lines = [f"{r.measure}: {r.note}" for r in table[hidden].itertuples()]
    shown = table[~hidden]
    view = pd.DataFrame({
        "axis": shown["axis"], "measure": shown["measure"], "value": shown["value"].map(lambda v: f"{round(v, 3) + 0.0:.3f}"),
        "p_value": shown["p_value"].map(lambda p: "nan" if math.isnan(p) else f"{p:.3g}"),
        "groups": shown["groups"].astype(int), "skipped": shown["skipped"].astype(int),
        "models": shown["models"].astype(int),
    })
    return lines, view.reset_index(drop=True)
