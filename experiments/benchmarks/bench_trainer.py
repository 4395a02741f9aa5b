"""Trainer overhead: seconds per epoch of LeNet-300-100 on Fashion-MNIST (batch 128, SGD momentum
0.9) through the Trainer against a bare tensor-indexed loop, measured alternately in one run, both
at the thread count a run that names no --threads takes for this network (one; see
`lottery.core.device.default_threads`); on a machine with a core to spare, the Trainer scores the
start of the run there while it trains. Two rows:

- the same evaluations: the bare loop also scores validation and test at the start and the end
  (as a fresh run records step 0 and its last step) and saves its final state; target <= 1.03x;
- at the Trainer's default settings (its evaluations, metrics and checkpoint) against the bare
  loop without any; target <= 1.05x.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from experiments.benchmarks.common import Row, cli, interleaved
from lottery import TrainConfig, Trainer, default_threads, load_data, make_model

EVAL_BATCH = 2048


def run(quick: bool = False, device: str = "cpu") -> list[Row]:
    cfg = TrainConfig(epochs=1, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9,
                      device=device)  # fmt: skip
    data = load_data(cfg)
    threads = default_threads(make_model(cfg, data), data.input_shape, cfg.batch_size)
    steps = len(data.train_x) // cfg.batch_size

    def trainer() -> None:
        with tempfile.TemporaryDirectory() as d:
            Trainer(cfg, data, make_model(cfg, data), d, progress=False).fit()

    @torch.no_grad()
    def score(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        model.eval()
        loss, correct = torch.zeros((), device=x.device), torch.zeros((), device=x.device)
        for i in range(0, len(x), EVAL_BATCH):
            out = model(x[i : i + EVAL_BATCH])
            loss += F.cross_entropy(out, y[i : i + EVAL_BATCH], reduction="sum")
            correct += (out.argmax(1) == y[i : i + EVAL_BATCH]).sum()
        model.train()
        return float(loss) / len(x), float(correct) / len(x)

    def record(model: torch.nn.Module) -> None:
        """What the Trainer records at an evaluation: validation and test loss and accuracy."""
        for x, y in ((data.val_x, data.val_y), (data.test_x, data.test_y)):
            score(model, x, y)

    def bare(evaluations: bool) -> None:
        model = make_model(cfg, data).to(data.train_x.device)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        perm = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(0))
        perm = perm.to(data.train_x.device)
        if evaluations:
            record(model)
        for i in range(steps):
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if evaluations:
            record(model)
            with tempfile.TemporaryDirectory() as d:
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()},
                           Path(d) / "final.pt")  # fmt: skip

    repeats = 3 if quick else 7
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # the bare loop's; the Trainer sets the same itself
    try:
        same, base_same = interleaved(trainer, lambda: bare(True), repeats=repeats, device=device)
        ours, base = interleaved(trainer, lambda: bare(False), repeats=repeats, device=device)
    finally:
        torch.set_num_threads(before)
    what = f"s/epoch (LeNet-300-100, FMNIST, b128, {threads} thread{'s' * (threads > 1)})"
    return [
        Row(
            f"Trainer vs bare loop with the same evaluations, {what}",
            same,
            base_same,
            "s",
            "<= 1.03x",
            device,
        ),  # fmt: skip
        Row(
            f"Trainer (default evaluations) vs bare loop without, {what}",
            ours,
            base,
            "s",
            "<= 1.05x",
            device,
        ),  # fmt: skip
    ]


if __name__ == "__main__":
    cli(run, __doc__)
