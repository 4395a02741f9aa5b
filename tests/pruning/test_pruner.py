"""Gradual pruning in training: exact targets, nested masks, zeroed weights and moments, resume."""

from __future__ import annotations

import json
import re

import pytest
import torch

from lottery.cli.commands.prune import parse_every
from lottery.cli.main import main
from lottery.core.config import ConfigError, TrainConfig
from lottery.core.storage import load_checkpoint
from lottery.pruning.masks import Mask, load_sparse
from lottery.pruning.pruner import GradualPruner
from lottery.pruning.schedules import Schedule
from lottery.studies.gradual import PruningSettings
from lottery.training.run import run_length
from lottery.training.setup import load_data, make_model
from lottery.training.trainer import Trainer
from tests.conftest import tiny


class Crash(Exception):
    pass


def pruned_run(cfg: TrainConfig, run_dir, schedule: Schedule, *, every=7, on_step=None, **kw):
    """A Trainer with a GradualPruner whose updates are spied on: (trainer, pruner, seen)."""
    data = load_data(cfg)
    total, per_epoch = run_length(cfg, data)
    pruner = GradualPruner(
        schedule,
        total,
        every=every,
        steps_per_epoch=per_epoch,
        log_path=run_dir / "pruning.jsonl",
        **kw,
    )
    seen = []
    update = pruner.update

    def spy(step, model, mask):
        new = update(step, model, mask)
        seen.append((step, mask.clone(), new.clone()))
        return new

    pruner.update = spy
    cfg = cfg.replace(extra={"pruning": pruner.settings()})
    trainer = Trainer(
        cfg, data, make_model(cfg, data), run_dir, pruner=pruner, progress=False, on_step=on_step
    )
    return trainer, pruner, seen


def assert_masked_weights_zero(trainer: Trainer, moments: bool = False) -> None:
    """Pruned weights are zero; with `moments`, their optimizer state too (true right after an
    update: the state is zeroed when the mask grows, the weights after every step)."""
    params = dict(trainer.model.named_parameters())
    for name, keep in trainer.mask.tensors.items():
        assert not params[name][~keep].any(), name
        for v in trainer.optimizer.state.get(params[name], {}).values() if moments else ():
            if torch.is_tensor(v) and v.shape == keep.shape:
                assert not v[~keep].any(), f"optimizer state of {name}"


def test_each_update_reaches_the_target_exactly_and_pruned_weights_stay_zero(tmp_path):
    cfg = tiny(optimizer="adam", lr=3e-3, steps=60)
    sched = Schedule("agp", 0.9, start=0.1, end=0.8)
    checked = []

    def check(step):
        assert_masked_weights_zero(trainer, moments=step in pruner.update_steps)
        checked.append(step)

    trainer, pruner, seen = pruned_run(cfg, tmp_path, sched, on_step=check)
    assert pruner.update_steps == {0, 6, 13, 20, 27, 34, 41, 48}
    result = trainer.fit()
    assert checked == list(range(1, 61))
    assert [s for s, _, _ in seen] == sorted(pruner.update_steps)
    for (step, old, new), rec in zip(seen, pruner.records, strict=True):
        target = sched.at_step(step, 60)
        assert rec["step"] == step and rec["target"] == target
        assert rec["sparsity"] == new.sparsity() and rec["kept"] == new.kept()
        assert new.is_subset_of(old)
        for name, (kept, total) in new.layer_counts().items():
            pruned = total - kept
            assert pruned == round(target * total), (step, name)  # exact per layer
            assert abs(pruned - target * total) <= 0.5
    assert seen[-1][2].sparsity() == pytest.approx(0.9, abs=1e-3)
    assert result.density == pytest.approx(seen[-1][2].density())
    assert result.test_accuracy > 0.3  # synthetic has 10 classes: well above chance at 90%
    log = [json.loads(x) for x in (tmp_path / "pruning.jsonl").read_text().splitlines()]
    assert log == pruner.records
    metrics = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    densities = [m["density"] for m in metrics]
    assert densities == sorted(densities, reverse=True) and densities[-1] == result.density


def test_global_scope_prunes_exactly_over_all_layers(tmp_path):
    sched = Schedule("one-cycle", 0.8, 0.2, start=0.0, end=0.5)
    trainer, pruner, seen = pruned_run(tiny(steps=30), tmp_path, sched, every=5, scope="global")
    trainer.fit()
    assert [s for s, _, _ in seen] == [0, 5, 10, 15]
    for step, old, new in seen:
        assert new.total() - new.kept() == round(sched.at_step(step, 30) * new.total())
        assert new.is_subset_of(old)
    # global pruning does not give every layer the same density
    densities = list(seen[-1][2].layer_density().values())
    assert max(densities) - min(densities) > 0.01


@pytest.mark.parametrize("granularity,dim", [("filter", 0), ("channel", 1)])
def test_structured_granularity_prunes_whole_units(tmp_path, granularity, dim):
    cfg = tiny(model="conv2", steps=12, batch_size=16, eval_every=12, checkpoint_every=12)
    sched = Schedule("linear", 0.5, start=0.0, end=1.0)
    trainer, pruner, seen = pruned_run(cfg, tmp_path, sched, every=4, granularity=granularity)
    trainer.fit()
    assert [s for s, _, _ in seen] == [0, 4, 8, 12]
    for step, _, new in seen:
        target = sched.at_step(step, 12)
        for name, keep in new.tensors.items():
            units = keep.movedim(dim, 0).reshape(keep.shape[dim], -1)
            alive = units.any(dim=1)
            assert torch.equal(units, alive[:, None].expand_as(units)), name  # whole units
            assert int((~alive).sum()) == round(target * len(alive)), (step, name)
    assert_masked_weights_zero(trainer)


def test_random_criterion_is_seeded_and_differs_from_magnitude(tmp_path):
    sched = Schedule("cosine", 0.7, end=0.5)
    masks = []
    for i, (criterion, seed) in enumerate([("random", 1), ("random", 1), ("random", 2)]):
        trainer, _, seen = pruned_run(
            tiny(steps=20), tmp_path / str(i), sched, every=5, criterion=criterion, seed=seed
        )
        trainer.fit()
        masks.append(seen[-1][2])
    trainer, _, seen = pruned_run(tiny(steps=20), tmp_path / "m", sched, every=5)
    trainer.fit()
    assert masks[0].equal(masks[1]) and not masks[0].equal(masks[2])
    assert not masks[0].equal(seen[-1][2])
    assert masks[0].kept() == seen[-1][2].kept()


def test_interrupted_run_resumes_to_the_same_masks_weights_and_log(tmp_path):
    cfg = tiny(steps=60)
    sched = Schedule("iterative", 0.85, start=0.2, end=0.9, params={"n_steps": 4})
    trainer, pruner, _ = pruned_run(cfg, tmp_path / "a", sched, every=6)
    trainer.fit()

    def crash(step):
        if step == 33:
            raise Crash

    trainer, _, _ = pruned_run(cfg, tmp_path / "b", sched, every=6, on_step=crash)
    with pytest.raises(Crash):
        trainer.fit()
    assert '"step": 30' in (tmp_path / "b" / "pruning.jsonl").read_text()  # after last.pt (20)
    trainer, resumed, seen = pruned_run(cfg, tmp_path / "b", sched, every=6)
    trainer.fit()
    assert [s for s, _, _ in seen] == [s for s in sorted(pruner.update_steps) if s > 20]
    assert resumed.records == pruner.records
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "final.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "final.pt")
    assert Mask(a["mask"]).equal(Mask(b["mask"]))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert (tmp_path / "a" / "pruning.jsonl").read_text() == (
        tmp_path / "b" / "pruning.jsonl"
    ).read_text()


def test_restoring_under_other_pruning_settings_is_refused():
    a = GradualPruner(Schedule("agp", 0.9), 100)
    b = GradualPruner(Schedule("agp", 0.8), 100)
    with pytest.raises(ConfigError, match="other pruning settings"):
        b.load_state_dict(a.state_dict())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"every": 0}, "update frequency"),
        ({"scope": "everywhere"}, "unknown pruning scope"),
        ({"granularity": "block"}, "unknown granularity"),
        ({"total_steps": 0}, "total steps"),
    ],
)
def test_bad_pruner_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        GradualPruner(**{"schedule": Schedule("agp", 0.9), "total_steps": 100, **kwargs})


def test_windows_outside_the_run_and_update_frequency_parsing():
    with pytest.raises(ConfigError, match="past the end of training"):
        GradualPruner(Schedule("agp", 0.9, start=10, end=200, unit="step"), 100)
    with pytest.raises(ConfigError, match="past the end of training"):
        GradualPruner(Schedule("agp", 0.9, end=5, unit="epoch"), 100, steps_per_epoch=30)
    epochs = GradualPruner(Schedule("agp", 0.9, start=1, end=3, unit="epoch"), 100, 30, 30)
    assert epochs.update_steps == {0, 30, 60, 90}
    assert parse_every("epoch", 30) == 30 and parse_every("25", 30) == 25
    for bad in ("0", "often"):
        with pytest.raises(ConfigError, match="--update-every"):
            parse_every(bad, 30)


def test_prune_command_writes_mask_weights_and_log(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["prune", "--model", "lenet_64_32", "--dataset", "synthetic", "--steps", "40"]
    argv += ["--batch-size", "32", "--schedule", "one-cycle", "--final-sparsity", "0.9"]
    argv += ["--update-every", "10", "--lr-schedule", "one-cycle", "--device", "cpu"]
    argv += ["--eval-every", "10", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "one-cycle: sparsity 90.00% (target 90.00%" in printed
    accuracy = float(re.search(r"test accuracy (\d+\.\d\d)%", printed).group(1))
    assert accuracy == pytest.approx(
        100 * json.loads((out / "result.json").read_text())["test_accuracy"], abs=0.005
    )
    cfg = TrainConfig.from_dict(json.loads((out / "config.json").read_text())["config"])
    assert cfg.lr_schedule == "one-cycle"
    assert cfg.extra["pruning"]["schedule"]["params"] == {"alpha": 14.0, "beta": 5.0}
    model = make_model(cfg, load_data(cfg))
    mask = Mask.load(out / "mask.npz", model)
    for name, (kept, total) in mask.layer_counts().items():
        assert total - kept == round(0.9 * total), name
    state, sparse_mask = load_sparse(out / "weights.npz")
    assert sparse_mask.equal(mask)
    for name, keep in mask.tensors.items():
        assert not state[name][~keep].any()
    log = [json.loads(x) for x in (out / "pruning.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 10, 20, 30, 40] and log[-1]["target"] == 0.9
    # the same command again finds the finished run and reports the same mask
    assert main(argv) == 0
    assert Mask.load(out / "mask.npz").equal(mask)
    assert main([*argv[:-3], "--out", str(out), "--final-sparsity", "0.5", "--no-progress"]) == 2
    assert "another configuration" in capsys.readouterr().err


def test_prune_command_prunes_only_the_convolutions_with_layers_conv(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["prune", "--model", "allconv", "--dataset", "synthetic", "--steps", "12"]
    argv += ["--batch-size", "16", "--schedule", "agp", "--final-sparsity", "0.9"]
    argv += ["--update-every", "4", "--device", "cpu", "--no-progress", "--layers", "conv"]
    assert main([*argv, "--out", str(out)]) == 0
    assert "sparsity 90.00% (target 90.00%" in capsys.readouterr().out
    mask = Mask.load(out / "mask.npz")
    assert mask.names() == [f"features.{i}.weight" for i in (0, 4, 8, 11)]
    for name, (kept, total) in mask.layer_counts().items():
        assert total - kept == round(0.9 * total), name
    state, _ = load_sparse(out / "weights.npz")
    assert bool(state["classifier.weight"].ne(0).all())
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["extra"]["pruning"]["layers"] == "conv"
    # a net without convolutions, or a rate scale on a tensor left dense, is refused up front
    lenet = ["--model", "lenet_64_32", "--out", str(tmp_path / "lenet")]
    assert main([*argv, *lenet]) == 2
    fc = ["--rate-scale", "classifier.weight=0.5", "--out", str(tmp_path / "fc")]
    assert main([*argv, *fc]) == 2
    err = capsys.readouterr().err
    assert "no convolution weights" in err and "'classifier.weight'" in err
    assert not (tmp_path / "lenet").exists() and not (tmp_path / "fc").exists()
    with pytest.raises(ConfigError, match="pruned layers"):
        PruningSettings(layers="fc")


@pytest.mark.parametrize("batched", [False, True])
def test_best_validation_of_a_pruning_run_is_taken_at_its_final_sparsity(tmp_path, batched):
    """The dense evaluations before the one-shot prune have the lowest validation loss, yet the
    run's "at min. validation loss" comes from an evaluation at the final mask."""
    out = tmp_path / "run"
    argv = ["prune", "--model", "lenet_64_32", "--dataset", "synthetic", "--steps", "60"]
    argv += ["--batch-size", "32", "--schedule", "one-shot", "--final-sparsity", "0.995"]
    argv += ["--start", "0.5", "--update-every", "10", "--device", "cpu", "--eval-every", "10"]
    argv += ["--out", str(out), "--no-progress", "--seeds", "0,1"]
    assert main([*argv, "--batched"] if batched else argv) == 0
    for seed in (0, 1):
        run = out / f"seed_{seed}"
        metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        result = json.loads((run / "result.json").read_text())
        final = metrics[-1]["density"]
        at_final = [m for m in metrics if m["density"] == final]
        assert min(metrics, key=lambda m: m["val_loss"])["density"] > final  # denser was best
        best = min(at_final, key=lambda m: m["val_loss"])
        assert result["best_val_step"] == best["step"] and best["step"] >= 30
        assert result["test_accuracy_at_best_val"] == best["test_accuracy"]


def test_a_schedule_that_cannot_do_what_it_says_is_warned_about(caplog):
    def warnings(**kw) -> list[str]:
        schedule = Schedule(kw.pop("name", "agp"), 0.9, end=kw.pop("end", 1.0))
        return GradualPruner(schedule, 200, **kw).warnings()

    few, none_after = warnings(every=100)  # updates at 100 and 200, the last at the final step
    assert "only 2 mask update(s)" in few and "final step (200)" in none_after
    assert warnings(every=10, end=0.8) == []
    assert warnings(name="one-shot", every=100, end=0.5) == []
    assert len(warnings(every=10)) == 1  # smooth, but nothing after the last update
