"""DataFrame loaders return their documented columns and the recorded values; load_run gives back
a run's model and mask that reproduce its recorded test accuracy."""

from __future__ import annotations

import json

import pytest

from lottery.analysis import records
from lottery.cli.main import main
from lottery.core import layout
from lottery.pruning.masks import Mask
from lottery.studies.imp import IMPConfig, run_imp
from lottery.training.setup import load_data, load_run
from lottery.training.stacked import evaluate
from tests.conftest import tiny


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    out = tmp_path_factory.mktemp("rec") / "search"
    settings = IMPConfig(
        rounds=1, fraction=0.5, controls=("random-reinit",), save_control_weights=True
    )
    run_imp(tiny(steps=40), settings, out, progress=False)
    return out


def test_search_rounds_flatten_controls_in_percent(search):
    frame = records.search_rounds(search)
    assert list(frame.columns) == list(records.SEARCH_COLUMNS)
    summary = json.loads((search / layout.SUMMARY).read_text())["rounds"]
    assert list(zip(frame["round"], frame["network"], strict=True)) == [
        (0, "ticket"), (1, "ticket"), (1, "random-reinit"),
    ]  # fmt: skip
    assert frame["test_acc_pct"].tolist() == pytest.approx(
        [100 * summary[0]["test_accuracy"], 100 * summary[1]["test_accuracy"],
         100 * summary[1]["controls"]["random-reinit"]["test_accuracy"]]
    )  # fmt: skip
    assert frame["percent_remaining"].tolist()[1] == summary[1]["percent_remaining"]


def test_run_metrics_and_overlap_frames(search):
    metrics = records.run_metrics(layout.round_dir(search, 1))  # a round means its ticket
    assert list(metrics.columns) == list(records.METRIC_COLUMNS)
    lines = (layout.ticket_dir(search, 1) / layout.METRICS).read_text().splitlines()
    raw = [json.loads(x) for x in lines]
    assert metrics["step"].tolist() == [r["step"] for r in raw]
    assert metrics["val_acc_pct"].tolist() == pytest.approx([100 * r["val_accuracy"] for r in raw])
    assert metrics["percent_remaining"].iloc[-1] == pytest.approx(100 * raw[-1]["density"])
    pairs = records.overlap(search, all_rounds=True)
    assert list(pairs.columns) == list(records.OVERLAP_COLUMNS) and len(pairs) == 1
    assert pairs["jaccard"].iloc[0] == pytest.approx(
        Mask.load(layout.round_dir(search, 1) / layout.MASK).density()
    )  # round 1 is nested in the dense round 0


def test_pruning_log_frame(tmp_path):
    out = tmp_path / "prune"
    argv = ["prune", "--model", "lenet_64_32", "--dataset", "synthetic", "--steps", "30"]
    argv += ["--batch-size", "32", "--schedule", "linear", "--final-sparsity", "0.8"]
    argv += ["--update-every", "10", "--device", "cpu", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    log = records.pruning_log(out)
    assert list(log.columns) == list(records.PRUNING_COLUMNS)
    assert log["step"].tolist() == [0, 10, 20, 30]
    assert log["target_sparsity_pct"].iloc[-1] == pytest.approx(80.0)
    assert (log["percent_remaining"] + log["sparsity_pct"]).tolist() == pytest.approx([100.0] * 4)
    assert log["kept"].iloc[-1] == Mask.load(out / layout.MASK).kept()


def test_load_run_reproduces_the_recorded_test_accuracy(search):
    for run in (layout.round_dir(search, 1), layout.round_dir(search, 1) / "random_reinit"):
        loaded = load_run(run)
        data = load_data(loaded.cfg)
        _, acc = evaluate(loaded.model, data.test_x, data.test_y)
        ticket = run / layout.TICKET if (run / layout.TICKET).is_dir() else run
        recorded = json.loads((ticket / layout.RESULT).read_text())["test_accuracy"]
        assert acc == recorded
        if loaded.mask is not None:
            params = dict(loaded.model.named_parameters())
            assert all(not params[n][~m].any() for n, m in loaded.mask.tensors.items())
