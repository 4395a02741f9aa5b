"""End to end against fastai: a short gradual-pruning run of `lottery prune` against fastai's
Learner with fasterai's SparsifyCallback, and a short dense `lottery train` against fastai's fit,
measured alternately in one process at one CPU thread each.

Both sides train the all-conv net (`lottery.build_model("allconv")`, the same initial weights) with
Adam 1e-3, batch 128, for 50 steps on the first 6,400 Fashion-MNIST training images, and score the
first 2,000 test images twice (at the start and at the end, as a fresh lottery run records its
first and last step; fastai validates once before and once after its epoch). The pruned runs
prune the conv layers to 50% by magnitude, layer by layer, on AGP's schedule, updating the mask
every step. `lottery` writes its run folder (config, metrics, checkpoint, result); fastai writes
nothing. Targets: <= 1.10x. fastai and fasterai come with the `bench` extra
(`pip install -e '.[bench]'`); without them the rows are skipped, and the reason is printed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
import tempfile

import torch

from experiments.benchmarks.common import Row, cli, interleaved
from lottery import TrainConfig, build_model, load_data
from lottery import main as lottery_main

STEPS, BATCH, TRAIN, TEST = 50, 128, 6400, 2000
FLAGS = ["--model", "allconv", "--dataset", "fashion_mnist", "--train-limit", str(TRAIN),
         "--val-size", "0", "--test-limit", str(TEST), "--batch-size", str(BATCH), "--steps",
         str(STEPS), "--optimizer", "adam", "--lr", "1e-3", "--eval-every", str(STEPS),
         "--threads", "1", "--device", "cpu", "--no-progress"]  # fmt: skip
PRUNE = ["--schedule", "agp", "--final-sparsity", "0.5", "--layers", "conv", "--scope", "layer",
         "--update-every", "1"]  # fmt: skip


def missing() -> str | None:
    """Why the rows cannot run here, or None."""
    absent = [m for m in ("fastai", "fasterai") if importlib.util.find_spec(m) is None]
    if absent:
        return f"{' and '.join(absent)} not installed: pip install -e '.[bench]'"
    return None


def run(quick: bool = False, device: str = "cpu") -> list[Row]:
    reason = missing()
    if reason is not None or device != "cpu":
        print(
            f"bench_fastai skipped: {reason or 'a CPU comparison at one thread'}", file=sys.stderr
        )
        return []
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    from fastai.optimizer import Adam
    from fasterai.core.criteria import large_final
    from fasterai.core.schedule import agp
    from fasterai.sparse.all import SparsifyCallback

    cfg = TrainConfig(dataset="fashion_mnist", model="allconv", train_limit=TRAIN, val_size=0,
                      test_limit=TEST, device="cpu")  # fmt: skip
    data = load_data(cfg)
    train = torch.utils.data.TensorDataset(data.train_x, data.train_y)
    test = torch.utils.data.TensorDataset(data.test_x, data.test_y)

    def fastai(pruned: bool) -> None:
        model = build_model("allconv", data.input_shape, data.num_classes, seed=0)
        dls = DataLoaders.from_dsets(train, test, bs=BATCH, shuffle=True, drop_last=True)
        cbs = [SparsifyCallback(0.5, "weight", "local", large_final, agp)] if pruned else []
        learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), opt_func=Adam, lr=1e-3,
                        cbs=cbs)  # fmt: skip
        with learn.no_bar(), learn.no_logging(), contextlib.redirect_stdout(io.StringIO()):
            learn.validate()
            learn.fit(1)

    def lottery(command: list[str]) -> None:
        with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
            assert lottery_main([*command, *FLAGS, "--out", out]) == 0

    repeats = 3 if quick else 7
    cases = (
        ("`lottery prune` (AGP to 50%) vs fastai + fasterai SparsifyCallback",
         lambda: lottery(["prune", *PRUNE]), lambda: fastai(True)),
        ("`lottery train` vs fastai fit", lambda: lottery(["train"]), lambda: fastai(False)),
    )  # fmt: skip
    rows, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, ours, theirs in cases:
            a, b = interleaved(ours, theirs, repeats=repeats, device=device)
            rows.append(Row(f"{name}, s (all-conv, 50 steps, FMNIST, 1 thread)", a, b, "s",
                            "<= 1.10x", device))  # fmt: skip
    finally:
        torch.set_num_threads(threads)  # the rows after these run at the machine's count
    return rows


if __name__ == "__main__":
    cli(run, __doc__)
