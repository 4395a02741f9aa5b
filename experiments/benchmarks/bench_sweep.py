"""Sweeps: what the local executor's workers buy, and what Ray costs per point.

1. A 3-seed × 5-round LeNet-300-100 IMP study with its random-reinit control on Fashion-MNIST:
   `lottery sweep` on the local executor (2 workers × 1 thread) against the same three searches
   run one by one at 2 threads, measured alternately. Target on a 2-core CPU: >= 1.5x.
2. Ray's overhead per point: the same points (one-seed LeNet trainings of about 20 s) on a Ray
   cluster started on this machine (`--address`, so its start-up is not counted) against the local
   executor at the same 2 × 1 split. Target: <= 1.10x.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from experiments.benchmarks.common import Row, cli, interleaved
from lottery import Sweep, SweepOptions, run_sweep

STUDY = {"model": "lenet_300_100", "dataset": "fashion_mnist", "rounds": 5,
         "controls": ["random-reinit"], "device": "cpu"}  # fmt: skip


def sweep_run(sweep: Sweep, executor: str, options: SweepOptions) -> Callable[[], float]:
    def go() -> float:
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            result = run_sweep(sweep, d, executor, options)
            seconds = time.perf_counter() - t0
        assert result.complete, [o for o in result.outcomes.values() if o.state != "done"]
        return seconds

    return go


def one_by_one(sweep: Sweep, threads: int) -> Callable[[], float]:
    """Each point's command run by hand, one after the other."""

    def go() -> float:
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            for p in sweep.points():
                argv = p.argv(Path(d) / p.name)
                subprocess.run([sys.executable, "-m", "lottery", sweep.command, *argv,
                                "--threads", str(threads)], check=True, capture_output=True)  # fmt: skip
            return time.perf_counter() - t0

    return go


def study_row(quick: bool) -> Row:
    length = {"steps": 40, "eval_every": 40} if quick else {"epochs": 0.5}
    sweep = Sweep("imp", {**STUDY, **length}, {"seed": [0, 1, 2]})
    ours = sweep_run(sweep, "local", SweepOptions(workers=2, threads=1))
    base = one_by_one(sweep, threads=2)
    t_ours, t_base = interleaved(ours, base, repeats=1 if quick else 2)
    what = "40 steps" if quick else "0.5 epoch"
    return Row(
        f"3-seed × 5-round LeNet-300-100 IMP + random-reinit ({what} a training): sweep, 2 workers "
        "× 1 thread vs one by one at 2 threads",
        t_ours, t_base, "s", ">= 1.5x", "cpu", higher_is_better=True,
    )  # fmt: skip


def ray_row(quick: bool) -> Row | None:
    try:
        from ray.cluster_utils import Cluster
    except ImportError:
        return None
    steps = 800 if quick else 7000  # about 1.5 s and 20 s a point on one thread
    sweep = Sweep("train", {"model": "lenet_300_100", "steps": steps, "eval_every": steps,
                            "device": "cpu"}, {"init_seed": [0, 1, 2, 3]})  # fmt: skip
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False}
    )
    try:
        ours = sweep_run(sweep, "ray", SweepOptions(threads=1, address=cluster.address))
        base = sweep_run(sweep, "local", SweepOptions(workers=2, threads=1))
        ours()  # warm-up: the cluster's worker processes
        t_ours, t_base = interleaved(ours, base, repeats=1 if quick else 2)
    finally:
        cluster.shutdown()
    n = len(sweep.points())
    return Row(
        f"Ray per point vs local per point (4 LeNet trainings of {steps} steps, 2 at a time)",
        t_ours / n, t_base / n, "s", "<= 1.10x", "cpu",
    )  # fmt: skip


def run(quick: bool = False, device: str = "cpu") -> list[Row]:
    if device != "cpu":
        return []  # the CPU split of workers and threads
    return [r for r in (study_row(quick), ray_row(quick)) if r is not None]


if __name__ == "__main__":
    cli(run, __doc__)
