"""The copies that one engine step trains: one plain module (K = 1) or K stacked ones (K > 1).

`StackedCopies` stacks K runs' parameters along a leading dimension and drives them with
`torch.func.vmap` over `functional_call`: one forward, backward and optimizer step for all K (on a
GPU small steps are bound by kernel launches). The loss is the sum of each copy's mean loss, so
each copy's gradient is its own; one optimizer over stacked tensors is elementwise K optimizers
(SGD with momentum, Nesterov or weight decay; Adam, AdamW) when the copies share its step count
and settings. Results match separate runs to float tolerance (batched products round otherwise).
Both kinds offer the engine a batch, the losses, a copy's tracked tensors, new mask and state,
and the evaluation of every copy. On CPU, stacked convolutions (vmap groups them) run slower than
K separate ones, so batching pays there for fully connected nets only.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from logging import getLogger
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap
from torch.nn.parallel import DistributedDataParallel

from lottery.core import distributed
from lottery.core.device import autocast, compiled, eval_batch_size
from lottery.core.optim import build_optimizer, build_scheduler
from lottery.pruning.masks import Mask
from lottery.training.run import Run

# Optimizer state entries that are one value for all copies (Adam's step count); the rest stack.
SHARED_STATE = frozenset({"step"})


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int | None = None,
    bf16: bool = False,
    sharded: bool = False,
    workers: int = 1,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over (x, y), one host sync at the end; batches of
    `batch_size` (default: the largest that fits, `lottery.core.device.eval_batch_size`).

    `sharded`: in a data-parallel run each rank scores its own slice and the sums are all-reduced.
    `workers` > 1 scores batches on that many threads (CPU cores a run leaves idle); their sums
    are added in batch order, so the result is bit for bit the one-thread one.
    """
    n = len(x)
    if n == 0:
        return float("nan"), float("nan")
    batch_size = batch_size or eval_batch_size(model, tuple(x.shape[1:]), x.device)
    if sharded:
        x, y = distributed.shard(x), distributed.shard(y)
    was_training = model.training
    model.eval()
    loss = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)

    def part(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        with torch.no_grad(), autocast(x.device, bf16):  # both are per thread
            out = model(xb)
        return F.cross_entropy(out.float(), yb, reduction="sum"), (out.argmax(1) == yb).sum()

    starts = range(0, len(x), batch_size)
    if workers > 1:
        with ThreadPoolExecutor(workers, thread_name_prefix="lottery-eval") as pool:
            parts = list(pool.map(part, starts))
    else:
        parts = map(part, starts)
    for batch_loss, batch_correct in parts:
        loss += batch_loss
        correct += batch_correct
    model.train(was_training)
    if sharded:
        loss, correct = distributed.all_reduce_sum(torch.stack([loss.double(), correct.double()]))
    return float(loss) / n, float(correct) / n


def float_masks(
    params: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
    """Masked parameters and same-dtype float masks, for the fused in-place multiply per step."""
    if not masks:
        return None
    names = list(masks)
    return [params[n] for n in names], [torch.empty_like(params[n]).copy_(masks[n]) for n in names]


class SingleCopy:
    """K = 1: the run's own module (under torchrun wrapped in DDP), optimizer and LR schedule."""

    def __init__(self, run: Run, start_step: int, start_optimizer: dict | None):
        self.runs, self.model, cfg = [run], run.model, run.cfg
        self.optimizer = build_optimizer(cfg, self.model)
        if start_optimizer is not None:
            self.optimizer.load_state_dict(start_optimizer)
        self.scheduler = build_scheduler(cfg, self.optimizer, run.total, at_step=start_step)
        net = self.model
        if distributed.world_size() > 1:
            ids = [run.device.index] if run.device.type == "cuda" else None
            with distributed.guard("wrapping the model in DistributedDataParallel"):
                net = DistributedDataParallel(self.model, device_ids=ids)
        self.forward = compiled(net, cfg)
        if run.mask is not None:
            run.mask.apply_(self.model, self.optimizer)
        self.refresh_masks()

    def load(self, ck: dict[str, Any]) -> None:
        """Continue from a resume checkpoint (the run restored its own records and mask)."""
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.refresh_masks()

    def refresh_masks(self) -> None:
        mask = self.runs[0].mask
        self.masked = float_masks(
            dict(self.model.named_parameters()), mask.tensors if mask is not None else {}
        )

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.runs[0].stream.batch(step)

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.forward(x), y)

    def tracked(self, i: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The run's masked weights (all, when unmasked) and their gradients, by name."""
        mask = self.runs[0].mask
        ps = {n: p for n, p in self.model.named_parameters() if mask is None or n in mask.tensors}
        return {n: p.detach() for n, p in ps.items()}, {n: p.grad for n, p in ps.items()}

    def module(self, i: int) -> nn.Module:
        return self.model

    def set_mask(self, i: int, mask: Mask) -> None:
        """Give the run a new mask: zero its pruned weights and their optimizer state, and those
        of weights it grows (dynamic sparse training), which start at zero with fresh state."""
        old, self.runs[0].mask = self.runs[0].mask, mask
        (mask if old is None else mask & old).apply_(self.model, self.optimizer)
        self.refresh_masks()

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> list[tuple[float, float]]:
        run = self.runs[0]
        return [evaluate(self.model, x, y, run.eval_batch, bf16, True, run.eval_workers)]

    def state(self, i: int) -> tuple[dict, dict, dict]:
        return self.model.state_dict(), self.optimizer.state_dict(), self.scheduler.state_dict()


class StackedCopies:
    """K > 1 prepared runs of one cohort trained as one stacked model (see the module docstring)."""

    def __init__(self, singles: list[SingleCopy], step: int):
        self.runs = [s.runs[0] for s in singles]
        lead = self.runs[0]
        self.cfg, self.device, self.k = lead.cfg, lead.device, len(singles)
        if self.device.type == "cpu" and any(p.dim() == 4 for p in lead.model.parameters()):
            getLogger(__name__).warning("%d conv nets stacked on CPU run slower", self.k)
        self.template = lead.model  # functional_call lends it the stacked tensors for each call
        states = [s.model.state_dict(keep_vars=True) for s in singles]
        named = dict(self.template.named_parameters())
        self.params = {
            n: nn.Parameter(torch.stack([st[n].detach() for st in states]), p.requires_grad)
            for n, p in named.items()
        }
        self.buffers = {
            n: torch.stack([st[n] for st in states]) for n, _ in self.template.named_buffers()
        }
        self.keys = list(states[0])  # state_dict order, for each copy's checkpoint
        self.eval_batch = lead.cfg.eval_batch or eval_batch_size(
            self.template, lead.shape[0], self.device, copies=self.k
        )
        self.optimizer = build_optimizer(self.cfg, nn.ParameterList(self.params.values()))
        self._stack_optimizer_states([s.optimizer.state_dict() for s in singles])
        self.scheduler = build_scheduler(self.cfg, self.optimizer, lead.total, at_step=step)
        self.refresh_masks()
        seeds = [r.cfg.data_seed for r in self.runs]
        distinct = list(dict.fromkeys(seeds))
        self.streams = [self.runs[seeds.index(s)].stream for s in distinct]
        self.which = torch.tensor([distinct.index(s) for s in seeds], device=self.device)
        self.identity = distinct == seeds  # every copy its own order: no regrouping needed
        self._epoch, self._perms = -1, torch.empty(0)
        data_dim = None if len(distinct) == 1 else 0  # one batch shared by every copy
        self.loss = compiled(vmap(self._copy_loss, in_dims=(0, 0, data_dim, data_dim)), self.cfg)
        self.logits = vmap(self._copy_logits, in_dims=(0, 0, None))

    def _copy_logits(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.template, (params, buffers), (x,))

    def _copy_loss(
        self, params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        return F.cross_entropy(self._copy_logits(params, buffers, x), y)

    def _stack_optimizer_states(self, states: list[dict]) -> None:
        """Stack the runs' optimizer states; a run without state adds zeros, as a fresh one would."""
        stateful = [s for s in states if s["state"]]
        if not stateful:
            return
        stacked: dict[int, dict[str, Any]] = {}
        for j in sorted({j for s in stateful for j in s["state"]}):
            entries = [s["state"].get(j, {}) for s in states]
            stacked[j] = {}
            for key in dict.fromkeys(k for e in entries for k in e):
                values = [e.get(key) for e in entries]
                ref = next(v for v in values if v is not None)
                if key in SHARED_STATE or not torch.is_tensor(ref):
                    stacked[j][key] = ref
                else:
                    zeros = torch.zeros_like(ref)
                    stacked[j][key] = torch.stack([zeros if v is None else v for v in values])
        own = self.optimizer.state_dict()["param_groups"]
        groups = [{**g, "params": mine["params"]} for g, mine in zip(
            stateful[0]["param_groups"], own, strict=True)]  # fmt: skip
        self.optimizer.load_state_dict({"state": stacked, "param_groups": groups})

    def refresh_masks(self) -> None:
        """Stacked float masks over every tensor any copy masks (a copy without a mask keeps all)."""
        masks = [r.mask.tensors if r.mask is not None else {} for r in self.runs]
        names = list(dict.fromkeys(n for m in masks for n in m))
        keep = {n: torch.stack([m[n].to(self.device) if n in m else torch.ones_like(
            self.params[n][0], dtype=torch.bool) for m in masks]) for n in names}  # fmt: skip
        self.masked = float_masks(self.params, keep)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
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
            self._perms = torch.stack([s.permutation(epoch) for s in self.streams])
            self._epoch = epoch
        start = within * lead.batch_size
        idx = self._perms[:, start : start + lead.batch_size]
        idx = idx if self.identity else idx[self.which]
        return lead.x[idx], lead.y[idx]

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss(self.params, self.buffers, x, y)

    def tracked(self, i: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Copy i's masked weights (all, when unmasked) and their gradients, by name."""
        mask = self.runs[i].mask
        ps = {n: p for n, p in self.params.items() if mask is None or n in mask.tensors}
        return {n: p.detach()[i] for n, p in ps.items()}, {n: p.grad[i] for n, p in ps.items()}

    @torch.no_grad()
    def module(self, i: int) -> nn.Module:
        """Copy i as a plain module (its run's own, refreshed with the copy's current tensors)."""
        own = self.runs[i].model
        for n, t in own.state_dict(keep_vars=True).items():
            t.copy_({**self.params, **self.buffers}[n][i])
        return own

    @torch.no_grad()
    def set_mask(self, i: int, mask: Mask) -> None:
        """Give copy i a new mask: zero its pruned weights and their optimizer state, and those
        of weights it grows (dynamic sparse training), which start at zero with fresh state."""
        old, self.runs[i].mask = self.runs[i].mask, mask
        for n, keep in mask.tensors.items():
            p = self.params[n]
            if old is not None:
                keep = keep & old.tensors[n].to(keep.device)
            p[i].mul_(keep.to(p.dtype))
            for v in self.optimizer.state.get(p, {}).values():
                if torch.is_tensor(v) and v.shape == p.shape:
                    v[i].mul_(keep.to(v.dtype))
        self.refresh_masks()

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> list[tuple[float, float]]:
        """Every copy's mean loss and accuracy in one vmapped pass per batch."""
        n = len(x)
        if n == 0:
            return [(float("nan"), float("nan"))] * self.k
        self.template.eval()
        loss = torch.zeros(self.k, device=x.device)
        correct = torch.zeros(self.k, device=x.device, dtype=torch.long)
        for i in range(0, n, self.eval_batch):
            xb, yb = x[i : i + self.eval_batch], y[i : i + self.eval_batch]
            with autocast(x.device, bf16):
                out = self.logits(self.params, self.buffers, xb)
            flat = F.cross_entropy(out.float().flatten(0, 1), yb.repeat(self.k), reduction="none")
            loss += flat.view(self.k, -1).sum(1)
            correct += (out.argmax(-1) == yb).sum(1)
        self.template.train()
        return [(float(a) / n, float(c) / n) for a, c in zip(loss, correct, strict=True)]

    def state(self, i: int) -> tuple[dict, dict, dict]:
        """Copy i's model, optimizer and schedule states, laid out as a separate run's: views
        into the stacked tensors, which the run copies once when it keeps them (as it copies a
        plain module's live state)."""
        tensors = {**self.params, **self.buffers}
        model = {k: tensors[k].detach()[i] for k in self.keys}
        sd = self.optimizer.state_dict()
        state = {
            j: {key: _part(key, v, i) for key, v in st.items()} for j, st in sd["state"].items()
        }
        return (
            model,
            {"state": state, "param_groups": sd["param_groups"]},
            self.scheduler.state_dict(),
        )


def _part(key: str, value: Any, i: int) -> Any:
    """Copy i's part of one stacked optimizer-state entry (a view)."""
    shared = key in SHARED_STATE or not torch.is_tensor(value)
    return value if shared else value[i]
