"""Instability of Conv-2 on Fashion-MNIST, dense and IMP subnetwork, beside ticket accuracy.

Linear mode connectivity (Frankle, Dziugaite, Roy & Carbin, "Linear Mode Connectivity and the
Lottery Ticket Hypothesis", ICML 2020): from the dense run's state at each start step k, pairs of
copies train with different data orders, and the error barrier on the straight path between a
pair's final weights says whether the network is stable at k. Their finding: IMP subnetworks reach
the dense accuracy only when reset to a step from which they are stable. This study measures the
barrier (several pairs per k: mean ± std and 95% Student-t interval) of the dense Conv-2 and of the
IMP subnetwork at ~20% of weights remaining (the mask of an IMP search trained exactly like this
study), both from one dense run, and sets it beside the test accuracy of IMP tickets reset to the
same k (`lottery imp --seeds 0,1,2` searches, or the sweeps of experiments/conv_tickets) at the
same round. The two instability studies are one sweep of `lottery instability` from the shared
dense run (OUT/instability/mask=.../), on any executor (`--executor local|ray|slurm`). Writes
results.json, table.md and stability.png under --out; a killed run resumes, and a rerun reads
everything back.

    python -m experiments.stability      # needs the searches under checkpoints/conv_tickets
    python -m experiments.stability --quick --search Q/seed_0 --tickets 0=Q --out OUT
      # smoke run; Q: lottery imp --model lenet_300_100 --dataset fashion_mnist --train-limit 600
      #   --val-size 200 --test-limit 500 --steps 40 --eval-every 20 --device cpu --threads 1
      #   --rounds 1 --seeds 0,1 --out Q
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from matplotlib.figure import Figure

from lottery import (
    EXECUTORS,
    EXIT_INCOMPLETE,
    MIN_POINTS,
    NON_RESULT_FIELDS,
    ConfigError,
    FolderInUseError,
    HelpFormatter,
    IncompleteSweep,
    Mask,
    Sweep,
    SweepOptions,
    TrainConfig,
    check_same_settings,
    check_writable,
    default_pairs,
    hold,
    layout,
    parse_ints,
    plots,
    read_json,
    records,
    run_sweep,
    stat_text,
    summarize,
    train_dense,
    write_bytes_atomic,
    write_json,
)
from lottery import group_members as members

# The running IMP study's training (its masks and tickets must line up with these runs); Adam
# 2e-4 and batch 60 are Conv-2's settings in Frankle & Carbin (ICLR 2019), TrainConfig's defaults.
FULL = {"model": "conv2", "train_limit": 5000, "val_size": 1000, "test_limit": 1000, "steps": 200,
        "eval_every": 25}  # fmt: skip
QUICK = {"model": "lenet_300_100", "train_limit": 600, "val_size": 200, "test_limit": 500,
         "steps": 40, "eval_every": 20}  # fmt: skip
SEARCH = Path("checkpoints/conv_tickets/rewind_10/seed=0")
TICKETS = "0=checkpoints/conv_tickets/reset_init,10=checkpoints/conv_tickets/rewind_10"
METRIC = "test_acc_best_val_pct"  # early stopping at min. validation loss (Frankle & Carbin 2019)
NETWORKS = ("dense", "subnetwork")


def config(
    quick: bool = False, data_root: str | None = None, test_limit: int | None = None
) -> TrainConfig:
    """The study's training: the IMP study's Conv-2 settings (`quick`: LeNet-300-100 on slices),
    evaluated on `test_limit` test examples if given (it changes no trained weight)."""
    sizes = {**(QUICK if quick else FULL)}
    if test_limit is not None:
        sizes["test_limit"] = test_limit
    return TrainConfig(
        **sizes,
        dataset="fashion_mnist",
        data_root=data_root,
        init_seed=0,
        data_seed=0,
        split_seed=0,
        device="cpu",
        threads=1,
    )


def check_trained_like(cfg: TrainConfig, search: Path, flag: str, any_seed: bool = False) -> None:
    """Refuse an IMP search whose training differs from `cfg` in anything that changes results
    (with `any_seed`, its init and data-order seeds may differ: a member of `imp --seeds`)."""
    train = TrainConfig.from_dict(read_json(search / layout.IMP_RECORD)["train"])
    if any_seed:
        train = train.replace(init_seed=cfg.init_seed, data_seed=cfg.data_seed)
    ours, theirs = cfg.to_dict(), train.to_dict()
    differ = [k for k in ours if ours[k] != theirs[k] and k not in NON_RESULT_FIELDS]
    if differ:
        raise ConfigError(
            f"{flag} {search} was trained otherwise than this study ({', '.join(differ)} differ); "
            "its masks and tickets would not line up with these runs"
        )


def pick_round(search: Path, density: float) -> tuple[int, Mask]:
    """The pruned round of `search` whose mask keeps the fraction of weights closest to `density`,
    with its mask; refuses a search that is still pruning towards it."""
    masks = {layout.round_number(r): Mask.load(r / layout.MASK) for r in layout.round_dirs(search)}
    masks.pop(0, None)  # round 0 is the dense network
    if not masks:
        raise ConfigError(f"--search {search} holds no pruned round yet")
    planned = read_json(search / layout.IMP_RECORD)["imp"]["rounds"]
    last = max(masks)
    if masks[last].density() > density and last < planned:
        raise ConfigError(
            f"--search {search} has pruned to {100 * masks[last].density():.1f}% of weights "
            f"(round {last} of {planned}); rerun once it passes {100 * density:g}%"
        )
    r = min(masks, key=lambda r: abs(masks[r].density() - density))
    return r, masks[r]


def parse_tickets(text: str) -> dict[int, Path]:
    """`--tickets K=DIR,...`: the `imp --seeds` folder whose tickets were reset to step K."""
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        k, sep, folder = item.partition("=")
        if not sep or not k.strip().isdigit() or not folder.strip():
            raise ConfigError(f"--tickets takes K=DIR,K=DIR,..., got {item!r}")
        out[int(k)] = Path(folder.strip())
    return out


def check_tickets(cfg: TrainConfig, tickets: dict[int, Path], steps: list[int]) -> None:
    """Each ticket folder: at a measured step k, a group of IMP searches trained like `cfg`."""
    for k, folder in tickets.items():
        if k not in steps:
            raise ConfigError(f"--tickets step {k} is not among the start steps {steps}")
        if not folder.is_dir():
            raise ConfigError(f"--tickets {k}={folder} is not a folder")
        kind, group = members(folder)
        if kind != "search":
            raise ConfigError(f"--tickets {k}={folder} holds {kind} runs, not IMP searches")
        check_same_settings(kind, group)
        for member in group.values():
            check_trained_like(cfg, member, f"--tickets {k}=", any_seed=True)


def ticket_accuracy(folder: Path, r: int) -> dict:
    """Test accuracy (%) at the best-validation step of round r's ticket and of the dense network
    (round 0) over the seeds of an `imp --seeds` folder: per seed, n, mean, sample std and 95%
    Student-t interval (n = 0 while no seed has finished the round)."""
    _, group = members(folder)
    frames = {
        label: records.search_rounds(p)
        for label, p in group.items()
        if (p / layout.SUMMARY).exists()
    }

    def at(round_: int, column: str = METRIC) -> dict[str, float]:
        found = {}
        for label, f in frames.items():
            row = f[(f["network"] == "ticket") & (f["round"] == round_)]
            if len(row):
                found[label] = float(row[column].iloc[0])
        return found

    ticket, dense = at(r), at(0)
    remaining = list(at(r, "percent_remaining").values())
    return {
        "folder": str(folder),
        "round": r,
        "percent_remaining": sum(remaining) / len(remaining) if remaining else None,
        "ticket": {"seeds": ticket, **_finite(summarize(list(ticket.values())))},
        "dense": {"seeds": dense, **_finite(summarize(list(dense.values())))},
    }


def _finite(stats: dict) -> dict:
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in stats.items()}


def barrier_text(row: dict) -> str:
    """A sweep row's barrier in %: mean ± std [95% CI] over its pairs (the mean alone for one)."""
    stats = {"mean": row["barrier"], "std": row["barrier_std"]}
    stats.update(ci95_low=row["barrier_ci95_low"], ci95_high=row["barrier_ci95_high"])
    return stat_text(stats, scale=100)


def accuracy_text(stats: dict) -> str:
    """Accuracy (%) over seeds: mean ± std [95% CI] (n=N); '-' with no seed."""
    if not stats["n"]:
        return "-"
    return f"{stat_text(stats)} (n={stats['n']})"


def table(results: dict) -> str:
    """Markdown: per start step, both barriers, both mean endpoint gaps and the tickets' accuracy."""
    sub = results["settings"]["subnetwork"]
    rows = {name: {r["step"]: r for r in results[name]["rows"]} for name in NETWORKS}
    lines = [
        f"Barrier and gap in % test error, mean ± std [95% CI] over {results['settings']['pairs']}"
        f" pairs of data orders; subnetwork: round {sub['round']} of {sub['search']} "
        f"({100 * sub['density']:.1f}% of weights); accuracy: test accuracy (%) at the "
        "best-validation step over seeds.",
        "",
        "| k | dense barrier | subnetwork barrier | dense mean abs endpoint gap "
        "| subnetwork mean abs endpoint gap | ticket accuracy at k | dense accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in results["settings"]["steps"]:
        ticket = results["tickets"].get(str(k))
        lines.append(
            f"| {k} | {barrier_text(rows['dense'][k])} | {barrier_text(rows['subnetwork'][k])} "
            f"| {100 * rows['dense'][k]['endpoint_gap']:.2f} "
            f"| {100 * rows['subnetwork'][k]['endpoint_gap']:.2f} "
            f"| {accuracy_text(ticket['ticket']) if ticket else '-'} "
            f"| {accuracy_text(ticket['dense']) if ticket else '-'} |"
        )
    return "\n".join(lines)


def figure(results: dict) -> Figure:
    """Barrier vs k for both networks (dots: pairs, bars: ± std); beside it, where tickets are
    known, the ticket's accuracy at k (dots: seeds, bars: ± std) and the dense accuracy's band."""
    steps = results["settings"]["steps"]
    density = 100 * results["settings"]["subnetwork"]["density"]
    series = {
        "dense": results["dense"]["rows"],
        f"IMP subnetwork ({density:.1f}%)": results["subnetwork"]["rows"],
    }
    known = {int(k): t for k, t in results["tickets"].items() if t["ticket"]["n"]}
    with plots.style():
        fig, axes = plots.new_figure(2 if known else 1, size=(5.6, 4.2))
        plots.draw_barriers(axes[0], series, steps)
        axes[0].legend(title="network", frameon=False)
        axes[0].set_title("Error barrier (bars: ± std; dashed: 2% threshold)")
        if known:
            ax = axes[1]
            where = {s: i for i, s in enumerate(steps)}
            for k, t in known.items():
                s, values = t["ticket"], list(t["ticket"]["seeds"].values())
                ax.scatter([where[k]] * len(values), values, s=20, color="C1", alpha=0.6, lw=0)
                ax.errorbar([where[k]], [s["mean"]], yerr=[s["std"] or 0.0], fmt="o", color="C1",
                            capsize=3, label="IMP ticket" if k == min(known) else None)  # fmt: skip
            dense = known[min(known)]["dense"]
            ax.axhline(dense["mean"], color="C0", lw=1, label="dense (round 0)")
            if dense["std"] is not None:
                low, high = dense["mean"] - dense["std"], dense["mean"] + dense["std"]
                ax.axhspan(low, high, color="C0", alpha=0.15, lw=0)
            ax.set_xticks(range(len(steps)), [str(s) for s in steps])
            ax.set_xlim(axes[0].get_xlim())
            ax.set_xlabel("reset (rewind) step k, iterations (evenly spaced)")
            ax.set_ylabel(f"test accuracy {plots.BEST_VAL} (%)")
            ax.set_title(f"Tickets at {density:.1f}% of weights (bars, band: ± std)")
            ax.legend(frameon=False)
        fig.suptitle("Instability and ticket accuracy vs step k (over seeds and pairs)")
    return fig


def study(args: argparse.Namespace) -> dict:
    """Validate everything, then the dense run, both sweeps and the tickets' accuracy."""
    cfg = config(args.quick, args.data_root, args.test_limit)
    steps = sorted(set(args.steps))
    if not steps or not all(0 <= k < cfg.steps for k in steps):
        raise ConfigError(f"start steps must lie in [0, {cfg.steps}), got {args.steps}")
    pairs = default_pairs(cfg.data_seed, args.pairs)
    if not 0 < args.density < 1:
        raise ConfigError(f"--density must lie in (0, 1), got {args.density}")
    if args.points < MIN_POINTS:
        raise ConfigError(f"--points must be >= {MIN_POINTS}, got {args.points}")
    if not args.dense_only:
        if not layout.is_search(args.search):
            raise ConfigError(
                f"--search {args.search} is not an IMP search (no {layout.IMP_RECORD})"
            )
        check_trained_like(cfg, args.search, "--search")
        r, mask = pick_round(args.search, args.density)
        tickets = parse_tickets(args.tickets)
        check_tickets(cfg, tickets, steps)
    check_writable(args.out, "--out")
    progress = not args.no_progress
    dense_run = args.out / layout.DENSE  # the one dense run both studies start from
    train_dense(cfg, steps, dense_run, progress=progress)
    masks = (
        [None] if args.dense_only else [None, str(layout.round_dir(args.search, r) / layout.MASK)]
    )
    sweep = Sweep(
        "instability",
        {"dense": str(dense_run), "start_steps": steps, "pairs": len(pairs), "points": args.points},
        {"mask": masks},
    )
    result = run_sweep(sweep, args.out / "instability", args.executor,
                       SweepOptions(workers=args.workers), progress=progress).require_complete()  # fmt: skip
    sweeps = {
        name: read_json(args.out / "instability" / point.name / layout.INSTABILITY)
        for name, point in zip(NETWORKS, result.points, strict=False)
    }
    if args.dense_only:
        return sweeps
    results = {
        "settings": {
            "config": cfg.to_dict(),
            "steps": steps,
            "pairs": len(pairs),
            "seed_pairs": [list(p) for p in pairs],
            "points": args.points,
            "subnetwork": {
                "search": str(args.search),
                "round": r,
                "density": mask.density(),
                "target_density": args.density,
            },
            "tickets": {str(k): str(p) for k, p in tickets.items()},
        },
        **sweeps,
        "tickets": {str(k): ticket_accuracy(p, r) for k, p in sorted(tickets.items())},
    }
    with hold(args.out):
        write_json(results, args.out / "results.json")
        write_bytes_atomic((table(results) + "\n").encode(), args.out / "table.md")
        plots.save(figure(results), args.out / "stability.png")
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    p.add_argument(
        "--out", type=Path, default=Path("checkpoints/stability"), help="results (rerun resumes)"
    )
    p.add_argument("--search", type=Path, default=SEARCH, help="IMP search giving the mask")
    p.add_argument("--density", type=float, default=0.2, help="target fraction of weights kept")
    p.add_argument("--tickets", default=TICKETS, help="K=DIR,...: imp --seeds folders by reset k")
    p.add_argument(
        "--steps", type=parse_ints, default=None, help="start steps k (default 0,10,25,50)"
    )
    p.add_argument("--pairs", type=int, default=None, help="pairs of data orders per k (default 3)")
    p.add_argument("--points", type=int, default=MIN_POINTS, help="evaluation points on a path")
    p.add_argument(
        "--test-limit",
        type=int,
        default=None,
        help=f"test examples (default {FULL['test_limit']}; must equal the IMP study's)",
    )
    p.add_argument(
        "--dense-only",
        action="store_true",
        help="train the dense run and its sweep only (while the search is still pruning)",
    )
    p.add_argument("--data-root", default=None)
    p.add_argument("--executor", choices=EXECUTORS, default="local")
    p.add_argument("--workers", type=int, default=None, help="local: instability runs at once")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: LeNet-300-100 on small slices, 40 steps, default k = 0,10,20 and 2 "
        "pairs (--search and --tickets must then name searches of that training)",
    )
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = [0, 10, 20] if args.quick else [0, 10, 25, 50]
    if args.pairs is None:
        args.pairs = 2 if args.quick else 3
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the study; bad input prints one line and exits 2, as the `lottery` commands do."""
    args = parse_args(argv)
    try:
        results = study(args)
    except (ConfigError, FolderInUseError) as e:
        print(f"stability: error: {e}", file=sys.stderr)
        return 2
    except IncompleteSweep as e:  # a run failed: its log is named
        print(e, file=sys.stderr)
        return EXIT_INCOMPLETE
    if args.dense_only:
        print(f"dense study: {args.out / 'instability' / 'mask=None'}; rerun without --dense-only")
        return 0
    print(table(results))
    print(f"\nresults: {args.out / 'results.json'}; table.md; figure: stability.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
