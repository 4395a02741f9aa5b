"""The mask engine: exact counts, ties, nesting, scopes, storage, interop, zeros during training."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as tprune

from lottery.models.registry import build_model
from lottery.pruning.criteria import Context, score
from lottery.pruning.maskfile import MaskError
from lottery.pruning.masks import (
    Mask,
    baked_state_dict,
    from_torch_prune,
    load_sparse,
    save_sparse,
    to_torch_prune,
)
from lottery.pruning.selection import prune, random_mask_like
from lottery.training.setup import load_data, make_model
from lottery.training.trainer import Trainer
from tests.conftest import tiny


def lenet(seed: int = 0) -> nn.Module:
    return build_model("lenet_300_100", (1, 28, 28), 10, seed=seed)


def weights(model: nn.Module, mask: Mask) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {n: params[n].detach() for n in mask.names()}


def test_layerwise_fraction_removes_exact_counts_with_output_at_half_rate():
    model = lenet()
    mask = Mask.ones(model)
    out = model.output_layer
    for _ in range(3):
        before = mask.layer_counts()
        mask_next = prune(
            mask,
            score("magnitude", Context(weights(model, mask))),
            fraction=0.2,
            scope="layer",
            rate_scale={out: 0.5},
        )
        assert mask_next.is_subset_of(mask)
        for name, (kept, _) in mask_next.layer_counts().items():
            rate = 0.1 if name == out else 0.2
            assert before[name][0] - kept == round(rate * before[name][0]), name
        mask = mask_next


def test_global_fraction_removes_exact_count_and_prefers_small_layers_weights():
    model = lenet()
    mask = Mask.ones(model)
    new = prune(
        mask, score("magnitude", Context(weights(model, mask))), fraction=0.2, scope="global"
    )
    assert mask.kept() - new.kept() == round(0.2 * mask.kept())
    again = prune(
        new, score("magnitude", Context(weights(model, new))), fraction=0.2, scope="global"
    )
    assert new.kept() - again.kept() == round(0.2 * new.kept())
    assert again.is_subset_of(new)
    # one threshold: every pruned weight is no larger than every kept one
    w = torch.cat([v.flatten() for v in weights(model, new).values()]).abs()
    keep = torch.cat([t.flatten() for t in new.tensors.values()])
    assert w[~keep].max() <= w[keep].min()


def test_ties_are_broken_by_position_deterministically():
    w = {"a": torch.ones(10), "b": torch.ones(6)}
    mask = Mask({n: torch.ones_like(t, dtype=torch.bool) for n, t in w.items()})
    m1 = prune(mask, score("magnitude", Context(w)), fraction=0.25, scope="global")
    assert m1.kept() == 12
    assert m1.tensors["a"].tolist() == [False] * 4 + [True] * 6
    assert m1.tensors["b"].all()
    m2 = prune(mask, score("magnitude", Context(w)), fraction=0.5, scope="layer")
    assert m2.tensors["a"].tolist() == [False] * 5 + [True] * 5
    assert m2.tensors["b"].tolist() == [False] * 3 + [True] * 3
    assert prune(mask, score("magnitude", Context(w)), fraction=0.25, scope="global").equal(m1)


def test_target_sparsity_is_exact_and_never_regrows():
    model = lenet()
    mask = Mask.ones(model)
    for s in (0.5, 0.8, 0.95):
        new = prune(
            mask, score("magnitude", Context(weights(model, mask))), sparsity=s, scope="layer"
        )
        for name, (kept, total) in new.layer_counts().items():
            assert total - kept == round(s * total), name
        assert new.is_subset_of(mask)
        mask = new
    lower = prune(
        mask, score("magnitude", Context(weights(model, mask))), sparsity=0.3, scope="global"
    )
    assert lower.equal(mask)
    glob = prune(
        Mask.ones(model),
        score("magnitude", Context(weights(model, mask))),
        sparsity=0.9,
        scope="global",
    )
    assert glob.total() - glob.kept() == round(0.9 * glob.total())


def test_rate_scale_zero_leaves_a_layer_unpruned_in_global_scope():
    model = lenet()
    mask = Mask.ones(model)
    new = prune(
        mask,
        score("magnitude", Context(weights(model, mask))),
        fraction=0.5,
        rate_scale={model.output_layer: 0.0},
    )
    assert new.tensors[model.output_layer].all()
    rest = [n for n in mask.names() if n != model.output_layer]
    kept = sum(new.layer_counts()[n][0] for n in rest)
    total = sum(new.layer_counts()[n][1] for n in rest)
    assert total - kept == round(0.5 * total)


def test_filter_pruning_removes_whole_filters_by_norm():
    model = build_model("conv2", (1, 28, 28), 10)
    mask = Mask.ones(model)
    new = prune(
        mask,
        score("magnitude", Context(weights(model, mask))),
        fraction=0.25,
        scope="layer",
        granularity="filter",
    )
    for name, t in new.tensors.items():
        per_filter = t.flatten(1).all(1) | ~t.flatten(1).any(1)
        assert per_filter.all(), f"{name}: filters must be kept or removed whole"
        assert int((~t.flatten(1).any(1)).sum()) == round(0.25 * t.shape[0])
    w = dict(model.named_parameters())["features.0.weight"].detach()
    norms = w.flatten(1).norm(dim=1)
    gone = ~new.tensors["features.0.weight"].flatten(1).any(1)
    assert norms[gone].max() <= norms[~gone].min()
    chan = prune(
        mask,
        score("magnitude", Context(weights(model, mask))),
        sparsity=0.5,
        scope="layer",
        granularity="channel",
    )
    t = chan.tensors["features.2.weight"]
    assert int((~t.any(dim=(0, 2, 3))).sum()) == round(0.5 * t.shape[1])


def test_random_scores_are_seeded_and_random_mask_keeps_layer_counts():
    model = lenet()
    mask = Mask.ones(model)
    a = prune(
        mask, score("random", Context(weights(model, mask)), seed=1), fraction=0.3, scope="layer"
    )
    b = prune(
        mask, score("random", Context(weights(model, mask)), seed=1), fraction=0.3, scope="layer"
    )
    c = prune(
        mask, score("random", Context(weights(model, mask)), seed=2), fraction=0.3, scope="layer"
    )
    assert a.equal(b) and not a.equal(c)
    ticket = prune(
        mask, score("magnitude", Context(weights(model, mask))), fraction=0.6, scope="global"
    )
    rnd = random_mask_like(ticket, seed=0)
    assert rnd.layer_counts() == ticket.layer_counts() and not rnd.equal(ticket)


def test_bad_rates_and_unknown_choices_are_errors():
    model = lenet()
    mask = Mask.ones(model)
    s = score("magnitude", Context(weights(model, mask)))
    for bad in (1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(MaskError, match=r"\[0, 1\)"):
            prune(mask, s, sparsity=bad)
    with pytest.raises(MaskError, match="scope"):
        prune(mask, s, fraction=0.2, scope="everything")
    with pytest.raises(MaskError, match="criterion"):
        score("gradient", Context(weights(model, mask)))
    with pytest.raises(MaskError, match="exactly one"):
        prune(mask, s, fraction=0.2, sparsity=0.5)
    with pytest.raises(MaskError, match="does not cover"):
        prune(mask, s, fraction=0.2, rate_scale={"nope.weight": 0.5})


def test_save_load_round_trip_is_bit_packed_and_mismatch_names_the_tensor(tmp_path):
    model = lenet()
    mask = prune(
        Mask.ones(model),
        score("magnitude", Context(weights(model, Mask.ones(model)))),
        sparsity=0.7,
    )
    path = tmp_path / "mask.npz"
    mask.save(path)
    assert path.stat().st_size < mask.total() / 8 * 1.05 + 4096
    back = Mask.load(path, model)
    assert back.equal(mask)
    other = build_model("lenet_300_50", (1, 28, 28), 10)
    with pytest.raises(MaskError, match="classifier.2.weight"):
        Mask.load(path, other)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(MaskError, match="mask.npz"):
        Mask.load(path)


def test_agrees_with_torch_nn_utils_prune():
    model = lenet()
    names = list(Mask.ones(model).names())
    ours_global = prune(
        Mask.ones(model),
        score("magnitude", Context(weights(model, Mask.ones(model)))),
        sparsity=0.6,
    )
    ref = lenet()
    modules = dict(ref.named_modules())
    params = [(modules[n.rsplit(".", 1)[0]], "weight") for n in names]
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=0.6)
    assert from_torch_prune(ref).equal(ours_global)
    ours_layer = prune(
        Mask.ones(model),
        score("magnitude", Context(weights(model, Mask.ones(model)))),
        fraction=0.3,
        scope="layer",
    )
    ref = lenet()
    for n in names:
        tprune.l1_unstructured(dict(ref.named_modules())[n.rsplit(".", 1)[0]], "weight", 0.3)
    assert from_torch_prune(ref).equal(ours_layer)


def test_export_to_torch_prune_and_baked_state_dict():
    model = lenet()
    mask = prune(
        Mask.ones(model),
        score("magnitude", Context(weights(model, Mask.ones(model)))),
        sparsity=0.5,
    )
    baked = baked_state_dict(model, mask)
    for n, t in mask.tensors.items():
        assert (baked[n][~t] == 0).all() and torch.equal(baked[n][t], model.state_dict()[n][t])
    to_torch_prune(model, mask)
    assert from_torch_prune(model).equal(mask)
    x = torch.randn(4, 1, 28, 28)
    plain = lenet()
    plain.load_state_dict(baked)
    assert torch.allclose(model(x), plain(x))


def test_sparse_weights_round_trip_exactly(tmp_path):
    model = lenet()
    mask = prune(
        Mask.ones(model),
        score("magnitude", Context(weights(model, Mask.ones(model)))),
        sparsity=0.8,
    )
    state = baked_state_dict(model, mask)
    save_sparse(state, mask, tmp_path / "w.npz")
    back, back_mask = load_sparse(tmp_path / "w.npz")
    assert back_mask.equal(mask)
    for k in state:
        assert torch.equal(state[k], back[k]), k


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_pruned_weights_stay_exactly_zero_during_training(tmp_path, optimizer):
    cfg = tiny(optimizer=optimizer, lr=0.01 if optimizer == "adam" else 0.05, weight_decay=1e-3)
    data = load_data(cfg)
    model = make_model(cfg, data)
    mask = prune(
        Mask.ones(model),
        score("magnitude", Context(weights(model, Mask.ones(model)))),
        sparsity=0.8,
    )
    seen = []

    def check(step: int) -> None:
        params = dict(trainer.model.named_parameters())
        seen.append(all(bool((params[n][~t] == 0).all()) for n, t in mask.tensors.items()))
        for n in mask.names():
            assert trainer.optimizer.state[params[n]], "optimizer state exists after a step"

    trainer = Trainer(cfg, data, model, tmp_path, mask=mask, progress=False, on_step=check)
    trainer.fit()
    assert len(seen) == cfg.steps and all(seen)


def test_apply_zeroes_optimizer_state_of_pruned_entries():
    model = lenet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(8, 1, 28, 28)).sum().backward()
    opt.step()
    mask = prune(
        Mask.ones(model),
        score("magnitude", Context(weights(model, Mask.ones(model)))),
        sparsity=0.5,
    )
    mask.apply_(model, opt)
    params = dict(model.named_parameters())
    for n, t in mask.tensors.items():
        st = opt.state[params[n]]
        assert (st["exp_avg"][~t] == 0).all() and (st["exp_avg_sq"][~t] == 0).all()
        assert (params[n][~t] == 0).all()


@pytest.mark.parametrize("values", ["continuous", "few_levels"])
def test_large_selection_matches_a_stable_sort(values):
    """Above a million weights the threshold is found by sampling; it must stay exact."""
    gen = torch.Generator().manual_seed(0)
    shapes = {"a": (700, 1000), "b": (300, 1100), "c": (50_000,)}
    if values == "continuous":
        w = {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
    else:  # heavy ties: 7 distinct magnitudes
        w = {n: torch.randint(-3, 4, s, generator=gen).float() for n, s in shapes.items()}
    start = Mask({n: torch.ones(s, dtype=torch.bool) for n, s in shapes.items()})
    start.tensors["a"][:10] = False  # already pruned entries stay pruned and count
    mask = prune(start, score("magnitude", Context(w)), sparsity=0.37, scope="global")
    flat = torch.cat([t.abs().flatten() for t in w.values()])
    keep0 = torch.cat([t.flatten() for t in start.tensors.values()])
    flat = torch.where(keep0, flat, -torch.inf)
    order = torch.sort(flat, stable=True).indices
    expected = torch.ones_like(keep0)
    expected[order[: round(0.37 * flat.numel())]] = False
    got = torch.cat([t.flatten() for t in mask.tensors.values()])
    assert torch.equal(got, expected)
