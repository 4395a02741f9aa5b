"""Shared benchmark plumbing: interleaved timing against a baseline measured in the same run."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from lottery import ConfigError, resolve_device


@dataclass
class Row:
    """One line of the benchmark table: our figure, the baseline's, their ratio and the target."""

    benchmark: str
    ours: float
    baseline: float
    unit: str
    target: str  # e.g. "<= 1.30x" (ratio ours/baseline) or ">= 6x" (speed-up baseline/ours)
    device: str
    higher_is_better: bool = False  # True when the ratio reported is baseline / ours (a speed-up)

    @property
    def ratio(self) -> float:
        return self.baseline / self.ours if self.higher_is_better else self.ours / self.baseline

    @property
    def met(self) -> bool:
        op, value = self.target.split()
        value = float(value.rstrip("x%"))
        return self.ratio <= value if op == "<=" else self.ratio >= value


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved(
    ours: Callable[[], float | None],
    baseline: Callable[[], float | None],
    repeats: int,
    device: str | torch.device = "cpu",
) -> tuple[float, float]:
    """Median seconds of each callable, alternating them so machine noise hits both alike.

    A callable that returns a float has timed itself (to leave its own set-up out of the figure).
    """
    a, b = [], []
    for i in range(repeats):
        for fn, out in ((ours, a), (baseline, b)) if i % 2 == 0 else ((baseline, b), (ours, a)):
            sync(device)
            t0 = time.perf_counter()
            own = fn()
            sync(device)
            out.append(own if isinstance(own, float) else time.perf_counter() - t0)
    return statistics.median(a), statistics.median(b)


@contextmanager
def busy_process() -> Iterator[None]:
    """One other process spinning on a core for the duration."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.5)
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def markdown(rows: list[Row]) -> str:
    """The one benchmark table."""
    lines = [
        "| benchmark | ours | baseline | ratio | target | met | device |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.benchmark} | {r.ours:.4g} {r.unit} | {r.baseline:.4g} {r.unit} | "
            f"{r.ratio:.2f}x | {r.target} | {'yes' if r.met else 'NO'} | {r.device} |"
        )
    return "\n".join(lines)


def cli(run: Callable[[bool, str], list[Row]], doc: str | None) -> None:
    """`python -m experiments.benchmarks.bench_X [--quick] [--device D]`: print one module's rows."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    a = ap.parse_args()
    try:
        device = resolve_device(a.device).type
    except ConfigError as e:
        ap.error(str(e))
    print(markdown(run(a.quick, device)))
