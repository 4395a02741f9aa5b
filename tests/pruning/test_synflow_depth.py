"""Iterative SynFlow on deep nets against an independent float64 reference (Tanaka et al., NeurIPS
2020): the scores of deep stacks span hundreds of orders of magnitude, so ranking them in float32
would overflow to inf and empty whole layers; ranked in float64 no layer is emptied and the masks
equal the reference's, globally and layer by layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lottery.models.registry import build_model
from lottery.pruning.criteria import SYNFLOW_ITERATIONS, Context, score
from lottery.pruning.masks import Mask
from lottery.pruning.selection import prune


def prune_lowest(scores: list[np.ndarray], keep: list[np.ndarray], target: float) -> list:
    """Exact-count prune of one group: already-pruned entries count, the lowest scores go next,
    ties in order of position (tensor order, then flat index)."""
    flat = np.concatenate(
        [np.where(k, s, -np.inf).ravel() for s, k in zip(scores, keep, strict=True)]
    )
    already = sum(int((~k).sum()) for k in keep)
    count = max(already, round(target * flat.size))
    kept = np.ones(flat.size, dtype=bool)
    kept[np.argsort(flat, kind="stable")[:count]] = False
    return np.split(kept, np.cumsum([k.size for k in keep])[:-1])


def iterate(score_fn, weights: list[np.ndarray], sparsity: float, scope: str) -> list[np.ndarray]:
    """SynFlow's 100 iterations to density d^(k/100), the last exactly at `sparsity`."""
    keep = [np.ones(w.shape, dtype=bool) for w in weights]
    for k in range(1, SYNFLOW_ITERATIONS + 1):
        target = sparsity if k == SYNFLOW_ITERATIONS else 1 - (1 - sparsity) ** (k / 100)
        scores = score_fn([w * m for w, m in zip(weights, keep, strict=True)])
        groups = (
            [list(range(len(weights)))] if scope == "global" else [[i] for i in range(len(weights))]
        )
        for group in groups:
            new = prune_lowest([scores[i] for i in group], [keep[i] for i in group], target)
            for i, flat in zip(group, new, strict=True):
                keep[i] = flat.reshape(weights[i].shape)
    return keep


def mlp_scores(biases: list[np.ndarray]):
    """SynFlow of a Linear/ReLU stack in closed form: with |θ| and an all-ones input no ReLU is
    active, a_l = |W_l| a_{l-1} + |b_l|, g_{l-1} = |W_l|ᵀ g_l from g_L = 1, score = |W_l| ⊙ g_l a_{l-1}ᵀ."""

    def scores(weights: list[np.ndarray]) -> list[np.ndarray]:
        acts = [np.ones(weights[0].shape[1])]
        for w, b in zip(weights, biases, strict=True):
            acts.append(np.abs(w) @ acts[-1] + np.abs(b))
        grad = np.ones(weights[-1].shape[0])
        out = [None] * len(weights)
        for i in reversed(range(len(weights))):
            out[i] = np.abs(weights[i]) * np.outer(grad, acts[i])
            grad = np.abs(weights[i]).T @ grad
        return out

    return scores


def engine_masks(model, input_shape, sparsity: float, scope: str) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    names = list(model.prunable)
    ctx = Context(
        {n: params[n].detach() for n in names},
        model=model,
        sparsity=sparsity,
        input_shape=input_shape,
        scope=scope,
    )
    mask = prune(Mask.ones(model, names), score("synflow", ctx), sparsity=sparsity, scope=scope)
    return mask.tensors


@pytest.mark.parametrize(
    ("depth", "sparsity", "scope"),
    [
        pytest.param(50, 0.9, "global", marks=pytest.mark.slow),
        pytest.param(40, 0.9, "global", marks=pytest.mark.slow),
        (12, 0.9, "layer"),
    ],
)
def test_deep_mlp_synflow_equals_the_float64_reference(depth, sparsity, scope):
    model = build_model("lenet" + "_100" * (depth - 1), (1, 8, 8), 10, seed=3)
    names = list(model.prunable)
    params = dict(model.named_parameters())
    weights = [params[n].detach().double().numpy() for n in names]
    biases = [params[n.replace("weight", "bias")].detach().double().numpy() for n in names]
    expected = iterate(mlp_scores(biases), weights, sparsity, scope)
    got = engine_masks(model, (1, 8, 8), sparsity, scope)
    total = sum(w.size for w in weights)
    assert sum(int(m.sum()) for m in got.values()) == total - round(sparsity * total)
    for name, want in zip(names, expected, strict=True):
        assert got[name].any(), f"{name} emptied"
        assert np.array_equal(got[name].numpy(), want), name


def test_layerwise_synflow_on_lenet_prunes_each_layer_on_its_own_every_iteration():
    """Tanaka et al.'s layer-wise variant re-scores and prunes every layer to d^(k/100) each
    iteration; keeping each layer's top of the global iteration ranks is a different mask."""
    model = build_model("lenet_300_100", (1, 8, 8), 10, seed=0)
    names = list(model.prunable)
    params = dict(model.named_parameters())
    weights = [params[n].detach().double().numpy() for n in names]
    biases = [params[n.replace("weight", "bias")].detach().double().numpy() for n in names]
    expected = iterate(mlp_scores(biases), weights, 0.9, "layer")
    got = engine_masks(model, (1, 8, 8), 0.9, "layer")
    for name, want, w in zip(names, expected, weights, strict=True):
        assert int(got[name].sum()) == w.size - round(0.9 * w.size)
        assert np.array_equal(got[name].numpy(), want), name
    global_ranks = engine_masks(model, (1, 8, 8), 0.9, "global")
    assert any(not torch.equal(global_ranks[n], got[n]) for n in names)


def conv2_scores(model):
    """SynFlow of Conv-2 by a hand-written float64 forward on |θ| and an all-ones input."""
    params = {n: p.detach().double() for n, p in model.named_parameters()}
    names = list(model.prunable)
    biases = [params[n.replace("weight", "bias")].abs() for n in names]

    def scores(weights: list[np.ndarray]) -> list[np.ndarray]:
        w = [torch.from_numpy(np.abs(x)).requires_grad_(True) for x in weights]
        x = torch.ones(1, 1, 8, 8, dtype=torch.float64)
        x = F.relu(F.conv2d(x, w[0], biases[0], padding=1))
        x = F.max_pool2d(F.relu(F.conv2d(x, w[1], biases[1], padding=1)), 2).flatten(1)
        x = F.relu(F.linear(x, w[2], biases[2]))
        x = F.relu(F.linear(x, w[3], biases[3]))
        r = F.linear(x, w[4], biases[4]).sum()
        grads = torch.autograd.grad(r, w)
        return [(g * t).detach().numpy() for g, t in zip(grads, w, strict=True)]

    return scores


@pytest.mark.slow
def test_conv2_synflow_at_two_percent_density_equals_the_float64_reference():
    model = build_model("conv2", (1, 8, 8), 10, seed=1)
    names = list(model.prunable)
    params = dict(model.named_parameters())
    weights = [params[n].detach().double().numpy() for n in names]
    expected = iterate(conv2_scores(model), weights, 0.98, "global")
    got = engine_masks(model, (1, 8, 8), 0.98, "global")
    for name, want in zip(names, expected, strict=True):
        assert np.array_equal(got[name].numpy(), want), name
