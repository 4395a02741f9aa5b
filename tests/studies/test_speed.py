"""Speed measurement: rows per route and batch with consistent ratios, skipped routes with their
reason, the sparsity sweep with sizes and its figure, and the `lottery speed` command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from lottery.cli.main import main
from lottery.pruning.criteria import Context, score
from lottery.pruning.masks import Mask
from lottery.pruning.selection import prune
from lottery.studies.export import Architecture, stored_numbers
from lottery.studies.speed import figure, measure, spread, sweep, table, time_pair

ARCH = Architecture("lenet_64_32", (1, 28, 28), 10)


def masked(sparsity: float, granularity: str = "weight"):
    model = ARCH.build().eval()
    params = dict(model.named_parameters())
    mask = Mask.ones(model)
    mask = prune(mask, score("magnitude", Context({n: params[n] for n in mask.names()})), sparsity=sparsity,
                 scope="layer", granularity=granularity, rate_scale={model.output_layer: 0.0})  # fmt: skip
    mask.apply_(model)
    return model, mask


def test_time_pair_gives_positive_medians():
    a, b = torch.nn.Linear(8, 8), torch.nn.Identity()
    dense_s, other_s = time_pair(a, b, torch.randn(4, 8), repeats=3)
    assert dense_s > 0 and other_s > 0


def test_measure_rows_per_route_and_batch():
    model, mask = masked(0.5, "filter")
    rows = measure(model, mask, ARCH, ("compact", "sparse"), batches=(1, 16), repeats=3)
    assert [(r["route"], r["batch"]) for r in rows] == [
        ("compact", 1), ("compact", 16), ("sparse", 1), ("sparse", 16)
    ]  # fmt: skip
    for r in rows:
        assert r["speedup"] == pytest.approx(r["dense_ms"] / r["route_ms"])
        assert r["sparsity"] == pytest.approx(mask.sparsity())
        assert r["dense_numbers"] == sum(p.numel() for p in model.parameters())
    # compact: 784*32 + 32 + 32*16 + 16 + 16*10 + 10 stored numbers (half the hidden units left)
    assert rows[0]["route_numbers"] == 784 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10
    # sparse: the kept weights of the two pruned layers plus every dense parameter left
    kept = int(
        mask.tensors["classifier.0.weight"].sum() + mask.tensors["classifier.2.weight"].sum()
    )
    dense_rest = 64 + 32 + 32 * 10 + 10
    assert rows[2]["route_numbers"] == kept + dense_rest


def test_measure_reports_why_a_route_is_skipped():
    arch = Architecture("resnet20", (1, 28, 28), 10)
    model = arch.build().eval()
    rows = measure(model, None, arch, ("compact", "2:4"), batches=(1,), repeats=1)
    assert "tied to blocks.0's shortcut" in rows[0]["skipped"]
    assert "needs a CUDA GPU" in rows[1]["skipped"]
    assert "skipped: " in table(rows)


def test_sweep_prunes_each_route_its_own_way_and_draws_the_figure():
    model = ARCH.build().eval()
    result = sweep(model, ARCH, (0.5, 0.9), batches=(8,), repeats=1)
    rows = result["rows"]
    assert [(r["target_sparsity"], r["route"]) for r in rows] == [
        (0.5, "compact"), (0.5, "sparse"), (0.9, "compact"), (0.9, "sparse")
    ]  # fmt: skip
    # filter pruning of 64 and 32 hidden units to 32/16 and 6/3 units (output layer kept)
    assert rows[0]["route_numbers"] == 784 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10
    assert rows[2]["route_numbers"] == 784 * 6 + 6 + 6 * 3 + 3 + 3 * 10 + 10
    assert [z["sparsity"] for z in result["sizes"]] == [0.5, 0.9]
    fig = figure(rows, result["sizes"])
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert len(fig.axes[0].lines) == 3  # compact, sparse and the 1x line
    # a log axis (0.01x is as far below 1x as 100x above) with each point's spread as a bar
    assert fig.axes[0].get_yscale() == "log"
    assert [c.has_yerr for c in fig.axes[0].containers] == [True, True]
    for r in rows:
        assert 0 < r["speedup_low"] <= r["speedup_high"]


def test_speedup_spread_is_the_interquartile_range_of_the_per_repeat_ratios():
    assert spread([2.0]) == (2.0, 2.0)
    assert spread([1.0, 2.0, 3.0, 4.0, 5.0]) == (2.0, 4.0)
    model, mask = masked(0.5, "filter")
    (row,) = measure(model, mask, ARCH, ("compact",), batches=(8,), repeats=5)
    assert row["speedup_low"] <= row["speedup_high"]


def test_stored_numbers_counts_csr_values():
    model, mask = masked(0.9)
    from lottery.studies.export import export

    sparse = export("sparse", model, mask, ARCH).module
    assert stored_numbers(sparse) == mask.kept() + 64 + 32 + 10


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A LeNet trained for a few steps on the synthetic dataset with half its units pruned."""
    out = tmp_path_factory.mktemp("run") / "run"
    args = ["prune", "--model", "lenet_64_32", "--dataset", "synthetic", "--steps", "10"]
    args += ["--batch-size", "30", "--device", "cpu", "--schedule", "one-shot"]
    args += ["--final-sparsity", "0.5", "--start", "0.5", "--granularity", "filter"]
    args += ["--update-every", "5", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    return out


def test_cli_speed_sweep_writes_record_and_figure(tiny_run, tmp_path, capsys):
    out = tmp_path / "speed"
    argv = ["speed", str(tiny_run), "--sweep", "--sparsities", "0.5,0.9", "--batches", "1,8"]
    argv += ["--repeats", "1", "--device", "cpu", "--format", "svg", "--out", str(out)]
    assert main(argv) == 0
    record = json.loads((out / "speed.json").read_text())
    assert record["sweep"] and len(record["rows"]) == 2 * 2 * 2 and len(record["sizes"]) == 2
    assert (out / "speed_vs_sparsity.svg").read_text().lstrip().startswith("<?xml")
    assert "compact" in capsys.readouterr().out


def test_cli_speed_of_the_run_itself(tiny_run, tmp_path):
    out = tmp_path / "speed"
    argv = ["speed", str(tiny_run), "--batches", "2", "--repeats", "1", "--device", "cpu"]
    assert main([*argv, "--out", str(out)]) == 0
    rows = json.loads((out / "speed.json").read_text())["rows"]
    assert [r["route"] for r in rows] == ["compact", "sparse"]
    inputs = math.prod(json.loads((tiny_run / "config.json").read_text())["data"]["input_shape"])
    assert rows[0]["route_numbers"] == inputs * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sparsities", "0.5,1.5", "--sweep"], "--sparsities value must be in [0, 1)"),
        (["--routes", "2:4"], "needs a CUDA GPU"),
        (["--routes", "compact,fast"], "unknown route 'fast'"),
        (["--batches", "0"], "--batches and --repeats must be positive"),
    ],
)
def test_cli_speed_bad_input_exits_2_with_one_line(extra, message, tiny_run, tmp_path, capsys):
    out = tmp_path / "speed"
    assert main(["speed", str(tiny_run), *extra, "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not out.exists()


def test_measure_aggregates_the_timed_samples_as_medians_and_quartiles(monkeypatch):
    """With the timer's samples fixed, each row's figures against numpy: medians in ms, the
    speed-up as the ratio of medians, its spread the quartiles of the per-repeat ratios."""
    from lottery.studies import speed

    dense_t = [0.010, 0.012, 0.011, 0.030, 0.009]
    route_t = [0.005, 0.004, 0.006, 0.005, 0.010]
    monkeypatch.setattr(speed, "time_samples", lambda a, b, x, repeats: (dense_t, route_t))
    model, mask = masked(0.5, "filter")
    (row,) = measure(model, mask, ARCH, ("compact",), batches=(4,), repeats=5)
    assert row["dense_ms"] == pytest.approx(1e3 * np.median(dense_t))
    assert row["route_ms"] == pytest.approx(1e3 * np.median(route_t))
    assert row["speedup"] == pytest.approx(np.median(dense_t) / np.median(route_t))
    ratios = np.array(dense_t) / np.array(route_t)
    assert row["speedup_low"] == pytest.approx(np.percentile(ratios, 25))
    assert row["speedup_high"] == pytest.approx(np.percentile(ratios, 75))
