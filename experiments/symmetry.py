"""Are two seeds' tickets the same up to a permutation of hidden units?

For LeNet-300-100 and Conv-2 on Fashion-MNIST, three seeds' IMP searches (`ticket_sweeps`), and at
each sparsity every pair of seeds: the masks' Jaccard index before and after aligning the second
network's units to the first's by weight matching (Ainsworth et al., ICLR 2023), beside the Jaccard
that independent random masks of the same per-layer densities would have (which the permutation
does not change), and the error barrier on the straight line between the two trained tickets,
before and after alignment (the permutation conjecture, Entezari et al., ICLR 2022). Round 0 (the
dense networks) shows the barrier without pruning. Writes results.json, table.md and symmetry.png.

    python -m experiments.symmetry --device cpu --out checkpoints/tickets    # docs, 9 min
"""

from __future__ import annotations

import itertools
import sys
import time

from experiments import ticket_sweeps as shared
from lottery import (
    EXIT_INCOMPLETE,
    IncompleteSweep,
    align_networks,
    compare_masks,
    error_barrier,
    error_curve,
    layout,
    load_data,
    load_network,
    permute,
    permute_mask,
    stat_text,
    summarize,
)

MODELS = ("lenet_300_100", "conv2")


def pair_rows(model: str, args, r: int) -> list[dict]:
    """Every pair of seeds' round-r tickets: Jaccard and barrier before and after alignment."""
    search = shared.search_folder(args, model, early_bird=False)
    nets = [load_network(layout.round_dir(layout.seed_dir(search, s), r)) for s in shared.SEEDS]
    data = load_data(shared.config(model, args))
    rows = []
    for (i, a), (j, b) in itertools.combinations(enumerate(nets), 2):
        spec, alignment = align_networks(a, b)
        a_state, b_state = a.model.state_dict(), b.model.state_dict()
        aligned = permute(b_state, spec, alignment.perms)
        net = a.model.to(data.test_x.device)
        before = error_curve(net, a_state, b_state, data)["test_error"]
        after = error_curve(net, a_state, aligned, data)["test_error"]
        row = {"seeds": [shared.SEEDS[i], shared.SEEDS[j]], "barrier": error_barrier(before),
               "aligned_barrier": error_barrier(after), "passes": alignment.passes}  # fmt: skip
        if r > 0:
            plain = compare_masks(a.mask, b.mask).overall
            moved = compare_masks(a.mask, permute_mask(b.mask, spec, alignment.perms)).overall
            row |= {"jaccard": plain.jaccard, "aligned_jaccard": moved.jaccard,
                    "chance_jaccard": plain.expected_jaccard,
                    "aligned_log10_p": moved.log10_p_value}  # fmt: skip
        rows.append(row)
    return rows


def study(model: str, args) -> dict[str, list[dict]]:
    """Run (or resume) the model's searches; per round, the pairs' measurements."""
    shared.run(shared.imp_sweep(model, args, (False,)), args.out / model / "imp", args)
    return {str(r): pair_rows(model, args, r) for r in range(shared.ROUNDS + 1)}


COLUMNS = (("jaccard", "Jaccard"), ("aligned_jaccard", "Jaccard aligned"),
           ("chance_jaccard", "chance"), ("barrier", "barrier %"),
           ("aligned_barrier", "barrier aligned %"))  # fmt: skip


def markdown(model: str, rounds: dict[str, list[dict]]) -> str:
    """Mean ± std [95% CI] over the three pairs of seeds, one row per sparsity."""
    lines = [f"| **{model}** sparsity | " + " | ".join(h for _, h in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 1) + "|"]  # fmt: skip
    for r, rows in rounds.items():
        sparsity = 0.0 if r == "0" else shared.SPARSITIES[int(r) - 1]
        cells = []
        for key, _ in COLUMNS:
            scale = 100 if "barrier" in key else 1
            values = [scale * row[key] for row in rows if key in row]
            cells.append(stat_text(summarize(values), digits=2 if scale == 100 else 4)
                         if values else "-")  # fmt: skip
        lines.append(f"| {100 * sparsity:.1f}% | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(results: dict, path) -> None:
    """Per model: Jaccard (plain, aligned, chance) and barrier (plain, aligned) vs sparsity."""
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(10, 3.8 * len(results)), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(results), 2, squeeze=False)
        for (jac, bar), (model, rounds) in zip(axes, results.items(), strict=True):
            x = [0.0, *(100 * s for s in shared.SPARSITIES)]
            for key, label in COLUMNS:
                ax = bar if "barrier" in key else jac
                scale = 100 if "barrier" in key else 1
                points = [(xi, [scale * row[key] for row in rows]) for xi, rows in
                          zip(x, rounds.values(), strict=True) if key in rows[0]]  # fmt: skip
                stats = [summarize(v) for _, v in points]
                ax.errorbar([p for p, _ in points], [s["mean"] for s in stats],
                            yerr=[0 if s["std"] != s["std"] else s["std"] for s in stats],
                            marker="o", capsize=3, label=label)  # fmt: skip
            jac.set_title(f"{model}: mask overlap of two seeds")
            bar.set_title(f"{model}: error barrier between two seeds")
            jac.set_ylabel("Jaccard index")
            bar.set_ylabel("error barrier (% test error)")
            for ax in (jac, bar):
                ax.set_xlabel("sparsity (%)")
                ax.legend(fontsize=8)
    fig.savefig(path, dpi=150)


def main(argv: list[str] | None = None) -> int:
    args = shared.parser(__doc__.splitlines()[0]).parse_args(argv)
    t0 = time.perf_counter()
    try:
        results = {model: study(model, args) for model in MODELS}
    except IncompleteSweep as e:
        print(e, file=sys.stderr)
        return EXIT_INCOMPLETE
    md = "\n\n".join(markdown(m, rounds) for m, rounds in results.items())
    seconds = time.perf_counter() - t0
    out = shared.publish(args, "symmetry", md, seconds,
                         {"sparsities": shared.SPARSITIES, **results})  # fmt: skip
    figure(results, out / "symmetry.png")
    print(f"{seconds:.0f} s; results: {out / 'results.json'}; figure: {out / 'symmetry.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
