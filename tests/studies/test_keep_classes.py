"""Filter pruning never removes a class: the output layer's rows are the classes, so under filter
granularity every command leaves it whole by default and refuses a rate for it."""

from __future__ import annotations

import pytest

from lottery.cli.main import main
from lottery.core import layout
from lottery.pruning.masks import Mask

OUTPUT = "classifier.4.weight"  # Conv-2's output layer
RUN = ["--model", "conv2", "--dataset", "synthetic", "--steps", "6", "--batch-size", "16"]
RUN += ["--eval-every", "6", "--checkpoint-every", "6", "--device", "cpu", "--no-progress"]
FILTER = ["--granularity", "filter"]
ONE_SHOT = ["--schedule", "one-shot", "--final-sparsity", "0.5", "--start", "0.5"]


def assert_every_class_kept(mask_files) -> None:
    """The output layer is whole in every mask, and the most pruned mask lost over 5% of weights
    (a filter count: the first layers' small filters go first)."""
    loaded = [Mask.load(f) for f in mask_files]
    assert loaded and min(m.density() for m in loaded) < 0.95
    for f, mask in zip(mask_files, loaded, strict=True):
        assert bool(mask.tensors[OUTPUT].all()), f"{f}: output rows pruned"


def masks(out) -> list:
    return sorted(out.rglob(layout.MASK))


@pytest.mark.slow  # 3 s a granularity: in the full suite only
@pytest.mark.parametrize("granularity", ["filter", "channel"])
def test_imp_filter_pruning_keeps_every_class(tmp_path, granularity):
    out = tmp_path / "imp"
    args = ["imp", *RUN, "--rounds", "2", "--prune-fraction", "0.4", "--granularity", granularity]
    assert main([*args, "--out", str(out)]) == 0
    for f in masks(out):
        rows = Mask.load(f).tensors[OUTPUT].any(dim=1)
        assert bool(rows.all()), f"{f}: {int((~rows).sum())} classes removed"
    if granularity == "filter":
        assert_every_class_kept(masks(out))


@pytest.mark.slow
def test_prune_at_init_and_rewind_sweep_keep_every_class_under_filter_pruning(tmp_path):
    gradual = ["prune", *RUN, "--schedule", "one-shot", "--final-sparsity", "0.6"]
    gradual += ["--start", "0.5", "--update-every", "3", "--granularity", "filter"]
    assert main([*gradual, "--out", str(tmp_path / "prune")]) == 0
    assert_every_class_kept([tmp_path / "prune" / layout.MASK])

    at_init = ["at-init", *RUN, "--criterion", "magnitude", "--sparsities", "0.6"]
    assert main([*at_init, "--granularity", "filter", "--out", str(tmp_path / "at")]) == 0
    assert_every_class_kept(masks(tmp_path / "at"))

    sweep = ["rewind-sweep", *RUN, "--rewind-steps", "0,3", "--rounds", "1"]
    sweep += ["--prune-fraction", "0.5", "--granularity", "filter"]
    assert main([*sweep, "--out", str(tmp_path / "sweep")]) == 0
    assert_every_class_kept(masks(tmp_path / "sweep"))


@pytest.mark.parametrize(
    "argv",
    [
        ["imp", *RUN, *FILTER, "--rate-scale", f"{OUTPUT}=0.5"],
        ["prune", *RUN, *ONE_SHOT, *FILTER, "--rate-scale", f"{OUTPUT}=1"],
        ["at-init", *RUN, "--sparsities", "0.5", *FILTER, "--rate-scale", f"{OUTPUT}=1"],
        ["curve", *RUN, "--granularity", "filter", "--prune-output"],
    ],
    ids=["imp", "prune", "at-init", "curve"],
)
def test_a_rate_for_the_output_layer_under_filter_pruning_is_refused(tmp_path, capsys, argv):
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "would remove classes" in err and err.count("\n") == 1
    assert not out.exists() or not any(out.iterdir())
