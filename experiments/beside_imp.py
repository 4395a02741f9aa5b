"""Is IMP's ticket special? Seven ways to reach one sparsity, side by side on Fashion-MNIST.

At each sparsity, per model and seed: IMP with weight rewinding (magnitude, one global threshold;
Frankle et al., ICML 2020), IMP by LAMP scores (Lee et al., ICLR 2021), SynFlow at init (Tanaka
et al., NeurIPS 2020, global), random pruning at init with ERK allocation (Evci et al., ICML
2020), a supermask over the frozen init (edge-popup, Ramanujan et al., CVPR 2020), and dynamic
sparse training from a random ERK mask: SET (Mocanu et al. 2018) and RigL (Evci et al. 2020).
Every network trains for the same epochs; IMP trains them once per round, at 20% per round, and
is read at the round nearest each sparsity (its own sparsity is shown). Each method is a sweep
(`lottery imp`, `at-init`, `supermask`, `prune --dst`) whose points hold every seed, run on any
executor; the study resumes where it stopped. Writes results.json, table.md and beside_imp.png.

    python -m experiments.beside_imp --models lenet_300_100 --epochs 2 --device cpu \
        --out checkpoints/beside_imp/lenet_300_100                          # docs, 14 min
    python -m experiments.beside_imp --models conv2 --train-limit 5000 --val-size 500 \
        --test-limit 2000 --epochs 2 --device cpu --out checkpoints/beside_imp/conv2   # docs
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

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
    point_name,
    read_json,
    round_accuracy,
    run_length,
    run_sweep,
    stat_text,
    summarize,
    write_json,
)

MODELS = ("lenet_300_100", "conv2")
SPARSITIES = (0.8, 0.9, 0.95, 0.98)
IMP_FRACTION = 0.2  # per round (Frankle & Carbin, ICLR 2019)
REWIND_FRACTION = 0.01  # rewind to 1% of training, inside the 0.1%-7% of Frankle et al. 2020
DST_MOVES = 10  # mask moves before T_end: ΔT = T_end / 10 on runs this short (RigL: ΔT = 100)
METHODS = {  # label -> (sweep, its point's varying settings)
    "IMP (rewind)": ("imp", {"criterion": "magnitude"}),
    "LAMP IMP (rewind)": ("imp", {"criterion": "lamp"}),
    "SynFlow at init": ("at_init", {"criterion": "synflow", "allocation": "global"}),
    "random-ERK at init": ("at_init", {"criterion": "random", "allocation": "erk"}),
    "supermask": ("supermask", {}),
    "SET (ERK)": ("dst", {"dst": "set"}),
    "RigL (ERK)": ("dst", {"dst": "rigl"}),
}
# The training settings the study fixes (TrainConfig's fields, as the commands take them).
TRAIN_KEYS = ("model", "dataset", "data_root", "val_size", "train_limit", "test_limit", "epochs",
              "device")  # fmt: skip


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
    """The model's four sweeps; every point holds all seeds."""
    cfg = config(model, args)
    train = {k: v for k, v in cfg.to_dict().items() if k in TRAIN_KEYS and v is not None}
    train["seeds"] = list(range(args.seeds))
    total, _ = run_length(cfg, load_data(cfg))
    sparsities = list(args.sparsities)
    imp = {"rounds": imp_rounds(args.sparsities, IMP_FRACTION), "scope": "global",
           "prune_fraction": IMP_FRACTION, "rate_scale": {}, "reset": "rewind",
           "rewind_step": max(1, round(REWIND_FRACTION * total))}  # fmt: skip
    at_init = [v for s, v in METHODS.values() if s == "at_init"]
    dst = {"update_every": max(1, round(0.75 * total / DST_MOVES)), "allocation": "erk"}
    return {
        "imp": Sweep("imp", {**train, **imp}, {"criterion": ["magnitude", "lamp"]}),
        "at_init": Sweep(
            "at-init",
            {**train, "sparsities": sparsities, "controls": ["none"]},
            zip={k: [v[k] for v in at_init] for k in at_init[0]},
        ),
        "supermask": Sweep("supermask", train, {"sparsity": sparsities}),
        "dst": Sweep(
            "prune", {**train, **dst}, {"dst": ["set", "rigl"], "final_sparsity": sparsities}
        ),
    }


def study(model: str, args: argparse.Namespace, out: Path) -> dict[str, dict[float, dict]]:
    """Run (or resume) the model's sweeps; per method and sparsity, the seeds' test accuracies
    (%, at the best validation step) and the sparsity each reached."""
    folders: dict[str, Path] = {}
    for name, sweep in sweeps(model, args).items():
        folder = out / model / name
        options = SweepOptions(workers=args.workers)
        result = run_sweep(sweep, folder, args.executor, options, progress=not args.quiet)
        result.require_complete()
        folders[name] = folder
    seeds = range(args.seeds)
    table: dict[str, dict[float, dict]] = {}
    for label, (sweep, point) in METHODS.items():
        table[label] = {}
        for s in args.sparsities:
            if sweep == "imp":
                search = folders[sweep] / point_name(point)
                summaries = [read_json(layout.seed_dir(search, i) / layout.SUMMARY) for i in seeds]
                accs, reached = round_accuracy(summaries, s)
            elif sweep == "at_init":
                summaries = at_init_summaries(folders[sweep] / point_name(point))
                accs, reached = at_init_accuracy(summaries, s, PRUNED), s
            else:
                where = {**point, "sparsity" if sweep == "supermask" else "final_sparsity": s}
                runs = [layout.seed_dir(folders[sweep] / point_name(where), i) for i in seeds]
                results = [read_json(r / layout.RESULT) for r in runs]
                accs = [100 * r["test_accuracy_at_best_val"] for r in results]
                reached = 1 - results[0]["density"]
            table[label][s] = {"accuracy": accs, "sparsity": reached}
    return table


def markdown(model: str, table: dict, sparsities: tuple[float, ...]) -> str:
    """Test accuracy (%) at the best validation step: mean ± std [95% CI] over the seeds; a
    method whose sparsity differs from the column's shows its own."""
    head = f"| **{model}** | " + " | ".join(f"{100 * s:g}%" for s in sparsities) + " |"
    lines = [head, "|---" * (len(sparsities) + 1) + "|"]
    for label, cells in table.items():
        texts = []
        for s in sparsities:
            cell = cells[s]
            text = stat_text(summarize(cell["accuracy"]))
            if abs(cell["sparsity"] - s) > 5e-4:
                text += f" ({100 * cell['sparsity']:.1f}%)"
            texts.append(text)
        lines.append(f"| {label} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def figure(tables: dict, path: Path) -> None:
    """Accuracy vs sparsity per method with its 95% interval, one panel per model."""
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(5.5 * len(tables), 4.2), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, len(tables), squeeze=False)[0]
        palette = sns.color_palette("tab10")
        for ax, (model, table) in zip(axes, tables.items(), strict=True):
            for i, (label, cells) in enumerate(table.items()):
                stats = [summarize(c["accuracy"]) for c in cells.values()]
                x = [100 * c["sparsity"] for c in cells.values()]
                mean = [st["mean"] for st in stats]
                ax.plot(x, mean, marker="o", color=palette[i], label=label)
                ax.fill_between(x, [st["ci95_low"] for st in stats],
                                [st["ci95_high"] for st in stats], color=palette[i], alpha=0.15)  # fmt: skip
            ax.set_title(f"{model} on Fashion-MNIST")
            ax.set_xlabel("sparsity (%)")
            ax.set_ylabel("test accuracy (%)")
            ax.legend(fontsize=7)
    fig.savefig(path, dpi=150)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])

    def names(text: str) -> tuple[str, ...]:
        return tuple(t for t in text.split(",") if t)

    p.add_argument("--models", type=names, default=MODELS)
    p.add_argument(
        "--sparsities", type=lambda s: tuple(float(t) for t in names(s)), default=SPARSITIES
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--epochs", type=float, default=2.0, help="training length (default 2)")
    p.add_argument("--train-limit", type=int, default=None, help="first N training examples")
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--executor", choices=EXECUTORS, default="local")
    p.add_argument("--workers", type=int, default=None, help="local: points at once")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--data-root", default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", type=Path, default=Path("checkpoints/beside_imp"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    try:
        tables = {model: study(model, args, args.out) for model in args.models}
    except IncompleteSweep as e:  # a run failed: its log is named
        print(e, file=sys.stderr)
        return EXIT_INCOMPLETE
    md = "\n\n".join(markdown(m, t, args.sparsities) for m, t in tables.items())
    seconds = time.perf_counter() - t0
    results = {m: {label: {str(s): c for s, c in cells.items()} for label, cells in t.items()}
               for m, t in tables.items()}  # fmt: skip
    write_json(
        {"settings": {**vars(args), "out": str(args.out)}, "seconds": seconds, **results},
        args.out / "results.json",
    )
    (args.out / "table.md").write_text(md + "\n")
    figure(tables, args.out / "beside_imp.png")
    print(md)
    print(f"{seconds:.0f} s; results: {args.out / 'results.json'}; figure: beside_imp.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
