"""When is the ticket drawn? Early-bird tickets against full IMP on LeNet-300-100.

Three seeds' IMP searches (`ticket_sweeps`: 60% per round, global, rewinding to 1% of training)
run twice: with the dense round 0 trained in full, and stopped where the mask that round 1 would
prune stops changing (You et al., ICLR 2020: the last five normalised Hamming distances between
masks checked every 1/160 of training all below 0.1). Later rounds train as usual. Per seed: the
step round 0 stopped at, the tickets' test accuracy at each sparsity, and the training MACs spent
to reach each ticket (the compute ledger). Writes results.json, table.md and early_bird.png.

    python -m experiments.early_bird --device cpu --out checkpoints/tickets    # docs, 6 min
"""

from __future__ import annotations

import sys
import time

from experiments import ticket_sweeps as shared
from lottery import (
    EXIT_INCOMPLETE,
    IncompleteSweep,
    layout,
    read_json,
    read_jsonl,
    stat_text,
    summarize,
    write_json,
)

MODEL = "lenet_300_100"
LABELS = {False: "IMP (rewind)", True: "early-bird IMP"}


def seed_rows(args, early_bird: bool) -> list[dict]:
    """Per seed: round 0's steps (of its planned total), and per round the ticket's accuracy at
    the best validation step and the training MACs spent by the search up to it."""
    rows = []
    for s in shared.SEEDS:
        search = layout.seed_dir(shared.search_folder(args, MODEL, early_bird), s)
        rounds = read_json(search / layout.SUMMARY)["rounds"]
        ticket = layout.ticket_dir(search, 0)
        spent, cumulative = 0, []
        for r in rounds:
            spent += r["compute"]["train_macs"]
            cumulative.append(spent)
        marks = read_jsonl(ticket / layout.EARLY_BIRD) if early_bird else []
        rows.append({
            "seed": s,
            "round0_steps": rounds[0]["steps"],
            "total_steps": read_json(ticket / layout.CONFIG)["total_steps"],
            "accuracy": [100 * r["test_accuracy_at_best_val"] for r in rounds[1:]],
            "train_macs": cumulative[1:],
            "distances": [[m["step"], m["distance"]] for m in marks if m["distance"] is not None],
        })  # fmt: skip
    return rows


def markdown(results: dict[bool, list[dict]]) -> str:
    """Mean ± std [95% CI] over seeds: round 0's steps, each sparsity's ticket accuracy and the
    training MACs (x10^12) spent to reach the first ticket."""
    heads = ["round 0 steps", *(f"acc % at {100 * s:.1f}%" for s in shared.SPARSITIES),
             "TMACs to the 60% ticket"]  # fmt: skip
    lines = ["| | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    for eb, rows in results.items():
        cells = [stat_text(summarize([r["round0_steps"] for r in rows]), digits=0)]
        cells += [stat_text(summarize([r["accuracy"][i] for r in rows]))
                  for i in range(shared.ROUNDS)]  # fmt: skip
        cells.append(stat_text(summarize([r["train_macs"][0] / 1e12 for r in rows]), digits=3))
        lines.append(f"| {LABELS[eb]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(results: dict[bool, list[dict]], path) -> None:
    """Left: each seed's mask distance during round 0 with the threshold; right: ticket accuracy
    against the training MACs spent to reach it, both searches."""
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(11, 4.2), layout="constrained")
        FigureCanvasAgg(fig)
        left, right = fig.subplots(1, 2)
        for r in results[True]:
            steps, distances = zip(*r["distances"], strict=True)
            left.plot(
                steps, distances, lw=1, label=f"seed {r['seed']} (stops at {r['round0_steps']})"
            )
        left.axhline(0.1, ls="--", c="grey", lw=1, label="threshold 0.1")
        left.set_yscale("log")
        left.set_xlabel("round-0 training step")
        left.set_ylabel("normalised Hamming distance to the previous mask")
        left.set_title("Early-bird: when the 60% mask stops changing")
        left.legend(fontsize=8)
        for eb, rows in results.items():
            macs = [
                summarize([r["train_macs"][i] for r in rows])["mean"] for i in range(shared.ROUNDS)
            ]
            acc = [summarize([r["accuracy"][i] for r in rows]) for i in range(shared.ROUNDS)]
            right.errorbar(macs, [a["mean"] for a in acc], yerr=[a["std"] for a in acc],
                           marker="o", capsize=3, label=LABELS[eb])  # fmt: skip
            for x, y, s in zip(macs, [a["mean"] for a in acc], shared.SPARSITIES, strict=True):
                right.annotate(f"{100 * s:.1f}%", (x, y), textcoords="offset points", xytext=(4, 4),
                               fontsize=7)  # fmt: skip
        right.set_xscale("log")
        right.set_xlabel("training MACs spent to reach the ticket")
        right.set_ylabel("test accuracy (%) at best validation")
        right.set_title("Tickets by the compute spent (mean ± std, 3 seeds)")
        right.legend(fontsize=8)
    fig.savefig(path, dpi=150)


def main(argv: list[str] | None = None) -> int:
    args = shared.parser(__doc__.splitlines()[0]).parse_args(argv)
    t0 = time.perf_counter()
    try:
        shared.run(shared.imp_sweep(MODEL, args, (False, True)), args.out / MODEL / "imp", args)
    except IncompleteSweep as e:
        print(e, file=sys.stderr)
        return EXIT_INCOMPLETE
    results = {eb: seed_rows(args, eb) for eb in (False, True)}
    md = markdown(results)
    seconds = time.perf_counter() - t0
    out = args.out / "early_bird"
    write_json({"settings": {**vars(args), "out": str(args.out)}, "seconds": seconds,
                "sparsities": shared.SPARSITIES,
                **{LABELS[eb]: rows for eb, rows in results.items()}}, out / "results.json")  # fmt: skip
    (out / "table.md").write_text(md + "\n")
    figure(results, out / "early_bird.png")
    print(md)
    print(f"{seconds:.0f} s; results: {out / 'results.json'}; figure: {out / 'early_bird.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
