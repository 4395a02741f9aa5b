"""Overlap statistics beyond the basics: far tails, exact sums, enumeration, mask sources, signs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from lottery.analysis.overlap import (
    compare_masks,
    expected_jaccard,
    expected_jaccard_sum,
    load_masks,
    log_sf_sum,
    matrix,
    pairwise,
    sign_agreement,
)
from lottery.core.storage import save_checkpoint
from lottery.pruning.maskfile import MaskError
from lottery.pruning.masks import Mask, save_sparse


def brute_sum_pmf(layers):
    """Direct convolution of scipy's per-layer pmfs over their full supports: (offset, pmf)."""
    pmf, offset = np.ones(1), 0
    for n, k1, k2 in layers:
        x = np.arange(max(0, k1 + k2 - n), min(k1, k2) + 1)
        pmf = np.convolve(pmf, stats.hypergeom.pmf(x, n, k1, k2))
        offset += int(x[0])
    return offset, pmf


def test_expected_jaccard_equals_enumeration_of_all_masks():
    # every k2-subset of n positions is equally likely for a uniformly random mask
    n, k1, k2 = 7, 3, 4
    a = set(range(k1))
    subsets = list(itertools.combinations(range(n), k2))
    mean = sum(len(a & set(b)) / len(a | set(b)) for b in subsets) / len(subsets)
    assert expected_jaccard(n, k1, k2) == pytest.approx(mean, rel=1e-12)
    assert expected_jaccard(5, 0, 0) == 1.0  # two empty masks are identical
    with pytest.raises(ValueError, match="kept"):
        expected_jaccard(5, 6, 1)


@pytest.mark.parametrize("observed", [60, 75, 95, 120])
def test_sum_tail_matches_brute_force_convolution(observed):
    layers = [(300, 60, 90), (200, 100, 50), (50, 10, 10)]
    offset, pmf = brute_sum_pmf(layers)
    direct = pmf[observed - offset :].sum()
    assert math.exp(log_sf_sum(layers, observed)) == pytest.approx(direct, rel=1e-8)
    k1, k2 = 170, 150
    s = offset + np.arange(len(pmf))
    assert expected_jaccard_sum(layers) == pytest.approx(np.sum(pmf * s / (k1 + k2 - s)), rel=1e-10)


def test_far_tail_p_value_is_exact_below_float_range():
    """A p-value below 1e-320 underflows to 0, but log10 p stays exact: a fixed layer shifts scipy's tail."""
    big = (200_000, 40_000, 40_000)
    fixed = (1000, 1000, 300)  # keeps everything in a: its intersection is always 300
    observed = 12_000  # chance mean 8000, sd ~80
    want = stats.hypergeom.logsf(observed - 1, *big)
    got = log_sf_sum([big, fixed], observed + 300)
    assert want / math.log(10) < -320  # below float64's smallest number
    assert got == pytest.approx(want, rel=1e-6)
    assert log_sf_sum([big, fixed], 300) == 0.0  # at or below the minimum: certain
    assert log_sf_sum([big, fixed], 40_301) == -math.inf  # above the maximum: impossible
    top = stats.hypergeom.logpmf(40_000, *big)  # the maximum itself: one exact term
    assert log_sf_sum([big, fixed], 40_300) == pytest.approx(top, rel=1e-9)


def test_reported_log10_p_of_a_large_layer_matches_scipy():
    n, k = 20_000, 5_000
    a = torch.zeros(n, dtype=torch.bool)
    a[:k] = True
    b = torch.zeros(n, dtype=torch.bool)
    b[2_000 : 2_000 + k] = True  # intersection 3000 against a chance mean of 1250
    got = compare_masks(Mask({"w": a}), Mask({"w": b})).overall
    assert got.intersection == 3_000 and got.p_value == 0.0
    assert got.log10_p_value == pytest.approx(
        stats.hypergeom.logsf(2_999, n, k, k) / math.log(10), rel=1e-9
    )
    assert got.z_score == pytest.approx((3_000 - 1_250) / math.sqrt(stats.hypergeom.var(n, k, k)))


def test_pairwise_matrix_equals_jaccard_and_hamming_computed_from_the_bits():
    bits = {"a": [1, 1, 0, 0], "b": [1, 0, 1, 0], "c": [0, 0, 1, 1]}
    ms = {k: Mask({"w": torch.tensor(v, dtype=torch.bool)}) for k, v in bits.items()}
    pairs = pairwise(ms)
    assert [(p["a"], p["b"]) for p in pairs] == [("a", "b"), ("a", "c"), ("b", "c")]
    sets = {k: {i for i, x in enumerate(v) if x} for k, v in bits.items()}
    names = list(bits)
    jaccard = np.array([[len(sets[x] & sets[y]) / len(sets[x] | sets[y]) for y in names]
                        for x in names])  # fmt: skip
    hamming = np.array([[sum(p != q for p, q in zip(bits[x], bits[y], strict=True)) for y in names]
                        for x in names])  # fmt: skip
    assert np.allclose(matrix(names, pairs), jaccard)  # the diagonal included: a mask with itself
    assert np.array_equal(matrix(names, pairs, "hamming"), hamming)
    m = matrix(names, pairs)
    assert np.array_equal(m, m.T) and np.allclose(np.diag(m), 1.0)
    assert m[0, 1] == pytest.approx(1 / 3) and m[0, 2] == 0.0
    assert np.isnan(matrix(list(ms), pairs, "p_value")[0, 0])


def test_sign_agreement_counts_only_kept_weights():
    init = {"w": torch.tensor([1.0, -2.0, 3.0, -4.0])}
    final = {"w": torch.tensor([0.5, 2.0, -1.0, -9.0])}
    mask = Mask({"w": torch.tensor([True, True, False, True])})
    got = sign_agreement(init, final, mask)
    assert got["overall"] == pytest.approx(2 / 3) and got["layers"]["w"] == pytest.approx(2 / 3)


def test_masks_load_from_every_kind_of_source(tmp_path):
    m1 = Mask({"w": torch.tensor([[1, 0], [0, 1]], dtype=torch.bool)})
    m2 = Mask({"w": torch.tensor([[1, 0], [0, 0]], dtype=torch.bool)})
    for r, m in enumerate((Mask({"w": torch.ones(2, 2, dtype=torch.bool)}), m1, m2)):
        m.save(tmp_path / "imp" / f"round_{r:02d}" / "mask.npz")
    last = load_masks(tmp_path / "imp")
    assert list(last) == [f"{tmp_path / 'imp'}/round_02"] and last[
        f"{tmp_path / 'imp'}/round_02"
    ].equal(m2)
    assert len(load_masks(tmp_path / "imp", all_rounds=True)) == 3
    assert next(iter(load_masks(tmp_path / "imp" / "round_01").values())).equal(m1)
    save_sparse({"w": torch.randn(2, 2), "b": torch.zeros(2)}, m1, tmp_path / "weights.npz")
    assert next(iter(load_masks(tmp_path / "weights.npz").values())).equal(m1)
    save_checkpoint({"mask": m2.state()}, tmp_path / "pruned" / "checkpoints" / "final.pt")
    assert next(iter(load_masks(tmp_path / "pruned").values())).equal(m2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MaskError, match="holds no mask"):
        load_masks(tmp_path / "empty")
    with pytest.raises(MaskError, match="does not exist"):
        load_masks(tmp_path / "missing")
