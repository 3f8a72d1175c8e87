"""The input format of a network ofexp did not build: data set, image size, channels, pixels.

ofexp's loaders give images resized to `image_size` and normalised by the training
split's channel mean and std. A model logged by other code may expect pixels in
[0, 1] (as ofexp's own served models do) and three channels for grey images;
`ModelInput` says which, and `adapt` turns the loaded splits into that format.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping

import torch
from torch import nn

from ofexp.data.splits import NOT_RECORDED, DataConfig, DataSplits
from ofexp.errors import ConfigError
from ofexp.options import option, option_fields, option_name, option_params

PIXELS = ("unit", "normalized")  # [0, 1]; or standardised by the training split's mean and std
MAX_CHANNELS = 64
DATA_CHANNELS = "data"  # --channels' value, and the run param, for "the data set's own channels"


def _parse_channels(text: str) -> int | None:
    """--channels: a count, or 'data' for the data set's own (how the run param writes "not given")."""
    if text.strip() == DATA_CHANNELS:
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--channels {text[:40]!r} is not a number of channels; pass an integer from 1 to "
                          f"{MAX_CHANNELS}, or leave it out for the data set's own") from None


def _show_channels(channels: int | None) -> str:
    return DATA_CHANNELS if channels is None else str(channels)


@dataclass(frozen=True)
class ModelInput:
    """What a foreign model is fed: `data` loaded as ofexp loads it, then converted as its options say.

    `channels` and `pixels` are option fields (`ofexp.options`): the CLI's `--channels` and
    `--pixels`, the fuse and evaluate runs' params and model_input.json's keys derive from them.
    """

    data: DataConfig
    channels: int | None = option(None, "Models by URI: input channels; 3 repeats a grey image [default: data, "
                                  "the data set's own].", type=str, parse=_parse_channels, show=_show_channels,
                                  metavar="N|data")
    pixels: str = option("unit", "Models by URI: pixel values in [0, 1] (unit), or standardised by the training "
                         "split's mean and std (normalized).", choices=PIXELS)

    def __post_init__(self) -> None:
        if self.pixels not in PIXELS:
            raise ConfigError(f"--pixels {self.pixels!r} is not one of {', '.join(PIXELS)}; pick one of them")
        if self.channels is not None and (isinstance(self.channels, bool) or not isinstance(self.channels, int)
                                          or not 1 <= self.channels <= MAX_CHANNELS):
            raise ConfigError(f"--channels {self.channels!r} is out of range; pass an integer from 1 to "
                              f"{MAX_CHANNELS} (3 repeats a grey image), or leave it out for the data set's own")

    def to_params(self) -> dict[str, str]:
        """The fuse or evaluate run's params: the data's, and this input's options (channels 'data' when not given)."""
        return {**self.data.to_params(), **option_params(self)}

    def to_record(self) -> dict[str, object]:
        """JSON-safe: what a fuse run records beside its model (model_input.json), keyed by option name:
        the data options `DataConfig.to_record` keeps, and this input's options."""
        d = self.data
        data = {option_name(f): getattr(d, f.name) for f in option_fields(DataConfig) if f.name not in NOT_RECORDED}
        return {**data, **{option_name(f): getattr(self, f.name) for f in option_fields(ModelInput)}}

    @classmethod
    def from_record(cls, record: Mapping[str, object], recorded_by: str) -> "ModelInput":
        """The input `to_record` wrote (KeyError, TypeError or ValueError for a record that is not one).
        The data is read where the record says, never downloaded."""
        data = {}
        for f in option_fields(DataConfig):
            if f.name not in NOT_RECORDED:
                value, kind = record[option_name(f)], f.metadata["type"] or type(f.default)
                data[f.name] = kind(value) if kind in (int, float) else value
        own = {f.name: record[option_name(f)] for f in option_fields(cls)}
        return cls(DataConfig(**data, download=False, recorded_by=recorded_by), **own)


def adapt(splits: DataSplits, spec: ModelInput) -> DataSplits:
    """`splits` in the model's format: pixels back in [0, 1] for "unit", and the channels
    repeated to `spec.channels` (only a single channel can be repeated)."""
    have = splits.info.in_channels
    want = spec.channels or have
    if want != have and have != 1:
        raise ConfigError(f"--channels {want}: {splits.info.name} images have {have} channels, and only a grey "
                          f"image can be repeated to more; pass --channels {have}")
    mean = torch.tensor(splits.info.mean).view(1, -1, 1, 1)  # [1, C, 1, 1]
    std = torch.tensor(splits.info.std).view(1, -1, 1, 1)

    def convert(x: torch.Tensor) -> torch.Tensor:  # [n, C, H, W] normalised -> [n, want, H, W]
        if spec.pixels == "unit":
            x = x * std + mean
        return x.expand(-1, want, -1, -1).contiguous() if want != have else x

    info = replace(splits.info, in_channels=want)
    return replace(splits, train_x=convert(splits.train_x), val_x=convert(splits.val_x),
                   test_x=convert(splits.test_x), info=info)


def check_model_input(model: nn.Module, example: torch.Tensor, num_classes: int, *, signature_shape=None,
                      what: str = "the model") -> None:
    """ConfigError in one line, giving the expected and the given shape, when `example`
    [B, C, H, W] does not fit the model's signature, the model does not run on it, or it
    does not return one logit per class."""
    given = list(example.shape[1:])
    if signature_shape is not None:
        expected = list(signature_shape[1:])
        if len(expected) != len(given) or any(e is not None and e != g for e, g in zip(expected, given)):
            shown = ["n" if e is None else e for e in expected]
            raise ConfigError(f"{what} takes inputs of shape [n, {', '.join(map(str, shown))}] (its signature), "
                              f"but the data gives [n, {', '.join(map(str, given))}]; set --image-size and "
                              "--channels to match")
    try:
        with torch.no_grad():
            out = model.eval()(example)
    except Exception as exc:  # a shape mismatch raises RuntimeError, an export guard AssertionError, ...
        first = " ".join(str(exc).split())[:200]
        raise ConfigError(f"{what} does not run on inputs of shape [n, {', '.join(map(str, given))}] ({first}); "
                          "set --image-size and --channels to the input it was trained on") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] != num_classes:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"{what} returns {shape} on a batch of {len(example)}, not [{len(example)}, {num_classes}] "
                          f"logits for the data set's {num_classes} classes; pick the data set it was trained on")
