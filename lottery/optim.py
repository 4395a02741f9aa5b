"""Optimizers and learning-rate schedules, as pure functions of the configuration and the step."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from lottery.config import TrainConfig

# OneCycleLR's defaults (Smith & Topin 2019, as in torch.optim.lr_scheduler.OneCycleLR).
ONE_CYCLE_PCT_START = 0.3
ONE_CYCLE_DIV = 25.0
ONE_CYCLE_FINAL_DIV = 1e4


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov, weight decay) or Adam/AdamW over all trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
        )
    kind = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return kind(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """The multiplier of the base LR at each step; a pure function so that any step can be replayed."""
    name, warm = cfg.lr_schedule, cfg.warmup_steps
    milestones = sorted(round(m * total_steps) if m < 1 else int(m) for m in cfg.milestones)

    def cosine(a: float, b: float, t: float) -> float:
        return b + (a - b) * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0))) / 2

    def base(step: int) -> float:
        t = step / max(1, total_steps)
        if name == "constant":
            return 1.0
        if name == "step":
            return cfg.gamma ** sum(step >= m for m in milestones)
        if name == "cosine":
            return cosine(1.0, 0.0, (step - warm) / max(1, total_steps - warm))
        if name == "linear":
            return max(0.0, 1.0 - (step - warm) / max(1, total_steps - warm))
        # one-cycle: cosine up from lr/div to lr, then cosine down to lr/(div*final_div)
        peak = ONE_CYCLE_PCT_START
        lo, end = 1 / ONE_CYCLE_DIV, 1 / (ONE_CYCLE_DIV * ONE_CYCLE_FINAL_DIV)
        if t < peak:
            return cosine(lo, 1.0, t / peak)
        return cosine(1.0, end, (t - peak) / (1 - peak))

    def factor(step: int) -> float:
        f = base(step)
        if warm and name != "one-cycle" and step < warm:
            f *= (step + 1) / warm
        return f

    return factor


def build_scheduler(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int, at_step: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR positioned at `at_step` (so the LR schedule can resume or rewind to any step)."""
    for g in optimizer.param_groups:
        g.setdefault("initial_lr", g["lr"])
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(cfg, total_steps), last_epoch=at_step - 1
    )
