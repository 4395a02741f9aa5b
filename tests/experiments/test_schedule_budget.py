"""The fixed-budget schedule study (experiments/schedule_budget.py) on a tiny --quick config:
conv-only pruning, the summary statistics, worker processes and the read-back on a rerun."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from experiments import schedule_budget as sb
from lottery.pruning.masks import Mask, load_sparse
from lottery.training import engine

pytestmark = pytest.mark.slow  # trains a small study in its fixture


TINY = ["--quick", "--schedules", "one-cycle,one-shot (at 40%)", "--train-limit", "700"]
TINY += ["--test-limit", "200", "--batch-size", "32", "--no-progress"]


def study(out, *extra: str) -> dict:
    assert sb.main([*TINY, "--out", str(out), *extra]) == 0
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The tiny study trained in this process and again in two worker processes."""
    root = tmp_path_factory.mktemp("schedule_budget")
    return root, study(root / "one"), study(root / "two", "--jobs", "2")


def pruned_dirs(out):
    return sorted(p.parent for p in (out / "schedules").glob("*/pruning.jsonl"))


def test_only_the_convolutions_are_pruned_each_to_exactly_95_percent(runs):
    root, results, _ = runs
    assert len(pruned_dirs(root / "one")) == 4  # 2 schedules x 2 seeds
    for run_dir in pruned_dirs(root / "one"):
        mask = Mask.load(run_dir / "mask.npz")
        state, _ = load_sparse(run_dir / "weights.npz")
        convs = [n for n, t in state.items() if t.dim() == 4]
        assert mask.names() == convs and len(convs) == 4
        for name, (kept, total) in mask.layer_counts().items():
            assert total - kept == round(0.95 * total), name
        assert bool(state["classifier.weight"].ne(0).all())  # the fc layer stays dense
    for r in results["runs"]:
        if r["layers"] is not None:
            assert r["layers"]["classifier.weight"] == {"kept": 640, "total": 640, "pruned": False}
            assert r["layers"]["features.0.weight"] == {"kept": 40, "total": 800, "pruned": True}
            assert r["sparsity"] == pytest.approx(0.95, abs=1e-4)
    assert results["settings"]["pruned_layers"] == "conv"


def test_summary_statistics_match_numpy_and_scipy(runs):
    _, results, _ = runs
    summary = results["summary"]
    assert list(summary)[:2] == [sb.DENSE, sb.converged_label(2.0)]
    for label, row in summary.items():
        seeds = [100 * r["test_accuracy"] for r in results["runs"] if r["schedule"] == label]
        assert row["seeds"] == pytest.approx(seeds)
        assert row["mean"] == pytest.approx(np.mean(seeds))
        if len(seeds) < 2:
            assert math.isnan(row["std"])
            continue
        assert row["std"] == pytest.approx(np.std(seeds, ddof=1))
        low, high = stats.t.interval(0.95, len(seeds) - 1, np.mean(seeds), stats.sem(seeds))
        assert (row["ci95_low"], row["ci95_high"]) == pytest.approx((low, high))
    gap = summary[sb.converged_label(2.0)]["mean"] - summary[sb.DENSE]["mean"]
    assert results["converged"]["gap_to_budget_dense"] == pytest.approx(gap)


def test_worker_processes_give_bitwise_the_same_runs(runs):
    root, one, two = runs
    assert json.dumps(one["summary"]) == json.dumps(two["summary"])  # NaN-safe
    dirs = sorted(p.parent for p in (root / "one").glob("*/*/result.json"))
    assert len(dirs) == 7  # + 2 dense runs and the converged one
    for run_dir in dirs:
        twin = root / "two" / run_dir.relative_to(root / "one")
        assert (run_dir / "metrics.jsonl").read_text() == (twin / "metrics.jsonl").read_text()
        if (run_dir / "weights.npz").exists():
            a, _ = load_sparse(run_dir / "weights.npz")
            b, _ = load_sparse(twin / "weights.npz")
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_rerun_reads_the_runs_back_without_training(runs, monkeypatch):
    root, results, _ = runs

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(engine.Engine, "loop", no_training)
    monkeypatch.setattr(engine, "begin", no_training)
    before = {p: p.stat().st_mtime_ns for p in (root / "one").rglob("result.json")}
    assert len(before) == 7
    again = study(root / "one")
    # no run's process ran again either (the sweeps skip finished points)
    assert {p: p.stat().st_mtime_ns for p in (root / "one").rglob("result.json")} == before
    assert json.dumps(again["summary"]) == json.dumps(results["summary"])  # NaN-safe
    assert again["runs"] == results["runs"]


def test_ranking_and_welch_test_against_the_best():
    def run(label, seed, acc):
        return {"schedule": label, "seed": seed, "test_accuracy": acc, "sparsity": 0.95}

    runs = [run("one-cycle", s, a) for s, a in enumerate((0.80, 0.82, 0.81))]
    runs += [run("linear", s, a) for s, a in enumerate((0.50, 0.52, 0.49))]
    runs += [run("cosine", s, a) for s, a in enumerate((0.79, 0.83, 0.80))]
    runs += [run(sb.DENSE, s, 0.9) for s in range(3)]
    rows = sb.summarise(runs)
    assert list(rows) == [sb.DENSE, "one-cycle", "cosine", "linear"]
    assert [rows[k]["rank"] for k in ("one-cycle", "cosine", "linear")] == [1, 2, 3]
    p = stats.ttest_ind([80, 82, 81], [79, 83, 80], equal_var=False).pvalue
    assert rows["cosine"]["welch_p"] == pytest.approx(p)
    assert rows["cosine"]["within_noise_of_best"] and not rows["linear"]["within_noise_of_best"]
    assert "| 2 ≈ | cosine |" in sb.table(rows) and "| 3 | linear |" in sb.table(rows)


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--schedules", "nope"], "unknown schedule label"),
        (["--batched", "--jobs", "2"], "--batched"),
        (["--jobs", "0"], "--jobs"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, extra, match):
    assert sb.main([*TINY, "--out", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
