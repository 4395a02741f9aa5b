"""Analyses: mask overlap against chance, instability barriers, pruning curves, sizes, reports."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from lottery.analysis.overlap import compare_masks, expected_jaccard, pairwise
from lottery.analysis.report import write_report
from lottery.cli.main import main
from lottery.pruning.maskfile import MaskError
from lottery.pruning.masks import Mask, load_sparse, save_sparse
from lottery.studies.curves import pruning_curve, sizes_on_disk
from lottery.studies.imp import IMPConfig, run_imp
from lottery.studies.instability import error_barrier, error_curve, instability
from lottery.training.run import StartState
from lottery.training.setup import load_data, make_model
from lottery.training.trainer import Trainer
from tests.conftest import tiny


def masks(**layers: list[int]) -> Mask:
    return Mask({n: torch.tensor(v, dtype=torch.bool) for n, v in layers.items()})


def test_overlap_of_identical_disjoint_and_nested_masks():
    a = masks(w=[1, 1, 0, 0, 1, 0], v=[1, 0, 0, 0])
    same = compare_masks(a, a).overall
    assert same.jaccard == 1.0 and same.overlap_coefficient == 1.0 and same.hamming == 0
    disjoint = compare_masks(a, masks(w=[0, 0, 1, 1, 0, 0], v=[0, 1, 1, 0])).overall
    assert disjoint.intersection == 0 and disjoint.jaccard == 0.0 and disjoint.hamming == 8
    nested = compare_masks(a, masks(w=[1, 0, 0, 0, 0, 0], v=[1, 0, 0, 0])).overall
    assert nested.jaccard == pytest.approx(2 / 4) and nested.overlap_coefficient == 1.0
    assert nested.hamming == 2
    per_layer = compare_masks(a, masks(w=[1, 0, 1, 0, 0, 0], v=[0, 0, 0, 1])).layers
    assert per_layer["w"].jaccard == pytest.approx(1 / 4) and per_layer["w"].hamming == 3
    assert per_layer["v"].jaccard == 0.0 and per_layer["v"].hamming == 2


def test_expected_jaccard_and_p_value_match_scipy_directly():
    n, k1, k2 = 60, 20, 30
    x = np.arange(0, 21)
    direct = sum(stats.hypergeom.pmf(i, n, k1, k2) * i / (k1 + k2 - i) for i in x)
    assert expected_jaccard(n, k1, k2) == pytest.approx(direct, rel=1e-12)
    gen = torch.Generator().manual_seed(0)
    a = torch.zeros(n, dtype=torch.bool)
    a[torch.randperm(n, generator=gen)[:k1]] = True
    b = torch.zeros(n, dtype=torch.bool)
    b[torch.randperm(n, generator=gen)[:k2]] = True
    got = compare_masks(Mask({"w": a}), Mask({"w": b})).overall
    inter = int((a & b).sum())
    assert got.p_value == pytest.approx(stats.hypergeom.sf(inter - 1, n, k1, k2), rel=1e-9)
    assert got.expected_intersection == pytest.approx(k1 * k2 / n)


def test_overall_p_value_sums_independent_layers():
    """Two layers: P(X1 + X2 >= observed) against a brute-force convolution of scipy pmfs."""
    la, lb = (40, 10, 12), (30, 15, 9)
    a = masks(p=[1] * 10 + [0] * 30, q=[1] * 15 + [0] * 15)
    b = masks(p=[1] * 6 + [0] * 28 + [1] * 6, q=[1] * 7 + [0] * 21 + [1] * 2)
    pmf1 = stats.hypergeom.pmf(np.arange(11), *la)
    pmf2 = stats.hypergeom.pmf(np.arange(10), *lb)
    total = np.convolve(pmf1, pmf2)
    observed = 6 + 7
    got = compare_masks(a, b).overall
    assert got.intersection == observed
    assert got.p_value == pytest.approx(total[observed:].sum(), rel=1e-6)


def test_overlap_rejects_masks_of_different_tensors():
    with pytest.raises(MaskError, match="different tensors"):
        compare_masks(masks(w=[1, 0]), masks(v=[1, 0]))


def test_imp_rounds_are_nested_and_seeds_overlap_near_chance(tmp_path):
    cfg = tiny(steps=40)
    settings = IMPConfig(rounds=2, fraction=0.5, scope="layer")
    run_imp(cfg, settings, tmp_path / "s0", progress=False)
    run_imp(cfg.replace(init_seed=1), settings, tmp_path / "s1", progress=False)
    m = {f"r{r}": Mask.load(tmp_path / "s0" / f"round_{r:02d}" / "mask.npz") for r in (1, 2)}
    rows = pairwise(m)
    assert rows[0]["overlap_coefficient"] == 1.0  # round 2 is nested in round 1
    seeds = compare_masks(
        Mask.load(tmp_path / "s0" / "round_02" / "mask.npz"),
        Mask.load(tmp_path / "s1" / "round_02" / "mask.npz"),
    ).overall
    assert 0 < seeds.jaccard < 1 and 0 <= seeds.p_value <= 1
    assert abs(seeds.expected_jaccard - 1 / 7) < 0.05  # two 25% masks: 1/16 / (7/16)


def test_cli_overlap_json(tmp_path, capsys):
    a, b = masks(w=[1, 1, 0, 0]), masks(w=[1, 0, 1, 0])
    a.save(tmp_path / "a.npz")
    b.save(tmp_path / "b.npz")
    assert main(["overlap", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    pair = out["pairs"][0]
    assert pair["jaccard"] == pytest.approx(1 / 3)
    assert {"expected_jaccard", "p_value"} <= set(pair)
    assert pair["layers"]["w"]["jaccard"] == pytest.approx(1 / 3)
    heat = tmp_path / "h.svg"
    argv = ["overlap", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--json"]
    assert main([*argv, "--heatmap", str(heat)]) == 0
    printed = capsys.readouterr()
    assert json.loads(printed.out)["pairs"][0] == pair and printed.err.strip() == f"heatmap: {heat}"
    assert heat.read_text().lstrip().startswith("<?xml")


def test_barrier_of_a_model_with_itself_is_zero():
    cfg = tiny()
    data = load_data(cfg)
    model = make_model(cfg, data)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    curve = error_curve(model, state, state, data, points=11)
    assert len(curve["alpha"]) == 11
    assert error_barrier(curve["test_error"]) == 0.0
    assert error_barrier([0.1, 0.3, 0.2]) == pytest.approx(0.15)


def test_instability_from_step_zero_of_a_real_run(tmp_path):
    cfg = tiny(steps=60, save_at=(0,))
    data = load_data(cfg)
    Trainer(cfg, data, make_model(cfg, data), tmp_path / "dense", progress=False).fit()
    start = StartState.from_checkpoint(tmp_path / "dense" / "checkpoints" / "step_0000000.pt")
    row = instability(cfg, start, tmp_path / "k0", seeds=(1, 2), points=11, progress=False)
    # Frankle et al. (2020): the highest error on the path minus the mean of its endpoints'
    assert len(row.test_error) == 11 and math.isfinite(row.barrier)
    errors = row.test_error
    assert row.barrier == pytest.approx(max(errors) - (errors[0] + errors[-1]) / 2, abs=1e-12)
    assert row.endpoint_errors == [row.test_error[0], row.test_error[-1]]
    recorded = json.loads((tmp_path / "k0" / "curve.json").read_text())
    assert recorded["barrier"] == row.barrier and recorded["step"] == 0


def test_curve_at_zero_sparsity_equals_dense_and_sizes_shrink(tmp_path):
    cfg = tiny(steps=60)
    data = load_data(cfg)
    trainer = Trainer(cfg, data, make_model(cfg, data), tmp_path, progress=False)
    trainer.fit()
    model = trainer.model
    rows = pruning_curve(model, data, sparsities=(0.0, 0.5, 0.9))
    dense_acc = json.loads((tmp_path / "result.json").read_text())["test_accuracy"]
    for r in rows:
        if r["sparsity"] == 0.0:
            assert r["accuracy_change"] == 0.0 and r["loss_change"] == 0.0
            assert r["test_accuracy"] == pytest.approx(dense_acc)
    assert {r["method"] for r in rows} >= {"layer-l1", "global-l1", "random"}
    sizes = sizes_on_disk(model, sparsities=(0.0, 0.5, 0.9))
    assert sizes[-1].sparse_bytes < sizes[1].sparse_bytes < sizes[0].dense_bytes
    assert sizes[-1].gzip_bytes < sizes[0].gzip_bytes


def test_sparse_export_round_trip_loads_an_identical_model(tmp_path):
    cfg = tiny()
    data = load_data(cfg)
    model = make_model(cfg, data)
    mask = Mask({n: torch.rand_like(p) > 0.7 for n, p in model.named_parameters() if p.dim() > 1})
    mask.apply_(model)
    save_sparse(model.state_dict(), mask, tmp_path / "w.npz")
    state, back = load_sparse(tmp_path / "w.npz")
    clone = make_model(cfg, data, seed=99)
    clone.load_state_dict(state)
    assert back.equal(mask)
    for k, v in model.state_dict().items():
        assert torch.equal(v, clone.state_dict()[k]), k
    assert torch.equal(model(data.test_x[:8]), clone(data.test_x[:8]))


def test_report_writes_figures_and_summary(tmp_path):
    run_imp(tiny(steps=40), IMPConfig(rounds=2, fraction=0.5), tmp_path / "run", progress=False)
    written = write_report(tmp_path / "run", tmp_path / "report")
    names = {p.name for p in written}
    assert any(n.endswith(".md") for n in names) and any(n.endswith(".png") for n in names)
    for p in written:
        assert p.exists() and p.stat().st_size > 0
    md = next(p for p in written if p.suffix == ".md").read_text()
    assert "round" in md.lower()
