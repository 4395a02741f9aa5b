"""Tickets up to symmetry: align network B's hidden units to network A's by weight matching.

Weight matching (Ainsworth, Hayase & Srinivasa, "Git Re-Basin", ICLR 2023, Alg. 1) maximises
Σ_tensors <W_A, P(W_B)> over the model's permutations (`lottery.models.symmetry`): holding the others
fixed, each permutation's best choice is a linear assignment (`scipy.optimize.linear_sum_assignment`);
permutations are revisited in a seeded random order until a whole pass changes none. A model with a
single permutation (a one-hidden-layer MLP) is solved exactly. Permuting B changes none of its
outputs, so masks and error barriers can then be compared between the aligned networks (the
permutation conjecture of Entezari et al., ICLR 2022).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from lottery.models.symmetry import Axis, PermutationSpec
from lottery.pruning.masks import Mask

State = dict[str, torch.Tensor]
Perms = dict[str, np.ndarray]
MAX_PASSES = 100  # Ainsworth et al. report convergence within a few passes


@dataclass
class Alignment:
    """The permutations (perms[p][i]: B's unit matched to A's unit i), the objective Σ<A, P(B)>
    before and after, and how many passes weight matching took."""

    perms: Perms
    objective_before: float
    objective_after: float
    passes: int

    def to_dict(self) -> dict:
        return {
            "perms": {p: v.tolist() for p, v in self.perms.items()},
            "objective_before": self.objective_before,
            "objective_after": self.objective_after,
            "passes": self.passes,
        }


def _index(perm: np.ndarray, group: int) -> torch.Tensor:
    """The entries an axis takes under `perm` when each unit spans `group` consecutive entries."""
    idx = perm[:, None] * group + np.arange(group)[None, :]
    return torch.from_numpy(idx.reshape(-1))


def _take(t: torch.Tensor, axis: Axis, perm: np.ndarray) -> torch.Tensor:
    return t.index_select(axis.axis, _index(perm, axis.group).to(t.device))


def permute(state: State, spec: PermutationSpec, perms: Perms) -> State:
    """B's state with every permutation applied (tensors no permutation touches are shared)."""
    out = dict(state)
    for name, axes in spec.tensors().items():
        if name not in out:
            continue
        t = out[name]
        for perm, axis in axes:
            t = _take(t, axis, perms[perm])
        out[name] = t
    return out


def permute_mask(mask: Mask, spec: PermutationSpec, perms: Perms) -> Mask:
    """B's mask moved with its weights (a mask's tensors are named as the weights they mask)."""
    return Mask(permute(mask.tensors, spec, perms))


def _unit_rows(t: torch.Tensor, axis: Axis, size: int) -> np.ndarray:
    """The tensor as one float64 row per unit of `axis` (all its other entries flattened)."""
    moved = t.detach().cpu().double().movedim(axis.axis, 0)
    return moved.reshape(size, -1).numpy()


def objective(a: State, b: State, spec: PermutationSpec, perms: Perms) -> float:
    """Σ over permuted tensors of <A, P(B)>, in float64."""
    b = permute(b, spec, perms)
    names = spec.tensors()
    return float(sum(np.vdot(_flat(a[n]), _flat(b[n])) for n in names if n in a))


def _flat(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().reshape(-1).numpy()


def weight_matching(
    a: State, b: State, spec: PermutationSpec, *, seed: int = 0, max_passes: int = MAX_PASSES
) -> Alignment:
    """The permutations of B's units that best match A's weights (coordinate ascent over the
    permutations, each step an exact linear assignment)."""
    missing = [n for n in spec.tensors() if n in a and n not in b]
    if missing or a.keys() != b.keys():
        raise ValueError("the two networks hold different tensors; align only one architecture")
    tensors = spec.tensors()
    perms = {p: np.arange(n) for p, n in spec.sizes.items()}
    before = objective(a, b, spec, perms)
    rng = np.random.default_rng(seed)
    passes = 0
    for passes in range(1, max_passes + 1):  # noqa: B007 (reported below)
        changed = False
        for p in rng.permutation(sorted(perms)):
            n = spec.sizes[p]
            gain = np.zeros((n, n))
            for axis in spec.axes[p]:
                if axis.tensor not in a:
                    continue
                wb = b[axis.tensor]
                for other, other_axis in tensors[axis.tensor]:
                    if other_axis != axis:
                        wb = _take(wb, other_axis, perms[other])
                gain += _unit_rows(a[axis.tensor], axis, n) @ _unit_rows(wb, axis, n).T
            rows, cols = linear_sum_assignment(gain, maximize=True)
            old, new = gain[rows, perms[p]].sum(), gain[rows, cols].sum()
            if new > old + 1e-12 * max(1.0, abs(old)):
                perms[p], changed = cols, True
        if not changed:
            break
    return Alignment(perms, before, objective(a, b, spec, perms), passes)
