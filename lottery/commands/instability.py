"""`lottery instability`: error barrier between two copies trained from the same step."""

from __future__ import annotations

import argparse
from pathlib import Path

from lottery import layout
from lottery.build import load_data
from lottery.cli import COMMANDS, add_train_args, config_from_args, parse_ints
from lottery.config import ConfigError, TrainConfig
from lottery.instability import MIN_POINTS, instability_sweep
from lottery.overlap import load_mask
from lottery.runfolder import check_writable, hold
from lottery.storage import read_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "instability",
        help=COMMANDS["instability"],
        description="From the state at each step k (of a dense run trained here, or of --dense), "
        "train two copies with different data orders and evaluate test error on the straight "
        "line between them; the barrier is the max error on the path minus the endpoints' mean "
        "(Frankle et al. 2020). With --mask the copies train the pruned subnetwork. Rerunning "
        "resumes.",
    )
    add_train_args(p, "checkpoints/instability")
    p.add_argument(
        "--start-steps",
        type=parse_ints,
        required=True,
        help="comma-separated steps k the copies start from, e.g. 0,50,200",
    )
    p.add_argument(
        "--dense",
        type=Path,
        default=None,
        help="reuse this dense run's checkpoints (its configuration replaces the training flags)",
    )
    p.add_argument(
        "--mask", type=Path, default=None, help="train copies under this mask (file or IMP round)"
    )
    p.add_argument(
        "--seeds",
        type=parse_ints,
        default=None,
        help="the copies' two data seeds (default: data seed + 1, + 2)",
    )
    p.add_argument(
        "--points", type=int, default=MIN_POINTS, help="evaluation points on the path (>= 11)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lottery.report import write_report  # seaborn loads only when a figure is drawn

    if args.dense is not None:
        if not (args.dense / layout.CONFIG).exists():
            raise ConfigError(f"--dense {args.dense} is not a training run (no config.json)")
        cfg = TrainConfig.from_dict(read_json(args.dense / layout.CONFIG)["config"])
    else:
        cfg = config_from_args(args)
    if args.download:
        load_data(cfg, download=True)
    if args.seeds is not None and len(args.seeds) != 2:
        raise ConfigError(f"--seeds takes two data seeds, got {list(args.seeds)}")
    check_writable(args.out, "--out")
    mask = load_mask(args.mask) if args.mask is not None else None
    with hold(args.out):
        result = instability_sweep(
            cfg,
            list(args.start_steps),
            args.out,
            dense=args.dense,
            mask=mask,
            seeds=tuple(args.seeds) if args.seeds else None,
            points=args.points,
            progress=not args.no_progress,
        )
        files = write_report(args.out)
    print(f"\n{'step k':>8s} {'barrier %':>10s} {'endpoint errors %':>20s}")
    for r in result["rows"]:
        ends = " / ".join(f"{100 * e:.2f}" for e in r["endpoint_errors"])
        print(f"{r['step']:8d} {100 * r['barrier']:10.2f} {ends:>20s}")
    print(f"results: {args.out / 'instability.json'}; report: {files[-1]}")
    return 0
