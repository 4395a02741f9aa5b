"""One run with one call: `Trainer(cfg, data, model, run_dir, mask=, pruner=).fit(start)`.

A thin front to the engine (`lottery.training.engine`) with K = 1, for scripts and tests that train a
single network and want to look at its live model, mask and optimizer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from lottery.core import distributed
from lottery.core.batches import BatchStream
from lottery.core.config import TrainConfig
from lottery.core.device import resolve_device
from lottery.core.optim import Optimizer
from lottery.datasets.loading import Splits
from lottery.pruning.masks import Mask
from lottery.pruning.pruner import Pruner
from lottery.training.engine import Hooks, fit_one
from lottery.training.run import Run, RunSpec, StartState, TrainResult
from lottery.training.runfolder import hold
from lottery.training.stacked import SingleCopy


class Trainer:
    """Trains one model in one run folder; `fit` resumes from the folder's last checkpoint."""

    def __init__(
        self,
        cfg: TrainConfig,
        data: Splits,
        model: nn.Module,
        run_dir: str | Path,
        *,
        mask: Mask | None = None,
        pruner: Pruner | None = None,
        progress: bool = True,
        record: dict[str, Any] | None = None,
        on_step: Callable[[int], None] | None = None,
    ):
        self.device = resolve_device(cfg.device)
        distributed.setup(self.device)
        self.data = data.to(self.device)
        spec = RunSpec(cfg, Path(run_dir), model, mask, None, record or {}, pruner)
        self.run = Run(spec, self.data, self.device)
        self.progress, self.on_step = progress, on_step
        self.copy: SingleCopy | None = None

    @property
    def model(self) -> nn.Module:
        return self.run.model

    @property
    def mask(self) -> Mask | None:
        return self.run.mask

    @property
    def stream(self) -> BatchStream:
        return self.run.stream

    @property
    def optimizer(self) -> Optimizer:
        if self.copy is None:
            raise RuntimeError("the optimizer exists once fit() has started")
        return self.copy.optimizer

    def fit(self, start: StartState | None = None) -> TrainResult:
        """Train to the configured length, resuming from checkpoints/last.pt if present.

        In a data-parallel run every rank calls this; rank 0 alone writes the run folder, holding
        its lock.
        """
        hooks = Hooks(after_step=[self.on_step] if self.on_step is not None else [])
        with hold(self.run.dir):
            return fit_one(self.run, start, self.data, self.progress, hooks, started=self._started)

    def _started(self, copy: SingleCopy) -> None:
        self.copy = copy
