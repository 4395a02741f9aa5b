"""Gradual-pruning runs: train while a schedule grows the sparsity, one run or many batched;
and dynamic sparse training (SET, RigL), which moves weights at a constant sparsity instead.

A gradual run's folder is a training run's (`lottery.training.run`) plus pruning.jsonl (every mask update)
and, once finished, mask.npz and weights.npz (the final mask and sparse weights). Runs that share
architecture and optimizer settings train as one stacked model with `batched=True`, each with its
own schedule, seeds and pruner, so a schedule comparison is one pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from logging import getLogger
from pathlib import Path
from typing import Any

from torch import nn

from lottery.core import layout
from lottery.core.config import ConfigError, TrainConfig
from lottery.datasets.loading import Splits
from lottery.models.registry import conv_weight_names
from lottery.pruning.checks import check_prune, check_rate_scale, keep_classes
from lottery.pruning.criteria import training_batches
from lottery.pruning.dst import DynamicSparsity
from lottery.pruning.masks import Mask
from lottery.pruning.names import DROP_FRACTION, DST_END, DST_METHODS, criterion_name
from lottery.pruning.pruner import GradualPruner
from lottery.pruning.schedules import Schedule
from lottery.studies.names import LAYERS
from lottery.training.engine import Hooks, train_runs
from lottery.training.run import Finish, RunSpec, TrainResult, run_length
from lottery.training.runfolder import hold
from lottery.training.setup import make_model


@dataclass
class PruningSettings:
    """How the mask grows: update every N steps, scope, granularity, criterion, per-tensor
    multipliers of the target (0 leaves a tensor dense), seed of random scores, and which layers
    are pruned: every prunable tensor ("all") or the convolution weights only ("conv", fully
    connected layers stay dense, as fasterai's SparsifyCallback that Hubens et al., ICIP 2022,
    used)."""

    every: int = 100
    scope: str = "layer"
    granularity: str = "weight"
    criterion: str = "magnitude"
    rate_scale: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    layers: str = "all"
    dst: str | None = None  # "set" or "rigl": move weights at a constant sparsity instead
    dst_end: float = DST_END
    drop_fraction: float = DROP_FRACTION

    def __post_init__(self) -> None:
        self.criterion = criterion_name(self.criterion)
        if self.layers not in LAYERS:
            raise ConfigError(f"unknown pruned layers {self.layers!r}; choose from {LAYERS}")
        if self.dst is None:
            return
        if self.dst not in DST_METHODS:
            raise ConfigError(f"unknown --dst {self.dst!r}; choose from {DST_METHODS}")
        if self.criterion != "magnitude":
            raise ConfigError(
                f"--dst {self.dst} drops by magnitude and grows by its own rule; "
                f"--criterion {self.criterion} does not apply"
            )
        if self.granularity != "weight" or self.rate_scale:
            raise ConfigError(
                f"--dst {self.dst} moves single weights within every pruned layer; "
                "drop --granularity and --rate-scale"
            )


@dataclass
class GradualRun:
    """One run to train under `schedule` in folder `out` (model: the configured one if None).

    A run without a schedule is a dense reference, trained beside the pruned ones."""

    cfg: TrainConfig
    schedule: Schedule | None
    out: Path
    model: nn.Module | None = None
    record: dict[str, Any] = field(default_factory=dict)


def pruned_spec(run: GradualRun, settings: PruningSettings, data: Splits) -> RunSpec:
    """The engine's run for a gradual run: its pruner, and the pruning settings in its config."""
    model = run.model if run.model is not None else make_model(run.cfg, data)
    if run.schedule is None:
        return RunSpec(run.cfg, Path(run.out), model, record=run.record)
    if settings.dst is not None:
        return sparse_training_spec(run, settings, data, model)
    top = max(run.schedule.initial_sparsity, run.schedule.final_sparsity)
    check_rate_scale(settings.rate_scale, model, top)
    mask, layers = None, {}
    rate_scale = keep_classes(settings.rate_scale, model, settings.granularity)
    if settings.layers == "conv":  # the output layer is not pruned at all
        names = conv_weight_names(model)
        if not names:
            raise ConfigError(f"layers='conv': {run.cfg.model} has no convolution weights")
        outside = sorted(set(settings.rate_scale) - set(names))
        if outside:
            raise ConfigError(f"layers='conv' leaves {outside[0]!r} dense; drop its rate scale")
        mask, layers = Mask.ones(model, names), {"layers": "conv"}
        rate_scale = settings.rate_scale
    check_prune(
        model,
        rate=top,
        scope=settings.scope,
        granularity=settings.granularity,
        rate_scale=rate_scale,
        names=mask.names() if mask is not None else None,
    )
    total, per_epoch = run_length(run.cfg, data)
    pruner = GradualPruner(
        run.schedule,
        total,
        every=settings.every,
        steps_per_epoch=per_epoch,
        scope=settings.scope,
        granularity=settings.granularity,
        criterion=settings.criterion,
        rate_scale=rate_scale,
        seed=settings.seed,
        log_path=Path(run.out) / layout.PRUNING_LOG,
        batches=training_batches(data.train_x, data.train_y, run.cfg.batch_size, settings.seed),
        input_shape=data.input_shape,
    )
    # "layers" is recorded only when not "all", so runs recorded before it existed still resume
    cfg = run.cfg.replace(extra={**run.cfg.extra, "pruning": {**pruner.settings(), **layers}})
    finish = Finish(keep_checkpoint=True, mask_file=True)  # the final mask and sparse weights
    return RunSpec(
        cfg, Path(run.out), model, mask=mask, record=run.record, pruner=pruner, finish=finish
    )


def sparse_training_spec(
    run: GradualRun, settings: PruningSettings, data: Splits, model: nn.Module
) -> RunSpec:
    """The engine's run for dynamic sparse training: the schedule's sparsity held from step 0."""
    schedule = run.schedule
    assert schedule is not None
    total, per_epoch = run_length(run.cfg, data)
    if schedule.at_step(0, total, per_epoch) != schedule.final_sparsity:
        raise ConfigError(
            f"--dst {settings.dst} holds its sparsity from step 0; the {schedule.name} schedule "
            "would also prune during training (use --schedule one-shot --start 0, the default "
            "with --dst)"
        )
    mask = None
    if settings.layers == "conv":
        names = conv_weight_names(model)
        if not names:
            raise ConfigError(f"layers='conv': {run.cfg.model} has no convolution weights")
        mask = Mask.ones(model, names)
    check_prune(
        model,
        rate=schedule.final_sparsity,
        scope=settings.scope,
        granularity="weight",
        rate_scale={},
        names=mask.names() if mask is not None else None,
    )
    pruner = DynamicSparsity(
        settings.dst,
        schedule.final_sparsity,
        total,
        every=settings.every,
        end=settings.dst_end,
        alpha=settings.drop_fraction,
        allocation=settings.scope,
        seed=settings.seed,
        log_path=Path(run.out) / layout.PRUNING_LOG,
    )
    recorded = {"schedule": schedule.to_dict(), **pruner.settings()}
    recorded |= {"layers": "conv"} if mask is not None else {}
    cfg = run.cfg.replace(extra={**run.cfg.extra, "pruning": recorded})
    finish = Finish(keep_checkpoint=True, mask_file=True)
    return RunSpec(
        cfg, Path(run.out), model, mask=mask, record=run.record, pruner=pruner, finish=finish
    )


def train_gradual(
    runs: Sequence[GradualRun],
    settings: PruningSettings,
    data: Splits,
    *,
    batched: bool = False,
    progress: bool = True,
    hooks: Hooks | None = None,
    lock: Path | None = None,
) -> list[TrainResult]:
    """Train (or resume, or read back) gradual runs; each finished one gets mask.npz and weights.npz.

    Every run is validated before anything is written; then `lock` (a folder holding the runs) is
    held against a second writer while they train.
    """
    specs = [pruned_spec(r, settings, data) for r in runs]
    for text in dict.fromkeys(
        w for s in specs if s.pruner is not None for w in s.pruner.warnings()
    ):
        getLogger(__name__).warning("warning: %s", text)
    with hold(lock) if lock is not None else contextlib.nullcontext():
        return train_runs(specs, data, batched=batched, progress=progress, hooks=hooks)
