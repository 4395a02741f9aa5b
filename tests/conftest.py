"""Shared test settings: tiny, fast, deterministic runs on CPU."""

from __future__ import annotations

import pytest
import torch

from lottery.config import TrainConfig

torch.set_num_threads(2)


def tiny(**changes) -> TrainConfig:
    """A few-second run: a small MLP on the synthetic dataset, CPU, SGD with momentum."""
    base = dict(
        model="lenet_64_32",
        dataset="synthetic",
        steps=60,
        batch_size=32,
        optimizer="sgd",
        lr=0.05,
        momentum=0.9,
        eval_every=20,
        checkpoint_every=20,
        device="cpu",
    )
    return TrainConfig(**{**base, **changes})


@pytest.fixture
def tiny_cfg():
    return tiny
