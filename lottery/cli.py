"""The `lottery` command line: one subcommand per capability, sharing one set of training flags.

Each subcommand lives in `lottery.commands.<name>` and provides `add_parser(subparsers)` that
registers itself and sets `func`; shared flags come from `add_train_args`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from lottery.config import LR_SCHEDULES, OPTIMIZERS, ConfigError, TrainConfig
from lottery.data import DATASETS
from lottery.masks import MaskError, check_granularity

COMMANDS = (
    "train",
    "imp",
    "schedule",
    "prune",
    "overlap",
    "rewind-sweep",
    "instability",
    "curve",
    "report",
    "at-init",
)

# Per-model training defaults from the papers, used where the user gives no flag.
# LeNet: Adam 1.2e-3, batch 60; Conv-2: Adam 2e-4; Conv-4/6: Adam 3e-4 (Frankle & Carbin 2019).
# ResNet-20/VGG: SGD 0.1, momentum 0.9, LR x0.1 at ~51% and ~76% of training (32K/48K of 63K
# iterations), batch 128 (Frankle et al. 2020); weight decay 1e-4 as in OpenLTH.
PAPER_DEFAULTS: dict[str, dict] = {
    "lenet": {"optimizer": "adam", "lr": 1.2e-3, "batch_size": 60},
    "conv2": {"optimizer": "adam", "lr": 2e-4, "batch_size": 60},
    "conv4": {"optimizer": "adam", "lr": 3e-4, "batch_size": 60},
    "conv6": {"optimizer": "adam", "lr": 3e-4, "batch_size": 60},
    "deep": {
        "optimizer": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "batch_size": 128,
        "weight_decay": 1e-4,
        "lr_schedule": "step",
        "milestones": (0.508, 0.762),
    },
}


def paper_defaults(model: str) -> dict:
    """The training settings the papers used for `model` (deep nets share one recipe)."""
    if model.startswith("lenet"):
        return PAPER_DEFAULTS["lenet"]
    return PAPER_DEFAULTS.get(model, PAPER_DEFAULTS["deep"])


def parse_ints(text: str) -> tuple[int, ...]:
    """`1,2,3` as a tuple of ints (as for --save-at, --seeds)."""
    return tuple(int(t) for t in text.split(",") if t.strip())


def parse_scales(text: str) -> dict[str, float]:
    """`name=x,name=y` per-tensor rate multipliers (as for --rate-scale)."""
    out = {}
    for item in filter(None, text.split(",")):
        name, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected NAME=MULTIPLIER, got {item!r}")
        out[name.strip()] = float(value)
    return out


def parse_granularity(text: str) -> str:
    """`--granularity`: weight, filter, channel, or an N:M pattern such as 2:4."""
    try:
        return check_granularity(text)
    except MaskError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(t) for t in text.split(",") if t.strip())


def add_train_args(p: argparse.ArgumentParser, out_default: str) -> None:
    """Flags shared by every subcommand that trains (same names everywhere)."""
    g = p.add_argument_group("data and model")
    g.add_argument(
        "--model",
        default="lenet_300_100",
        help="registry name, lenet_<h1>_<h2>..., or any torchvision classifier",
    )
    g.add_argument("--dataset", default="fashion_mnist", help=f"one of {', '.join(DATASETS)}")
    g.add_argument(
        "--data-root",
        default=None,
        help="folder holding the dataset files (default: $LOTTERY_DATA or ~/.cache/lottery/data; Fashion-MNIST also from Debian's dataset-fashion-mnist)",
    )
    g.add_argument(
        "--download",
        action="store_true",
        help="download a missing dataset into --data-root (never done otherwise)",
    )
    g.add_argument(
        "--val-size",
        type=int,
        default=5000,
        help="validation examples carved from the training set",
    )
    g.add_argument(
        "--train-limit", type=int, default=None, help="use only the first N training examples"
    )
    g.add_argument(
        "--test-limit", type=int, default=None, help="use only the first N test examples"
    )
    g.add_argument(
        "--width", type=int, default=1, help="width multiplier of the model's hidden layers"
    )
    g.add_argument(
        "--init",
        default=None,
        help="kaiming_normal, glorot_normal or default (model's paper default if omitted)",
    )
    g = p.add_argument_group("training (unset flags take the model's paper defaults)")
    length = g.add_mutually_exclusive_group()
    length.add_argument(
        "--steps", type=int, default=None, help="training length in optimizer steps"
    )
    length.add_argument(
        "--epochs", type=float, default=None, help="training length in epochs (converted to steps)"
    )
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=None)
    g.add_argument("--lr", type=float, default=None, help="base learning rate")
    g.add_argument("--momentum", type=float, default=None, help="SGD momentum")
    g.add_argument("--nesterov", action="store_true", default=None, help="Nesterov momentum (SGD)")
    g.add_argument("--weight-decay", type=float, default=None)
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None)
    g.add_argument(
        "--milestones",
        type=_floats,
        default=None,
        help="LR x gamma at these steps (values < 1: fractions of training), comma-separated",
    )
    g.add_argument("--gamma", type=float, default=None, help="LR decay factor at each milestone")
    g.add_argument("--warmup-steps", type=int, default=None, help="linear LR warm-up length")
    g = p.add_argument_group("records, seeds and device")
    g.add_argument(
        "--eval-every", type=int, default=None, help="evaluate every N steps (default: every epoch)"
    )
    g.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help="resume checkpoint every N steps (default: every epoch)",
    )
    g.add_argument(
        "--save-at",
        type=parse_ints,
        default=(),
        help="also keep checkpoints at these steps, e.g. 0,100,500",
    )
    g.add_argument("--init-seed", type=int, default=0, help="seed of the initial weights")
    g.add_argument(
        "--data-seed", type=int, default=0, help="seed of the data order and augmentation"
    )
    g.add_argument("--split-seed", type=int, default=0, help="seed of the validation split")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    g.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="replay each step as CUDA graphs (torch.compile mode reduce-overhead; CUDA only, "
        "for small static-shape models)",
    )
    g.add_argument(
        "--no-channels-last",
        action="store_true",
        help="keep conv nets in NCHW on CUDA (channels_last is the CUDA default; CPU unaffected)",
    )
    g.add_argument(
        "--out",
        type=Path,
        default=Path(out_default),
        help="run directory (rerunning the same command resumes it)",
    )
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _fast_path(args: argparse.Namespace) -> dict:
    """CUDA fast-path switches, kept in `extra` only when they differ from the defaults."""
    out: dict = {}
    if args.cuda_graphs:
        out["cuda_graphs"] = True
    if args.no_channels_last:
        out["channels_last"] = False
    return out


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A TrainConfig from parsed flags; unset training flags take the model's paper defaults."""
    tuned = dict(paper_defaults(args.model))
    for key in (
        "batch_size",
        "optimizer",
        "lr",
        "momentum",
        "nesterov",
        "weight_decay",
        "lr_schedule",
        "milestones",
        "gamma",
        "warmup_steps",
    ):
        value = getattr(args, key)
        if value is not None:
            tuned[key] = value
    if args.steps is None and args.epochs is None:
        args.epochs = 2.0
    return TrainConfig(
        model=args.model,
        dataset=args.dataset,
        data_root=args.data_root,
        val_size=args.val_size,
        train_limit=args.train_limit,
        test_limit=args.test_limit,
        width=args.width,
        init=args.init,
        steps=args.steps,
        epochs=args.epochs,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        save_at=args.save_at,
        init_seed=args.init_seed,
        data_seed=args.data_seed,
        split_seed=args.split_seed,
        device=args.device,
        bf16=args.bf16,
        compile=args.compile,
        extra=_fast_path(args),
        **tuned,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lottery",
        description="Find and study lottery tickets: IMP, rewinding, pruning schedules, mask analysis.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"lottery.commands.{name.replace('-', '_')}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lottery` console script; bad input exits 2 with a one-line reason."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"lottery {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
