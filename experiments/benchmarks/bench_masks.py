"""Mask engine speed: global magnitude pruning of ResNet-50, and the masked vs dense training step.

Baselines, measured in the same run: `torch.nn.utils.prune.global_unstructured` (L1) over the same
25.5M conv/fc weights (idle at torch's threads, and on a CPU at 1 and 2 threads beside a process
spinning on one core), and a dense LeNet-300-100 step (and PyTorch's prune hooks for reference).
"""

from __future__ import annotations

import contextlib
import time

import torch
import torchvision
from torch.nn.utils import prune as tprune

from experiments.benchmarks.common import Row, busy_process, cli, interleaved, sync
from lottery import Context, Mask, build_model, prunable_names, prune, score


def global_pruning(quick: bool, device: str, threads: int | None = None, busy: bool = False) -> Row:
    """prune(...) vs torch.nn.utils.prune.global_unstructured at 20% over ResNet-50; with
    `threads`, both at that many threads, and with `busy`, beside a process spinning on a core."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with busy_process() if busy else contextlib.nullcontext():
            t_ours, t_base = _global_pruning(quick, device)
    finally:
        torch.set_num_threads(before)
    where = ""
    if threads is not None:
        where = f", {threads} thread{'s' if threads > 1 else ''}"
        where += " beside a busy process" if busy else ""
    return Row(
        f"global L1 pruning, ResNet-50 (25.5M weights){where}",
        t_ours,
        t_base,
        "s",
        ">= 5x" if busy else ">= 6x",
        device,
        higher_is_better=True,
    )


def _global_pruning(quick: bool, device: str) -> tuple[float, float]:
    model = torchvision.models.resnet50().to(device)
    names = prunable_names(model)
    params = dict(model.named_parameters())

    def ours() -> None:
        prune(
            Mask.ones(model),
            score("magnitude", Context({n: params[n] for n in names})),
            fraction=0.2,
        )

    def baseline() -> float:
        ref = torchvision.models.resnet50().to(device)  # fresh copy: set-up, not timed
        ref.load_state_dict(model.state_dict())
        mods = dict(ref.named_modules())
        pairs = [(mods[n.rsplit(".", 1)[0]], "weight") for n in names]
        sync(device)
        t0 = time.perf_counter()
        tprune.global_unstructured(pairs, pruning_method=tprune.L1Unstructured, amount=0.2)
        sync(device)
        return time.perf_counter() - t0

    return interleaved(ours, baseline, repeats=3 if quick else 5, device=device)


def masked_step(quick: bool, device: str) -> list[Row]:
    """A LeNet-300-100 SGD step with the fused mask multiply vs the same step dense."""
    x = torch.randn(128, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (128,), device=device)

    def stepper(masking: str):
        model = build_model("lenet_300_100", (1, 28, 28), 10).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        mask = prune(
            Mask.ones(model),
            score("magnitude", Context(dict(model.named_parameters()))),
            sparsity=0.8,
        )
        params = dict(model.named_parameters())
        plist = [params[n] for n in mask.names()]
        mlist = [t.float() for t in mask.tensors.values()]
        if masking == "hooks":
            tprune_masks = mask.tensors
            mods = dict(model.named_modules())
            for n, t in tprune_masks.items():
                tprune.custom_from_mask(mods[n.rsplit(".", 1)[0]], "weight", t)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        steps = 20 if quick else 100

        def run() -> None:
            for _ in range(steps):
                loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if masking == "fused":
                    with torch.no_grad():
                        torch._foreach_mul_(plist, mlist)

        return run

    dense, fused, hooks = stepper("dense"), stepper("fused"), stepper("hooks")
    repeats = 7 if quick else 15
    t_fused, t_dense = interleaved(fused, dense, repeats, device)
    t_hooks, t_dense2 = interleaved(hooks, dense, repeats, device)
    return [
        Row("masked step vs dense, LeNet-300-100", t_fused, t_dense, "s", "<= 1.03x", device),
        Row(
            "(reference) torch prune hooks step vs dense",
            t_hooks,
            t_dense2,
            "s",
            "<= 1.20x",
            device,
        ),
    ]


def run(quick: bool = False, device: str = "cpu") -> list[Row]:
    contended = (
        [global_pruning(quick, device, t, busy=True) for t in (1, 2)] if device == "cpu" else []
    )
    return [global_pruning(quick, device), *contended, *masked_step(quick, device)]


if __name__ == "__main__":
    cli(run, __doc__)
