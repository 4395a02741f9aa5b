"""Which pruning schedule under a fixed training budget? (Hubens et al., ICIP 2022, arXiv 2107.02086)

The study's design on Fashion-MNIST: a small Conv-4, Adam with a one-cycle LR policy, a fixed
number of epochs, 95% final sparsity by layer-wise magnitude pruning, and the schedules one-shot
(at 40% of the budget), iterative and AGP (from 20%), linear, cosine, cosine ending at 70%,
exponential and one-cycle, each over several seeds; a dense run per seed gives the reference.
Every schedule goes through the same GradualPruner and mask engine, so runs differ only by the
schedule; all schedules x seeds train as one stacked model (`--one-by-one` to train them apart).
Writes results.json, table.md, sparsity.png and accuracy.png under --out.

    python -m experiments.schedule_budget            # the README table (~12 min on 2 idle cores)
    python -m experiments.schedule_budget --quick    # a one-minute smoke run
"""

from __future__ import annotations

import argparse
import statistics
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lottery import layout
from lottery.config import TrainConfig
from lottery.datasets import Splits, load_dataset
from lottery.gradual import GradualRun, PruningSettings, train_gradual
from lottery.models import prunable_names
from lottery.pruner import run_length
from lottery.schedules import Schedule
from lottery.storage import read_jsonl, write_json

FINAL_SPARSITY = 0.95
# label -> Schedule arguments; windows as fractions of the budget, as in the study's blog post.
# Exponential needs s_i > 0: it starts from 1% (the others from 0).
RECIPES: dict[str, dict] = {
    "one-shot (at 40%)": {"name": "one-shot", "start": 0.4},
    "iterative (from 20%)": {"name": "iterative", "start": 0.2},
    "AGP (from 20%)": {"name": "agp", "start": 0.2},
    "linear": {"name": "linear"},
    "cosine": {"name": "cosine"},
    "cosine (ends at 70%)": {"name": "cosine", "end": 0.7},
    "exponential": {"name": "exponential", "initial_sparsity": 0.01},
    "one-cycle": {"name": "one-cycle"},
}
DENSE = "dense (no pruning)"
# Hubens' blog post on the study (Imagenette, ResNet-18, 10 epochs, one seed): test accuracy in %.
BLOG = {
    "one-shot (at 40%)": 75.5,
    "iterative (from 20%)": 66.9,
    "AGP (from 20%)": 77.1,
    "linear": 22.1,
    "cosine": 59.2,
    "cosine (ends at 70%)": 77.7,
    "exponential": 9.8,
    "one-cycle": 79.3,
}
MODEL_NAME = "conv4-quarter"


def conv4_quarter(input_shape: tuple[int, int, int], num_classes: int, seed: int) -> nn.Module:
    """Conv-4 (Frankle & Carbin 2019) at a quarter of its widths: conv 16-16-32-32, fc 64-64.

    Glorot-normal weights and zero biases, as the paper's Conv-4; built from `seed` alone. A quarter
    width is what lets 27 runs fit in ~25 minutes on two CPU cores.
    """
    channels, height, breadth = input_shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        for filters in (16, 32):
            layers += [nn.Conv2d(channels, filters, 3, padding=1), nn.ReLU()]
            layers += [nn.Conv2d(filters, filters, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            channels, height, breadth = filters, height // 2, breadth // 2
        model = nn.Sequential(
            *layers,
            nn.Flatten(),
            nn.Linear(channels * height * breadth, 64),
            nn.ReLU(),
            nn.Linear(64, 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)
    model.prunable = tuple(prunable_names(model))
    return model


@dataclass(frozen=True)
class Budget:
    """The fixed budget and data every run shares."""

    epochs: float
    train_limit: int | None
    test_limit: int | None
    val_size: int
    batch_size: int
    lr: float
    update_every: int
    evals: int
    data_root: str | None
    threads: int | None
    dataset: str = "fashion_mnist"
    device: str = "cpu"


def config(budget: Budget, seed: int) -> TrainConfig:
    """Adam with the one-cycle LR policy, as in the study; seed = init seed = data-order seed."""
    return TrainConfig(
        model=MODEL_NAME,
        dataset=budget.dataset,
        data_root=budget.data_root,
        val_size=budget.val_size,
        train_limit=budget.train_limit,
        test_limit=budget.test_limit,
        epochs=budget.epochs,
        batch_size=budget.batch_size,
        optimizer="adam",
        lr=budget.lr,
        lr_schedule="one-cycle",
        init_seed=seed,
        data_seed=seed,
        device=budget.device,
        threads=budget.threads,
        extra={"architecture": conv4_quarter.__doc__.splitlines()[0]},
    )


def make_runs(labels: list[str], seeds: int, budget: Budget, data: Splits, out: Path) -> list:
    """Every (schedule, seed) run as a GradualRun in out/runs/<schedule>/seed_<s>/ (the dense
    reference has no schedule); each seed's init and data order are shared by its schedules."""
    runs = []
    for seed in range(seeds):
        cfg = config(budget, seed)
        total, _ = run_length(cfg, data)
        cfg = cfg.replace(eval_every=max(1, total // budget.evals))
        for label in labels:
            schedule = None
            if label != DENSE:
                schedule = Schedule(final_sparsity=FINAL_SPARSITY, **RECIPES[label])
            model = conv4_quarter(data.input_shape, data.num_classes, seed)
            run_dir = out / "runs" / _slug(label) / f"seed_{seed}"
            runs.append(GradualRun(cfg, schedule, run_dir, model, {"label": f"{label} s{seed}"}))
    return runs


def train(runs: list, budget: Budget, data: Splits, batched: bool, progress: bool) -> list[dict]:
    """Train (or resume, or read back) every run, all as one stacked model when `batched`."""
    settings = PruningSettings(every=budget.update_every, scope="layer", criterion="magnitude")
    results = train_gradual(runs, settings, data, batched=batched, progress=progress)
    out = []
    for run, result in zip(runs, results, strict=True):
        label, seed = run.record["label"].rsplit(" s", 1)
        log = run.out / layout.PRUNING_LOG
        out.append({
            "schedule": label,
            "seed": int(seed),
            "test_accuracy": result.test_accuracy,
            "sparsity": 1.0 - result.density,
            "seconds": result.seconds,
            "metrics": read_jsonl(run.out / layout.METRICS),
            "pruning": read_jsonl(log) if run.schedule is not None else [],
            "total_steps": result.steps,
        })  # fmt: skip
    return out


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label).strip("_").replace("__", "_")


def summarise(runs: list[dict]) -> OrderedDict[str, dict]:
    """Mean, std and per-seed final test accuracy and reached sparsity per schedule, best first."""
    by: dict[str, list[dict]] = {}
    for r in runs:
        by.setdefault(r["schedule"], []).append(r)
    rows = {}
    for label, rs in by.items():
        accs = [100 * r["test_accuracy"] for r in sorted(rs, key=lambda r: r["seed"])]
        rows[label] = {
            "mean": statistics.fmean(accs),
            "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "seeds": accs,
            "sparsity": statistics.fmean(r["sparsity"] for r in rs),
            "blog": BLOG.get(label),
        }
    return OrderedDict(sorted(rows.items(), key=lambda kv: -kv[1]["mean"]))


def table(rows: OrderedDict[str, dict]) -> str:
    """Markdown table of the summary (accuracy in %)."""
    lines = [
        "| schedule | test accuracy (%) mean ± std | per seed | sparsity reached | blog (Imagenette) |",
        "|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        seeds = ", ".join(f"{a:.2f}" for a in r["seeds"])
        blog = f"{r['blog']:.1f}" if r["blog"] is not None else "-"
        lines.append(
            f"| {label} | {r['mean']:.2f} ± {r['std']:.2f} | {seeds} | {100 * r['sparsity']:.2f}% "
            f"| {blog} |"
        )
    return "\n".join(lines)


def figures(runs: list[dict], out: Path) -> None:
    """sparsity.png: the sparsity each run reached at every mask update (seed 0);
    accuracy.png: test accuracy vs step, mean over seeds with a 95% band."""
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    first = min(r["seed"] for r in runs)
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(9.0, 4.5), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        for r in runs:
            if r["seed"] == first and r["pruning"]:
                steps = [p["step"] for p in r["pruning"]] + [r["total_steps"]]
                sparsity = [100 * p["sparsity"] for p in r["pruning"]]
                ax.step(steps, sparsity + sparsity[-1:], where="post", label=r["schedule"])
        ax.set_xlabel("step")
        ax.set_ylabel("sparsity reached (%)")
        ax.set_title(f"Pruning schedules to {100 * FINAL_SPARSITY:g}% sparsity")
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.savefig(out / "sparsity.png", dpi=150)

    data = {"step": [], "accuracy": [], "schedule": []}
    for r in runs:
        for m in r["metrics"]:
            data["step"].append(m["step"])
            data["accuracy"].append(100 * m["test_accuracy"])
            data["schedule"].append(r["schedule"])
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(9.0, 4.5), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        sns.lineplot(data=data, x="step", y="accuracy", hue="schedule", errorbar=("ci", 95), ax=ax)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("Test accuracy during training (mean over seeds)")
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.savefig(out / "accuracy.png", dpi=150)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=float, default=3.0, help="the fixed budget (default 3)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per schedule (default 3)")
    p.add_argument("--train-limit", type=int, default=12000, help="training examples used")
    p.add_argument("--test-limit", type=int, default=3000, help="test examples used")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3, help="peak LR of the one-cycle policy")
    p.add_argument("--update-every", type=int, default=10, help="steps between mask updates")
    p.add_argument("--evals", type=int, default=6, help="evaluations per run (accuracy curve)")
    p.add_argument(
        "--one-by-one",
        action="store_true",
        help="train the runs one after another instead of as one stacked model",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--schedules", default=None, help="comma-separated subset of the labels")
    p.add_argument("--no-dense", action="store_true", help="skip the dense reference runs")
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", choices=("cpu",), default="cpu", help="runs are CPU-sized")
    p.add_argument("--out", type=Path, default=Path("checkpoints/schedule_budget"))
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, tiny data, 1 epoch")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.seeds, args.train_limit, args.test_limit = 1.0, 1, 2000, 500
        args.update_every, args.evals = 5, 4
        if args.out == Path("checkpoints/schedule_budget"):
            args.out = Path("checkpoints/schedule_budget_quick")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    labels = list(RECIPES) if args.schedules is None else args.schedules.split(",")
    unknown = [s for s in labels if s not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown schedule label {unknown[0]!r}; choose from {list(RECIPES)}")
    if not args.no_dense:
        labels.append(DENSE)
    budget = Budget(
        epochs=args.epochs,
        train_limit=args.train_limit,
        test_limit=args.test_limit,
        val_size=500,
        batch_size=args.batch_size,
        lr=args.lr,
        update_every=args.update_every,
        evals=args.evals,
        data_root=args.data_root,
        threads=args.threads,
    )
    cfg = config(budget, 0)
    data = load_dataset(cfg.dataset, cfg.data_root, val_size=cfg.val_size,
                        train_limit=cfg.train_limit, test_limit=cfg.test_limit)  # fmt: skip
    runs = train(make_runs(labels, args.seeds, budget, data, args.out), budget, data,
                 batched=not args.one_by_one, progress=not args.no_progress)  # fmt: skip
    rows = summarise(runs)
    md = table(rows)
    write_json(
        {
            "settings": {**vars(args), "out": str(args.out), "final_sparsity": FINAL_SPARSITY},
            "budget": budget.__dict__,
            "summary": rows,
            "runs": [{k: v for k, v in r.items() if k != "metrics"} for r in runs],
        },
        args.out / "results.json",
    )
    (args.out / "table.md").write_text(md + "\n")
    figures(runs, args.out)
    print(md)
    print(f"results: {args.out / 'results.json'}; figures: sparsity.png, accuracy.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
