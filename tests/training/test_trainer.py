"""Trainer: accuracy on real data, exact rewind/resume, atomic checkpoints, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
import torch

from lottery.core import storage
from lottery.core.config import ConfigError, TrainConfig
from lottery.core.optim import lr_factor
from lottery.core.storage import CheckpointError, load_checkpoint
from lottery.models.registry import build_model
from lottery.pruning.pruner import GradualPruner
from lottery.pruning.schedules import Schedule
from lottery.training import engine
from lottery.training.engine import train_runs
from lottery.training.run import RunSpec, StartState
from lottery.training.setup import load_data, make_model
from lottery.training.stacked import evaluate
from lottery.training.trainer import Trainer
from tests.conftest import tiny

FMNIST = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


def fit(cfg: TrainConfig, run_dir, start=None, **kw):
    data = load_data(cfg)
    trainer = Trainer(cfg, data, make_model(cfg, data), run_dir, progress=False, **kw)
    return trainer, trainer.fit(start)


def final_model(run_dir) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "final.pt")["model"]


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(FMNIST), reason="dataset-fashion-mnist not installed")
def test_lenet_two_epochs_fashion_mnist_reaches_85_percent(tmp_path):
    cfg = TrainConfig(epochs=2, optimizer="adam", lr=1.2e-3, batch_size=60, device="cpu")
    _, result = fit(cfg, tmp_path)
    assert result.test_accuracy >= 0.85
    assert result.best_val_step is not None and result.test_accuracy_at_best_val >= 0.85


def test_records_config_metrics_and_result(tmp_path):
    cfg = tiny(init_seed=3, data_seed=4, split_seed=5)
    trainer, result = fit(cfg, tmp_path)
    record = json.loads((tmp_path / "config.json").read_text())
    assert record["config"]["init_seed"] == 3 and record["config"]["data_seed"] == 4
    assert record["config"]["split_seed"] == 5
    assert record["torch_version"] == torch.__version__ and "lottery_version" in record
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 20, 40, 60]
    assert lines[-1]["test_accuracy"] == pytest.approx(result.test_accuracy)
    best = min(lines, key=lambda r: r["val_loss"])
    assert result.best_val_step == best["step"]
    assert result.test_accuracy_at_best_val == best["test_accuracy"]
    assert result.test_accuracy > 0.5  # 10 classes: chance is 0.1
    assert json.loads((tmp_path / "result.json").read_text())["steps"] == 60


def test_evaluation_at_any_batch_size_agrees_with_float64(tmp_path):
    cfg = tiny()
    trainer, _ = fit(cfg, tmp_path)
    model, data = trainer.model, trainer.data
    with torch.no_grad():
        logits = model.eval()(data.test_x).double()
    loss = float(torch.nn.functional.cross_entropy(logits, data.test_y))
    correct = int((logits.argmax(1) == data.test_y).sum())
    for batch in (None, 1, 7, 64, 4096):
        got_loss, got_acc = evaluate(model, data.test_x, data.test_y, batch)
        assert got_acc == correct / len(data.test_y)
        assert got_loss == pytest.approx(loss, rel=1e-6)
    record = json.loads((tmp_path / "config.json").read_text())
    assert record["eval_batch"] == 8192  # a small MLP: the cap


def test_skipping_the_start_evaluation_changes_records_only(tmp_path):
    _, whole = fit(tiny(), tmp_path / "whole")
    _, skipped = fit(tiny(skip_start_eval=True, eval_batch=16), tmp_path / "skipped")
    lines = [
        json.loads(x) for x in (tmp_path / "skipped" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in lines] == [20, 40, 60]
    assert lines[0]["train_loss"] is not None  # the first record covers steps 1-20
    assert_same_state(final_model(tmp_path / "whole"), final_model(tmp_path / "skipped"))
    assert skipped.test_accuracy == whole.test_accuracy
    assert json.loads((tmp_path / "skipped" / "config.json").read_text())["eval_batch"] == 16
    # neither setting changes the run's numbers: the folder resumes or reads back without them
    _, again = fit(tiny(), tmp_path / "skipped")
    assert again.test_accuracy == skipped.test_accuracy


def test_epochs_convert_to_steps(tmp_path):
    cfg = tiny(steps=None, epochs=1.5, eval_every=None, checkpoint_every=None)
    trainer, result = fit(cfg, tmp_path)
    assert result.steps == round(1.5 * trainer.stream.steps_per_epoch)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_resume_from_step_k_checkpoint_is_bitwise_identical(tmp_path, optimizer):
    cfg = tiny(optimizer=optimizer, lr=0.01 if optimizer == "adam" else 0.05, save_at=(25,))
    cfg = cfg.replace(lr_schedule="cosine", warmup_steps=5)
    fit(cfg, tmp_path / "full")
    start = StartState.from_checkpoint(tmp_path / "full" / "checkpoints" / "step_0000025.pt")
    assert start.step == 25
    fit(cfg, tmp_path / "rewound", start=start)
    assert_same_state(final_model(tmp_path / "full"), final_model(tmp_path / "rewound"))


def test_same_command_gives_bit_identical_weights(tmp_path):
    fit(tiny(), tmp_path / "a")
    fit(tiny(), tmp_path / "b")
    assert_same_state(final_model(tmp_path / "a"), final_model(tmp_path / "b"))
    fit(tiny(data_seed=1), tmp_path / "c")
    assert not torch.equal(
        final_model(tmp_path / "a")["classifier.0.weight"],
        final_model(tmp_path / "c")["classifier.0.weight"],
    )


class Crash(Exception):
    pass


def crash_at(step: int):
    def hook(done: int) -> None:
        if done == step:
            raise Crash

    return hook


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    cfg = tiny(optimizer="adam", lr=0.01)
    fit(cfg, tmp_path / "whole")
    with pytest.raises(Crash):
        fit(cfg, tmp_path / "killed", on_step=crash_at(47))
    assert (tmp_path / "killed" / "checkpoints" / "last.pt").exists()
    assert not (tmp_path / "killed" / "result.json").exists()
    _, resumed = fit(cfg, tmp_path / "killed")
    assert_same_state(final_model(tmp_path / "whole"), final_model(tmp_path / "killed"))
    whole = (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    again = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in again] == [json.loads(x)["step"] for x in whole]
    assert [json.loads(x)["test_accuracy"] for x in again] == [
        json.loads(x)["test_accuracy"] for x in whole
    ]
    assert not (tmp_path / "killed" / "checkpoints" / "last.pt").exists()


def test_kill_during_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    cfg = tiny()
    run = tmp_path / "run"
    with pytest.raises(Crash):
        fit(cfg, run, on_step=crash_at(30))
    good = load_checkpoint(run / "checkpoints" / "last.pt")
    assert good["step"] == 20

    real_fsync = os.fsync

    def die_midway(fd):
        raise Crash  # the process dies after writing some bytes, before the rename

    monkeypatch.setattr(storage.os, "fsync", die_midway)
    with pytest.raises(Crash):
        fit(cfg, run)
    monkeypatch.setattr(storage.os, "fsync", real_fsync)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 20
    assert not list((run / "checkpoints").glob(".*tmp"))
    fit(cfg, run)
    fit(cfg, tmp_path / "whole")
    assert_same_state(final_model(tmp_path / "whole"), final_model(run))


@pytest.mark.slow
def test_sigkilled_process_resumes_with_the_same_command(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "lottery", "train", "--model", "lenet_64_32", "--dataset",
           "synthetic", "--steps", "400", "--batch-size", "32", "--optimizer", "sgd", "--lr",
           "0.05", "--checkpoint-every", "10", "--eval-every", "100", "--device", "cpu",
           "--no-progress", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = out / "checkpoints" / "last.pt"
    deadline = time.time() + 60
    while time.time() < deadline and not (last.exists() and load_step(last) >= 30):
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert not (out / "result.json").exists(), "run finished before it could be killed"
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    whole = tmp_path / "whole"
    subprocess.run([*cmd[:-1], str(whole)], check=True, stdout=subprocess.DEVNULL)
    assert_same_state(final_model(whole), final_model(out))


def load_step(path) -> int:
    try:
        return load_checkpoint(path)["step"]
    except CheckpointError:
        return -1


def test_truncated_and_foreign_checkpoints_name_the_file(tmp_path):
    fit(tiny(save_at=(20,)), tmp_path)
    path = tmp_path / "checkpoints" / "step_0000020.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="step_0000020.pt"):
        load_checkpoint(path)
    evil = tmp_path / "evil.pt"
    import pickle

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"format": "lottery-checkpoint/1", "x": Boom()}, evil, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(evil)
    assert not (tmp_path / "pwned").exists()
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="other.pt"):
        load_checkpoint(other)


def test_resuming_a_different_configuration_is_refused(tmp_path):
    with pytest.raises(Crash):
        fit(tiny(), tmp_path, on_step=crash_at(30))
    with pytest.raises(ConfigError, match="another configuration"):
        fit(tiny(lr=0.2), tmp_path)


def test_bad_configuration_errors(tmp_path):
    with pytest.raises(ConfigError, match="optimizer"):
        tiny(optimizer="rmsprop")
    with pytest.raises(ConfigError, match="LR schedule"):
        tiny(lr_schedule="exp")
    with pytest.raises(ConfigError, match="batch size"):
        tiny(batch_size=0)
    with pytest.raises(ConfigError, match="beyond the end"):
        fit(tiny(save_at=(500,)), tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no usable CUDA"):
            fit(tiny(device="cuda"), tmp_path / "cuda")
    with pytest.raises(ConfigError, match="bf16"):
        fit(tiny(bf16=True), tmp_path / "bf16")


def test_lr_schedules_follow_their_definitions():
    total = 100
    step = lr_factor(tiny(lr_schedule="step", milestones=(50, 0.75), gamma=0.1), total)
    assert [step(s) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    cos = lr_factor(tiny(lr_schedule="cosine"), total)
    assert cos(0) == pytest.approx(1) and cos(50) == pytest.approx(0.5) and cos(100) < 1e-9
    warm = lr_factor(tiny(lr_schedule="constant", warmup_steps=10), total)
    assert [warm(s) for s in (0, 4, 9, 10)] == pytest.approx([0.1, 0.5, 1.0, 1.0])
    one = lr_factor(tiny(lr_schedule="one-cycle"), total)
    assert one(0) == pytest.approx(1 / 25) and one(30) == pytest.approx(1.0)
    assert one(100) == pytest.approx(1 / 25e4)
    lin = lr_factor(tiny(lr_schedule="linear"), total)
    assert lin(25) == pytest.approx(0.75)


def test_scheduler_lr_is_recorded_per_step(tmp_path):
    cfg = tiny(lr_schedule="step", milestones=(30,), gamma=0.5, eval_every=10)
    fit(cfg, tmp_path)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    lrs = {r["step"]: r["lr"] for r in map(json.loads, lines)}
    assert lrs[20] == pytest.approx(0.05) and lrs[30] == pytest.approx(0.025)


def test_a_run_with_threads_gives_the_caller_its_thread_count_back(tmp_path):
    before = torch.get_num_threads()
    cfg = tiny(steps=4).replace(threads=1 if before != 1 else 2)
    data = load_data(cfg)
    Trainer(cfg, data, make_model(cfg, data), tmp_path / "t", progress=False).fit()
    assert torch.get_num_threads() == before
    train_runs([RunSpec(cfg, tmp_path / "e", make_model(cfg, data))], data, progress=False)
    assert torch.get_num_threads() == before


def test_training_goes_on_while_a_checkpoint_is_written(tmp_path, monkeypatch):
    """The write of step 20's checkpoint waits until training has reached step 25: a write that
    blocked the loop would never see it. The weights end as an undisturbed run's."""
    fit(tiny(), tmp_path / "whole")
    reached, real_save = threading.Event(), storage.save_checkpoint
    waited: list[bool] = []

    def slow_save(state, path):
        if state["step"] == 20:
            waited.append(reached.wait(timeout=60))
        real_save(state, path)

    def at_step(done: int) -> None:
        if done == 25:
            reached.set()

    monkeypatch.setattr(storage, "save_checkpoint", slow_save)
    fit(tiny(), tmp_path / "run", on_step=at_step)
    assert waited == [True]
    assert_same_state(final_model(tmp_path / "whole"), final_model(tmp_path / "run"))


def metrics_lines(run_dir) -> list[str]:
    return (run_dir / "metrics.jsonl").read_text().splitlines()


@pytest.mark.parametrize("pruned", [False, True])
def test_the_start_evaluation_beside_training_records_what_it_would_alone(
    tmp_path, monkeypatch, pruned
):
    """Scored on a spare core while training goes on, or before it: the same records, bit for
    bit, also when a mask update falls before the first evaluation."""

    def train(run_dir, beside: bool) -> None:
        monkeypatch.setattr(engine, "overlaps", lambda run: beside)
        pruner = GradualPruner(Schedule("agp", 0.5, end=0.5), 60, every=10) if pruned else None
        fit(tiny(), run_dir, pruner=pruner)

    train(tmp_path / "alone", False)
    train(tmp_path / "beside", True)
    assert metrics_lines(tmp_path / "beside") == metrics_lines(tmp_path / "alone")
    assert [json.loads(x)["step"] for x in metrics_lines(tmp_path / "beside")] == [0, 20, 40, 60]
    assert_same_state(final_model(tmp_path / "alone"), final_model(tmp_path / "beside"))


def test_training_goes_on_while_the_start_evaluation_is_scored(tmp_path, monkeypatch):
    reached, real_score, waited = threading.Event(), engine.score, []

    def slow_score(*args):
        waited.append(reached.wait(timeout=60))
        return real_score(*args)

    def at_step(done: int) -> None:
        if done == 5:
            reached.set()

    monkeypatch.setattr(engine, "overlaps", lambda run: True)
    monkeypatch.setattr(engine, "score", slow_score)
    fit(tiny(), tmp_path / "run", on_step=at_step)
    assert waited == [True]
    assert [json.loads(x)["step"] for x in metrics_lines(tmp_path / "run")] == [0, 20, 40, 60]
    assert not [t for t in threading.enumerate() if t.name.startswith("lottery-eval")]


def test_a_crash_before_the_start_evaluation_is_logged_resumes_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "overlaps", lambda run: True)
    fit(tiny(), tmp_path / "whole")
    with pytest.raises(Crash):
        fit(tiny(), tmp_path / "killed", on_step=crash_at(3))
    fit(tiny(), tmp_path / "killed")
    assert metrics_lines(tmp_path / "killed") == metrics_lines(tmp_path / "whole")
    assert_same_state(final_model(tmp_path / "whole"), final_model(tmp_path / "killed"))


def test_evaluation_on_several_threads_is_bit_for_bit_the_one_thread_one():
    x = torch.randn(300, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.arange(300) % 10
    for name in ("conv2", "lenet_300_100"):
        model = build_model(name, (1, 28, 28), 10, seed=0)
        one = evaluate(model, x, y, 32)
        for workers in (2, 3):
            assert evaluate(model, x, y, 32, workers=workers) == one
        assert model.training
    assert not [t for t in threading.enumerate() if t.name.startswith("lottery-eval")]
