"""Criterion cost: SynFlow's 100 iterations over ResNet-50's 25.5M weights (ResNet-18's with
--quick) next to one global magnitude prune of the same weights (the baseline, measured alternately
in the same run).

Each SynFlow iteration is one float64 forward/backward of an all-ones input (Tanaka et al.,
NeurIPS 2020) plus one exact-count global prune, so the ratio is about 100 prunes plus 100
passes; the target bounds it at 300x. The input is 3x64x64 (the weights, not the input size,
are what the criterion ranks; a 224x224 pass would time the convolutions, not the criterion).
"""

from __future__ import annotations

import torchvision

from experiments.benchmarks.common import Row, cli, interleaved
from lottery import Context, Mask, prunable_names, prune, score

INPUT_SHAPE = (3, 64, 64)


def run(quick: bool = False, device: str = "cpu") -> list[Row]:
    # architecture only, no download; --quick takes ResNet-18 (11.7M weights) to stay short
    arch = "resnet18" if quick else "resnet50"
    model = getattr(torchvision.models, arch)().to(device)
    names = prunable_names(model)
    params = dict(model.named_parameters())
    weights = {n: params[n].detach() for n in names}

    def synflow() -> None:
        ctx = Context(weights, model=model, sparsity=0.9, input_shape=INPUT_SHAPE)
        prune(Mask.ones(model, names), score("synflow", ctx), sparsity=0.9)

    def magnitude() -> None:
        prune(Mask.ones(model, names), score("magnitude", Context(weights)), sparsity=0.9)

    t_syn, t_mag = interleaved(synflow, magnitude, repeats=1 if quick else 3, device=device)
    return [
        Row(
            f"SynFlow 100 iterations vs one global magnitude prune, {arch}",
            t_syn,
            t_mag,
            "s",
            "<= 300x",
            device,
        )
    ]


if __name__ == "__main__":
    cli(run, __doc__)
