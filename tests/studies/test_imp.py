"""IMP: reset correctness per mode, controls, records, resume after a kill, determinism."""

from __future__ import annotations

import json

import pytest
import torch

from lottery.cli.main import main
from lottery.core.config import ConfigError
from lottery.core.storage import load_checkpoint
from lottery.pruning.masks import Mask, load_sparse
from lottery.studies.imp import IMPConfig, run_imp
from lottery.training import engine
from lottery.training.engine import Hooks
from tests.conftest import tiny


def imp(**kw) -> IMPConfig:
    return IMPConfig(**{"rounds": 2, "fraction": 0.5, "scope": "layer", **kw})


def masks_of(out, rounds: int) -> list[Mask]:
    return [Mask.load(out / f"round_{r:02d}" / "mask.npz") for r in range(rounds + 1)]


def test_summary_records_rounds_densities_and_controls(tmp_path):
    cfg = tiny(steps=40)
    summary = run_imp(
        cfg, imp(controls=("random-reinit", "random-prune")), tmp_path, progress=False
    )
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["rounds"] == summary["rounds"]
    rows = summary["rounds"]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[0]["density"] == 1.0
    masks = masks_of(tmp_path, 2)
    for row, mask in zip(rows, masks, strict=True):
        assert row["density"] == pytest.approx(mask.density())
        assert set(row["layer_density"]) == set(mask.names())
        for key in ("test_accuracy", "best_val_step", "test_accuracy_at_best_val"):
            assert row[key] is not None
    assert rows[0]["test_accuracy"] > 0.3
    for r in (1, 2):
        assert set(rows[r]["controls"]) == {"random-reinit", "random-prune"}
        rnd = Mask.load(tmp_path / f"round_{r:02d}" / "random_prune" / "mask.npz")
        assert rnd.layer_counts() == masks[r].layer_counts() and not rnd.equal(masks[r])
    assert masks[2].is_subset_of(masks[1]) and masks[1].is_subset_of(masks[0])
    for name, (kept, total) in masks[1].layer_counts().items():
        rate = 0.25 if name == "classifier.4.weight" else 0.5  # LeNet default: output at half rate
        assert total - kept == round(rate * total), name
    # the next mask is pruned from the previous round's final weights
    final, _ = load_sparse(tmp_path / "round_00" / "ticket" / "weights.npz")
    w = final["classifier.0.weight"].abs()
    keep = masks[1].tensors["classifier.0.weight"]
    assert w[~keep].max() <= w[keep].min()


@pytest.mark.parametrize("reset,k", [("init", 0), ("rewind", 10)])
def test_survivors_restart_exactly_from_theta0_or_theta_k(tmp_path, reset, k):
    cfg = tiny(steps=40, save_at=(k,))
    run_imp(cfg, imp(rounds=1, reset=reset, rewind_step=k), tmp_path, progress=False)
    dense = load_checkpoint(tmp_path / "round_00" / "ticket" / "checkpoints" / f"step_{k:07d}.pt")
    start = load_checkpoint(tmp_path / "round_01" / "ticket" / "checkpoints" / f"step_{k:07d}.pt")
    mask = Mask.load(tmp_path / "round_01" / "mask.npz")
    assert start["step"] == k
    for name, keep in mask.tensors.items():
        assert torch.equal(start["model"][name][keep], dense["model"][name][keep])
        assert (start["model"][name][~keep] == 0).all()
    if reset == "rewind":
        # optimizer momentum at step k is restored too (pruned entries zeroed)
        dense_buf = dense["optimizer"]["state"][0]["momentum_buffer"]
        start_buf = start["optimizer"]["state"][0]["momentum_buffer"]
        keep = mask.tensors["classifier.0.weight"]
        assert torch.equal(start_buf[keep], dense_buf[keep])
        assert start["scheduler"]["last_epoch"] == k


def test_lr_rewind_and_finetune_start_from_final_weights(tmp_path):
    for reset in ("lr-rewind", "finetune"):
        out = tmp_path / reset
        cfg = tiny(steps=40, save_at=(5,))
        run_imp(cfg, imp(rounds=1, reset=reset, rewind_step=5), out, progress=False)
        final, _ = load_sparse(out / "round_00" / "ticket" / "weights.npz")
        start = load_checkpoint(out / "round_01" / "ticket" / "checkpoints" / "step_0000005.pt")
        mask = Mask.load(out / "round_01" / "mask.npz")
        for name, keep in mask.tensors.items():
            assert torch.equal(start["model"][name][keep], final[name][keep])
        lr = start["optimizer"]["param_groups"][0]["lr"]
        assert lr == pytest.approx(0.05 * 0.01 if reset == "finetune" else 0.05)


def test_same_seeds_give_bit_identical_masks_and_weights(tmp_path):
    cfg = tiny(steps=40)
    run_imp(cfg, imp(), tmp_path / "a", progress=False)
    run_imp(cfg, imp(), tmp_path / "b", progress=False)
    for ma, mb in zip(masks_of(tmp_path / "a", 2), masks_of(tmp_path / "b", 2), strict=True):
        assert ma.equal(mb)
    wa, _ = load_sparse(tmp_path / "a" / "round_02" / "ticket" / "weights.npz")
    wb, _ = load_sparse(tmp_path / "b" / "round_02" / "ticket" / "weights.npz")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_killed_search_resumes_to_the_same_masks_and_extends(tmp_path, monkeypatch):
    cfg = tiny(steps=40)
    settings = imp(controls=("random-reinit",))
    run_imp(cfg, settings, tmp_path / "whole", progress=False)

    calls = {"n": 0}
    real_init = engine.Engine.__init__

    class Killed(Exception):
        pass

    def bomb(done: int) -> None:
        calls["n"] += 1
        if calls["n"] == 100:  # in round 1's ticket or control, mid-run
            raise Killed

    def patched(self, *a, **kw):
        real_init(self, *a, **kw)
        self.hooks = Hooks(**{**self.hooks.__dict__, "after_step": [bomb]})

    monkeypatch.setattr(engine.Engine, "__init__", patched)
    with pytest.raises(Killed):
        run_imp(cfg, settings, tmp_path / "killed", progress=False)
    monkeypatch.setattr(engine.Engine, "__init__", real_init)
    run_imp(cfg, settings, tmp_path / "killed", progress=False)
    for a, b in zip(masks_of(tmp_path / "whole", 2), masks_of(tmp_path / "killed", 2), strict=True):
        assert a.equal(b)
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())["rounds"]
    resumed = json.loads((tmp_path / "killed" / "summary.json").read_text())["rounds"]
    for a, b in zip(whole, resumed, strict=True):
        assert a["test_accuracy"] == b["test_accuracy"]
        assert a["controls"].get("random-reinit", {}).get("test_accuracy") == b["controls"].get(
            "random-reinit", {}
        ).get("test_accuracy")
    more = run_imp(
        cfg, imp(rounds=3, controls=("random-reinit",)), tmp_path / "killed", progress=False
    )
    assert len(more["rounds"]) == 4
    with pytest.raises(ConfigError, match="other settings"):
        run_imp(cfg, imp(rounds=3, fraction=0.3), tmp_path / "killed", progress=False)


def test_bad_settings_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="reset"):
        IMPConfig(reset="warm")
    with pytest.raises(ConfigError, match="control"):
        IMPConfig(controls=("shuffle",))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        IMPConfig(fraction=1.0)
    with pytest.raises(ConfigError, match="beyond the end"):
        run_imp(tiny(steps=20), imp(reset="rewind", rewind_step=50), tmp_path, progress=False)


def test_cli_prints_the_table_and_reports_bad_input(tmp_path, capsys):
    args = ["imp", "--model", "lenet_32", "--dataset", "synthetic", "--steps", "30",
            "--batch-size", "32", "--rounds", "1", "--controls", "random-prune",
            "--device", "cpu", "--no-progress", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "weights%" in out and "random-prune" in out
    # LeNet default: 20% per round, output layer 10%: (8512 - 1638 - 32) / 8512 = 80.38%
    assert "80.38" in out
    assert (
        main(["imp", "--model", "nonet", "--dataset", "synthetic", "--out", str(tmp_path / "x")])
        == 2
    )
    assert "nonet" in capsys.readouterr().err
    assert (
        main(
            [
                "imp",
                "--dataset",
                "synthetic",
                "--prune-fraction",
                "1.2",
                "--out",
                str(tmp_path / "y"),
            ]
        )
        == 2
    )
    assert "[0, 1)" in capsys.readouterr().err


def test_control_rounds_train_controls_only_where_named(tmp_path, capsys):
    cfg = tiny(steps=20)
    summary = run_imp(
        cfg, imp(rounds=3, controls=("random-reinit",), control_rounds=(2,)), tmp_path,
        progress=False,
    )  # fmt: skip
    assert [set(r.get("controls", {})) for r in summary["rounds"]] == [
        set(), set(), {"random-reinit"}, set()
    ]  # fmt: skip
    assert not (tmp_path / "round_01" / "random_reinit").exists()
    assert (tmp_path / "round_02" / "random_reinit").is_dir()
    # other control rounds make another search: refused, naming the setting
    with pytest.raises(ConfigError, match="control_rounds"):
        run_imp(cfg, imp(rounds=3, controls=("random-reinit",)), tmp_path, progress=False)
    with pytest.raises(ConfigError, match=">= 1"):
        IMPConfig(control_rounds=(0,))
    args = ["imp", "--model", "lenet_32", "--dataset", "synthetic", "--steps", "10",
            "--batch-size", "32", "--rounds", "2", "--controls", "random-prune",
            "--control-rounds", "2", "--device", "cpu", "--no-progress",
            "--out", str(tmp_path / "cli")]  # fmt: skip
    assert main(args) == 0
    rows = json.loads((tmp_path / "cli" / "summary.json").read_text())["rounds"]
    assert [sorted(r.get("controls", {})) for r in rows] == [[], [], ["random-prune"]]


def test_a_batched_multi_seed_search_killed_between_its_seeds_checkpoints_resumes_exactly(
    tmp_path, monkeypatch
):
    """Killed after seed 0 wrote its step-10 checkpoint and before seed 1 wrote its own: the two
    seeds must resume as one stacked cohort, or they would train apart and end differently."""
    from lottery.studies.imp import run_imp_seeds
    from lottery.training.run import Run

    cfg = tiny(steps=30, checkpoint_every=5, eval_every=10)
    settings = imp(rounds=1, batched=True)
    run_imp_seeds(cfg, settings, tmp_path / "whole", [0, 1], progress=False)

    class Killed(Exception):
        pass

    real = Run.checkpoint

    def aimed(self, step, state):
        if "seed_1" in str(self.dir) and "round_01" in str(self.dir) and step == 10:
            raise Killed  # seed 0 has written step 10; seed 1 is still at step 5
        real(self, step, state)

    monkeypatch.setattr(Run, "checkpoint", aimed)
    with pytest.raises(Killed):
        run_imp_seeds(cfg, settings, tmp_path / "killed", [0, 1], progress=False)
    monkeypatch.setattr(Run, "checkpoint", real)
    run_imp_seeds(cfg, settings, tmp_path / "killed", [0, 1], progress=False)
    for seed in (0, 1):
        a = load_sparse(tmp_path / "whole" / f"seed_{seed}" / "round_01" / "ticket" / "weights.npz")
        b = load_sparse(
            tmp_path / "killed" / f"seed_{seed}" / "round_01" / "ticket" / "weights.npz"
        )
        assert all(torch.equal(a[0][n], b[0][n]) for n in a[0]), seed
        whole = (tmp_path / "whole" / f"seed_{seed}" / "summary.json").read_text()
        killed = (tmp_path / "killed" / f"seed_{seed}" / "summary.json").read_text()
        assert (
            json.loads(whole)["rounds"][1]["test_loss"]
            == json.loads(killed)["rounds"][1]["test_loss"]
        )
