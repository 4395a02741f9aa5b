"""The hidden-unit permutations that leave a network's function unchanged, model by model.

Reordering a layer's output units, together with the next layer's matching input axis (and the
BatchNorm that sits between them), computes the same function (Entezari et al., ICLR 2022). Where a
residual connection adds layers' outputs, every layer that writes to that stream must share one
permutation (Ainsworth, Hayase & Srinivasa, "Git Re-Basin", ICLR 2023). A `PermutationSpec` names
each permutable set of units and the state-dict tensors and axes it moves.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from torch import nn

from lottery.models.registry import ResNet20

_LAYERS = (nn.Conv2d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
# Modules a chain may hold between its layers: they act on each unit alone, or (Flatten) keep
# every unit's entries together.
_ELEMENTWISE = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten,
                nn.Identity, nn.Dropout, nn.Sequential)  # fmt: skip
_NORM_TENSORS = ("weight", "bias", "running_mean", "running_var")


@dataclass(frozen=True)
class Axis:
    """One axis of a state-dict tensor that a permutation reorders. `group` consecutive entries
    belong to one unit (a conv channel's H*W positions once the feature map is flattened)."""

    tensor: str
    axis: int
    group: int = 1


@dataclass(frozen=True)
class PermutationSpec:
    """Each permutation's name, its number of units, and the tensor axes it reorders."""

    axes: dict[str, tuple[Axis, ...]]
    sizes: dict[str, int]

    def tensors(self) -> dict[str, list[tuple[str, Axis]]]:
        """For every tensor a permutation touches: (permutation, axis) pairs."""
        out: dict[str, list[tuple[str, Axis]]] = defaultdict(list)
        for perm, axes in self.axes.items():
            for a in axes:
                out[a.tensor].append((perm, a))
        return dict(out)


class NoSymmetryError(ValueError):
    """Raised for a model whose permutation symmetry `permutation_spec` does not know."""


def permutation_spec(model: nn.Module) -> PermutationSpec:
    """The permutation symmetry of a zoo model: ResNet-20 (residual streams shared per stage), or
    any plain chain of conv/linear layers with BatchNorm, ReLU, pooling and flatten between them
    (LeNet, Conv-2/4/6, VGG, the all-conv net)."""
    if isinstance(model, ResNet20):
        return _resnet20(model)
    return _chain(model)


class _Builder:
    """Collects the axes of each permutation as a spec is read off a model."""

    def __init__(self, model: nn.Module) -> None:
        self.state = model.state_dict()
        self.axes: dict[str, list[Axis]] = defaultdict(list)

    def out(self, perm: str, layer: str) -> None:
        """The layer's output units (weight rows and bias)."""
        self.axes[perm].append(Axis(f"{layer}.weight", 0))
        if f"{layer}.bias" in self.state:
            self.axes[perm].append(Axis(f"{layer}.bias", 0))

    def into(self, perm: str, layer: str, group: int = 1) -> None:
        """The layer's input units (weight columns)."""
        self.axes[perm].append(Axis(f"{layer}.weight", 1, group))

    def norm(self, perm: str, layer: str) -> None:
        """A BatchNorm's affine parameters and running statistics."""
        for t in _NORM_TENSORS:
            if f"{layer}.{t}" in self.state:
                self.axes[perm].append(Axis(f"{layer}.{t}", 0))

    def spec(self) -> PermutationSpec:
        sizes = {p: self.state[a[0].tensor].shape[a[0].axis] // a[0].group
                 for p, a in self.axes.items()}  # fmt: skip
        return PermutationSpec({p: tuple(a) for p, a in self.axes.items()}, sizes)


def _chain(model: nn.Module) -> PermutationSpec:
    """Layer i's outputs and layer i+1's inputs share permutation `layer i`'s name."""
    build = _Builder(model)
    previous: tuple[str, nn.Module] | None = None
    for name, module in model.named_modules():
        if isinstance(module, _LAYERS):
            if previous is not None:
                units = _units(previous[1])
                fan_in = module.weight.shape[1]
                if fan_in % units:
                    raise NoSymmetryError(f"{name} reads {fan_in} inputs from {units} units")
                build.into(previous[0], name, fan_in // units)
            if getattr(module, "groups", 1) != 1:
                raise NoSymmetryError(f"{name} is a grouped convolution")
            build.out(name, name)
            previous = (name, module)
        elif isinstance(module, _NORMS):
            if previous is None:
                raise NoSymmetryError(f"{name} normalises the input, before any layer")
            build.norm(previous[0], name)
        elif not (isinstance(module, _ELEMENTWISE) or name == ""):
            raise NoSymmetryError(
                f"no known permutation symmetry for {type(model).__name__}: its {name} "
                f"({type(module).__name__}) is neither a conv, linear, BatchNorm nor elementwise "
                "layer of a plain chain"
            )
    if previous is None:
        raise NoSymmetryError(f"{type(model).__name__} has no conv or linear layer")
    build.axes.pop(previous[0])  # the output layer's units are the classes: never permuted
    return build.spec()


def _units(layer: nn.Module) -> int:
    return layer.weight.shape[0]


def _resnet20(model: ResNet20) -> PermutationSpec:
    """One permutation per residual stream (the stem and the identity blocks after it share one; a
    projection shortcut starts the next) and one inside every block."""
    build = _Builder(model)
    stream = "stream.stem"
    build.out(stream, "conv")
    build.norm(stream, "bn")
    for i, block in enumerate(model.blocks):
        b, inner = f"blocks.{i}", f"blocks.{i}.inner"
        build.into(stream, f"{b}.conv1")
        build.out(inner, f"{b}.conv1")
        build.norm(inner, f"{b}.bn1")
        build.into(inner, f"{b}.conv2")
        if isinstance(block.shortcut, nn.Sequential):  # a projection: a new stream begins here
            build.into(stream, f"{b}.shortcut.0")
            stream = f"stream.{b}"
            build.out(stream, f"{b}.shortcut.0")
            build.norm(stream, f"{b}.shortcut.1")
        build.out(stream, f"{b}.conv2")
        build.norm(stream, f"{b}.bn2")
    build.into(stream, "fc")
    return build.spec()
