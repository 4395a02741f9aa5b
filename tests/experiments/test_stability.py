"""experiments/stability.py end to end on its --quick settings, against a tiny IMP search."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from scipy import stats

from experiments import stability
from lottery.pruning.masks import Mask
from lottery.studies import instability as instability_module
from lottery.studies.imp import IMPConfig, run_imp_seeds
from lottery.training import engine

PNG = b"\x89PNG\r\n\x1a\n"


def _refuse(*args, **kwargs):
    raise AssertionError("a rerun trained or evaluated again")


def _numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+\.\d+", cell)]


def _stats(values: list[float]) -> list[float]:
    """mean, sample std and 95% Student-t interval, as the table writes them."""
    v = np.array(values)
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return [v.mean(), v.std(ddof=1), v.mean() - half, v.mean() + half]


@pytest.mark.slow
def test_quick_study_tables_its_results_and_a_rerun_trains_nothing(tmp_path, monkeypatch):
    tickets = tmp_path / "tickets"  # a one-round `imp --seeds 0,1` search of the quick training
    run_imp_seeds(stability.config(quick=True), IMPConfig(rounds=1), tickets, [0, 1], False)
    out = tmp_path / "study"
    argv = ["--quick", "--search", str(tickets / "seed_0"), "--tickets", f"0={tickets}",
            "--out", str(out), "--no-progress"]  # fmt: skip
    assert stability.main([*argv, "--tickets", f"5={tickets}"]) == 2  # 5 is not a start step
    assert stability.main([*argv, "--search", str(tickets)]) == 2  # a group, not one search
    assert stability.main([*argv, "--steps", "0,40"]) == 2  # k = 40 is the end of training
    assert not out.exists()

    assert stability.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    sub = results["settings"]["subnetwork"]
    assert sub["round"] == 1
    assert sub["density"] == Mask.load(tickets / "seed_0" / "round_01" / "mask.npz").density()
    assert results["dense"]["dense"] == results["subnetwork"]["dense"] == str(out / "dense")
    assert results["dense"]["density"] == 1.0 and results["subnetwork"]["density"] < 1.0

    lines = (out / "table.md").read_text().splitlines()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines
            if re.match(r"\| \d+ \|", line)]  # fmt: skip
    assert [int(r[0]) for r in rows] == [0, 10, 20]
    summaries = [json.loads((tickets / f"seed_{s}" / "summary.json").read_text()) for s in (0, 1)]
    for cells, dense, subnet in zip(
        rows, results["dense"]["rows"], results["subnetwork"]["rows"], strict=True
    ):
        for cell, row in ((cells[1], dense), (cells[2], subnet)):
            assert row["n_pairs"] == 2
            barriers = [p["barrier"] for p in row["pairs"]]
            want = [100 * x for x in _stats(barriers)]
            assert _numbers(cell) == pytest.approx(want, abs=0.0051)
        assert _numbers(cells[3]) == pytest.approx([100 * dense["endpoint_gap"]], abs=0.0051)
        assert _numbers(cells[4]) == pytest.approx([100 * subnet["endpoint_gap"]], abs=0.0051)
        if dense["step"] == 0:  # the tickets reset to k = 0: round 1 and round 0 over the seeds
            for cell, r in ((cells[5], 1), (cells[6], 0)):
                acc = [100 * s["rounds"][r]["test_accuracy_at_best_val"] for s in summaries]
                assert _numbers(cell) == pytest.approx(_stats(acc), abs=0.0051)
                assert cell.endswith("(n=2)")
        else:
            assert cells[5] == cells[6] == "-"
    assert (out / "stability.png").read_bytes().startswith(PNG)

    monkeypatch.setattr(engine.Engine, "loop", _refuse)
    monkeypatch.setattr(instability_module, "error_curve", _refuse)
    assert stability.main(argv) == 0
    assert json.loads((out / "results.json").read_text()) == results
