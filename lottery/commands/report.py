"""`lottery report`: figures (PNG) and a markdown summary of a run directory."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write a run's figures and a markdown summary",
        description="Figures for an IMP search (accuracy vs density, schedules, per-layer "
        "density, overlap heatmap), a training run, or the output of rewind-sweep, "
        "instability or curve, plus report.md.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--out", type=Path, default=None, help="output folder (default RUN_DIR/report)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lottery.report import write_report  # seaborn loads only when a figure is drawn
    from lottery.runfolder import check_writable

    check_writable(args.out or args.run_dir / "report", "--out")
    for path in write_report(args.run_dir, args.out):
        print(path)
    return 0
