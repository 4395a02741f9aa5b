"""Figures of the analyses, one function per figure, each written to a PNG.

Figures are drawn on matplotlib `Figure` objects with the Agg canvas (no pyplot state), so they
work headless and leave a notebook's own plotting backend alone.
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
from matplotlib.ticker import NullFormatter


@contextmanager
def _figure(path: str | Path, ncols: int = 1, size: tuple[float, float] = (6.4, 4.2)) -> Iterator:
    """Yield the axes of a new Agg figure, then save it to `path` (folders created) at 150 dpi."""
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        fig = Figure(figsize=(size[0] * ncols, size[1]), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, ncols)
        yield axes
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)


def _percent_axis(ax: Axes, values: list[float]) -> None:
    """% weights remaining on a log axis, dense on the left as in Frankle & Carbin (2019).

    Ticks sit at (up to 12 of) the plotted densities, labelled plainly.
    """
    ax.set_xscale("log")
    ticks = sorted(set(values), reverse=True)
    ticks = ticks[:: max(1, -(-len(ticks) // 12))]
    ax.set_xticks(ticks, [f"{v:.3g}" for v in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.invert_xaxis()
    ax.set_xlabel("% weights remaining")


def _plain_log_y(ax: Axes) -> None:
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_minor_formatter(lambda v, _: f"{v:g}" if str(f"{v:g}")[0] in "25" else "")


def accuracy_vs_density(
    series: dict[str, list[dict]],
    path: str | Path,
    metric: str = "test_accuracy",
    title: str = "Test accuracy vs weights remaining",
    errorbar: str | tuple = "sd",
) -> Path:
    """One line per series of rows with `percent_remaining` and `metric` (an accuracy in [0, 1]);
    several rows at one density (seeds) draw their mean with an `errorbar` band (seaborn's)."""
    data = {"remaining": [], "accuracy": [], "series": []}
    for label, rows in series.items():
        for r in rows:
            if r.get(metric) is not None:
                data["remaining"].append(r["percent_remaining"])
                data["accuracy"].append(100 * r[metric])
                data["series"].append(label)
    with _figure(path) as ax:
        sns.lineplot(
            data=data,
            x="remaining",
            y="accuracy",
            hue="series",
            marker="o",
            errorbar=errorbar,
            ax=ax,
        )
        _percent_axis(ax, data["remaining"])
        ax.set_ylabel(f"{metric.replace('_', ' ')} (%)")
        ax.set_title(title)
    return Path(path)


def layer_density(densities: dict[str, dict[str, float]], path: str | Path) -> Path:
    """Per-layer % weights remaining (log scale) for each round label, one line per layer."""
    data = {"round": [], "remaining": [], "layer": []}
    for label, layers in densities.items():
        for name, d in layers.items():
            data["round"].append(label)
            data["remaining"].append(100 * d)
            data["layer"].append(name)
    with _figure(path) as ax:
        sns.lineplot(
            data=data, x="round", y="remaining", hue="layer", marker="o", sort=False, ax=ax
        )
        _plain_log_y(ax)
        ax.set_ylabel("% weights remaining in layer")
        ax.set_xlabel("")
        ax.tick_params(axis="x", rotation=45)
        ax.set_title("Per-layer density across rounds")
    return Path(path)


def overlap_heatmap(
    labels: list[str],
    values: np.ndarray,
    path: str | Path,
    title: str = "Mask overlap (Jaccard)",
) -> Path:
    """A labelled, annotated heatmap of a pairwise overlap matrix."""
    side = max(4.0, 0.7 * len(labels) + 2.5)
    with _figure(path, size=(side + 1.0, side)) as ax:
        sns.heatmap(
            values, xticklabels=labels, yticklabels=labels, annot=len(labels) <= 12, fmt=".3f",
            cmap="viridis", vmin=0.0, vmax=1.0, square=True, ax=ax,
        )  # fmt: skip
        ax.set_title(title)
    return Path(path)


def schedules(runs: dict[str, list[dict]], path: str | Path) -> Path:
    """Learning rate and % weights remaining over training steps, from metrics.jsonl rows."""
    data = {"step": [], "lr": [], "remaining": [], "run": []}
    for label, rows in runs.items():
        for r in rows:
            data["step"].append(r["step"])
            data["lr"].append(r["lr"])
            data["remaining"].append(100 * r["density"])
            data["run"].append(label)
    with _figure(path, ncols=2) as (left, right):
        sns.lineplot(data=data, x="step", y="lr", hue="run", ax=left, legend=False)
        left.set_ylabel("learning rate")
        left.set_title("Learning-rate schedule")
        sns.lineplot(
            data=data, x="step", y="remaining", hue="run", drawstyle="steps-post", ax=right
        )
        right.set_ylabel("% weights remaining")
        right.set_title("Sparsity schedule")
    return Path(path)


def instability_curves(rows: list[dict], path: str | Path) -> Path:
    """Test error along the linear path between the two copies, one line per starting step."""
    data = {"alpha": [], "error": [], "start": []}
    for r in rows:
        data["alpha"] += r["alpha"]
        data["error"] += [100 * e for e in r["test_error"]]
        data["start"] += [f"k={r['step']}"] * len(r["alpha"])
    with _figure(path) as ax:
        sns.lineplot(data=data, x="alpha", y="error", hue="start", marker=".", ax=ax)
        ax.set_xlabel("interpolation α (copy A → copy B)")
        ax.set_ylabel("test error (%)")
        ax.set_title("Linear interpolation between two copies")
    return Path(path)


def barrier_vs_step(series: dict[str, list[dict]], path: str | Path) -> Path:
    """Error barrier (%) against the starting step k, one line per series (e.g. dense, ticket)."""
    data = {"step": [], "barrier": [], "network": []}
    for label, rows in series.items():
        for r in rows:
            data["step"].append(r["step"])
            data["barrier"].append(100 * r["barrier"])
            data["network"].append(label)
    with _figure(path) as ax:
        sns.lineplot(data=data, x="step", y="barrier", hue="network", marker="o", ax=ax)
        ax.set_xscale(
            "symlog", linthresh=max(1, min([s for s in data["step"] if s > 0], default=1))
        )
        ax.axhline(2.0, ls="--", c="grey", lw=1)  # stability threshold of Frankle et al. 2020
        ax.set_xlabel("rewind / start step k")
        ax.set_ylabel("error barrier (%)")
        ax.set_title("Instability vs rewind step (dashed: 2% stability threshold)")
    return Path(path)


def pruning_curves(rows: list[dict], path: str | Path, metric: str = "accuracy_change") -> Path:
    """One line per pruning method: `metric` (relative to dense) against sparsity."""
    scale = 100 if "accuracy" in metric else 1
    data = {
        "sparsity": [100 * r["sparsity"] for r in rows],
        "value": [scale * r[metric] for r in rows],
        "method": [r["method"] for r in rows],
    }
    with _figure(path) as ax:
        sns.lineplot(data=data, x="sparsity", y="value", hue="method", marker="o", ax=ax)
        ax.axhline(0.0, c="grey", lw=1)
        ax.set_xlabel("sparsity (%)")
        unit = " (points)" if scale == 100 else ""
        ax.set_ylabel(f"{metric.replace('_', ' ')} vs dense{unit}")
        ax.set_title("One-shot pruning of a trained model")
    return Path(path)


def sizes_on_disk(rows: list[dict], path: str | Path) -> Path:
    """Bytes of the dense state dict, its gzip and the sparse export, against sparsity."""
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
    with _figure(path) as ax:
        sns.lineplot(data=data, x="sparsity", y="size", hue="format", marker="o", ax=ax)
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("size on disk (KiB)")
        ax.set_ylim(bottom=0)
        ax.set_title("What pruning buys on disk")
    return Path(path)
