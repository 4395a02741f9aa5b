"""Dynamic sparse training (SET, RigL) against direct computations: constant density at every
update, RigL's growth equal to the top-|g| pruned positions, grown weights and their optimizer
state at zero, and a killed run resumed bit-identically."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lottery.core.storage import load_checkpoint
from lottery.models.registry import build_model
from lottery.pruning.allocation import layer_counts
from lottery.pruning.dst import DynamicSparsity, drop_fraction
from lottery.pruning.masks import Mask
from lottery.training.setup import load_data, make_model
from lottery.training.trainer import Trainer
from tests.conftest import kill_when, lottery_process, tiny


def test_drop_fraction_is_cosine_annealed_to_zero_at_t_end():
    assert drop_fraction(0, 100) == pytest.approx(0.3)
    assert drop_fraction(50, 100) == pytest.approx(0.15)
    assert drop_fraction(25, 100, alpha=0.5) == pytest.approx(0.25 * (1 + math.cos(math.pi / 4)))
    assert drop_fraction(100, 100) == 0.0 and drop_fraction(150, 100) == 0.0
    dst = DynamicSparsity("rigl", 0.9, total_steps=1000, every=100)
    assert dst.update_steps == {0, 100, 200, 300, 400, 500, 600, 700}  # T_end = 750


def by_hand(mask: Mask, weights: dict, grads: dict, fraction: float) -> Mask:
    """RigL's update computed directly in numpy: per layer drop round(f·kept) kept weights of
    smallest |w| (ties: earlier position), then grow as many positions not kept after the drop
    with the largest |g| (ties: earlier position)."""
    out = {}
    for n, keep in mask.tensors.items():
        k = keep.numpy().reshape(-1).copy()
        w = np.abs(weights[n].numpy().reshape(-1).astype(np.float64))
        g = np.abs(grads[n].numpy().reshape(-1).astype(np.float64))
        kept = np.flatnonzero(k)
        drop = round(fraction * kept.size)
        by_w = sorted(kept, key=lambda i: (w[i], i))[:drop]
        k[by_w] = False
        free = np.flatnonzero(~k)
        k[sorted(free, key=lambda i: (-g[i], i))[:drop]] = True
        out[n] = torch.from_numpy(k.reshape(keep.shape))
    return Mask(out)


def test_rigl_drops_the_smallest_and_grows_exactly_the_top_gradient_pruned_positions():
    model = build_model("lenet_64_32", (1, 8, 8), 10, seed=1)
    dst = DynamicSparsity("rigl", 0.8, total_steps=400, every=50, allocation="erk")
    start = dst.update(0, model, Mask.ones(model))
    shapes = {n: tuple(t.shape) for n, t in start.tensors.items()}
    assert {n: k for n, (k, _) in start.layer_counts().items()} == layer_counts(shapes, 0.2, "erk")
    gen = torch.Generator().manual_seed(5)
    params = dict(model.named_parameters())
    with torch.no_grad():  # weights as training leaves them: zero where pruned
        for n, keep in start.tensors.items():
            params[n].mul_(keep)
            params[n][0, :4] = params[n][0, 4]  # ties in |w|
    grads = {n: torch.randn(t.shape, generator=gen) for n, t in start.tensors.items()}
    dst.after_backward(48, {}, grads)  # not the step before an update: nothing kept
    assert dst.grads is None
    dst.after_backward(49, {}, grads)
    new = dst.update(50, model, start)
    weights = {n: params[n].detach() for n in start.names()}
    assert new.equal(by_hand(start, weights, grads, drop_fraction(50, 300)))
    assert new.layer_counts() == start.layer_counts()
    assert not new.equal(start) and dst.grads is None
    moved = sum(int((new.tensors[n] & ~start.tensors[n]).sum()) for n in shapes)
    assert dst.records[-1]["moved"] >= moved > 0  # a dropped weight may be grown back


def test_set_grows_seeded_random_positions_among_the_pruned():
    model = build_model("lenet_64_32", (1, 8, 8), 10, seed=1)
    a = DynamicSparsity("set", 0.7, total_steps=400, every=50, allocation="layer", seed=3)
    start = a.update(0, model, Mask.ones(model))
    assert start.equal(
        DynamicSparsity("set", 0.7, 400, 50, allocation="layer", seed=3).update(
            0, model, Mask.ones(model)
        )
    )
    first = a.update(50, model, start)
    again = DynamicSparsity("set", 0.7, 400, 50, allocation="layer", seed=3).update(
        50, model, start
    )
    other = DynamicSparsity("set", 0.7, 400, 50, allocation="layer", seed=4).update(
        50, model, start
    )
    assert first.equal(again) and not first.equal(other)
    assert first.layer_counts() == start.layer_counts()


@pytest.mark.parametrize("method", ["set", "rigl"])
def test_density_is_constant_and_grown_weights_start_at_zero_with_fresh_optimizer_state(
    tmp_path, method
):
    cfg = tiny(steps=90, eval_every=30, checkpoint_every=30)
    data = load_data(cfg)
    dst = DynamicSparsity(method, 0.8, total_steps=90, every=10, allocation="erk")
    masks, stale = [], []
    update = dst.update

    def spy(step, model, mask):
        new = update(step, model, mask)
        if masks:  # momentum of pruned weights grows from the dense gradients between updates
            grown = {n: new.tensors[n] & ~mask.tensors[n] for n in new.names()}
            state = trainer.optimizer.state
            params = dict(model.named_parameters())
            stale.append(
                sum(
                    float(state[params[n]]["momentum_buffer"][g].abs().sum())
                    for n, g in grown.items()
                )
            )
        masks.append((step, new.clone()))
        return new

    dst.update = spy

    def check(done):
        if not masks or masks[-1][0] != done or len(masks) < 2:
            return
        old, new = masks[-2][1], masks[-1][1]
        params = dict(trainer.model.named_parameters())
        assert any((new.tensors[n] & ~old.tensors[n]).any() for n in new.names())
        for n in new.names():  # a layer kept dense under ERK has nothing to grow
            grown = new.tensors[n] & ~old.tensors[n]
            assert torch.all(params[n].detach()[grown] == 0)
            buf = trainer.optimizer.state[params[n]]["momentum_buffer"]
            assert torch.all(buf[grown] == 0) and torch.all(buf[~new.tensors[n]] == 0)

    cfg = cfg.replace(extra={"pruning": dst.settings()})
    trainer = Trainer(cfg, data, make_model(cfg, data), tmp_path, pruner=dst, progress=False,
                      on_step=check)  # fmt: skip
    trainer.fit()
    assert [s for s, _ in masks] == sorted(dst.update_steps) == [0, 10, 20, 30, 40, 50, 60]
    counts = masks[0][1].layer_counts()
    assert all(m.layer_counts() == counts for _, m in masks)
    assert all(abs(m.sparsity() - 0.8) < 1e-3 for _, m in masks)
    assert max(stale) > 0  # the zeroing above is not vacuous
    assert [r["kept"] for r in dst.records] == [masks[0][1].kept()] * len(masks)


DST = ["prune", "--dst", "rigl", "--final-sparsity", "0.9", "--dataset", "fashion_mnist",
       "--train-limit", "2000", "--val-size", "200", "--test-limit", "500", "--batch-size", "50",
       "--steps", "600", "--update-every", "20", "--checkpoint-every", "25", "--eval-every", "100",
       "--device", "cpu", "--threads", "1", "--no-progress"]  # fmt: skip


@pytest.mark.slow
def test_a_killed_rigl_run_resumes_bit_identically(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    lottery_process([*DST, "--out", str(whole)], check=True)
    kill_when([*DST, "--out", str(cut)], cut / "pruning.jsonl", 12)  # past step 220's move
    assert not (cut / "result.json").exists()
    done = lottery_process([*DST, "--out", str(cut)])
    assert done.returncode == 0, done.stderr
    assert "resuming from step" in done.stderr
    a = load_checkpoint(whole / "checkpoints" / "final.pt")
    b = load_checkpoint(cut / "checkpoints" / "final.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert Mask(a["mask"]).equal(Mask(b["mask"])) and a["pruner"] == b["pruner"]
    for name in ("pruning.jsonl", "metrics.jsonl"):
        assert (whole / name).read_text() == (cut / name).read_text()
    moves = [json.loads(line) for line in (whole / "pruning.jsonl").open()]
    assert len(moves) == 23 and len({r["kept"] for r in moves}) == 1  # steps 0, 20, ..., 440


@pytest.mark.slow  # four runs through the command line
@pytest.mark.parametrize("method", ["set", "rigl"])
def test_batched_seeds_move_their_masks_as_separate_runs_do(tmp_path, method):
    from lottery.cli.main import main

    argv = ["prune", "--dst", method, "--final-sparsity", "0.8", "--model", "lenet_64_32",
            "--dataset", "synthetic", "--steps", "60", "--batch-size", "32", "--update-every",
            "9", "--device", "cpu", "--seeds", "0,1", "--no-progress"]  # fmt: skip
    assert main([*argv, "--batched", "--out", str(tmp_path / "batched")]) == 0
    assert main([*argv, "--out", str(tmp_path / "separate")]) == 0
    for seed in ("seed_0", "seed_1"):
        a = load_checkpoint(tmp_path / "batched" / seed / "checkpoints" / "final.pt")
        b = load_checkpoint(tmp_path / "separate" / seed / "checkpoints" / "final.pt")
        assert Mask(a["mask"]).equal(Mask(b["mask"])) and a["pruner"] == b["pruner"]
        for k in a["model"]:
            torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-4, atol=1e-5)


def test_a_runs_config_json_reruns_it_with_its_sparse_training_settings(tmp_path, capsys):
    from lottery.cli.main import main

    out = tmp_path / "run"
    argv = ["prune", "--dst", "set", "--final-sparsity", "0.7", "--drop-fraction", "0.2",
            "--dst-end", "0.5", "--allocation", "er", "--update-every", "7", "--model",
            "lenet_32", "--dataset", "synthetic", "--steps", "40", "--device", "cpu",
            "--no-progress"]  # fmt: skip
    assert main([*argv, "--out", str(out)]) == 0
    first = capsys.readouterr().out
    recorded = json.loads((out / "config.json").read_text())["config"]["extra"]["pruning"]
    assert recorded["dst"] == "set" and recorded["scope"] == "er"
    assert recorded["drop_fraction"] == 0.2 and recorded["dst_end"] == 0.5
    assert recorded["every"] == 7 and recorded["schedule"]["name"] == "one-shot"
    before = (out / "result.json").read_bytes()
    argv = ["prune", "--config", str(out / "config.json"), "--out", str(out), "--no-progress"]
    assert main(argv) == 0  # the same run: read back, not refused as another one
    assert capsys.readouterr().out == first and (out / "result.json").read_bytes() == before
