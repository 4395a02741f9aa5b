"""Where a run computes: the default CPU thread count from a network's multiply-adds (recorded,
kept on resume), and the evaluation batch from its activations."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from lottery.core.device import (
    CPU_EVAL_BYTES,
    WORK_PER_THREAD,
    activation_bytes,
    default_threads,
    eval_batch_size,
    multiply_adds,
)
from lottery.models.registry import build_model
from lottery.training.setup import load_data, make_model
from lottery.training.trainer import Trainer
from tests.conftest import tiny


def test_multiply_adds_equal_a_count_by_hand():
    lenet = build_model("lenet_300_100", (1, 28, 28), 10, seed=0)
    assert multiply_adds(lenet, (1, 28, 28)) == 784 * 300 + 300 * 100 + 100 * 10
    conv2 = build_model("conv2", (1, 28, 28), 10, seed=0)
    convs = 64 * 9 * 28 * 28 + 64 * 64 * 9 * 28 * 28  # 3x3 kernels, padding 1
    linears = 64 * 14 * 14 * 256 + 256 * 256 + 256 * 10  # after one 2x2 max-pool
    assert multiply_adds(conv2, (1, 28, 28)) == convs + linears
    assert conv2.training  # the count leaves the model in training mode


def test_activation_bytes_are_the_largest_layer_input_plus_output():
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 49, 5)
    )
    # conv: 1x7x7 in, 8x7x7 out; relu: 8x7x7 in and out; flatten the same; linear 392 -> 5
    assert activation_bytes(net, (1, 7, 7)) == 4 * (8 * 49 + 8 * 49)
    conv2 = build_model("conv2", (1, 28, 28), 10, seed=0)
    assert activation_bytes(conv2, (1, 28, 28)) == 4 * 2 * 64 * 28 * 28  # conv 64 -> 64 at 28x28
    assert conv2.training


def test_evaluation_batch_is_the_largest_power_of_two_in_the_cpu_budget():
    cpu = torch.device("cpu")
    conv2 = build_model("conv2", (1, 28, 28), 10, seed=0)
    per_example = 4 * 2 * 64 * 28 * 28
    batch = eval_batch_size(conv2, (1, 28, 28), cpu)
    assert batch == 32 and batch * per_example <= CPU_EVAL_BYTES < 2 * batch * per_example
    assert eval_batch_size(conv2, (1, 28, 28), cpu, copies=2) == 16  # two stacked copies
    lenet = build_model("lenet_300_100", (1, 28, 28), 10, seed=0)
    assert eval_batch_size(lenet, (1, 28, 28), cpu) == 2048  # 6,272 bytes an example
    resnet50 = build_model("resnet50", (3, 224, 224), 10, seed=0)
    assert eval_batch_size(resnet50, (3, 224, 224), cpu) == 16  # never below 16
    assert eval_batch_size(nn.Linear(2, 2), (2,), cpu) == 8192  # nor above 8192


def test_small_networks_get_one_thread_large_ones_one_per_unit_of_work():
    cores = len(os.sched_getaffinity(0))
    lenet = build_model("lenet_300_100", (1, 28, 28), 10, seed=0)
    assert default_threads(lenet, (1, 28, 28), 60) == 1
    conv2 = build_model("conv2", (1, 28, 28), 10, seed=0)
    work = 3 * 60 * multiply_adds(conv2, (1, 28, 28))
    assert default_threads(conv2, (1, 28, 28), 60) == max(
        1, min(cores, int(work // WORK_PER_THREAD))
    )
    assert default_threads(conv2, (1, 28, 28), 1) == 1


@pytest.mark.parametrize("threads", [None, 2])
def test_a_run_records_its_thread_count_and_a_resumed_run_keeps_it(tmp_path, threads):
    cfg = tiny(steps=6, threads=threads)
    data = load_data(cfg)
    Trainer(cfg, data, make_model(cfg, data), tmp_path, progress=False).fit()
    record = json.loads((tmp_path / "config.json").read_text())
    assert record["threads"] == (threads or 1)  # a tiny MLP: one thread by default
    if threads is None:  # a run started elsewhere with 3 threads continues with 3
        record["threads"] = 3
        (tmp_path / "config.json").write_text(json.dumps(record))
        again = Trainer(cfg, data, make_model(cfg, data), tmp_path, progress=False)
        assert again.run.threads == 3
