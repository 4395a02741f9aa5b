"""Inference speed of pruned networks by export route: LeNet-300-100 and Conv-4 (Fashion-MNIST
shape) pruned one-shot to several sparsities, compact (filters removed) and sparse (CSR linear
layers) against the masked dense network, timed alternately in one run at batch 1 and 256.
Targets: compact Conv-4 with half its filters pruned >= 1.6x at batch 256; the other rows are
informative (">= 0x": where CSR overtakes dense is the finding)."""

from __future__ import annotations

from experiments.benchmarks.common import Row, cli
from lottery import Architecture, one_shot_mask, resolve_device
from lottery import curve_methods as methods
from lottery import measure_speed as measure

SHAPE = (1, 28, 28)


def run(quick: bool = False, device: str = "cpu") -> list[Row]:
    dev = resolve_device(device)
    repeats = 5 if quick else 15
    plans = [("conv4", "compact", (0.5,) if quick else (0.5, 0.75))]
    plans.append(("lenet_300_100", "sparse", (0.9, 0.98) if quick else (0.5, 0.8, 0.9, 0.95, 0.98)))
    rows = []
    for model_name, route, sparsities in plans:
        arch = Architecture(model_name, SHAPE, 10)
        model = arch.build().to(dev).eval()
        method = methods()["layer-filter-l2" if route == "compact" else "layer-l1"]
        for s in sparsities:
            mask = one_shot_mask(model, method, s)
            for r in measure(model, mask, arch, (route,), repeats=repeats):
                target = ">= 1.6x" if (route, s, r["batch"]) == ("compact", 0.5, 256) else ">= 0x"
                rows.append(
                    Row(
                        f"{model_name} {route} vs dense, {100 * s:.0f}% pruned, batch {r['batch']}",
                        r["route_ms"],
                        r["dense_ms"],
                        "ms",
                        target,
                        dev.type,
                        higher_is_better=True,
                    )
                )
    return rows


if __name__ == "__main__":
    cli(run, __doc__)
