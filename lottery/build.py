"""From a configuration to the objects a run needs: data on the device and a seeded model."""

from __future__ import annotations

from torch import nn

from lottery.config import TrainConfig
from lottery.data import Splits, load_dataset
from lottery.models import build_model
from lottery.trainer import resolve_device


def load_data(cfg: TrainConfig, download: bool = False) -> Splits:
    """The dataset, split and limited as configured, already on the run's device."""
    return load_dataset(
        cfg.dataset,
        cfg.data_root,
        val_size=cfg.val_size,
        split_seed=cfg.split_seed,
        train_limit=cfg.train_limit,
        test_limit=cfg.test_limit,
        device=resolve_device(cfg.device),
        download=download,
    )


def make_model(cfg: TrainConfig, data: Splits, seed: int | None = None) -> nn.Module:
    """The configured architecture for this data, initialised from `seed` (default: init seed)."""
    return build_model(
        cfg.model,
        data.input_shape,
        data.num_classes,
        init=cfg.init,
        seed=cfg.init_seed if seed is None else seed,
        width=cfg.width,
    )
