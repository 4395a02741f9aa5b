"""Which pruning schedule under a fixed training budget? (Hubens et al., ICIP 2022, arXiv 2107.02086)

The study's design on Fashion-MNIST: Adam with the one-cycle LR policy, a fixed number of epochs,
95% final sparsity by layer-wise magnitude pruning of the convolution weights only (the fully
connected layer stays dense, as under fasterai's SparsifyCallback whose layer_type=nn.Conv2d the
study used), and the schedules one-shot (at 40% of the budget), iterative and AGP (from 20%),
linear, cosine, cosine ending at 70%, exponential and one-cycle, each over several seeds. The
network is the registry's `allconv` (four conv+BN+ReLU layers, global average pooling, one fc
layer), whose convolutions carry its capacity, so 95% per layer starves none of them (the study
pruned ResNet-18). A dense run per seed gives the reference, and one dense run trained for
`--converged` times the budget shows how close the budget comes to convergence.

Every schedule goes through the same GradualPruner and mask engine, so runs differ only by the
schedule. The runs are three sweeps (`lottery sweep`): the schedules (`lottery prune`, schedule ×
seed) in OUT/schedules/, the dense references (`lottery train`) in OUT/dense/ and the longer dense
run in OUT/converged/, on any executor (`--executor local|ray|slurm`; locally `--jobs` worker
processes of `--threads` threads each). On a CPU that beats one stacked model (`--batched`, for a
GPU): stacking small convolutions with vmap turns them into grouped convolutions that PyTorch's CPU
kernels run about 2x slower than separate ones, and two one-thread processes use two cores better
than one two-thread process. A run's result depends on its thread count only, not on --jobs.
Killed runs resume; a rerun skips finished runs. Writes results.json, table.md, sparsity.png and
accuracy.png under --out.

    python -m experiments.schedule_budget --jobs 2   # 24,000 steps, ~20 CPU-minutes: ~11 min
    python -m experiments.schedule_budget --quick    # a smoke run of about a minute
"""

from __future__ import annotations

import argparse
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from lottery import (
    EXECUTORS,
    EXIT_INCOMPLETE,
    ConfigError,
    GradualRun,
    IncompleteSweep,
    Mask,
    PruningSettings,
    Schedule,
    Splits,
    Sweep,
    SweepOptions,
    TrainConfig,
    count_parameters,
    layout,
    load_dataset,
    make_model,
    point_name,
    prunable_names,
    read_json,
    read_jsonl,
    run_length,
    run_sweep,
    summarize,
    train_gradual,
    write_json,
)

FINAL_SPARSITY = 0.95
MODEL_NAME = "allconv"
PRUNED_LAYERS = "conv"
SCOPE_NOTE = (
    f"{MODEL_NAME}: convolution weights pruned layer-wise by magnitude to "
    f"{100 * FINAL_SPARSITY:g}% sparsity; the fc layer stays dense"
)
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
ALPHA = 0.05  # a schedule whose Welch p-value against the best is >= ALPHA is inside the noise


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


def converged_label(factor: float) -> str:
    """The label of the dense run trained for `factor` times the budget."""
    return f"dense, {factor:g}x budget"


def config(budget: Budget, seed: int, factor: float = 1.0) -> TrainConfig:
    """Adam with the one-cycle LR policy, as in the study, for `factor` times the budget's epochs;
    seed = init seed = data-order seed."""
    return TrainConfig(
        model=MODEL_NAME,
        dataset=budget.dataset,
        data_root=budget.data_root,
        val_size=budget.val_size,
        train_limit=budget.train_limit,
        test_limit=budget.test_limit,
        epochs=budget.epochs * factor,
        batch_size=budget.batch_size,
        optimizer="adam",
        lr=budget.lr,
        lr_schedule="one-cycle",
        init_seed=seed,
        data_seed=seed,
        device=budget.device,
        threads=budget.threads,
    )


def settings(budget: Budget) -> PruningSettings:
    """Layer-wise magnitude pruning of the convolution weights, updated every few steps."""
    return PruningSettings(
        every=budget.update_every, scope="layer", criterion="magnitude", layers=PRUNED_LAYERS
    )


def load(budget: Budget) -> Splits:
    """The budget's data (the same split and slice in every process)."""
    cfg = config(budget, 0)
    return load_dataset(cfg.dataset, cfg.data_root, val_size=cfg.val_size,
                        train_limit=cfg.train_limit, test_limit=cfg.test_limit)  # fmt: skip


@dataclass(frozen=True)
class Planned:
    """One run of the study: its label and seed, the sweep that runs it, and its folder."""

    label: str
    seed: int
    sweep: str  # the sweep's folder under --out: schedules, dense or converged
    point: str  # the run's folder in it
    cfg: TrainConfig
    schedule: Schedule | None


def sweeps(
    labels: list[str], seeds: int, budget: Budget, data: Splits, converged: float = 0.0
) -> tuple[dict[str, Sweep], list[Planned]]:
    """The study's sweeps by folder name, and every run they hold: each (schedule, seed) as a
    `lottery prune` point, the dense reference per seed as a `lottery train` point (each seed's
    init and data order shared by its schedules), and with `converged` > 0 seed 0's dense run for
    `converged` times the budget."""

    def fixed(cfg: TrainConfig) -> dict:
        return {k: v for k, v in cfg.to_dict().items()
                if k in TRAIN_KEYS and k not in ("init_seed", "data_seed") and v is not None}  # fmt: skip

    def timed(seed: int, factor: float = 1.0) -> TrainConfig:
        cfg = config(budget, seed, factor)
        return cfg.replace(eval_every=max(1, run_length(cfg, data)[0] // budget.evals))

    pruned = [label for label in labels if label != DENSE]
    rows = {label: {**RECIPE_DEFAULTS, **RECIPES[label]} for label in pruned}
    out: dict[str, Sweep] = {}
    planned = []
    if pruned:
        zipped = {("schedule" if k == "name" else k): [rows[lb][k] for lb in pruned]
                  for k in RECIPE_DEFAULTS}  # fmt: skip
        out["schedules"] = Sweep("prune", {**fixed(timed(0)), **settings_of(budget)},
                                 {"seed": list(range(seeds))}, zipped)  # fmt: skip
        for seed in range(seeds):
            for label in pruned:
                varying = {"seed": seed, **{k: v[pruned.index(label)] for k, v in zipped.items()}}
                schedule = Schedule(final_sparsity=FINAL_SPARSITY, **RECIPES[label])
                planned.append(
                    Planned(label, seed, "schedules", point_name(varying), timed(seed), schedule)
                )
    if DENSE in labels:
        out["dense"] = Sweep("train", fixed(timed(0)), {"seed": list(range(seeds))})
        for seed in range(seeds):
            planned.append(
                Planned(DENSE, seed, "dense", point_name({"seed": seed}), timed(seed), None)
            )
    if converged > 0:
        long = timed(0, converged)
        settings = {k: v for k, v in fixed(long).items() if k != "epochs"}
        out["converged"] = Sweep("train", settings, {"epochs": [long.epochs]})
        label = converged_label(converged)
        planned.append(
            Planned(label, 0, "converged", point_name({"epochs": long.epochs}), long, None)
        )
    return out, planned


# The training settings the study fixes, as `lottery prune` and `lottery train` take them.
TRAIN_KEYS = ("model", "dataset", "data_root", "val_size", "train_limit", "test_limit", "epochs",
              "batch_size", "optimizer", "lr", "lr_schedule", "init_seed", "data_seed", "device",
              "threads", "eval_every")  # fmt: skip
# A schedule's window and start when its recipe leaves them out (as `lottery prune` defaults).
RECIPE_DEFAULTS = {"name": None, "start": 0.0, "end": 1.0, "initial_sparsity": 0.0}


def settings_of(budget: Budget) -> dict:
    """`settings(budget)` as `lottery prune`'s settings."""
    s = settings(budget)
    return {"update_every": s.every, "scope": s.scope, "criterion": s.criterion,
            "layers": s.layers, "final_sparsity": FINAL_SPARSITY}  # fmt: skip


def train(
    planned: list[Planned],
    study: dict[str, Sweep],
    budget: Budget,
    data: Splits,
    out: Path,
    *,
    batched: bool = False,
    options: SweepOptions | None = None,
    executor: str = "local",
    progress: bool = True,
) -> list[dict]:
    """Run (or resume, or skip) every run: the sweeps on `executor`, or, `batched`, all runs in
    this process as one stacked model in the same folders; then read each run's records."""
    if batched:
        runs = [GradualRun(p.cfg, p.schedule, out / p.sweep / p.point) for p in planned]
        train_gradual(runs, settings(budget), data, batched=True, progress=progress, lock=out)
    else:
        for name, sweep in study.items():
            run_sweep(sweep, out / name, executor, options, progress=progress).require_complete()
    rows = []
    for p in planned:
        folder = out / p.sweep / p.point
        result = read_json(folder / layout.RESULT)
        pruned = p.schedule is not None
        rows.append({
            "schedule": p.label,
            "seed": p.seed,
            "test_accuracy": result["test_accuracy"],
            "sparsity": 1.0 - result["density"],
            "seconds": result["seconds"],
            "metrics": read_jsonl(folder / layout.METRICS),
            "pruning": read_jsonl(folder / layout.PRUNING_LOG) if pruned else [],
            "total_steps": result["steps"],
            "layers": layer_counts(p.cfg, folder, data) if pruned else None,
        })  # fmt: skip
    return rows


def layer_counts(cfg: TrainConfig, folder: Path, data: Splits) -> dict[str, dict]:
    """Kept and total weights of every prunable tensor at the end of a pruned run (tensors the
    mask leaves out, the fc layer here, are dense)."""
    model = make_model(cfg, data)
    tensors = Mask.load(folder / layout.MASK).tensors
    counts = {}
    for name in prunable_names(model):
        total = count_parameters(model, [name])
        kept = int(tensors[name].sum()) if name in tensors else total
        counts[name] = {"kept": kept, "total": total, "pruned": name in tensors}
    return counts


def summarise(runs: list[dict]) -> OrderedDict[str, dict]:
    """Per schedule: n, mean, sample std and 95% Student-t CI of the final test accuracy (%) over
    seeds, the per-seed values, the sparsity reached, the study's number, and for pruned schedules
    their rank and Welch's t-test against the best one. Dense references first, then by rank."""
    from scipy import stats

    by: dict[str, list[dict]] = {}
    for r in runs:
        by.setdefault(r["schedule"], []).append(r)
    rows = {}
    for label, rs in by.items():
        accs = [100 * r["test_accuracy"] for r in sorted(rs, key=lambda r: r["seed"])]
        rows[label] = {
            **summarize(accs),
            "seeds": accs,
            "sparsity": sum(r["sparsity"] for r in rs) / len(rs),
            "blog": BLOG.get(label),
            "pruned": label in RECIPES,
        }
    ranked = sorted((k for k in rows if rows[k]["pruned"]), key=lambda k: -rows[k]["mean"])
    for rank, label in enumerate(ranked, 1):
        best, row = rows[ranked[0]], rows[label]
        p = None
        if label != ranked[0] and min(best["n"], row["n"]) > 1:
            p = float(stats.ttest_ind(best["seeds"], row["seeds"], equal_var=False).pvalue)
        # identical per-seed values on both sides leave Welch's test undefined (NaN)
        noise = label == ranked[0] or (p is not None and (p != p or p >= ALPHA))
        row.update(rank=rank, welch_p=p, within_noise_of_best=noise)
    dense = [k for k in rows if not rows[k]["pruned"]]
    return OrderedDict((k, rows[k]) for k in dense + ranked)


def table(rows: OrderedDict[str, dict]) -> str:
    """Markdown table of the summary (accuracy in %)."""
    lines = [
        f"Test accuracy (%); {SCOPE_NOTE} (sparsity = share of conv weights pruned). "
        f"≈: Welch's t-test against the best schedule gives p >= {ALPHA} (inside the noise).",
        "",
        "| rank | schedule | mean ± std | 95% CI | per seed | sparsity (conv) "
        "| study (Imagenette, blog) | Welch p vs best |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        seeds = ", ".join(f"{a:.2f}" for a in r["seeds"])
        spread = f" ± {r['std']:.2f}" if r["n"] > 1 else ""
        ci = f"{r['ci95_low']:.2f} – {r['ci95_high']:.2f}" if r["n"] > 1 else "-"
        blog = f"{r['blog']:.1f}" if r["blog"] is not None else "-"
        rank, p = "-", "-"
        if r["pruned"]:
            rank = f"{r['rank']}" + (" ≈" if r["within_noise_of_best"] and r["rank"] > 1 else "")
            p = "best" if r["rank"] == 1 else f"{r['welch_p']:.3f}"
        lines.append(
            f"| {rank} | {label} | {r['mean']:.2f}{spread} | {ci} | {seeds} "
            f"| {100 * r['sparsity']:.2f}% | {blog} | {p} |"
        )
    return "\n".join(lines)


def layer_table(runs: list[dict]) -> str:
    """Markdown table of the kept weights per layer at the end of the pruned runs."""
    pruned = [r for r in runs if r["layers"] is not None]
    if not pruned:
        return ""
    first = pruned[0]["layers"]
    same = all(r["layers"] == first for r in pruned)
    lines = [
        "Weights kept per layer at the end of "
        + ("every pruned run" if same else f"{pruned[0]['schedule']} s{pruned[0]['seed']}")
        + ":",
        "",
        "| tensor | kept | of | density |",
        "|---|---|---|---|",
    ]
    for name, c in first.items():
        dense = "" if c["pruned"] else " (dense, not pruned)"
        lines.append(
            f"| {name} | {c['kept']} | {c['total']} | {100 * c['kept'] / c['total']:.1f}%{dense} |"
        )
    return "\n".join(lines)


def figures(runs: list[dict], out: Path) -> None:
    """sparsity.png: the conv sparsity each run reached at every mask update (seed 0);
    accuracy.png: test accuracy vs step over the budget, mean over seeds with a 95% band."""
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
        ax.set_ylabel("conv sparsity reached (%)")
        ax.set_title(f"Pruning schedules to {100 * FINAL_SPARSITY:g}% of the conv weights")
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.savefig(out / "sparsity.png", dpi=150)

    budget = min(r["total_steps"] for r in runs)
    data = {"step": [], "accuracy": [], "schedule": []}
    for r in runs:
        if r["total_steps"] != budget:  # the converged reference runs past the budget
            continue
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


QUICK = {
    "epochs": 1.0,
    "seeds": 2,
    "train_limit": 1500,
    "test_limit": 500,
    "val_size": 200,
    "update_every": 5,
    "evals": 3,
    "converged": 2.0,
    "out": Path("checkpoints/schedule_budget_quick"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options; `--quick` changes the defaults (flags given beside it still win)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--epochs",
        type=float,
        default=4.0,
        help="the fixed budget (default 4: the dense net within ~2 points of its 5x-budget run)",
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds per schedule (default 3)")
    p.add_argument("--train-limit", type=int, default=12000, help="training examples used")
    p.add_argument("--val-size", type=int, default=500, help="validation examples carved out")
    p.add_argument("--test-limit", type=int, default=3000, help="test examples used")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3, help="peak LR of the one-cycle policy")
    p.add_argument("--update-every", type=int, default=10, help="steps between mask updates")
    p.add_argument("--evals", type=int, default=6, help="evaluations per run (accuracy curve)")
    p.add_argument(
        "--converged",
        type=float,
        default=5.0,
        help="also train seed 0's dense net for this many times the budget (0: skip; default 5)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--one-by-one",
        dest="batched",
        action="store_false",
        default=False,
        help="train the runs one after another (the default: fastest on a CPU)",
    )
    mode.add_argument(
        "--batched", action="store_true", help="train the runs as one stacked model (GPU)"
    )
    p.add_argument("--jobs", type=int, default=1, help="local: worker processes (runs at once)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="where the runs go (see docs/sweeps.md)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.add_argument("--schedules", default=None, help="comma-separated subset of the labels")
    p.add_argument("--no-dense", action="store_true", help="skip the dense reference runs")
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", choices=("cpu",), default="cpu", help="runs are CPU-sized")
    p.add_argument("--out", type=Path, default=Path("checkpoints/schedule_budget"))
    p.add_argument("--quick", action="store_true", help="smoke run: 2 seeds, tiny data, 1 epoch")
    if "--quick" in (sys.argv[1:] if argv is None else argv):
        p.set_defaults(**QUICK)
    return p.parse_args(argv)


def check(args: argparse.Namespace) -> list[str]:
    """The run labels the arguments ask for; ConfigError for a bad value, before any work."""
    labels = list(RECIPES) if args.schedules is None else args.schedules.split(",")
    unknown = [s for s in labels if s not in RECIPES]
    if unknown:
        raise ConfigError(f"unknown schedule label {unknown[0]!r}; choose from {list(RECIPES)}")
    for name in ("seeds", "jobs", "threads", "evals", "update_every"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
    if not (args.epochs > 0 and args.converged >= 0):
        raise ConfigError("--epochs must be > 0 and --converged >= 0")
    if args.batched and args.jobs > 1:
        raise ConfigError("--batched trains one stacked model in one process; drop --jobs")
    return labels + ([] if args.no_dense else [DENSE])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return study(args)
    except ConfigError as e:
        print(f"schedule_budget: error: {e}", file=sys.stderr)
        return 2
    except IncompleteSweep as e:  # a run failed: its log is named
        print(e, file=sys.stderr)
        return EXIT_INCOMPLETE


def study(args: argparse.Namespace) -> int:
    """Train (or read back) every run, then write results.json, table.md and the figures."""
    labels = check(args)
    budget = Budget(
        epochs=args.epochs,
        train_limit=args.train_limit,
        test_limit=args.test_limit,
        val_size=args.val_size,
        batch_size=args.batch_size,
        lr=args.lr,
        update_every=args.update_every,
        evals=args.evals,
        data_root=args.data_root,
        threads=args.threads,
    )
    data = load(budget)
    study_sweeps, planned = sweeps(labels, args.seeds, budget, data, args.converged)
    runs = train(planned, study_sweeps, budget, data, args.out, batched=args.batched,
                 options=SweepOptions(workers=args.jobs, threads=args.threads),
                 executor=args.executor, progress=not args.no_progress)  # fmt: skip
    rows = summarise(runs)
    md = table(rows) + "\n\n" + layer_table(runs)
    converged = None
    if args.converged > 0:
        reference = rows[converged_label(args.converged)]["mean"]
        converged = {"factor": args.converged, "test_accuracy": reference}
        if DENSE in rows:
            converged["gap_to_budget_dense"] = reference - rows[DENSE]["mean"]
            md += (
                f"\n\nThe dense net at the budget reaches {rows[DENSE]['mean']:.2f}%, "
                f"{converged['gap_to_budget_dense']:.2f} points below its "
                f"{args.converged:g}x-budget run ({reference:.2f}%, seed 0)."
            )
    write_json(
        {
            "settings": {**vars(args), "out": str(args.out), "final_sparsity": FINAL_SPARSITY,
                         "model": MODEL_NAME, "pruned_layers": PRUNED_LAYERS,
                         "pruning": SCOPE_NOTE},
            "budget": budget.__dict__,
            "summary": rows,
            "converged": converged,
            "runs": [{k: v for k, v in r.items() if k != "metrics"} for r in runs],
        },
        args.out / "results.json",
    )  # fmt: skip
    (args.out / "table.md").write_text(md + "\n")
    figures(runs, args.out)
    print(md)
    print(f"results: {args.out / 'results.json'}; figures: sparsity.png, accuracy.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
