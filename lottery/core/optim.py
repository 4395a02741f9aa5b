"""Optimizers and learning-rate schedules, as pure functions of the configuration and the step.

`Optimizer` is SGD (momentum, Nesterov, weight decay), Adam or AdamW stepped by torch's own
functional kernels (`torch.optim.sgd.sgd`, `torch.optim.adam.adam`), so every update is bit-for-bit
torch.optim's, and its `state_dict()` has torch.optim's layout (checkpoints load either way). It
exists because every method of a `torch.optim.Optimizer` imports `torch._dynamo` on first call,
1-2 s that would be most of a short command's start-up. `LRSchedule` is `LambdaLR`'s behaviour
without its optimizer type check: each group's LR is its initial LR times `lr_factor(step)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.adam import adam
from torch.optim.sgd import sgd

from lottery.core.config import TrainConfig

# OneCycleLR's defaults (Smith & Topin 2019, as in torch.optim.lr_scheduler.OneCycleLR).
ONE_CYCLE_PCT_START = 0.3
ONE_CYCLE_DIV = 25.0
ONE_CYCLE_FINAL_DIV = 1e4


class Optimizer:
    """One parameter group under SGD or Adam/AdamW, with torch.optim's update, state and layout.

    `settings` are torch.optim's group entries (SGD: lr, momentum, dampening, weight_decay,
    nesterov, ...; Adam: lr, betas, eps, weight_decay, amsgrad, decoupled_weight_decay, ...).
    """

    def __init__(self, kind: str, params: Iterable[torch.Tensor], settings: dict[str, Any]):
        self.kind = kind
        self.param_groups = [{**settings, "params": list(params)}]
        self.state: dict[torch.Tensor, dict[str, Any]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.param_groups[0]["params"]:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient (state created on first use)."""
        g = self.param_groups[0]
        params = [p for p in g["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        if self.kind == "sgd":
            buffers = [self.state.get(p, {}).get("momentum_buffer") for p in params]
            sgd(
                params,
                grads,
                buffers,
                has_sparse_grad=any(d.is_sparse for d in grads),
                foreach=g["foreach"],
                fused=g["fused"],
                weight_decay=g["weight_decay"],
                momentum=g["momentum"],
                lr=g["lr"],
                dampening=g["dampening"],
                nesterov=g["nesterov"],
                maximize=g["maximize"],
            )
            if g["momentum"] != 0:
                for p, buf in zip(params, buffers, strict=True):
                    self.state.setdefault(p, {})["momentum_buffer"] = buf
            return
        states = [self.state.get(p) or self._adam_state(p) for p in params]
        beta1, beta2 = g["betas"]
        adam(
            params,
            grads,
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [s["max_exp_avg_sq"] for s in states] if g["amsgrad"] else [],
            [s["step"] for s in states],
            foreach=g["foreach"],
            capturable=g["capturable"],
            differentiable=g["differentiable"],
            fused=g["fused"],
            has_complex=any(torch.is_complex(p) for p in params),
            decoupled_weight_decay=g["decoupled_weight_decay"],
            amsgrad=g["amsgrad"],
            beta1=beta1,
            beta2=beta2,
            lr=g["lr"],
            weight_decay=g["weight_decay"],
            eps=g["eps"],
            maximize=g["maximize"],
        )

    def _adam_state(self, p: torch.Tensor) -> dict[str, Any]:
        """Fresh moments, and a step count kept on the CPU as torch.optim.Adam keeps it."""
        scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
        state = self.state[p] = {}
        state["step"] = torch.tensor(0.0, dtype=scalar)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if self.param_groups[0]["amsgrad"]:
            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's layout: state by parameter index, groups with parameter indices."""
        params = self.param_groups[0]["params"]
        index = {id(p): i for i, p in enumerate(params)}
        groups = [{k: v for k, v in self.param_groups[0].items() if k != "params"}]
        groups[0]["params"] = list(range(len(params)))
        return {"state": {index[id(p)]: s for p, s in self.state.items()}, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take a state in torch.optim's layout (ours or torch's): settings, then tensors moved to
        each parameter's device (floating ones to its dtype; Adam's step count stays)."""
        (group,) = state_dict["param_groups"]
        params = self.param_groups[0]["params"]
        if len(group["params"]) != len(params):
            raise ValueError(
                f"the optimizer state holds {len(group['params'])} parameters, not {len(params)}"
            )
        self.param_groups = [{**self.param_groups[0], **group, "params": params}]
        by_index = dict(zip(group["params"], params, strict=True))
        self.state = {}
        for i, entries in state_dict["state"].items():
            p = by_index[int(i)]
            self.state[p] = {k: _placed(k, v, p) for k, v in entries.items()}


def _placed(key: str, value: Any, p: torch.Tensor) -> Any:
    if not torch.is_tensor(value) or key == "step":
        return value
    if p.is_floating_point():
        return value.to(dtype=p.dtype, device=p.device)
    return value.to(device=p.device)


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> Optimizer:
    """SGD (momentum, Nesterov, weight decay) or Adam/AdamW over all trainable parameters, with
    torch.optim's defaults for every setting the configuration does not name."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        settings = {
            "lr": cfg.lr,
            "momentum": cfg.momentum,
            "dampening": 0,
            "weight_decay": cfg.weight_decay,
            "nesterov": cfg.nesterov,
            "maximize": False,
            "foreach": None,
            "differentiable": False,
            "fused": None,
        }
        return Optimizer("sgd", params, settings)
    settings = {
        "lr": cfg.lr,
        "betas": cfg.betas,
        "eps": 1e-8,
        "weight_decay": cfg.weight_decay,
        "amsgrad": False,
        "maximize": False,
        "foreach": None,
        "capturable": False,
        "differentiable": False,
        "fused": None,
        "decoupled_weight_decay": cfg.optimizer == "adamw",
    }
    return Optimizer("adam", params, settings)


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


class LRSchedule:
    """Each group's LR is its initial LR times `factor(step)`, set after every step; positioned at
    `at_step` on creation (resume or rewind to any step), as `LambdaLR(last_epoch=at_step - 1)`."""

    def __init__(self, optimizer: Optimizer, factor: Callable[[int], float], at_step: int = 0):
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self.optimizer, self.factor = optimizer, factor
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch = at_step - 1
        self.step()

    def step(self) -> None:
        self.last_epoch += 1
        for g, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            g["lr"] = base * self.factor(self.last_epoch)

    def state_dict(self) -> dict[str, Any]:
        """The position and base LRs (the keys LambdaLR's state shares, so either loads)."""
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        return {"base_lrs": list(self.base_lrs), "last_epoch": self.last_epoch, "_last_lr": lrs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_lrs, self.last_epoch = list(state["base_lrs"]), state["last_epoch"]


def build_scheduler(
    cfg: TrainConfig, optimizer: Optimizer, total_steps: int, at_step: int = 0
) -> LRSchedule:
    """The configured LR schedule positioned at `at_step`."""
    return LRSchedule(optimizer, lr_factor(cfg, total_steps), at_step)
