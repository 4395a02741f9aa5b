"""Lottery tickets in a convolutional network: Conv-2 on Fashion-MNIST, in the style of Frankle &
Carbin's Figure 5 (ICLR 2019, arXiv 1803.03635).

IMP with the paper's layer-wise rates per round (convolutions 10%, fully connected 20%, output layer
10%) for 13 rounds, to 5.7% of the weights, over 3 seeds, as two searches from the same dense runs:
- tickets reset to θ0, with random re-initialisation and random pruning (a random mask of the same
  per-layer density) as controls at a few rounds;
- tickets rewound to step k (Frankle, Dziugaite, Roy & Carbin 2019, "Stabilizing the Lottery Ticket
  Hypothesis", arXiv 1903.01611: weights, optimizer and data order as at step k).
Training follows the paper's Conv-2 (Adam 2e-4, batch 60, Glorot-normal init) at a CPU-sized budget:
200 steps on 4,000 training images, validation every 25 steps on 1,000 held-out training images.
Accuracy is the test accuracy at the step of minimum validation loss (the paper's early-stopping
criterion), and that step is the early-stopping step ("tickets learn faster").

The searches are two sweeps of `lottery imp` over the seeds (OUT/reset_init/seed=<s>/,
OUT/rewind_<k>/seed=<s>/), run by any executor (`--executor local|ray|slurm`; locally, one
one-thread worker per core by default). Every point resumes after a kill, and a rerun skips what
is done. Writes `table.md`, `results.json`, `records.csv` and `tickets.png` under --out:

    python -m experiments.conv_tickets                  # both searches, then the report
    python -m experiments.conv_tickets --only rewind    # one search, no report
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from lottery import (
    EXECUTORS,
    EXIT_INCOMPLETE,
    IncompleteSweep,
    Sweep,
    SweepOptions,
    TrainConfig,
    aggregate,
    density_rows,
    parse_ints,
    plots,
    run_sweep,
    search_rounds,
    stat_text,
    write_json,
)

CONTROLS = ("random-reinit", "random-prune")
LABELS = {
    "random-reinit": "random re-init (θ0 mask)",
    "random-prune": "random pruning",
}
METRICS = ("test_acc_best_val_pct", "best_val_step", "percent_remaining")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=parse_ints, default=(0, 1, 2), help="init = data-order seeds")
    p.add_argument("--rounds", type=int, default=13, help="pruning rounds after the dense one")
    p.add_argument("--rewind-step", type=int, default=10, help="k of the rewound tickets")
    p.add_argument(
        "--control-rounds", type=parse_ints, default=(3, 6, 9, 13), help="rounds with controls"
    )
    p.add_argument("--steps", type=int, default=200, help="training steps per round")
    p.add_argument("--train-limit", type=int, default=5000, help="training images, val included")
    p.add_argument("--val-size", type=int, default=1000)
    p.add_argument("--test-limit", type=int, default=1000)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per run (recorded)")
    p.add_argument("--executor", choices=EXECUTORS, default="local")
    p.add_argument("--workers", type=int, default=None, help="local: runs at once (default: cores)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    p.add_argument("--data-root", default=None)
    p.add_argument("--only", choices=("reset_init", "rewind"), default=None, help="one search")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", type=Path, default=Path("checkpoints/conv_tickets"))
    p.add_argument("--quick", action="store_true", help="smoke run: tiny slice, 2 rounds, 2 seeds")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.rounds, args.control_rounds, args.steps = (0, 1), 2, (2,), 8
        args.train_limit, args.val_size, args.test_limit, args.eval_every = 300, 100, 100, 4
        args.rewind_step = 2
        if args.out == Path("checkpoints/conv_tickets"):
            args.out = Path("checkpoints/conv_tickets_quick")
    return args


def config(args: argparse.Namespace) -> TrainConfig:
    """Conv-2 with its paper defaults (Adam 2e-4, batch 60) on the CPU-sized budget."""
    return TrainConfig(
        model="conv2",
        dataset="fashion_mnist",
        data_root=args.data_root,
        train_limit=args.train_limit,
        val_size=args.val_size,
        test_limit=args.test_limit,
        steps=args.steps,
        eval_every=args.eval_every,
        threads=args.threads,
        device=args.device,
    )


def searches(args: argparse.Namespace) -> dict[str, Sweep]:
    """Folder name -> the sweep of one search over the seeds (the model's paper rates fill the
    rest of IMP's settings)."""
    cfg = config(args).to_dict()
    train = {k: cfg[k] for k in ("model", "dataset", "data_root", "train_limit", "val_size",
                                 "test_limit", "steps", "eval_every", "threads", "device")}  # fmt: skip
    train = {k: v for k, v in train.items() if v is not None}
    grid = {"seed": list(args.seeds)}
    return {
        "reset_init": Sweep(
            "imp",
            {
                **train,
                "rounds": args.rounds,
                "controls": list(CONTROLS),
                "control_rounds": list(args.control_rounds),
            },
            grid,
        ),  # fmt: skip
        f"rewind_{args.rewind_step}": Sweep(
            "imp",
            {**train, "rounds": args.rounds, "reset": "rewind", "rewind_step": args.rewind_step},
            grid,
        ),  # fmt: skip
    }


def seed_folder(search: Path, seed: int) -> Path:
    """A search's point for one seed in its sweep folder."""
    return search / f"seed={seed}"


def records(args: argparse.Namespace) -> pd.DataFrame:
    """Every seed's rounds of both searches, one row per (network, seed, round)."""
    frames = []
    for name in searches(args):
        for seed in args.seeds:
            frame = search_rounds(seed_folder(args.out / name, seed))
            ticket = "θ0 ticket" if name == "reset_init" else f"rewind k={args.rewind_step} ticket"
            frame["network"] = frame["network"].map(lambda n, t=ticket: LABELS.get(n, t))
            frame.loc[frame["round"] == 0, "network"] = "dense"
            frames.append(frame.assign(seed=seed))
    table = pd.concat(frames, ignore_index=True)
    # both searches train the same dense round 0: keep one copy of it per seed
    return table.drop_duplicates(subset=["network", "seed", "round"]).reset_index(drop=True)


def _cell(stats: pd.DataFrame, network: str, rnd: int, metric: str, digits: int) -> str:
    row = stats[(stats.network == network) & (stats["round"] == rnd) & (stats.metric == metric)]
    if row.empty:
        return ""
    return stat_text(row.iloc[0].to_dict(), digits)


def table(stats: pd.DataFrame, networks: list[str]) -> str:
    """Markdown: per round, % remaining and each network's accuracy and early-stopping step."""
    lines = []
    for metric, title, digits in (
        ("test_acc_best_val_pct", "test accuracy at the best-validation step (%)", 2),
        ("best_val_step", "early-stopping step (minimum validation loss)", 0),
    ):
        lines += [f"{title}, mean ± std [95% CI] over seeds:", ""]
        lines.append("| round | % remaining | " + " | ".join(networks) + " |")
        lines.append("|---" * (len(networks) + 2) + "|")
        remaining = stats[stats.metric == "percent_remaining"].groupby("round")["mean"].max()
        for rnd, pct in remaining.items():
            cells = [_cell(stats, n, rnd, metric, digits) for n in networks]
            lines.append(f"| {rnd} | {pct:.1f} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config(args)
    options = SweepOptions(workers=args.workers)
    for name, sweep in searches(args).items():
        if args.only is None or name.startswith(args.only):
            try:
                run_sweep(sweep, args.out / name, args.executor, options,
                          progress=not args.no_progress).require_complete()  # fmt: skip
            except IncompleteSweep as e:
                print(e, file=sys.stderr)
                return EXIT_INCOMPLETE
    if args.only is not None:
        return 0
    rows = records(args)
    stats = aggregate(rows, ["network", "round"], METRICS)
    networks = list(dict.fromkeys(rows.network))
    networks = ["dense", *[n for n in networks if n != "dense"]]
    md = table(stats, networks)
    rows.to_csv(args.out / "records.csv", index=False)
    write_json(
        {
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "config": cfg.to_dict(),
            "stats": stats.to_dict("records"),
        },
        args.out / "results.json",
    )
    (args.out / "table.md").write_text(md)
    curve = density_rows(stats[stats.network != "dense"], ["network", "round"])
    dense = stats[(stats.network == "dense") & (stats.metric != "percent_remaining")]
    for r in dense.to_dict("records"):  # the dense network at 100%, as the start of every curve
        for n in networks[1:]:
            curve.append({**r, "network": n, "percent_remaining": 100.0})
    fig = plots.accuracy_vs_density(
        curve,
        metrics=("test_acc_best_val_pct", "best_val_step"),
        title=f"Conv-2 on Fashion-MNIST, {len(args.seeds)} seeds",
    )
    plots.save(fig, args.out / "tickets.png")
    print(md)
    print(f"results: {args.out / 'results.json'}; figure: {args.out / 'tickets.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
