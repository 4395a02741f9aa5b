"""The engine: batched gradual pruning equals separate runs, and a killed batched run resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch

from lottery.core.storage import load_checkpoint
from lottery.pruning.masks import Mask
from lottery.pruning.schedules import Schedule
from lottery.studies.gradual import GradualRun, PruningSettings, train_gradual
from lottery.training.engine import Hooks
from lottery.training.setup import load_data
from tests.conftest import tiny

SCHEDULES = {
    "agp": Schedule("agp", 0.8, start=0.25, end=0.75),
    "linear": Schedule("linear", 0.6, start=0.25, end=1.0),
}
SEEDS = (0, 1)


def gradual_runs(root) -> list[GradualRun]:
    cfg = tiny(steps=40, eval_every=10, checkpoint_every=10)
    return [
        GradualRun(cfg.replace(init_seed=s, data_seed=s), sched, root / f"{name}_s{s}")
        for name, sched in SCHEDULES.items()
        for s in SEEDS
    ]


def train(root, batched: bool, hooks: Hooks | None = None):
    """Train the four runs; return their results and every mask update as (run, step) -> mask."""
    seen: dict[tuple[str, int], Mask] = {}
    hooks = hooks or Hooks()
    hooks.at_pruning.append(
        lambda run, step, mask: seen.__setitem__((run.dir.name, step), mask.cpu())
    )
    runs = gradual_runs(root)
    data = load_data(runs[0].cfg)
    results = train_gradual(runs, PruningSettings(every=5), data, batched=batched,
                            progress=False, hooks=hooks)  # fmt: skip
    return results, seen


def test_batched_schedules_and_seeds_match_separate_runs(tmp_path):
    alone, masks_a = train(tmp_path / "alone", batched=False)
    together, masks_b = train(tmp_path / "batch", batched=True)
    assert masks_a.keys() == masks_b.keys()
    first = {}
    for (run, step), mask in sorted(masks_a.items()):
        if mask.sparsity() > 0 and run not in first:
            first[run] = step
            assert mask.equal(masks_b[run, step]), f"first pruning update of {run} at step {step}"
    # the window opens at step 10 at 0% (s_i); the first weights go at step 15, after training
    assert len(first) == 4 and set(first.values()) == {15}
    for name, sched in SCHEDULES.items():
        for s in SEEDS:
            run = f"{name}_s{s}"
            a = Mask.load(tmp_path / "alone" / run / "mask.npz")
            b = Mask.load(tmp_path / "batch" / run / "mask.npz")
            kept = sum(round((1 - sched.final_sparsity) * n) for _, n in a.layer_counts().values())
            assert a.kept() == b.kept() == kept  # exact final sparsity (layer-wise rounding)
            la = [json.loads(x) for x in (tmp_path / "alone" / run / "metrics.jsonl").open()]
            lb = [json.loads(x) for x in (tmp_path / "batch" / run / "metrics.jsonl").open()]
            assert [x["step"] for x in la] == [x["step"] for x in lb] == [0, 10, 20, 30, 40]
            for x, y in zip(la, lb, strict=True):
                assert x["test_loss"] == pytest.approx(y["test_loss"], rel=1e-4)
                assert x["density"] == y["density"]
    for x, y in zip(alone, together, strict=True):
        assert x.test_accuracy == pytest.approx(y.test_accuracy, abs=0.01)
        assert x.density == y.density


class Killed(Exception):
    pass


def test_killed_batched_prune_run_resumes_bit_identical(tmp_path):
    train(tmp_path / "whole", batched=True)

    def bomb(done: int) -> None:
        if done == 27:  # between checkpoints, after two pruning updates
            raise Killed

    with pytest.raises(Killed):
        train(tmp_path / "cut", batched=True, hooks=Hooks(after_step=[bomb]))
    train(tmp_path / "cut", batched=True)
    for name in SCHEDULES:
        for s in SEEDS:
            run = f"{name}_s{s}"
            a = load_checkpoint(tmp_path / "whole" / run / "checkpoints" / "final.pt")
            b = load_checkpoint(tmp_path / "cut" / run / "checkpoints" / "final.pt")
            for k in a["model"]:
                assert torch.equal(a["model"][k], b["model"][k]), (run, k)
            assert Mask(a["mask"]).equal(Mask(b["mask"]))
            assert a["pruner"] == b["pruner"]
            la = (tmp_path / "whole" / run / "metrics.jsonl").read_text()
            assert la == (tmp_path / "cut" / run / "metrics.jsonl").read_text()
            assert (tmp_path / "whole" / run / "pruning.jsonl").read_text() == (
                tmp_path / "cut" / run / "pruning.jsonl"
            ).read_text()
