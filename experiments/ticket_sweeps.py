"""What the symmetry, early-bird and compute-ledger studies share: one IMP search design, the data
slice of each model, the sweep runner and the command-line flags.

IMP prunes 60% of the remaining weights per round by one global magnitude threshold, rewinding to
1% of training (Frankle et al., ICML 2020, rewind within 0.1%-7%), for three rounds: tickets at
60%, 84% and 93.6% sparsity exactly. Studies run with the same `--out` share their sweeps (a
finished point is never trained twice).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lottery import (
    EXECUTORS,
    Sweep,
    SweepOptions,
    TrainConfig,
    load_data,
    point_name,
    run_length,
    run_sweep,
    write_json,
)

FRACTION = 0.6  # of the remaining weights, per round
ROUNDS = 3
SPARSITIES = tuple(round(1 - (1 - FRACTION) ** r, 4) for r in range(1, ROUNDS + 1))
REWIND_FRACTION = 0.01
SEEDS = (0, 1, 2)
# Each model's slice of Fashion-MNIST: LeNet-300-100 trains on all of it, Conv-2 on the first
# 5,000 training images (its 3.2M-weight fc layer makes a full epoch minutes on two cores).
SLICES: dict[str, dict[str, Any]] = {
    "lenet_300_100": {"val_size": 5000},
    "conv2": {"train_limit": 5000, "val_size": 500, "test_limit": 2000},
}


def config(model: str, args: argparse.Namespace) -> TrainConfig:
    """The model's paper optimiser (Frankle & Carbin, ICLR 2019) on its slice."""
    return TrainConfig(
        model=model,
        dataset="fashion_mnist",
        data_root=args.data_root,
        epochs=args.epochs,
        device=args.device,
        **SLICES[model],
    )


def train_settings(model: str, args: argparse.Namespace) -> dict[str, Any]:
    """A sweep's fixed training settings (every seed in each point)."""
    fields = ("model", "dataset", "data_root", "epochs", "device", *SLICES[model])
    cfg = config(model, args).to_dict()
    return {**{k: cfg[k] for k in fields if cfg[k] is not None}, "seeds": list(SEEDS)}


def total_steps(model: str, args: argparse.Namespace) -> int:
    """Steps of one training run of `model` on its slice."""
    cfg = config(model, args)
    return run_length(cfg, load_data(cfg))[0]


def rewind_step(model: str, args: argparse.Namespace) -> int:
    return max(1, round(REWIND_FRACTION * total_steps(model, args)))


def imp_sweep(model: str, args: argparse.Namespace, early_bird: tuple[bool, ...]) -> Sweep:
    """The search, with and/or without early-bird round 0 (You et al., ICLR 2020, threshold 0.1)."""
    imp = {"rounds": ROUNDS, "scope": "global", "prune_fraction": FRACTION, "rate_scale": {},
           "reset": "rewind", "rewind_step": rewind_step(model, args)}  # fmt: skip
    return Sweep("imp", {**train_settings(model, args), **imp}, {"early_bird": list(early_bird)})


def search_folder(args: argparse.Namespace, model: str, early_bird: bool) -> Path:
    """Where `imp_sweep`'s point keeps its seeds' searches."""
    return args.out / model / "imp" / point_name({"early_bird": early_bird})


def run(sweep: Sweep, folder: Path, args: argparse.Namespace) -> Path:
    """Run (or resume) a sweep; an unfinished point raises IncompleteSweep."""
    options = SweepOptions(workers=args.workers)
    run_sweep(sweep, folder, args.executor, options, progress=not args.quiet).require_complete()
    return folder


def publish(
    args: argparse.Namespace, name: str, md: str, seconds: float, results: dict[str, Any]
) -> Path:
    """Write a study's results.json (with its settings and seconds) and table.md into
    --out/NAME, print the table, and return the folder (for the study's figure)."""
    out = args.out / name
    write_json({"settings": {**vars(args), "out": str(args.out)}, "seconds": seconds, **results},
               out / "results.json")  # fmt: skip
    (out / "table.md").write_text(md + "\n")
    print(md)
    return out


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--epochs", type=float, default=2.0, help="training length (default 2)")
    p.add_argument("--executor", choices=EXECUTORS, default="local")
    p.add_argument("--workers", type=int, default=None, help="local: points at once")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--data-root", default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", type=Path, default=Path("checkpoints/tickets"))
    return p
