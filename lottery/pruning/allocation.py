"""Layer allocation: how many weights each layer keeps when a target density is spread by shape.

ERK (Evci, Gale, Menick, Castro & Elsen, "Rigging the Lottery", ICML 2020) gives a layer of
shape (n_out, n_in, k_h, k_w) a density proportional to (n_in + n_out + k_h + k_w) /
(n_in·n_out·k_h·k_w); ER (Mocanu et al., Nat. Commun. 2018) to (n_in + n_out) / (n_in·n_out).
One scale ε makes the kept total match the target; a layer whose density would exceed 1 is kept
dense and ε is solved again for the others (as in Evci et al.'s released code). The mask engine
(`lottery.pruning.selection.prune`, scopes "erk" and "er") keeps exactly these counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from lottery.pruning.maskfile import MaskError

SHAPED = ("erk", "er")  # allocations computed from the layers' shapes


def raw_density(shape: Sequence[int], kind: str) -> float:
    """A layer's unscaled ERK or ER density; a 1-D tensor counts as n_out x 1."""
    if kind not in SHAPED:
        raise MaskError(f"unknown shape allocation {kind!r}; choose from {SHAPED}")
    n_out = shape[0]
    n_in = shape[1] if len(shape) > 1 else 1
    if kind == "er":
        return (n_in + n_out) / (n_in * n_out)
    return sum(shape) / math.prod(shape)


def layer_densities(
    shapes: Mapping[str, Sequence[int]], density: float, kind: str
) -> dict[str, float]:
    """Each layer's density under ERK or ER for an overall `density` of all of `shapes`' weights:
    ε·raw, with layers at ε·raw ≥ 1 kept dense and ε solved again for the rest."""
    if not 0.0 <= density <= 1.0:
        raise MaskError(f"density must be in [0, 1], got {density!r}")
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: raw_density(s, kind) for n, s in shapes.items()}
    target = density * sum(sizes.values())
    dense: set[str] = set()
    while True:
        rest = [n for n in shapes if n not in dense]
        budget = target - sum(sizes[n] for n in dense)
        scale = sum(raw[n] * sizes[n] for n in rest)
        eps = budget / scale if scale > 0 else 0.0
        over = [n for n in rest if eps * raw[n] > 1.0]
        if not over:
            return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}
        dense.update(over)


def layer_counts(shapes: Mapping[str, Sequence[int]], density: float, kind: str) -> dict[str, int]:
    """Whole numbers of kept weights per layer whose sum is exactly round(density x total):
    `layer_densities` rounded down, and the remainder given one by one to the layers with the
    largest fractional parts (ties: the earlier layer)."""
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    want = {n: d * sizes[n] for n, d in layer_densities(shapes, density, kind).items()}
    counts = {n: min(sizes[n], math.floor(w)) for n, w in want.items()}
    left = round(density * sum(sizes.values())) - sum(counts.values())
    order = sorted(
        (n for n in shapes if counts[n] < sizes[n]),
        key=lambda n: -(want[n] - counts[n]),
    )
    for n in order[: max(0, left)]:
        counts[n] += 1
    return counts
