"""The local executor: a pool of workers on this machine, each running one point at a time.

On a CPU, N workers × T threads with N·T at most the cores: small networks train faster as
several one-thread processes than as one many-thread process (a second thread costs more in
synchronisation than it saves), so the default gives each point the threads its own command would
pick and fills the cores with workers. On GPUs, one worker per visible device (or `per_gpu`).
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from lottery.core.config import ConfigError
from lottery.sweeps.plan import SEED, Point
from lottery.sweeps.points import Outcome, run_points
from lottery.sweeps.run import Executor, Options

log = logging.getLogger("lottery.sweep")


@dataclass(frozen=True)
class Split:
    """How the local executor shares the machine: worker slots (each an environment, e.g. its
    GPU) and the CPU threads each point gets, with the reason for the choice."""

    slots: list[dict[str, str]]
    threads: int
    why: str


def choose_split(
    command: str,
    points: list[Point],
    workers: int | None = None,
    threads: int | None = None,
    per_gpu: int = 1,
) -> Split:
    """Workers and threads for these points on this machine (see the module's docstring)."""
    import torch

    from lottery.core.device import available_cores

    cores = available_cores()
    devices = {str(p.settings.get("device", "auto")) for p in points}
    gpus = torch.cuda.device_count() if devices & {"auto", "cuda"} else 0
    if gpus:
        slots = [{"CUDA_VISIBLE_DEVICES": str(i)} for i in range(gpus) for _ in range(per_gpu)]
        if workers is not None:
            slots = slots[:workers]
        t = threads or max(1, cores // len(slots))
        return Split(slots, t, f"{len(slots)} workers on {gpus} GPU(s), {per_gpu} per GPU")
    own = {p.settings["threads"] for p in points if "threads" in p.settings}
    if own and threads is None:
        threads = max(own)
    if threads is not None and workers is not None:
        why = "as asked"
    elif threads is not None:
        workers, why = max(1, cores // threads), f"{cores} cores at {threads} thread(s) a point"
    elif workers is not None:
        threads, why = max(1, cores // workers), f"{cores} cores over {workers} worker(s)"
    else:
        threads, why = _model_threads(command, points[0])
        workers = max(1, cores // threads)
    workers = min(workers, len(points)) or 1
    return Split([{}] * workers, threads, why)


def _model_threads(command: str, point: Point) -> tuple[int, str]:
    """The threads the point's own command would pick for its network, and why."""
    from lottery.cli.main import build_parser, config_from_args
    from lottery.core.device import WORK_PER_THREAD, default_threads, multiply_adds
    from lottery.training.setup import load_data, make_model

    args = build_parser([command]).parse_args([command, *point.argv(Path("."))])
    cfg = config_from_args(args)
    data = load_data(cfg)
    model = make_model(cfg, data)
    t = default_threads(model, data.input_shape, cfg.batch_size)
    work = multiply_adds(model, data.input_shape) * cfg.batch_size * 3
    return t, (
        f"{cfg.model}: {work:.1e} multiply-adds a step, one thread per {WORK_PER_THREAD:.0e}"
    )


def check(options: Options, points: list[Point]) -> None:
    """Refuse worker and thread counts this machine cannot give."""
    from lottery.core.device import available_cores

    for name in ("workers", "threads", "per_gpu"):
        value = getattr(options, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    cores = available_cores()
    if options.threads is not None and options.threads > cores:
        raise ConfigError(f"--threads {options.threads} exceeds the {cores} CPU cores here")
    if options.workers and options.threads and options.workers * options.threads > cores:
        raise ConfigError(
            f"--workers {options.workers} × --threads {options.threads} exceeds the {cores} "
            "CPU cores here"
        )


def execute(
    out: Path,
    command: str,
    points: list[Point],
    options: Options,
    on_done: Callable[[Outcome], None],
) -> list[Outcome]:
    """Run `points` on this machine, split as `choose_split` decides (and says)."""
    split = choose_split(command, points, options.workers, options.threads, options.per_gpu)
    units = cohorts(out, command, points) if options.batched else [[p] for p in points]
    stacked = sum(len(u) > 1 for u in units)
    log.info(
        f"sweep: local, {len(split.slots)} worker(s) × {split.threads} thread(s) ({split.why})"
        + (f"; {stacked} cohort(s) of seeds stacked" if stacked else "")
    )
    return run_local(out, command, units, split, on_done)


# Commands that train several seeds as one stacked model (`--seeds ... --batched`).
BATCHABLE = ("imp", "prune", "at-init")


def cohorts(out: Path, command: str, points: list[Point]) -> list[list[Point]]:
    """`points` as units of work: those that differ only by `seed` (and have no folder yet, so
    nothing is left to resume) grouped into one stacked run each; every other point alone."""
    if command not in BATCHABLE:
        return [[p] for p in points]
    groups: dict[str, list[Point]] = {}
    for p in points:
        if SEED not in p.varying or (Path(out) / p.name).exists():
            groups[p.name] = [p]
        else:
            key = repr(sorted((k, str(v)) for k, v in p.varying.items() if k != SEED))
            groups.setdefault(key, []).append(p)
    return list(groups.values())


def run_local(
    out: Path,
    command: str,
    units: list[list[Point]],
    split: Split,
    on_done: Callable[[Outcome], None],
) -> list[Outcome]:
    """Run each unit (one point, or a cohort of points stacked as one run) on the split's worker
    slots; `on_done` sees each point's outcome as its unit ends."""
    slots: queue.Queue[dict[str, str]] = queue.Queue()
    for slot in split.slots:
        slots.put(slot)

    def one(unit: list[Point]) -> list[Outcome]:
        env = slots.get()
        try:
            return run_points(out, command, unit, split.threads, env)
        finally:
            slots.put(env)

    outcomes = []
    with ThreadPoolExecutor(len(split.slots)) as pool:
        pending = {pool.submit(one, u) for u in units}
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    for outcome in f.result():
                        outcomes.append(outcome)
                        on_done(outcome)
        except BaseException:  # Ctrl-C: the points' processes get the signal too; queue no more
            for f in pending:
                f.cancel()
            raise
    return outcomes


EXECUTOR = Executor(check, execute)
