"""Mask engine speed: global magnitude pruning of ResNet-50, and the masked vs dense training step.

Baselines, measured in the same run: `torch.nn.utils.prune.global_unstructured` (L1) over the same
25.5M conv/fc weights, and a dense LeNet-300-100 step (and PyTorch's prune hooks for reference).
"""

from __future__ import annotations

import time

import torch
import torchvision
from torch.nn.utils import prune as tprune

from experiments.benchmarks.common import Row, cli, interleaved, sync
from lottery import Context, Mask, build_model, prunable_names, prune, score


def global_pruning(quick: bool, device: str) -> Row:
    """prune(...) vs torch.nn.utils.prune.global_unstructured at 20% over ResNet-50."""
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

    t_ours, t_base = interleaved(ours, baseline, repeats=3 if quick else 5, device=device)
    return Row(
        "global L1 pruning, ResNet-50 (25.5M weights)",
        t_ours,
        t_base,
        "s",
        ">= 6x",
        device,
        higher_is_better=True,
    )


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
    return [global_pruning(quick, device), *masked_step(quick, device)]


if __name__ == "__main__":
    cli(run, __doc__)
