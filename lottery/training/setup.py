"""From a configuration to the objects a run needs (data on the device, a seeded model), and back
from a finished run folder to its model and mask."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lottery.core import layout
from lottery.core.config import ConfigError, TrainConfig
from lottery.core.device import resolve_device
from lottery.core.storage import load_checkpoint, read_json
from lottery.datasets.loading import Splits, load_dataset
from lottery.models.registry import build_model
from lottery.pruning.masks import Mask, load_sparse
from lottery.training.runfolder import recorded_config


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


@dataclass
class LoadedRun:
    """A finished run brought back: its configuration, the model with final weights, its mask."""

    cfg: TrainConfig
    model: nn.Module
    mask: Mask | None
    record: dict


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """The model of a finished run (or an IMP round's ticket) with its final weights and mask.

    The architecture comes from the run's own config.json (input shape and classes included), so
    no data is loaded; the weights from weights.npz or checkpoints/final.pt; the mask is applied.
    """
    run = Path(run_dir)
    if (run / layout.TICKET).is_dir() and not layout.is_run(run):
        run = run / layout.TICKET
    if not layout.is_run(run):
        raise ConfigError(f"{run_dir} is not a run folder (no {layout.CONFIG})")
    record = read_json(run / layout.CONFIG)
    cfg = recorded_config(run)
    data = record["data"]
    model = build_model(
        cfg.model,
        tuple(data["input_shape"]),
        data["num_classes"],
        init=cfg.init,
        seed=cfg.init_seed,
        width=cfg.width,
    )
    final = layout.checkpoint_dir(run) / layout.FINAL
    if (run / layout.WEIGHTS).exists():
        state, mask = load_sparse(run / layout.WEIGHTS)
    elif final.exists():
        ck = load_checkpoint(final)
        state, mask = ck["model"], Mask(ck["mask"]) if ck.get("mask") is not None else None
    else:
        raise ConfigError(f"{run} holds no final weights ({layout.WEIGHTS} or {final.name})")
    if (run / layout.MASK).exists():
        mask = Mask.load(run / layout.MASK)
    model.load_state_dict(state)
    if mask is not None:
        mask.apply_(model)
    return LoadedRun(cfg, model.to(device).eval(), mask.to(device) if mask else None, record)
