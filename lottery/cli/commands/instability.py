"""`lottery instability`: error barrier between pairs of copies trained from the same step."""

from __future__ import annotations

import argparse
from pathlib import Path

from lottery.cli.main import (
    add_train_args,
    command_help,
    config_from_args,
    parse_ints,
    show_progress,
)
from lottery.core import layout
from lottery.core.config import ConfigError
from lottery.studies.names import MIN_POINTS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "instability",
        help=command_help("instability"),
        description="From the state at each step k (of a dense run trained here, or of --dense), "
        "train pairs of copies with different data orders and evaluate test error on the "
        "straight line between each pair; the barrier is the max error on the path minus the "
        "endpoints' mean (Frankle et al. 2020), reported as mean ± std and 95% interval over "
        "pairs. With --mask the copies train the pruned subnetwork. Rerunning resumes, and may "
        "add pairs.",
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
    pairs = p.add_argument_group("pairs of copies")
    pairs.add_argument(
        "--seeds",
        default=None,
        help="the copies' data seeds, pair by pair: A:B,C:D,... (A,B: one pair; default: one "
        "pair, data seed + 1 and + 2)",
    )
    pairs.add_argument(
        "--pairs",
        type=int,
        default=None,
        help="N pairs of data seeds: data seed +1:+2, +3:+4, ... (instead of --seeds)",
    )
    p.add_argument(
        "--points", type=int, default=MIN_POINTS, help="evaluation points on the path (>= 11)"
    )
    p.add_argument(
        "--align",
        action="store_true",
        help="also measure each pair's barrier after permuting the second copy's hidden units "
        "onto the first's (weight matching, Ainsworth et al., ICLR 2023)",
    )
    p.set_defaults(func=run)


def parse_pairs(text: str) -> list[tuple[int, int]]:
    """`--seeds`: `A:B,C:D,...` (several pairs) or `A,B` (one pair), as int pairs."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        if all(":" not in t for t in items) and len(items) == 2:
            return [(int(items[0]), int(items[1]))]
        pairs = [tuple(int(s) for s in t.split(":")) for t in items]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ConfigError(f"--seeds takes pairs of data seeds A:B,C:D,... or A,B, got {text!r}")
    return pairs


def run(args: argparse.Namespace) -> int:
    from lottery.analysis.overlap import load_mask
    from lottery.analysis.report import barrier_cell, write_report
    from lottery.studies.instability import check_pairs, default_pairs, instability_sweep
    from lottery.training.runfolder import check_writable, hold, recorded_config
    from lottery.training.setup import load_data

    if args.dense is not None:
        if not (args.dense / layout.CONFIG).exists():
            raise ConfigError(f"--dense {args.dense} is not a training run (no config.json)")
        cfg = recorded_config(args.dense)
    else:
        cfg = config_from_args(args)
    if args.seeds is not None and args.pairs is not None:
        raise ConfigError("give --seeds or --pairs, not both")
    if args.seeds is not None:
        pairs = check_pairs(parse_pairs(args.seeds), cfg.data_seed)
    else:
        pairs = default_pairs(cfg.data_seed, 1 if args.pairs is None else args.pairs)
    if args.download:
        load_data(cfg, download=True)
    check_writable(args.out, "--out", kinds=("instability",))
    mask = load_mask(args.mask) if args.mask is not None else None
    result = instability_sweep(
        cfg,
        list(args.start_steps),
        args.out,
        dense=args.dense,
        mask=mask,
        seeds=pairs,
        points=args.points,
        progress=show_progress(args),
        align=args.align,
    )
    with hold(args.out):
        files = write_report(args.out)
    aligned = " " * 2 + f"{'aligned barrier %':>32s}" if args.align else ""
    print(
        f"\n{'step k':>8s}  {'barrier % mean ± std (n pairs)':>32s}{aligned}"
        f"  {'mean |endpoint gap| %':>22s}"
    )
    for r in result["rows"]:
        cell = f"  {barrier_cell(r, 'aligned_barrier'):>32s}" if args.align else ""
        print(f"{r['step']:8d}  {barrier_cell(r):>32s}{cell}  {100 * r['endpoint_gap']:22.2f}")
    print(f"results: {args.out / layout.INSTABILITY}; report: {files[-1]}")
    return 0
