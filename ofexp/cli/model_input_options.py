"""The input of models given by URI (`--parents runs:/…`): data set, size, channels, pixels."""
from __future__ import annotations

from typing import Callable

import click

from ofexp.cli.options import OPT_INT, OPT_STR, SEED
from ofexp.data import DATASETS, DataConfig
from ofexp.data.model_input import PIXELS, ModelInput


def model_input_options(f: Callable) -> Callable:
    options = [
        click.option("--dataset", "input_dataset", type=click.Choice(DATASETS), default=None,
                     help="Models given by URI: the data set they classify [default: what the ofexp fuse run that "
                          "made the model recorded]. ofexp train runs carry their own."),
        click.option("--data-dir", "input_data_dir", type=OPT_STR, default=None, help="Models by URI: folder of the data."),
        click.option("--image-size", "input_image_size", type=click.INT, default=32, show_default=True,
                     help="Models by URI: side length the images are resized to."),
        click.option("--channels", "input_channels", type=OPT_INT, default=None,
                     help="Models by URI: input channels; 3 repeats a grey image [default: the data set's]."),
        click.option("--pixels", "input_pixels", type=click.Choice(PIXELS), default="unit", show_default=True,
                     help="Models by URI: pixel values in [0, 1] (unit), or standardised by the training split's "
                          "mean and std (normalized)."),
        click.option("--split-seed", "input_split_seed", type=SEED, default=0, show_default=True,
                     help="Models by URI: seed of the train/validation split."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def pop_model_input(kw: dict) -> ModelInput | None:
    """The ModelInput the options name, or None when no --dataset was given."""
    values = {k: kw.pop(k) for k in [k for k in kw if k.startswith("input_")]}
    if values["input_dataset"] is None:
        return None
    data = DataConfig(name=values["input_dataset"], data_dir=values["input_data_dir"],
                      image_size=values["input_image_size"], split_seed=values["input_split_seed"], download=False)
    return ModelInput(data, values["input_channels"], values["input_pixels"])
