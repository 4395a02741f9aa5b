"""`lottery at-init` end to end on a real Fashion-MNIST slice: masks, controls, training, resume,
and bad input refused before anything is written."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from lottery.cli.main import main
from lottery.core.config import ConfigError, TrainConfig
from lottery.datasets.fashion_mnist import DEBIAN_FASHION_MNIST
from lottery.pruning.masks import Mask, load_sparse
from lottery.studies.at_init import AtInitConfig, criterion_scores
from lottery.training.setup import load_data

pytestmark = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST not installed at {DEBIAN_FASHION_MNIST}",
)

SLICE = ["--dataset", "fashion_mnist", "--train-limit", "2000", "--val-size", "500"]
SLICE += ["--test-limit", "500", "--steps", "50", "--device", "cpu", "--no-progress"]


def timeless(summary: dict) -> dict:
    """A summary without wall-clock seconds (the only field a rerun may change)."""
    text = json.dumps(summary)
    for row in (rows := json.loads(text))["sparsities"]:
        for m in [row["pruned"], *row["controls"].values()]:
            m.pop("seconds")
    return rows


def at_init(out, *extra: str) -> int:
    return main(["at-init", *SLICE, "--criterion", "snip", "--out", str(out), *extra])


def test_at_init_trains_above_chance_with_controls_and_resumes(tmp_path, capsys):
    out = tmp_path / "study"
    assert at_init(out, "--sparsities", "0.5") == 0
    first = json.loads((out / "summary.json").read_text())
    row = first["sparsities"][0]
    assert row["sparsity"] == 0.5 and row["density"] == pytest.approx(0.5, abs=1e-5)
    assert row["pruned"]["test_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert set(row["controls"]) == {"layer-shuffle", "reinit", "invert"}
    for run in ("pruned", "layer_shuffle", "reinit", "invert"):
        rdir = out / "sparsity_0.5000" / run
        for f in ("config.json", "metrics.jsonl", "result.json", "weights.npz"):
            assert (rdir / f).is_file(), (run, f)
        assert not (rdir / "checkpoints" / "final.pt").exists()
    assert "| sparsity | snip | layer-shuffle | reinit | invert |" in capsys.readouterr().out

    mask = Mask.load(out / "sparsity_0.5000" / "mask.npz")
    shuffled = Mask.load(out / "sparsity_0.5000" / "layer_shuffle" / "mask.npz")
    inverted = Mask.load(out / "sparsity_0.5000" / "invert" / "mask.npz")
    assert shuffled.layer_counts() == mask.layer_counts() and not shuffled.equal(mask)
    # at 50% global sparsity with distinct scores, keeping the lowest is the exact complement
    assert all(torch.equal(inverted.tensors[n], ~t) for n, t in mask.tensors.items())
    # the mask is the top half of SNIP's scores, computed afresh
    cfg = TrainConfig(
        model="lenet_300_100", dataset="fashion_mnist", train_limit=2000, val_size=500,
        test_limit=500, steps=50, batch_size=60, device="cpu",
    )  # fmt: skip
    scores = criterion_scores(cfg, load_data(cfg), AtInitConfig(), 0.5)
    flat = torch.cat([scores[n].reshape(-1) for n in mask.names()])
    kept = torch.cat([mask.tensors[n].reshape(-1) for n in mask.names()])
    assert float(flat[kept].min()) >= float(flat[~kept].max())
    # reinit: same mask, other weights
    state, reinit_mask = load_sparse(out / "sparsity_0.5000" / "reinit" / "weights.npz")
    assert reinit_mask.equal(mask)
    record = json.loads((out / "sparsity_0.5000" / "reinit" / "config.json").read_text())
    assert record["reinit_seed"] == 7919 and record["control"] == "reinit"

    # resume: the finished sparsity is reused as is, a new one is added
    stamp = (out / "sparsity_0.5000" / "pruned" / "result.json").stat().st_mtime_ns
    assert at_init(out, "--sparsities", "0.5,0.9") == 0
    second = json.loads((out / "summary.json").read_text())
    assert second["sparsities"][0] == row
    assert (out / "sparsity_0.5000" / "pruned" / "result.json").stat().st_mtime_ns == stamp
    assert second["sparsities"][1]["density"] == pytest.approx(0.1, abs=1e-5)
    # an interrupted run (its result gone) is retrained to the same numbers
    (out / "sparsity_0.9000" / "invert" / "result.json").unlink()
    assert at_init(out, "--sparsities", "0.5,0.9") == 0
    assert timeless(json.loads((out / "summary.json").read_text())) == timeless(second)
    # another criterion in the same folder is refused
    assert main(["at-init", *SLICE, "--criterion", "grasp", "--out", str(out)]) == 2


@pytest.mark.slow  # 4 s; the batched engine keeps its fast tests in tests/training
def test_batched_matches_separate_runs(tmp_path):
    flags = ("--sparsities", "0.8", "--controls", "invert", "--seeds", "0,1")
    assert at_init(tmp_path / "a", *flags) == 0
    assert at_init(tmp_path / "b", *flags, "--batched") == 0
    for seed in (0, 1):
        a = json.loads((tmp_path / "a" / f"seed_{seed}" / "summary.json").read_text())
        b = json.loads((tmp_path / "b" / f"seed_{seed}" / "summary.json").read_text())
        ra, rb = a["sparsities"][0], b["sparsities"][0]
        assert ra["density"] == rb["density"]
        x, y = ra["controls"]["invert"], rb["controls"]["invert"]
        assert x["test_loss"] == pytest.approx(y["test_loss"], rel=1e-3), seed
        assert ra["pruned"]["test_loss"] == pytest.approx(rb["pruned"]["test_loss"], rel=1e-3)
    # the mean ± std table over seeds is written beside the seeds, and `lottery report` reads it
    accs = [
        100 * json.loads((tmp_path / "a" / f"seed_{s}" / "summary.json").read_text())
        ["sparsities"][0]["controls"]["invert"]["test_accuracy_at_best_val"]
        for s in (0, 1)
    ]  # fmt: skip
    cell = f"{statistics.fmean(accs):.2f} ± {statistics.stdev(accs):.2f}"
    table = (tmp_path / "a" / "at_init.md").read_text()
    assert table.splitlines()[0] == "| sparsity | snip | invert |"
    assert table.splitlines()[2].startswith("| 80% | ") and table.splitlines()[2].endswith(
        f" | {cell} |"
    )
    for folder in (tmp_path / "a", tmp_path / "a" / "seed_1"):
        report = tmp_path / "report" / folder.name
        assert main(["report", str(folder), "--out", str(report), "--format", "svg"]) == 0
        md = (report / "report.md").read_text()
        assert "## Pruning at initialization" in md and "| sparsity | snip | invert |" in md
        assert (report / "at_init_accuracy.svg").is_file()
        rows = (report / "at_init_records.csv").read_text().splitlines()
        assert len(rows) == 1 + (2 if folder.name == "a" else 1) * 2  # header + seeds x runs
    assert cell in (tmp_path / "report" / "a" / "report.md").read_text()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--sparsities", "0.5,1.0"], "sparsity must be in"),
        (["--controls", "shuffle"], "unknown control 'shuffle'"),
        (["--granularity", "2:4", "--model", "conv2"], "not a multiple of 4"),
        (["--rate-scale", "nope.weight=0"], "does not cover"),
        (["--sparsities", "0.5,0.5"], "distinct"),
        (["--save-at", "99999"], "beyond the end of training"),
    ],
)
def test_bad_settings_exit_2_and_write_nothing(tmp_path, capsys, extra, message):
    out = tmp_path / "bad"
    assert at_init(out, *extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_settings_validation():
    with pytest.raises(ConfigError, match="needs scores accumulated"):
        AtInitConfig(criterion="movement-pruning")
    with pytest.raises(ConfigError, match="at least one"):
        AtInitConfig(sparsities=())
