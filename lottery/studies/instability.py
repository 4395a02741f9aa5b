"""Instability analysis: are two trainings from the same state linearly mode connected?

From the state at step k (dense, or a pruned round's mask on the dense run's step-k weights),
train two copies with different data orders, evaluate test error along the straight line between
their final weights, and report the error barrier: max error on the path minus the mean of the
endpoints' errors (Frankle, Dziugaite, Roy & Carbin, "Linear Mode Connectivity and the Lottery
Ticket Hypothesis", ICML 2020; a network is stable when the barrier is below ~2%).

One pair's barrier at one k mixes the instability with the luck of its two data orders, so a sweep
measures several pairs per k and reports the barrier's mean, sample std and 95% Student-t interval
over pairs (Frankle et al. 2020 likewise report each point as a mean and standard deviation over
several runs).
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lottery.analysis.aggregate import summarize
from lottery.analysis.alignment import permute, weight_matching
from lottery.core import layout
from lottery.core.config import NON_RESULT_FIELDS, ConfigError, TrainConfig
from lottery.core.device import has_batchnorm
from lottery.core.storage import load_checkpoint, read_json, write_json
from lottery.datasets.loading import Splits
from lottery.models.symmetry import NoSymmetryError, permutation_spec
from lottery.pruning.maskfile import MaskError
from lottery.pruning.masks import Mask
from lottery.studies.base import StudyRecord
from lottery.studies.names import MIN_POINTS
from lottery.studies.rewind_sweep import checkpoint_at, train_dense
from lottery.training.run import StartState, check_fits_training, run_length
from lottery.training.runfolder import hold
from lottery.training.setup import load_data, make_model
from lottery.training.stacked import evaluate
from lottery.training.trainer import Trainer

Pair = tuple[int, int]  # the data seeds of two copies trained from the same state
# The one-pair record of a step folder written before sweeps took several pairs.
LEGACY_CURVE = layout.CURVE
# settings.json: pairs may be added to a sweep, never dropped.
RECORD = StudyRecord(
    file=layout.INSTABILITY_SETTINGS,
    what="an instability sweep",
    key="instability",
    resumable="the pairs (more may be added)",
    grows=("pairs",),
)
# BatchNorm statistics along the path are re-estimated on this many training examples.
BN_EXAMPLES = 4096


def interpolate(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """(1 - alpha) * a + alpha * b for floating tensors; integer buffers (BN counters) come from a."""
    if a.keys() != b.keys():
        raise ValueError("state dicts to interpolate have different keys")
    return {
        k: torch.lerp(v, b[k].to(v.device), alpha) if v.is_floating_point() else v.clone()
        for k, v in a.items()
    }


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """Replace BatchNorm running statistics by their average over full training batches of x.

    Interpolated weights make the endpoints' running statistics meaningless, so they are
    recomputed (Frankle et al. 2020 do the same); a model without BatchNorm is left untouched.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    was_training = model.training
    model.train()
    size = min(batch_size, len(x))
    for i in range(0, len(x) - size + 1, size):
        model(x[i : i + size])
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)


def error_barrier(errors: list[float]) -> float:
    """Max error on the path minus the mean of the two endpoints' errors (never negative)."""
    return float(max(errors) - (errors[0] + errors[-1]) / 2)


def error_curve(
    model: nn.Module,
    a: dict[str, torch.Tensor],
    b: dict[str, torch.Tensor],
    data: Splits,
    points: int = MIN_POINTS,
    batch_size: int = 128,
) -> dict[str, list[float]]:
    """Test error and loss at `points` evenly spaced points from a (alpha=0) to b (alpha=1).

    The path is evaluated on a copy of `model`, which is left as it was: a state dict taken from
    `model` shares its tensors, and loading the path's points into them would change `a` or `b`."""
    if points < MIN_POINTS:
        raise ConfigError(f"the path needs at least {MIN_POINTS} points, got {points}")
    model = copy.deepcopy(model)
    bn = has_batchnorm(model)
    bn_x = data.train_x[:BN_EXAMPLES]
    alphas = np.linspace(0.0, 1.0, points).tolist()
    errors, losses = [], []
    for alpha in alphas:
        model.load_state_dict(interpolate(a, b, alpha))
        if bn:
            reestimate_batchnorm(model, bn_x, batch_size)
        loss, acc = evaluate(model, data.test_x, data.test_y)
        errors.append(1.0 - acc)
        losses.append(loss)
    return {"alpha": alphas, "test_error": errors, "test_loss": losses}


@dataclass
class InstabilityRow:
    """One pair's barrier from one starting step, with the curve it was measured on."""

    step: int
    barrier: float
    seeds: list[int]
    endpoint_errors: list[float]
    alpha: list[float]
    test_error: list[float]
    test_loss: list[float]
    aligned: dict | None = None  # with --align: the barrier and curve after weight matching


def instability(
    cfg: TrainConfig,
    start: StartState,
    out: str | Path,
    *,
    seeds: tuple[int, int],
    points: int = MIN_POINTS,
    mask: Mask | None = None,
    data: Splits | None = None,
    progress: bool = True,
    record: str = layout.CURVE,
    align: bool = False,
) -> InstabilityRow:
    """Train two copies from `start` with data seeds `seeds` and measure their error barrier
    (with `align`, also after permuting the second copy's units onto the first's).

    Copies are ordinary resumable Trainer runs in out/copy_<seed> (pairs sharing a seed share
    its copy); the row is cached in out/`record`, so rerunning finishes interrupted work and
    recomputes nothing (a row measured without `align` gains its aligned barrier).
    """
    out = Path(out)
    if len(set(seeds)) != 2:
        raise ConfigError(f"instability needs two different data seeds, got {seeds}")
    row = InstabilityRow(**read_json(out / record)) if (out / record).exists() else None
    if row is not None and (row.aligned is not None or not align):
        return row
    data = data if data is not None else load_data(cfg)
    finals = []
    for seed in seeds:
        copy_cfg = cfg.replace(data_seed=seed, save_at=())
        run = out / f"copy_{seed}"
        Trainer(
            copy_cfg, data, make_model(cfg, data), run, mask=mask, progress=progress,
            record={"label": f"step {start.step} copy {seed}", "start_step": start.step},
        ).fit(start)  # fmt: skip
        finals.append(load_checkpoint(layout.checkpoint_dir(run) / layout.FINAL)["model"])
    model = make_model(cfg, data).to(data.test_x.device)
    if row is None:
        curve = error_curve(model, finals[0], finals[1], data, points, cfg.batch_size)
        errors = curve["test_error"]
        row = InstabilityRow(
            step=start.step,
            barrier=error_barrier(errors),
            seeds=list(seeds),
            endpoint_errors=[errors[0], errors[-1]],
            **curve,
        )
    if align:
        spec = permutation_spec(model)
        perms = weight_matching(finals[0], finals[1], spec).perms
        curve = error_curve(
            model, finals[0], permute(finals[1], spec, perms), data, points, cfg.batch_size
        )
        row.aligned = {"barrier": error_barrier(curve["test_error"]), **curve}
    write_json(asdict(row), out / record)
    return row


def default_pairs(data_seed: int, n: int = 1) -> list[Pair]:
    """`n` pairs of data seeds after the dense run's own: (d+1, d+2), (d+3, d+4), ..."""
    if n < 1:
        raise ConfigError(f"--pairs must be >= 1, got {n}")
    return [(data_seed + 2 * i + 1, data_seed + 2 * i + 2) for i in range(n)]


def check_pairs(pairs: Sequence[Sequence[int]], data_seed: int) -> list[Pair]:
    """The pairs as tuples, or ConfigError: each needs two different seeds, none may be the dense
    run's data seed (that copy would retrace the dense run), and no pair may repeat."""
    pairs = [tuple(int(s) for s in p) for p in pairs]
    if not pairs:
        raise ConfigError("give at least one pair of data seeds")
    for p in pairs:
        if len(p) != 2 or p[0] == p[1]:
            raise ConfigError(f"a pair needs two different data seeds, got {':'.join(map(str, p))}")
        if data_seed in p:
            raise ConfigError(
                f"pair {p[0]}:{p[1]} uses data seed {data_seed}, the dense run's own data order; "
                "the copies need other seeds"
            )
    if len({frozenset(p) for p in pairs}) != len(pairs):
        raise ConfigError(f"pairs repeat: {', '.join(f'{a}:{b}' for a, b in pairs)}")
    return pairs


def pair_record(pair: Pair) -> str:
    """The file name of one pair's curve and barrier inside a step folder."""
    return f"curve_{pair[0]}_{pair[1]}.json"


def step_summary(step: int, rows: list[InstabilityRow]) -> dict:
    """One start step over its pairs: each pair's row (barrier, endpoint errors, curve), the
    barrier's mean, sample std and 95% Student-t interval (None below two pairs), and the mean
    |difference| of the two endpoints' test errors (how uneven the copies ended)."""

    def finite(x: float) -> float | None:
        return None if math.isnan(x) else x

    def stats(prefix: str, barriers: list[float]) -> dict:
        s = summarize(barriers)
        return {
            prefix: s["mean"],
            f"{prefix}_std": finite(s["std"]),
            f"{prefix}_ci95_low": finite(s["ci95_low"]),
            f"{prefix}_ci95_high": finite(s["ci95_high"]),
        }

    aligned = [r.aligned["barrier"] for r in rows if r.aligned is not None]
    return {
        "step": step,
        "n_pairs": len(rows),
        **stats("barrier", [r.barrier for r in rows]),
        **(stats("aligned_barrier", aligned) if len(aligned) == len(rows) else {}),
        "endpoint_gap": float(np.mean([abs(a - b) for a, b in (r.endpoint_errors for r in rows)])),
        "pairs": [asdict(r) for r in rows],
    }


def instability_sweep(
    cfg: TrainConfig,
    steps: list[int],
    out: str | Path,
    *,
    dense: str | Path | None = None,
    mask: Mask | None = None,
    seeds: Pair | Sequence[Pair] | None = None,
    points: int = MIN_POINTS,
    progress: bool = True,
    align: bool = False,
) -> dict:
    """Barrier vs starting step: one dense run with checkpoints at `steps` (or an existing one
    given as `dense`), then each pair of copies from each step, under `mask` for a pruned
    subnetwork; writes out/instability.json with a row per step (`step_summary`).

    `seeds` is one pair of data seeds or a list of pairs (default: one pair, the run's data seed
    + 1 and + 2). A folder may gain pairs on a rerun; it refuses other settings or dropped pairs.
    With `align` every pair is also measured after weight matching (`lottery.analysis.alignment`);
    a folder measured without it gains the aligned barriers on a rerun with it.
    """
    out = Path(out)
    steps = sorted(set(steps))
    if not steps:
        raise ConfigError("give at least one step to measure instability from")
    if points < MIN_POINTS:
        raise ConfigError(f"the path needs at least {MIN_POINTS} points, got {points}")
    if seeds is None:
        pairs = default_pairs(cfg.data_seed)
    else:
        one = len(seeds) == 2 and all(isinstance(s, int | np.integer) for s in seeds)
        pairs = check_pairs([seeds] if one else seeds, cfg.data_seed)
    dense_dir = Path(dense) if dense is not None else out / "dense"
    data = load_data(cfg)
    total, _ = run_length(cfg, data)
    outside = [k for k in steps if not 0 <= k <= total]
    if outside:
        raise ConfigError(f"start steps {outside} lie outside training (steps 0 to {total})")
    check_fits_training(cfg, total)
    model = make_model(cfg, data)  # an unknown model, init or width: refused before writing
    if align:
        try:
            permutation_spec(model)
        except NoSymmetryError as e:
            raise ConfigError(f"--align: {e}") from None
    if mask is not None:
        try:
            mask.check_fits(model)
        except MaskError as e:
            raise ConfigError(f"the mask does not fit {cfg.model}: {e}") from None
    settings = {
        "mask": mask.digest() if mask is not None else None,
        "pairs": [list(p) for p in pairs],
        "points": points,
    }
    config = cfg.fingerprint(*NON_RESULT_FIELDS)

    def legacy(old: dict) -> bool:  # settings.json before the study record; pairs once "seeds"
        old_pairs = old.get("pairs", [old.get("seeds")])
        return (old.get("config"), old.get("mask"), old.get("points")) == (
            config,
            legacy_mask_digest(mask) if mask is not None else None,
            points,
        ) and all(p in settings["pairs"] for p in old_pairs)

    RECORD.check(out, cfg, settings, data.digest, legacy)
    with hold(out):  # one writer for the folder, from settings.json to instability.json
        RECORD.write(out, cfg, settings, data.digest, legacy)
        if dense is None:
            train_dense(cfg, steps, dense_dir, data, progress)
        elif read_json(dense_dir / layout.CONFIG).get("fingerprint") != config:
            raise ConfigError(
                f"{dense_dir} was trained with another configuration than the one given"
            )
        rows = []
        for k in steps:
            start = StartState.from_checkpoint(checkpoint_at(dense_dir, k))
            step_dir = out / f"step_{k:07d}"
            measured = []
            for pair in pairs:
                row = _legacy_row(step_dir, pair)
                if row is None or (align and row.aligned is None):
                    row = instability(
                        cfg, start, step_dir, seeds=pair, points=points, mask=mask, data=data,
                        progress=progress, record=pair_record(pair), align=align,
                    )  # fmt: skip
                measured.append(row)
            rows.append(step_summary(k, measured))
        result = {
            "config": config,
            **settings,
            "seeds": list(dict.fromkeys(s for p in pairs for s in p)),
            "dense": str(dense_dir),
            "density": mask.density() if mask is not None else 1.0,
            "rows": rows,
        }
        write_json(result, out / layout.INSTABILITY)
    return result


def _legacy_row(step_dir: Path, pair: Pair) -> InstabilityRow | None:
    """The row a one-pair sweep recorded for `pair` before pairs had their own files, if any."""
    path = step_dir / LEGACY_CURVE
    if (step_dir / pair_record(pair)).exists() or not path.exists():
        return None
    row = InstabilityRow(**read_json(path))
    return row if row.seeds == list(pair) else None


def legacy_mask_digest(mask: Mask) -> str:
    """The mask hash that settings.json recorded before the study record (Mask.digest since);
    read only to resume those sweeps."""
    h = hashlib.sha256()
    for name, t in mask.tensors.items():
        h.update(f"{name}:{tuple(t.shape)}".encode())
        h.update(t.cpu().numpy().tobytes())
    return h.hexdigest()[:16]
