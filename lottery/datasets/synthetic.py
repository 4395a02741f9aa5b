"""A fixed-seed toy dataset for tests: class prototypes plus Gaussian noise, quick to learn."""

from __future__ import annotations

import math

import torch

from lottery.datasets.spec import DatasetSpec, Raw

_SEED = 1234
_SHAPE = (1, 16, 16)
_SIZES = (2000, 500)
_NOISE = 3.0


def generate() -> Raw:
    """Fixed-seed toy data: class prototypes plus Gaussian noise, unit variance, quick to learn."""
    g = torch.Generator().manual_seed(_SEED)
    prototypes = torch.randn(10, *_SHAPE, generator=g)
    out = []
    for n in _SIZES:
        y = torch.randint(0, 10, (n,), generator=g)
        noise = torch.randn(n, *_SHAPE, generator=g)
        out += [(prototypes[y] + _NOISE * noise) / math.sqrt(1 + _NOISE**2), y]
    return tuple(out)


SYNTHETIC = DatasetSpec(
    title="synthetic",
    num_classes=10,
    mean=(0.0,),
    std=(1.0,),
    augment=False,
    generate=generate,
    val_divisor=5,
)
