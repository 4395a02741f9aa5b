"""`lottery prune`: train while a pruning schedule grows the sparsity (gradual pruning)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lottery import distributed
from lottery.build import load_data, make_model
from lottery.cli import add_train_args, config_from_args, parse_granularity, parse_scales
from lottery.commands.schedule import add_schedule_args, schedules_from_args
from lottery.config import ConfigError
from lottery.criteria import CRITERIA, training_batches
from lottery.masks import SCOPES, Mask, save_sparse
from lottery.pruner import GradualPruner, run_length
from lottery.schedules import SCHEDULES
from lottery.storage import load_checkpoint
from lottery.trainer import Trainer


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune",
        help="gradual pruning during training under a schedule (one-shot, AGP, one-cycle, ...)",
        description="Train one network while its mask is extended to the schedule's target "
        "sparsity at regular steps. Rerunning the same command resumes.",
    )
    add_train_args(p, "checkpoints/prune")
    p.add_argument(
        "--schedule",
        default="one-cycle",
        help=f"one of {', '.join(SCHEDULES)}, or module:function",
    )
    add_schedule_args(p, ("fraction", "epoch", "step"))
    g = p.add_argument_group("mask updates")
    g.add_argument(
        "--update-every",
        default="100",
        help="mask update frequency: a number of steps, or 'epoch' (default 100)",
    )
    g.add_argument("--scope", choices=SCOPES, default="layer", help="per layer, or one threshold")
    g.add_argument(
        "--granularity",
        type=parse_granularity,
        default="weight",
        help="weight, filter, channel or N:M (e.g. 2:4: at most N kept in M consecutive inputs)",
    )
    g.add_argument("--criterion", choices=sorted(CRITERIA), default="magnitude")
    g.add_argument(
        "--rate-scale",
        type=parse_scales,
        default={},
        help="per-tensor multipliers of the target, e.g. classifier.4.weight=0.5 (0: unpruned)",
    )
    g.add_argument(
        "--prune-seed", type=int, default=0, help="seed of random scoring and scoring batches"
    )
    p.set_defaults(func=run)


def parse_every(text: str, steps_per_epoch: int) -> int:
    """`--update-every`: a positive step count, or 'epoch'."""
    if text == "epoch":
        return steps_per_epoch
    try:
        every = int(text)
    except ValueError:
        raise ConfigError(f"--update-every must be a step count or 'epoch', not {text!r}") from None
    if every < 1:
        raise ConfigError(f"--update-every must be >= 1, got {every}")
    return every


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    (schedule,) = schedules_from_args([args.schedule], args)
    data = load_data(cfg, download=args.download)
    total, per_epoch = run_length(cfg, data)
    out = Path(args.out)
    pruner = GradualPruner(
        schedule,
        total,
        every=parse_every(args.update_every, per_epoch),
        steps_per_epoch=per_epoch,
        scope=args.scope,
        granularity=args.granularity,
        criterion=args.criterion,
        rate_scale=args.rate_scale,
        seed=args.prune_seed,
        log_path=out / "pruning.jsonl",
        batches=training_batches(data.train_x, data.train_y, cfg.batch_size, args.prune_seed),
        input_shape=data.input_shape,
    )
    cfg = cfg.replace(extra={**cfg.extra, "pruning": pruner.settings()})
    model = make_model(cfg, data)
    trainer = Trainer(cfg, data, model, out, pruner=pruner, progress=not args.no_progress)
    result = trainer.fit()  # refuses a folder that holds a run with other settings
    final = load_checkpoint(out / "checkpoints" / "final.pt")
    mask = Mask(final["mask"])
    if distributed.is_main():
        mask.save(out / "mask.npz")
        save_sparse(final["model"], mask, out / "weights.npz")
    print(
        f"{schedule.name}: sparsity {mask.sparsity():.4f} (target {schedule.final_sparsity}), "
        f"test accuracy {result.test_accuracy:.4f}, {len(pruner.update_steps)} mask updates; "
        f"mask {out / 'mask.npz'}, log {out / 'pruning.jsonl'}"
    )
    return 0
