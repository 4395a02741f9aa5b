"""Layer allocations (ERK, ER) and LAMP against direct computations of the papers' formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lottery.models.registry import build_model
from lottery.pruning.allocation import layer_counts, layer_densities
from lottery.pruning.criteria import Context, score
from lottery.pruning.maskfile import MaskError
from lottery.pruning.masks import Mask
from lottery.pruning.selection import prune

LENET = {"fc1": (300, 784), "fc2": (100, 300), "fc3": (10, 100)}
CONV2 = {"c1": (64, 1, 3, 3), "c2": (64, 64, 3, 3), "f1": (256, 12544), "f2": (256, 256),
         "f3": (10, 256)}  # fmt: skip


def by_bisection(shapes: dict, density: float, kind: str) -> dict[str, float]:
    """The ERK/ER densities found another way: bisect the scale ε of min(1, ε·raw) until the
    kept total matches, raw = Σ dims / Π dims (ERK) or (n_in + n_out)/(n_in·n_out) (ER)."""
    raw = {}
    for n, s in shapes.items():
        n_out, n_in = s[0], s[1]
        raw[n] = sum(s) / math.prod(s) if kind == "erk" else (n_in + n_out) / (n_in * n_out)
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    target = density * sum(sizes.values())
    lo, hi = 0.0, 1e12
    for _ in range(400):
        mid = (lo + hi) / 2
        if sum(min(1.0, mid * raw[n]) * sizes[n] for n in shapes) < target:
            lo = mid
        else:
            hi = mid
    return {n: min(1.0, hi * raw[n]) for n in shapes}


@pytest.mark.parametrize("shapes", [LENET, CONV2], ids=["lenet_300_100", "conv2"])
@pytest.mark.parametrize("kind", ["erk", "er"])
@pytest.mark.parametrize("density", [0.2, 0.1, 0.05, 0.02])
def test_densities_match_a_direct_computation_and_counts_sum_exactly(shapes, kind, density):
    got = layer_densities(shapes, density, kind)
    want = by_bisection(shapes, density, kind)
    for n in shapes:
        assert got[n] == pytest.approx(want[n], rel=1e-9, abs=1e-12), n
    counts = layer_counts(shapes, density, kind)
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    assert sum(counts.values()) == round(density * sum(sizes.values()))
    for n in shapes:
        assert abs(counts[n] - got[n] * sizes[n]) < 1.0 and 0 <= counts[n] <= sizes[n]


def test_erk_gives_small_layers_more_density_and_keeps_the_densest_layer_whole():
    d = layer_densities(LENET, 0.1, "erk")
    assert d["fc3"] == 1.0 and d["fc1"] < d["fc2"] < 1.0
    # ERK and ER agree on fully connected layers (no kernel terms) ...
    assert layer_densities(LENET, 0.1, "er") == pytest.approx(d)
    # ... and differ on convolutions, whose kernel terms raise ERK's density
    erk, er = layer_densities(CONV2, 0.1, "erk"), layer_densities(CONV2, 0.1, "er")
    assert erk["c2"] != pytest.approx(er["c2"])


@pytest.mark.parametrize("model", ["lenet_300_100", "conv2"])
def test_the_mask_engine_keeps_exactly_the_allocated_counts_and_nests(model):
    net = build_model(model, (1, 28, 28), 10, seed=0)
    mask = Mask.ones(net)
    params = dict(net.named_parameters())
    scores = {n: params[n].detach().abs() for n in mask.names()}
    shapes = {n: tuple(t.shape) for n, t in mask.tensors.items()}
    before = mask
    for sparsity in (0.8, 0.9, 0.95, 0.98):
        new = prune(before, scores, sparsity=sparsity, scope="erk")
        assert {n: k for n, (k, _) in new.layer_counts().items()} == layer_counts(
            shapes, 1 - sparsity, "erk"
        )
        assert new.is_subset_of(before)
        for n, keep in new.tensors.items():  # within a layer, the highest scores are kept
            if 0 < int(keep.sum()) < keep.numel():
                assert scores[n][keep].min() >= scores[n][~keep].max()
        before = new
    # a fraction prunes that share of what remains overall, spread by shape
    step = prune(before, scores, fraction=0.5, scope="erk")
    assert step.kept() == round(0.5 * before.kept()) and step.is_subset_of(before)


def test_shape_allocations_refuse_structured_pruning_and_nonzero_rate_scales():
    net = build_model("lenet_300_100", (1, 28, 28), 10, seed=0)
    mask = Mask.ones(net)
    scores = {n: t.float() for n, t in mask.tensors.items()}
    with pytest.raises(MaskError, match="single weights"):
        prune(mask, scores, sparsity=0.5, scope="erk", granularity="filter")
    with pytest.raises(MaskError, match="can only be 0"):
        prune(mask, scores, sparsity=0.5, scope="erk", rate_scale={"classifier.4.weight": 0.5})
    out = prune(mask, scores, sparsity=0.9, scope="erk", rate_scale={"classifier.4.weight": 0.0})
    assert out.layer_density()["classifier.4.weight"] == 1.0
    assert out.kept() - 1000 == round(0.1 * (mask.total() - 1000))


def lamp_by_hand(w: np.ndarray) -> np.ndarray:
    """LAMP's score of each weight by its definition (Lee et al., ICLR 2021): with the layer's
    weights sorted by |w| ascending (ties by position), w_u² / Σ_{v ≥ u} w_v²."""
    flat = w.reshape(-1).astype(np.float64)
    order = sorted(range(flat.size), key=lambda i: (abs(flat[i]), i))
    out = np.zeros_like(flat)
    for rank, i in enumerate(order):
        tail = sum(flat[j] ** 2 for j in order[rank:])
        out[i] = flat[i] ** 2 / tail if tail > 0 else 0.0
    return out.reshape(w.shape)


def test_lamp_matches_the_papers_formula_and_keeps_every_layers_largest_weight():
    gen = torch.Generator().manual_seed(3)
    weights = {"a": torch.randn(12, 9, generator=gen), "b": torch.randn(4, 3, 2, 2, generator=gen)}
    weights["a"][0, :3] = 0.25  # ties in |w|
    weights["a"][1, :2] = -0.25
    got = score("lamp", Context(weights))
    for n, w in weights.items():
        np.testing.assert_allclose(got[n].numpy(), lamp_by_hand(w.numpy()), rtol=1e-12)
        assert got[n].dtype == torch.float64
        assert got[n].reshape(-1)[w.abs().argmax()] == 1.0
    ones = Mask({n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()})
    kept = prune(ones, got, sparsity=0.99, scope="global")
    assert all(int(t.sum()) >= 1 for t in kept.tensors.values())
    # pruned weights score 0 and do not change the survivors' scores
    half = prune(ones, got, sparsity=0.5, scope="global")
    again = score("lamp", Context(weights, mask=half))
    for n, w in weights.items():
        keep = half.tensors[n]
        assert torch.all(again[n][~keep] == 0)
        masked = (w * keep).numpy()
        np.testing.assert_allclose(again[n].numpy(), lamp_by_hand(masked), rtol=1e-12)


def test_an_imp_search_with_erk_scope_keeps_the_erk_counts_every_round(tmp_path):
    from lottery.core import layout
    from lottery.studies.imp import IMPConfig, run_imp
    from tests.conftest import tiny

    cfg = tiny(model="lenet_300_100", steps=10, eval_every=10, checkpoint_every=10)
    summary = run_imp(cfg, IMPConfig(rounds=2, fraction=0.5, scope="erk"), tmp_path, progress=False)
    assert len(summary["rounds"]) == 3
    kept = None
    for r in (1, 2):
        mask = Mask.load(layout.round_dir(tmp_path, r) / layout.MASK)
        shapes = {n: tuple(t.shape) for n, t in mask.tensors.items()}
        kept = mask.kept() if kept is None else kept
        want = layer_counts(shapes, mask.kept() / mask.total(), "erk")
        assert {n: k for n, (k, _) in mask.layer_counts().items()} == want
    assert Mask.load(layout.round_dir(tmp_path, 2) / layout.MASK).kept() == round(kept / 2)
