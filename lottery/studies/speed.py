"""What pruning buys in seconds: inference time of each export route against the masked dense net.

Each route and the dense baseline are timed alternately in one run (so machine noise hits both
alike) at batch sizes 1 and 256, median of repeats, with CUDA synchronised around every timing.
A sweep prunes a trained network one-shot to several sparsities (whole filters for `compact`,
single weights for `sparse`) so the speed-up vs sparsity curve sits beside the bytes on disk.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict

import torch
from torch import nn

from lottery.pruning.masks import Mask
from lottery.studies.curves import methods, one_shot_mask, sizes_on_disk
from lottery.studies.export import Architecture, Exported, ExportError, export, stored_numbers
from lottery.studies.names import SPEED_BATCHES, SWEEP_ROUTES, SWEEP_SPARSITIES

MIN_SAMPLE_S = 0.02  # each timed sample repeats the forward pass until it lasts about this long


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(fn: Callable[[], object], calls: int, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / calls


def time_pair(
    dense: nn.Module, other: nn.Module, x: torch.Tensor, repeats: int = 11
) -> tuple[float, float]:
    """Median seconds per forward pass of `dense` and `other` on `x`, timed alternately."""
    a, b = time_samples(dense, other, x, repeats)
    return statistics.median(a), statistics.median(b)


def spread(ratios: list[float]) -> tuple[float, float]:
    """The interquartile range of per-repeat ratios (both ends the one value for one repeat)."""
    if len(ratios) < 2:
        return ratios[0], ratios[0]
    q = statistics.quantiles(ratios, n=4, method="inclusive")
    return q[0], q[2]


@torch.inference_mode()
def time_samples(
    dense: nn.Module, other: nn.Module, x: torch.Tensor, repeats: int = 11
) -> tuple[list[float], list[float]]:
    """Seconds per forward pass of `dense` and `other` on `x`, one sample of each per repeat,
    alternating which goes first so machine noise hits both alike."""
    device = x.device
    runs = (lambda: dense(x), lambda: other(x))
    for _ in range(3):  # warm-up (allocator, kernel selection, caches)
        for fn in runs:
            fn()
    once = max(_seconds(fn, 1, device) for fn in runs)
    calls = max(1, math.ceil(MIN_SAMPLE_S / max(once, 1e-6)))
    samples: tuple[list[float], list[float]] = ([], [])
    for i in range(repeats):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for k in order:
            samples[k].append(_seconds(runs[k], calls, device))
    return samples


def measure(
    model: nn.Module,
    mask: Mask | None,
    arch: Architecture,
    routes: tuple[str, ...],
    *,
    batches: tuple[int, ...] = SPEED_BATCHES,
    repeats: int = 11,
    seed: int = 0,
) -> list[dict]:
    """One row per (route, batch): dense and route ms per batch (medians of `repeats`), the
    speed-up dense/route and the interquartile range of the per-repeat speed-ups.

    A route that cannot export this network gives one row with its reason instead of timings.
    """
    device = next(model.parameters()).device
    dense = export("dense", model, mask, arch).module
    sparsity = mask.sparsity() if mask is not None else 0.0
    gen = torch.Generator().manual_seed(seed)
    inputs = {b: torch.randn((b, *arch.input_shape), generator=gen).to(device) for b in batches}
    rows = []
    for route in routes:
        try:
            exported: Exported = export(route, model, mask, arch)
        except ExportError as e:
            rows.append({"route": route, "sparsity": sparsity, "skipped": str(e)})
            continue
        for b, x in inputs.items():
            dense_t, route_t = time_samples(dense, exported.module, x, repeats)
            dense_s, route_s = statistics.median(dense_t), statistics.median(route_t)
            low, high = spread([d / r for d, r in zip(dense_t, route_t, strict=True)])
            rows.append(
                {
                    "route": route,
                    "sparsity": sparsity,
                    "batch": b,
                    "dense_ms": 1e3 * dense_s,
                    "route_ms": 1e3 * route_s,
                    "speedup": dense_s / route_s,
                    "speedup_low": low,  # interquartile range of the per-repeat speed-ups
                    "speedup_high": high,
                    "dense_numbers": stored_numbers(dense),
                    "route_numbers": stored_numbers(exported.module),
                }
            )
    return rows


def sweep(
    model: nn.Module,
    arch: Architecture,
    sparsities: tuple[float, ...] = SWEEP_SPARSITIES,
    routes: tuple[str, ...] = SWEEP_ROUTES,
    *,
    batches: tuple[int, ...] = SPEED_BATCHES,
    repeats: int = 11,
    norm: float = 2.0,
    prune_output: bool = False,
) -> dict:
    """Prune `model`'s weights one-shot to each sparsity and time each route against dense.

    `compact` gets whole filters pruned per layer by their Ln norm, the other routes single
    weights per layer by magnitude; the output layer stays dense unless `prune_output`. Sizes on
    disk of the unstructured masks come along for the side-by-side figure.
    """
    table = methods(norm)
    structured, unstructured = table[f"layer-filter-l{norm:g}"], table["layer-l1"]
    rows = []
    for s in sparsities:
        for route in routes:
            method = structured if route == "compact" else unstructured
            mask = one_shot_mask(model, method, s, norm=norm, prune_output=prune_output)
            for row in measure(model, mask, arch, (route,), batches=batches, repeats=repeats):
                rows.append({"target_sparsity": s, **row})
    sizes = sizes_on_disk(
        model, method="layer-l1", sparsities=sparsities, prune_output=prune_output
    )
    return {"rows": rows, "sizes": [asdict(z) for z in sizes]}


def table(rows: list[dict]) -> str:
    """The rows as aligned text: route, sparsity, batch, dense ms, route ms, speed-up."""
    lines = [
        f"{'route':>8s} {'sparsity':>8s} {'batch':>5s} {'dense ms':>9s} {'route ms':>9s} speed-up"
    ]
    for r in rows:
        head = f"{r['route']:>8s} {100 * r['sparsity']:7.1f}%"
        if "skipped" in r:
            lines.append(f"{head}   skipped: {r['skipped']}")
            continue
        lines.append(
            f"{head} {r['batch']:5d} {r['dense_ms']:9.3f} {r['route_ms']:9.3f} {r['speedup']:7.2f}x"
        )
    return "\n".join(lines)


def figure(rows: list[dict], sizes: list[dict] | None = None):  # -> matplotlib.figure.Figure
    """Speed-up vs sparsity per route and batch, beside the bytes on disk when `sizes` is given."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = 2 if sizes else 1
    fig = Figure(figsize=(6.4 * panels, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    from matplotlib.ticker import FuncFormatter, LogLocator

    timed = [r for r in rows if "speedup" in r]
    for route, batch in dict.fromkeys((r["route"], r["batch"]) for r in timed):
        pts = sorted(
            (100 * r["sparsity"], r["speedup"], r.get("speedup_low"), r.get("speedup_high"))
            for r in timed
            if r["route"] == route and r["batch"] == batch
        )
        x, y, low, high = zip(*pts, strict=True)
        err = None
        if None not in low:  # records written before the spread was kept have none
            err = [[v - lo for v, lo in zip(y, low, strict=True)],
                   [hi - v for v, hi in zip(y, high, strict=True)]]  # fmt: skip
        axes[0].errorbar(x, y, yerr=err, marker="o", capsize=0, label=f"{route}, batch {batch}")
    axes[0].axhline(1.0, color="grey", linewidth=1, linestyle="--")
    axes[0].set_yscale("log")  # 0.01x and 10x are equally far from 1x
    axes[0].yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axes[0].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    axes[0].set(xlabel="sparsity (%)", ylabel="speed-up vs masked dense (log)")
    axes[0].set_title("What pruning buys in seconds (median, bars: interquartile range)")
    axes[0].legend()
    if sizes:
        forms = {"dense_bytes": "dense", "gzip_bytes": "gzip", "sparse_bytes": "sparse export"}
        for key, label in forms.items():
            pts = sorted((100 * z["actual_sparsity"], z[key] / 1024) for z in sizes)
            axes[1].plot(*zip(*pts, strict=True), marker="o", label=label)
        axes[1].set(xlabel="sparsity (%)", ylabel="size on disk (KiB)", ylim=(0, None))
        axes[1].set_title("What pruning buys on disk")
        axes[1].legend()
    return fig
