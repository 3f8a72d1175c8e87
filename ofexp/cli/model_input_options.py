"""The input of models given by URI (`--parents runs:/…`): data set, size, channels, pixels."""
from __future__ import annotations

from typing import Callable

from ofexp.cli.options import pop_typed_options, typed_option
from ofexp.data import DataConfig
from ofexp.data.model_input import ModelInput
from ofexp.options import option_fields, option_name

# DataConfig's options as models given by URI read them: under input_* names, with help that says
# so, and no default data set (without --dataset, the input is what the fuse run that made the
# model recorded, model_input.json). ModelInput's own options (--channels, --pixels) are its fields'.
_BY_URI_HELP = {
    "name": "Models given by URI: the data set they classify [default: what the ofexp fuse run that made the "
            "model recorded]. ofexp train runs carry their own.",
    "data_dir": "Models by URI: folder of the data.",
    "image_size": "Models by URI: side length the images are resized to.",
    "split_seed": "Models by URI: seed of the train/validation split.",
}
_PREFIX = "input_"


def _data_option(name: str) -> Callable:
    field = next(f for f in option_fields(DataConfig) if f.name == name)
    default = None if name == "name" else field.default
    return typed_option(field, f"{_PREFIX}{option_name(field)}", _BY_URI_HELP[name], default)


def model_input_options(f: Callable) -> Callable:
    options = [_data_option("name"), _data_option("data_dir"), _data_option("image_size"),
               *(typed_option(field, f"{_PREFIX}{option_name(field)}") for field in option_fields(ModelInput)),
               _data_option("split_seed")]
    for option in reversed(options):
        f = option(f)
    return f


def pop_model_input(kw: dict) -> ModelInput | None:
    """The ModelInput the options name, or None when no --dataset was given."""
    values = {k.removeprefix(_PREFIX): kw.pop(k) for k in [k for k in kw if k.startswith(_PREFIX)]}
    if values["dataset"] is None:
        return None
    given = {field.name: values[option_name(field)] for field in option_fields(DataConfig) if field.name in _BY_URI_HELP}
    data = DataConfig(**given, download=False)  # a model's data is read where it is, never fetched
    return ModelInput(data, **pop_typed_options(ModelInput, values))
