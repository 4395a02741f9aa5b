"""`lottery curve`: one-shot pruning curves of a trained model and its size on disk."""

from __future__ import annotations

import argparse
from pathlib import Path

from lottery.cli.main import (
    add_train_args,
    command_help,
    config_from_args,
    parse_floats,
    show_progress,
)
from lottery.core import layout
from lottery.studies.names import CURVE_SPARSITIES, methods


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "curve",
        help=command_help("curve"),
        description="Prune a trained model once to sparsities 0%, 5%, ..., 95% with each "
        "method, evaluate without retraining, and measure bytes of the dense state dict, its "
        "gzip and the sparse export. The model is --from RUN_DIR or a dense run trained here.",
    )
    add_train_args(p, "checkpoints/curve")
    p.add_argument(
        "--from",
        dest="source",
        type=Path,
        default=None,
        help="a finished training run (or IMP run: its dense round) to prune",
    )
    p.add_argument(
        "--methods",
        type=_names,
        default=None,
        help=f"comma-separated, from {', '.join(methods())} or SCOPE/GRANULARITY/CRITERION "
        "such as global/2:4/snip (default: all named ones)",
    )
    for flag, default, what in (
        ("--criterion", "magnitude", "criteria"),
        ("--granularity", "weight", "granularities (weight, filter, channel, N:M)"),
        ("--scope", "layer", "scopes (layer, global)"),
    ):
        p.add_argument(
            flag,
            type=_names,
            default=None,
            help=f"comma-separated {what}: curves for every criterion x granularity x scope "
            f"(given any of the three; the others default to {default})",
        )
    p.add_argument(
        "--sparsities",
        type=parse_floats,
        default=CURVE_SPARSITIES,
        help="comma-separated sparsities in [0, 1) (default 0, 0.05, ..., 0.95)",
    )
    p.add_argument(
        "--norm", type=float, default=2.0, help="Ln norm ranking filters in structured pruning"
    )
    p.add_argument("--prune-seed", type=int, default=0, help="seed of the random control")
    p.add_argument("--size-method", default="global-l1", help="whose masks the size table measures")
    p.add_argument(
        "--prune-output", action="store_true", help="also prune the output layer (kept by default)"
    )
    p.set_defaults(func=run)


def _names(text: str) -> list[str]:
    return [m for m in text.split(",") if m]


def grid(
    criteria: list[str] | None, granularities: list[str] | None, scopes: list[str] | None
) -> list[str]:
    """Method names SCOPE/GRANULARITY/CRITERION for every combination of the given lists."""
    return [
        f"{s}/{g}/{c}"
        for s in scopes or ["layer"]
        for g in granularities or ["weight"]
        for c in criteria or ["magnitude"]
    ]


def run(args: argparse.Namespace) -> int:
    from lottery.analysis.report import write_report  # seaborn loads only when a figure is drawn
    from lottery.studies.curves import check_curve, run_curve
    from lottery.training.runfolder import check_writable, hold
    from lottery.training.setup import load_data

    cfg = config_from_args(args)
    names = args.methods
    if args.criterion or args.granularity or args.scope:
        names = [*(names or []), *grid(args.criterion, args.granularity, args.scope)]
    check_curve(
        [*(names or []), args.size_method], tuple(args.sparsities), args.norm, args.prune_output
    )
    check_writable(args.out, "--out", kinds=("curve",))
    if args.download:
        load_data(cfg, download=True)
    result = run_curve(
        cfg,
        args.out,
        source=args.source,
        names=names,
        sparsities=tuple(args.sparsities),
        size_method=args.size_method,
        seed=args.prune_seed,
        norm=args.norm,
        prune_output=args.prune_output,
        progress=show_progress(args),
    )
    with hold(args.out):
        files = write_report(args.out)
    names = list(dict.fromkeys(r["method"] for r in result["curve"]))
    print(f"{'sparsity':>8s}" + "".join(f" {n:>16s}" for n in names) + "   (test accuracy %)")
    by = {(r["method"], r["sparsity"]): r["test_accuracy"] for r in result["curve"]}
    for s in dict.fromkeys(r["sparsity"] for r in result["curve"]):
        print(f"{100 * s:7.0f}%" + "".join(f" {100 * by[n, s]:16.2f}" for n in names))
    print(f"\n{'sparsity':>8s} {'dense B':>10s} {'gzip B':>10s} {'sparse B':>10s}")
    for z in result["sizes"]:
        print(
            f"{100 * z['sparsity']:7.0f}% {z['dense_bytes']:10d} {z['gzip_bytes']:10d} "
            f"{z['sparse_bytes']:10d}"
        )
    print(f"results: {args.out / layout.CURVE}; report: {files[-1]}")
    return 0
