"""Weight initialisation schemes (docs/design.md §3: small data needs Kaiming init)."""

from __future__ import annotations

from torch import nn

from ofexp.errors import ConfigError

INIT_SCHEMES = ("default", "kaiming")


def init_weights(model: nn.Module, scheme: str) -> None:
    """Re-initialise ``model`` in place.

    Parameters
    ----------
    model : nn.Module
        Any network; only Conv2d, Linear and BatchNorm modules are touched.
    scheme : str
        ``"default"``: keep PyTorch's own initialisation (do nothing).
        ``"kaiming"``: conv weights ~ N(0, 2 / fan_out), linear weights
        ~ N(0, 2 / fan_in), biases 0, batch-norm weight 1 and bias 0.
    """
    if scheme not in INIT_SCHEMES:
        raise ConfigError(f"init scheme {scheme!r} is unknown; use one of {', '.join(INIT_SCHEMES)}")
    if scheme == "default":
        return
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            continue
        else:
            continue
        if m.bias is not None:
            nn.init.zeros_(m.bias)
