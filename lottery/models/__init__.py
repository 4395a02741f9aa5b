"""Architectures by name, each with its paper's training and pruning recipe.

`MODELS` imports no torch: a built-in builder (in `lottery.models.registry`) loads on first use,
and each entry's recipe is known without it, so a TrainConfig resolves its paper defaults and the
command line lists names cheaply. A new model is one builder function plus one line in MODELS, or
`register_model` from your own code. `lenet_<h1>[_<h2>...]` (any hidden widths) and torchvision
classifier names are accepted beside the registered ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from lottery.registry import Registry

LENET_NAME = re.compile(r"lenet(_[1-9]\d*)+")


@dataclass(frozen=True)
class Recipe:
    """What a model's paper trained and pruned it with. `training` holds TrainConfig settings
    (what it leaves out takes the generic defaults); the pruning fields are IMP's defaults: the
    fraction of remaining weights per round, its scope, and rate multipliers for the output layer
    (0: unpruned) and, in layer-wise recipes, for convolution weights."""

    init: str
    training: Mapping[str, Any] = field(default_factory=dict)
    prune_fraction: float = 0.2
    prune_scope: str = "layer"
    output_rate: float = 0.5
    conv_rate: float = 1.0
    paper: str = ""


def _small(lr: float, conv_rate: float = 1.0) -> Recipe:
    """LeNet and Conv-2/4/6: Adam, batch 60; layer-wise 20% (fc), conv `conv_rate` of it, output
    half of it (Frankle & Carbin, ICLR 2019)."""
    return Recipe(
        "glorot_normal",
        {"optimizer": "adam", "lr": lr, "batch_size": 60},
        conv_rate=conv_rate,
        paper="Frankle & Carbin, ICLR 2019",
    )


LENET = _small(1.2e-3)
# ResNet-20, VGG and other deep nets: SGD 0.1, momentum 0.9, LR x0.1 at ~51% and ~76% of training
# (32K/48K of 63K iterations), batch 128 (Frankle et al., ICML 2020), weight decay 1e-4 as in
# OpenLTH; IMP prunes 20% globally over the conv layers, output layer unpruned (Frankle & Carbin,
# ICLR 2019, Sec. 4).
DEEP = Recipe(
    "kaiming_normal",
    {
        "optimizer": "sgd",
        "lr": 0.1,
        "batch_size": 128,
        "weight_decay": 1e-4,
        "lr_schedule": "step",
        "milestones": (0.508, 0.762),
    },
    prune_scope="global",
    output_rate=0.0,
    paper="Frankle et al., ICML 2020",
)
TORCHVISION = replace(DEEP, init="default")  # torchvision's own initialisation


def _builtin(builder: str, recipe: Recipe) -> tuple[str, dict[str, Any]]:
    return f"lottery.models.registry:{builder}", {"recipe": recipe}


# name -> builder(input_shape, num_classes, width) -> nn.Module, with its recipe.
MODELS: Registry = Registry(
    "model",
    {
        "lenet_300_100": _builtin("lenet_300_100", LENET),
        "conv2": _builtin("conv2", _small(2e-4, conv_rate=0.5)),
        "conv4": _builtin("conv4", _small(3e-4, conv_rate=0.5)),
        "conv6": _builtin("conv6", _small(3e-4, conv_rate=0.75)),
        "resnet20": _builtin("resnet20", DEEP),
        "vgg11": _builtin("vgg11", DEEP),
        "vgg13": _builtin("vgg13", DEEP),
        "vgg16": _builtin("vgg16", DEEP),
        "vgg19": _builtin("vgg19", DEEP),
        "allconv": _builtin("allconv", DEEP),
    },
)


def register_model(name: str, builder: Callable, recipe: Recipe = TORCHVISION) -> Callable:
    """Make `builder(input_shape, num_classes, width) -> nn.Module` buildable by name everywhere
    (CLI included), trained and pruned by `recipe` unless settings say otherwise."""
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a lottery.models.Recipe, got {type(recipe).__name__}")
    return MODELS.register(name, builder, recipe=recipe)


def is_known(name: str) -> bool:
    """Whether `name` is a registered model or lenet_<h1>[_<h2>...] with positive widths (a
    torchvision name is known only to torchvision, checked when the model is built)."""
    return name in MODELS or LENET_NAME.fullmatch(name) is not None


def recipe(name: str) -> Recipe:
    """The recipe of model `name`: its registry entry's, LeNet's for lenet_<widths>, else the deep
    nets' with torchvision's init (the name itself is checked when the model is built)."""
    if name in MODELS:
        return MODELS.facts(name)["recipe"]
    return LENET if LENET_NAME.fullmatch(name) else TORCHVISION
