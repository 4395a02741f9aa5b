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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lottery import distributed
from lottery.batched import RunSpec, train_runs
from lottery.build import load_data, make_model
from lottery.config import NON_RESULT_FIELDS, ConfigError, TrainConfig
from lottery.criteria import CRITERIA, Context, check, score, training_batches
from lottery.data import Splits
from lottery.masks import (
    Mask,
    MaskError,
    check_granularity,
    check_rate,
    load_sparse,
    prune,
    random_mask_like,
    save_sparse,
)
from lottery.models import output_layer_name, prunable_names
from lottery.storage import load_checkpoint, provenance, read_json, write_json
from lottery.trainer import StartState, TrainResult, resolve_device

RESETS = ("init", "rewind", "lr-rewind", "finetune")
CONTROLS = ("random-reinit", "random-prune")
# What a round's pruning can offer a criterion (scores accumulated in training are not kept).
CONTEXT = {"start", "model", "batches", "input_shape", "sparsity"}


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
    batched: bool = False
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
        try:
            check_granularity(self.granularity)
            check(self.criterion, CONTEXT)
        except MaskError as e:
            raise ConfigError(str(e)) from None
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
    return _search([cfg], imp, [Path(out)], progress)[0]


def run_imp_seeds(
    cfg: TrainConfig, imp: IMPConfig, out: str | Path, seeds: Sequence[int], progress: bool = True
) -> dict[int, dict]:
    """One search per seed (its init and data-order seed) in out/seed_<s>/, each laid out as usual.

    The searches advance round by round together, so with `imp.batched` a round's tickets and
    controls of every seed train as one batched model.
    """
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct and at least one, got {list(seeds)}")
    cfgs = [cfg.replace(init_seed=s, data_seed=s) for s in seeds]
    summaries = _search(cfgs, imp, [Path(out) / f"seed_{s}" for s in seeds], progress)
    return dict(zip(seeds, summaries, strict=True))


def _search(
    cfgs: list[TrainConfig], imp: IMPConfig, outs: list[Path], progress: bool
) -> list[dict]:
    """The IMP loop, for one search or several side by side (same data, model and settings)."""
    distributed.setup(resolve_device(cfgs[0].device))
    data = load_data(cfgs[0])
    model = make_model(cfgs[0], data)
    imp = _resolved(imp, cfgs[0].model, model)
    k = imp.rewind_step if imp.reset != "init" else 0
    for cfg, out in zip(cfgs, outs, strict=True):
        _write_record(out, cfg, imp)

    # Round 0: the dense network, saving θ0 and θk once for every later round.
    dense = [cfg.replace(save_at=tuple({*cfg.save_at, 0, k})) for cfg in cfgs]
    masks = [Mask.ones(model) for _ in cfgs]
    first = _rounds(0, outs, dense, data, masks, [None] * len(cfgs), imp, progress)
    rounds = [[row] for row in first]
    ckpts = [out / "round_00" / "ticket" / "checkpoints" for out in outs]
    theta_0 = [StartState.from_checkpoint(c / f"step_{0:07d}.pt") for c in ckpts]
    theta_k = [StartState.from_checkpoint(c / f"step_{k:07d}.pt") for c in ckpts]

    for r in range(1, imp.rounds + 1):
        prev = [_final_weights(out / f"round_{r - 1:02d}" / "ticket") for out in outs]
        masks = [
            _next_mask(out / f"round_{r:02d}", m, p, imp, seed=cfg.init_seed * 1000 + r,
                       context=(cfg, data, t0.model, tk.model))
            for out, m, p, cfg, t0, tk in zip(outs, masks, prev, cfgs, theta_0, theta_k, strict=True)
        ]  # fmt: skip
        resets = [_reset(imp, *a, k) for a in zip(cfgs, theta_0, theta_k, prev, strict=True)]
        starts, round_cfgs = [s for s, _ in resets], [c for _, c in resets]
        rows = _rounds(r, outs, round_cfgs, data, masks, starts, imp, progress)
        for kept, row in zip(rounds, rows, strict=True):
            kept.append(row)
    summaries = [{"settings": _settings(imp), "rounds": rows} for rows in rounds]
    if distributed.is_main():
        for summary, out in zip(summaries, outs, strict=True):
            write_json(summary, out / "summary.json")
    return summaries


def _rounds(
    r: int,
    outs: list[Path],
    cfgs: list[TrainConfig],
    data: Splits,
    masks: list[Mask],
    starts: list[StartState | None],
    imp: IMPConfig,
    progress: bool,
) -> list[dict]:
    """Train round r's ticket and controls of every search (one batch with `imp.batched`); return
    each search's summary row (and print it)."""
    runs = [_round_runs(r, *a, data, imp) for a in zip(outs, cfgs, masks, starts, strict=True)]
    specs = [spec for search in runs for _, spec, _ in search]
    results = iter(train_runs(specs, data, batched=imp.batched, progress=progress))
    rows = []
    for i, (search, mask) in enumerate(zip(runs, masks, strict=True)):
        controls: dict[str, dict] = {}
        for name, spec, extra in search:
            result = next(results)
            weights = name is None or imp.save_control_weights
            kept = spec.mask if spec.mask is not None else mask
            _finish(spec.run_dir, kept, weights=weights, keep=imp.keep_checkpoints)
            if name is None:
                ticket = result
            else:
                controls[name] = {**_metrics(result), **extra}
        row = {
            "round": r,
            "density": mask.density(),
            "percent_remaining": 100 * mask.density(),
            "layer_density": mask.layer_density(),
            **_metrics(ticket),
            "controls": controls,
        }
        tag = outs[i].name if len(outs) > 1 else ""
        _print_row(row, imp.controls, header=r == 0 and i == 0, tag=tag)
        rows.append(row)
    return rows


def _round_runs(
    r: int,
    out: Path,
    cfg: TrainConfig,
    mask: Mask,
    start: StartState | None,
    data: Splits,
    imp: IMPConfig,
) -> list[tuple[str | None, RunSpec, dict]]:
    """Round r's ticket (name None) and controls as runs to train, with the controls' seeds."""
    rdir = out / f"round_{r:02d}"
    if distributed.is_main() and not (rdir / "mask.npz").exists():
        mask.save(rdir / "mask.npz")
    ticket = RunSpec(
        cfg, rdir / "ticket", make_model(cfg, data), mask if r else None, start,
        record={"label": f"round {r}", "round": r},
    )  # fmt: skip
    controls = [_control(c, r, rdir, cfg, data, mask, start) for c in (imp.controls if r else ())]
    return [(None, ticket, {}), *controls]


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
) -> tuple[str, RunSpec, dict]:
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
    record = {"label": f"round {r} {name}", "round": r, "control": name, **extra}
    return name, RunSpec(cfg, cdir, make_model(cfg, data), cmask, cstart, record), extra


def _next_mask(
    rdir: Path, mask: Mask, weights: dict, imp: IMPConfig, seed: int, context: tuple
) -> Mask:
    """Prune the previous round's final weights; stored once, so a resumed search reuses it.

    `context` (config, data, θ0 and θk state dicts) feeds criteria that look beyond the weights.
    """

    def make() -> Mask:
        ctx = _criterion_context(mask, weights, imp, seed, *context)
        scores = score(imp.criterion, ctx, seed=seed)
        return prune(
            mask,
            scores,
            fraction=imp.fraction,
            scope=imp.scope,
            granularity=imp.granularity,
            rate_scale=imp.rate_scale,
        )

    return _load_or_make_mask(rdir / "mask.npz", make)


def _criterion_context(
    mask: Mask,
    weights: dict,
    imp: IMPConfig,
    seed: int,
    cfg: TrainConfig,
    data: Splits,
    theta_0: dict,
    theta_k: dict,
) -> Context:
    """What a criterion may use at a round's pruning: the final weights, θ0 (θk when rewinding),
    the trained model, seeded training batches and the round's approximate target sparsity."""
    device = data.train_x.device
    names = mask.names()
    model = None
    if "model" in CRITERIA[imp.criterion].needs:
        model = make_model(cfg, data).to(device)
        model.load_state_dict(weights)
    return Context(
        weights={n: weights[n].to(device) for n in names},
        initial={n: theta_0[n] for n in names},
        rewind={n: theta_k[n] for n in names} if imp.reset == "rewind" else None,
        model=model,
        mask=mask.to(device),
        sparsity=1.0 - mask.density() * (1.0 - imp.fraction),
        batches=training_batches(data.train_x, data.train_y, cfg.batch_size, seed),
        input_shape=data.input_shape,
    )


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
    # --rounds may grow on resume; --batched changes how runs are scheduled, not what they are
    settings = {k: v for k, v in _settings(imp).items() if k not in ("rounds", "batched")}
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


def _print_row(row: dict, controls: tuple[str, ...], header: bool = False, tag: str = "") -> None:
    """One line of the per-round table (through tqdm so progress bars stay intact); `tag` names
    the search when several run side by side."""
    if header:
        cols = "round  weights%  test_acc  acc@best_val  best_step" + "".join(
            f"  {c:>13s}" for c in controls
        )
        cols = f"{'search':>8s}  {cols}" if tag else cols
        tqdm.write(cols)
        tqdm.write("-" * len(cols))
    line = (
        f"{row['round']:5d}  {row['percent_remaining']:8.2f}  {_fmt(row['test_accuracy']):>8s}"
        f"  {_fmt(row['test_accuracy_at_best_val']):>12s}  {row['best_val_step'] or 0:9d}"
    )
    for c in controls:
        m = row["controls"].get(c)
        line += f"  {_fmt(m['test_accuracy_at_best_val'] if m else None):>13s}"
    tqdm.write(f"{tag:>8s}  {line}" if tag else line)
