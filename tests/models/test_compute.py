"""The compute ledger: dense counts against torch.utils.flop_counter, masked counts against a hand
count of kept weights, and what runs, searches and gradual runs record."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lottery.analysis.compute import ledger, summary
from lottery.cli.main import main
from lottery.models.compute import Layer, forward_macs, profile, training_macs
from lottery.models.registry import build_model
from lottery.pruning.masks import Mask
from lottery.studies.imp import IMPConfig, run_imp
from tests.conftest import tiny

SHAPES = {"lenet_300_100": (1, 28, 28), "conv2": (1, 28, 28), "resnet20": (3, 32, 32)}


def resnet20_positions(name: str) -> int:
    """Output positions of a ResNet-20 weight on 32x32 inputs: stage s works at (32 / 2^s)^2."""
    if name == "fc.weight":
        return 1
    if name == "conv.weight":
        return 32 * 32
    block = int(name.split(".")[1])
    return (32 // 2 ** (block // 3)) ** 2


POSITIONS = {  # each weight's uses per example, counted by hand from the architectures
    "lenet_300_100": lambda name: 1,
    "conv2": lambda name: 28 * 28 if name.startswith("features") else 1,
    "resnet20": resnet20_positions,
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_dense_counts_equal_torch_flop_counter(name):
    shape = SHAPES[name]
    model = build_model(name, shape, 10, seed=0)
    x = torch.randn(3, *shape)
    with FlopCounterMode(display=False) as step:
        model(x).sum().backward()
    with FlopCounterMode(display=False) as forward, torch.no_grad():
        model(x)
    costs = profile(name, shape, 10).layers
    assert 2 * 3 * training_macs(costs) == step.get_total_flops()  # 2 FLOPs per MAC
    assert 2 * 3 * forward_macs(costs) == forward.get_total_flops()
    assert profile(name, shape, 10).parameters == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(SHAPES))
def test_masked_counts_equal_a_hand_count_of_kept_weights(name):
    shape = SHAPES[name]
    model = build_model(name, shape, 10, seed=0)
    g = torch.Generator().manual_seed(1)
    mask = Mask(
        {n: torch.rand(t.shape, generator=g) < 0.3 for n, t in Mask.ones(model).tensors.items()}
    )
    kept = {n: int(t.sum()) for n, t in mask.tensors.items()}
    costs = profile(name, shape, 10).layers
    assert set(costs) == set(kept)
    first = next(iter(costs))  # the layer that reads the data: no input gradient
    hand_forward = sum(k * POSITIONS[name](n) for n, k in kept.items())
    hand_train = sum(k * POSITIONS[name](n) * (2 if n == first else 3) for n, k in kept.items())
    assert forward_macs(costs, kept) == hand_forward
    assert training_macs(costs, kept) == hand_train
    assert [n for n, c in costs.items() if not c.input_grad] == [first]
    # a supermask still computes every weight's gradient
    dense_grads = sum(costs[n].weights * POSITIONS[name](n) for n in kept)
    assert training_macs(costs, kept, dense_weight_grads=True) == hand_forward + dense_grads + sum(
        k * POSITIONS[name](n) for n, k in kept.items() if n != first
    )


def test_layer_counts_by_definition():
    costs = {"a.weight": Layer(10, 4, False), "b.weight": Layer(6, 1, True)}
    assert forward_macs(costs) == 46 and forward_macs(costs, {"a.weight": 5}) == 26
    assert training_macs(costs) == 2 * 40 + 3 * 6


def test_runs_and_searches_record_their_ledger(tmp_path):
    cfg = tiny(steps=40, batch_size=32)
    out = tmp_path / "search"
    summary_ = run_imp(cfg, IMPConfig(rounds=2, fraction=0.5, scope="layer",
                                      controls=("random-reinit",)), out, progress=False)  # fmt: skip
    record = json.loads((out / "round_00" / "ticket" / "config.json").read_text())
    costs = profile(cfg.model, tuple(record["data"]["input_shape"]), 10).layers
    rows = summary_["rounds"]
    assert rows[0]["compute"]["train_macs"] == 40 * 32 * training_macs(costs)
    assert rows[0]["compute"]["train_macs_dense"] == rows[0]["compute"]["train_macs"]
    for r in (1, 2):
        mask = Mask.load(out / f"round_{r:02d}" / "mask.npz")
        kept = {n: k for n, (k, _) in mask.layer_counts().items()}
        c = rows[r]["compute"]
        assert c["train_macs"] == 40 * 32 * training_macs(costs, kept)
        assert c["train_macs_dense"] == 40 * 32 * training_macs(costs)
        assert c["inference_macs"] == forward_macs(costs, kept)
        pruned = sum(t - k for k, t in mask.layer_counts().values())
        assert c["parameters"] == c["parameters_dense"] - pruned
        assert rows[r]["controls"]["random-reinit"]["compute"]["train_macs"] == c["train_macs"]
    # the folder's ledger: round r's ticket cost the tickets of rounds 0..r
    frame = ledger(out)
    tickets = frame[frame["method"] == "IMP (init)"].sort_values("sparsity")
    spent = [rows[0]["compute"]["train_macs"]]
    for r in (1, 2):
        spent.append(spent[-1] + rows[r]["compute"]["train_macs"])
    assert tickets["train_macs"].tolist() == spent
    controls = frame[frame["method"] == "random-reinit"].sort_values("sparsity")
    assert controls["train_macs"].tolist() == [spent[0] + rows[1]["compute"]["train_macs"],
                                               spent[1] + rows[2]["compute"]["train_macs"]]  # fmt: skip
    assert len(summary(frame)) == 5


def test_a_gradual_run_pays_each_mask_for_the_steps_it_was_in_force(tmp_path, capsys):
    out = tmp_path / "agp"
    argv = ["prune", "--model", "lenet_32", "--dataset", "synthetic", "--steps", "60",
            "--batch-size", "16", "--device", "cpu", "--schedule", "agp", "--final-sparsity",
            "0.8", "--update-every", "10", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((out / "config.json").read_text())
    costs = profile("lenet_32", tuple(record["data"]["input_shape"]), 10).layers
    updates = [json.loads(line) for line in (out / "pruning.jsonl").open()]
    total = 0
    for u, nxt in zip(updates, [*updates[1:], {"step": 60}], strict=False):
        kept = {n: round(d * costs[n].weights) for n, d in u["layer_density"].items()}
        total += (nxt["step"] - u["step"]) * 16 * training_macs(costs, kept)
    result = json.loads((out / "result.json").read_text())
    assert len(updates) > 3 and result["compute"]["train_macs"] == total
    assert result["compute"]["train_macs"] < result["compute"]["train_macs_dense"]


@pytest.mark.slow  # the fast subset keeps the library-level checks
def test_report_plots_accuracy_against_training_compute(tmp_path, capsys):
    cfg = tiny(steps=20)
    run_imp(cfg, IMPConfig(rounds=1, fraction=0.5), tmp_path / "imp", progress=False)
    base = ["--model", "lenet_64_32", "--dataset", "synthetic", "--steps", "20", "--batch-size",
            "32", "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main(["at-init", *base, "--criterion", "synflow", "--sparsities", "0.5",
                 "--out", str(tmp_path / "synflow")]) == 0  # fmt: skip
    # a folder of two kinds of study: the ledger on request, and by itself for the search
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "report"), "--compute"]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Compute" in text and "synflow at init" in text and "IMP (init)" in text
    assert (tmp_path / "report" / "accuracy_vs_compute.png").exists()
    frame = ledger(tmp_path)
    assert set(frame["method"]) >= {"IMP (init)", "synflow at init"}
    assert main(["report", str(tmp_path / "imp"), "--out", str(tmp_path / "r2")]) == 0
    assert "## Compute" in (tmp_path / "r2" / "report.md").read_text()
