"""Running a sweep: check every point, record the plan, skip what is done, hand the rest to an
executor, retry failures, and say what is left.

Nothing is written before every point has passed its command's own checks and the executor's
options and extra are in place, so a corrected command runs in the same folder. Rerunning a sweep
skips finished points and resumes partial ones (each point's command resumes from its last
checkpoint); a point another process is running is left to it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lottery.core.config import ConfigError
from lottery.registry import Registry
from lottery.sweeps.plan import Point, Sweep, check_points
from lottery.sweeps.points import (
    BUSY,
    DONE,
    FAILED,
    Outcome,
    check_plan,
    point_state,
    record_plan,
)

log = logging.getLogger("lottery.sweep")

EXIT_INCOMPLETE = 4  # a sweep's exit status when some points are not done


@dataclass(frozen=True)
class Executor:
    """Where a sweep's points run: `check(options, points)` refuses what cannot run (before
    anything is written); `execute(out, command, points, options, on_done)` runs them, calling
    `on_done(outcome)` as each point ends."""

    check: Callable[..., None]
    execute: Callable[..., list[Outcome]]


# Executor name -> its Executor, each in its own module (loaded on first use).
EXECUTORS: Registry = Registry(
    "executor",
    {
        "local": "lottery.sweeps.local:EXECUTOR",
        "ray": "lottery.sweeps.ray_cluster:EXECUTOR",
        "slurm": "lottery.sweeps.slurm:EXECUTOR",
    },
)


class IncompleteSweep(RuntimeError):
    """Some points of a sweep are not done (failed, or run by another process); the message is
    the sweep's summary, naming each with its log."""


@dataclass(frozen=True)
class Options:
    """How an executor places points: the command line's executor flags (unset: its default)."""

    workers: int | None = None  # local: worker processes
    threads: int | None = None  # CPU threads per point
    per_gpu: int = 1  # local: workers per visible GPU
    batched: bool = False  # local: points that differ only by seed train as one stacked model
    gpus: float = 0  # ray: GPUs a point reserves (fractions share one)
    address: str | None = None  # ray: auto or HOST:PORT; None starts a local cluster
    partition: str | None = None  # slurm
    time: int = 60  # slurm: minutes per job, after which it is requeued and resumes
    gpus_per_task: int = 0  # slurm
    cpus_per_task: int | None = None  # slurm (default: threads)
    mem: str | None = None  # slurm: e.g. 4G
    array_parallelism: int = 256  # slurm: jobs of the array running at once


@dataclass
class SweepResult:
    """What a sweep run did: outcomes of the points it ran, and the points it skipped."""

    out: Path
    points: list[Point]
    done_before: list[str] = field(default_factory=list)
    outcomes: dict[str, Outcome] = field(default_factory=dict)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes.values() if o.state == FAILED]

    @property
    def busy(self) -> list[Outcome]:
        return [o for o in self.outcomes.values() if o.state == BUSY]

    @property
    def complete(self) -> bool:
        return not self.failed and not self.busy

    def summary(self) -> str:
        """What a sweep run says at its end: counts, then every point that is not done."""
        done = len(self.done_before) + sum(o.state == DONE for o in self.outcomes.values())
        lines = [
            f"sweep {self.out}: {done} of {len(self.points)} points done"
            + (f" ({len(self.done_before)} before this run)" if self.done_before else "")
        ]
        lines += [f"  failed: {o.name} (exit {o.exit}); log: {o.detail}" for o in self.failed]
        lines += [f"  busy: {o.name} is being run by {o.detail}" for o in self.busy]
        return "\n".join(lines)

    def require_complete(self) -> SweepResult:
        """This result, or IncompleteSweep when some point is not done (for scripts that go on
        to read every point)."""
        if not self.complete:
            raise IncompleteSweep(self.summary())
        return self


def prepare(
    sweep: Sweep, out: str | Path, executor: str = "local", options: Options | None = None
) -> tuple[list[Point], list[Point]]:
    """Every check a sweep makes before writing: the executor's name, options and extra, the
    folder (empty, or this same sweep), and each point not yet done against its command. Returns
    (all points, the ones not done)."""
    from lottery.training.runfolder import check_writable

    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
    out = Path(out)
    points = sweep.points()
    check_writable(out, "--out", kinds=("grid",))
    check_plan(out, sweep)
    todo = [p for p in points if point_state(out, p.name)[0] != DONE]
    check_points(sweep, todo, out)  # a finished point passed them when it ran
    EXECUTORS[executor].check(options or Options(), todo)
    return points, todo


def run_sweep(
    sweep: Sweep,
    out: str | Path,
    executor: str = "local",
    options: Options | None = None,
    retries: int = 0,
    progress: bool = False,
) -> SweepResult:
    """Run every point of `sweep` not yet done into `out`/POINT with `executor` (local, ray,
    slurm); a failed point is tried `retries` more times, and the others go on regardless."""
    if retries < 0:
        raise ConfigError(f"--retries must be >= 0, got {retries}")
    options = options or Options()
    out = Path(out)
    points, todo = prepare(sweep, out, executor, options)
    out.mkdir(parents=True, exist_ok=True)
    record_plan(out, sweep, points)
    result = SweepResult(out, points, done_before=[p.name for p in points if p not in todo])
    if result.done_before:
        log.info(f"sweep: {len(result.done_before)} of {len(points)} points already done")
    bar = _bar(len(todo), progress)
    try:
        for attempt in range(retries + 1):
            if not todo:
                break
            if attempt:
                log.info(f"sweep: retrying {len(todo)} failed point(s), attempt {attempt + 1}")

            def done(o: Outcome, last: bool = attempt == retries) -> None:
                result.outcomes[o.name] = o
                if o.state != FAILED or last:
                    bar(o)
                if o.state == FAILED:
                    log.info(f"sweep: {o.name} failed (exit {o.exit}); its log: {o.detail}")

            EXECUTORS[executor].execute(out, sweep.command, todo, options, done)
            todo = [p for p in todo if result.outcomes[p.name].state == FAILED]
    finally:
        bar(None)
    return result


def _bar(total: int, show: bool) -> Callable[[Outcome | None], None]:
    """A progress bar over points (with ETA); call with an outcome per point, None to close."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit="point", desc="sweep", disable=not show or not total)

    def update(outcome: Outcome | None) -> None:
        if outcome is None:
            bar.close()
        else:
            bar.set_postfix_str(f"{outcome.name}: {outcome.state}", refresh=False)
            bar.update(1)

    return update
