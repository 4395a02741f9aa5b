"""Gradual pruning during training: a schedule's target sparsity reached through the mask engine.

`GradualPruner` implements the engine's `Pruner` protocol (`lottery.training.run`). At each update step it scores the
current weights and extends the mask to exactly the schedule's target (the same `score` + `prune`
that IMP uses, so schedule comparisons differ only by the schedule). Its records of
(step, target, reached sparsity) travel inside checkpoints and are mirrored to a JSON-lines file.
With the `movement-pruning` criterion it also accumulates −Σ_t g_t·w_t from the engine's
after-backward calls (Sanh, Wolf & Rush, NeurIPS 2020), kept in its checkpointed state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from lottery.core import distributed
from lottery.core.config import ConfigError
from lottery.core.storage import write_jsonl
from lottery.pruning.criteria import Batches, Context, check, score
from lottery.pruning.maskfile import MaskError
from lottery.pruning.masks import Mask
from lottery.pruning.names import SCOPES, criterion_name, criterion_needs
from lottery.pruning.schedules import Schedule
from lottery.pruning.selection import check_granularity, prune


class Pruner(Protocol):
    """Gradual pruning: at its update steps it returns an extended mask for one run, given a
    module that holds the run's current weights.

    A pruner whose `tracks_gradients` is true also defines `after_backward(step, weights, grads)`,
    which the engine calls after every backward pass with the run's own tensors by name
    (movement-style scores need it).
    """

    update_steps: set[int]

    def update(self, step: int, model: nn.Module, mask: Mask) -> Mask: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


MIN_UPDATES = 5  # fewer mask changes than this turn a smooth schedule into a few one-shot steps
STEPWISE = ("one-shot", "iterative")  # schedules that change the mask in a few steps by design


@dataclass
class GradualPruner:
    """Extends the mask to `schedule`'s target every `every` steps of a `total_steps` run.

    Updates happen at step 0 (the initial sparsity, before training), then at the window start
    and every `every` steps after it (Zhu & Gupta's t0 + nΔt), and at the window end, so the
    final sparsity is reached exactly when the window closes.
    """

    schedule: Schedule
    total_steps: int
    every: int = 100
    steps_per_epoch: int | None = None
    scope: str = "layer"
    granularity: str = "weight"
    criterion: str = "magnitude"
    rate_scale: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    log_path: Path | None = None
    batches: Batches | None = None  # seeded training batches, for gradient criteria
    input_shape: tuple[int, ...] | None = None  # one example's shape, for SynFlow
    records: list[dict[str, Any]] = field(default_factory=list, init=False)
    update_steps: set[int] = field(default_factory=set, init=False)
    movement: dict[str, torch.Tensor] | None = field(default=None, init=False)
    initial: dict[str, torch.Tensor] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ConfigError(f"total steps must be >= 1, got {self.total_steps}")
        if not isinstance(self.every, int) or self.every < 1:
            raise ConfigError(f"mask update frequency must be >= 1 step, got {self.every!r}")
        if self.scope not in SCOPES:
            raise ConfigError(f"unknown pruning scope {self.scope!r}; choose from {SCOPES}")
        self.criterion = criterion_name(self.criterion)
        have = {"start", "model", "sparsity", "movement"}
        have |= {"batches"} if self.batches is not None else set()
        have |= {"input_shape"} if self.input_shape is not None else set()
        try:
            check_granularity(self.granularity)
            check(self.criterion, have)
        except MaskError as e:
            raise ConfigError(str(e)) from None
        a, b = self.schedule.window_steps(self.total_steps, self.steps_per_epoch)
        self.update_steps = {0, *range(a, b, self.every), b}
        for step in sorted(self.update_steps):  # a custom schedule's bad value, before training
            self.target(step)

    def warnings(self) -> list[str]:
        """What makes the schedule other than it looks: a smooth schedule reached in fewer than
        `MIN_UPDATES` mask changes, or its last change at the last step, leaving no training to
        recover from it."""
        changes, last, before = 0, None, self.target(0)
        for step in sorted(self.update_steps - {0}):
            if self.target(step) > before:
                changes, last, before = changes + 1, step, self.target(step)
        out = []
        if self.schedule.name not in STEPWISE and 0 < changes < MIN_UPDATES:
            out.append(
                f"{self.schedule.name} reaches its final sparsity in only {changes} mask "
                f"update(s), every {self.every} steps; lower --update-every for a smooth schedule"
            )
        if last == self.total_steps:
            out.append(
                f"the last mask update is at the final step ({last}): no training follows it to "
                "recover; end the pruning window earlier (--end)"
            )
        return out

    def target(self, step: int) -> float:
        """The schedule's target sparsity after `step` optimizer steps."""
        return self.schedule.at_step(step, self.total_steps, self.steps_per_epoch)

    def update(self, step: int, model: nn.Module, mask: Mask) -> Mask:
        """Score the run's current weights and extend `mask` to exactly the target sparsity."""
        target = self.target(step)
        params = dict(model.named_parameters())
        weights = {n: params[n].detach() for n in mask.names()}
        if self.initial is None and "start" in criterion_needs(self.criterion):
            # the first update (step 0) sees the initial weights
            self.initial = {n: w.clone() for n, w in weights.items()}
        if self.criterion == "movement-pruning" and self.movement is None:
            self.movement = {n: torch.zeros_like(w) for n, w in weights.items()}
        ctx = Context(
            weights,
            initial=self.initial,
            model=model,
            mask=mask,
            sparsity=target,
            batches=self.batches,
            input_shape=self.input_shape,
            movement=self.movement,
            scope=self.scope,
        )
        scores = score(self.criterion, ctx, seed=self.seed + step)
        new = prune(
            mask,
            scores,
            sparsity=target,
            scope=self.scope,
            granularity=self.granularity,
            rate_scale=self.rate_scale,
        )
        self.records.append(
            {
                "step": step,
                "target": target,
                "sparsity": new.sparsity(),
                "kept": new.kept(),
                "layer_density": new.layer_density(),
            }
        )
        self._write_log()
        return new

    @property
    def tracks_gradients(self) -> bool:
        """Movement pruning scores what the gradients did during training (Sanh et al. 2020)."""
        return self.criterion == "movement-pruning"

    def after_backward(
        self, step: int, weights: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]
    ) -> None:
        """Called once per optimizer step, before it: accumulate −g·w for movement pruning."""
        if self.movement is None:
            return
        with torch.no_grad():
            for n, acc in self.movement.items():
                g = grads.get(n)
                if g is None:
                    continue
                if acc.device != g.device:  # restored from a checkpoint on the CPU
                    acc = self.movement[n] = acc.to(g.device)
                acc.sub_(g * weights[n])

    def settings(self) -> dict[str, Any]:
        """Everything that determines the pruning (recorded in the run's config for resume checks)."""
        return {
            "schedule": self.schedule.to_dict(),
            "every": self.every,
            "scope": self.scope,
            "granularity": self.granularity,
            "criterion": self.criterion,
            "rate_scale": dict(self.rate_scale),
            "seed": self.seed,
        }

    def state_dict(self) -> dict[str, Any]:
        def cpu(d: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
            return None if d is None else {n: t.detach().cpu().clone() for n, t in d.items()}

        return {
            "settings": self.settings(),
            "records": [dict(r) for r in self.records],
            "movement": cpu(self.movement),
            "initial": cpu(self.initial),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the records of a checkpoint (and drop log lines written after it)."""
        if state["settings"] != self.settings():
            raise ConfigError(
                "the checkpoint was written under other pruning settings "
                f"({state['settings']} vs {self.settings()}); use a new run directory"
            )
        self.records = [dict(r) for r in state["records"]]
        self.movement, self.initial = state.get("movement"), state.get("initial")
        self._write_log()

    def _write_log(self) -> None:
        if self.log_path is not None and distributed.is_main():
            write_jsonl(self.records, self.log_path)
