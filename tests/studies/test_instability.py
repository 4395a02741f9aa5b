"""Instability: interpolation, BatchNorm re-estimation, the sweep's pairs, records and refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from lottery.cli.main import main
from lottery.core.config import NON_RESULT_FIELDS, ConfigError
from lottery.pruning.masks import Mask
from lottery.studies import instability as instability_module
from lottery.studies.instability import (
    error_barrier,
    error_curve,
    instability_sweep,
    interpolate,
    reestimate_batchnorm,
)
from lottery.training import engine
from lottery.training.setup import load_data, make_model
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
    for r in result["rows"]:  # each pair's barrier from its own curve, and the mean over pairs
        errors = [p["test_error"] for p in r["pairs"]]
        barriers = [max(e) - (e[0] + e[-1]) / 2 for e in errors]
        assert [p["barrier"] for p in r["pairs"]] == pytest.approx(barriers, abs=1e-12)
        assert r["barrier"] == pytest.approx(sum(barriers) / len(barriers), abs=1e-12)
        assert math.isfinite(r["barrier"])
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


TINY_FLAGS = [
    "--model", "lenet_64_32", "--dataset", "synthetic", "--steps", "20", "--batch-size", "32",
    "--optimizer", "sgd", "--lr", "0.05", "--device", "cpu", "--no-progress",
]  # fmt: skip
# An unstable tiny setting (SGD at a high rate from step 0) whose three pairs give clearly
# different barriers (2.8%, 4.7% and 6.7% at 1 and 2 threads).
UNSTABLE = dict(steps=30, lr=0.2, eval_every=30)
PAIRS = [(1, 2), (3, 4), (5, 6)]


class Killed(Exception):
    """Stands in for a kill in the middle of a sweep."""


def _refuse(*args, **kwargs):
    raise AssertionError("trained or evaluated a copy that was already recorded")


def _copies(out) -> dict:
    """Modification times of every copy's records (they change when a copy trains)."""
    return {
        p: p.stat().st_mtime_ns
        for p in sorted(out.glob("step_*/copy_*/*"))
        if p.is_file() and p.name != "config.json"
    }


def test_several_pairs_give_per_pair_barriers_with_their_statistics(tmp_path, monkeypatch):
    cfg = tiny(**UNSTABLE)
    curve = instability_module.error_curve
    calls = []

    def killed_on_second_curve(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Killed
        return curve(*args, **kwargs)

    monkeypatch.setattr(instability_module, "error_curve", killed_on_second_curve)
    with pytest.raises(Killed):  # killed after pair 3:4 trained, before its curve was recorded
        instability_sweep(cfg, [0], tmp_path, seeds=PAIRS, progress=False)
    monkeypatch.setattr(instability_module, "error_curve", curve)
    before = _copies(tmp_path)
    assert {p.parent.name for p in before} == {"copy_1", "copy_2", "copy_3", "copy_4"}
    result = instability_sweep(cfg, [0], tmp_path, seeds=PAIRS, progress=False)
    after = _copies(tmp_path)
    assert {p: after[p] for p in before} == before  # the four finished copies did not retrain
    assert result["pairs"] == [list(p) for p in PAIRS] and result["seeds"] == [1, 2, 3, 4, 5, 6]

    (row,) = result["rows"]
    pairs = row["pairs"]
    barriers = np.array([p["barrier"] for p in pairs])
    assert [p["seeds"] for p in pairs] == [list(p) for p in PAIRS]
    assert len(set(barriers.tolist())) == 3
    half = stats.t.ppf(0.975, 2) * barriers.std(ddof=1) / np.sqrt(3)
    assert row["n_pairs"] == 3
    assert row["barrier"] == pytest.approx(barriers.mean())
    assert row["barrier_std"] == pytest.approx(barriers.std(ddof=1))
    assert row["barrier_ci95_low"] == pytest.approx(barriers.mean() - half)
    assert row["barrier_ci95_high"] == pytest.approx(barriers.mean() + half)
    gaps = [abs(p["endpoint_errors"][0] - p["endpoint_errors"][1]) for p in pairs]
    assert row["endpoint_gap"] == pytest.approx(np.mean(gaps)) and max(gaps) > 0
    for p in pairs:  # each barrier is the one its recorded curve gives
        a, b = p["seeds"]
        recorded = json.loads((tmp_path / "step_0000000" / f"curve_{a}_{b}.json").read_text())
        assert recorded == p and len(p["test_error"]) == 11
        assert p["barrier"] == error_barrier(p["test_error"])
        assert p["endpoint_errors"] == [p["test_error"][0], p["test_error"][-1]]
    assert json.loads((tmp_path / "instability.json").read_text())["rows"] == result["rows"]

    # a rerun trains and evaluates nothing; a rerun with one more pair trains only that pair
    monkeypatch.setattr(engine.Engine, "loop", _refuse)
    monkeypatch.setattr(instability_module, "error_curve", _refuse)
    assert instability_sweep(cfg, [0], tmp_path, seeds=PAIRS, progress=False) == result
    monkeypatch.undo()
    grown = instability_sweep(cfg, [0], tmp_path, seeds=[*PAIRS, (7, 8)], progress=False)
    assert grown["rows"][0]["pairs"][:3] == pairs and grown["rows"][0]["n_pairs"] == 4
    assert {p: t for p, t in _copies(tmp_path).items() if p in after} == after
    with pytest.raises(ConfigError, match="not dropped"):
        instability_sweep(cfg, [0], tmp_path, seeds=PAIRS, progress=False)


def test_a_one_pair_sweep_recorded_before_pairs_reads_back_without_training(tmp_path, monkeypatch):
    cfg = tiny(steps=20, eval_every=20)
    first = instability_sweep(cfg, [0], tmp_path, progress=False)
    # the layout of a one-pair sweep before several pairs: step_k/curve.json, settings "seeds"
    step = tmp_path / "step_0000000"
    (step / "curve_1_2.json").rename(step / "curve.json")
    legacy = {"config": cfg.fingerprint(*NON_RESULT_FIELDS), "mask": None, "seeds": [1, 2],
              "points": 11}  # fmt: skip  # settings.json as sweeps recorded it then
    (tmp_path / "settings.json").write_text(json.dumps(legacy))
    monkeypatch.setattr(engine.Engine, "loop", _refuse)
    monkeypatch.setattr(instability_module, "error_curve", _refuse)
    assert instability_sweep(cfg, [0], tmp_path, progress=False) == first


def test_a_masked_sweep_recorded_before_the_study_record_resumes_and_refuses_another_mask(
    tmp_path, monkeypatch
):
    """settings.json once held the mask under an older hash: such a folder still reads back
    without training, is rewritten as a study record, and refuses another mask."""
    cfg = tiny(steps=20, eval_every=20)
    model = make_model(cfg, load_data(cfg))
    gen = torch.Generator().manual_seed(0)
    prunable = [(n, p) for n, p in model.named_parameters() if p.dim() > 1]
    mask = Mask({n: torch.rand(p.shape, generator=gen) > 0.5 for n, p in prunable})
    first = instability_sweep(cfg, [0], tmp_path, mask=mask, progress=False)
    legacy = {"config": cfg.fingerprint(*NON_RESULT_FIELDS), "points": 11, "pairs": [[1, 2]],
              "mask": instability_module.legacy_mask_digest(mask)}  # fmt: skip
    assert legacy["mask"] != mask.digest()
    (tmp_path / "settings.json").write_text(json.dumps(legacy))
    monkeypatch.setattr(engine.Engine, "loop", _refuse)
    monkeypatch.setattr(instability_module, "error_curve", _refuse)
    assert instability_sweep(cfg, [0], tmp_path, mask=mask, progress=False) == first
    record = json.loads((tmp_path / "settings.json").read_text())
    assert record["instability"] == {"mask": mask.digest(), "pairs": [[1, 2]], "points": 11}
    (tmp_path / "settings.json").write_text(json.dumps(legacy))
    other = Mask({n: ~t for n, t in mask.tensors.items()})
    with pytest.raises(ConfigError, match="holds an instability sweep with other settings"):
        instability_sweep(cfg, [0], tmp_path, mask=other, progress=False)


@pytest.mark.parametrize(
    "flags,reason",
    [
        (["--seeds", "1:1"], "two different data seeds"),
        (["--pairs", "2", "--seeds", "1:2"], "not both"),
        (["--seeds", "0:1"], "dense run's own data order"),
        (["--seeds", "1:2,2:1"], "pairs repeat"),
        (["--seeds", "1:2,3"], "pairs of data seeds"),
        (["--pairs", "0"], "--pairs must be >= 1"),
    ],
)
def test_bad_pairs_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, flags, reason):
    out = tmp_path / "inst"
    argv = ["instability", *TINY_FLAGS, "--start-steps", "0", *flags, "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert reason in err and err.count("\n") == 1
    assert not out.exists()


def test_pairs_flag_prints_mean_and_std_over_pairs(tmp_path, capsys):
    out = tmp_path / "inst"
    argv = ["instability", *TINY_FLAGS, "--start-steps", "0", "--pairs", "2", "--out", str(out)]
    assert main(argv) == 0
    result = json.loads((out / "instability.json").read_text())
    assert result["pairs"] == [[1, 2], [3, 4]]
    (row,) = result["rows"]
    cell = f"{100 * row['barrier']:.2f} ± {100 * row['barrier_std']:.2f} (n=2)"
    assert cell in capsys.readouterr().out
    assert f"| 0 | {cell} |" in (out / "report" / "report.md").read_text()
