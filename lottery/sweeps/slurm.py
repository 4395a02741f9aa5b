"""The Slurm executor (`pip install 'lottery[slurm]'`, through submitit): the points as one job
array, each task one point with its CPUs, GPUs, memory and time limit.

A task that is preempted or reaches its time limit is requeued by submitit and its point resumes
from its last checkpoint. Slurm's own logs go to SWEEP/slurm/, beside each point's log in
SWEEP/logs/. A point whose job is still queued or running when the sweep is run again is left to
that job. The sweep folder must be on storage the compute nodes share.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from lottery.core.config import ConfigError
from lottery.sweeps.plan import Point
from lottery.sweeps.points import (
    BUSY,
    FAILED,
    QUEUED,
    Outcome,
    log_path,
    read_status,
    run_point,
    write_status,
)
from lottery.sweeps.run import Executor, Options

log = logging.getLogger("lottery.sweep")
SLURM_LOGS = "slurm"  # submitit's folder of job scripts and Slurm's output, in the sweep folder
POLL_SECONDS = 2.0
# A task squeue has not listed for this long, with no result, was cancelled or killed; a
# requeued task can drop out of squeue for a few seconds while Slurm puts it back.
GONE_SECONDS = 30.0


def _submitit():
    try:
        import submitit
    except ImportError:
        raise ConfigError("--executor slurm needs submitit: pip install 'lottery[slurm]'") from None
    return submitit


def _slurm(*argv: str) -> str:
    """Run a Slurm client command; a missing or silent Slurm is one clear line."""
    if shutil.which(argv[0]) is None:
        raise ConfigError(f"--executor slurm: no Slurm on this machine ({argv[0]} not found)")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"--executor slurm: `{' '.join(argv)}` did not answer in 30 s") from None
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no reason given"])[-1]
        raise ConfigError(f"--executor slurm: `{' '.join(argv)}` failed: {reason}")
    return done.stdout


def check(options: Options, points: list[Point]) -> None:
    """submitit is installed, Slurm answers, and the partition and resources make sense."""
    _submitit()
    if options.batched:
        raise ConfigError("--batched stacks cohorts on the local executor only")
    partitions = {p.strip().rstrip("*") for p in _slurm("sinfo", "-h", "-o", "%P").split()}
    if options.partition is not None and options.partition not in partitions:
        raise ConfigError(
            f"--partition {options.partition}: Slurm has {', '.join(sorted(partitions))}"
        )
    for name in ("time", "array_parallelism", "cpus_per_task", "threads"):
        value = getattr(options, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if options.gpus_per_task < 0:
        raise ConfigError(f"--gpus-per-task must be >= 0, got {options.gpus_per_task}")


class PointTask:
    """One array task: run its point; on preemption or timeout submitit calls `checkpoint`,
    which requeues the same task (the point resumes from its last checkpoint)."""

    def __init__(self, out: str, command: str, point: Point, threads: int) -> None:
        self.out, self.command, self.point, self.threads = out, command, point, threads

    def __call__(self) -> Outcome:
        job = {"executor": "slurm", "id": _job_id()}
        outcome = run_point(self.out, self.command, self.point, self.threads, job=job)
        if outcome.exit == -signal.SIGTERM:
            # Slurm is stopping this job (requeue, preemption, time limit, scancel): end with no
            # result, so a requeued job's next start resumes the point and reports it
            os.kill(os.getpid(), signal.SIGKILL)
        return outcome

    def checkpoint(self, *args, **kwargs):
        return _submitit().helpers.DelayedSubmission(self, *args, **kwargs)


def _job_id() -> str:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "")


def _live_jobs(ids: list[str]) -> set[str]:
    """The ones of `ids` that Slurm still has queued or running."""
    if not ids:
        return set()
    text = _slurm(
        "squeue", "-h", "-r", "-o", "%i", "-j", ",".join(sorted({i.split("_")[0] for i in ids}))
    )
    return set(text.split()) & set(ids)


def _ended(out: Path, job, point: Point, may_go_on: bool) -> Outcome | None:
    """A task's outcome once it has one: what the point returned, a failure it raised, or (when
    it may not go on: Slurm has not listed it for GONE_SECONDS, and it left no result) cancelled
    or killed."""
    if job.paths.result_pickle.exists():
        kind, value = _submitit().core.utils.pickle_load(job.paths.result_pickle)
        if kind == "success":
            return value
        reason = " ".join(str(value).split())[-200:]
    elif may_go_on:
        return None
    else:
        reason = "ended without a result: cancelled, or killed"
    write_status(out, point.name, state=FAILED, exit=None)
    detail = f"{log_path(out, point.name)} (slurm job {job.job_id}: {reason})"
    return Outcome(point.name, FAILED, None, detail=detail)


def execute(
    out: Path,
    command: str,
    points: list[Point],
    options: Options,
    on_done: Callable[[Outcome], None],
) -> list[Outcome]:
    """Submit `points` as one job array and wait for it, reporting each task as it ends."""
    submitit = _submitit()
    queued = {p.name: read_status(out, p.name).get("job", {}).get("id", "") for p in points}
    live = _live_jobs([j for j in queued.values() if j])
    outcomes = []
    for p in points:
        if queued[p.name] in live:
            outcomes.append(Outcome(p.name, BUSY, detail=f"slurm job {queued[p.name]}"))
            on_done(outcomes[-1])
    points = [p for p in points if queued[p.name] not in live]
    if not points:
        return outcomes
    threads = options.cpus_per_task or options.threads or 1
    executor = submitit.SlurmExecutor(folder=Path(out) / SLURM_LOGS, max_num_timeout=100)
    params = {
        "time": options.time, "cpus_per_task": threads, "array_parallelism": options.array_parallelism,
        "job_name": f"lottery-{command}", "signal_delay_s": 60,
    }  # fmt: skip
    if options.partition:
        params["partition"] = options.partition
    if options.mem:
        params["mem"] = options.mem
    if options.gpus_per_task:
        params["gpus_per_task"] = options.gpus_per_task
    executor.update_parameters(**params)
    with executor.batch():
        jobs = [executor.submit(PointTask(str(out), command, p, threads)) for p in points]
    for p, job in zip(points, jobs, strict=True):
        write_status(out, p.name, state=QUEUED, job={"executor": "slurm", "id": job.job_id})
    log.info(f"sweep: slurm, job array {jobs[0].job_id.split('_')[0]} of {len(jobs)} task(s)")
    waiting = dict(zip(jobs, points, strict=True))
    missing: dict[str, float] = {}  # task -> when squeue first stopped listing it, without a result
    while waiting:
        live = _live_jobs([j.job_id for j in waiting])  # before the results: no race with an exit
        now = time.monotonic()
        for job in list(waiting):
            if job.job_id in live:
                missing.pop(job.job_id, None)
            since = missing.setdefault(job.job_id, now) if job.job_id not in live else now
            outcome = _ended(out, job, waiting[job], now - since < GONE_SECONDS)
            if outcome is None:
                continue
            del waiting[job]
            outcomes.append(outcome)
            on_done(outcome)
        if waiting:
            time.sleep(POLL_SECONDS)
    return outcomes


EXECUTOR = Executor(check, execute)
