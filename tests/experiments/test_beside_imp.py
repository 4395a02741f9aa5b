"""The comparison beside IMP (experiments/beside_imp.py) on a tiny slice: every method at every
sparsity for every seed, its numbers read back from the run folders themselves, exact sparsities
where the method sets them, and a rerun that trains nothing."""

from __future__ import annotations

import json

import pytest

from experiments import beside_imp as bi
from lottery.analysis.aggregate import summarize
from lottery.analysis.records import round_accuracy
from lottery.core import layout
from lottery.pruning.masks import Mask

pytestmark = pytest.mark.slow  # trains a small study in its fixture

TINY = ["--models", "lenet_300_100", "--sparsities", "0.8,0.9", "--seeds", "2",
        "--train-limit", "600", "--val-size", "100", "--test-limit", "300", "--epochs", "1",
        "--device", "cpu", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("beside_imp")
    assert bi.main([*TINY, "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_every_method_sparsity_and_seed_is_in_the_table(study):
    out, results = study
    table = results["lenet_300_100"]
    assert list(table) == list(bi.METHODS)
    for label, cells in table.items():
        assert list(cells) == ["0.8", "0.9"]
        for s, cell in cells.items():
            assert len(cell["accuracy"]) == 2 and all(0 <= a <= 100 for a in cell["accuracy"])
            if not label.startswith(("IMP", "LAMP")):  # IMP is read at its nearest round
                assert cell["sparsity"] == pytest.approx(float(s), abs=1e-4), label
    md = (out / "table.md").read_text()
    for label, cells in table.items():
        row = next(line for line in md.splitlines() if line.startswith(f"| {label} |"))
        stats = summarize(cells["0.9"]["accuracy"])
        assert f"{stats['mean']:.2f} ± {stats['std']:.2f}" in row
    assert (out / "beside_imp.png").stat().st_size > 10_000


def test_numbers_come_from_the_run_folders_and_masks_hold_the_sparsity(study):
    out, results = study
    root = out / "lenet_300_100"
    rigl = root / "dst" / "dst=rigl,final_sparsity=0.9"
    for seed in (0, 1):
        run = layout.seed_dir(rigl, seed)
        result = json.loads((run / "result.json").read_text())
        want = 100 * result["test_accuracy_at_best_val"]
        assert results["lenet_300_100"]["RigL (ERK)"]["0.9"]["accuracy"][seed] == want
        assert Mask.load(run / "mask.npz").sparsity() == pytest.approx(0.9, abs=1e-4)
        sm = layout.seed_dir(root / "supermask" / "sparsity=0.8", seed)
        assert Mask.load(sm / "mask.npz").sparsity() == pytest.approx(0.8, abs=1e-4)
    imp = layout.seed_dir(root / "imp" / "criterion=lamp", 1)
    rounds = json.loads((imp / "summary.json").read_text())["rounds"]
    accs, reached = round_accuracy([json.loads((imp / "summary.json").read_text())], 0.9)
    assert reached == pytest.approx(1 - rounds[10]["density"])  # 0.8^10 leaves 10.7%
    assert results["lenet_300_100"]["LAMP IMP (rewind)"]["0.9"]["accuracy"][1] == accs[0]


def test_a_rerun_reads_everything_back(study, capsys):
    out, results = study
    assert bi.main([*TINY, "--out", str(out)]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["lenet_300_100"] == results["lenet_300_100"]
    assert again["seconds"] < results["seconds"]
