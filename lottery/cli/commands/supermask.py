"""`lottery supermask`: train a mask over frozen random weights (a strong lottery ticket)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lottery.cli.main import (
    add_allocation_args,
    add_train_args,
    command_help,
    config_from_args,
    parse_ints,
    scope_from_args,
    show_progress,
)
from lottery.core import layout
from lottery.core.config import check_seeds
from lottery.studies.names import SUPERMASK_TRAINING


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "supermask",
        help=command_help("supermask"),
        description="Freeze the initialised network and train one score per weight; the forward "
        "pass keeps each layer's top-k scores (edge-popup, Ramanujan et al., CVPR 2020). "
        "Training flags left unset take edge-popup's: SGD, LR 0.1, momentum 0.9, weight decay "
        "5e-4, cosine schedule. Writes mask.npz and weights.npz like any pruned run; rerunning "
        "resumes.",
    )
    add_train_args(p, "checkpoints/supermask")
    g = p.add_argument_group("supermask")
    g.add_argument(
        "--sparsity", type=float, default=0.5, help="fraction of weights the mask removes"
    )
    add_allocation_args(g, "layer (each layer at --sparsity)")
    g.add_argument(
        "--signed-constant",
        action="store_true",
        help="weights sign(w)·σ with σ = √(2/fan_in), edge-popup's signed Kaiming constant",
    )
    g.add_argument(
        "--seeds",
        type=parse_ints,
        default=None,
        help="one supermask per seed (init, score and data-order seed) in OUT/seed_<s>/",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lottery.pruning.masks import Mask
    from lottery.studies.supermask import SupermaskConfig, train_supermasks
    from lottery.training.runfolder import check_writable
    from lottery.training.setup import load_data

    for name, value in SUPERMASK_TRAINING.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    cfg = config_from_args(args)
    settings = SupermaskConfig(
        sparsity=args.sparsity,
        scope=scope_from_args(args, "layer"),
        signed_constant=args.signed_constant,
    )
    check_writable(args.out, "--out", kinds=("run", "seeds"))
    if args.seeds is not None:
        check_seeds(args.seeds)
    data = load_data(cfg, download=args.download)
    seeds = args.seeds or [None]
    cfgs = [cfg if s is None else cfg.replace(init_seed=s, data_seed=s) for s in seeds]
    outs = [Path(args.out) if s is None else layout.seed_dir(args.out, s) for s in seeds]
    results = train_supermasks(
        cfgs, outs, settings, data, progress=show_progress(args), lock=Path(args.out)
    )
    for out, result in zip(outs, results, strict=True):
        mask = Mask.load(out / layout.MASK)
        print(
            f"supermask: sparsity {100 * mask.sparsity():.2f}% ({100 * mask.density():.2f}% of "
            f"the frozen weights kept), test accuracy {100 * result.test_accuracy:.2f}%; "
            f"mask {out / layout.MASK}"
        )
    return 0
