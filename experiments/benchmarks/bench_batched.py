"""Batched tickets: milliseconds per training step of K = 8 masked LeNet-300-100 tickets (each its
own init, mask and data order; Adam, batch 60) trained as one stacked model (`train_runs(...,
batched=True)`) vs one after another through the Trainer, measured alternately in one run, records
included. Target on a GPU, where small steps are bound by kernel launches: >= 5x. On a CPU the step
is bound by arithmetic (about 0.1 GFLOP per copy and step), which stacking does not reduce; there
the target is parity within the +-10% timing noise of a shared machine (>= 0.9x)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from experiments.benchmarks.common import Row, cli, interleaved
from lottery import (
    DatasetNotFoundError,
    Mask,
    RunSpec,
    Splits,
    TrainConfig,
    load_data,
    make_model,
    random_mask_like,
    train_runs,
)

K = 8
DENSITY_ROUNDS = 7  # 0.8^7 ~ 21% of weights left, a typical IMP ticket


def _data(cfg: TrainConfig) -> tuple[TrainConfig, Splits]:
    """Fashion-MNIST where installed (the LTH's LeNet setting), else the synthetic set."""
    try:
        return cfg, load_data(cfg)
    except DatasetNotFoundError:
        cfg = cfg.replace(dataset="synthetic", val_size=400, test_limit=None)
        return cfg, load_data(cfg)


def _ticket_mask(model, seed: int) -> Mask:
    """A random mask keeping 0.8^7 of every layer, as after seven IMP rounds."""
    kept = Mask.ones(model)
    for t in kept.tensors.values():
        t.view(-1)[round(t.numel() * 0.8**DENSITY_ROUNDS) :] = False
    return random_mask_like(kept, seed)


def run(quick: bool = False, device: str = "cpu") -> list[Row]:
    steps = 100 if quick else 500
    base = TrainConfig(
        model="lenet_300_100",
        dataset="fashion_mnist",
        val_size=1000,
        test_limit=1000,
        steps=steps,
        batch_size=60,
        optimizer="adam",
        lr=1.2e-3,
        eval_every=steps,
        checkpoint_every=steps,
        device=device,
    )
    base, data = _data(base)

    def specs(root: Path) -> list[RunSpec]:
        out = []
        for i in range(K):
            cfg = base.replace(init_seed=i, data_seed=i)
            model = make_model(cfg, data)
            out.append(RunSpec(cfg, root / f"ticket_{i}", model, _ticket_mask(model, seed=i)))
        return out

    def fit(batched: bool) -> None:
        with tempfile.TemporaryDirectory() as d:
            train_runs(specs(Path(d)), data, batched=batched, progress=False)

    ours, seq = interleaved(
        lambda: fit(True), lambda: fit(False), repeats=2 if quick else 3, device=device
    )
    target = ">= 5x" if device.startswith("cuda") else ">= 0.9x"
    return [
        Row(
            f"{K} tickets batched vs one by one, ms/step of all {K} "
            f"(LeNet-300-100, {base.dataset}, Adam b60, {steps} steps)",
            1000 * ours / steps,
            1000 * seq / steps,
            "ms",
            target,
            device,
            higher_is_better=True,
        )
    ]


if __name__ == "__main__":
    cli(run, __doc__)
