"""GPU fast path: CUDA-only switches are errors on the CPU, leave CPU runs untouched, and (where a
GPU exists) keep data, masks and pruning on the device without changing results beyond tolerance."""

from __future__ import annotations

import argparse

import pytest
import torch

from lottery.cli.main import add_train_args, config_from_args, main
from lottery.core.config import ConfigError
from lottery.core.device import compiled, memory_format
from lottery.core.storage import load_checkpoint
from lottery.pruning.criteria import Context, score
from lottery.pruning.masks import Mask
from lottery.pruning.selection import prune
from lottery.training.engine import train_runs
from lottery.training.run import RunSpec
from lottery.training.setup import load_data, make_model
from lottery.training.trainer import Trainer
from tests.conftest import tiny

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def parse(*flags: str):
    p = argparse.ArgumentParser()
    add_train_args(p, "out")
    return config_from_args(p.parse_args(list(flags)))


def test_flags_land_in_extra_only_when_set():
    assert parse().extra == {}  # so CPU fingerprints stay what they were
    assert parse("--cuda-graphs").extra == {"cuda_graphs": True}
    assert parse("--no-channels-last").extra == {"channels_last": False}
    assert parse().fingerprint() != parse("--cuda-graphs").fingerprint()


def test_cuda_only_flags_are_errors_on_cpu(tmp_path):
    data = load_data(tiny())
    for bad, flag in (
        (dict(extra={"cuda_graphs": True}), "--cuda-graphs"),
        (dict(bf16=True), "--bf16"),
    ):
        cfg = tiny(**bad)
        with pytest.raises(ConfigError, match=flag):
            Trainer(cfg, data, make_model(cfg, data), tmp_path / "t", progress=False)
        with pytest.raises(ConfigError, match=flag):
            train_runs(
                [RunSpec(cfg, tmp_path / "b", make_model(cfg, data))] * 2, data, batched=True
            )
    assert not (tmp_path / "t").exists()
    base = ["train", "--dataset", "synthetic", "--device", "cpu", "--steps", "2"]
    assert main([*base, "--cuda-graphs", "--out", str(tmp_path / "c")]) == 2


def test_cpu_path_is_unchanged():
    cfg = tiny(model="conv2")
    data = load_data(cfg)
    model = make_model(cfg, data)
    assert memory_format(model, cfg, torch.device("cpu")) is model
    assert all(p.is_contiguous() for p in model.parameters())

    def fn(x):
        return x

    assert compiled(fn, cfg) is fn


@cuda
def test_channels_last_on_cuda_and_switch_off(tmp_path):
    cfg = tiny(model="conv2", device="cuda", steps=4)
    data = load_data(cfg)
    t = Trainer(cfg, data, make_model(cfg, data), tmp_path / "a", progress=False)
    conv = t.model.features[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert t.data.train_x.device.type == "cuda"
    off = cfg.replace(extra={"channels_last": False})
    t = Trainer(off, data, make_model(off, data), tmp_path / "b", progress=False)
    assert t.model.features[0].weight.is_contiguous()


def magnitude_mask(model: torch.nn.Module, fraction: float) -> Mask:
    ones = Mask.ones(model)
    weights = dict(model.named_parameters())
    return prune(
        ones, score("magnitude", Context({n: weights[n] for n in ones.names()})), fraction=fraction
    )


@cuda
@pytest.mark.parametrize("extra", [{}, {"cuda_graphs": True}, {"channels_last": False}])
def test_cuda_run_matches_cpu_run(tmp_path, monkeypatch, extra):
    """Same run on CPU and GPU (TF32 off so both are float32 throughout), masked, 10 SGD steps."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    cfg = tiny(model="conv2", steps=10, eval_every=5, checkpoint_every=5)
    data = load_data(cfg)
    mask = magnitude_mask(make_model(cfg, data), 0.5)
    Trainer(cfg, data, make_model(cfg, data), tmp_path / "cpu", mask=mask, progress=False).fit()
    gpu_cfg = cfg.replace(device="cuda", extra=extra)
    gpu_data = load_data(gpu_cfg)
    assert gpu_data.train_x.device.type == "cuda"
    gpu = Trainer(
        gpu_cfg,
        gpu_data,
        make_model(gpu_cfg, gpu_data),
        tmp_path / "gpu",
        mask=mask,
        progress=False,
    )
    assert all(t.device.type == "cuda" for t in gpu.mask.tensors.values())
    gpu.fit()
    a = load_checkpoint(tmp_path / "cpu" / "checkpoints" / "final.pt")["model"]
    b = load_checkpoint(tmp_path / "gpu" / "checkpoints" / "final.pt")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k].cpu(), rtol=1e-3, atol=1e-4, msg=k)
    assert all(not b[n][~m.cpu()].any() for n, m in mask.tensors.items())


@cuda
def test_pruning_stays_on_the_device():
    cfg = tiny(device="cuda")
    data = load_data(cfg)
    model = make_model(cfg, data).cuda()
    weights = dict(model.named_parameters())
    mask = Mask.ones(model).to("cuda")
    new = prune(
        mask, score("magnitude", Context({n: weights[n] for n in mask.names()})), fraction=0.5
    )
    assert all(t.device.type == "cuda" for t in new.tensors.values())
    assert new.density() == pytest.approx(0.5, abs=0.01)


@cuda
def test_batched_on_cuda_matches_single(tmp_path):
    cfg = tiny(device="cuda", steps=20, optimizer="adam", lr=0.01)
    data = load_data(cfg)

    def runs(root):
        return [RunSpec(cfg.replace(init_seed=i, data_seed=i), root / f"r{i}",
                        make_model(cfg.replace(init_seed=i), data)) for i in range(3)]  # fmt: skip

    train_runs(runs(tmp_path / "a"), data, batched=False, progress=False)
    train_runs(runs(tmp_path / "b"), data, batched=True, progress=False)
    for i in range(3):
        a = load_checkpoint(tmp_path / "a" / f"r{i}" / "checkpoints" / "final.pt")["model"]
        b = load_checkpoint(tmp_path / "b" / f"r{i}" / "checkpoints" / "final.pt")["model"]
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
