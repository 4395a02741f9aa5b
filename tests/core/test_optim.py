"""lottery.core.optim's optimizers and LR schedule against torch.optim's, bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch

from lottery.core.config import TrainConfig
from lottery.core.optim import build_optimizer, build_scheduler, lr_factor

KINDS = [
    ("sgd", dict(momentum=0.9, nesterov=True, weight_decay=5e-4)),
    ("sgd", dict(momentum=0.0, weight_decay=0.0)),
    ("adam", dict(weight_decay=1e-4)),
    ("adamw", dict(weight_decay=1e-2)),
]


def torch_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The torch.optim optimizer the configuration names, as the toolkit built it before."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)  # fmt: skip
    kind = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return kind(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def train(model, opt, sched, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(16, 6, generator=gen), torch.randint(0, 4, (16,), generator=gen)
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()


def same_state(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for i, entries in a["state"].items():
        assert entries.keys() == b["state"][i].keys()
        for key, v in entries.items():
            assert torch.equal(v, b["state"][i][key]), (i, key)
            assert v.dtype == b["state"][i][key].dtype and v.device == b["state"][i][key].device


@pytest.mark.parametrize("kind,settings", KINDS)
def test_updates_and_state_are_torch_optims_bit_for_bit(kind, settings):
    cfg = TrainConfig(optimizer=kind, lr=0.02, lr_schedule="cosine", warmup_steps=3, **settings)
    ours, theirs = torch.nn.Linear(6, 4), torch.nn.Linear(6, 4)
    theirs.load_state_dict(ours.state_dict())
    o_opt, t_opt = build_optimizer(cfg, ours), torch_optimizer(cfg, theirs)
    o_sched = build_scheduler(cfg, o_opt, 30, at_step=0)
    t_opt.param_groups[0].setdefault("initial_lr", cfg.lr)
    t_sched = torch.optim.lr_scheduler.LambdaLR(t_opt, lr_factor(cfg, 30), last_epoch=-1)
    train(ours, o_opt, o_sched, 12, seed=0)
    train(theirs, t_opt, t_sched, 12, seed=0)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)
    same_state(o_opt.state_dict(), t_opt.state_dict())
    assert o_sched.state_dict()["last_epoch"] == t_sched.state_dict()["last_epoch"] == 12
    assert o_sched.state_dict()["_last_lr"] == t_sched.state_dict()["_last_lr"]


@pytest.mark.parametrize("kind,settings", KINDS)
def test_a_torch_optim_state_resumes_bit_for_bit(kind, settings):
    """A checkpoint written by torch.optim (older runs) continues exactly; ours loads into torch."""
    cfg = TrainConfig(optimizer=kind, lr=0.02, lr_schedule="linear", **settings)
    first = torch.nn.Linear(6, 4)
    t_opt = torch_optimizer(cfg, first)
    t_opt.param_groups[0].setdefault("initial_lr", cfg.lr)
    t_sched = torch.optim.lr_scheduler.LambdaLR(t_opt, lr_factor(cfg, 30), last_epoch=-1)
    train(first, t_opt, t_sched, 5, seed=1)
    ours, theirs = torch.nn.Linear(6, 4), torch.nn.Linear(6, 4)
    for m in (ours, theirs):
        m.load_state_dict(first.state_dict())
    o_opt = build_optimizer(cfg, ours)
    o_opt.load_state_dict(copy.deepcopy(t_opt.state_dict()))  # as read from a checkpoint
    o_sched = build_scheduler(cfg, o_opt, 30, at_step=5)
    o_sched.load_state_dict(copy.deepcopy(t_sched.state_dict()))
    train(ours, o_opt, o_sched, 7, seed=2)
    train(first, t_opt, t_sched, 7, seed=2)
    for a, b in zip(ours.parameters(), first.parameters(), strict=True):
        assert torch.equal(a, b)
    back = torch_optimizer(cfg, theirs)
    back.load_state_dict(copy.deepcopy(o_opt.state_dict()))
    same_state(back.state_dict(), t_opt.state_dict())


def test_schedule_positioned_at_a_step_sets_that_steps_lr():
    cfg = TrainConfig(optimizer="sgd", lr=0.1, lr_schedule="step", milestones=(10,), gamma=0.5)
    opt = build_optimizer(cfg, torch.nn.Linear(2, 2))
    sched = build_scheduler(cfg, opt, 20, at_step=10)
    assert opt.param_groups[0]["lr"] == 0.05 and sched.state_dict()["last_epoch"] == 10
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.05 and sched.state_dict()["last_epoch"] == 11


def test_a_mismatched_state_is_refused():
    cfg = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9)
    opt = build_optimizer(cfg, torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="holds 1 parameters, not 2"):
        opt.load_state_dict({"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]})
