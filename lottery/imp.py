"""Iterative magnitude pruning (IMP): the winning-ticket search, with rewinding and controls.

Round 0 trains the dense network (saving θ0 and θk). Each later round prunes a fraction of the
remaining weights by the previous round's final magnitudes, resets the survivors and retrains
(Frankle & Carbin, ICLR 2019; rewinding: Frankle et al. 2019/2020; LR rewinding and fine-tuning:
Renda et al., ICLR 2020). Controls (random re-init, random pruning) run beside each round.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lottery import distributed
from lottery.build import load_data, make_model
from lottery.config import NON_RESULT_FIELDS, ConfigError, TrainConfig
from lottery.data import Splits
from lottery.masks import Mask, check_rate, load_sparse, prune, random_mask_like, save_sparse, score
from lottery.models import output_layer_name, prunable_names
from lottery.storage import load_checkpoint, provenance, read_json, write_json
from lottery.trainer import StartState, Trainer, TrainResult, resolve_device

RESETS = ("init", "rewind", "lr-rewind", "finetune")
CONTROLS = ("random-reinit", "random-prune")


@dataclass
class IMPConfig:
    """Pruning settings of a search; None means the model's paper default (see `imp_defaults`)."""

    rounds: int = 5
    fraction: float | None = None
    scope: str | None = None
    rate_scale: dict[str, float] | None = None
    granularity: str = "weight"
    criterion: str = "magnitude"
    reset: str = "init"
    rewind_step: int = 0
    finetune_lr: float | None = None
    controls: tuple[str, ...] = ()
    save_control_weights: bool = False
    keep_checkpoints: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.controls = tuple(self.controls)
        if self.rounds < 0:
            raise ConfigError(f"rounds must be >= 0, got {self.rounds}")
        if self.reset not in RESETS:
            raise ConfigError(f"unknown reset {self.reset!r}; choose from {RESETS}")
        bad = set(self.controls) - set(CONTROLS)
        if bad:
            raise ConfigError(f"unknown control {sorted(bad)[0]!r}; choose from {CONTROLS}")
        if self.fraction is not None:
            check_rate(self.fraction, "prune fraction per round")
        if self.rewind_step < 0:
            raise ConfigError(f"rewind step must be >= 0, got {self.rewind_step}")


def imp_defaults(model_name: str, model) -> dict[str, Any]:
    """Per-model pruning defaults from the papers.

    LeNet: layer-wise 20%, output layer 10% (Frankle & Carbin 2019). Conv-2/4/6: layer-wise, fc 20%,
    conv 10% (Conv-6: 15%), output 10% (same paper). ResNet-20, VGG and other deep nets: global 20%
    over the conv layers, output layer unpruned (same paper, Sec. 4; OpenLTH's default).
    """
    out = output_layer_name(model)
    if model_name.startswith("lenet"):
        return {"fraction": 0.2, "scope": "layer", "rate_scale": {out: 0.5}}
    if re.fullmatch(r"conv[246]", model_name):
        conv_scale = 0.75 if model_name == "conv6" else 0.5
        params = dict(model.named_parameters())
        scale = {n: conv_scale for n in prunable_names(model) if params[n].dim() == 4}
        return {"fraction": 0.2, "scope": "layer", "rate_scale": {**scale, out: 0.5}}
    return {"fraction": 0.2, "scope": "global", "rate_scale": {out: 0.0} if out else {}}


def _resolved(imp: IMPConfig, model_name: str, model) -> IMPConfig:
    d = imp_defaults(model_name, model)
    return dataclasses.replace(
        imp,
        fraction=imp.fraction if imp.fraction is not None else d["fraction"],
        scope=imp.scope or d["scope"],
        rate_scale=imp.rate_scale if imp.rate_scale is not None else d["rate_scale"],
    )


def run_imp(cfg: TrainConfig, imp: IMPConfig, out: str | Path, progress: bool = True) -> dict:
    """Run, resume or extend an IMP search in `out`; returns the summary also in summary.json.

    Under torchrun every rank runs this; rank 0 writes the files and the others read them.
    """
    out = Path(out)
    distributed.setup(resolve_device(cfg.device))
    data = load_data(cfg)
    model = make_model(cfg, data)
    imp = _resolved(imp, cfg.model, model)
    k = imp.rewind_step if imp.reset != "init" else 0
    _write_record(out, cfg, imp)

    # Round 0: the dense network, saving θ0 and θk once for every later round.
    dense_cfg = cfg.replace(save_at=tuple({*cfg.save_at, 0, k}))
    mask = Mask.ones(model)
    rounds = [_round(0, out, dense_cfg, data, model, mask, None, imp, progress)]
    ckpts = out / "round_00" / "ticket" / "checkpoints"
    theta_0 = StartState.from_checkpoint(ckpts / f"step_{0:07d}.pt")
    theta_k = StartState.from_checkpoint(ckpts / f"step_{k:07d}.pt")

    for r in range(1, imp.rounds + 1):
        prev = _final_weights(out / f"round_{r - 1:02d}" / "ticket")
        mask = _next_mask(out / f"round_{r:02d}", mask, prev, imp, seed=cfg.init_seed * 1000 + r)
        start, round_cfg = _reset(imp, cfg, theta_0, theta_k, prev, k)
        model = make_model(cfg, data)
        rounds.append(_round(r, out, round_cfg, data, model, mask, start, imp, progress))
    summary = {"settings": _settings(imp), "rounds": rounds}
    if distributed.is_main():
        write_json(summary, out / "summary.json")
    return summary


def _round(
    r: int,
    out: Path,
    cfg: TrainConfig,
    data: Splits,
    model: nn.Module,
    mask: Mask,
    start: StartState | None,
    imp: IMPConfig,
    progress: bool,
) -> dict:
    """Train round r's ticket and its controls; return the round's summary row (and print it)."""
    rdir = out / f"round_{r:02d}"
    if distributed.is_main() and not (rdir / "mask.npz").exists():
        mask.save(rdir / "mask.npz")
    trainer = Trainer(
        cfg, data, model, rdir / "ticket", mask=mask if r else None, progress=progress,
        record={"label": f"round {r}", "round": r},
    )  # fmt: skip
    result = trainer.fit(start)
    _finish(trainer.run_dir, mask, weights=True, keep=imp.keep_checkpoints)
    controls = {}
    for c in imp.controls if r else ():
        controls[c] = _control(c, r, rdir, cfg, data, mask, start, imp, progress)
    row = {
        "round": r,
        "density": mask.density(),
        "percent_remaining": 100 * mask.density(),
        "layer_density": mask.layer_density(),
        **_metrics(result),
        "controls": controls,
    }
    _print_row(row, imp.controls, header=r == 0)
    return row


def _reset(
    imp: IMPConfig,
    cfg: TrainConfig,
    theta_0: StartState,
    theta_k: StartState,
    prev: dict,
    k: int,
) -> tuple[StartState, TrainConfig]:
    """The state each round restarts from, and its training configuration, per reset mode."""
    if imp.reset == "init":
        return StartState(theta_0.model), cfg
    if imp.reset == "rewind":
        return theta_k, cfg
    start = StartState(prev, None, k)
    if imp.reset == "lr-rewind":
        return start, cfg
    return start, cfg.replace(lr=imp.finetune_lr or cfg.lr * 0.01, lr_schedule="constant")


def _control(
    name: str,
    r: int,
    rdir: Path,
    cfg: TrainConfig,
    data: Splits,
    mask: Mask,
    start: StartState,
    imp: IMPConfig,
    progress: bool,
) -> dict:
    """One control beside round r: the same mask with a fresh init, or a random same-density mask."""
    cdir = rdir / name.replace("-", "_")
    if name == "random-reinit":
        seed = cfg.init_seed + 7919 * r
        fresh = make_model(cfg, data, seed=seed).state_dict()
        cmask, cstart, extra = mask, StartState(fresh, None, start.step), {"reinit_seed": seed}
    else:
        seed = cfg.init_seed * 1000 + 104729 * r
        cmask = _load_or_make_mask(cdir / "mask.npz", lambda: random_mask_like(mask, seed))
        cstart, extra = start, {"mask_seed": seed}
    trainer = Trainer(
        cfg, data, make_model(cfg, data), cdir, mask=cmask, progress=progress,
        record={"label": f"round {r} {name}", "round": r, "control": name, **extra},
    )  # fmt: skip
    result = trainer.fit(cstart)
    _finish(cdir, cmask, weights=imp.save_control_weights, keep=imp.keep_checkpoints)
    return {**_metrics(result), **extra}


def _next_mask(rdir: Path, mask: Mask, weights: dict, imp: IMPConfig, seed: int) -> Mask:
    """Prune the previous round's final weights; stored once, so a resumed search reuses it."""

    def make() -> Mask:
        scores = score({n: weights[n] for n in mask.names()}, imp.criterion, seed=seed)
        return prune(
            mask,
            scores,
            fraction=imp.fraction,
            scope=imp.scope,
            granularity=imp.granularity,
            rate_scale=imp.rate_scale,
        )

    return _load_or_make_mask(rdir / "mask.npz", make)


def _load_or_make_mask(path: Path, make: Callable[[], Mask]) -> Mask:
    """Rank 0 makes and stores the mask once; every rank, and any resumed search, reads the file."""
    if distributed.is_main() and not path.exists():
        make().save(path)
    distributed.barrier(f"waiting for rank 0 to write {path}")
    return Mask.load(path)


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    """A finished run's final weights, exactly, from its sparse record."""
    state, _ = load_sparse(run / "weights.npz")
    return state


def _finish(run: Path, mask: Mask, weights: bool, keep: bool) -> None:
    """Turn a finished run's final checkpoint into its compact record (sparse weights).

    Rank 0 writes it; the other ranks wait, since the next round reads it.
    """
    final = run / "checkpoints" / "final.pt"
    if distributed.is_main() and final.exists():
        if weights:
            save_sparse(load_checkpoint(final)["model"], mask.cpu(), run / "weights.npz")
        if not keep:
            final.unlink()
    distributed.barrier(f"waiting for rank 0 to finish {run}")


def _metrics(result: TrainResult) -> dict[str, Any]:
    keys = (
        "test_accuracy",
        "test_loss",
        "best_val_step",
        "test_accuracy_at_best_val",
        "steps",
        "seconds",
    )
    return {k: getattr(result, k) for k in keys}


def _settings(imp: IMPConfig) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(imp).items() if k not in ("extra",)}


def _write_record(out: Path, cfg: TrainConfig, imp: IMPConfig) -> None:
    """imp.json: the search's full configuration; a different search in the same folder is refused."""
    settings = {k: v for k, v in _settings(imp).items() if k != "rounds"}
    fingerprint = hashlib.sha256(
        json.dumps([cfg.fingerprint(*NON_RESULT_FIELDS), settings], sort_keys=True).encode()
    ).hexdigest()[:16]
    path = out / "imp.json"
    if path.exists():
        old = read_json(path)
        if old.get("fingerprint") != fingerprint:
            raise ConfigError(
                f"{out} holds an IMP search with other settings; only --rounds may change "
                "when resuming. Use a new --out directory."
            )
    if distributed.is_main():
        write_json(
            {
                "train": cfg.to_dict(),
                "imp": _settings(imp),
                "fingerprint": fingerprint,
                **provenance(),
            },
            path,
        )


def _fmt(x: float | None) -> str:
    return "   -  " if x is None else f"{100 * x:6.2f}"


def _print_row(row: dict, controls: tuple[str, ...], header: bool = False) -> None:
    """One line of the per-round table (through tqdm so progress bars stay intact)."""
    if header:
        cols = "round  weights%  test_acc  acc@best_val  best_step" + "".join(
            f"  {c:>13s}" for c in controls
        )
        tqdm.write(cols)
        tqdm.write("-" * len(cols))
    line = (
        f"{row['round']:5d}  {row['percent_remaining']:8.2f}  {_fmt(row['test_accuracy']):>8s}"
        f"  {_fmt(row['test_accuracy_at_best_val']):>12s}  {row['best_val_step'] or 0:9d}"
    )
    for c in controls:
        m = row["controls"].get(c)
        line += f"  {_fmt(m['test_accuracy_at_best_val'] if m else None):>13s}"
    tqdm.write(line)
