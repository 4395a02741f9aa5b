"""Figures of the analyses: one function per figure, each returning a matplotlib `Figure`.

All figures share one seaborn style, title every axis with its unit, and give densities as % of
weights remaining and accuracies in %. They are drawn on Agg canvases (no pyplot state), so they
work headless, a notebook can restyle them, and `save` writes them as PNG, PDF or SVG.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

FORMATS = ("png", "pdf", "svg")
BEST_VAL = "at min. validation loss"  # the early-stopping criterion of Frankle & Carbin (2019)
ACCURACY = {
    "test_acc_pct": "test accuracy, end of training (%)",
    "test_acc_best_val_pct": f"test accuracy {BEST_VAL} (%)",
    "best_val_step": "early-stopping step (minimum validation loss)",
}


@contextmanager
def style() -> Iterator[None]:
    """The one style of every figure (seaborn whitegrid, notebook context)."""
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
        yield


def new_figure(ncols: int = 1, size: tuple[float, float] = (6.0, 4.2)) -> tuple[Figure, list]:
    """A constrained-layout Figure on an Agg canvas with `ncols` axes side by side."""
    fig = Figure(figsize=(size[0] * ncols, size[1]), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def save(fig: Figure, path: str | Path, fmt: str | None = None) -> Path:
    """Write `fig` to `path` (its suffix replaced by `fmt` if given), folders created."""
    path = Path(path)
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        path = path.with_suffix(f".{fmt}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    return path


def _palette(labels: list[str]) -> dict[str, tuple]:
    return dict(zip(labels, sns.color_palette(n_colors=max(1, len(labels))), strict=False))


def _percent_axis(ax: Axes, values: list[float]) -> None:
    """% weights remaining on a log axis, dense on the left as in Frankle & Carbin (2019);
    ticks at (up to 10 of) the plotted densities, labelled plainly."""
    ax.set_xscale("log")
    ticks = sorted(set(round(v, 6) for v in values), reverse=True)
    ticks = ticks[:: max(1, -(-len(ticks) // 10))]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    if not ax.xaxis_inverted():
        ax.invert_xaxis()
    ax.set_xlabel("weights remaining (%, log scale)")


def _legend(ax: Axes, title: str) -> None:
    ax.legend(title=title, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def accuracy_vs_density(
    stats: list[dict],
    metrics: tuple[str, ...] = ("test_acc_pct", "test_acc_best_val_pct"),
    title: str = "Test accuracy vs weights remaining",
    legend: str = "network",
) -> Figure:
    """One panel per accuracy metric, one line per network: the mean against % remaining, with
    its 95% interval as a band where there are several seeds.

    `stats` rows: network, metric, mean, ci95_low, ci95_high and `percent_remaining` (the
    output of `lottery.analysis.aggregate.aggregate` joined with the mean density, or one seed's rows).
    """
    labels = sorted(dict.fromkeys(r["network"] for r in stats), key=lambda n: n != "ticket")
    colors = _palette(labels)
    with style():
        fig, axes = new_figure(len(metrics), size=(5.2, 4.2))
        for ax, metric in zip(axes, metrics, strict=True):
            for label in labels:
                rows = [r for r in stats if r["network"] == label and r["metric"] == metric]
                rows.sort(key=lambda r: -r["percent_remaining"])
                x = [r["percent_remaining"] for r in rows]
                ax.plot(x, [r["mean"] for r in rows], marker="o", ms=4, label=label,
                        color=colors[label])  # fmt: skip
                low = np.array([r["ci95_low"] for r in rows], dtype=float)
                if np.isfinite(low).any():
                    high = np.array([r["ci95_high"] for r in rows], dtype=float)
                    ax.fill_between(x, low, high, alpha=0.2, color=colors[label], lw=0)
            _percent_axis(ax, [r["percent_remaining"] for r in stats])
            ax.set_ylabel(ACCURACY.get(metric, metric))
            ax.set_title(
                title if len(metrics) == 1 else ACCURACY.get(metric, metric).split(" (")[0]
            )
        _legend(axes[-1], legend)
        several = any(np.isfinite(float(r["ci95_low"])) for r in stats)
        if len(metrics) > 1:
            fig.suptitle(title + (" (mean, 95% CI band over seeds)" if several else ""))
    return fig


def training_curves(runs: dict[str, list[dict]], title: str = "Training curves") -> Figure:
    """Accuracy (%) and loss against training step for each run, from `records.metric_rows`:
    solid validation, dashed test (accuracy), dotted training loss."""
    colors = _palette(list(runs))
    with style():
        fig, (acc, loss) = new_figure(2, size=(5.0, 4.0))
        for label, rows in runs.items():
            step = [r["step"] for r in rows]
            c = colors[label]
            acc.plot(step, [r["val_acc_pct"] for r in rows], color=c, label=label)
            acc.plot(step, [r["test_acc_pct"] for r in rows], color=c, ls="--")
            loss.plot(step, [r["val_loss"] for r in rows], color=c, label=label)
            loss.plot(step, [r["test_loss"] for r in rows], color=c, ls="--")
            train = [
                (s, r["train_loss"])
                for s, r in zip(step, rows, strict=True)
                if r["train_loss"] is not None
            ]
            if train:
                loss.plot(*zip(*train, strict=True), color=c, ls=":")
        acc.set_title("Accuracy (solid: validation, dashed: test)")
        acc.set_ylabel("accuracy (%)")
        loss.set_title("Cross-entropy (solid: val., dashed: test, dotted: train)")
        loss.set_ylabel("loss (nats per example)")
        for ax in (acc, loss):
            ax.set_xlabel("training step (iterations)")
        if len(runs) > 1:
            _legend(loss, "run")
        fig.suptitle(title)
    return fig


def schedules(runs: dict[str, list[dict]], title: str = "Schedules during training") -> Figure:
    """Learning rate and % weights remaining against step (`records.schedule_rows`: step, lr,
    density), both from zero so a constant schedule reads as flat rather than as noise on a
    zoomed axis."""
    colors = _palette(list(runs))
    with style():
        fig, (lr, dens) = new_figure(2, size=(5.0, 4.0))
        for label, rows in runs.items():
            step = [r["step"] for r in rows]
            lr.plot(step, [r["lr"] for r in rows], color=colors[label], drawstyle="steps-post")
            dens.plot(step, [100 * r["density"] for r in rows], color=colors[label],
                      drawstyle="steps-post", label=label)  # fmt: skip
        top = max((r["lr"] for rows in runs.values() for r in rows), default=1.0)
        lr.set_ylim(0, 1.1 * top)
        lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        lr.set_title("Learning rate")
        lr.set_ylabel("learning rate")
        dens.set_ylim(0, 105)
        dens.set_title("Weights remaining")
        dens.set_ylabel("weights remaining (%)")
        for ax in (lr, dens):
            ax.set_xlabel("training step (iterations)")
        if len(runs) > 1:
            _legend(dens, "run")
        fig.suptitle(title)
    return fig


def layer_density(densities: dict[str, dict[str, float]], title: str | None = None) -> Figure:
    """Grouped bars of each layer's % weights remaining (log axis), one group per mask (IMP
    round), so layers with equal densities stay visible side by side."""
    groups = list(densities)
    layers = list(dict.fromkeys(n for d in densities.values() for n in d))
    colors = _palette(layers)
    width = 0.8 / max(1, len(layers))
    with style():
        fig, (ax,) = new_figure(size=(max(5.0, 1.1 * len(groups) + 3.0), 4.2))
        for j, layer in enumerate(layers):
            x = [i + (j - (len(layers) - 1) / 2) * width for i in range(len(groups))]
            ax.bar(x, [100 * densities[g].get(layer, np.nan) for g in groups], width,
                   color=colors[layer], label=layer)  # fmt: skip
        ax.set_yscale("log")
        low = min(100 * d for dd in densities.values() for d in dd.values() if d > 0)
        steps = [m * 10.0**e for e in (-2, -1, 0, 1) for m in (1, 2, 3, 5, 7)] + [100.0]
        ticks = [t for t in steps if t >= low / 1.5]
        ax.set_ylim(min(ticks) / 1.2, 130)
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(range(len(groups)), groups)
        ax.set_ylabel("weights remaining in layer (%, log scale)")
        ax.set_xlabel("mask" if len(groups) == 1 else "IMP round")
        _legend(ax, "layer")
        ax.set_title(title or ("Per-layer density" if len(groups) == 1 else
                               "Per-layer density by round"))  # fmt: skip
    return fig


def _short_labels(labels: list[str]) -> list[str]:
    """Labels without their common path prefix and suffix (full paths squeeze a heatmap)."""
    parts = [label.split("/") for label in labels]
    if len(labels) < 2:
        return [p[-1] for p in parts]
    while all(len(p) > 1 for p in parts) and len({p[0] for p in parts}) == 1:
        parts = [p[1:] for p in parts]
    while all(len(p) > 1 for p in parts) and len({p[-1] for p in parts}) == 1:
        parts = [p[:-1] for p in parts]
    return ["/".join(p) for p in parts]


def overlap_heatmap(
    labels: list[str],
    values: np.ndarray,
    chance: np.ndarray | None = None,
    title: str = "Mask overlap (Jaccard)",
) -> Figure:
    """Pairwise overlap matrix; with `chance` (same shape, e.g. expected Jaccard of random masks)
    each cell also shows chance in brackets (up to 8 masks), and the colour bar marks the chance
    level, or its lowest and highest where pairs differ (masks of different densities)."""
    n = len(labels)
    short = _short_labels(labels)
    cell = 0.9 if n <= 8 else max(0.32, 6.0 / n)
    annotate = n <= 20
    text = np.full(values.shape, "", dtype=object)
    if annotate:
        for i in range(n):
            for j in range(n):
                t = f"{values[i, j]:.2f}" if n > 8 else f"{values[i, j]:.3f}"
                if chance is not None and i != j and n <= 8 and np.isfinite(chance[i, j]):
                    t += f"\n({chance[i, j]:.3f})"
                text[i, j] = t
    off = chance[~np.eye(n, dtype=bool)] if chance is not None else np.array([])
    off = off[np.isfinite(off)]
    levels = sorted({round(float(off.min()), 3), round(float(off.max()), 3)}) if off.size else []
    label = "Jaccard |A∩B| / |A∪B|"
    if levels:
        label += "\n(dashed: chance" + (", lowest and highest pair)" if len(levels) > 1 else ")")
    width = max(len(s) for s in short) * 0.07  # inches for the longest tick label
    side = max(3.6, cell * n + 2.8)
    with style():
        fig, (ax,) = new_figure(size=(side + 1.2 + width, side + width))
        sns.heatmap(
            values, xticklabels=short, yticklabels=short, annot=text if annotate else False,
            fmt="", annot_kws={"fontsize": 9 if n <= 8 else max(5, 11 - n // 3)},
            cmap="viridis", vmin=0.0, vmax=1.0, square=True, ax=ax, cbar_kws={"label": label},
        )  # fmt: skip
        ax.tick_params(axis="x", rotation=45)
        ax.tick_params(axis="y", rotation=0)
        for lab in ax.get_xticklabels():
            lab.set_horizontalalignment("right")
            lab.set_rotation_mode("anchor")
        bar = ax.collections[0].colorbar
        for k, level in enumerate(levels):  # inside the bar, clear of its ticks and label
            bar.ax.axhline(level, color="white", lw=2, ls="--")
            above = k == len(levels) - 1
            bar.ax.text(0.5, level + (0.01 if above else -0.01), f"chance {level:.3f}",
                        rotation=90, ha="center", va="bottom" if above else "top",
                        fontsize=7, color="white")  # fmt: skip
        if levels:
            spread = f"{levels[0]:.3f}" if len(levels) == 1 else f"{levels[0]:.3f}-{levels[1]:.3f}"
            title += f"\nchance {spread}" + (", in brackets per pair" if n <= 8 else "")
        ax.set_title(title)
    return fig


def instability_curves(rows: list[dict], title: str = "Linear interpolation") -> Figure:
    """Test error (%) along the linear path between two copies: one line per pair of copies,
    one colour per start step."""
    colors = _palette(list(dict.fromkeys(f"k={r['step']}" for r in rows)))
    seen: set[str] = set()
    with style():
        fig, (ax,) = new_figure()
        for r in rows:
            label = f"k={r['step']}"
            ax.plot(r["alpha"], [100 * e for e in r["test_error"]], marker=".", color=colors[label],
                    label=None if label in seen else label)  # fmt: skip
            seen.add(label)
        ax.set_xlabel("interpolation α (0: copy A, 1: copy B)")
        ax.set_ylabel("test error (%)")
        _legend(ax, "start step")
        ax.set_title(title)
    return fig


def draw_barriers(ax: Axes, series: dict[str, list[dict]], steps: list[int]) -> bool:
    """On `ax`, per network: the mean error barrier (%) against the start step, placed at the
    index of its step in `steps`; where rows carry pairs (`lottery.studies.instability.step_summary`),
    each pair's barrier as a dot and the sample std over pairs as a bar (networks side by side,
    slightly apart). Returns whether any pairs were drawn."""
    where = {s: i for i, s in enumerate(steps)}
    colors = _palette(list(series))
    drawn = False
    for j, (label, rows) in enumerate(series.items()):
        rows = sorted(rows, key=lambda r: r["step"])
        shift = 0.08 * (j - (len(series) - 1) / 2)
        x = [where[r["step"]] + shift for r in rows]
        c = colors[label]
        ax.plot(x, [100 * r["barrier"] for r in rows], marker="o", label=label, color=c)
        for xi, r in zip(x, rows, strict=True):
            if r.get("pairs"):
                drawn = True
                dots = [100 * p["barrier"] for p in r["pairs"]]
                ax.scatter([xi] * len(dots), dots, s=20, color=c, alpha=0.6, lw=0)
            if r.get("barrier_std") is not None:
                ax.errorbar([xi], [100 * r["barrier"]], yerr=[100 * r["barrier_std"]],
                            fmt="none", ecolor=c, capsize=3, lw=1)  # fmt: skip
    ax.axhline(2.0, ls="--", c="grey", lw=1)  # stability threshold of Frankle et al. 2020
    ax.set_xticks(range(len(steps)), [str(s) for s in steps])
    ax.set_xlabel("start (rewind) step k, iterations (evenly spaced)")
    ax.set_ylabel("error barrier (% test error)")
    ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
    return drawn


def barrier_vs_step(series: dict[str, list[dict]], title: str | None = None) -> Figure:
    """Error barrier (%) against the start step k, one line per network; steps are placed evenly
    (they usually grow geometrically) and labelled with their values (see `draw_barriers`)."""
    steps = sorted({r["step"] for rows in series.values() for r in rows})
    with style():
        fig, (ax,) = new_figure()
        pairs = draw_barriers(ax, series, steps)
        _legend(ax, "network")
        what = "mean over pairs, bars: ± std, dots: pairs; " if pairs else ""
        ax.set_title(title or f"Instability vs start step\n({what}dashed: 2% stability threshold)")
    return fig


def pruning_curves(rows: list[dict], metric: str = "accuracy_change") -> Figure:
    """One line per pruning method: `metric` (relative to dense) against sparsity."""
    scale = 100 if "accuracy" in metric else 1
    data = {
        "sparsity": [100 * r["sparsity"] for r in rows],
        "value": [scale * r[metric] for r in rows],
        "method": [r["method"] for r in rows],
    }
    with style():
        fig, (ax,) = new_figure()
        sns.lineplot(data=data, x="sparsity", y="value", hue="method", marker="o", ax=ax)
        ax.axhline(0.0, c="grey", lw=1)
        ax.set_xlabel("sparsity (% of weights pruned)")
        unit = " (percentage points)" if scale == 100 else ""
        ax.set_ylabel(f"{metric.replace('_', ' ')} vs dense{unit}")
        ax.set_title("One-shot pruning of a trained model")
    return fig


def sizes_on_disk(rows: list[dict]) -> Figure:
    """KiB of the dense state dict, its gzip and the sparse export, against sparsity."""
    data = {"sparsity": [], "size": [], "format": []}
    forms = {
        "dense_bytes": "dense state dict",
        "gzip_bytes": "gzip",
        "sparse_bytes": "sparse export",
    }
    for r in rows:
        for key, label in forms.items():
            data["sparsity"].append(100 * r["sparsity"])
            data["size"].append(r[key] / 1024)
            data["format"].append(label)
    with style():
        fig, (ax,) = new_figure()
        sns.lineplot(data=data, x="sparsity", y="size", hue="format", marker="o", ax=ax)
        ax.set_xlabel("sparsity (% of weights pruned)")
        ax.set_ylabel("size on disk (KiB)")
        ax.set_ylim(bottom=0)
        ax.set_title("What pruning buys on disk")
    return fig


def schedule_curves(curves: dict[str, list[float]], title: str = "Pruning schedules") -> Figure:
    """Target sparsity (%) per step for each schedule, drawn as steps (masks change at steps)."""
    with style():
        fig, (ax,) = new_figure()
        for label, values in curves.items():
            ax.plot(range(len(values)), [100 * v for v in values], drawstyle="steps-post",
                    label=label)  # fmt: skip
        ax.set_xlabel("training step (iterations)")
        ax.set_ylabel("target sparsity (% of weights pruned)")
        ax.set_ylim(0, 100)
        _legend(ax, "schedule")
        ax.set_title(title)
    return fig


def early_bird_distances(
    records: list[dict], threshold: float, title: str = "Early-bird mask distance"
) -> Figure:
    """Normalised Hamming distance between consecutive masks against the step (You et al., ICLR
    2020), with the stop threshold dashed and the step where the ticket was drawn marked."""
    rows = [r for r in records if r["distance"] is not None]
    with style():
        fig, (ax,) = new_figure()
        ax.plot([r["step"] for r in rows], [r["distance"] for r in rows], marker=".", lw=1)
        ax.axhline(threshold, ls="--", c="grey", lw=1, label=f"threshold {threshold:g}")
        for r in (r for r in records if r["drawn"]):
            ax.axvline(r["step"], c="C3", lw=1, label=f"drawn at step {r['step']}")
        ax.set_xlabel("training step")
        ax.set_ylabel("distance to the previous mask")
        ax.set_yscale("log")
        _legend(ax, "")
        ax.set_title(title)
    return fig


def accuracy_vs_compute(
    rows: list[dict], title: str = "Test accuracy vs training compute"
) -> Figure:
    """One line per method through its sparsities: mean test accuracy (%) against mean training
    MACs (log scale), bars ± std over seeds, each point labelled with its sparsity.

    `rows`: method, sparsity, test_accuracy(_std), train_macs(_std) (`lottery.analysis.compute.summary`).
    """
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colors = _palette(methods)
    with style():
        fig, (ax,) = new_figure(size=(7.0, 4.6))
        for method in methods:
            mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["sparsity"])
            x = [r["train_macs"] for r in mine]
            y = [100 * r["test_accuracy"] for r in mine]
            xerr = [0.0 if np.isnan(r["train_macs_std"]) else r["train_macs_std"] for r in mine]
            yerr = [0.0 if np.isnan(r["test_accuracy_std"]) else 100 * r["test_accuracy_std"]
                    for r in mine]  # fmt: skip
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, marker="o", ms=4, capsize=2, lw=1,
                        label=method, color=colors[method])  # fmt: skip
            for xi, yi, r in zip(x, y, mine, strict=True):
                ax.annotate(f"{100 * r['sparsity']:.0f}%", (xi, yi), textcoords="offset points",
                            xytext=(3, 3), fontsize=7, color=colors[method])  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("training multiply-accumulates (effective, masked)")
        ax.set_ylabel("test accuracy (%)")
        _legend(ax, "method (labels: sparsity)")
        ax.set_title(title)
    return fig
