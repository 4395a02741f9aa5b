"""Shared test settings: tiny, fast, deterministic runs on CPU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lottery.core.config import TrainConfig

torch.set_num_threads(2)

# CUDA-only tests skip with a reason containing this; `./dev gpu` sets LOTTERY_REQUIRE_CUDA=1 so that
# on a GPU machine such a skip is a failure rather than a silent pass.
CUDA_SKIP_REASON = "needs a CUDA"


@pytest.fixture(scope="session", autouse=True)
def decoded_cache_in_temp(tmp_path_factory):
    """Decoded datasets cached in a temp folder, so no test (or its subprocesses) writes the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOTTERY_CACHE", str(tmp_path_factory.mktemp("decoded")))
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under LOTTERY_REQUIRE_CUDA=1, turn the skip of a CUDA-only test into a failure."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("LOTTERY_REQUIRE_CUDA") != "1" or not report.skipped:
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if CUDA_SKIP_REASON.lower() in reason.lower() and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"LOTTERY_REQUIRE_CUDA=1 but this CUDA test would skip ({reason})"


def tiny(**changes) -> TrainConfig:
    """A few-second run: a small MLP on the synthetic dataset, CPU, SGD with momentum."""
    base = dict(
        model="lenet_64_32",
        dataset="synthetic",
        steps=60,
        batch_size=32,
        optimizer="sgd",
        lr=0.05,
        momentum=0.9,
        eval_every=20,
        checkpoint_every=20,
        device="cpu",
    )
    return TrainConfig(**{**base, **changes})


@pytest.fixture
def tiny_cfg():
    return tiny


REPO = Path(__file__).resolve().parents[1]
_ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def lottery_process(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    """`python -m lottery ARGV` run to its end from the repository, its output captured as text."""
    return subprocess.run([sys.executable, "-m", "lottery", *argv], cwd=REPO, env=_ENV,
                          capture_output=True, text=True, **kwargs)  # fmt: skip


def kill_when(argv: list[str], log: Path, lines: int) -> None:
    """Run `python -m lottery ARGV` from the repository and SIGKILL it once `log` holds `lines`
    lines (it must not end before that)."""
    proc = subprocess.Popen([sys.executable, "-m", "lottery", *argv], cwd=REPO, env=_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (log.exists() and log.read_text().count("\n") >= lines):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
