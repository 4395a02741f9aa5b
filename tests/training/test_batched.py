"""Batched training: K runs as one stacked model equal K separate Trainer runs (CPU, float tolerance)."""

from __future__ import annotations

import json

import pytest
import torch

from lottery.cli.main import main
from lottery.core.config import TrainConfig
from lottery.core.optim import build_optimizer
from lottery.core.storage import load_checkpoint
from lottery.pruning.masks import Mask
from lottery.studies.imp import IMPConfig, run_imp_seeds
from lottery.training.engine import Hooks, begin, cohort_key, train_runs
from lottery.training.run import Run, RunSpec, StartState
from lottery.training.setup import load_data, make_model
from lottery.training.stacked import SingleCopy, StackedCopies
from lottery.training.trainer import Trainer
from tests.conftest import tiny

RTOL, ATOL = 1e-5, 1e-6


def random_mask(model: torch.nn.Module, density: float, seed: int) -> Mask:
    gen = torch.Generator().manual_seed(seed)
    ones = Mask.ones(model)
    return Mask({n: torch.rand(t.shape, generator=gen) < density for n, t in ones.tensors.items()})


def specs(cfg: TrainConfig, data, root, start_at: int | None = None) -> list[RunSpec]:
    """Three runs differing in init seed, data seed and mask (the first unmasked)."""
    out = []
    for i in range(3):
        c = cfg.replace(init_seed=10 + i, data_seed=i % 2)
        model = make_model(c, data)
        mask = random_mask(model, 0.5, seed=i) if i else None
        out.append(RunSpec(c, root / f"run{i}", model, mask, None, {"label": f"run {i}"}))
    return out


def read_lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def assert_close_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=RTOL, atol=ATOL, msg=k)


@pytest.mark.parametrize(
    "kind,settings",
    [
        ("sgd", dict(momentum=0.9, nesterov=True, weight_decay=5e-4)),
        ("adam", dict(weight_decay=1e-4)),
        ("adamw", dict(weight_decay=1e-2)),
    ],
)
def test_one_stacked_optimizer_equals_k_optimizers(kind, settings):
    """The elementwise claim behind batching, checked directly over 20 steps with random grads."""
    cfg = TrainConfig(optimizer=kind, lr=0.01, **settings)
    gen = torch.Generator().manual_seed(0)
    copies = [torch.nn.Linear(6, 4) for _ in range(3)]
    stacked = torch.nn.ParameterList(
        [torch.nn.Parameter(torch.stack([dict(c.named_parameters())[n].detach() for c in copies]))
         for n, _ in copies[0].named_parameters()]
    )  # fmt: skip
    opts = [build_optimizer(cfg, c) for c in copies]
    big = build_optimizer(cfg, stacked)
    for _ in range(20):
        for p in stacked:
            p.grad = torch.randn(p.shape, generator=gen)
        for i, (c, o) in enumerate(zip(copies, opts, strict=True)):
            for p, sp in zip(c.parameters(), stacked, strict=True):
                p.grad = sp.grad[i].clone()
            o.step()
        big.step()
    for i, c in enumerate(copies):
        for p, sp in zip(c.parameters(), stacked, strict=True):
            torch.testing.assert_close(p.detach(), sp.detach()[i], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.05), ("adam", 0.01)])
def test_batched_runs_equal_separate_trainer_runs(tmp_path, optimizer, lr):
    cfg = tiny(optimizer=optimizer, lr=lr, steps=40, save_at=(10,), lr_schedule="cosine")
    data = load_data(cfg)
    alone = train_runs(specs(cfg, data, tmp_path / "alone"), data, batched=False, progress=False)
    together = train_runs(specs(cfg, data, tmp_path / "batch"), data, batched=True, progress=False)
    for i, (a, b) in enumerate(zip(alone, together, strict=True)):
        ra, rb = tmp_path / "alone" / f"run{i}", tmp_path / "batch" / f"run{i}"
        # the same files, the same records
        files = sorted(p.relative_to(ra).as_posix() for p in ra.rglob("*"))
        assert files == sorted(p.relative_to(rb).as_posix() for p in rb.rglob("*"))
        assert "checkpoints/step_0000010.pt" in files and "checkpoints/final.pt" in files
        assert json.loads((ra / "config.json").read_text()) == json.loads(
            (rb / "config.json").read_text()
        )
        ma, mb = read_lines(ra / "metrics.jsonl"), read_lines(rb / "metrics.jsonl")
        assert [r["step"] for r in ma] == [r["step"] for r in mb] == [0, 20, 40]
        for x, y in zip(ma, mb, strict=True):
            assert x.keys() == y.keys()
            assert x["lr"] == y["lr"] and x["density"] == y["density"]
            assert (x["train_loss"] is None) == (y["train_loss"] is None)
            for key in ("train_loss", "val_loss", "test_loss") if x["step"] else ("val_loss",):
                assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-6)
        assert (
            json.loads((ra / "result.json").read_text()).keys()
            == json.loads((rb / "result.json").read_text()).keys()
        )
        assert a.test_accuracy == pytest.approx(b.test_accuracy, abs=0.005)
        assert b.test_accuracy > 0.3  # 10 classes: chance is 0.1
        # the same trajectory: weights at step 10 and at the end, optimizer state, masks
        for name in ("step_0000010.pt", "final.pt"):
            ca, cb = (load_checkpoint(r / "checkpoints" / name) for r in (ra, rb))
            assert_close_states(ca["model"], cb["model"])
            assert ca["step"] == cb["step"] and ca["scheduler"] == cb["scheduler"]
            assert ca["optimizer"]["param_groups"] == cb["optimizer"]["param_groups"]
            for sa, sb in zip(
                ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values(), strict=True
            ):
                assert_close_states(sa, sb)
            if i == 0:
                assert ca["mask"] is None and cb["mask"] is None
            else:
                assert Mask(ca["mask"]).equal(Mask(cb["mask"]))
                weights = cb["model"]
                assert all(not weights[n][~m].any() for n, m in cb["mask"].items())


def test_interrupted_batched_run_resumes_bitwise(tmp_path):
    cfg = tiny(optimizer="adam", lr=0.01, steps=40, eval_every=10, checkpoint_every=10)
    data = load_data(cfg)
    train_runs(specs(cfg, data, tmp_path / "full"), data, batched=True, progress=False)

    def crash(step: int) -> None:
        if step == 25:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_runs(
            specs(cfg, data, tmp_path / "cut"),
            data,
            batched=True,
            progress=False,
            hooks=Hooks(after_step=[crash]),
        )
    assert all(load_checkpoint(tmp_path / "cut" / f"run{i}" / "checkpoints" / "last.pt")["step"]
               == 20 for i in range(3))  # fmt: skip
    train_runs(specs(cfg, data, tmp_path / "cut"), data, batched=True, progress=False)
    for i in range(3):
        full = load_checkpoint(tmp_path / "full" / f"run{i}" / "checkpoints" / "final.pt")
        cut = load_checkpoint(tmp_path / "cut" / f"run{i}" / "checkpoints" / "final.pt")
        for k in full["model"]:
            assert torch.equal(full["model"][k], cut["model"][k]), k
        lines = read_lines(tmp_path / "cut" / f"run{i}" / "metrics.jsonl")
        assert [r["step"] for r in lines] == [0, 10, 20, 30, 40]


def prepared(cfg: TrainConfig, data, run_dir, start: StartState | None = None):
    """A run opened by the engine at its start state: (its single copy, the step it stands at)."""
    run = Run(RunSpec(cfg, run_dir, make_model(cfg, data)), data, torch.device(cfg.device))
    return begin(run, start, data, Hooks())[:2]


@pytest.mark.parametrize("seeds", [(0, 1, 2), (5, 7, 5), (3, 3, 3)])
def test_each_copy_gets_its_own_data_order(tmp_path, seeds):
    cfg = tiny(steps=10)
    data = load_data(cfg)
    singles = [prepared(cfg.replace(data_seed=s), data, tmp_path / str(i))[0]
               for i, s in enumerate(seeds)]  # fmt: skip
    batched = StackedCopies(singles, 0)
    per_epoch = singles[0].runs[0].stream.steps_per_epoch
    for step in (0, 1, per_epoch - 1, per_epoch, 3 * per_epoch + 2):
        x, y = batched.batch(step)
        for i, single in enumerate(singles):
            xi, yi = single.runs[0].stream.batch(step)
            shared = len(set(seeds)) == 1
            assert torch.equal(x if shared else x[i], xi) and torch.equal(y if shared else y[i], yi)


def test_cohorts_follow_optimizer_step_and_settings(tmp_path):
    """Adam copies share one optimizer only at the same step count; SGD copies always can."""
    cfg = tiny(optimizer="adam", lr=0.01, steps=20, save_at=(5,))
    data = load_data(cfg)
    Trainer(cfg, data, make_model(cfg, data), tmp_path / "src", progress=False).fit()
    theta_5 = StartState.from_checkpoint(tmp_path / "src" / "checkpoints" / "step_0000005.pt")
    keys = []
    for name, start in (("a", theta_5), ("b", theta_5), ("c", StartState(theta_5.model, None, 5))):
        keys.append(cohort_key(*prepared(cfg, data, tmp_path / name, start)))
    assert keys[0] == keys[1] != keys[2]  # step-5 Adam moments vs a fresh Adam at step 5
    other = cfg.replace(lr=0.02)
    assert cohort_key(*prepared(other, data, tmp_path / "d", theta_5)) != keys[0]


def test_sgd_copies_with_and_without_momentum_share_a_cohort(tmp_path):
    """A fresh SGD copy joins copies that carry θk's momentum: zeros stand in for its buffer."""
    cfg = tiny(steps=20, save_at=(5,))
    data = load_data(cfg)
    Trainer(cfg, data, make_model(cfg, data), tmp_path / "src", progress=False).fit()
    theta_5 = StartState.from_checkpoint(tmp_path / "src" / "checkpoints" / "step_0000005.pt")
    starts = [theta_5, StartState(make_model(cfg, data, seed=9).state_dict(), None, 5)]

    def runs(root):
        return [RunSpec(cfg, root / f"r{i}", make_model(cfg, data), None, s)
                for i, s in enumerate(starts)]  # fmt: skip

    train_runs(runs(tmp_path / "a"), data, batched=False, progress=False)
    probe = runs(tmp_path / "probe")
    keys = {cohort_key(*prepared(s.cfg, data, s.run_dir, s.start)) for s in probe}
    assert len(keys) == 1
    train_runs(runs(tmp_path / "b"), data, batched=True, progress=False)
    for i in range(2):
        a = load_checkpoint(tmp_path / "a" / f"r{i}" / "checkpoints" / "final.pt")
        b = load_checkpoint(tmp_path / "b" / f"r{i}" / "checkpoints" / "final.pt")
        assert_close_states(a["model"], b["model"])
        for sa, sb in zip(
            a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True
        ):
            assert_close_states(sa, sb)


def bn_mlp(seed: int) -> torch.nn.Module:
    """A small BatchNorm network (RunSpec takes any module of one architecture)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(256, 32), torch.nn.BatchNorm1d(32),
            torch.nn.ReLU(), torch.nn.Linear(32, 10),
        )  # fmt: skip


def test_batchnorm_buffers_follow_each_copy(tmp_path):
    cfg = tiny(steps=30, eval_every=10, checkpoint_every=10)
    data = load_data(cfg)

    def runs(root):
        return [RunSpec(cfg.replace(init_seed=i, data_seed=i), root / f"r{i}", bn_mlp(i))
                for i in range(2)]  # fmt: skip

    train_runs(runs(tmp_path / "a"), data, batched=False, progress=False)
    train_runs(runs(tmp_path / "b"), data, batched=True, progress=False)
    means = []
    for i in range(2):
        a = load_checkpoint(tmp_path / "a" / f"r{i}" / "checkpoints" / "final.pt")["model"]
        b = load_checkpoint(tmp_path / "b" / f"r{i}" / "checkpoints" / "final.pt")["model"]
        assert int(b["2.num_batches_tracked"]) == 30
        assert_close_states(a, b)
        means.append(b["2.running_mean"])
    assert not torch.allclose(means[0], means[1])  # the copies saw different data


def test_batched_imp_over_seeds_matches_separate_runs(tmp_path):
    """Rewinding with Adam: ticket and random-prune share θk's optimizer state, random-reinit
    starts fresh at step k, so a round splits into two cohorts across both seeds."""
    cfg = tiny(optimizer="adam", lr=0.01, steps=20, eval_every=10, checkpoint_every=10)
    imp = IMPConfig(rounds=2, fraction=0.5, reset="rewind", rewind_step=5,
                    controls=("random-reinit", "random-prune"), save_control_weights=True)  # fmt: skip
    alone = run_imp_seeds(cfg, imp, tmp_path / "alone", [0, 1], progress=False)
    imp.batched = True
    together = run_imp_seeds(cfg, imp, tmp_path / "batch", [0, 1], progress=False)
    for s in (0, 1):
        ra, rb = tmp_path / "alone" / f"seed_{s}", tmp_path / "batch" / f"seed_{s}"
        files = sorted(p.relative_to(ra).as_posix() for p in ra.rglob("*"))
        assert files == sorted(p.relative_to(rb).as_posix() for p in rb.rglob("*"))
        for r in range(3):
            for mask in (f"round_{r:02d}/mask.npz", f"round_{r:02d}/random_prune/mask.npz"):
                if (ra / mask).exists():
                    assert Mask.load(ra / mask).equal(Mask.load(rb / mask)), mask
        assert Mask.load(ra / "round_02" / "mask.npz").density() < 0.3
        a, b = alone[s]["rounds"], together[s]["rounds"]
        assert [x.keys() for x in a] == [x.keys() for x in b]
        for x, y in zip(a, b, strict=True):
            assert x["test_accuracy"] == pytest.approx(y["test_accuracy"], abs=0.005)
            assert x["controls"].keys() == y["controls"].keys()
    assert (
        json.loads((tmp_path / "batch" / "seed_1" / "imp.json").read_text())["train"]["init_seed"]
        == 1
    )


def test_cli_imp_seeds_batched(tmp_path):
    out = tmp_path / "search"
    code = main(["imp", "--model", "lenet_16", "--dataset", "synthetic", "--steps", "6",
                 "--batch-size", "32", "--rounds", "1", "--controls", "random-reinit",
                 "--seeds", "3,4", "--batched", "--device", "cpu", "--no-progress",
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    for s in (3, 4):
        summary = json.loads((out / f"seed_{s}" / "summary.json").read_text())
        assert summary["settings"]["batched"] is True
        assert [r["round"] for r in summary["rounds"]] == [0, 1]
        config = json.loads((out / f"seed_{s}" / "round_01" / "ticket" / "config.json").read_text())
        assert config["config"]["init_seed"] == s == config["config"]["data_seed"]
    assert main(["imp", "--seeds", "1,1", "--dataset", "synthetic", "--out", str(out)]) == 2


def test_a_fresh_cohort_is_evaluated_at_its_start_in_one_stacked_pass(tmp_path, monkeypatch):
    cfg = tiny(steps=20, eval_every=10, checkpoint_every=10)
    data = load_data(cfg)
    separate = [train_runs([s], data, progress=False)[0]
                for s in specs(cfg, data, tmp_path / "separate")]  # fmt: skip

    def refuse(*args, **kwargs):
        raise AssertionError("a batched copy was evaluated on its own")

    monkeypatch.setattr(SingleCopy, "evaluate", refuse)
    batched = train_runs(specs(cfg, data, tmp_path / "batched"), data, batched=True, progress=False)
    for i, (a, b) in enumerate(zip(separate, batched, strict=True)):
        assert a.test_accuracy == pytest.approx(b.test_accuracy, abs=0.01)
        one, stacked = (read_lines(tmp_path / d / f"run{i}" / "metrics.jsonl")
                        for d in ("separate", "batched"))  # fmt: skip
        assert [r["step"] for r in stacked] == [0, 10, 20]
        assert stacked[0]["test_accuracy"] == one[0]["test_accuracy"]  # the same initial weights
        assert stacked[0]["val_loss"] == pytest.approx(one[0]["val_loss"], rel=1e-5)


def test_a_batched_runs_checkpoints_hold_its_own_copy_only(tmp_path):
    cfg = tiny(optimizer="adam", lr=0.01, steps=20, checkpoint_every=10, save_at=(10,))
    data = load_data(cfg)
    train_runs(specs(cfg, data, tmp_path), data, batched=True, progress=False)
    for i in range(3):
        for name in ("step_0000010.pt", "final.pt"):
            ck = load_checkpoint(tmp_path / f"run{i}" / "checkpoints" / name)
            moments = [t for s in ck["optimizer"]["state"].values() for t in s.values()]
            for t in [*ck["model"].values(), *moments]:
                assert t.untyped_storage().nbytes() == t.numel() * t.element_size()
