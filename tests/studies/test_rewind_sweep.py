"""Rewind sweep: one shared dense run, and each rewind point equal to a standalone IMP search."""

from __future__ import annotations

import json

import pytest

from lottery.analysis.report import write_report
from lottery.pruning.masks import Mask
from lottery.studies.imp import IMPConfig, run_imp
from lottery.studies.rewind_sweep import rewind_sweep
from tests.conftest import tiny


def test_sweep_shares_the_dense_run_and_matches_standalone_imp(tmp_path):
    cfg = tiny(steps=40)
    imp = IMPConfig(rounds=1, fraction=0.5, scope="layer")
    result = rewind_sweep(cfg, imp, [20, 0], tmp_path / "sweep", progress=False)
    assert result["steps"] == [0, 20] and set(result["runs"]) == {"0", "20"}
    dense = (tmp_path / "sweep" / "dense").resolve()
    for k in (0, 20):
        ticket = tmp_path / "sweep" / f"rewind_{k:07d}" / "round_00" / "ticket"
        assert ticket.is_symlink() and ticket.resolve() == dense
    # rewinding to k inside the sweep is exactly IMP with --reset rewind --rewind-step k
    alone = run_imp(
        cfg, IMPConfig(rounds=1, fraction=0.5, scope="layer", reset="rewind", rewind_step=20),
        tmp_path / "alone", progress=False,
    )  # fmt: skip
    mask = Mask.load(tmp_path / "sweep" / "rewind_0000020" / "round_01" / "mask.npz")
    assert mask.equal(Mask.load(tmp_path / "alone" / "round_01" / "mask.npz"))
    ours = result["runs"]["20"][1]
    assert ours["test_accuracy"] == alone["rounds"][1]["test_accuracy"]
    # both rewind points prune the same dense weights, so their round-1 masks are identical
    pair = result["overlap"]["round_01"][0]
    assert (pair["a"], pair["b"]) == ("k=0", "k=20") and pair["jaccard"] == 1.0
    recorded = json.loads((tmp_path / "sweep" / "rewind_sweep.json").read_text())
    assert recorded["runs"] == result["runs"]
    # a rerun reuses everything
    assert (
        rewind_sweep(cfg, imp, [0, 20], tmp_path / "sweep", progress=False)["runs"]
        == result["runs"]
    )
    names = {p.name for p in write_report(tmp_path / "sweep")}
    assert {"rewind_accuracy.png", "rewind_overlap.png", "report.md"} <= names


@pytest.mark.slow  # 2.4 s of the fast subset
def test_batched_sweep_matches_the_sweep_and_reruns_either_way(tmp_path):
    """--batched sends every rewind point's round to the engine at once (each point's ticket and
    controls stack); the records equal the plain sweep's to float tolerance, and either mode
    resumes the other's folder."""
    cfg = tiny(steps=40)
    imp = IMPConfig(rounds=2, fraction=0.5, scope="layer", controls=("random-prune",))
    plain = rewind_sweep(cfg, imp, [0, 20], tmp_path / "plain", progress=False)
    imp.batched = True
    batched = rewind_sweep(cfg, imp, [0, 20], tmp_path / "batched", progress=False)
    for k in ("0", "20"):
        for a, b in zip(plain["runs"][k], batched["runs"][k], strict=True):
            assert a["percent_remaining"] == b["percent_remaining"]
            assert abs(a["test_accuracy"] - b["test_accuracy"]) <= 0.01
            control = a["controls"].get("random-prune", {}).get("test_accuracy")
            other = b["controls"].get("random-prune", {}).get("test_accuracy")
            assert (control is None) == (other is None)
            assert control is None or abs(control - other) <= 0.01
        first = f"rewind_{int(k):07d}/round_01/mask.npz"  # pruned from the shared dense run
        assert Mask.load(tmp_path / "plain" / first).equal(Mask.load(tmp_path / "batched" / first))
    imp.batched = False
    assert (
        rewind_sweep(cfg, imp, [0, 20], tmp_path / "batched", progress=False)["runs"]
        == (batched["runs"])
    )
