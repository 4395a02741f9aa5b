"""`lottery at-init`: prune the initialised network by a criterion, train it, with the controls."""

from __future__ import annotations

import argparse

from lottery.cli.main import (
    add_allocation_args,
    add_mask_args,
    add_train_args,
    config_from_args,
    parse_ints,
    parse_scales,
    scope_from_args,
    show_progress,
)
from lottery.core import layout
from lottery.pruning.names import usable
from lottery.studies.names import AT_INIT_CONTEXT, AT_INIT_CONTROLS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "at-init",
        help="pruning at initialisation (SNIP, GraSP, SynFlow, ...) with the sanity-check controls",
        description="Score the initialised network, prune it once to each sparsity, and train "
        "each sparse network with the same settings an IMP ticket gets, beside the controls of "
        "Frankle et al. (ICLR 2021): layer-shuffle, reinit, invert. Rerunning resumes.",
    )
    add_train_args(p, "checkpoints/at_init")
    g = p.add_argument_group("pruning at initialisation")
    g.add_argument(
        "--sparsities",
        type=lambda s: tuple(float(t) for t in s.split(",") if t.strip()),
        default=(0.5, 0.8, 0.9, 0.95, 0.98),
        help="comma-separated sparsities in [0, 1) (default 0.5,0.8,0.9,0.95,0.98)",
    )
    add_allocation_args(g, "global, as the papers prune")
    add_mask_args(g, usable(AT_INIT_CONTEXT), "snip")
    g.add_argument(
        "--rate-scale",
        type=parse_scales,
        default={},
        help="per-tensor multipliers of the sparsity, e.g. features.0.weight=0 (0: unpruned)",
    )
    g.add_argument(
        "--controls",
        type=lambda s: tuple(filter(None, s.split(","))),
        default=tuple(AT_INIT_CONTROLS),
        help=f"comma-separated, from {', '.join(AT_INIT_CONTROLS)} (default: all; 'none' for none)",
    )
    g.add_argument(
        "--score-batches", type=int, default=1, help="batches SNIP/GraSP score on (default 1)"
    )
    g.add_argument(
        "--seeds",
        type=parse_ints,
        default=None,
        help="one study per seed (init and data-order seed) in OUT/seed_<s>/",
    )
    g.add_argument(
        "--batched",
        action="store_true",
        help="train all networks of a sparsity (every seed) as one stacked model",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lottery.studies.at_init import AtInitConfig, run_at_init
    from lottery.training.runfolder import check_writable
    from lottery.training.setup import load_data

    cfg = config_from_args(args)
    check_writable(args.out, "--out", kinds=("at-init", "seeds"))
    controls = () if args.controls == ("none",) else args.controls
    settings = AtInitConfig(
        criterion=args.criterion,
        sparsities=args.sparsities,
        scope=scope_from_args(args, "global"),
        granularity=args.granularity,
        rate_scale=args.rate_scale,
        controls=controls,
        score_batches=args.score_batches,
        batched=args.batched,
    )
    if args.download:
        load_data(cfg, download=True)
    run_at_init(cfg, settings, args.out, seeds=args.seeds, progress=show_progress(args))
    if args.seeds is None:
        print(f"summary: {args.out / layout.SUMMARY}")
    else:
        for s in args.seeds:
            print(f"summary: {layout.seed_dir(args.out, s) / layout.SUMMARY}")
    return 0
