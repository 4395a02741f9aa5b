"""Gradual pruning overhead: milliseconds per training step of LeNet-300-100 (synthetic data, batch
60, Adam) through the Trainer with a GradualPruner (AGP to 90% sparsity, layer-wise magnitude,
mask updates every 100 steps, fused mask multiply after every step) vs the same Trainer run dense,
measured alternately in one run. Target: <= 1.10x the dense step."""

from __future__ import annotations

import tempfile

from experiments.benchmarks.common import Row, cli, interleaved
from lottery import GradualPruner, Schedule, TrainConfig, Trainer, load_data, make_model, run_length


def run(quick: bool = False, device: str = "cpu") -> list[Row]:
    steps = 300 if quick else 1000
    cfg = TrainConfig(
        model="lenet_300_100",
        dataset="synthetic",
        steps=steps,
        batch_size=60,
        optimizer="adam",
        lr=1.2e-3,
        eval_every=steps,
        checkpoint_every=steps,
        device=device,
    )
    data = load_data(cfg)
    total, per_epoch = run_length(cfg, data)

    def fit(pruned: bool) -> None:
        pruner = None
        if pruned:
            schedule = Schedule("agp", 0.9, start=0.0, end=0.8)
            pruner = GradualPruner(schedule, total, every=100, steps_per_epoch=per_epoch)
        with tempfile.TemporaryDirectory() as d:
            Trainer(cfg, data, make_model(cfg, data), d, pruner=pruner, progress=False).fit()

    ours, base = interleaved(
        lambda: fit(True), lambda: fit(False), repeats=3 if quick else 5, device=device
    )
    return [
        Row(
            f"gradual pruning vs dense, ms/step (LeNet-300-100, AGP, update/100 steps, {steps} steps)",
            1000 * ours / steps,
            1000 * base / steps,
            "ms",
            "<= 1.10x",
            device,
        )
    ]


if __name__ == "__main__":
    cli(run, __doc__)
