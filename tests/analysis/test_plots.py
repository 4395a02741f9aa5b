"""Every figure function checked on the data its returned Figure draws, and saved as PNG/PDF/SVG."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from lottery.analysis import plots

PNG, PDF, SVG = b"\x89PNG\r\n\x1a\n", b"%PDF", b"<?xml"


def stat(network, metric, remaining, mean, low=float("nan"), high=float("nan")):
    return {"network": network, "metric": metric, "percent_remaining": remaining, "mean": mean,
            "ci95_low": low, "ci95_high": high}  # fmt: skip


def test_accuracy_vs_density_draws_means_and_ci_bands_per_metric():
    rows = [
        stat("ticket", "test_acc_pct", 100.0, 90.0, 89.0, 91.0),
        stat("ticket", "test_acc_pct", 80.0, 91.0, 90.0, 92.0),
        stat("ticket", "test_acc_best_val_pct", 100.0, 89.5, 88.0, 91.0),
        stat("ticket", "test_acc_best_val_pct", 80.0, 90.5, 89.0, 92.0),
        stat("random-reinit", "test_acc_pct", 80.0, 85.0, 84.0, 86.0),
        stat("random-reinit", "test_acc_best_val_pct", 80.0, 84.0, 83.0, 85.0),
    ]
    fig = plots.accuracy_vs_density(rows)
    assert isinstance(fig, Figure)
    end, best = fig.axes[:2]
    ticket = end.get_lines()[0]
    assert ticket.get_label() == "ticket"
    assert list(ticket.get_xdata()) == [100.0, 80.0] and list(ticket.get_ydata()) == [90.0, 91.0]
    assert list(best.get_lines()[0].get_ydata()) == [89.5, 90.5]
    band = end.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(89.0) and band[:, 1].max() == pytest.approx(92.0)
    assert "end of training" in end.get_ylabel() and "min. validation loss" in best.get_ylabel()
    assert end.get_xlabel() == "weights remaining (%, log scale)" and end.xaxis_inverted()
    assert end.get_legend() is None and best.get_legend().get_title().get_text() == "network"


def test_training_curves_plot_accuracy_in_percent_and_losses():
    rows = [
        {"step": 0, "val_acc_pct": 10.0, "test_acc_pct": 11.0, "val_loss": 2.3, "test_loss": 2.4,
         "train_loss": None},
        {"step": 50, "val_acc_pct": 80.0, "test_acc_pct": 79.0, "val_loss": 0.6, "test_loss": 0.7,
         "train_loss": 0.9},
    ]  # fmt: skip
    fig = plots.training_curves({"run": rows})
    acc, loss = fig.axes[:2]
    assert [list(line.get_ydata()) for line in acc.get_lines()] == [[10.0, 80.0], [11.0, 79.0]]
    ys = [list(line.get_ydata()) for line in loss.get_lines()]
    assert ys == [[2.3, 0.6], [2.4, 0.7], [0.9]]  # train loss only where it exists
    assert acc.get_ylabel() == "accuracy (%)" and "iterations" in acc.get_xlabel()


def test_schedules_start_both_axes_at_zero_and_draw_steps():
    rows = [{"step": s, "lr": 0.0012, "density": d} for s, d in ((0, 1.0), (10, 0.5), (20, 0.5))]
    fig = plots.schedules({"a": rows})
    lr, dens = fig.axes[:2]
    assert lr.get_ylim()[0] == 0 and lr.get_ylim()[1] == pytest.approx(1.1 * 0.0012)
    line = dens.get_lines()[0]
    assert list(line.get_ydata()) == [100.0, 50.0, 50.0] and line.get_drawstyle() == "steps-post"
    assert dens.get_ylim() == (0, 105) and dens.get_title() == "Weights remaining"
    assert dens.get_ylabel() == "weights remaining (%)"


def test_layer_density_bars_keep_equal_layers_side_by_side():
    densities = {"round_00": {"fc1": 1.0, "fc2": 1.0}, "round_01": {"fc1": 0.2, "fc2": 0.2}}
    fig = plots.layer_density(densities)
    ax = fig.axes[0]
    bars = ax.patches
    assert [b.get_height() for b in bars] == pytest.approx([100.0, 20.0, 100.0, 20.0])
    xs = sorted(b.get_x() for b in bars)
    assert len(set(np.round(xs, 6))) == 4  # no bar hidden under another
    assert [t.get_text() for t in ax.get_xticklabels()] == ["round_00", "round_01"]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert "20" in labels and "50" in labels and "100" in labels
    assert ax.get_xlabel() == "IMP round" and "%" in ax.get_ylabel()
    one = plots.layer_density({"run": {"fc1": 0.1, "fc2": 0.3}}).axes[0]
    assert one.get_title() == "Per-layer density" and one.get_xlabel() == "mask"


@pytest.mark.parametrize("n", [2, 20])
def test_overlap_heatmap_cells_labels_and_chance(n):
    rng = np.random.default_rng(0)
    values = rng.uniform(0.1, 0.5, (n, n))
    values = (values + values.T) / 2
    np.fill_diagonal(values, 1.0)
    chance = np.full((n, n), 0.125)
    np.fill_diagonal(chance, np.nan)
    labels = [f"/tmp/out/seed_{i}/round_03" for i in range(n)]
    fig = plots.overlap_heatmap(labels, values, chance)
    ax = fig.axes[0]
    assert np.allclose(np.asarray(ax.collections[0].get_array()).reshape(n, n), values)
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"seed_{i}" for i in range(n)]
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == n * n
    if n == 2:
        assert texts[1] == f"{values[0, 1]:.3f}\n(0.125)" and "chance" in ax.get_title()
    else:
        assert texts[1] == f"{values[0, 1]:.2f}"
    colorbar = fig.axes[1]
    assert any(t.get_text() == "chance 0.125" for t in colorbar.texts)


def test_overlap_heatmap_marks_chance_inside_the_bar_and_keeps_labels_in_the_figure():
    """Chance that differs per pair gets a line at its lowest and highest level, each labelled
    inside the colour bar (clear of its title), and no tick label is cut off at the edge."""
    n = 6
    values = np.full((n, n), 0.6)
    np.fill_diagonal(values, 1.0)
    chance = np.full((n, n), 0.25)
    chance[0, 1:] = chance[1:, 0] = 0.5
    labels = [f"/tmp/out/round_{i:02d}/mask.npz" for i in range(n)]
    fig = plots.overlap_heatmap(labels, values, chance)
    fig.canvas.draw()
    ax, colorbar = fig.axes[0], fig.axes[1]
    assert sorted(t.get_text() for t in colorbar.texts) == ["chance 0.250", "chance 0.500"]
    assert sorted(round(line.get_ydata()[0], 3) for line in colorbar.lines) == [0.25, 0.5]
    assert "chance 0.250-0.500" in ax.get_title()
    renderer = fig.canvas.get_renderer()
    inside = colorbar.get_window_extent(renderer)
    for t in colorbar.texts:
        box = t.get_window_extent(renderer)
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1, t.get_text()
    page = fig.bbox
    for t in [*ax.get_yticklabels(), *ax.get_xticklabels()]:
        box = t.get_window_extent(renderer)
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0, t.get_text()
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"round_{i:02d}" for i in range(n)]


def test_barrier_vs_step_labels_each_step_and_instability_titles():
    rows = [{"step": s, "barrier": b} for s, b in ((0, 0.05), (10, 0.02), (1000, 0.001))]
    fig = plots.barrier_vs_step({"dense": rows})
    ax = fig.axes[0]
    assert list(ax.get_lines()[0].get_ydata()) == pytest.approx([5.0, 2.0, 0.1])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "10", "1000"]
    curves = [{"step": 0, "alpha": [0.0, 0.5, 1.0], "test_error": [0.1, 0.3, 0.1]}]
    dense = plots.instability_curves(curves, "Interpolation (dense)").axes[0]
    ticket = plots.instability_curves(curves, "Interpolation (ticket)").axes[0]
    assert dense.get_title() != ticket.get_title()
    assert list(dense.get_lines()[0].get_ydata()) == pytest.approx([10.0, 30.0, 10.0])


def test_barrier_vs_step_draws_each_pair_and_the_std_over_pairs():
    def row(step, barriers):
        b = np.array(barriers)
        pairs = [{"step": step, "barrier": x, "alpha": [0.0, 1.0], "test_error": [0.1, 0.1]}
                 for x in barriers]  # fmt: skip
        std = float(b.std(ddof=1)) if len(b) > 1 else None
        return {"step": step, "barrier": float(b.mean()), "barrier_std": std, "pairs": pairs}

    rows = [row(0, [0.04, 0.06, 0.11]), row(50, [0.01])]
    fig = plots.barrier_vs_step({"dense": rows, "ticket": [row(0, [0.02, 0.03])]})
    ax = fig.axes[0]
    assert list(ax.get_lines()[0].get_ydata()) == pytest.approx([7.0, 1.0])
    dots = [c.get_offsets() for c in ax.collections if type(c).__name__ == "PathCollection"]
    assert sorted(np.concatenate(dots)[:, 1]) == pytest.approx([1, 2, 3, 4, 6, 11])
    bars = [c for c in ax.collections if type(c).__name__ == "LineCollection"]
    heights = sorted(float(np.ptp(seg[:, 1])) / 2 for c in bars for seg in c.get_segments())
    assert heights == pytest.approx(sorted([100 * np.std([0.04, 0.06, 0.11], ddof=1),
                                            100 * np.std([0.02, 0.03], ddof=1)]))  # fmt: skip
    assert "pairs" in ax.get_title()
    curves = plots.instability_curves([p for r in rows for p in r["pairs"]]).axes[0]
    assert len(curves.get_lines()) == 4
    assert [t.get_text() for t in curves.get_legend().get_texts()] == ["k=0", "k=50"]


def test_schedule_curves_are_steps_in_percent():
    fig = plots.schedule_curves({"iterative": [0.0, 0.0, 0.45, 0.45, 0.9]})
    line = fig.axes[0].get_lines()[0]
    assert line.get_drawstyle() == "steps-post"
    assert list(line.get_ydata()) == pytest.approx([0.0, 0.0, 45.0, 45.0, 90.0])
    assert "%" in fig.axes[0].get_ylabel()


@pytest.mark.parametrize("fmt,magic", [("png", PNG), ("pdf", PDF), ("svg", SVG)])
def test_save_writes_each_format(tmp_path, fmt, magic):
    fig = plots.schedule_curves({"one-shot": [0.0, 0.5]})
    path = plots.save(fig, tmp_path / "sub" / "fig.png", fmt)
    assert path.suffix == f".{fmt}" and path.read_bytes().startswith(magic)
    with pytest.raises(ValueError, match="--format"):
        plots.save(fig, tmp_path / "x.png", "jpg")
