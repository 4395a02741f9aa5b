"""Mask overlap: Jaccard, overlap coefficient, Hamming distance, and how they compare with chance.

The chance baseline is two independent, uniformly random masks with the same kept count per layer
(Grosse & Backes 2020 compare tickets of different seeds this way). In a layer of n weights that
keeps k1 and k2, the intersection X is hypergeometric(n, k1, k2). We report the *exact*
expected Jaccard E[X / (k1 + k2 - X)] over that pmf (not the ratio of expectations, which differs
by O(1/n)), and the p-value P(X >= observed). Layers are independent, so the network's
intersection is a sum of independent hypergeometrics; its distribution is computed exactly by
convolving the per-layer pmfs after an exponential tilt that centres them on the observed value,
so that tail probabilities far below float64's range stay exact (reported as log10 p-values).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from lottery.core import layout
from lottery.core.storage import load_checkpoint
from lottery.pruning.maskfile import MaskError
from lottery.pruning.masks import Mask, load_sparse

# Entries of a (tilted) pmf below this fraction of its largest entry are dropped before convolving.
_TRUNCATE = 1e-30


@dataclass(frozen=True)
class PairStats:
    """Overlap of two masks over one layer or over all layers, with its chance baseline."""

    total: int
    kept_a: int
    kept_b: int
    intersection: int
    union: int
    jaccard: float
    overlap_coefficient: float
    hamming: int
    hamming_fraction: float
    expected_intersection: float
    expected_jaccard: float
    p_value: float
    log10_p_value: float
    z_score: float


@dataclass(frozen=True)
class MaskOverlap:
    """Overall and per-layer overlap of two masks."""

    overall: PairStats
    layers: dict[str, PairStats]

    def to_dict(self) -> dict:
        """Overall fields at the top level, the same fields per layer under "layers"."""
        return {
            **dataclasses.asdict(self.overall),
            "layers": {n: dataclasses.asdict(s) for n, s in self.layers.items()},
        }


def jaccard(intersection: int, kept_a: int, kept_b: int) -> float:
    """|A∩B| / |A∪B|; two empty masks are identical, so their Jaccard is 1."""
    union = kept_a + kept_b - intersection
    return intersection / union if union else 1.0


def overlap_coefficient(intersection: int, kept_a: int, kept_b: int) -> float:
    """|A∩B| / min(|A|, |B|); 1 when the smaller mask is empty (it is nested in the other)."""
    smaller = min(kept_a, kept_b)
    return intersection / smaller if smaller else 1.0


def _support(n: int, k1: int, k2: int) -> np.ndarray:
    return np.arange(max(0, k1 + k2 - n), min(k1, k2) + 1)


def expected_jaccard(n: int, k1: int, k2: int) -> float:
    """Exact E[X / (k1 + k2 - X)] for X ~ hypergeometric(n, k1, k2): random masks' mean Jaccard."""
    from scipy import stats  # scipy loads only when a chance baseline is computed

    _check_counts(n, k1, k2)
    if k1 == k2 == 0:
        return 1.0
    x = _support(n, k1, k2)
    return float(np.sum(stats.hypergeom.pmf(x, n, k1, k2) * x / (k1 + k2 - x)))


def _check_counts(n: int, k1: int, k2: int) -> None:
    if n < 1 or not 0 <= k1 <= n or not 0 <= k2 <= n:
        raise ValueError(f"need 0 <= kept <= total and total >= 1, got n={n}, k1={k1}, k2={k2}")


def _tilted(layers: list[tuple[int, int, int]], theta: float) -> tuple[int, np.ndarray, float]:
    """The pmf of the summed intersections tilted by exp(theta * x), as (offset, pmf, log M(theta)).

    Each layer's pmf p(x) becomes p(x) e^{theta x} / M(theta), is truncated where negligible, and
    the layers are convolved; log M(theta) is the sum of the layers' log normalisers.
    """
    from scipy import signal, special, stats

    offset, pmf, log_m = 0, np.ones(1), 0.0
    for n, k1, k2 in layers:
        x = _support(n, k1, k2)
        logq = stats.hypergeom.logpmf(x, n, k1, k2) + theta * x
        norm = special.logsumexp(logq)
        q = np.exp(logq - norm)
        keep = np.flatnonzero(q >= _TRUNCATE * q.max())
        lo, hi = keep[0], keep[-1] + 1
        pmf = np.clip(signal.fftconvolve(pmf, q[lo:hi]), 0.0, None)
        offset += int(x[lo])
        log_m += float(norm)
    return offset, pmf / pmf.sum(), log_m


def _tilted_mean(layers: list[tuple[int, int, int]], theta: float) -> float:
    from scipy import special, stats

    total = 0.0
    for n, k1, k2 in layers:
        x = _support(n, k1, k2)
        logq = stats.hypergeom.logpmf(x, n, k1, k2) + theta * x
        total += float(np.sum(x * special.softmax(logq)))
    return total


def log_sf_sum(layers: list[tuple[int, int, int]], observed: int) -> float:
    """ln P(X_1 + ... + X_L >= observed) for independent X_i ~ hypergeometric(n_i, k1_i, k2_i).

    Exact up to float rounding and the 1e-30 truncation: below the mean it sums the convolved pmf;
    above it, it tilts every layer so the tilted sum has mean `observed` and undoes the tilt in
    log space (P(S >= s) = M(θ) Σ_{x>=s} q(x) e^{-θx}), so p-values like 1e-900 are not lost.
    """
    from scipy import optimize, special, stats

    for layer in layers:
        _check_counts(*layer)
    lo = sum(max(0, k1 + k2 - n) for n, k1, k2 in layers)
    hi = sum(min(k1, k2) for _, k1, k2 in layers)
    if observed <= lo:
        return 0.0
    if observed > hi:
        return -math.inf
    if observed == hi:  # every layer at its maximum: an infinite tilt, so compute it directly
        return float(sum(stats.hypergeom.logpmf(min(k1, k2), n, k1, k2) for n, k1, k2 in layers))
    mean = sum(k1 * k2 / n for n, k1, k2 in layers)
    theta = 0.0
    if observed > mean:
        top = 1.0
        while _tilted_mean(layers, top) < observed:
            top *= 2.0
        theta = optimize.brentq(lambda t: _tilted_mean(layers, t) - observed, 0.0, top, rtol=1e-6)
    offset, pmf, log_m = _tilted(layers, theta)
    x = offset + np.arange(len(pmf))
    tail = (x >= observed) & (pmf > 0)
    if not tail.any():
        return -math.inf
    return float(min(0.0, log_m + special.logsumexp(np.log(pmf[tail]) - theta * x[tail])))


def expected_jaccard_sum(layers: list[tuple[int, int, int]]) -> float:
    """Exact E[S / (K1 + K2 - S)] where S sums the layers' independent random intersections."""
    k1 = sum(k for _, k, _ in layers)
    k2 = sum(k for _, _, k in layers)
    if k1 == k2 == 0:
        return 1.0
    offset, pmf, _ = _tilted(layers, 0.0)
    s = offset + np.arange(len(pmf))
    return float(np.sum(pmf * s / (k1 + k2 - s)))


def _chance(layers: list[tuple[int, int, int]], intersection: int) -> tuple[float, float]:
    """(expected Jaccard, ln p-value) of random masks with the layers' kept counts.

    One layer uses scipy's hypergeometric directly; several use the exact sum distribution.
    """
    if len(layers) == 1:
        from scipy import stats

        n, k1, k2 = layers[0]
        log_p = float(stats.hypergeom.logsf(intersection - 1, n, k1, k2))
        return expected_jaccard(n, k1, k2), min(0.0, log_p)
    return expected_jaccard_sum(layers), log_sf_sum(layers, intersection)


def _pair(layers: list[tuple[int, int, int]], intersection: int) -> PairStats:
    n = sum(t for t, _, _ in layers)
    ka = sum(k for _, k, _ in layers)
    kb = sum(k for _, _, k in layers)
    mean = sum(k1 * k2 / t for t, k1, k2 in layers)
    var = sum(_variance(*layer) for layer in layers)
    exp_j, log_p = _chance(layers, intersection)
    return PairStats(
        total=n,
        kept_a=ka,
        kept_b=kb,
        intersection=intersection,
        union=ka + kb - intersection,
        jaccard=jaccard(intersection, ka, kb),
        overlap_coefficient=overlap_coefficient(intersection, ka, kb),
        hamming=ka + kb - 2 * intersection,
        hamming_fraction=(ka + kb - 2 * intersection) / n,
        expected_intersection=mean,
        expected_jaccard=exp_j,
        p_value=math.exp(log_p),
        log10_p_value=log_p / math.log(10),
        z_score=(intersection - mean) / math.sqrt(var) if var > 0 else 0.0,
    )


def _variance(n: int, k1: int, k2: int) -> float:
    """Variance of hypergeometric(n, k1, k2): k2 (k1/n) (1 - k1/n) (n - k2) / (n - 1)."""
    return k2 * (k1 / n) * (1 - k1 / n) * (n - k2) / (n - 1) if n > 1 else 0.0


def compare_masks(a: Mask, b: Mask) -> MaskOverlap:
    """Overlap of two masks over the same tensors, per layer and overall, against chance."""
    if a.names() != b.names():
        raise MaskError(
            f"masks cover different tensors: {sorted(set(a.names()) ^ set(b.names()))[:3]}"
        )
    per_layer: dict[str, PairStats] = {}
    counts, inters = [], 0
    for name, ta in a.tensors.items():
        tb = b.tensors[name].cpu()
        ta = ta.cpu()
        if ta.shape != tb.shape:
            raise MaskError(
                f"mask tensor {name!r} has shapes {tuple(ta.shape)} and {tuple(tb.shape)}"
            )
        layer = (ta.numel(), int(ta.sum()), int(tb.sum()))
        inter = int((ta & tb).sum())
        per_layer[name] = _pair([layer], inter)
        counts.append(layer)
        inters += inter
    return MaskOverlap(overall=_pair(counts, inters), layers=per_layer)


def pairwise(masks: dict[str, Mask]) -> list[dict]:
    """compare_masks for every unordered pair, as JSON-able dicts labelled "a" and "b"."""
    return [
        {"a": la, "b": lb, **compare_masks(masks[la], masks[lb]).to_dict()}
        for la, lb in combinations(masks, 2)
    ]


def matrix(labels: list[str], pairs: list[dict], key: str = "jaccard") -> np.ndarray:
    """A symmetric label x label matrix of one overall metric from `pairwise` output.

    The diagonal is the metric of a mask with itself (1 for Jaccard and the overlap coefficient,
    0 for Hamming distances), and NaN for chance-baseline keys, which are only defined per pair.
    """
    diagonal = {"jaccard": 1.0, "overlap_coefficient": 1.0, "hamming": 0.0, "hamming_fraction": 0.0}
    index = {label: i for i, label in enumerate(labels)}
    out = np.full((len(labels), len(labels)), np.nan)
    np.fill_diagonal(out, diagonal.get(key, np.nan))
    for p in pairs:
        i, j = index[p["a"]], index[p["b"]]
        out[i, j] = out[j, i] = p[key]
    return out


def sign_agreement(
    initial: dict[str, torch.Tensor], final: dict[str, torch.Tensor], mask: Mask
) -> dict:
    """Fraction of kept weights whose sign at the end of training equals their sign at init.

    Zhou et al. 2019 ("Deconstructing Lottery Tickets") find that keeping the initial signs is
    what matters about a ticket's initialisation; this measures how many training preserved.
    """
    layers, agree, kept = {}, 0, 0
    for name, m in mask.tensors.items():
        m = m.cpu()
        same = torch.sign(initial[name].cpu()) == torch.sign(final[name].cpu())
        a, k = int((same & m).sum()), int(m.sum())
        layers[name] = a / k if k else 1.0
        agree, kept = agree + a, kept + k
    return {"overall": agree / kept if kept else 1.0, "layers": layers}


# ---------------------------------------------------------------------------------------------
# Reading masks from files and run directories.


def load_mask(path: str | Path) -> Mask:
    """A mask from a mask .npz, a sparse-weights .npz, an IMP round dir, or a run dir (last mask)."""
    return next(reversed(load_masks(path).values()))


def load_masks(path: str | Path, all_rounds: bool = False) -> dict[str, Mask]:
    """Masks found at `path`, labelled; an IMP run gives its last round (all rounds if asked).

    Accepted: a mask .npz or sparse-weights .npz file; a directory holding mask.npz (an IMP
    round); an IMP run directory (round_XX/mask.npz); a training run directory whose
    weights.npz or checkpoints/final.pt carries a mask (e.g. a gradual-pruning run).
    """
    path = Path(path)
    label = str(path)
    if path.is_file():
        return {label: _mask_file(path)}
    if not path.is_dir():
        raise MaskError(f"{path} does not exist")
    if (path / layout.MASK).exists():
        return {label: Mask.load(path / layout.MASK)}
    rounds = layout.round_dirs(path)
    if rounds:
        chosen = rounds if all_rounds else rounds[-1:]
        return {f"{label}/{r.name}": Mask.load(r / layout.MASK) for r in chosen}
    if (path / layout.WEIGHTS).exists():
        return {label: _mask_file(path / layout.WEIGHTS)}
    final = layout.checkpoint_dir(path) / layout.FINAL
    if final.exists() and load_checkpoint(final).get("mask") is not None:
        return {label: Mask(load_checkpoint(final)["mask"])}
    raise MaskError(
        f"{path} holds no mask: expected mask.npz, round_XX/mask.npz, weights.npz or a final "
        "checkpoint with a mask"
    )


def _mask_file(path: Path) -> Mask:
    """A mask .npz, or the mask carried by a sparse-weights .npz."""
    try:
        return Mask.load(path)
    except MaskError as first:
        try:
            return load_sparse(path)[1]
        except MaskError:
            raise first from None


def round_layer_density(run: Path) -> dict[str, dict[str, float]]:
    """Per-layer density of every round of an IMP run (from its masks), by round label."""
    return {r.name: Mask.load(r / layout.MASK).layer_density() for r in layout.round_dirs(run)}


def run_sign_agreement(run: Path) -> dict[str, dict]:
    """Sign agreement between θ0 and each round's final weights on that round's survivors."""
    initial = load_checkpoint(layout.step_checkpoint(layout.ticket_dir(run, 0), 0))["model"]
    out = {}
    for r in layout.round_dirs(run):
        weights = r / layout.TICKET / layout.WEIGHTS
        if weights.exists():
            final, _ = load_sparse(weights)
            out[r.name] = sign_agreement(initial, final, Mask.load(r / layout.MASK))
    return out
