"""Data-parallel runs under torchrun: the process group from the environment, rank helpers, checks.

torchrun gives every worker RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. A process
without them (or with WORLD_SIZE=1) is a plain single-process run, and every helper here is then a
no-op. Collectives time out after $LOTTERY_DIST_TIMEOUT seconds, so a rank that dies or hangs makes
the others fail with a clear error instead of waiting forever.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from lottery.core.config import ConfigError

TIMEOUT_ENV = "LOTTERY_DIST_TIMEOUT"
# Long enough for rank 0 to write a large checkpoint while the others wait, short enough that a
# lost rank is noticed within minutes (torch's own NCCL default is the same 10 minutes).
DEFAULT_TIMEOUT_S = 600.0
_TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

T = TypeVar("T")


class DistributedError(RuntimeError):
    """A collective that failed: a rank died, hung past the timeout, or holds different state."""


def launched() -> bool:
    """True when started by torchrun (or an equivalent environment) with more than one process."""
    return _env_int("WORLD_SIZE", 1) > 1


def world_size() -> int:
    """Number of processes in the run (1 without torchrun)."""
    return _env_int("WORLD_SIZE", 1) if launched() else 1


def rank() -> int:
    """This process's global rank (0 without torchrun)."""
    return _env_int("RANK", 0) if launched() else 0


def local_rank() -> int:
    """This process's rank on its machine, which picks its GPU."""
    return _env_int("LOCAL_RANK", 0) if launched() else 0


def is_main() -> bool:
    """Rank 0 alone writes files and prints; the others compute and read."""
    return rank() == 0


def timeout_s() -> float:
    """Collective timeout in seconds: $LOTTERY_DIST_TIMEOUT, default 600."""
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {text!r}")
    return value


def local_device(device: torch.device) -> torch.device:
    """Under torchrun, a bare `cuda` device becomes this process's GPU, cuda:LOCAL_RANK."""
    if not launched() or device.type != "cuda" or device.index is not None:
        return device
    n = torch.cuda.device_count()
    if local_rank() >= n:
        raise ConfigError(
            f"LOCAL_RANK {local_rank()} has no GPU: this machine shows {n}; "
            f"use torchrun --nproc-per-node {n} or fewer"
        )
    return torch.device("cuda", local_rank())


def setup(device: torch.device) -> bool:
    """Join torchrun's process group once (NCCL for CUDA, gloo for CPU); False for one process.

    Non-zero ranks also send their stdout to /dev/null, so results and tables print once.
    """
    if not launched():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if dist.is_initialized():
        if dist.get_backend() != backend:
            raise ConfigError(
                f"the process group uses {dist.get_backend()}, but this run is on {device} "
                f"(needs {backend}); use one device for every run of the command"
            )
        return True
    missing = [k for k in _TORCHRUN_ENV if k not in os.environ]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} is set but {', '.join(missing)} not; "
            "launch data-parallel runs with torchrun"
        )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(
            backend,
            timeout=timedelta(seconds=timeout_s()),
            device_id=device if device.type == "cuda" else None,
        )
    except (RuntimeError, ValueError) as e:
        raise DistributedError(
            f"rank {rank()} of {world_size()} could not join the process group at "
            f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within {timeout_s():g} s: {e}"
        ) from e
    atexit.register(teardown)
    if not is_main():
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    return True


def teardown() -> None:
    """Leave the process group (registered at exit by `setup`)."""
    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def guard(what: str) -> Iterator[None]:
    """Turn a failed collective into a DistributedError saying which rank, doing what, and how to resume.

    Backends report a lost peer or a timeout as a plain RuntimeError (or a DistError); subclasses
    (checkpoint errors, out-of-memory) pass through unchanged.
    """
    try:
        yield
    except Exception as e:
        if not launched() or not (type(e) is RuntimeError or isinstance(e, dist.DistError)):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistributedError(
            f"rank {rank()} of {world_size()} failed while {what}: {first} -- another rank "
            f"probably died or stopped responding (collectives time out after {timeout_s():g} s, "
            f"set by {TIMEOUT_ENV}); rerun the same command to resume from the last checkpoint"
        ) from e


def _group_ready() -> bool:
    if not launched():
        return False
    if not dist.is_initialized():
        raise DistributedError("lottery.core.distributed.setup(device) must run before collectives")
    return True


def barrier(what: str = "waiting for the other ranks") -> None:
    """Wait for every rank; on gloo a monitored barrier names the ranks that did not arrive."""
    if not _group_ready():
        return
    with guard(what):
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=timedelta(seconds=timeout_s()), wait_all_ranks=True)
        else:
            dist.barrier()


def from_main(value: T) -> T:
    """Rank 0's value of a small picklable decision, so every rank takes the same branch."""
    if not _group_ready():
        return value
    box = [value]
    with guard("agreeing with rank 0"):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_mask(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rank 0's boolean mask tensors on every rank; all ranks pass the same names and shapes."""
    if not _group_ready():
        return tensors
    names = list(tensors)
    flat = torch.cat([tensors[n].reshape(-1).to(torch.uint8) for n in names])
    with guard("receiving rank 0's mask"):
        dist.broadcast(flat, src=0)
    parts = flat.split([tensors[n].numel() for n in names])
    return {n: p.view(tensors[n].shape).bool() for n, p in zip(names, parts, strict=True)}


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of `values` over all ranks (float64, for evaluation totals)."""
    total = values.double()
    if not _group_ready():
        return total
    total = total.clone()
    with guard("summing evaluation results"):
        dist.all_reduce(total)
    return total


def shard(t: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous slice of `t` along dim 0 (ranks past the end get an empty slice)."""
    size = -(-len(t) // world_size())
    return t[rank() * size : (rank() + 1) * size]


def digest(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """A short content hash of each tensor (dtype, shape and bytes), for cross-rank comparison."""
    out = {}
    for name, t in tensors.items():
        raw = t.detach().reshape(-1).contiguous().cpu()
        h = hashlib.blake2b(f"{raw.dtype}{tuple(t.shape)}".encode(), digest_size=12)
        h.update(raw.view(torch.uint8).numpy().tobytes())
        out[name] = h.hexdigest()
    return out


def check_agree(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Raise DistributedError naming the rank and tensors where `tensors` differ from rank 0's."""
    if not _group_ready():
        return
    mine = digest(tensors)
    every: list[Any] = [None] * world_size()
    with guard(f"comparing {what} across ranks"):
        dist.all_gather_object(every, mine)
    for r, theirs in enumerate(every):
        if theirs != every[0]:
            keys = sorted(set(theirs) | set(every[0]))
            bad = [k for k in keys if theirs.get(k) != every[0].get(k)]
            raise DistributedError(
                f"{what} differ between rank 0 and rank {r} in {', '.join(bad[:3])}"
                f"{' and more' if len(bad) > 3 else ''}; every rank must hold identical state"
            )


def check_model_agrees(
    model: torch.nn.Module, mask: dict[str, torch.Tensor] | None, what: str
) -> None:
    """Fail loudly unless every rank holds the same weights (and mask tensors) at `what`."""
    if world_size() == 1:
        return
    state = {f"model {k}": v for k, v in model.state_dict().items()}
    state.update({f"mask {k}": v for k, v in (mask or {}).items()})
    check_agree(state, f"weights and masks at {what}")


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be an integer, got {text!r}") from None
