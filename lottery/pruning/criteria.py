"""Mask criteria: how important each weight is, given what is known when the mask is chosen.

A criterion maps a `Context` (current weights, θ0 and rewind weights, the model, the mask so far,
the target sparsity, seeded training batches, scores accumulated in training) to one score tensor
per masked weight. HIGHER = KEEP: the mask engine (`lottery.pruning.selection.prune`) removes the lowest.
A new criterion is one function plus one line in `lottery.pruning.names.CRITERIA`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lottery.core.batches import BatchStream
from lottery.core.device import memory_bound
from lottery.pruning.maskfile import MaskError
from lottery.pruning.masks import Mask
from lottery.pruning.names import CRITERIA, NEEDS, criterion_needs
from lottery.pruning.selection import prune

Batches = Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]
Scores = dict[str, torch.Tensor]
SYNFLOW_ITERATIONS = 100  # Tanaka et al. (NeurIPS 2020) prune in 100 iterations
GRASP_TEMPERATURE = 200.0  # logits / T in GraSP's loss (Wang et al., ICLR 2020, released code)


@dataclass
class Context:
    """What a criterion may look at; fields a criterion needs but finds None are an error."""

    weights: dict[str, torch.Tensor]  # the tensors to score (current weights), by name
    initial: dict[str, torch.Tensor] | None = None  # θ0
    rewind: dict[str, torch.Tensor] | None = None  # θk where the search rewinds
    model: nn.Module | None = None  # its other parameters and buffers are used as they are
    mask: Mask | None = None  # the mask so far (None: nothing pruned yet)
    sparsity: float | None = None  # the target sparsity of the prune that follows, where known
    batches: Batches | None = None  # batches(n): n seeded training batches (x, y) on the device
    score_batches: int = 1  # how many batches gradient criteria draw
    input_shape: tuple[int, ...] | None = None  # one example's shape (SynFlow's all-ones input)
    movement: dict[str, torch.Tensor] | None = None  # −Σ_t g_t·w_t accumulated during training
    scope: str = "global"  # the prune's scope: SynFlow iterates within it

    @property
    def start(self) -> dict[str, torch.Tensor] | None:
        """w_i of Zhou et al.: the rewind weights where they exist, else θ0."""
        return self.rewind if self.rewind is not None else self.initial

    def masked(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`weights` with the pruned entries of the mask so far set to zero."""
        if self.mask is None:
            return {n: w.detach() for n, w in weights.items()}
        return {
            n: w.detach() * self.mask.tensors[n].to(w.device, w.dtype) for n, w in weights.items()
        }


# ---------------------------------------------------------------------------------------------
# Weight-only criteria: final magnitude, random, and the family of Zhou, Lan, Liu & Yosinski,
# "Deconstructing Lottery Tickets" (NeurIPS 2019), with w_i at init (or rewind) and w_f now.


def magnitude(ctx: Context, gen: torch.Generator | None = None) -> Scores:
    """|w_f|: the LTH criterion (Frankle & Carbin 2019), Zhou et al.'s large_final."""
    return {n: w.detach().abs() for n, w in ctx.weights.items()}


def random(ctx: Context, gen: torch.Generator | None = None) -> Scores:
    """Uniform noise from a seeded CPU generator: the random-pruning control."""
    if gen is None:
        raise MaskError("random scoring needs a seeded generator for reproducibility")
    return {n: torch.rand(w.shape, generator=gen).to(w.device) for n, w in ctx.weights.items()}


def _pairs(ctx: Context) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    start = ctx.start
    assert start is not None
    for n, w in ctx.weights.items():
        yield n, start[n].detach().to(w.device, w.dtype), w.detach()


def small_final(ctx: Context, gen: torch.Generator | None = None) -> Scores:
    """−|w_f| (Zhou et al. 2019)."""
    return {n: -w.detach().abs() for n, w in ctx.weights.items()}


def large_init(ctx: Context, gen: torch.Generator | None = None) -> Scores:
    """|w_i| (Zhou et al. 2019)."""
    return {n: wi.abs() for n, wi, _ in _pairs(ctx)}


def small_init(ctx: Context, gen: torch.Generator | None = None) -> Scores:
    """−|w_i| (Zhou et al. 2019)."""
    return {n: -wi.abs() for n, wi, _ in _pairs(ctx)}


def _ranks(flat: torch.Tensor) -> torch.Tensor:
    """Each entry's rank in a 1-D float64 tensor (0 = lowest), ties in order of position."""
    ranks = torch.empty_like(flat)
    ranks[torch.argsort(flat, stable=True)] = torch.arange(
        flat.numel(), dtype=flat.dtype, device=flat.device
    )
    return ranks


def _percentiles(values: torch.Tensor, alive: torch.Tensor | None) -> torch.Tensor:
    """Each entry's rank within its tensor as a fraction in [0, 1), pruned entries lowest and
    ties in order of position: the per-layer percentile of Zhou et al.'s released code."""
    flat = values.reshape(-1).double()
    if alive is not None:
        flat = flat.masked_fill(~alive.reshape(-1).to(flat.device), -torch.inf)
    return (_ranks(flat) / flat.numel()).view(values.shape)


def _both_pass(ctx: Context, sign: float) -> Scores:
    """min of the per-layer percentiles of sign·|w_i| and sign·|w_f|: keeping the top k of it
    keeps the weights that pass one common percentile in both, the percentile chosen so that
    exactly k pass (ties at it in order of position)."""
    alive = ctx.mask.tensors if ctx.mask is not None else {}
    return {
        n: torch.minimum(
            _percentiles(sign * wi.abs(), alive.get(n)), _percentiles(sign * wf.abs(), alive.get(n))
        )
        for n, wi, wf in _pairs(ctx)
    }


def large_init_large_final(ctx: Context, gen: torch.Generator | None = None) -> Scores:
    """Keep a weight when both |w_i| and |w_f| pass one common per-layer percentile, as in Zhou
    et al.'s (2019) released code (under global scope the percentile is common to all layers)."""
    return _both_pass(ctx, 1.0)


def small_init_small_final(ctx: Context, gen: torch.Generator | None = None) -> Scores:
    """Keep a weight when both −|w_i| and −|w_f| pass one common per-layer percentile (Zhou et
    al. 2019, released code)."""
    return _both_pass(ctx, -1.0)


def large_init_large_final_min(ctx: Context, gen: torch.Generator | None = None) -> Scores:
    """min(|w_i|, |w_f|): the magnitudes compared directly rather than their percentiles."""
    return {n: torch.minimum(wi.abs(), wf.abs()) for n, wi, wf in _pairs(ctx)}


def small_init_small_final_max(ctx: Context, gen: torch.Generator | None = None) -> Scores:
    """−max(|w_i|, |w_f|): the magnitudes compared directly rather than their percentiles."""
    return {n: -torch.maximum(wi.abs(), wf.abs()) for n, wi, wf in _pairs(ctx)}


def magnitude_increase(ctx: Context, gen: torch.Generator | None = None) -> Scores:
    """|w_f| − |w_i| (Zhou et al. 2019)."""
    return {n: wf.abs() - wi.abs() for n, wi, wf in _pairs(ctx)}


def movement(ctx: Context, gen: torch.Generator | None = None) -> Scores:
    """|w_f − w_i| (Zhou et al. 2019)."""
    return {n: (wf - wi).abs() for n, wi, wf in _pairs(ctx)}


def movement_pruning(ctx: Context, gen: torch.Generator | None = None) -> Scores:
    """−Σ_t g_t·w_t accumulated over training steps (Sanh, Wolf & Rush, NeurIPS 2020)."""
    assert ctx.movement is not None
    return {n: ctx.movement[n].to(w.device) for n, w in ctx.weights.items()}


def lamp(ctx: Context, gen: torch.Generator | None = None) -> Scores:
    """LAMP (Lee, Park, Mo, Ahn & Shin, ICLR 2021): with a layer's surviving weights sorted by
    |w| ascending, the u-th scores w_u² / Σ_{v ≥ u} w_v², in float64. Scores are comparable
    across layers, so global pruning by them adapts each layer's rate, and every layer keeps its
    largest weight (score 1). Pruned weights score 0; ties in |w| are ordered by position."""
    out = {}
    for n, w in ctx.masked(ctx.weights).items():
        flat = w.reshape(-1).double().square()
        order = torch.argsort(flat, stable=True)
        sorted_sq = flat[order]
        tail = sorted_sq.flip(0).cumsum(0).flip(0)  # Σ_{v ≥ u} w_v² in sorted order
        scores = torch.zeros_like(flat)
        scores[order] = torch.where(tail > 0, sorted_sq / tail, torch.zeros_like(tail))
        out[n] = scores.view(w.shape)
    return out


# ---------------------------------------------------------------------------------------------
# Gradient criteria at initialisation: SNIP, GraSP, SynFlow.


def _loss(
    model: nn.Module,
    tensors: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Mean cross-entropy of logits / temperature with `tensors` standing in for the model's own
    (buffers copied, so BatchNorm statistics of the model stay untouched)."""
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    dtype = next(iter(tensors.values())).dtype
    out = functional_call(model, {**buffers, **tensors}, (x.to(dtype),))
    return F.cross_entropy(out / temperature, y)


def _leaves(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: w.detach().clone().requires_grad_(True) for n, w in weights.items()}


def gradients(
    model: nn.Module, weights: dict[str, torch.Tensor], batches, temperature: float = 1.0
) -> Scores:
    """g = Σ_b ∂L_b/∂w over the given batches, with `weights` in place of the model's own."""
    leaves = _leaves(weights)
    total = {n: torch.zeros_like(w) for n, w in leaves.items()}
    for x, y in batches:
        loss = _loss(model, leaves, x, y, temperature)
        grads = torch.autograd.grad(loss, list(leaves.values()))
        for n, g in zip(leaves, grads, strict=True):
            total[n] += g
    return total


def hessian_gradient(
    model: nn.Module, weights: dict[str, torch.Tensor], batches, temperature: float = 1.0
) -> Scores:
    """Hg by double back-propagation (Wang, Zhang & Grosse, ICLR 2020): H and g of Σ_b L_b."""
    batches = list(batches)
    g = gradients(model, weights, batches, temperature)
    leaves = _leaves(weights)
    total = {n: torch.zeros_like(w) for n, w in leaves.items()}
    for x, y in batches:
        loss = _loss(model, leaves, x, y, temperature)
        grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=True)
        z = sum((g[n] * gr).sum() for n, gr in zip(leaves, grads, strict=True))
        for n, hg in zip(leaves, torch.autograd.grad(z, list(leaves.values())), strict=True):
            total[n] += hg
    return total


def snip(ctx: Context, gen: torch.Generator | None = None) -> Scores:
    """|g ⊙ w| with g the loss gradient over `score_batches` batches (Lee, Ajanthan & Torr, ICLR
    2019: the connection sensitivity |∂L/∂c| of a multiplicative mask c at c = 1)."""
    assert ctx.model is not None and ctx.batches is not None
    w = ctx.masked(ctx.weights)
    g = gradients(ctx.model, w, ctx.batches(ctx.score_batches))
    return {n: (g[n] * w[n]).abs() for n in w}


def grasp(ctx: Context, gen: torch.Generator | None = None) -> Scores:
    """w ⊙ Hg, i.e. −S of GraSP (Wang, Zhang & Grosse, ICLR 2020), which prunes the weights with
    the HIGHEST S = −w ⊙ Hg; returning −S keeps the engine's rule "prune the lowest". The loss
    takes the logits at GraSP's temperature of 200."""
    assert ctx.model is not None and ctx.batches is not None
    w = ctx.masked(ctx.weights)
    hg = hessian_gradient(ctx.model, w, ctx.batches(ctx.score_batches), GRASP_TEMPERATURE)
    return {n: w[n] * hg[n] for n in w}


def synflow_scores(
    model: nn.Module, weights: dict[str, torch.Tensor], input_shape: tuple[int, ...]
) -> Scores:
    """One SynFlow pass (Tanaka et al., NeurIPS 2020): every parameter replaced by |θ| in float64,
    an all-ones input, R = sum of the outputs, score = (∂R/∂θ) ⊙ θ; BatchNorm in eval mode.
    `weights` stand in for the model's own; the model is left as it was."""
    was_training = model.training
    model.eval()
    try:
        device = next(iter(weights.values())).device
        tensors: dict[str, torch.Tensor] = {
            n: b.double() if b.is_floating_point() else b for n, b in model.named_buffers()
        }
        tensors.update({n: p.detach().abs().double() for n, p in model.named_parameters()})
        leaves = {n: w.detach().abs().double().requires_grad_(True) for n, w in weights.items()}
        tensors.update(leaves)
        ones = torch.ones((1, *input_shape), dtype=torch.float64, device=device)
        r = functional_call(model, tensors, (ones,)).sum()
        grads = torch.autograd.grad(r, list(leaves.values()))
        return {n: (g * leaves[n]).detach() for n, g in zip(leaves, grads, strict=True)}
    finally:
        model.train(was_training)


def synflow(ctx: Context, gen: torch.Generator | None = None) -> Scores:
    """Iterative SynFlow (Tanaka et al., NeurIPS 2020): re-score the masked network 100 times,
    pruning to density d^(k/100) at iteration k (d = the target density) within `ctx.scope`:
    one global threshold, or, with scope 'layer', each layer to that density on its own (the
    paper's layer-wise variant, re-scored every iteration).

    Scores rank weights by the iteration that removed them (survivors highest; within one
    iteration by their last SynFlow score), so the engine's exact-count prune at the target
    sparsity in the same scope reproduces the iterated mask exactly.
    """
    assert ctx.model is not None and ctx.input_shape is not None and ctx.sparsity is not None
    names = list(ctx.weights)
    mask = ctx.mask if ctx.mask is not None else Mask.ones(ctx.model, names)
    mask = Mask({n: mask.tensors[n].to(ctx.weights[n].device) for n in names})
    removed = {
        n: torch.zeros(w.shape, dtype=torch.float64, device=w.device)
        for n, w in ctx.weights.items()
    }
    last = {n: torch.zeros_like(r) for n, r in removed.items()}
    density = 1.0 - ctx.sparsity
    for k in range(1, SYNFLOW_ITERATIONS + 1):
        weights = {n: ctx.weights[n].detach() * mask.tensors[n] for n in names}
        s = synflow_scores(ctx.model, weights, ctx.input_shape)
        target = (
            ctx.sparsity if k == SYNFLOW_ITERATIONS else 1.0 - density ** (k / SYNFLOW_ITERATIONS)
        )
        new = prune(mask, s, sparsity=target, scope=ctx.scope)
        for n in names:  # torch.where, not boolean indexing: one pass per tensor
            alive = mask.tensors[n]
            removed[n] = torch.where(alive & ~new.tensors[n], k, removed[n])
            last[n] = torch.where(alive, s[n], last[n])
        mask = new
    for n in names:
        removed[n] = torch.where(mask.tensors[n], SYNFLOW_ITERATIONS + 1, removed[n])
    flat = torch.cat([last[n].reshape(-1) for n in names])
    ranks = (0.5 * _ranks(flat) / flat.numel()).split([removed[n].numel() for n in names])
    return {n: removed[n] + r.view(removed[n].shape) for n, r in zip(names, ranks, strict=True)}


def check(name: str, have: set[str] | None = None) -> tuple[str, ...]:
    """The Context fields criterion `name` needs; an unknown name, or (with `have`, the fields a
    caller can fill) one that needs something else, is refused before a command writes anything."""
    if name not in CRITERIA and ":" not in name:
        raise MaskError(f"unknown pruning criterion {name!r}; choose from {sorted(CRITERIA)}")
    try:
        needs = criterion_needs(name)
    except KeyError as e:
        raise MaskError(e.args[0]) from None
    unknown = [need for need in needs if need not in NEEDS]
    if unknown:
        raise MaskError(f"criterion {name!r} needs {unknown[0]!r}; choose needs from {list(NEEDS)}")
    missing = [need for need in needs if have is not None and need not in have]
    if missing:
        raise MaskError(
            f"criterion {name!r} needs {NEEDS[missing[0]]}, which is not available here"
        )
    return needs


def score(name: str | Callable, ctx: Context, seed: int | None = None) -> Scores:
    """Scores of `ctx.weights` by the criterion `name` (higher = keep), seeded where it draws;
    `name` may also be "package.module:function" or a function itself (its `needs` attribute, if
    any, says what it needs; nothing is recorded, so it need not be importable)."""
    if callable(name):
        fn, needs = name, tuple(getattr(name, "needs", ()))
        name = getattr(name, "__qualname__", repr(name))
    else:
        needs = check(name)  # before loading: an unknown name is a MaskError
        fn = CRITERIA.load(name)
    for need in needs:
        if getattr(ctx, need) is None:
            raise MaskError(f"criterion {name!r} needs {NEEDS[need]}")
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    runs_model = "model" in needs or "batches" in needs  # forward and backward: the run's threads
    with contextlib.nullcontext() if runs_model else memory_bound(ctx.weights.values()):
        return fn(ctx, gen)


def training_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> Batches:
    """batches(n): the first n batches of a seeded pass over (x, y), the same on every call."""

    def batches(n: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        stream = BatchStream(x, y, min(batch_size, len(x)), seed)
        return (stream.batch(i) for i in range(n))

    return batches
