"""`lottery train`: train one (optionally masked) network with checkpoints and resume."""

from __future__ import annotations

import argparse
import json

from lottery.cli.main import add_train_args, command_help, config_from_args, show_progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help=command_help("train"),
        description="Train one network. Rerunning the same command resumes from the last checkpoint.",
    )
    add_train_args(p, "checkpoints/train")
    p.add_argument("--mask", default=None, help="train under this mask (.npz from a lottery run)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lottery.pruning.masks import Mask
    from lottery.training.runfolder import check_writable
    from lottery.training.setup import load_data, make_model
    from lottery.training.trainer import Trainer

    cfg = config_from_args(args)
    check_writable(args.out, "--out", kinds=("run",))
    data = load_data(cfg, download=args.download)
    model = make_model(cfg, data)
    mask = Mask.load(args.mask, model) if args.mask else None
    # the Trainer checks the settings against model and data; nothing is written before `fit`
    # takes the folder's lock, and a folder holding another run is refused before training
    trainer = Trainer(cfg, data, model, args.out, mask=mask, progress=show_progress(args))
    result = trainer.fit()
    print(json.dumps(result.to_dict(), indent=2))
    return 0
