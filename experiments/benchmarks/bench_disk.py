"""Bytes on disk per IMP round for LeNet-300-100 at ~20% density: our round record (bit-packed
mask + sparse final weights) vs a dense float32 state dict plus an int32 mask (OpenLTH's format).
Target: <= 15%. Sizes are exact, so this benchmark is not timed."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import torch

from experiments.benchmarks.common import Row, cli
from lottery import Context, Mask, baked_state_dict, build_model, prune, save_sparse, score


def round_bytes(rounds: int = 7) -> tuple[int, int]:
    """(our bytes, OpenLTH-format bytes) for LeNet-300-100 after 7 rounds of 20% (21% density)."""
    model = build_model("lenet_300_100", (1, 28, 28), 10)
    params = dict(model.named_parameters())
    mask = Mask.ones(model)
    for _ in range(rounds):  # IMP: 20% of the remaining weights per round
        mask = prune(
            mask, score("magnitude", Context({n: params[n] for n in mask.names()})), fraction=0.2
        )
    state = baked_state_dict(model, mask)
    with tempfile.TemporaryDirectory() as d:
        mask.save(Path(d) / "mask.npz")
        save_sparse(state, mask, Path(d) / "weights.npz")
        ours = sum(f.stat().st_size for f in Path(d).iterdir())
    dense, int_mask = io.BytesIO(), io.BytesIO()
    torch.save(state, dense)
    torch.save({n: t.int() for n, t in mask.tensors.items()}, int_mask)
    return ours, len(dense.getvalue()) + len(int_mask.getvalue())


def run(quick: bool = False, device: str = "cpu") -> list[Row]:
    ours, base = round_bytes()
    return [
        Row(
            "disk per IMP round, LeNet-300-100 at 21% density",
            ours / 1e6,
            base / 1e6,
            "MB",
            "<= 0.15x",
            "disk",
        )
    ]


if __name__ == "__main__":
    cli(run, __doc__)
