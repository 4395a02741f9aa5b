"""`lottery rewind-sweep`: IMP from several rewind points that share one dense run."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from lottery.cli.commands.imp import add_pruning_args, pruning_settings
from lottery.cli.main import (
    add_train_args,
    command_help,
    config_from_args,
    parse_ints,
    show_progress,
)
from lottery.core import layout

if TYPE_CHECKING:
    pass


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rewind-sweep",
        help=command_help("rewind-sweep"),
        description="Train one dense run with checkpoints at the rewind steps, then run IMP with "
        "rewinding to each of them (same init, data order and pruning). Writes "
        "rewind_sweep.json and a report (accuracy vs weights remaining per rewind point, "
        "overlap of their masks). Rerunning resumes.",
    )
    add_train_args(p, "checkpoints/rewind_sweep")
    p.add_argument(
        "--rewind-steps",
        type=parse_ints,
        required=True,
        help="comma-separated rewind steps k, e.g. 0,100,500,2000",
    )
    add_pruning_args(p)
    p.add_argument(
        "--batched",
        action="store_true",
        help="train each round's runs of every rewind point in one engine call, stacking those "
        "that share a step (a point's ticket and controls) as one model",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lottery.analysis.report import write_report  # seaborn loads only when a figure is drawn
    from lottery.studies.imp import IMPConfig
    from lottery.studies.rewind_sweep import rewind_sweep
    from lottery.training.runfolder import check_writable, hold
    from lottery.training.setup import load_data

    cfg = config_from_args(args)
    check_writable(args.out, "--out", kinds=("sweep",))
    imp = IMPConfig(**pruning_settings(args), reset="rewind", batched=args.batched)
    if args.download:
        load_data(cfg, download=True)
    result = rewind_sweep(cfg, imp, list(args.rewind_steps), args.out, show_progress(args))
    print(
        f"\n{'round':>5s} {'weights%':>9s}"
        + "".join(f" {'k=' + str(k):>9s}" for k in result["steps"])
    )
    first = result["runs"][str(result["steps"][0])]
    for i, row in enumerate(first):
        accs = [result["runs"][str(k)][i]["test_accuracy"] for k in result["steps"]]
        print(
            f"{row['round']:5d} {row['percent_remaining']:9.2f}"
            + "".join(f" {100 * a:9.2f}" for a in accs)
        )
    with hold(args.out):
        files = write_report(args.out)
    print(f"results: {args.out / layout.REWIND_SWEEP}; report: {files[-1]}")
    return 0
