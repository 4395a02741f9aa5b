"""What does each ticket cost? Accuracy against training compute on LeNet-300-100.

At 60%, 84% and 93.6% sparsity, three seeds each, on Fashion-MNIST: IMP with rewinding (all its
rounds are paid for), early-bird IMP (round 0 stopped where its ticket is drawn; You et al., ICLR
2020), SynFlow at init (Tanaka et al., NeurIPS 2020; one training run), and gradual magnitude
pruning during one training run under AGP (Zhu & Gupta 2017) and one-cycle (Hubens et al., ICIP
2022) schedules over the first 75% of it; all global, all for the same epochs per training run. The training MACs are each
run's compute ledger (effective: pruned weights cost nothing), summed over what a method trains to
reach a network. Writes results.json, table.md and compute_ledger.png.

    python -m experiments.compute_ledger --device cpu --out checkpoints/tickets    # docs, 13 min
"""

from __future__ import annotations

import sys
import time

from experiments import ticket_sweeps as shared
from lottery import (
    EXIT_INCOMPLETE,
    IncompleteSweep,
    Sweep,
    compute_ledger,
    ledger_summary,
    plots,
)

MODEL = "lenet_300_100"
SCHEDULES = ("agp", "one-cycle")
UPDATES = 20  # gradual mask updates over the pruning window
WINDOW_END = 0.75  # the last quarter of training recovers from the last update (Zhu & Gupta 2017)


def sweeps(args) -> dict[str, Sweep]:
    """The study's sweeps besides the two IMP searches (`ticket_sweeps.imp_sweep`)."""
    train = shared.train_settings(MODEL, args)
    sparsities = list(shared.SPARSITIES)
    total = shared.total_steps(MODEL, args)
    return {
        "at_init": Sweep(
            "at-init",
            {**train, "allocation": "global", "sparsities": sparsities, "controls": ["none"]},
            {"criterion": ["synflow"]},
        ),
        "gradual": Sweep(
            "prune",
            {
                **train,
                "scope": "global",
                "end": WINDOW_END,
                "update_every": max(1, round(WINDOW_END * total / UPDATES)),
            },  # fmt: skip
            {"schedule": list(SCHEDULES), "final_sparsity": sparsities},
        ),
    }


def markdown(table) -> str:
    """Test accuracy (%) at the best validation step and training GMACs (10^9 MACs), mean ± std
    over seeds, per method and sparsity."""
    lines = ["| method | sparsity | test acc % | training GMACs | × dense cost |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in table.to_dict("records"):
        acc = f"{100 * r['test_accuracy']:.2f} ± {100 * r['test_accuracy_std']:.2f}"
        macs = f"{r['train_macs'] / 1e9:.1f} ± {r['train_macs_std'] / 1e9:.1f}"
        lines.append(f"| {r['method']} | {100 * r['sparsity']:.1f}% | {acc} | {macs} | "
                     f"{r['train_macs'] / r['train_macs_dense']:.2f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = shared.parser(__doc__.splitlines()[0]).parse_args(argv)
    t0 = time.perf_counter()
    root = args.out / MODEL
    try:
        shared.run(shared.imp_sweep(MODEL, args, (False, True)), root / "imp", args)
        for name, sweep in sweeps(args).items():
            shared.run(sweep, root / name, args)
    except IncompleteSweep as e:
        print(e, file=sys.stderr)
        return EXIT_INCOMPLETE
    frame = compute_ledger(root)
    table = ledger_summary(frame)
    md = markdown(table)
    seconds = time.perf_counter() - t0
    out = shared.publish(args, "compute_ledger", md, seconds, {"rows": table.to_dict("records")})
    frame.to_csv(out / "ledger.csv", index=False)
    fig = plots.accuracy_vs_compute(
        table.to_dict("records"), "LeNet-300-100 on Fashion-MNIST: accuracy vs training compute"
    )
    plots.save(fig, out / "compute_ledger.png")
    print(f"{seconds:.0f} s; results: {out / 'results.json'}; figure: compute_ledger.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
