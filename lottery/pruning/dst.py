"""Dynamic sparse training: SET and RigL move a constant number of weights around during training.

A random mask at the target sparsity (spread over layers by the allocation, ERK by default as
in Evci et al.) is drawn at step 0. Every ΔT steps until T_end, each layer drops the fraction
α/2·(1 + cos(π t / T_end)) of its kept weights with the smallest |w| and grows as many of its
pruned ones: at random (SET, Mocanu et al., Nat. Commun. 2018) or those with the largest
|∂L/∂w| of that step's dense gradient (RigL, Evci, Gale, Menick, Castro & Elsen, ICML 2020).
Grown weights start at zero with zeroed optimizer state (the engine's `set_mask`); a dropped
weight grown back in the same update is left as it was. The density never changes.

`DynamicSparsity` is a `lottery.pruning.pruner.Pruner`: the engine calls it like the gradual
pruner, and its records travel inside checkpoints, so a killed run resumes bit-identically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lottery.core import distributed
from lottery.core.config import ConfigError
from lottery.core.storage import write_jsonl
from lottery.pruning.masks import Mask
from lottery.pruning.names import DROP_FRACTION, DST_END, DST_METHODS, SCOPES
from lottery.pruning.selection import check_rate, grow, prune

UPDATE_EVERY = 100  # ΔT (Evci et al. 2020)


def drop_fraction(step: int, end_step: int, alpha: float = DROP_FRACTION) -> float:
    """The cosine-annealed fraction of kept weights a layer drops at `step` (Evci et al. 2020)."""
    if step >= end_step:
        return 0.0
    return alpha / 2 * (1 + math.cos(math.pi * step / end_step))


@dataclass
class DynamicSparsity:
    """SET or RigL at a constant `sparsity` over a run of `total_steps` (see the module docstring)."""

    method: str
    sparsity: float
    total_steps: int
    every: int = UPDATE_EVERY
    end: float = DST_END
    alpha: float = DROP_FRACTION
    allocation: str = "erk"  # a mask-engine scope: how the sparsity is spread over layers
    seed: int = 0
    log_path: Path | None = None
    records: list[dict[str, Any]] = field(default_factory=list, init=False)
    update_steps: set[int] = field(default_factory=set, init=False)
    grads: dict[str, torch.Tensor] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.method not in DST_METHODS:
            raise ConfigError(f"unknown --dst {self.method!r}; choose from {DST_METHODS}")
        try:
            check_rate(self.sparsity, "sparsity")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.allocation not in SCOPES:
            raise ConfigError(f"unknown allocation {self.allocation!r}; choose from {SCOPES}")
        if not isinstance(self.every, int) or self.every < 1:
            raise ConfigError(f"mask update frequency must be >= 1 step, got {self.every!r}")
        if not 0.0 < self.end <= 1.0:
            raise ConfigError(f"--dst-end must be a fraction of training in (0, 1], got {self.end}")
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"--drop-fraction must be in (0, 1), got {self.alpha}")
        self.update_steps = {0, *range(self.every, self.end_step, self.every)}

    @property
    def end_step(self) -> int:
        """T_end: the step after which the mask stays as it is."""
        return round(self.end * self.total_steps)

    @property
    def tracks_gradients(self) -> bool:
        """RigL grows by the dense gradient of the update's step."""
        return self.method == "rigl"

    def warnings(self) -> list[str]:
        if len(self.update_steps) < 2:
            return [
                f"{self.method} never changes its mask: no update every {self.every} steps falls "
                f"before T_end (step {self.end_step}); lower --update-every"
            ]
        return []

    def after_backward(
        self, step: int, weights: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]
    ) -> None:
        """Keep the dense gradient of the step that ends at a mask update (RigL's growth score)."""
        if step + 1 in self.update_steps:
            self.grads = {n: g.detach().clone() for n, g in grads.items() if g is not None}

    def update(self, step: int, model: nn.Module, mask: Mask) -> Mask:
        """Step 0: the random initial mask. Later: drop by magnitude, grow by gradient or at random."""
        gen = torch.Generator().manual_seed(self.seed + step)
        if step == 0:
            noise = {
                n: torch.rand(t.shape, generator=gen).to(t.device) for n, t in mask.tensors.items()
            }
            new = prune(mask, noise, sparsity=self.sparsity, scope=self.allocation)
            self._record(step, 0.0, 0, new)
            return new
        params = dict(model.named_parameters())
        f = drop_fraction(step, self.end_step, self.alpha)
        magnitude = {n: params[n].detach().abs() for n in mask.names()}
        dropped = prune(mask, magnitude, fraction=f, scope="layer")
        counts = {n: int(t.sum()) - int(dropped.tensors[n].sum()) for n, t in mask.tensors.items()}
        if self.method == "rigl":
            if self.grads is None:
                raise RuntimeError(f"RigL update at step {step} without the step's gradient")
            scores = {n: self.grads[n].abs() for n in mask.names()}
        else:
            scores = {
                n: torch.rand(t.shape, generator=gen).to(t.device) for n, t in mask.tensors.items()
            }
        new = grow(dropped, scores, counts)
        self.grads = None
        self._record(step, f, sum(counts.values()), new)
        return new

    def _record(self, step: int, fraction: float, moved: int, mask: Mask) -> None:
        self.records.append(
            {
                "step": step,
                "target": self.sparsity,
                "sparsity": mask.sparsity(),
                "kept": mask.kept(),
                "drop_fraction": fraction,
                "moved": moved,
                "layer_density": mask.layer_density(),
            }
        )
        if self.log_path is not None and distributed.is_main():
            write_jsonl(self.records, self.log_path)

    def settings(self) -> dict[str, Any]:
        """What determines the mask's moves besides the sparsity, named as `lottery prune`'s flags
        (the run's config records them beside the schedule, so `--config` repeats the run)."""
        return {
            "dst": self.method,
            "every": self.every,
            "dst_end": self.end,
            "drop_fraction": self.alpha,
            "scope": self.allocation,
            "seed": self.seed,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"settings": self.settings(), "records": [dict(r) for r in self.records]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the records of a checkpoint (and drop log lines written after it)."""
        if state["settings"] != self.settings():
            raise ConfigError(
                "the checkpoint was written under other sparse-training settings "
                f"({state['settings']} vs {self.settings()}); use a new run directory"
            )
        self.records = [dict(r) for r in state["records"]]
        if self.log_path is not None and distributed.is_main():
            write_jsonl(self.records, self.log_path)
