"""Pruning at initialisation vs IMP with rewinding, with the sanity checks, on Fashion-MNIST.

The design of Frankle, Dziugaite, Roy & Carbin ("Pruning Neural Networks at Initialization: Why
Are We Missing the Mark?", ICLR 2021) at a small scale: LeNet-300-100 and Conv-2, SNIP, GraSP,
SynFlow, magnitude at init and random, each pruned globally at init to every sparsity and trained
beside its three controls (layer-shuffle, reinit, invert), against the IMP ticket with weight
rewinding (global pruning, the same sparsities) over several seeds. Per model, the runs are two
sweeps: `lottery at-init` over the criteria (OUT/MODEL/at_init/criterion=C/seed_<s>/) and `lottery
imp` with rewinding (OUT/MODEL/imp/rewind_step=K/seed_<s>/), each point holding every seed (one
stacked model per sparsity with `--batched`), on any executor (`--executor local|ray|slurm`;
locally, criteria side by side on the cores). The study resumes where it stopped. Writes
results.json, table.md and at_init.png under --out.

    python -m experiments.pruning_at_init --models lenet_300_100 --epochs 2 --batched \\
        --device cpu --out checkpoints/pruning_at_init/lenet_300_100       # README, 36 min
    python -m experiments.pruning_at_init --models conv2 --epochs 2 --train-limit 3000 \\
        --val-size 500 --test-limit 1000 --device cpu \\
        --out checkpoints/pruning_at_init/conv2     # README, ~100 min; split it with --criteria
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from lottery import AT_INIT_CONTROLS as CONTROLS
from lottery import AT_INIT_PRUNED as PRUNED
from lottery import (
    EXECUTORS,
    EXIT_INCOMPLETE,
    IncompleteSweep,
    Sweep,
    SweepOptions,
    TrainConfig,
    at_init_accuracy,
    at_init_summaries,
    layout,
    load_data,
    mean_std,
    point_name,
    read_json,
    round_accuracy,
    run_length,
    run_sweep,
    write_json,
)

MODELS = ("lenet_300_100", "conv2")
CRITERIA = ("snip", "grasp", "synflow", "magnitude", "random")
SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.98)
IMP = "IMP (rewind)"
REWIND_FRACTION = 0.01  # rewind to 1% of training, inside the 0.1%-7% of Frankle et al. 2020


def config(model: str, args: argparse.Namespace) -> TrainConfig:
    """The paper's optimiser settings for `model` (Frankle & Carbin 2019) on the chosen slice."""
    return TrainConfig(
        model=model,
        dataset="fashion_mnist",
        data_root=args.data_root,
        val_size=args.val_size,
        train_limit=args.train_limit,
        test_limit=args.test_limit,
        epochs=args.epochs,
        device=args.device,
    )


def imp_rounds(sparsities: tuple[float, ...], fraction: float) -> int:
    """Rounds of IMP at `fraction` per round needed to reach the highest sparsity."""
    return math.ceil(math.log(1 - max(sparsities)) / math.log(1 - fraction) - 1e-9)


def sweeps(model: str, args: argparse.Namespace) -> dict[str, Sweep]:
    """The model's two sweeps: every criterion at init with its controls, and IMP with rewinding
    to 1% of training; every point holds all seeds."""
    cfg = config(model, args)
    train = {k: v for k, v in cfg.to_dict().items() if k in TRAIN_KEYS and v is not None}
    train.update(seeds=list(range(args.seeds)), batched=args.batched)
    total, _ = run_length(cfg, load_data(cfg))
    imp = {"rounds": imp_rounds(args.sparsities, args.imp_fraction), "scope": "global",
           "prune_fraction": args.imp_fraction, "rate_scale": {}, "reset": "rewind"}  # fmt: skip
    return {
        "at_init": Sweep(
            "at-init",
            {**train, "sparsities": list(args.sparsities)},
            {"criterion": list(args.criteria)},
        ),  # fmt: skip
        "imp": Sweep(
            "imp", {**train, **imp}, {"rewind_step": [max(1, round(REWIND_FRACTION * total))]}
        ),
    }


# The training settings the study fixes (TrainConfig's fields, as the commands take them).
TRAIN_KEYS = ("model", "dataset", "data_root", "val_size", "train_limit", "test_limit", "epochs",
              "device")  # fmt: skip


def study(model: str, args: argparse.Namespace, out: Path) -> dict:
    """Run (or resume) the model's sweeps, then read back every criterion's and IMP's summaries."""
    folders = {}
    for name, sweep in sweeps(model, args).items():
        result = run_sweep(sweep, out / model / name, args.executor,
                           SweepOptions(workers=args.workers), progress=not args.quiet)  # fmt: skip
        result.require_complete()
        folders[name] = {p.name: out / model / name / p.name for p in result.points}
    criteria = {
        c: at_init_summaries(folders["at_init"][point_name({"criterion": c})])
        for c in args.criteria
    }
    (imp,) = folders["imp"].values()
    seeds = {s: read_json(layout.seed_dir(imp, s) / layout.SUMMARY) for s in range(args.seeds)}
    return {"criteria": criteria, "imp": seeds}


def table(model: str, results: dict, sparsities: tuple[float, ...]) -> str:
    """Markdown: test accuracy (%) at the best validation step, mean ± std over seeds."""
    lines = [
        f"**{model}** | " + " | ".join(f"{100 * s:g}%" for s in sparsities),
        "|---" * (len(sparsities) + 1) + "|",
    ]
    for criterion, summaries in results["criteria"].items():
        for run in (PRUNED, *CONTROLS):
            label = criterion if run == PRUNED else f"{criterion} {run}"
            cells = [mean_std(at_init_accuracy(summaries, s, run)) for s in sparsities]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    cells = []
    for s in sparsities:
        accs, reached = round_accuracy(list(results["imp"].values()), s)
        cells.append(f"{mean_std(accs)} ({100 * reached:.1f}%)")
    lines.append(f"| {IMP} (its sparsity) | " + " | ".join(cells) + " |")
    lines[0] = "| " + lines[0] + " |"
    return "\n".join(lines)


def figure(all_results: dict, sparsities: tuple[float, ...], path: Path) -> None:
    """Accuracy vs sparsity per criterion (solid) and its layer-shuffle control (dotted), IMP."""
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(5.5 * len(all_results), 4.2), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, len(all_results), squeeze=False)[0]
        palette = sns.color_palette("tab10")
        for ax, (model, results) in zip(axes, all_results.items(), strict=True):
            x = [100 * s for s in sparsities]
            for i, (criterion, summaries) in enumerate(results["criteria"].items()):
                for run, style in ((PRUNED, "-"), ("layer-shuffle", ":")):
                    ys = [at_init_accuracy(summaries, s, run) for s in sparsities]
                    if all(ys):
                        mean = [sum(y) / len(y) for y in ys]
                        label = criterion if run == PRUNED else None
                        ax.plot(x, mean, style, marker="o", color=palette[i], label=label)
            imp = [round_accuracy(list(results["imp"].values()), s) for s in sparsities]
            ax.plot(
                [100 * r for _, r in imp],
                [sum(a) / len(a) for a, _ in imp],
                "-",
                marker="s",
                color="black",
                label=IMP,
            )
            ax.set_title(f"{model} on Fashion-MNIST (dotted: layer-shuffle)")
            ax.set_xlabel("sparsity (%)")
            ax.set_ylabel("test accuracy (%)")
            ax.legend(fontsize=8)
    fig.savefig(path, dpi=150)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])

    def names(text: str) -> tuple[str, ...]:
        return tuple(t for t in text.split(",") if t)

    p.add_argument("--models", type=names, default=MODELS)
    p.add_argument("--criteria", type=names, default=CRITERIA)
    p.add_argument(
        "--sparsities",
        type=lambda s: tuple(float(t) for t in names(s)),
        default=SPARSITIES,
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--epochs", type=float, default=20.0, help="training length (default 20)")
    p.add_argument("--train-limit", type=int, default=None, help="first N training examples")
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument(
        "--imp-fraction", type=float, default=0.2, help="IMP's per-round pruning fraction"
    )
    p.add_argument("--batched", action="store_true", help="stack each sparsity's networks")
    p.add_argument("--executor", choices=EXECUTORS, default="local")
    p.add_argument("--workers", type=int, default=None, help="local: points at once")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--data-root", default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", type=Path, default=Path("checkpoints/pruning_at_init"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    try:
        all_results = {model: study(model, args, args.out) for model in args.models}
    except IncompleteSweep as e:  # a run failed: its log is named
        print(e, file=sys.stderr)
        return EXIT_INCOMPLETE
    md = "\n\n".join(table(m, r, args.sparsities) for m, r in all_results.items())
    seconds = time.perf_counter() - t0
    write_json(
        {"settings": {**vars(args), "out": str(args.out)}, "seconds": seconds, **all_results},
        args.out / "results.json",
    )
    (args.out / "table.md").write_text(md + "\n")
    figure(all_results, args.sparsities, args.out / "at_init.png")
    print(md)
    print(f"{seconds:.0f} s; results: {args.out / 'results.json'}; figure: at_init.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
