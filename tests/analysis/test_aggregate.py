"""Multi-seed statistics against a direct numpy/scipy computation from the per-seed records."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from scipy import stats

from lottery.analysis.aggregate import aggregate_folder, summarize
from lottery.analysis.overlap import compare_masks
from lottery.analysis.report import write_report
from lottery.cli.main import main
from lottery.core import layout
from lottery.core.config import ConfigError
from lottery.pruning.masks import Mask

TINY = [
    "--model", "lenet_64_32", "--dataset", "synthetic", "--steps", "30", "--batch-size", "32",
    "--optimizer", "sgd", "--lr", "0.05", "--device", "cpu", "--no-progress",
    "--rounds", "2", "--prune-fraction", "0.5", "--controls", "random-reinit",
]  # fmt: skip
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    out = tmp_path_factory.mktemp("agg") / "seeds"
    assert main(["imp", *TINY, "--seeds", ",".join(map(str, SEEDS)), "--out", str(out)]) == 0
    return out


def direct(out, network: str, r: int, key: str) -> list[float]:
    """The per-seed values straight from each seed's summary.json, in %."""
    values = []
    for s in SEEDS:
        row = json.loads((layout.seed_dir(out, s) / layout.SUMMARY).read_text())["rounds"][r]
        values.append(100 * (row if network == "ticket" else row["controls"][network])[key])
    return values


def markdown_table(md: str, heading: str) -> list[list[str]]:
    """The body rows (cells stripped) of the first table after the line starting `heading`."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    body = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            body.append([c.strip() for c in line.strip("|").split("|")])
        elif body:
            break
    assert len(body) > 2, f"{heading}: empty table"
    return body[2:] if set(body[1][0]) <= {"-"} else body[1:]


def test_summarize_matches_scipy():
    x = [91.2, 90.4, 92.9, 89.7]
    got = summarize(x)
    low, high = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert got["n"] == 4 and got["mean"] == pytest.approx(np.mean(x))
    assert got["std"] == pytest.approx(np.std(x, ddof=1))
    assert (got["ci95_low"], got["ci95_high"]) == (pytest.approx(low), pytest.approx(high))
    one = summarize([90.0])
    assert one["mean"] == 90.0 and math.isnan(one["std"]) and math.isnan(one["ci95_low"])


def test_seed_aggregates_equal_a_direct_computation(seeds):
    agg = aggregate_folder(seeds)
    assert agg.kind == "search" and list(agg.members) == [f"seed_{s}" for s in SEEDS]
    t = agg.table
    checked = 0
    for network, rounds in (("ticket", (0, 1, 2)), ("random-reinit", (1, 2))):
        for r in rounds:
            for metric, key in (("test_acc_pct", "test_accuracy"),
                                ("test_acc_best_val_pct", "test_accuracy_at_best_val")):  # fmt: skip
                x = direct(seeds, network, r, key)
                row = t[(t.network == network) & (t["round"] == r) & (t.metric == metric)].iloc[0]
                low, high = stats.t.interval(0.95, 2, loc=np.mean(x), scale=stats.sem(x))
                assert row["n"] == 3 and row["mean"] == pytest.approx(np.mean(x))
                assert row["std"] == pytest.approx(np.std(x, ddof=1))
                if np.std(x) > 0:
                    assert row["ci95_low"] == pytest.approx(low)
                    assert row["ci95_high"] == pytest.approx(high)
                checked += 1
    assert checked == 10
    assert len(agg.records) == 3 * (3 + 2)  # seeds x (3 ticket rounds + 2 control rounds)


def test_cross_seed_overlap_uses_the_exact_pairwise_statistics(seeds):
    agg = aggregate_folder(seeds)
    assert agg.overlap_labels == [f"seed_{s}" for s in SEEDS] and len(agg.overlap_pairs) == 3
    pair = agg.overlap_pairs[0]
    a, b = (Mask.load(layout.round_dir(layout.seed_dir(seeds, s), 2) / layout.MASK) for s in (0, 1))
    exact = compare_masks(a, b).overall
    assert (pair["a"], pair["b"]) == ("seed_0", "seed_1")
    assert pair["jaccard"] == exact.jaccard and pair["expected_jaccard"] == exact.expected_jaccard


def test_report_of_seeds_writes_tables_and_band_figure(seeds, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(seeds), "--out", str(out), "--format", "svg"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"seeds_accuracy_vs_density.svg", "seeds_overlap.svg", "seeds_aggregate.csv",
            "seeds_aggregate.json", "seeds_records.csv", "report.md"} <= names  # fmt: skip
    x = direct(seeds, "ticket", 1, "test_accuracy")
    low, high = stats.t.interval(0.95, 2, loc=np.mean(x), scale=stats.sem(x))
    cell = f"{np.mean(x):.2f} ± {np.std(x, ddof=1):.2f} [{low:.2f}, {high:.2f}]"
    md = (out / "report.md").read_text()
    assert cell in md and "chance Jaccard" in md
    for heading, key in (("Test accuracy, end of training", "test_accuracy"),
                         ("Test accuracy at min. validation loss", "test_accuracy_at_best_val"),
                         ("Early-stopping step", "best_val_step")):  # fmt: skip
        rows = markdown_table(md, heading)
        assert [row[0] for row in rows] == ["0", "1", "2"], heading
        for r, row in enumerate(rows):
            x = np.array(direct(seeds, "ticket", r, key)) / (100 if key == "best_val_step" else 1)
            assert row[2].startswith(f"{np.mean(x):.2f} ± {np.std(x, ddof=1):.2f}"), (heading, row)
            remaining = np.array(direct(seeds, "ticket", r, "percent_remaining")) / 100
            assert row[1] == f"{np.mean(remaining):.2f}"
    data = json.loads((out / "seeds_aggregate.json").read_text())
    assert data["members"] == ["seed_0", "seed_1", "seed_2"]
    assert str(out / "report.md") in capsys.readouterr().out


def test_any_folder_of_searches_with_one_setting_and_refusal_of_mixed(seeds, tmp_path):
    group = tmp_path / "group"
    for s, name in zip(SEEDS, ("a", "b", "c"), strict=True):
        shutil.copytree(layout.seed_dir(seeds, s), group / name, symlinks=True)
    agg = aggregate_folder(group, overlap=False)
    assert list(agg.members) == ["a", "b", "c"]
    assert (
        agg.table["mean"].tolist() == aggregate_folder(seeds, overlap=False).table["mean"].tolist()
    )
    record = json.loads((group / "c" / layout.IMP_RECORD).read_text())
    record["train"]["lr"] = 0.1
    (group / "c" / layout.IMP_RECORD).write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="differ in settings \\(train.lr\\)"):
        aggregate_folder(group)
    assert main(["report", str(group), "--out", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists()  # refused before anything was written
    with pytest.raises(ConfigError, match="no recognisable results"):
        write_report(tmp_path)
