"""`lottery sweep FILE`: run every point of a sweep file; `lottery sweep status DIR`: its table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lottery.cli.main import add_progress_flag, command_help, show_progress
from lottery.sweeps.run import EXECUTORS, EXIT_INCOMPLETE


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help=command_help("sweep"),
        description="Run a grid of runs of one command (train, imp, prune, at-init, rewind-sweep, "
        "instability, curve), one folder per point under --out, on local workers, a Ray cluster "
        "or Slurm. Rerunning skips finished points and resumes partial ones. `lottery sweep "
        "status DIR` prints each point's state and exits 0 only when all are done. Exit status "
        f"{EXIT_INCOMPLETE}: some points are not done.",
    )
    p.add_argument("file", metavar="FILE", help="the sweep file (YAML or JSON), or `status`")
    p.add_argument(
        "dir", nargs="?", type=Path, metavar="DIR", help="with `status`: the sweep folder"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="sweep folder (default checkpoints/sweeps/FILE's stem)",
    )
    p.add_argument("--executor", choices=EXECUTORS, default="local", help="where points run")
    p.add_argument("--retries", type=int, default=0, help="tries more for a point that fails")
    g = p.add_argument_group("local executor")
    g.add_argument(
        "--workers", type=int, default=None, help="points at once (default: cores / threads)"
    )
    g.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per point (default: what the point's network needs, see docs/sweeps.md)",
    )
    g.add_argument("--per-gpu", type=int, default=1, help="workers per visible GPU")
    g.add_argument(
        "--batched",
        action="store_true",
        help="points that differ only by seed (imp, prune, at-init) train as one stacked model "
        "on one worker (results equal separate runs to float tolerance; for GPUs)",
    )
    g = p.add_argument_group("ray executor (pip install 'lottery[ray]')")
    g.add_argument(
        "--address",
        default=None,
        help="auto or HOST:PORT of a running cluster (default: start one on this machine)",
    )
    g.add_argument("--gpus", type=float, default=0, help="GPUs per point; fractions share a GPU")
    g = p.add_argument_group("slurm executor (pip install 'lottery[slurm]')")
    g.add_argument("--partition", default=None, help="Slurm partition (default: the cluster's)")
    g.add_argument(
        "--time", type=int, default=60, help="minutes per job; a job that runs out is requeued"
    )
    g.add_argument("--gpus-per-task", type=int, default=0, help="GPUs per point")
    g.add_argument(
        "--cpus-per-task", type=int, default=None, help="CPUs per point (default: --threads or 1)"
    )
    g.add_argument("--mem", default=None, help="memory per point, e.g. 4G")
    g.add_argument("--array-parallelism", type=int, default=256, help="array jobs running at once")
    add_progress_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lottery.core.config import ConfigError
    from lottery.sweeps.points import status_rows, status_table

    if args.file == "status":
        if args.dir is None:
            raise ConfigError(
                "lottery sweep status needs the sweep folder: lottery sweep status DIR"
            )
        rows = status_rows(args.dir)
        print(status_table(rows))
        return 0 if all(r["state"] == "done" for r in rows) else EXIT_INCOMPLETE
    if args.dir is not None:
        raise ConfigError(f"unexpected {args.dir} after the sweep file (give the folder as --out)")
    from lottery.sweeps.plan import read_sweep
    from lottery.sweeps.run import Options, run_sweep

    sweep = read_sweep(args.file)
    out = args.out or Path("checkpoints/sweeps") / Path(args.file).stem
    options = Options(
        workers=args.workers, threads=args.threads, per_gpu=args.per_gpu, batched=args.batched,
        gpus=args.gpus,
        address=args.address, partition=args.partition, time=args.time,
        gpus_per_task=args.gpus_per_task, cpus_per_task=args.cpus_per_task, mem=args.mem,
        array_parallelism=args.array_parallelism,
    )  # fmt: skip
    try:
        result = run_sweep(
            sweep, out, args.executor, options, retries=args.retries, progress=show_progress(args)
        )
    except KeyboardInterrupt:
        print(
            f"lottery sweep: interrupted; rerun the same command to resume ({out})",
            file=sys.stderr,
        )
        return 130
    print(result.summary())
    print(f"status: lottery sweep status {out}")
    return 0 if result.complete else EXIT_INCOMPLETE
