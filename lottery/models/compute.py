"""What a network costs to train and to run, in multiply-accumulates (MACs) of its conv and linear
layers, dense and with only the weights a mask keeps.

Each weight of a conv or linear layer is used once per output position per example, so a layer
costs (weights kept) x (positions) MACs forward. A training step's backward pass costs the same
again for the weight gradients and, except in the layer that reads the data (whose input needs no
gradient), again for the input gradients: 3x forward in all but the first layer, 2x there; what
`torch.utils.flop_counter` counts (at 2 FLOPs per MAC). With a mask, pruned weights need neither
their products nor their gradients (the effective cost a sparse kernel could reach; dense kernels
spend the dense cost). BatchNorm, activations, pooling and biases are left out, as is usual.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from lottery.models.registry import build_model

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class Layer:
    """A conv or linear weight: its entries, the uses of each per example (output positions),
    and whether backward computes its input's gradient."""

    weights: int
    positions: int
    input_grad: bool


def layers(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Layer]:
    """Every conv and linear weight of `model` by name, from one forward pass of one example."""
    found: dict[str, Layer] = {}
    handles = []
    for name, module in model.named_modules():
        if not isinstance(module, _LAYERS):
            continue

        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor, name: str = name) -> None:
            per_example = output.shape[1:].numel()
            positions = per_example // (module.out_channels if hasattr(module, "out_channels")
                                        else module.out_features)  # fmt: skip
            found[f"{name}.weight"] = Layer(
                module.weight.numel(), positions, inputs[0].requires_grad
            )

        handles.append(module.register_forward_hook(hook))
    device = next(model.parameters()).device
    training = model.training
    try:
        with torch.enable_grad():
            model.eval()(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(training)
        for h in handles:
            h.remove()
    return found


@dataclass(frozen=True)
class Profile:
    """A network's conv and linear weights (`layers`) and its number of parameters."""

    layers: dict[str, Layer]
    parameters: int

    def forward(self, kept: dict[str, int] | None = None) -> int:
        return forward_macs(self.layers, kept)

    def training(self, kept: dict[str, int] | None = None, dense_weight_grads: bool = False) -> int:
        return training_macs(self.layers, kept, dense_weight_grads)

    def effective_parameters(self, kept: dict[str, int] | None = None) -> int:
        """Parameters less the weights a mask prunes."""
        kept = kept or {}
        return self.parameters - sum(self.layers[n].weights - k for n, k in kept.items())


@functools.lru_cache(maxsize=16)
def profile(name: str, input_shape: tuple[int, ...], num_classes: int, width: int = 1) -> Profile:
    """The `Profile` of a zoo model (built once per process on the CPU: the meta device would
    spare the memory, but its init kernels load torch's compiler, seconds on a short run)."""
    model = build_model(name, tuple(input_shape), num_classes, width=width)
    return Profile(layers(model, input_shape), sum(p.numel() for p in model.parameters()))


def forward_macs(costs: dict[str, Layer], kept: dict[str, int] | None = None) -> int:
    """MACs of one example's forward pass; `kept` gives a masked layer's surviving weights."""
    kept = kept or {}
    return sum(kept.get(n, c.weights) * c.positions for n, c in costs.items())


def training_macs(
    costs: dict[str, Layer], kept: dict[str, int] | None = None, dense_weight_grads: bool = False
) -> int:
    """MACs of one example's forward and backward pass; with `dense_weight_grads` every weight's
    gradient is computed, kept or not (a supermask trains a score for each)."""
    kept = kept or {}
    total = 0
    for n, c in costs.items():
        k = kept.get(n, c.weights) * c.positions
        total += k * (2 if c.input_grad else 1)  # forward, and the input's gradient
        total += c.weights * c.positions if dense_weight_grads else k
    return total
