"""`lottery imp`: the winning-ticket search (iterative magnitude pruning) with controls."""

from __future__ import annotations

import argparse

from lottery.cli.main import (
    add_allocation_args,
    add_batch_args,
    add_mask_args,
    add_train_args,
    command_help,
    config_from_args,
    parse_ints,
    parse_scales,
    scope_from_args,
    show_progress,
)
from lottery.studies.names import IMP_CONTROLS, RESETS


def add_pruning_args(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """IMP's pruning flags, shared by `lottery imp` and `lottery rewind-sweep`."""
    g = p.add_argument_group("pruning (unset flags take the model's paper defaults)")
    g.add_argument("--rounds", type=int, default=5, help="pruning rounds after the dense round 0")
    g.add_argument(
        "--prune-fraction",
        type=float,
        default=None,
        help="fraction of the remaining weights pruned per round (default 0.2)",
    )
    add_allocation_args(g, "the model's paper default")
    g.add_argument(
        "--rate-scale",
        type=parse_scales,
        default=None,
        help="per-tensor multipliers of the rate, e.g. classifier.4.weight=0.5 (0 leaves it unpruned)",
    )
    add_mask_args(g)
    g.add_argument(
        "--controls",
        type=lambda s: tuple(filter(None, s.split(","))),
        default=(),
        help=f"comma-separated, from {', '.join(IMP_CONTROLS)}",
    )
    g.add_argument(
        "--control-rounds",
        type=parse_ints,
        default=(),
        help="train the controls only at these rounds, e.g. 3,6,9 (default: every round)",
    )
    return g


def pruning_settings(args: argparse.Namespace) -> dict:
    """IMPConfig fields from the flags of `add_pruning_args`."""
    return {
        "rounds": args.rounds,
        "fraction": args.prune_fraction,
        "scope": scope_from_args(args, None),
        "rate_scale": args.rate_scale,
        "granularity": args.granularity,
        "criterion": args.criterion,
        "controls": args.controls,
        "control_rounds": args.control_rounds,
    }


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "imp",
        help=command_help("imp"),
        description="Train, prune the smallest weights, reset the survivors, retrain; repeat. "
        "Rerunning the same command resumes; a larger --rounds extends a finished search.",
    )
    add_train_args(p, "checkpoints/imp")
    g = add_pruning_args(p)
    g.add_argument(
        "--reset",
        choices=RESETS,
        default="init",
        help="init: back to θ0; rewind: to step k; lr-rewind: keep weights, replay LR from k; finetune: keep weights, small constant LR",
    )
    g.add_argument("--rewind-step", type=int, default=0, help="k for rewind / lr-rewind / finetune")
    g.add_argument(
        "--finetune-lr", type=float, default=None, help="LR for --reset finetune (default: lr/100)"
    )
    g.add_argument(
        "--save-control-weights", action="store_true", help="also store the controls' final weights"
    )
    g.add_argument(
        "--keep-checkpoints", action="store_true", help="keep every round's full final checkpoint"
    )
    eb = p.add_argument_group("early-bird tickets (You et al., ICLR 2020)")
    eb.add_argument(
        "--early-bird",
        action="store_true",
        help="stop round 0's dense training once the mask round 1 would prune stops changing, "
        "and draw the ticket there (later rounds as usual)",
    )
    eb.add_argument(
        "--eb-every",
        type=int,
        default=None,
        help="steps between mask checks (default: 1/160 of training, the paper's one per epoch)",
    )
    eb.add_argument(
        "--eb-threshold",
        type=float,
        default=0.1,
        help="stop once the last five normalised Hamming distances between consecutive masks "
        "are all below this (0: record the distances, never stop)",
    )
    add_batch_args(p, "search")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lottery.studies.imp import IMPConfig, run_imp, run_imp_seeds
    from lottery.training.runfolder import check_writable
    from lottery.training.setup import load_data

    cfg = config_from_args(args)
    check_writable(args.out, "--out", kinds=("search", "seeds"))
    if args.download:
        load_data(cfg, download=True)
    imp = IMPConfig(
        **pruning_settings(args),
        reset=args.reset,
        rewind_step=args.rewind_step,
        finetune_lr=args.finetune_lr,
        save_control_weights=args.save_control_weights,
        keep_checkpoints=args.keep_checkpoints,
        batched=args.batched,
        early_bird=args.early_bird,
        eb_every=args.eb_every,
        eb_threshold=args.eb_threshold,
    )
    if args.seeds is None:
        run_imp(cfg, imp, args.out, progress=show_progress(args))
        print(f"summary: {args.out / 'summary.json'}")
        return 0
    run_imp_seeds(cfg, imp, args.out, args.seeds, progress=show_progress(args))
    for s in args.seeds:
        print(f"summary: {args.out / f'seed_{s}' / 'summary.json'}")
    return 0
