"""Data-parallel runs under torchrun: 2 CPU ranks with gloo match one process; a lost rank fails fast.

Run as `torchrun ... -m tests.core.test_distributed CONFIG_JSON OUT`, this module is also the worker that
trains under a mask and a gradual pruner and dumps each rank's final weights and mask.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from lottery.cli.main import main as cli_main
from lottery.core import distributed
from lottery.core.config import ConfigError, TrainConfig
from lottery.core.storage import CheckpointError, load_checkpoint
from lottery.pruning.criteria import Context, score
from lottery.pruning.masks import Mask
from lottery.pruning.selection import prune
from lottery.training.setup import load_data, make_model
from lottery.training.stacked import evaluate
from lottery.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
TRAIN_FLAGS = ["--model", "lenet_32", "--dataset", "synthetic", "--batch-size", "32",
               "--optimizer", "sgd", "--lr", "0.05", "--device", "cpu", "--no-progress"]  # fmt: skip
LAUNCH_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class MagnitudeAt:
    """Gradual pruning for the test: 30% of the remaining weights by magnitude at step 10."""

    update_steps: set[int] = field(default_factory=lambda: {10})

    def update(self, step: int, model: torch.nn.Module, mask: Mask) -> Mask:
        params = dict(model.named_parameters())
        return prune(
            mask,
            score("magnitude", Context({n: params[n].detach() for n in mask.names()})),
            fraction=0.3,
        )

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None


def train_and_dump(cfg: TrainConfig, out: Path) -> None:
    """Train under a random 50% mask plus a pruning step; save this rank's weights and mask."""
    data = load_data(cfg)
    model = make_model(cfg, data)
    mask = Mask.ones(model)
    mask = prune(mask, score("random", Context(mask.tensors), seed=1), fraction=0.5)
    trainer = Trainer(
        cfg, data, model, out / "run", mask=mask, pruner=MagnitudeAt(), progress=False
    )
    trainer.fit()
    state = {"model": trainer.model.state_dict(), "mask": trainer.mask.state()}
    torch.save(state, out / f"rank{distributed.rank()}.pt")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    return {**env, "OMP_NUM_THREADS": "1", "LOTTERY_DIST_TIMEOUT": "60", **extra}


def torchrun(args: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([*TORCHRUN, *args], cwd=REPO, env=clean_env(), capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), (k, (a[k] - b[k]).abs().max())


def steps_of(run: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]


# -- two ranks against one process ----------------------------------------------------------------


@pytest.mark.slow
def test_two_ranks_match_one_process_with_the_same_global_batch(tmp_path):
    cfg = TrainConfig(model="lenet_32", dataset="synthetic", steps=40, batch_size=32,
                      optimizer="sgd", lr=0.05, momentum=0.9, eval_every=20,
                      checkpoint_every=20, device="cpu")  # fmt: skip
    torchrun(
        ["-m", "tests.core.test_distributed", json.dumps(cfg.to_dict()), str(tmp_path / "ddp")]
    )
    train_and_dump(cfg, tmp_path / "one")
    r0, r1 = (torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in (0, 1))
    one = torch.load(tmp_path / "one" / "rank0.pt")
    for name in r0["mask"]:  # identical masks on both ranks and as in one process
        assert torch.equal(r0["mask"][name], r1["mask"][name])
        assert torch.equal(r0["mask"][name], one["mask"][name])
    assert 0.3 < Mask(r0["mask"]).density() < 0.4  # 50% random, then 30% of the rest
    for name in r0["model"]:  # bit-identical weights on both ranks
        assert torch.equal(r0["model"][name], r1["model"][name]), name
    assert_close(r0["model"], one["model"])
    ddp_run, one_run = tmp_path / "ddp" / "run", tmp_path / "one" / "run"
    assert_close(load_checkpoint(ddp_run / "checkpoints" / "final.pt")["model"], one["model"])
    assert json.loads((ddp_run / "config.json").read_text())["world_size"] == 2
    assert json.loads((one_run / "config.json").read_text())["world_size"] == 1
    assert steps_of(ddp_run) == steps_of(one_run) == [0, 20, 40]  # written once, by rank 0
    ddp, single = (json.loads((r / "result.json").read_text()) for r in (ddp_run, one_run))
    assert ddp["test_accuracy"] == pytest.approx(single["test_accuracy"], abs=0.005)
    assert ddp["test_accuracy"] > 0.5  # 10 classes: chance is 0.1


@pytest.mark.slow
def test_imp_two_rounds_under_two_ranks_gives_the_same_masks(tmp_path):
    flags = [*TRAIN_FLAGS, "--steps", "30", "--eval-every", "15", "--checkpoint-every", "15",
             "--rounds", "2", "--reset", "rewind", "--rewind-step", "5",
             "--controls", "random-prune"]  # fmt: skip
    proc = torchrun(["-m", "lottery", "imp", *flags, "--out", str(tmp_path / "ddp")])
    assert proc.stdout.count("summary:") == 1  # only rank 0 prints
    assert cli_main(["imp", *flags, "--out", str(tmp_path / "one")]) == 0
    for r in (1, 2):
        for mask in ("mask.npz", "random_prune/mask.npz"):
            ddp = Mask.load(tmp_path / "ddp" / f"round_{r:02d}" / mask)
            one = Mask.load(tmp_path / "one" / f"round_{r:02d}" / mask)
            assert ddp.equal(one) and ddp.kept() < one.total()
    rows = [
        json.loads((tmp_path / d / "summary.json").read_text())["rounds"] for d in ("ddp", "one")
    ]
    assert [r["density"] for r in rows[0]] == [r["density"] for r in rows[1]]
    for a, b in zip(*rows, strict=True):
        assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=0.005)


# -- a lost rank ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_step(path: Path) -> int:
    try:
        return load_checkpoint(path)["step"]
    except CheckpointError:
        return -1


@pytest.mark.slow
def test_killed_rank_fails_the_other_fast_and_the_rerun_resumes(tmp_path):
    # The kill lands just after the first checkpoint (step 20); 980 training steps (about 2 s) lie
    # between it and the next evaluation, so the lost peer is met while training, not evaluating.
    out, timeout = tmp_path / "run", 20
    args = ["train", *TRAIN_FLAGS, "--steps", "2000", "--eval-every", "1000",
            "--checkpoint-every", "20", "--save-at", "0", "--out", str(out)]  # fmt: skip
    port = str(free_port())
    ranks = [
        subprocess.Popen(
            [sys.executable, "-m", "lottery", *args],
            cwd=REPO,
            env=clean_env(
                RANK=str(r),
                LOCAL_RANK=str(r),
                WORLD_SIZE="2",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
                LOTTERY_DIST_TIMEOUT=str(timeout),
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    last, deadline = out / "checkpoints" / "last.pt", time.monotonic() + 120
    while load_step(last) <= 0:
        assert all(p.poll() is None for p in ranks) and time.monotonic() < deadline, "no progress"
        time.sleep(0.02)
    ranks[1].kill()
    killed = time.monotonic()
    _, err = ranks[0].communicate(timeout=timeout + 60)
    waited = time.monotonic() - killed
    ranks[1].wait()
    assert ranks[0].returncode == 2, err
    assert "rank 0 of 2 failed while training" in err, err
    assert "rerun the same command to resume" in err and waited < timeout + 30
    assert not (out / "result.json").exists() and 0 < load_step(last) < 1000

    first = (out / "checkpoints" / "step_0000000.pt").stat().st_mtime_ns
    torchrun(["-m", "lottery", *args])
    assert (out / "checkpoints" / "step_0000000.pt").stat().st_mtime_ns == first  # not redone
    assert steps_of(out) == [0, 1000, 2000]
    assert cli_main([*args[:-1], str(tmp_path / "one")]) == 0
    final = load_checkpoint(out / "checkpoints" / "final.pt")["model"]
    assert_close(final, load_checkpoint(tmp_path / "one" / "checkpoints" / "final.pt")["model"])


# -- helpers, in one process -----------------------------------------------------------------------


def test_single_process_helpers_are_no_ops(monkeypatch):
    for k in LAUNCH_ENV:
        monkeypatch.delenv(k, raising=False)
    assert not distributed.launched() and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.setup(torch.device("cpu")) is False
    distributed.barrier()
    assert distributed.from_main("x") == "x"
    mask = Mask({"w": torch.tensor([True, False])})
    assert distributed.broadcast_mask(mask) is mask
    t = torch.arange(5.0)
    assert torch.equal(distributed.shard(t), t)
    assert distributed.all_reduce_sum(t).dtype == torch.float64


def test_sharded_evaluation_equals_plain_evaluation_in_one_process():
    cfg = TrainConfig(model="lenet_32", dataset="synthetic", steps=1, device="cpu")
    data = load_data(cfg)
    model = make_model(cfg, data)
    plain = evaluate(model, data.test_x, data.test_y, batch_size=128)
    assert evaluate(model, data.test_x, data.test_y, batch_size=128, sharded=True) == plain


def test_shards_cover_the_data_once(monkeypatch):
    t = torch.arange(10)
    monkeypatch.setenv("WORLD_SIZE", "3")
    parts = []
    for r in range(3):
        monkeypatch.setenv("RANK", str(r))
        parts.append(distributed.shard(t))
    assert [len(p) for p in parts] == [4, 4, 2] and torch.equal(torch.cat(parts), t)


def test_bad_timeout_and_partial_environment_are_clear_errors(monkeypatch):
    monkeypatch.setenv("LOTTERY_DIST_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="LOTTERY_DIST_TIMEOUT"):
        distributed.timeout_s()
    monkeypatch.setenv("LOTTERY_DIST_TIMEOUT", "0")
    with pytest.raises(ConfigError, match="positive"):
        distributed.timeout_s()
    monkeypatch.setenv("LOTTERY_DIST_TIMEOUT", "2.5")
    assert distributed.timeout_s() == 2.5
    monkeypatch.delenv("LOTTERY_DIST_TIMEOUT")
    assert distributed.timeout_s() == distributed.DEFAULT_TIMEOUT_S
    for k in LAUNCH_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="RANK.*torchrun"):
        distributed.setup(torch.device("cpu"))
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE"):
        distributed.world_size()


def test_batchnorm_models_are_refused_in_cpu_data_parallel_runs(monkeypatch, tmp_path):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)  # as if started by torchrun
    cfg = TrainConfig(model="resnet20", dataset="synthetic", steps=2, batch_size=32, device="cpu")
    data = load_data(cfg)
    with pytest.raises(ConfigError, match="BatchNorm models need CUDA"):
        Trainer(cfg, data, make_model(cfg, data), tmp_path, progress=False)


def test_digest_tells_equal_from_different_tensors():
    a = {"w": torch.randn(4, 3), "m": torch.ones(3, dtype=torch.bool)}
    b = {k: v.clone() for k, v in a.items()}
    assert distributed.digest(a) == distributed.digest(b)
    b["w"][2, 1] = torch.nextafter(b["w"][2, 1], torch.tensor(10.0))
    assert distributed.digest(a)["w"] != distributed.digest(b)["w"]
    assert distributed.digest(a)["m"] == distributed.digest(b)["m"]


if __name__ == "__main__":
    train_and_dump(TrainConfig.from_dict(json.loads(sys.argv[1])), Path(sys.argv[2]))
