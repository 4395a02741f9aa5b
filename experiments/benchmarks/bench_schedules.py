"""The fixed-budget schedule comparison batched: 8 schedules x 3 seeds of the all-convolutional net
(experiments/schedule_budget.py: `allconv`, its convolutions pruned) trained as one stacked model
vs one by one, seconds for the whole comparison (synthetic data, Adam with one-cycle LR, mask
updates every 10 steps), alternately in one run. Target: batched >= 1.5x faster on this CPU."""

from __future__ import annotations

import tempfile
from pathlib import Path

from experiments.benchmarks.common import Row, cli, interleaved
from experiments.schedule_budget import RECIPES, Budget, make_runs, train
from lottery import load_dataset


def run(quick: bool = False, device: str = "cpu") -> list[Row]:
    budget = Budget(epochs=0.5 if quick else 1.0, train_limit=2048 if quick else 4096,
                    test_limit=512, val_size=256,
                    batch_size=64, lr=3e-3, update_every=10, evals=2, data_root=None,
                    threads=None, dataset="synthetic", device=device)  # fmt: skip
    data = load_dataset("synthetic", None, val_size=budget.val_size,
                        train_limit=budget.train_limit, test_limit=budget.test_limit)  # fmt: skip
    labels, seeds = list(RECIPES), 3

    def compare(batched: bool) -> None:
        with tempfile.TemporaryDirectory() as d:
            runs = make_runs(labels, seeds, budget, data, Path(d))
            train(runs, budget, data, batched=batched, progress=False)

    ours, base = interleaved(lambda: compare(True), lambda: compare(False), repeats=2 if quick else 3,
                             device=device)  # fmt: skip
    steps = round(budget.epochs * (budget.train_limit - budget.val_size) // budget.batch_size)
    return [
        Row(
            f"fixed-budget schedule comparison, {len(labels)} schedules x {seeds} seeds batched vs "
            f"one by one (allconv, {steps} steps each), s",
            ours,
            base,
            "s",
            "<= 0.67x",
            device,
        )
    ]


if __name__ == "__main__":
    cli(run, __doc__)
