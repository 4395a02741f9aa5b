"""Rewind-point comparison: IMP from several rewind steps that share one dense run.

One dense run keeps checkpoints at every requested step; each rewind point k then runs IMP with
weight rewinding to k (Frankle, Dziugaite, Roy & Carbin 2019/2020) with the same init, data order
and pruning settings. Every IMP search reads its round 0 from the shared dense run (a relative
link round_00/ticket -> ../../dense), so the dense network is trained once, not once per point.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from lottery.analysis.overlap import pairwise
from lottery.core import layout
from lottery.core.config import ConfigError, TrainConfig
from lottery.core.storage import write_json
from lottery.datasets.loading import Splits
from lottery.pruning.masks import Mask
from lottery.studies.imp import IMPConfig, run_searches, validate_search
from lottery.training.run import TrainResult
from lottery.training.runfolder import hold
from lottery.training.setup import load_data, make_model
from lottery.training.trainer import Trainer


def checkpoint_at(run: Path, step: int) -> Path:
    """The checkpoint a run kept at `step`, or a clear error naming the steps it has."""
    path = layout.step_checkpoint(run, step)
    if not path.exists():
        have = layout.saved_steps(run)
        raise ConfigError(f"{run} kept no checkpoint at step {step} (it has steps {have})")
    return path


def train_dense(
    cfg: TrainConfig,
    steps: list[int],
    run_dir: Path,
    data: Splits | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train (or resume, or reuse) the dense network with checkpoints at `steps` and step 0."""
    data = data if data is not None else load_data(cfg)
    dense_cfg = cfg.replace(save_at=(*cfg.save_at, 0, *steps))
    trainer = Trainer(
        dense_cfg, data, make_model(cfg, data), run_dir, progress=progress,
        record={"label": "dense", "round": 0},
    )  # fmt: skip
    return trainer.fit()


def check_rewind_steps(steps: list[int]) -> list[int]:
    """The rewind steps in order: at least one, none negative, none named twice."""
    if not steps:
        raise ConfigError("give at least one rewind step")
    twice = sorted({k for k in steps if steps.count(k) > 1})
    if twice:
        raise ConfigError(f"--rewind-steps names step(s) {twice} twice")
    if min(steps) < 0:
        raise ConfigError(f"rewind steps must be >= 0, got {min(steps)}")
    return sorted(steps)


def rewind_sweep(
    cfg: TrainConfig, imp: IMPConfig, steps: list[int], out: str | Path, progress: bool = True
) -> dict:
    """IMP with rewinding to each of `steps`, sharing one dense run; writes out/rewind_sweep.json.

    The rewind points' searches advance round by round together; with `imp.batched` the engine
    stacks each point's ticket and controls (runs at different rewind steps stand at different
    steps of their LR schedules, so they form separate cohorts).

    The result holds each rewind point's per-round summary and, for every pruned round, the
    pairwise overlap of the rewind points' masks against the chance baseline.
    """
    out = Path(out)
    steps = check_rewind_steps(steps)
    data = load_data(cfg)
    model = make_model(cfg, data)
    points = [dataclasses.replace(imp, reset="rewind", rewind_step=k) for k in steps]
    for k, point in zip(steps, points, strict=True):  # every point, before the dense run
        validate_search([cfg], point, [layout.rewind_dir(out, k)], data, model)
    with hold(out):  # one writer for the folder, from the dense run to rewind_sweep.json
        dense = out / layout.DENSE
        train_dense(cfg, steps, dense, progress=progress)
        outs = [layout.rewind_dir(out, k) for k in steps]
        for kdir in outs:
            link = layout.ticket_dir(kdir, 0)
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(os.path.relpath(dense, link.parent), link, target_is_directory=True)
        summaries = run_searches([cfg] * len(steps), points, outs, out, progress)
        runs = {str(k): summary["rounds"] for k, summary in zip(steps, summaries, strict=True)}
        result = {
            "steps": steps,
            "imp": {**dataclasses.asdict(imp), "reset": "rewind"},
            "runs": runs,
            "overlap": sweep_overlap(out, steps),
        }
        write_json(result, out / layout.REWIND_SWEEP)
    return result


def sweep_overlap(out: Path, steps: list[int]) -> dict[str, list[dict]]:
    """For each pruned round, the pairwise overlap of the rewind points' masks (by round name)."""
    by_round: dict[str, dict[str, Mask]] = {}
    for k in steps:
        for r in layout.round_dirs(layout.rewind_dir(out, k))[1:]:
            by_round.setdefault(r.name, {})[f"k={k}"] = Mask.load(r / layout.MASK)
    return {name: pairwise(masks) for name, masks in by_round.items() if len(masks) > 1}
