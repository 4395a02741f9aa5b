"""`lottery align`: permute network B's hidden units onto network A's (weight matching)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lottery.cli.main import add_progress_flag, command_help


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "align",
        help=command_help("align"),
        description="Find the permutation of B's hidden units that best matches A's weights "
        "(weight matching, Ainsworth et al., ICLR 2023; shared across residual connections) and "
        "write B permuted, with its mask, as a run folder: same function, A's unit order. A and B "
        "are finished runs, IMP rounds or IMP searches (their last round) of one model.",
    )
    p.add_argument("a", type=Path, metavar="A", help="the reference network")
    p.add_argument("b", type=Path, metavar="B", help="the network to permute")
    p.add_argument("--out", type=Path, required=True, help="the folder for B aligned")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the order in which permutations are revisited"
    )
    add_progress_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lottery.studies.align import align

    r = align(args.a, args.b, args.out, seed=args.seed)
    print(
        f"aligned {args.b} to {args.a} in {r['passes']} passes: Σ<A,P(B)> "
        f"{r['objective_before']:.4g} -> {r['objective_after']:.4g}"
    )
    if "jaccard_before" in r:
        print(f"mask Jaccard with A: {r['jaccard_before']:.4f} -> {r['jaccard_after']:.4f}")
    print(f"max |B(x) - aligned(x)|: {r['max_output_difference']:.3g}; written to {args.out}")
    return 0
