"""Mask criteria against independent computations: Zhou et al.'s formulas, SNIP by hand, GraSP's
Hg by finite differences, SynFlow's closed form; exact counts, nesting and seeds for every one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lottery.core.storage import load_checkpoint
from lottery.models.registry import build_model
from lottery.pruning.criteria import (
    CRITERIA,
    GRASP_TEMPERATURE,
    SYNFLOW_ITERATIONS,
    Context,
    hessian_gradient,
    score,
    synflow_scores,
    training_batches,
)
from lottery.pruning.maskfile import MaskError
from lottery.pruning.masks import Mask
from lottery.pruning.pruner import GradualPruner
from lottery.pruning.schedules import Schedule
from lottery.pruning.selection import prune
from lottery.training.run import run_length
from lottery.training.trainer import Trainer
from tests.conftest import tiny


def small_context(seed: int = 0) -> Context:
    """Every Context field filled, on a small MLP with random data."""
    model = build_model("lenet_24_12", (1, 6, 6), 10, seed=seed)
    names = list(model.prunable)
    params = dict(model.named_parameters())
    start = build_model("lenet_24_12", (1, 6, 6), 10, seed=seed + 1)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(64, 1, 6, 6, generator=g), torch.randint(0, 10, (64,), generator=g)
    return Context(
        {n: params[n].detach() for n in names},
        initial={n: p.detach() for n, p in start.named_parameters() if n in names},
        model=model,
        sparsity=0.5,
        batches=training_batches(x, y, 16, seed),
        score_batches=2,
        input_shape=(1, 6, 6),
        movement={n: torch.randn(params[n].shape, generator=g) for n in names},
    )


def test_magnitude_and_random_are_todays_scores():
    ctx = small_context()
    mag = score("magnitude", ctx)
    assert all(torch.equal(mag[n], w.abs()) for n, w in ctx.weights.items())
    assert all(torch.equal(score("large_final", ctx)[n], mag[n]) for n in mag)
    gen = torch.Generator().manual_seed(7)
    expect = {n: torch.rand(w.shape, generator=gen) for n, w in ctx.weights.items()}
    got = score("random", ctx, seed=7)
    assert all(torch.equal(got[n], expect[n]) for n in expect)


def test_zhou_criteria_match_their_formulas_on_known_weights():
    wi = torch.tensor([[1.0, -2.0, 0.5], [-0.1, 3.0, -1.5]])
    wf = torch.tensor([[-3.0, 1.0, 0.4], [0.2, -3.5, -1.0]])
    ctx = Context({"w": wf}, initial={"w": wi})
    expect = {
        "small_final": [[-3.0, -1.0, -0.4], [-0.2, -3.5, -1.0]],
        "large_init": [[1.0, 2.0, 0.5], [0.1, 3.0, 1.5]],
        "small_init": [[-1.0, -2.0, -0.5], [-0.1, -3.0, -1.5]],
        "large_init_large_final_min": [[1.0, 1.0, 0.4], [0.1, 3.0, 1.0]],
        "small_init_small_final_max": [[-3.0, -2.0, -0.5], [-0.2, -3.5, -1.5]],
        "magnitude_increase": [[2.0, -1.0, -0.1], [0.1, 0.5, -0.5]],
        "movement": [[4.0, 3.0, 0.1], [0.3, 6.5, 0.5]],
    }
    for name, values in expect.items():
        torch.testing.assert_close(score(name, ctx)["w"], torch.tensor(values), msg=name)
    # the rewind weights, where they exist, are w_i
    rewound = Context({"w": wf}, initial={"w": wi}, rewind={"w": wf})
    assert torch.equal(score("movement", rewound)["w"], torch.zeros_like(wf))


def common_percentile_masks(wi: np.ndarray, wf: np.ndarray, alive: np.ndarray) -> list:
    """Zhou et al.'s released rule, computed directly: for every common cut c, keep the weights
    whose rank of |w_i| and rank of |w_f| (pruned weights ranked lowest) are both >= c."""

    def ranks(v):
        v = np.where(alive, v, -np.inf).ravel()
        r = np.empty(v.size, dtype=np.int64)
        r[np.argsort(v, kind="stable")] = np.arange(v.size)
        return r

    ri, rf = ranks(wi), ranks(wf)
    return [((ri >= c) & (rf >= c)).reshape(wi.shape) for c in range(wi.size + 1)]


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_init_and_final_criteria_keep_what_passes_one_common_percentile_in_both(sign):
    """large_init_large_final (sign +1) and small_init_small_final (−1) as in Zhou et al.'s code:
    every count the common-percentile rule reaches is kept exactly, other counts lie between the
    masks of the two neighbouring percentiles; nesting holds on a pruned layer."""
    name = "large_init_large_final" if sign > 0 else "small_init_small_final"
    g = torch.Generator().manual_seed(4)
    wi, wf = (
        torch.randn(30, 40, generator=g, dtype=torch.float64),
        torch.randn(30, 40, generator=g, dtype=torch.float64),
    )
    alive = torch.rand(30, 40, generator=g) > 0.3
    ctx = Context({"w": wf * alive}, initial={"w": wi}, mask=Mask({"w": alive}))
    cuts = common_percentile_masks(
        sign * wi.abs().numpy(), sign * (wf * alive).abs().numpy(), alive.numpy()
    )
    counts = [int(m.sum()) for m in cuts]
    exact = 0
    for kept in range(int(alive.sum()), 0, -37):
        mask = prune(ctx.mask, score(name, ctx), sparsity=1 - kept / wi.numel())
        got = mask.tensors["w"].numpy()
        assert int(got.sum()) == kept and not (got & ~alive.numpy()).any()
        c = max(c for c, n in enumerate(counts) if n >= kept)
        assert (got <= cuts[c]).all() and (cuts[c + 1] <= got).all()
        if counts[c] == kept:
            exact += 1
            assert np.array_equal(got, cuts[c])
    assert exact >= 5
    # the min/max forms compare the magnitudes, not their percentiles, and keep other weights
    direct = "large_init_large_final_min" if sign > 0 else "small_init_small_final_max"
    a = prune(ctx.mask, score(name, ctx), sparsity=0.8).tensors["w"]
    b = prune(ctx.mask, score(direct, ctx), sparsity=0.8).tensors["w"]
    assert not torch.equal(a, b)


def test_grasp_at_its_temperature_matches_a_closed_form_hessian_gradient_product():
    """At GraSP's default T = 200, Hg of the mean cross-entropy of logits / T against the exact
    Hessian of a softmax-linear model in float64: with p = softmax(Wx/T), the gradient is
    (p - onehot(y)) xᵀ / (T B) and the Hessian block is (diag(p) - ppᵀ) ⊗ x xᵀ / (T² B)."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(4, 6, generator=g, dtype=torch.float64)
    x = torch.randn(9, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (9,), generator=g)
    t, b = GRASP_TEMPERATURE, len(x)
    p = torch.softmax(x @ w.T / t, dim=1)
    grad = (p - F.one_hot(y, 4).double()).T @ x / (t * b)
    hg = torch.zeros_like(w)
    for i in range(b):  # H g summed example by example: (diag p - p pᵀ) G x xᵀ / (T² B)
        jac = torch.diag(p[i]) - torch.outer(p[i], p[i])
        hg += jac @ grad @ torch.outer(x[i], x[i]) / (t * t * b)
    model = nn.Sequential(nn.Linear(6, 4, bias=False)).double()
    batches = lambda n: iter([(x, y)] * n)  # noqa: E731
    got = hessian_gradient(model, {"0.weight": w}, batches(1), temperature=t)["0.weight"]
    torch.testing.assert_close(got, hg, rtol=1e-10, atol=0)
    ctx = Context({"0.weight": w}, model=model, batches=batches)
    torch.testing.assert_close(score("grasp", ctx)["0.weight"], w * hg, rtol=1e-10, atol=0)


def test_snip_equals_gradient_times_weight_computed_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x = torch.randn(5, 1, 2, 2)
    y = torch.tensor([0, 2, 1, 2, 0])
    w, b = model[1].weight.detach(), model[1].bias.detach()
    # softmax cross-entropy of a linear layer: dL/dW = (softmax(z) - onehot(y))^T x / B
    z = x.reshape(5, 4) @ w.T + b
    g = (torch.softmax(z, dim=1) - F.one_hot(y, 3).float()).T @ x.reshape(5, 4) / 5
    ctx = Context({"1.weight": w}, model=model, batches=lambda n: iter([(x, y)] * n))
    torch.testing.assert_close(score("snip", ctx)["1.weight"], (g * w).abs())
    # over two batches: the sensitivity of the summed loss
    ctx2 = Context(
        {"1.weight": w}, model=model, batches=lambda n: iter([(x, y)] * n), score_batches=2
    )
    torch.testing.assert_close(score("snip", ctx2)["1.weight"], (2 * g * w).abs())


def test_grasp_hessian_gradient_product_matches_finite_differences():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = torch.randn(8, 1, 2, 3, dtype=torch.float64), torch.randint(0, 3, (8,))
    names = ["1.weight", "3.weight"]
    params = dict(model.named_parameters())
    weights = {n: params[n].detach().clone() for n in names}

    def grad_at(shift: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        with torch.no_grad():
            for n in names:
                params[n].copy_(weights[n] + shift[n])
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        return [params[n].grad.clone() for n in names]

    g = dict(zip(names, grad_at({n: torch.zeros_like(w) for n, w in weights.items()}), strict=True))
    eps = 1e-5
    plus = grad_at({n: eps * g[n] for n in names})
    minus = grad_at({n: -eps * g[n] for n in names})
    with torch.no_grad():
        for n in names:
            params[n].copy_(weights[n])
    hg = hessian_gradient(model, weights, [(x, y)])
    for n, p, m in zip(names, plus, minus, strict=True):
        fd = (p - m) / (2 * eps)
        assert float((hg[n] - fd).norm() / fd.norm()) < 1e-4, n
    ctx = Context(weights, model=model, batches=lambda k: iter([(x, y)] * k))
    hg = hessian_gradient(model, weights, [(x, y)], temperature=GRASP_TEMPERATURE)
    for n in names:
        # GraSP prunes the highest S = -w * Hg; the engine keeps the highest, so it gets -S
        torch.testing.assert_close(score("grasp", ctx)[n], weights[n] * hg[n])


def test_synflow_on_a_two_layer_linear_network_equals_the_closed_form():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 5, bias=False), nn.Linear(5, 3, bias=False))
    w1, w2 = model[0].weight.detach(), model[1].weight.detach()
    weights = {"0.weight": w1, "1.weight": w2}
    s = synflow_scores(model, weights, (4,))
    # R = 1^T |W2| |W1| 1: dR/d|W1|_ij = (1^T|W2|)_i, dR/d|W2|_ki = (|W1| 1)_i
    a1, a2 = w1.abs().double(), w2.abs().double()
    torch.testing.assert_close(s["0.weight"], a2.sum(0)[:, None] * a1)
    torch.testing.assert_close(s["1.weight"], a2 * a1.sum(1)[None, :])
    assert model.training  # restored


def test_synflow_iterations_are_reproduced_by_the_engine_and_avoid_layer_collapse():
    model = build_model("lenet_300_100", (1, 28, 28), 10, seed=0)
    params = dict(model.named_parameters())
    names = list(model.prunable)
    ctx = Context(
        {n: params[n].detach() for n in names}, model=model, sparsity=0.999, input_shape=(1, 28, 28)
    )
    scores = score("synflow", ctx)
    assert max(float(s.max()) for s in scores.values()) < SYNFLOW_ITERATIONS + 2
    mask = prune(Mask.ones(model), scores, sparsity=0.999, scope="global")
    assert mask.total() - mask.kept() == round(0.999 * mask.total())
    survivors = {n: scores[n] >= SYNFLOW_ITERATIONS + 1 for n in names}
    assert all(torch.equal(mask.tensors[n], survivors[n]) for n in names)
    assert all(kept > 0 for kept, _ in mask.layer_counts().values()), mask.layer_counts()


def test_every_criterion_gives_exact_counts_nested_masks_and_is_seeded():
    for name in CRITERIA:
        ctx = small_context()
        a = score(name, ctx, seed=3)
        b = score(name, small_context(), seed=3)
        assert all(torch.equal(a[n], b[n]) for n in a), name
        ones = Mask({n: torch.ones_like(w, dtype=torch.bool) for n, w in ctx.weights.items()})
        first = prune(ones, a, sparsity=0.5, scope="global")
        assert first.total() - first.kept() == round(0.5 * first.total()), name
        ctx.mask, ctx.sparsity = first, 0.8
        again = prune(first, score(name, ctx, seed=4), fraction=0.6, scope="layer")
        assert again.is_subset_of(first), name
        for n, (kept, _) in again.layer_counts().items():
            before = first.layer_counts()[n][0]
            assert before - kept == round(0.6 * before), (name, n)
    r1, r2 = score("random", small_context(), seed=1), score("random", small_context(), seed=2)
    assert all(not torch.equal(r1[n], r2[n]) for n in r1)


def test_missing_context_and_unknown_names_are_clear_errors():
    w = {"w": torch.ones(2, 2)}
    with pytest.raises(MaskError, match="unknown pruning criterion 'gradient'"):
        score("gradient", Context(w))
    with pytest.raises(MaskError, match="'large_init' needs the initial"):
        score("large_init", Context(w))
    with pytest.raises(MaskError, match="'snip' needs the model"):
        score("snip", Context(w))
    with pytest.raises(MaskError, match="'movement-pruning' needs scores accumulated"):
        score("movement-pruning", Context(w))
    with pytest.raises(MaskError, match="seeded generator"):
        score("random", Context(w))


def test_movement_pruning_accumulates_minus_grad_times_weight_and_resumes_exactly(tmp_path):
    from lottery.training.setup import load_data, make_model

    class Crash(Exception):
        pass

    cfg = tiny(steps=40, eval_every=10, checkpoint_every=10)
    data = load_data(cfg)
    total, per_epoch = run_length(cfg, data)

    def pruner(run_dir):
        return GradualPruner(
            Schedule("agp", 0.7), total, every=10, steps_per_epoch=per_epoch,
            criterion="movement-pruning", log_path=run_dir / "pruning.jsonl",
        )  # fmt: skip

    p = pruner(tmp_path / "a")
    expect: dict[str, torch.Tensor] = {}
    calls = []
    inner = p.after_backward

    def spy(step, weights, grads):
        calls.append(step)
        for n, w in weights.items():
            expect[n] = expect.get(n, torch.zeros_like(w)) - grads[n] * w.detach()
        inner(step, weights, grads)

    p.after_backward = spy
    cfg_a = cfg.replace(extra={"pruning": p.settings()})
    Trainer(cfg_a, data, make_model(cfg, data), tmp_path / "a", pruner=p, progress=False).fit()
    assert calls == list(range(40))
    for n in expect:
        torch.testing.assert_close(p.movement[n], expect[n], rtol=0, atol=0)
    full = load_checkpoint(tmp_path / "a" / "checkpoints" / "final.pt")

    def crash(step):
        if step == 25:
            raise Crash

    q = pruner(tmp_path / "b")
    model = make_model(cfg, data)
    with pytest.raises(Crash):
        Trainer(cfg_a, data, model, tmp_path / "b", pruner=q, progress=False, on_step=crash).fit()
    r = pruner(tmp_path / "b")
    Trainer(cfg_a, data, make_model(cfg, data), tmp_path / "b", pruner=r, progress=False).fit()
    resumed = load_checkpoint(tmp_path / "b" / "checkpoints" / "final.pt")
    assert all(torch.equal(full["mask"][n], resumed["mask"][n]) for n in full["mask"])
    for n, t in full["pruner"]["movement"].items():
        assert torch.equal(t, resumed["pruner"]["movement"][n])
    assert full["pruner"]["records"] == resumed["pruner"]["records"]
