"""Instability: interpolation, BatchNorm re-estimation, and the sweep's records and refusals."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from lottery.build import load_data, make_model
from lottery.config import ConfigError
from lottery.instability import error_curve, instability_sweep, interpolate, reestimate_batchnorm
from lottery.masks import Mask
from tests.conftest import tiny


def bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 16 * 16, 10),
    )  # fmt: skip


def test_interpolation_endpoints_midpoint_and_integer_buffers():
    a, b = bn_net().state_dict(), {k: v.clone() for k, v in bn_net().state_dict().items()}
    for v in b.values():
        if v.is_floating_point():
            v.add_(1.0)
        else:
            v.fill_(7)
    assert all(torch.equal(interpolate(a, b, 0.0)[k], a[k]) for k in a)
    mid = interpolate(a, b, 0.5)
    assert torch.allclose(mid["0.weight"], a["0.weight"] + 0.5)
    assert torch.equal(mid["1.num_batches_tracked"], a["1.num_batches_tracked"])
    with pytest.raises(ValueError, match="different keys"):
        interpolate(a, {"x": torch.zeros(1)}, 0.5)


def test_batchnorm_statistics_are_the_average_over_training_batches():
    model = bn_net().eval()
    x = torch.randn(96, 1, 16, 16)
    reestimate_batchnorm(model, x, batch_size=32)
    bn = model[1]
    with torch.no_grad():
        means = [model[0](x[i : i + 32]).mean(dim=(0, 2, 3)) for i in (0, 32, 64)]
    assert torch.allclose(bn.running_mean, torch.stack(means).mean(0), atol=1e-6)
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 3
    assert not model.training  # the caller's mode is restored


def test_barrier_of_a_batchnorm_model_with_itself_is_zero():
    data = load_data(tiny())
    model = bn_net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    curve = error_curve(model, state, state, data, points=11, batch_size=64)
    assert len(set(curve["test_error"])) == 1 and len(set(curve["test_loss"])) == 1
    assert curve["alpha"][0] == 0.0 and curve["alpha"][-1] == 1.0
    with pytest.raises(ConfigError, match="at least 11"):
        error_curve(model, state, state, data, points=5)


def test_sweep_of_a_pruned_subnetwork_records_and_refuses_other_settings(tmp_path):
    cfg = tiny(steps=40)
    data = load_data(cfg)
    model = make_model(cfg, data)
    mask = Mask({n: torch.rand_like(p) > 0.5 for n, p in model.named_parameters() if p.dim() > 1})
    result = instability_sweep(cfg, [0, 20], tmp_path, mask=mask, progress=False)
    assert [r["step"] for r in result["rows"]] == [0, 20]
    assert all(math.isfinite(r["barrier"]) and r["barrier"] >= 0 for r in result["rows"])
    assert result["density"] == pytest.approx(mask.density()) and result["seeds"] == [1, 2]
    recorded = json.loads((tmp_path / "instability.json").read_text())
    assert recorded["rows"] == result["rows"]
    # the copies trained the subnetwork: their final weights are zero where the mask prunes
    final = torch.load(
        tmp_path / "step_0000020" / "copy_1" / "checkpoints" / "final.pt", weights_only=True
    )["model"]
    assert all(not final[n][~m].any() for n, m in mask.tensors.items())
    with pytest.raises(ConfigError, match="other settings"):
        instability_sweep(cfg, [0], tmp_path, mask=mask, seeds=(3, 4), progress=False)
    with pytest.raises(ConfigError, match="another configuration"):
        instability_sweep(
            cfg.replace(lr=0.01), [0], tmp_path / "other", dense=tmp_path / "dense", progress=False
        )
