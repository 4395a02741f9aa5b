"""`lottery prune`: train while a pruning schedule grows the sparsity (gradual pruning), or while
SET or RigL move weights at a constant sparsity (dynamic sparse training)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lottery.cli.commands.schedule import add_schedule_args, schedules_from_args
from lottery.cli.main import (
    add_allocation_args,
    add_batch_args,
    add_mask_args,
    add_train_args,
    command_help,
    config_from_args,
    parse_scales,
    scope_from_args,
    show_progress,
)
from lottery.core import layout
from lottery.core.config import ConfigError, check_seeds
from lottery.pruning.names import DROP_FRACTION, DST_END, DST_METHODS
from lottery.pruning.schedules import SCHEDULES
from lottery.studies.names import LAYERS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune",
        help=command_help("prune"),
        description="Train one network while its mask is extended to the schedule's target "
        "sparsity at regular steps. Rerunning the same command resumes.",
    )
    add_train_args(p, "checkpoints/prune")
    p.add_argument(
        "--schedule",
        default=None,
        help=f"one of {', '.join(SCHEDULES)}, or module:function (default one-cycle; one-shot "
        "at step 0 with --dst)",
    )
    add_schedule_args(p, ("fraction", "epoch", "step"))
    g = p.add_argument_group("mask updates")
    g.add_argument(
        "--update-every",
        default="100",
        help="mask update frequency: a number of steps, or 'epoch' (default 100)",
    )
    add_allocation_args(g, "uniform (erk with --dst)")
    add_mask_args(g)
    g.add_argument(
        "--rate-scale",
        type=parse_scales,
        default={},
        help="per-tensor multipliers of the target, e.g. classifier.4.weight=0.5 (0: unpruned)",
    )
    g.add_argument(
        "--layers",
        choices=LAYERS,
        default="all",
        help="prune every prunable tensor, or convolution weights only (fc layers stay dense)",
    )
    g.add_argument(
        "--prune-seed", type=int, default=0, help="seed of random scoring and scoring batches"
    )
    d = p.add_argument_group("dynamic sparse training")
    d.add_argument(
        "--dst",
        choices=DST_METHODS,
        default=None,
        help="keep --final-sparsity from step 0 and move weights every --update-every steps: "
        "drop the smallest, grow at random (set; Mocanu et al. 2018) or by gradient (rigl; Evci "
        "et al. 2020)",
    )
    d.add_argument(
        "--drop-fraction",
        type=float,
        default=DROP_FRACTION,
        help=f"α: fraction of kept weights moved at step 0, cosine-annealed to 0 at --dst-end "
        f"(default {DROP_FRACTION})",
    )
    d.add_argument(
        "--dst-end",
        type=float,
        default=DST_END,
        help=f"T_end: the last mask move, as a fraction of training (default {DST_END})",
    )
    add_batch_args(p, "run")
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
    from lottery.pruning.masks import Mask
    from lottery.studies.gradual import GradualRun, PruningSettings, train_gradual
    from lottery.training.run import run_length
    from lottery.training.runfolder import check_writable
    from lottery.training.setup import load_data

    cfg = config_from_args(args)
    name = args.schedule or ("one-shot" if args.dst else "one-cycle")
    (schedule,) = schedules_from_args([name], args)
    scope = scope_from_args(args, "erk" if args.dst else "layer")
    check_writable(args.out, "--out", kinds=("run", "seeds"))
    data = load_data(cfg, download=args.download)
    settings = PruningSettings(
        every=parse_every(args.update_every, run_length(cfg, data)[1]),
        scope=scope,
        granularity=args.granularity,
        criterion=args.criterion,
        rate_scale=args.rate_scale,
        seed=args.prune_seed,
        layers=args.layers,
        dst=args.dst,
        dst_end=args.dst_end,
        drop_fraction=args.drop_fraction,
    )
    if args.seeds is not None:
        check_seeds(args.seeds)
    seeds = args.seeds or [None]
    runs = [
        GradualRun(cfg, schedule, Path(args.out))
        if s is None
        else GradualRun(cfg.replace(init_seed=s, data_seed=s), schedule, layout.seed_dir(args.out, s),
                        record={"label": f"seed {s}"})
        for s in seeds
    ]  # fmt: skip
    progress = show_progress(args)
    results = train_gradual(
        runs, settings, data, batched=args.batched, progress=progress, lock=Path(args.out)
    )
    for run, result in zip(runs, results, strict=True):
        mask = Mask.load(run.out / layout.MASK)
        print(
            f"{args.dst or schedule.name}: sparsity {100 * mask.sparsity():.2f}% "
            f"(target {100 * schedule.final_sparsity:.2f}%; {100 * mask.density():.2f}% of weights "
            "remaining), "
            f"test accuracy {100 * result.test_accuracy:.2f}%, "
            f"{len(pruned_steps(run.out))} mask {'moves' if args.dst else 'updates'}; "
            f"mask {run.out / layout.MASK}, "
            f"log {run.out / layout.PRUNING_LOG}"
        )
    return 0


def pruned_steps(run_dir: Path) -> list[int]:
    from lottery.core.storage import read_jsonl

    return [r["step"] for r in read_jsonl(run_dir / layout.PRUNING_LOG)]
