"""Trainer overhead: seconds per epoch of LeNet-300-100 on Fashion-MNIST (batch 128, SGD) through
the Trainer (with its per-epoch evaluation, metrics and checkpoint) vs a bare tensor-indexed loop,
measured alternately in one run, both at torch's thread count (a run that names no --threads
would take one thread for this network, which is a different comparison). Target: the Trainer
within 1.3x of the bare loop."""

from __future__ import annotations

import tempfile

import torch
import torch.nn.functional as F

from experiments.benchmarks.common import Row, cli, interleaved
from lottery import TrainConfig, Trainer, load_data, make_model


def run(quick: bool = False, device: str = "cpu") -> list[Row]:
    cfg = TrainConfig(epochs=1, batch_size=128, optimizer="sgd", lr=0.1, device=device,
                      threads=torch.get_num_threads())  # fmt: skip
    data = load_data(cfg)
    steps = len(data.train_x) // cfg.batch_size

    def trainer() -> None:
        with tempfile.TemporaryDirectory() as d:
            Trainer(cfg, data, make_model(cfg, data), d, progress=False).fit()

    def bare() -> None:
        model = make_model(cfg, data).to(data.train_x.device)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        perm = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(0))
        perm = perm.to(data.train_x.device)
        for i in range(steps):
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    ours, base = interleaved(trainer, bare, repeats=3 if quick else 5, device=device)
    return [
        Row(
            "Trainer vs bare loop, s/epoch (LeNet-300-100, FMNIST, b128)",
            ours,
            base,
            "s",
            "<= 1.30x",
            device,
        )
    ]


if __name__ == "__main__":
    cli(run, __doc__)
