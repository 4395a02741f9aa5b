"""Where and how a run computes: the device, CUDA fast-path switches, autocast and compilation."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from lottery.core import distributed
from lottery.core.config import ConfigError, TrainConfig


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA where there is none is an error.

    Under torchrun a bare `cuda` means this process's own GPU, cuda:LOCAL_RANK.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} was asked for, but this machine has no usable CUDA GPU")
    return distributed.local_device(torch.device(name))


# Multiply-adds per step that make one more CPU thread pay. Measured on 2 cores
# (experiments/benchmarks/bench_threads.py): LeNet-300-100 at batch 60 (about 5e7 per training
# step) runs 1.4x slower on 2 threads than on 1 when idle and 2.5x slower beside a busy process,
# while Conv-2 (about 6e9) runs 2x faster on 2 threads when idle.
WORK_PER_THREAD = 1e9


def multiply_adds(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of the conv and linear layers in one forward pass of one example."""
    total = 0

    def count(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += module.in_features * module.out_features
        else:  # a convolution: every output element costs one kernel's worth
            per_output = module.weight[0].numel()
            total += per_output * output[0].numel()

    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    probe(model, input_shape, count, [m for m in model.modules() if isinstance(m, kinds)])
    return total


def activation_bytes(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """The largest input plus output of any one layer in one example's forward pass, in bytes:
    what an evaluation batch holds per example at its peak (no gradients are kept)."""
    peak = 0

    def measure(_module: nn.Module, inputs: tuple, output: object) -> None:
        nonlocal peak
        tensors = [t for t in (*inputs, output) if torch.is_tensor(t)]
        peak = max(peak, sum(t.numel() * t.element_size() for t in tensors))

    probe(model, input_shape, measure, [m for m in model.modules() if not any(m.children())])
    return peak


def probe(
    model: nn.Module, input_shape: tuple[int, ...], hook: Callable, modules: list[nn.Module]
) -> None:
    """One example's no-grad forward pass in eval mode (BatchNorm statistics stay untouched),
    calling `hook` after each of `modules`."""
    handles = [m.register_forward_hook(hook) for m in modules]
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()


# Activation bytes an evaluation batch may hold on a CPU: about what a server core's L2 and its
# share of the L3 cache keep; larger batches spill to memory and run slower (conv2 on Fashion-MNIST,
# one thread: 2.1 s at batch 64, 3.0 s at 2048; `experiments/benchmarks/profile_run.py`).
CPU_EVAL_BYTES = 16 * 2**20
MAX_EVAL_BATCH = 8192


def eval_batch_size(
    model: nn.Module, input_shape: tuple[int, ...], device: torch.device, copies: int = 1
) -> int:
    """The largest power of two of examples whose activations (`copies` models side by side)
    fit the CPU's cache budget, or an eighth of the free GPU memory; from 16 to 8192."""
    per_example = max(1, activation_bytes(model, input_shape) * copies)
    cuda = device.type == "cuda"
    budget = torch.cuda.mem_get_info(device)[0] // 8 if cuda else CPU_EVAL_BYTES
    fits = max(1, budget // per_example)
    return max(16, min(MAX_EVAL_BATCH, 1 << (fits.bit_length() - 1)))


def available_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0))


def check_threads(threads: int | None) -> None:
    """--threads at most the cores this process may use."""
    if threads is not None and threads > available_cores():
        raise ConfigError(
            f"--threads {threads} exceeds the {available_cores()} CPU cores available here"
        )


def default_threads(model: nn.Module, input_shape: tuple[int, ...], examples: int) -> int:
    """CPU threads for a run that names none: one thread per `WORK_PER_THREAD` multiply-adds of a
    step (a training step costs about three forward passes), at least one, at most the cores this
    process may use. Small networks get one thread: there a second one costs more in
    synchronisation than it saves, and many times more when the machine is busy."""
    work = multiply_adds(model, input_shape) * examples * 3
    return max(1, min(available_cores(), int(work // WORK_PER_THREAD)))


@contextlib.contextmanager
def run_threads(threads: int | None) -> Iterator[None]:
    """A run's CPU intra-op thread count (`--threads`; None keeps torch's) while it trains, and the
    caller's given back after, so a notebook or test that trained a run keeps its own."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def memory_bound(tensors: Iterable[torch.Tensor]) -> contextlib.AbstractContextManager:
    """One CPU thread for elementwise work over `tensors` (nothing changes on a GPU): such work is
    memory-bound, so a second thread gains little on an idle machine and, beside other work, costs
    many times over in its threads' waits (ResNet-50's 25.5M weights: 0.36 s at two threads beside
    two busy processes, against 0.01-0.05 s at one)."""
    if all(t.device.type == "cpu" for t in tensors):
        return run_threads(1)
    return contextlib.nullcontext()


def check_fast_path(cfg: TrainConfig, device: torch.device) -> None:
    """CUDA-only switches are errors elsewhere, so a CPU run never silently differs."""
    if cfg.bf16 and device.type != "cuda":
        raise ConfigError("--bf16 autocast is for CUDA runs; CPU results stay in float32")
    if cfg.extra.get("cuda_graphs") and device.type != "cuda":
        raise ConfigError(f"--cuda-graphs needs a CUDA device; this run is on {device}")


def compiled(fn: Callable, cfg: TrainConfig) -> Callable:
    """`fn` under torch.compile for --compile; --cuda-graphs adds CUDA-graph replay
    (mode "reduce-overhead"), which pays off for small static-shape models bound by launches."""
    if cfg.extra.get("cuda_graphs"):
        return torch.compile(fn, mode="reduce-overhead")
    return torch.compile(fn) if cfg.compile else fn


def memory_format(model: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """Conv nets on CUDA use channels_last (faster tensor-core convs) unless --no-channels-last."""
    convs = any(p.dim() == 4 for p in model.parameters())
    if device.type == "cuda" and convs and cfg.extra.get("channels_last", True):
        return model.to(memory_format=torch.channels_last)
    return model


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA for --bf16; a no-op otherwise."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def place(model: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """The model on its device and memory format; in a data-parallel run, BatchNorm synchronised
    so that it takes its statistics over the global batch as one process would."""
    model = memory_format(model.to(device), cfg, device)
    if distributed.world_size() == 1 or not has_batchnorm(model):
        return model
    if device.type != "cuda":
        raise ConfigError(
            "data-parallel BatchNorm models need CUDA, where SyncBatchNorm takes statistics "
            "over the global batch as one process would; on CPU train them in one process"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def has_batchnorm(model: nn.Module) -> bool:
    """Whether any BatchNorm layer is present (its running statistics then matter for eval)."""
    return any(isinstance(module, _BATCHNORMS) for module in model.modules())
