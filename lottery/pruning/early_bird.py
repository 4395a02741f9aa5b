"""Early-bird tickets: stop dense training once the mask pruning would draw has stopped changing.

You, Li, Xu, Fu, Wang, Chen, Baraniuk, Wang & Lin ("Drawing Early-Bird Tickets", ICLR 2020): every
few steps, compute the mask that magnitude pruning would choose from the current weights, and the
normalised Hamming distance to the previous one (the fraction of prunable weights whose keep/prune
decision changed). Once the largest of the last `window` distances falls below `threshold` (0.1 in
the paper, window 5), the ticket is drawn there and dense training stops.

`EarlyBird` implements the engine's `Stopper` protocol (`lottery.training.run`): the engine calls
`observe` at its due steps with the live model, and ends the run where it answers True. Its records
and the last mask travel in checkpoints, so a killed run resumes to the same stop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lottery.core import distributed
from lottery.core.config import ConfigError
from lottery.core.storage import write_jsonl
from lottery.pruning.masks import Mask

THRESHOLD = 0.1  # You et al., ICLR 2020
WINDOW = 5  # the same paper: the last five distances
CHECKS_PER_RUN = 160  # the paper checks once per epoch of a 160-epoch run


def mask_distance(a: Mask, b: Mask) -> float:
    """Normalised Hamming distance: the fraction of entries where two masks differ."""
    if a.names() != b.names():
        raise ValueError("masks over different tensors")
    differ = sum(
        int((a.tensors[n] != b.tensors[n].to(a.tensors[n].device)).sum()) for n in a.names()
    )
    return differ / a.total()


def default_every(total_steps: int) -> int:
    """Steps between mask checks: `CHECKS_PER_RUN` checks over the run, as the paper's one per epoch."""
    return max(1, round(total_steps / CHECKS_PER_RUN))


@dataclass
class EarlyBird:
    """Draws the mask `draw(weights)` every `every` steps and stops training once the last
    `window` distances between consecutive masks all fall below `threshold`, at step `earliest`
    or later (a search that rewinds to step k needs training to have reached k). Threshold 0
    only records the distances: training runs its full length."""

    draw: Callable[[dict[str, torch.Tensor]], Mask]
    every: int
    threshold: float = THRESHOLD
    window: int = WINDOW
    earliest: int = 0
    log_path: Path | None = None
    records: list[dict[str, Any]] = field(default_factory=list, init=False)
    previous: Mask | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        check(self.every, self.threshold, self.window)

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def observe(self, step: int, model: nn.Module) -> bool:
        """Draw the mask from the model's weights now; True when the ticket is drawn."""
        params = dict(model.named_parameters())
        mask = self.draw({n: p.detach() for n, p in params.items()}).cpu()
        distance = mask_distance(self.previous, mask) if self.previous is not None else None
        self.previous = mask
        distances = [r["distance"] for r in self.records if r["distance"] is not None]
        recent = [*distances, distance][-self.window :] if distance is not None else []
        drawn = (
            len(recent) == self.window and max(recent) < self.threshold and step >= self.earliest
        )
        self.records.append(
            {"step": step, "distance": distance, "window_max": max(recent) if recent else None,
             "drawn": drawn}
        )  # fmt: skip
        self._write_log()
        return drawn

    def settings(self) -> dict[str, Any]:
        return {"every": self.every, "threshold": self.threshold, "window": self.window,
                "earliest": self.earliest}  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings(),
            "records": [dict(r) for r in self.records],
            "previous": self.previous.state() if self.previous is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the records and last mask of a checkpoint (and drop log lines written after it)."""
        if state["settings"] != self.settings():
            raise ConfigError(
                "the checkpoint was written under other early-bird settings "
                f"({state['settings']} vs {self.settings()}); use a new run directory"
            )
        self.records = [dict(r) for r in state["records"]]
        previous = state["previous"]
        self.previous = Mask({n: t.cpu() for n, t in previous.items()}) if previous else None
        self._write_log()

    def _write_log(self) -> None:
        if self.log_path is not None and distributed.is_main():
            write_jsonl(self.records, self.log_path)


def check(every: int | None, threshold: float, window: int = WINDOW) -> None:
    """The early-bird settings, or one ConfigError naming the flag."""
    if every is not None and (not isinstance(every, int) or every < 1):
        raise ConfigError(f"--eb-every must be a whole number of steps >= 1, got {every!r}")
    if not 0 <= threshold <= 1:
        raise ConfigError(f"--eb-threshold must be in [0, 1], got {threshold}")
    if window < 1:
        raise ConfigError(f"the early-bird window must be >= 1 distance, got {window}")
