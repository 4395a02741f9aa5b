"""experiments/conv_tickets.py end to end at its --quick size: records, statistics, resume."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from experiments import conv_tickets
from lottery.analysis.records import search_rounds


@pytest.mark.slow
def test_quick_study_tables_match_the_records_and_rerun_trains_nothing(tmp_path, capsys):
    out = tmp_path / "ct"
    argv = ["--quick", "--no-progress", "--out", str(out)]
    assert conv_tickets.main(argv) == 0
    # both searches start from the same dense runs: their round 0 records agree exactly
    for seed in (0, 1):
        a = search_rounds(conv_tickets.seed_folder(out / "reset_init", seed))
        b = search_rounds(conv_tickets.seed_folder(out / "rewind_2", seed))
        pd.testing.assert_frame_equal(a[a["round"] == 0], b[b["round"] == 0])
        assert sorted(a.loc[a["round"] == 2, "network"]) == [
            "random-prune", "random-reinit", "ticket"
        ]  # fmt: skip
        assert list(a.loc[a["round"] == 1, "network"]) == ["ticket"]
    records = pd.read_csv(out / "records.csv")
    assert set(records.network) == {
        "dense", "θ0 ticket", "rewind k=2 ticket", "random re-init (θ0 mask)", "random pruning"
    }  # fmt: skip
    saved = json.loads((out / "results.json").read_text())["stats"]
    for network, rnd in (("θ0 ticket", 1), ("random pruning", 2), ("dense", 0)):
        values = records[(records.network == network) & (records["round"] == rnd)]
        acc = values["test_acc_best_val_pct"].to_numpy()
        row = next(
            s for s in saved
            if s["network"] == network and s["round"] == rnd
            and s["metric"] == "test_acc_best_val_pct"
        )  # fmt: skip
        assert row["n"] == 2
        assert np.isclose(row["mean"], acc.mean()) and np.isclose(row["std"], acc.std(ddof=1))
        half = stats.t.ppf(0.975, 1) * acc.std(ddof=1) / np.sqrt(2)
        assert np.isclose(row["ci95_high"], acc.mean() + half)
        assert f"{acc.mean():.2f} ± {acc.std(ddof=1):.2f}" in (out / "table.md").read_text()
    assert (out / "tickets.png").stat().st_size > 10_000
    before = {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}
    capsys.readouterr()
    assert conv_tickets.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("result.json")} == before
