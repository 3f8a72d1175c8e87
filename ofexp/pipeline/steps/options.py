"""The options of fusion and of evaluation, each defined once: default, choices, help, check.

An option is a field of `FusionOptions` or `EvaluateOptions` made with `option()`
(`ofexp.options`, which the train, data and recipe options use too). `FuseConfig` and
`EvalConfig` extend these classes and `StudyConfig` carries them. Adding an option is
adding a field here (with its check in `check`) and using it where it is implemented.
See docs/design.md, "One owner per name".
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable

from ofexp.data import registry
from ofexp.errors import ConfigError
from ofexp.fusion import ALIGNMENTS, SOLVERS
from ofexp.fusion.geometric import check_alignment, check_target
from ofexp.fusion.naive import fusion_weights
from ofexp.fusion.transport import check_solver
from ofexp.metrics import PREDICTION_METRICS, resolve_measures
from ofexp.pipeline.steps.fusion_methods import FUSION_METHODS, METHODS
from ofexp.metrics.context import PRESETS, search_budget
from ofexp.metrics.sharpness import WORST_CASES, check_worst_case
from ofexp.options import SEED, option, option_values  # noqa: F401 - option_values: for pipeline.study
from ofexp.training.loop import SHUFFLE_SEED_OFFSET

# Seeds. torch.manual_seed and Generator.manual_seed take -2**63 .. 2**64-1 and read a negative
# seed s as 2**64 + s, so ofexp keeps seeds within int64, where no two seeds alias and where
# MLflow params and pandas columns read them back as integers. Training seeds its shuffle
# generator with seed + SHUFFLE_SEED_OFFSET and a data set's test split may use split seed + its
# seed_offset, so a seed stays that far below int64's top.
SEED_MIN = -2**63
SEED_MAX = 2**63 - 1 - max(SHUFFLE_SEED_OFFSET, registry.seed_headroom())


def check_seed(value: int, option: str) -> int:
    """`value`, or a ConfigError naming `option` when torch could not take it (or its offsets) as a seed."""
    if isinstance(value, bool) or not isinstance(value, int) or not SEED_MIN <= value <= SEED_MAX:
        raise ConfigError(f"{option} {value!r} is outside the seeds torch takes; pass an integer from {SEED_MIN} "
                          f"to {SEED_MAX} (64-bit, less the offset ofexp adds for its other generators)")
    return value


def shown_seeds(seeds) -> str:
    """--seeds as the user gave it, short: a count for a range 1..N, else the list (cut after 60 characters)."""
    if isinstance(seeds, range) and seeds.start == 1 and seeds.step == 1:
        return str(seeds.stop - 1)
    text = ",".join(map(str, seeds[:20]))
    return text if len(text) <= 60 and len(seeds) <= 20 else text[:60] + ",…"
_BOTH = "both"


def parse_list(text: str, option: str, convert: Callable[[str], Any], what: str, fix: str) -> tuple:
    """`text` split at commas, each item `convert`ed; ConfigError naming `option` for an empty or bad item."""
    values = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise ConfigError(f"{option} {_short(text)!r} has an empty item; {fix}")
        try:
            values.append(convert(part))
        except ValueError:  # Python reads at most 4300 digits
            raise ConfigError(f"{option} {_short(text)!r} lists {_short(part)!r}, not {what}; {fix}") from None
    return tuple(values)


def _short(text: str) -> str:
    """`text`, cut to 60 characters for an error line."""
    return text if len(text) <= 60 else text[:57] + "..."


def _float_list(text: str) -> tuple[float, ...]:
    """--fusion-weights: comma-separated numbers, e.g. 0.5,0.5 (`check` says which are allowed)."""
    return parse_list(text, "--fusion-weights", float, "a number", "pass comma-separated numbers like 0.5,0.5")


def _methods(text: str) -> tuple[str, ...]:
    return METHODS if text == _BOTH else (text,)


def _show_methods(methods: tuple[str, ...]) -> str:
    return _BOTH if tuple(methods) == METHODS else ",".join(methods)


@dataclass(frozen=True)
class FusionOptions:
    """How parents are fused (`ofexp fuse`, and every fuse step of `ofexp study`)."""

    methods: tuple[str, ...] = option(METHODS, "; ".join(f"{m.name}: {m.help}" for m in FUSION_METHODS.values())
                                      + "; both: one run each.", name="method",
                                      choices=(*METHODS, _BOTH), parse=_methods, show=_show_methods)
    fusion_weights: tuple[float, ...] | None = option(None, "One weight per parent, e.g. 0.5,0.5 [default: equal].",
                                                      parse=_float_list)
    target: int = option(-1, "Index of the parent the others align to.")
    solver: str = option("exact", "Transport solver: exact (network simplex) or sinkhorn (entropic).",
                         choices=SOLVERS)
    reg: float = option(0.01, "Entropic regulariser for sinkhorn, relative to the largest cost.")
    # Activations align narrow, briefly trained nets far better than weights (docs/fusion.md).
    alignment: str = option("activations", "Neuron similarity for geometric fusion: incoming weights, or "
                            "activations on training samples.", choices=ALIGNMENTS)
    activation_samples: int = option(256, "Training inputs (fixed sample) used by --alignment activations "
                                     "and --repair.")
    activation_seed: int = option(0, "Seed of that fixed sample: another seed probes the parents on other "
                                  "training inputs.", kind=SEED)
    # REPAIR: off by default, since it helps VGG11 and hurts the MLP (docs/fusion.md).
    repair: bool = option(False, "Geometric fusion: rescale every fused neuron to the aligned parents' "
                          "activation mean/std on the activation samples (REPAIR, Jordan et al. 2023).")
    # Averaged running statistics do not describe the fused network's activations (docs/fusion.md).
    recompute_bn: bool = option(True, "Batch-norm networks, naive or geometric fusion: recompute the fused "
                                "network's batch-norm statistics on training images; off: average the parents'.")
    # 3 straight lines of 11 points on the test set; cheap on digits (docs/fusion.md).
    interpolation: bool = option(True, "Log test loss/accuracy at 11 points between the target parent and the "
                                 "other parent (raw, aligned) and the fused net, with barriers and a plot.")
    # Each of the 33 points is a pass over test images (and, with batch-norm, a statistics pass
    # over training images): a fixed sample keeps Fashion-MNIST's curves at seconds.
    curve_samples: int = option(2000, "Interpolation curves' budget: test images per point (fixed sample) and "
                                "training images for batch-norm statistics.")

    def check(self, parents: int) -> None:
        """ConfigError naming the option and the fix, for any value that cannot fuse `parents` networks."""
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ConfigError(f"unknown fusion method {','.join(unknown) or '(none)'}; use {', '.join(METHODS)} or both")
        defaults = {f.name: f.default for f in fields(self)}
        for name in ("activation_samples", "curve_samples"):
            if getattr(self, name) < 2:
                raise ConfigError(f"--{name.replace('_', '-')} must be ≥ 2, got {getattr(self, name)}; pass 2 or "
                                  f"more, e.g. the default {defaults[name]}")
        check_seed(self.activation_seed, "--activation-seed")
        fusion_weights(self.fusion_weights, parents, name="--fusion-weights")
        check_target(self.target, parents, name="--target")
        check_solver(self.solver, self.reg, solver_name="--solver", reg_name="--reg")
        check_alignment(self.alignment, name="--alignment")


@dataclass(frozen=True)
class EvaluateOptions:
    """What an evaluate run measures and how (`ofexp evaluate`, and every evaluate step of `ofexp study`)."""

    measures: str = option("prediction", "Comma-separated measure names, spaces (input, parameter, prediction) "
                           "or 'all'.")
    preset: str = option("report", "σ-search budget: the report's (docs/measures.md), or a tiny one for tests and "
                         "demos (not for results).", choices=tuple(PRESETS))
    sharpness_worst: str = option("max", "Sharpness worst case over the draws: max (Jiang et al. 2019) or min (the "
                                  "report's code).", choices=WORST_CASES)
    accuracy_metric: str = option("accuracy", "Prediction metric the measures are correlated with (always "
                                  "measured).", choices=PREDICTION_METRICS)
    seed: int = option(0, "Seed of the measures' random draws.", kind=SEED)

    def check(self) -> None:
        """ConfigError naming the option and the fix, for a value no evaluate run can take."""
        check_seed(self.seed, "--seed")
        search_budget(self.preset, name="--preset")
        check_worst_case(self.sharpness_worst, name="--sharpness-worst")
        if self.accuracy_metric not in PREDICTION_METRICS:
            raise ConfigError(f"unknown --accuracy-metric {self.accuracy_metric!r}; "
                              f"use one of: {', '.join(PREDICTION_METRICS)}")
        resolve_measures(self.measures)  # a bad name fails here, before any run starts
