"""When is the ticket drawn? Early-bird tickets against full IMP on LeNet-300-100.

Three seeds' IMP searches (`ticket_sweeps`: 60% per round, global, rewinding to 1% of training)
run twice: with the dense round 0 trained in full, and stopped where the mask that round 1 would
prune stops changing (You et al., ICLR 2020: the last five normalised Hamming distances between
masks checked every 1/160 of training all below 0.1). Later rounds train as usual. Per seed: the
step round 0 stopped at, the tickets' test accuracy at each sparsity, and the training MACs spent
to reach each ticket (the compute ledger). A third search per seed watches the distances over all
of round 0 without stopping (`--eb-threshold 0`), for the figure. Writes results.json, table.md
and early_bird.png.

    python -m experiments.early_bird --device cpu --out checkpoints/tickets    # docs, 6 min
"""

from __future__ import annotations

import sys
import time

from experiments import ticket_sweeps as shared
from lottery import (
    EXIT_INCOMPLETE,
    IncompleteSweep,
    Sweep,
    layout,
    read_json,
    read_jsonl,
    stat_text,
    summarize,
)

MODEL = "lenet_300_100"
LABELS = {False: "IMP (rewind)", True: "early-bird IMP"}


def trace_sweep(args) -> Sweep:
    """One round of the search whose round 0 records its mask distances and never stops."""
    imp = shared.imp_sweep(MODEL, args, (True,)).settings
    return Sweep("imp", {**imp, "rounds": 1, "early_bird": True}, {"eb_threshold": [0.0]})


def traces(args) -> dict[int, list[list[float]]]:
    """Each seed's (step, distance) over the whole of round 0."""
    folder = args.out / "early_bird_trace" / "eb_threshold=0.0"
    return {s: [[m["step"], m["distance"]] for m in
                read_jsonl(layout.ticket_dir(layout.seed_dir(folder, s), 0) / layout.EARLY_BIRD)
                if m["distance"] is not None] for s in shared.SEEDS}  # fmt: skip


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
        rows.append({
            "seed": s,
            "round0_steps": rounds[0]["steps"],
            "total_steps": read_json(ticket / layout.CONFIG)["total_steps"],
            "accuracy": [100 * r["test_accuracy_at_best_val"] for r in rounds[1:]],
            "train_macs": cumulative[1:],
        })  # fmt: skip
    return rows


def markdown(results: dict[bool, list[dict]]) -> str:
    """Mean ± std [95% CI] over seeds: round 0's steps, each sparsity's ticket accuracy and the
    training MACs (x10^9) spent to reach the first and the last ticket."""
    heads = ["round 0 steps", *(f"acc % at {100 * s:.1f}%" for s in shared.SPARSITIES),
             "GMACs to the 60% ticket", "GMACs to the 93.6% ticket"]  # fmt: skip
    lines = ["| | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    for eb, rows in results.items():
        cells = [stat_text(summarize([r["round0_steps"] for r in rows]), digits=0)]
        cells += [stat_text(summarize([r["accuracy"][i] for r in rows]))
                  for i in range(shared.ROUNDS)]  # fmt: skip
        cells += [stat_text(summarize([r["train_macs"][i] / 1e9 for r in rows]), digits=1)
                  for i in (0, -1)]  # fmt: skip
        lines.append(f"| {LABELS[eb]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(results: dict[bool, list[dict]], watched: dict, path) -> None:
    """Left: each seed's mask distance over all of round 0, the threshold and where the early-bird
    search stopped; right: ticket accuracy against the training MACs spent to reach it."""
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(11, 4.2), layout="constrained")
        FigureCanvasAgg(fig)
        left, right = fig.subplots(1, 2)
        for seed, trace in watched.items():
            steps, distances = zip(*trace, strict=True)
            left.plot(steps, distances, lw=1, label=f"seed {seed}")
        left.axhline(0.1, ls="--", c="grey", lw=1, label="threshold 0.1")
        for stop in sorted({r["round0_steps"] for r in results[True]}):
            left.axvline(stop, c="C3", lw=1, label=f"early-bird stop (step {stop})")
        left.set_yscale("log")
        left.set_xlabel("round-0 training step")
        left.set_ylabel("normalised Hamming distance to the previous mask")
        left.set_title("Round 0: how much the 60% mask changes between checks")
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
        shared.run(trace_sweep(args), args.out / "early_bird_trace", args)
    except IncompleteSweep as e:
        print(e, file=sys.stderr)
        return EXIT_INCOMPLETE
    results = {eb: seed_rows(args, eb) for eb in (False, True)}
    watched = traces(args)
    md = markdown(results)
    seconds = time.perf_counter() - t0
    out = shared.publish(args, "early_bird", md, seconds, {
        "sparsities": shared.SPARSITIES, **{LABELS[eb]: rows for eb, rows in results.items()},
        "distances": watched})  # fmt: skip
    figure(results, watched, out / "early_bird.png")
    print(f"{seconds:.0f} s; results: {out / 'results.json'}; figure: {out / 'early_bird.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
