"""Many tickets in one pass: K runs of one architecture trained as one stacked, vmapped model.

A lottery-ticket study trains many small networks (each round's ticket, its controls, several
seeds), and on a GPU such a step is bound by kernel launches. `train_runs(..., batched=True)`
stacks the runs' parameters along a leading dimension and drives them with `torch.func.vmap`
over `functional_call`: one forward, one backward and one optimizer step for all K. The loss is
the sum of each copy's mean loss, so each copy's gradient is its own. One optimizer over stacked
tensors is elementwise the same as K optimizers (SGD with momentum, Nesterov or weight decay;
Adam, AdamW) when the copies share the optimizer's step count and settings, so runs are grouped
into cohorts that agree on those. Each run keeps its own `Trainer` for its records (config.json,
metrics.jsonl, checkpoints, result.json), written as a single run writes them; its checkpoints
resume in either mode. Results match separate runs to float tolerance, not bitwise: a batched
matrix product may round differently from K separate ones.

Resume: every copy refreshes its own last.pt at its checkpoint steps; a rerun restacks the copies
from those and continues bit for bit. Should a crash fall between two copies' writes, the copies
resume in separate cohorts from their own steps, exact to float tolerance. A run's `seconds` is
its share (1/K) of the cohort's wall time, so seconds still add up over a search.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap
from tqdm.auto import tqdm

from lottery import distributed
from lottery.config import ConfigError, TrainConfig
from lottery.data import Splits
from lottery.masks import Mask
from lottery.optim import build_optimizer, build_scheduler
from lottery.trainer import StartState, Trainer, TrainResult, _autocast, compiled

# Optimizer state entries that are one value for all copies (Adam's step count); the rest stack.
SHARED_STATE = frozenset({"step"})


@dataclass
class RunSpec:
    """One run: what `Trainer(cfg, data, model, run_dir, mask=, record=).fit(start)` would train."""

    cfg: TrainConfig
    run_dir: Path
    model: nn.Module
    mask: Mask | None = None
    start: StartState | None = None
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreparedRun:
    """A run whose Trainer has written its config and set up (or resumed) its start state:
    the step it stands at and its best-validation and loss tallies."""

    index: int
    trainer: Trainer
    step: int
    best: dict
    tally: dict


def train_runs(
    specs: Sequence[RunSpec],
    data: Splits,
    *,
    batched: bool = False,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> list[TrainResult]:
    """Train every run, one by one or (`batched`) each cohort as one stacked model; results in order.

    Finished runs return their stored result; interrupted ones resume from their last checkpoint.
    """
    trainers = [
        Trainer(s.cfg, data, s.model, s.run_dir, mask=s.mask, progress=progress,
                record=s.record, on_step=on_step)
        for s in specs
    ]  # fmt: skip
    if not batched:
        return [t.fit(s.start) for t, s in zip(trainers, specs, strict=True)]
    if distributed.world_size() > 1:
        raise ConfigError("batched training runs in one process; do not start it with torchrun")
    results: dict[int, TrainResult] = {}
    cohorts: dict[str, list[PreparedRun]] = {}
    for i, (t, s) in enumerate(zip(trainers, specs, strict=True)):
        if (t.run_dir / "result.json").exists():
            results[i] = t.fit(s.start)
            continue
        step, best, tally = t._prepare(s.start)
        cohorts.setdefault(cohort_key(t, step), []).append(PreparedRun(i, t, step, best, tally))
    for members in cohorts.values():
        if len(members) == 1:  # nothing to stack: the Trainer's own loop, bit for bit
            m = members[0]
            m.trainer._loop(m.step, m.best, m.tally, m.trainer.run_dir / "metrics.jsonl")
            done = [m.trainer._complete(m.best, m.tally)]
        else:
            done = BatchedTrainer(members, progress=progress, on_step=on_step).fit()
        results.update({m.index: r for m, r in zip(members, done, strict=True)})
    return [results[i] for i in range(len(specs))]


def cohort_key(trainer: Trainer, step: int) -> str:
    """What runs must share to train as one stacked model: architecture, every setting except the
    init and data seeds (and which steps to keep), the current step and the optimizer's state."""
    shared = trainer.cfg.replace(init_seed=0, data_seed=0, save_at=()).to_dict()
    shapes = [(n, list(t.shape), str(t.dtype)) for n, t in trainer.model.state_dict().items()]
    parts = [shared, repr(trainer.model), shapes, step, optimizer_signature(trainer.optimizer)]
    return json.dumps(parts, sort_keys=True, default=str)


def optimizer_signature(opt: torch.optim.Optimizer) -> list:
    """Settings (less the LR, which the schedule sets) and step counts of an optimizer.

    A fresh optimizer behaves as one at step 0 with zero momentum and moments, so it matches those.
    """
    sd = opt.state_dict()
    groups = [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in sd["param_groups"]]
    steps = sorted({float(s["step"]) for s in sd["state"].values() if "step" in s})
    return [groups, steps or [0.0]]


class BatchedTrainer:
    """Trains one cohort of prepared runs as one stacked model; records go through each run's Trainer."""

    def __init__(
        self,
        members: list[PreparedRun],
        *,
        progress: bool = True,
        on_step: Callable[[int], None] | None = None,
    ):
        if len({cohort_key(m.trainer, m.step) for m in members}) != 1:
            raise ConfigError("runs trained together must share architecture, settings and step")
        self.members, self.progress, self.on_step = members, progress, on_step
        self.trainers = [m.trainer for m in members]
        lead = self.trainers[0]
        self.cfg, self.device, self.total, self.step = (
            lead.cfg,
            lead.device,
            lead.total,
            members[0].step,
        )
        self.template = lead.model  # functional_call lends it the stacked tensors for each call
        self.names = [n for n, _ in lead.model.named_parameters()]
        self.params = [
            nn.Parameter(
                torch.stack([_params(t)[n].detach() for t in self.trainers]), p.requires_grad
            )
            for n, p in lead.model.named_parameters()
        ]
        self.param_dict = dict(zip(self.names, self.params, strict=True))
        self.buffers = {
            n: torch.stack([dict(t.model.named_buffers())[n] for t in self.trainers])
            for n, _ in lead.model.named_buffers()
        }
        self.optimizer = build_optimizer(self.cfg, nn.ParameterList(self.params))
        self._stack_optimizer_state()
        self.scheduler = build_scheduler(self.cfg, self.optimizer, self.total, at_step=self.step)
        self.masked = self._stacked_masks()
        seeds = [t.cfg.data_seed for t in self.trainers]
        distinct = list(dict.fromkeys(seeds))
        self.streams = [self.trainers[seeds.index(s)].stream for s in distinct]
        self.which = torch.tensor([distinct.index(s) for s in seeds], device=self.device)
        self.identity = distinct == seeds  # every copy its own order: no regrouping needed
        self._epoch, self._perms = -1, torch.empty(0)
        data_dim = None if len(distinct) == 1 else 0  # one batch shared by every copy
        self.loss = compiled(vmap(self._copy_loss, in_dims=(0, 0, data_dim, data_dim)), self.cfg)

    def _copy_loss(
        self, params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        return F.cross_entropy(functional_call(self.template, (params, buffers), (x,)), y)

    def _stack_optimizer_state(self) -> None:
        """Stack the runs' optimizer states; a run without state adds zeros, as a fresh one would."""
        states = [t.optimizer.state_dict() for t in self.trainers]
        stateful = [s for s in states if s["state"]]
        if not stateful:
            return
        own = self.optimizer.state_dict()
        stacked: dict[int, dict[str, Any]] = {}
        for j in sorted({j for s in stateful for j in s["state"]}):
            entries = [s["state"].get(j, {}) for s in states]
            stacked[j] = {}
            for key in dict.fromkeys(k for e in entries for k in e):
                values = [e.get(key) for e in entries]
                ref = next((v for v in values if v is not None), None)
                if ref is None or key in SHARED_STATE or not torch.is_tensor(ref):
                    stacked[j][key] = ref
                else:
                    zeros = torch.zeros_like(ref)
                    stacked[j][key] = torch.stack([zeros if v is None else v for v in values])
        groups = [
            {**g, "params": mine["params"]}
            for g, mine in zip(stateful[0]["param_groups"], own["param_groups"], strict=True)
        ]
        self.optimizer.load_state_dict({"state": stacked, "param_groups": groups})

    def _stacked_masks(self) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        """Masked stacked parameters and their stacked masks (a run without a mask keeps all)."""
        masks = [t.mask for t in self.trainers]
        if all(m is None for m in masks):
            return None
        names = list(dict.fromkeys(n for m in masks if m is not None for n in m.names()))
        params = self.param_dict
        keep = [
            torch.stack(
                [
                    m.tensors[n].to(self.device)
                    if m is not None and n in m.tensors
                    else torch.ones(params[n].shape[1:], dtype=torch.bool, device=self.device)
                    for m in masks
                ]
            )
            for n in names
        ]
        return [params[n] for n in names], [
            torch.empty_like(params[n]).copy_(k) for n, k in zip(names, keep, strict=True)
        ]

    def _batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch `step` of every copy's own data order (a single shared batch if all agree).

        Without augmentation the streams' batches are gathered in one indexing op per tensor,
        from each stream's own epoch order, so they are the very batches `stream.batch` gives.
        """
        if len(self.streams) == 1:
            return self.streams[0].batch(step)
        lead = self.streams[0]
        if lead.augment:
            batches = [s.batch(step) for s in self.streams]
            x = torch.stack([b[0] for b in batches])[self.which]
            return x, torch.stack([b[1] for b in batches])[self.which]
        epoch, within = divmod(step, lead.steps_per_epoch)
        if epoch != self._epoch:
            self._perms = torch.stack([s._permutation(epoch) for s in self.streams])
            self._epoch = epoch
        start = within * lead.batch_size
        idx = self._perms[:, start : start + lead.batch_size]
        idx = idx if self.identity else idx[self.which]
        return lead.x[idx], lead.y[idx]

    def fit(self) -> list[TrainResult]:
        """Train to the end, writing each run's metrics and checkpoints on its own schedule."""
        self._loop()
        self._sync()
        return [m.trainer._complete(m.best, m.tally) for m in self.members]

    def _loop(self) -> None:
        """The hot loop: K batches, one vmapped forward/backward, one optimizer step, one mask multiply."""
        opt, sched, loss_fn, params = self.optimizer, self.scheduler, self.loss, self.param_dict
        lead, k = self.trainers[0], len(self.trainers)
        save_at = [set(t.cfg.save_at) for t in self.trainers]
        any_save = set().union(*save_at)
        graphs = bool(self.cfg.extra.get("cuda_graphs"))
        self.template.train()
        loss_sum = torch.zeros(k, device=self.device)
        count, t0 = 0, time.perf_counter()
        bar = tqdm(
            total=self.total,
            initial=self.step,
            disable=not self.progress,
            desc=f"{k} runs batched",
            leave=False,
            mininterval=0.5,
        )
        for s in range(self.step, self.total):
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            x, y = self._batch(s)
            with _autocast(self.device, self.cfg.bf16):
                losses = loss_fn(params, self.buffers, x, y)
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            opt.step()
            sched.step()
            if self.masked is not None:
                with torch.no_grad():
                    torch._foreach_mul_(self.masked[0], self.masked[1])
            loss_sum += losses.detach()
            count += 1
            bar.update(1)
            done = s + 1
            eval_due = done % lead.eval_every == 0 or done == self.total
            ckpt_due = done % lead.ckpt_every == 0
            if eval_due or ckpt_due or done in any_save:
                seconds = (time.perf_counter() - t0) / k  # each run's share of the shared steps
                sums = loss_sum.tolist()
                for m, total in zip(self.members, sums, strict=True):
                    m.tally["loss_sum"] += total
                    m.tally["count"] += count
                    m.tally["seconds"] += seconds
                loss_sum.zero_()
                count = 0
                self._sync()
                for m, keep in zip(self.members, save_at, strict=True):
                    t = m.trainer
                    if eval_due:
                        t._evaluate(done, m.best, m.tally, t.run_dir / "metrics.jsonl")
                    if ckpt_due or done in keep:
                        t._checkpoint(done, m.best, m.tally)
                t0 = time.perf_counter()
            if self.on_step is not None:
                self.on_step(done)
        bar.close()

    @torch.no_grad()
    def _sync(self) -> None:
        """Copy each copy's weights, buffers, optimizer state and schedule into its own Trainer."""
        stacked_params = [p for g in self.optimizer.param_groups for p in g["params"]]
        for i, t in enumerate(self.trainers):
            own = _params(t)
            for n, p in self.param_dict.items():
                own[n].copy_(p[i])
            buffers = dict(t.model.named_buffers())
            for n, b in self.buffers.items():
                buffers[n].copy_(b[i])
            member_params = [p for g in t.optimizer.param_groups for p in g["params"]]
            for sp, mp in zip(stacked_params, member_params, strict=True):
                state = self.optimizer.state.get(sp)
                if state:
                    t.optimizer.state[mp] = {key: _slice(key, v, i) for key, v in state.items()}
            for mine, shared in zip(
                t.optimizer.param_groups, self.optimizer.param_groups, strict=True
            ):
                mine.update({key: v for key, v in shared.items() if key != "params"})
            t.scheduler.load_state_dict(self.scheduler.state_dict())


def _params(trainer: Trainer) -> dict[str, nn.Parameter]:
    return dict(trainer.model.named_parameters())


def _slice(key: str, value: Any, i: int) -> Any:
    """Copy i's part of one stacked optimizer-state entry."""
    if not torch.is_tensor(value):
        return value
    return value.clone() if key in SHARED_STATE else value[i].clone()
