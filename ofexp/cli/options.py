"""Click options shared by several commands, and parameter types for MLproject use.

MLproject parameters carry the options' names with '_' for '-'. An MLproject
cannot pass a bare flag, so every on/off flag also takes a hidden value form
(`--bias-value true`), and optional numbers accept '' for "not given".
"""
from __future__ import annotations

import functools
from typing import Callable

import click

from ofexp.data import DATASETS
from ofexp.models import ARCHITECTURES, ModelName, kwargs_json, parse_kwargs, trust_factory
from ofexp.models.foreign import check_model_name
from ofexp.errors import ConfigError
from ofexp.pipeline.options import check_seed, option_fields, option_name, parse_list, show_value
from ofexp.training import RECIPES


class _Optional(click.ParamType):
    """A number that may be left empty ('' means: take the recipe's value)."""

    def __init__(self, inner: click.ParamType) -> None:
        self.inner = inner
        self.name = f"{inner.name} or ''"

    def convert(self, value, param, ctx):
        if value is None or (isinstance(value, str) and value.strip() == ""):
            return None
        return self.inner.convert(value, param, ctx)


OPT_INT = _Optional(click.INT)
OPT_FLOAT = _Optional(click.FLOAT)
OPT_STR = _Optional(click.STRING)


class _Seed(click.ParamType):
    """An integer that torch takes as a seed (`check_seed`), refused by the option's name where it enters."""

    name = "integer"

    def convert(self, value, param, ctx):
        number = click.INT.convert(value, param, ctx)
        return check_seed(number, param.opts[0] if param is not None else "seed")


SEED = _Seed()


def parse_seeds(text: str) -> tuple[int, ...] | range:
    """--seeds: a count N (seeds 1..N, as a range, so that nothing is allocated before the study's
    size is checked) or a list like 1,2,5 of integers, no empty items.

    StudyConfig checks which seeds are allowed (integers from 1 to STUDY_SEED_MAX, each once).
    """
    text = text.strip()
    fix = "pass a count like 2 or a list like 1,2,5"
    if "," not in text:
        try:
            count = int(text)  # Python reads at most 4300 digits
        except ValueError:
            raise ConfigError(f"--seeds {text[:40]!r} is neither a count nor a list of integers; {fix}") from None
        if count < 1:
            raise ConfigError(f"--seeds must be ≥ 1, got {count}; {fix}")
        return range(1, count + 1)
    return parse_list(text, "--seeds", int, "an integer", fix)


_FLAG_DEFAULTS: dict[str, bool] = {}


def flag(name: str, help: str, default: bool = False) -> Callable:
    """`--name/--no-name`, plus a hidden `--name-value BOOL` for MLproject commands."""
    dest = name.replace("-", "_")
    _FLAG_DEFAULTS[dest] = default

    def decorate(f: Callable) -> Callable:
        f = click.option(f"--{name}-value", f"{dest}_value", type=click.BOOL, default=None, hidden=True)(f)
        return click.option(f"--{name}/--no-{name}", dest, default=None,
                            help=f"{help} [default: {'on' if default else 'off'}]")(f)

    return decorate


def pop_flag(kwargs: dict, dest: str) -> bool:
    """Remove both forms of a flag from a command's kwargs and return its value."""
    given, value_form = kwargs.pop(dest), kwargs.pop(f"{dest}_value")
    if given is not None:
        return given
    return _FLAG_DEFAULTS[dest] if value_form is None else value_form


_CLICK_TYPES = {int: click.INT, float: click.FLOAT, str: click.STRING}


def typed_options(cls: type, exclude: tuple[str, ...] = ()) -> Callable:
    """Click options for the option fields of `cls` (FusionOptions, EvaluateOptions), made from
    their definitions alone: name, default, choices, help."""
    def decorate(f: Callable) -> Callable:
        for field in reversed(option_fields(cls)):
            if field.name in exclude:
                continue
            name, help_ = option_name(field).replace("_", "-"), field.metadata["help"]
            if isinstance(field.default, bool):
                f = flag(name, help_, default=field.default)(f)
            elif field.metadata["choices"]:
                f = click.option(f"--{name}", field.name, type=click.Choice(field.metadata["choices"]),
                                 default=show_value(field, field.default), show_default=True, help=help_)(f)
            elif field.default is None:
                f = click.option(f"--{name}", field.name, type=OPT_STR, default=None, help=help_)(f)
            else:
                f = click.option(f"--{name}", field.name, type=_CLICK_TYPES[type(field.default)],
                                 default=field.default, show_default=True, help=help_)(f)
        return f
    return decorate


def pop_typed_options(cls: type, kwargs: dict, exclude: tuple[str, ...] = ()) -> dict:
    """Remove the options of `cls` from a command's kwargs: {field name: value}, parsed."""
    values = {}
    for field in option_fields(cls):
        if field.name in exclude:
            continue
        if isinstance(field.default, bool):
            values[field.name] = pop_flag(kwargs, field.name)
            continue
        raw, parse = kwargs.pop(field.name), field.metadata["parse"]
        values[field.name] = parse(raw) if parse is not None and raw is not None else raw
    return values


def parse_run_ids(texts: str | tuple[str, ...]) -> tuple[str, ...]:
    """Run IDs given comma-separated and/or as several arguments, blanks dropped (the step's
    config says how many it needs)."""
    parts = [texts] if isinstance(texts, str) else list(texts)
    return tuple(part.strip() for text in parts for part in text.split(",") if part.strip())


def data_options(f: Callable) -> Callable:
    options = [
        click.option("--dataset", type=click.Choice(DATASETS), default="digits", show_default=True,
                     help="Data set; digits ships with scikit-learn, fashion-mnist with Debian's "
                          "dataset-fashion-mnist, cifar10/100 download to --data-dir."),
        click.option("--data-dir", type=OPT_STR, default=None,
                     help="Folder of the data (cifar, fashion-mnist: default ./data; imagefolder: required)."),
        click.option("--val-fraction", type=click.FLOAT, default=0.1, show_default=True,
                     help="Share of the training data held out to pick the best checkpoint."),
        click.option("--split-seed", type=SEED, default=0, show_default=True,
                     help="Seed of the train/validation split (shared by all parents)."),
        click.option("--image-size", type=click.INT, default=32, show_default=True,
                     help="Side length that digits, fashion-mnist and imagefolder images are resized to."),
        flag("download", "Download CIFAR or Fashion-MNIST when it is missing.", default=True),
    ]
    for option in reversed(options):
        f = option(f)
    return f


class _Model(click.ParamType):
    """--model: one of ofexp's architectures, torchvision:<name> or <module>:<function>."""

    name = "model"

    def convert(self, value, param, ctx):
        try:
            check_model_name(str(value).strip())
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)
        return str(value).strip()


MODEL_HELP = (f"{' | '.join(ARCHITECTURES)} | torchvision:<name> (a torchvision classifier, e.g. "
              "torchvision:resnet18) | <module>:<function> (your factory on PYTHONPATH, called with "
              "--model-kwargs and num_classes; naming it here trusts it, docs/commands.md)")


def model_options(f: Callable) -> Callable:
    """--model, --model-kwargs, --width, --bias, --batchnorm. The command gets `model` as a
    `ModelName` that carries the parsed --model-kwargs (so every command that builds a TrainConfig
    from `model` gets them), and `model_kwargs` as canonical JSON ('none' when there are none), the
    form the train run logs, for comparing with a run's params. A factory named with --model is
    trusted (ofexp.models.trust_factory)."""
    @functools.wraps(f)
    def with_model(*args, **kw):
        kwargs = parse_kwargs(kw.get("model_kwargs"))
        kw["model"] = ModelName(kw["model"], kwargs)
        kw["model_kwargs"] = kwargs_json(kwargs) if kwargs else "none"
        trust_factory(kw["model"])
        return f(*args, **kw)

    options = [
        click.option("--model", type=_Model(), default="mlp", show_default=True, help=MODEL_HELP),
        click.option("--model-kwargs", type=click.STRING, default="none", show_default=True, metavar="JSON",
                     help="Keyword arguments of a torchvision or factory model: a JSON object of plain values, "
                          "e.g. '{\"width_mult\": 0.5}', or key=value pairs (width_mult=0.5)."),
        click.option("--width", type=click.FLOAT, default=1.0, show_default=True,
                     help="Channel width multiplier (ofexp's own architectures)."),
        flag("bias", "Biases in every conv and linear layer (ofexp's own architectures)."),
        flag("batchnorm", "Batch-norm after every conv (or hidden linear) layer (ofexp's own architectures)."),
    ]
    decorated = with_model
    for option in reversed(options):
        decorated = option(decorated)
    return decorated


def recipe_options(f: Callable) -> Callable:
    options = [
        click.option("--recipe", type=click.Choice(sorted(RECIPES)), default="default", show_default=True,
                     help="Training preset; 'report' is the original study's CIFAR recipe."),
        click.option("--epochs", type=OPT_INT, default=None, help="Override the recipe's epoch count."),
        click.option("--batch-size", type=OPT_INT, default=None, help="Override the recipe's batch size."),
        click.option("--lr", type=OPT_FLOAT, default=None, help="Override the recipe's learning rate."),
        click.option("--weight-decay", type=OPT_FLOAT, default=None, help="Override the recipe's SGD weight decay."),
        click.option("--init", type=OPT_STR, default=None, help="Override the recipe's init: default or kaiming."),
        click.option("--warmup-epochs", type=OPT_FLOAT, default=None, help="Override the recipe's linear warm-up."),
        click.option("--grad-clip", type=OPT_FLOAT, default=None, help="Override the recipe's grad-norm clip (0 = off)."),
        click.option("--device", default="auto", show_default=True, help="cpu, cuda, mps or auto."),
        flag("log-model", "Also log the final network as an MLflow model.", default=True),
        flag("channels-last", "Train in channels_last (NHWC) memory layout; faster convs on many machines."),
        flag("compile", "torch.compile the network (one-off compile time per run; pays off on long runs)."),
        flag("tf32", "On CUDA, run float32 convs and matmuls in TF32 (faster, lower precision); "
                     "off: IEEE float32."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def register_option(f: Callable) -> Callable:
    # a plain string: an empty name is refused (OPT_STR would read it as "not given")
    return click.option("--register-as", type=click.STRING, default=None, metavar="NAME",
                        help="Register the logged MLflow model in the Model Registry as a new version of NAME, "
                             "with the run and its parent runs on the version.")(f)


def log_model_option(f: Callable) -> Callable:
    return flag("log-model", "Also log the model as an MLflow model (raw images in, logits out).", default=True)(f)


def experiment_option(f: Callable) -> Callable:
    return click.option("--experiment-name", type=OPT_STR, default=None,
                        help="MLflow experiment [default: $MLFLOW_EXPERIMENT_NAME or 'ofexp'].")(f)
