"""The Ray executor (`pip install 'lottery[ray]'`): each point a Ray task that reserves its CPU
threads and GPUs (fractions share a GPU), on a cluster joined with `--address` or, without one, a
cluster started on this machine for the sweep.

The points' folders must be on storage every node sees (as on a single machine, or a shared
filesystem on a real cluster): a task writes its point's folder, log and status there.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from pathlib import Path

from lottery.core.config import ConfigError
from lottery.sweeps.plan import Point
from lottery.sweeps.points import Outcome, run_point
from lottery.sweeps.run import Executor, Options

log = logging.getLogger("lottery.sweep")
CURRENT_CLUSTER = Path("/tmp/ray/ray_current_cluster")  # where `ray start` records its address


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'lottery[ray]'") from None
    return ray


def check(options: Options, points: list[Point]) -> None:
    """Ray is installed, the resources asked for make sense, and `--address` answers."""
    _ray()
    if options.batched:
        raise ConfigError("--batched stacks cohorts on the local executor only")
    if options.gpus < 0:
        raise ConfigError(f"--gpus must be >= 0, got {options.gpus}")
    if options.threads is not None and options.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {options.threads}")
    address = options.address
    if address is None:
        return
    if address == "auto":
        if not CURRENT_CLUSTER.is_file():
            raise ConfigError(
                "--address auto: no Ray cluster runs on this machine (start one with "
                "`ray start --head`, or leave out --address to start one for the sweep)"
            )
        address = CURRENT_CLUSTER.read_text().strip()
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--address {options.address}: expected auto or HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise ConfigError(
            f"--address {options.address}: no Ray cluster answers there ({e.strerror or e})"
        ) from None


def _task(out: str, command: str, point: Point, threads: int) -> Outcome:
    """One point on a Ray worker, its node recorded as the job."""
    import ray

    context = ray.get_runtime_context()
    job = {"executor": "ray", "node": context.get_node_id()[:12], "id": context.get_task_id()[:16]}
    return run_point(out, command, point, threads, job=job)


def execute(
    out: Path,
    command: str,
    points: list[Point],
    options: Options,
    on_done: Callable[[Outcome], None],
) -> list[Outcome]:
    """Run `points` as Ray tasks of `threads` CPUs (default 1) and `--gpus` GPUs each."""
    ray = _ray()
    started = not ray.is_initialized()
    if started:
        ray.init(
            address=options.address, include_dashboard=False, log_to_driver=False,
            logging_level=logging.ERROR, configure_logging=False,
        )  # fmt: skip
    threads = options.threads or 1
    nodes = len([n for n in ray.nodes() if n["Alive"]])
    log.info(
        f"sweep: ray, {len(points)} task(s) of {threads} CPU(s)"
        + (f" and {options.gpus} GPU(s)" if options.gpus else "")
        + f" on {nodes} node(s)"
    )
    task = ray.remote(num_cpus=threads, num_gpus=options.gpus, max_retries=0)(_task)
    pending = {task.remote(str(out), command, p, threads): p for p in points}
    outcomes = []
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                del pending[ref]
                outcomes.append(ray.get(ref))
                on_done(outcomes[-1])
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()
    return outcomes


EXECUTOR = Executor(check, execute)
