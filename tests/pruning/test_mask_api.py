"""Mask pitfalls in a user's own code: torch.nn.utils.prune hooks, and keeping a mask through
an optimizer that would otherwise revive pruned weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as tprune

from lottery.models.registry import build_model
from lottery.pruning.criteria import Context, score
from lottery.pruning.maskfile import MaskError
from lottery.pruning.masks import Mask, from_torch_prune
from lottery.pruning.selection import prune


def test_ones_refuses_a_model_carrying_torch_prune_hooks():
    model = build_model("lenet_64_32", (1, 28, 28), 10)
    tprune.l1_unstructured(model.classifier[0], "weight", amount=0.5)
    with pytest.raises(MaskError, match="from_torch_prune"):
        Mask.ones(model)
    mask = from_torch_prune(model)  # the documented way to read it
    assert mask.layer_counts()["classifier.0.weight"][0] == 784 * 64 // 2


def test_keep_holds_pruned_weights_at_zero_through_adam_steps():
    torch.manual_seed(0)
    model = build_model("lenet_64_32", (1, 28, 28), 10)
    params = dict(model.named_parameters())
    mask = prune(Mask.ones(model), score("magnitude", Context({n: params[n] for n in Mask.ones(model).names()})),
                 sparsity=0.7)  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
    before = {n: params[n].detach().clone() for n in mask.names()}
    handle = mask.keep_(model, opt)
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for n, keep in mask.tensors.items():
        assert not params[n][~keep].any(), n
        assert not torch.equal(params[n][keep], before[n][keep]), n  # survivors trained
    handle.remove()  # without the hook, Adam's moments bring pruned weights back
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert any(params[n][~m].any() for n, m in mask.tensors.items())
