"""Checks of settings against the model that run before a command writes anything, so a mistake
never leaves a half-made folder that refuses the corrected command."""

from __future__ import annotations

import math

from torch import nn

from lottery.core.config import ConfigError
from lottery.models.registry import output_layer_name, prunable_names


def check_rate_scale(
    rate_scale: dict[str, float], model: nn.Module, rate: float, flag: str = "--rate-scale"
) -> None:
    """Every `rate_scale` name must be a prunable tensor of `model`, and every multiplier m must
    keep the scaled rate m * `rate` in [0, 1), as the mask engine's `prune` requires."""
    prunable = prunable_names(model)
    for name, m in rate_scale.items():
        if name not in prunable:
            raise ConfigError(
                f"{flag}: {name!r} is not a prunable tensor of this model; "
                f"choose from {', '.join(prunable)}"
            )
        if not (math.isfinite(m) and m >= 0 and m * rate < 1):
            top = f"< {1 / rate:g}" if rate > 0 else "finite"
            raise ConfigError(
                f"{flag}: multiplier {m} for {name!r} must be >= 0 and {top} "
                f"(the scaled rate {m} x {rate:g} must stay in [0, 1))"
            )


def keep_classes(
    rate_scale: dict[str, float], model: nn.Module, granularity: str
) -> dict[str, float]:
    """`rate_scale` with the output layer left unpruned under filter granularity: its rows are
    the classes, and a pruned row would remove a class from the network. A nonzero rate asked for
    it under filter granularity is refused."""
    out = output_layer_name(model)
    if granularity != "filter" or out not in prunable_names(model):
        return rate_scale
    if rate_scale.get(out, 0.0) != 0.0:
        raise ConfigError(
            f"--rate-scale: filter pruning of the output layer {out!r} would remove classes "
            "(its rows are the classes); give it 0 or leave it out"
        )
    return {**rate_scale, out: 0.0}


def check_prune(
    model: nn.Module,
    *,
    rate: float,
    scope: str,
    granularity: str,
    rate_scale: dict[str, float],
    names: list[str] | None = None,
) -> None:
    """One dry prune of `model`'s magnitudes with these settings, so what the network cannot
    take (an N:M pattern that a layer's width does not divide, a rate for a missing tensor) is
    refused before a command writes anything, not at the first pruning after training."""
    from lottery.pruning.maskfile import MaskError
    from lottery.pruning.masks import Mask
    from lottery.pruning.selection import prune

    mask = Mask.ones(model, names)
    params = dict(model.named_parameters())
    scores = {n: params[n].detach().abs() for n in mask.names()}
    try:
        prune(
            mask, scores, sparsity=rate, scope=scope, granularity=granularity, rate_scale=rate_scale
        )
    except MaskError as e:
        raise ConfigError(str(e)) from None
