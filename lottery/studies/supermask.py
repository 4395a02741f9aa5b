"""Supermask runs: train only a mask over weights frozen at their initialisation.

A supermask run's folder is a training run's (`lottery.training.run`: config.json, metrics.jsonl,
checkpoints, result.json) plus, once finished, mask.npz (the supermask, in the format every
analysis reads) and weights.npz (the frozen weights under it), so `load_run`, `export`,
`speed`, `overlap` and `report` take it as they take any pruned network. Rerunning resumes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from lottery.core import layout
from lottery.core.config import ConfigError, TrainConfig
from lottery.core.storage import load_checkpoint
from lottery.datasets.loading import Splits
from lottery.models.registry import prunable_names
from lottery.pruning.allocation import SHAPED, layer_counts
from lottery.pruning.maskfile import MaskError
from lottery.pruning.masks import Mask, save_sparse
from lottery.pruning.selection import check_rate
from lottery.pruning.supermask import Supermask, key, signed_constant, top_k
from lottery.training.engine import Hooks, train_runs
from lottery.training.run import RunSpec, TrainResult
from lottery.training.runfolder import hold
from lottery.training.setup import make_model

SCORE_SEED_OFFSET = 7919  # the scores' seed is the init seed plus this, so they differ from θ0


@dataclass
class SupermaskConfig:
    """The sparsity, how it is spread over layers (a mask-engine scope with a fixed count per
    layer: layer, erk or er) and whether the weights take the signed Kaiming constant."""

    sparsity: float = 0.5
    scope: str = "layer"
    signed_constant: bool = False

    def __post_init__(self) -> None:
        try:
            check_rate(self.sparsity, "sparsity")
        except MaskError as e:
            raise ConfigError(str(e)) from None
        if self.scope not in ("layer", *SHAPED):
            raise ConfigError(
                f"a supermask keeps a fixed count of weights in each layer; allocation "
                f"{self.scope!r} has none (choose uniform, erk or er)"
            )


def supermask_counts(model: nn.Module, settings: SupermaskConfig) -> dict[str, int]:
    """Weights each prunable layer keeps: as the mask engine's layer-wise prune would, or by shape."""
    params = dict(model.named_parameters())
    shapes = {n: tuple(params[n].shape) for n in prunable_names(model)}
    if settings.scope in SHAPED:
        return layer_counts(shapes, 1.0 - settings.sparsity, settings.scope)
    return {n: p.numel() - round(settings.sparsity * p.numel()) for n, p in params.items()
            if n in shapes}  # fmt: skip


def supermask_spec(
    cfg: TrainConfig, settings: SupermaskConfig, out: Path, data: Splits, record: dict
) -> RunSpec:
    """The engine's run: the configured network, frozen (signed-constant if asked), with scores."""
    base = make_model(cfg, data)
    if settings.signed_constant:
        signed_constant(base)
    model = Supermask(base, supermask_counts(base, settings), cfg.init_seed + SCORE_SEED_OFFSET)
    cfg = cfg.replace(extra={**cfg.extra, "supermask": asdict(settings)})
    return RunSpec(cfg, Path(out), model, record=record)


def read_ticket(run: Path, counts: dict[str, int]) -> tuple[dict, Mask]:
    """The frozen weights and the supermask of a finished run, from its final checkpoint."""
    state = load_checkpoint(layout.checkpoint_dir(run) / layout.FINAL)["model"]
    base = {k.removeprefix("base."): v for k, v in state.items() if k.startswith("base.")}
    mask = Mask({n: top_k(state[f"scores.{key(n)}"], k) for n, k in counts.items()})
    return base, mask


def train_supermasks(
    cfgs: Sequence[TrainConfig],
    outs: Sequence[Path],
    settings: SupermaskConfig,
    data: Splits,
    *,
    progress: bool = True,
    hooks: Hooks | None = None,
    lock: Path | None = None,
) -> list[TrainResult]:
    """Train (or resume, or read back) one supermask per configuration; each finished run gets
    mask.npz and weights.npz. Everything is validated before `lock` is taken."""
    specs = [
        supermask_spec(c, settings, Path(o), data, {"label": f"supermask s{c.init_seed}"})
        for c, o in zip(cfgs, outs, strict=True)
    ]
    with hold(lock if lock is not None else Path(outs[0])):
        results = train_runs(specs, data, progress=progress, hooks=hooks)
        for spec in specs:
            run = Path(spec.run_dir)
            if not (run / layout.WEIGHTS).exists():
                base, mask = read_ticket(run, spec.model.counts)
                mask.save(run / layout.MASK)
                save_sparse(base, mask, run / layout.WEIGHTS)
        return results
