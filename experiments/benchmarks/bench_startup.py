"""Start-up time in fresh subprocesses, each against `python -c "import torch"` timed alternately.

`lottery --help` and every `lottery CMD --help` must not load torch (target well under 1.5 s, here
<= 0.5x of importing torch; `imp --help` stands for the commands: it lists every criterion).
A training command's start-up (interpreter, imports, data, model, optimizer, one step, the two
evaluations and the run's records: an upper bound on its time to the first step) should stay
within 1 s of importing torch: the row's target is (torch + 1 s) / torch, from this run's median.

Where it went (cProfile, 2026-11): decoding Fashion-MNIST's gzipped IDX files (~0.8-1.5 s; now
memory-mapped from lottery/datasets/cache.py's decoded arrays from the second run on, and
normalised in place) and torch._dynamo (~1.2-2.5 s), which every torch.optim.Optimizer imports on
its first method call; lottery.core.optim steps through torch's functional kernels instead.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from experiments.benchmarks.common import Row, cli, interleaved

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _runner(*args: str) -> callable:
    def go() -> None:
        subprocess.run([sys.executable, *args], check=True, capture_output=True)

    return go


def _train_once(device: str, workdir: Path) -> callable:
    """`lottery train --steps 1` into a fresh folder each call (a finished run would be reused)."""
    data = ["--data-root", str(FASHION)] if FASHION.is_dir() else ["--dataset", "synthetic"]
    calls = iter(range(1_000_000))

    def go() -> None:
        out = workdir / f"run_{next(calls)}"
        subprocess.run(
            [sys.executable, "-m", "lottery", "train", *data, "--steps", "1", "--device", device,
             "--val-size", "1000", "--test-limit", "1000", "--no-progress", "--out", str(out)],
            check=True, capture_output=True,
        )  # fmt: skip

    return go


def run(quick: bool = False, device: str = "cpu") -> list[Row]:
    repeats = 3 if quick else 7
    torch_import = _runner("-c", "import torch")
    rows = []
    ours, base = interleaved(_runner("-m", "lottery", "--help"), torch_import, repeats)
    rows.append(Row("`lottery --help` vs import torch", ours, base, "s", "<= 0.50x", "cpu"))
    ours, base = interleaved(_runner("-m", "lottery", "imp", "--help"), torch_import, repeats)
    rows.append(Row("`lottery imp --help` vs import torch", ours, base, "s", "<= 0.50x", "cpu"))
    with tempfile.TemporaryDirectory() as d:
        ours, base = interleaved(_train_once(device, Path(d)), torch_import, repeats)
    within_1s = f"<= {(base + 1.0) / base:.2f}x"
    rows.append(
        Row("`lottery train --steps 1` start-up vs import torch", ours, base, "s", within_1s,
            device)
    )  # fmt: skip
    return rows


if __name__ == "__main__":
    cli(run, __doc__)
