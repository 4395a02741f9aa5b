"""Evaluation batch: seconds to score 1,640 Fashion-MNIST-shaped images (a short run's validation
and test sets) at the batch `lottery.core.device.eval_batch_size` picks vs the fixed batch of 2048
every run used before, measured alternately in one run, one thread on a CPU. On a CPU the large
batch's activations spill out of the cache; target: the sized batch >= 1.2x faster for each conv
net (a fully connected net, whose activations are small, gets 2048 either way)."""

from __future__ import annotations

import torch

from experiments.benchmarks.common import Row, cli, interleaved
from lottery import build_model, eval_batch_size, evaluate, resolve_device

FIXED = 2048
NETS = {"conv2": (1, 28, 28), "allconv": (1, 28, 28), "resnet20": (3, 32, 32)}


def run(quick: bool = False, device: str = "cpu") -> list[Row]:
    dev = resolve_device(device)
    rows = []
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, shape in NETS.items():
            model = build_model(name, shape, 10, seed=0).to(dev)
            x = torch.randn(1640, *shape, generator=torch.Generator().manual_seed(0)).to(dev)
            y = torch.arange(1640, device=dev) % 10
            sized = eval_batch_size(model, shape, dev)
            evaluate(model, x, y, sized)  # warm-up of both paths
            evaluate(model, x, y, FIXED)
            ours, base = interleaved(
                lambda m=model, x=x, y=y, b=sized: evaluate(m, x, y, b),
                lambda m=model, x=x, y=y: evaluate(m, x, y, FIXED),
                repeats=3 if quick else 7,
                device=dev,
            )
            rows.append(Row(f"evaluation at the sized batch ({sized}) vs {FIXED}, s ({name}, "
                            "1,640 images, 1 thread)", ours, base, "s", ">= 1.2x", str(dev.type),
                            higher_is_better=True))  # fmt: skip
    finally:
        torch.set_num_threads(before)
    return rows


if __name__ == "__main__":
    cli(run, __doc__)
