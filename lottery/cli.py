"""The `lottery` command line: one subcommand per capability, sharing one set of training flags.

Each subcommand lives in `lottery.commands.<name>` and provides `add_parser(subparsers)` that
registers itself and sets `func`; shared flags come from `add_train_args`. Only the subcommand
being run is imported, so `lottery --help` and `--version` load no torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

from lottery import __version__
from lottery.config import LR_SCHEDULES, OPTIMIZERS, ConfigError, TrainConfig

# Subcommand -> one-line help (the module `lottery.commands.<name>` registers the full parser).
COMMANDS: dict[str, str] = {
    "train": "train a network (resumes if --out holds an unfinished run)",
    "imp": "iterative magnitude pruning: find winning tickets",
    "schedule": "print or plot pruning schedules (sparsity per step) without training",
    "prune": "gradual pruning during training under a schedule (one-shot, AGP, one-cycle, ...)",
    "overlap": "Jaccard, overlap coefficient and Hamming distance of masks vs chance",
    "rewind-sweep": "compare rewind points: IMP with weight rewinding to each step, side by side",
    "instability": "linear mode connectivity: error barrier vs the step two copies start from",
    "curve": "one-shot pruning curves (layer-wise, structured, global, random) and size on disk",
    "report": "figures, tables (markdown, CSV, JSON) and multi-seed statistics of results",
    "export": "export a pruned run for inference: compact, sparse (CSR), 2:4 or dense",
    "speed": "time inference of a pruned run: dense vs compact, sparse and 2:4, and vs sparsity",
}

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


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(t) for t in text.split(",") if t.strip())


def add_train_args(p: argparse.ArgumentParser, out_default: str) -> None:
    """Flags shared by every subcommand that trains (same names everywhere)."""
    from lottery.data import DATASETS  # imported here so `lottery --help` loads no torch

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
    g.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write TensorBoard event files to RUN/tensorboard/ (needs lottery[tensorboard])",
    )


def add_batch_args(p: argparse.ArgumentParser, what: str) -> None:
    """--seeds and --batched: several seeds side by side, trained as one stacked model."""
    g = p.add_argument_group("many runs at once")
    g.add_argument(
        "--seeds",
        type=parse_ints,
        default=None,
        help=f"one {what} per seed (init and data-order seed, replacing --init-seed/--data-seed) "
        "in OUT/seed_<s>/, run side by side, e.g. 0,1,2",
    )
    g.add_argument(
        "--batched",
        action="store_true",
        help="train runs that share architecture and settings as one stacked model: "
        "one step for all, results equal to separate runs to float tolerance",
    )


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
        tensorboard=args.tensorboard,
        extra=_fast_path(args),
        **tuned,
    )


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default in --help unless it is unset (None, False) or the help names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False
        if unset or action.default == argparse.SUPPRESS or "default" in text:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser (and subparsers) whose --help shows defaults and whose argument errors
    are one line `lottery CMD: error: ...` (exit 2), pointing at --help."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_progress_flag(p: argparse.ArgumentParser) -> None:
    """`--no-progress` for subcommands that take no training flags (accepted by every command)."""
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The full parser; with `commands`, only those subcommands' modules are imported and the
    others are listed by name and help alone (what `main` does, so start-up stays light)."""
    parser = Parser(
        prog="lottery",
        description="Find and study lottery tickets: IMP, rewinding, pruning schedules, mask analysis.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    full = set(COMMANDS if commands is None else commands)
    for name, text in COMMANDS.items():
        if name in full:
            importlib.import_module(f"lottery.commands.{name.replace('-', '_')}").add_parser(sub)
        else:
            sub.add_parser(name, help=text)
    return parser


# Exit statuses: 2 for what the user can fix (input, paths, a busy folder), 3 for running out of
# memory, 1 for an internal error (a bug), with its traceback.
EXIT_USER, EXIT_MEMORY, EXIT_BUG = 2, 3, 1


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean bad input (imported late: `lottery --help` loads no torch)."""
    from lottery.distributed import DistributedError
    from lottery.runfolder import FolderInUseError
    from lottery.storage import CheckpointError

    return (ConfigError, ValueError, CheckpointError, FolderInUseError, DistributedError, OSError)


def out_of_memory(e: BaseException) -> bool:
    torch = sys.modules.get("torch")
    return isinstance(e, MemoryError) or (
        torch is not None and isinstance(e, torch.cuda.OutOfMemoryError)
    )


def _one_line(e: BaseException) -> str:
    """An exception's message as one line; OS errors name their path first."""
    if isinstance(e, OSError) and e.filename is not None:
        text = f"{e.filename}: {e.strerror or e}"
        return f"{text} ({e.filename2})" if e.filename2 else text
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lottery` console script; bad input exits 2 with a one-line reason.

    Results go to stdout; progress bars and log messages (the library's `logging`) to stderr.
    """
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        args = build_parser([command] if command in COMMANDS else []).parse_args(argv)
    except SystemExit as e:  # --help, --version (0) or a one-line argument error (2)
        return e.code if isinstance(e.code, int) else EXIT_USER
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    prog = f"lottery {args.command}"
    try:
        return int(args.func(args) or 0)
    except Exception as e:
        if out_of_memory(e):
            print(
                f"{prog}: error: out of memory ({_one_line(e).split('.')[0]}); try a smaller "
                "--batch-size, fewer runs per batch (no --batched, fewer --seeds) or a larger device",
                file=sys.stderr,
            )
            return EXIT_MEMORY
        if isinstance(e, user_errors()):
            print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
            return EXIT_USER
        traceback.print_exc()
        print(
            f"{prog}: internal error: {type(e).__name__}: {_one_line(e)} -- a bug in lottery, "
            "not in your input; please report it with the traceback above",
            file=sys.stderr,
        )
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
