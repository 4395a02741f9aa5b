"""`lottery report`: figures (PNG, PDF or SVG), tables and a markdown summary of a results folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from lottery.cli.main import add_progress_flag, command_help


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help=command_help("report"),
        description="Figures and tables for an IMP search (accuracy vs density, training "
        "curves, schedules, per-layer density, overlap heatmap), a training run, the output of "
        "rewind-sweep, instability or curve, or a group of runs differing by seed (imp --seeds "
        "output, or any folder of searches, sweeps or runs of the same settings: mean, sample "
        "std and 95% Student-t interval per round, cross-seed mask overlap), accuracy against "
        "training compute, plus report.md.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--out", type=Path, default=None, help="output folder (default RUN_DIR/report)")
    p.add_argument("--format", choices=("png", "pdf", "svg"), default="png", help="figure format")
    p.add_argument(
        "--compute",
        action="store_true",
        help="add the compute ledger of every finished network under RUN_DIR (accuracy vs "
        "training MACs), also for a folder of studies of several kinds (searches, at-init "
        "studies, gradual runs side by side); searches, seeds, at-init studies and sweeps get it "
        "without the flag",
    )
    add_progress_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lottery.analysis.report import write_report  # seaborn loads only when a figure is drawn
    from lottery.training.runfolder import check_writable

    check_writable(args.out or args.run_dir / "report", "--out")
    for path in write_report(args.run_dir, args.out, fmt=args.format, compute=args.compute):
        print(path)
    return 0
