"""Click options shared by several commands, and parameter types for MLproject use.

MLproject parameters carry the options' names with '_' for '-'. An MLproject
cannot pass a bare flag, so every on/off flag also takes a hidden value form
(`--bias-value true`), and optional numbers accept '' for "not given".
"""
from __future__ import annotations

import functools
from typing import Callable

import click

from ofexp.data import DataConfig
from ofexp.models import ModelName, kwargs_json, parse_kwargs, trust_factory
from ofexp.models.foreign import check_model_name
from ofexp.errors import ConfigError
from ofexp.options import SEED as SEED_KIND
from ofexp.options import option_choices, option_fields, option_help, option_name, show_value
from ofexp.pipeline.steps.options import check_seed, parse_list
from ofexp.training import RecipeOptions, SpeedOptions


class _OrEmpty(click.ParamType):
    """A value that may be left empty: '' (as MLflow passes an unset parameter) reads as None, the default."""

    def __init__(self, inner: click.ParamType) -> None:
        self.inner = inner
        self.name = f"{inner.name} or ''"

    def convert(self, value, param, ctx):
        if value is None or (isinstance(value, str) and value.strip() == ""):
            return None
        return self.inner.convert(value, param, ctx)


INT_OR_EMPTY = _OrEmpty(click.INT)
FLOAT_OR_EMPTY = _OrEmpty(click.FLOAT)
STR_OR_EMPTY = _OrEmpty(click.STRING)


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
_OPTIONAL_TYPES = {int: INT_OR_EMPTY, float: FLOAT_OR_EMPTY, str: STR_OR_EMPTY}


def _click_type(field) -> click.ParamType:
    if field.metadata["kind"] == SEED_KIND:
        return SEED
    if field.default is None:  # '' reads as "not given" too, which an MLproject needs
        return _OPTIONAL_TYPES[field.metadata["type"] or str]
    return _CLICK_TYPES[type(field.default)]


def typed_options(cls: type, exclude: tuple[str, ...] = ()) -> Callable:
    """Click options for the option fields of `cls` (DataConfig, RecipeOptions, SpeedOptions,
    TrainConfig, FusionOptions, EvaluateOptions), made from their definitions alone: name,
    default, choices, help, type. Each option's value reaches the command under the option's name."""
    def decorate(f: Callable) -> Callable:
        for field in reversed(option_fields(cls)):
            if field.name not in exclude:
                f = typed_option(field)(f)
        return f
    return decorate


_UNSET = object()


def typed_option(field, dest: str | None = None, help: str | None = None, default=_UNSET) -> Callable:
    """The click option of one option field; `dest`, `help` and `default` replace the definition's
    where one command reads the option in its own way (the models-by-URI data options)."""
    name = option_name(field).replace("_", "-")
    dest, help_ = dest or option_name(field), help or option_help(field)
    default = field.default if default is _UNSET else default
    choices = option_choices(field)
    if isinstance(field.default, bool):
        return flag(name, help_, default=default)
    if choices:
        shown = None if default is None else show_value(field, default)
        return click.option(f"--{name}", dest, type=click.Choice(choices), default=shown,
                            show_default=default is not None, help=help_)
    metavar = field.metadata["metavar"]
    if default is None:
        return click.option(f"--{name}", dest, type=_click_type(field), default=None, metavar=metavar, help=help_)
    return click.option(f"--{name}", dest, type=_click_type(field), default=default, show_default=True,
                        metavar=metavar, help=help_)


def pop_typed_options(cls: type, kwargs: dict, exclude: tuple[str, ...] = ()) -> dict:
    """Remove the options of `cls` from a command's kwargs: {field name: value}, parsed."""
    values = {}
    for field in option_fields(cls):
        if field.name in exclude:
            continue
        dest = option_name(field)
        if isinstance(field.default, bool):
            values[field.name] = pop_flag(kwargs, dest)
            continue
        raw, parse = kwargs.pop(dest), field.metadata["parse"]
        values[field.name] = parse(raw) if parse is not None and raw is not None else raw
    return values


def parse_run_ids(texts: str | tuple[str, ...]) -> tuple[str, ...]:
    """Run IDs given comma-separated and/or as several arguments, blanks dropped (the step's
    config says how many it needs)."""
    parts = [texts] if isinstance(texts, str) else list(texts)
    return tuple(part.strip() for text in parts for part in text.split(",") if part.strip())


class _Model(click.ParamType):
    """--model: one of ofexp's architectures, torchvision:<name> or <module>:<function>."""

    name = "model"

    def convert(self, value, param, ctx):
        try:
            check_model_name(str(value).strip())
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)
        return str(value).strip()


# TrainConfig's options that model_options reads in its own way; typed_options makes the others.
MODEL_FIELDS = ("model", "model_kwargs")


def model_options(f: Callable) -> Callable:
    """--model and --model-kwargs, as TrainConfig defines them. The command gets `model` as a
    `ModelName` that carries the parsed --model-kwargs (so every command that builds a TrainConfig
    from `model` gets them), and `model_kwargs` as canonical JSON ('none' when there are none), the
    form the train run logs, for comparing with a run's params. A factory named with --model is
    trusted (ofexp.models.trust_factory)."""
    from ofexp.pipeline.steps.train import TrainConfig

    @functools.wraps(f)
    def with_model(*args, **kw):
        kwargs = parse_kwargs(kw.get("model_kwargs"))
        kw["model"] = ModelName(kw["model"], kwargs)
        kw["model_kwargs"] = kwargs_json(kwargs) if kwargs else "none"
        trust_factory(kw["model"])
        return f(*args, **kw)

    model, model_kwargs = (next(f for f in option_fields(TrainConfig) if f.name == name) for name in MODEL_FIELDS)
    decorated = click.option("--model-kwargs", type=click.STRING, default=show_value(model_kwargs, model_kwargs.default),
                             show_default=True, metavar="JSON", help=option_help(model_kwargs))(with_model)
    return click.option("--model", type=_Model(), default=model.default, show_default=True,
                        help=option_help(model))(decorated)


def train_options(exclude: tuple[str, ...] = ()) -> Callable:
    """Every option of a TrainConfig (but `exclude`): its own, its data's, its recipe's and its speed's."""
    from ofexp.pipeline.steps.train import TrainConfig

    def decorate(f: Callable) -> Callable:
        for cls in (SpeedOptions, RecipeOptions, DataConfig):
            f = typed_options(cls)(f)
        f = typed_options(TrainConfig, exclude=(*MODEL_FIELDS, *exclude))(f)
        return model_options(f)
    return decorate


def pop_train_config(kw: dict, exclude: tuple[str, ...] = ()):
    """The TrainConfig that the options of `train_options(exclude)` give (consumed from kw)."""
    from ofexp.pipeline.steps.train import TrainConfig

    data = DataConfig(**pop_typed_options(DataConfig, kw))
    recipe = RecipeOptions(**pop_typed_options(RecipeOptions, kw)).resolve()
    speed = SpeedOptions(**pop_typed_options(SpeedOptions, kw))
    own = pop_typed_options(TrainConfig, kw, exclude=(*MODEL_FIELDS, *exclude))
    # a ModelName (model_options) carries the parsed kwargs; they are given once more here, which agrees
    kwargs = parse_kwargs(kw.pop("model_kwargs", None))
    return TrainConfig(model=kw.pop("model"), model_kwargs=kwargs, data=data, recipe=recipe, speed=speed, **own)


def register_option(f: Callable) -> Callable:
    # a plain string: an empty name is refused (STR_OR_EMPTY would read it as "not given")
    return click.option("--register-as", type=click.STRING, default=None, metavar="NAME",
                        help="Register the logged MLflow model in the Model Registry as a new version of NAME, "
                             "with the run and its parent runs on the version.")(f)


def log_model_option(f: Callable) -> Callable:
    return flag("log-model", "Also log the model as an MLflow model (raw images in, logits out).", default=True)(f)


def experiment_option(f: Callable) -> Callable:
    return click.option("--experiment-name", type=STR_OR_EMPTY, default=None,
                        help="MLflow experiment [default: $MLFLOW_EXPERIMENT_NAME or 'ofexp'].")(f)


def device_option(where: str) -> Callable:
    """--device (cpu, cuda, mps or auto) for a command whose work on it is `where`: 'the measures run'."""
    return click.option("--device", default="auto", show_default=True, help=f"cpu, cuda, mps or auto: where {where}.")


def allow_unfinished_option(accepted: str, tagged: str) -> Callable:
    """--allow-unfinished for a command that takes `accepted` ('parent runs that are') whatever their
    status, and tags `tagged` ('the fuse runs are') with the tag that says so."""
    return click.option("--allow-unfinished", is_flag=True,
                        help=f"Accept {accepted} not FINISHED (RUNNING, FAILED, KILLED); {tagged} tagged "
                             "ofexp.unfinished_inputs.")
