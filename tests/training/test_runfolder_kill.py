"""Fault injection: a search frozen and then killed (SIGKILL) at seeded random points while a
second process tries the same --out; resumed to the end, its records equal an uninterrupted
run's and no temporary file remains."""

from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lottery.cli.main import main
from lottery.core import layout
from lottery.pruning.masks import Mask, load_sparse

REPO = Path(__file__).resolve().parents[2]
ARGS = ["imp", "--dataset", "fashion_mnist", "--train-limit", "600", "--val-size", "100",
        "--test-limit", "200", "--batch-size", "60", "--steps", "400", "--checkpoint-every", "5",
        "--eval-every", "10", "--rounds", "2", "--device", "cpu", "--no-progress"]  # fmt: skip
CMD = [sys.executable, "-m", "lottery", *ARGS]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(torch.get_num_threads())}


def holder(out: Path) -> str:
    try:
        return (out / layout.LOCK).read_text()
    except OSError:
        return ""


def locked(out: Path) -> bool:
    """Whether some process holds the folder's lock now (tried here and released at once)."""
    with open(out / layout.LOCK) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def records(out: Path) -> tuple[list[Mask], list[dict], list[dict]]:
    """Every round's mask and final ticket weights, and the summary rows less wall time."""
    rounds = range(3)
    masks = [Mask.load(layout.round_dir(out, r) / layout.MASK) for r in rounds]
    weights = [load_sparse(layout.ticket_dir(out, r) / layout.WEIGHTS)[0] for r in rounds]
    rows = json.loads((out / layout.SUMMARY).read_text())["rounds"]
    return masks, weights, [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.mark.slow
def test_killed_search_refuses_a_second_writer_and_resumes_to_the_same_records(tmp_path):
    out, rng, kills = tmp_path / "killed", random.Random(12), 0
    for _ in range(3):
        first = subprocess.Popen([*CMD, "--out", str(out)], cwd=REPO, env=ENV,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.monotonic() + 120
        while f"pid {first.pid} " not in holder(out) and first.poll() is None:
            assert time.monotonic() < deadline, "the search never took its lock"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 1.0))  # a random point of the search
        if first.poll() is None:
            os.kill(first.pid, signal.SIGSTOP)  # frozen, still holding the lock ...
            if not locked(out):  # ... unless it had finished the search and was exiting
                os.kill(first.pid, signal.SIGCONT)
                first.wait()
        if first.poll() is not None:  # it finished before this point
            assert first.returncode == 0, first.stderr.read()
            break
        second = subprocess.run([*CMD, "--out", str(out)], cwd=REPO, env=ENV,
                                capture_output=True, text=True)  # fmt: skip
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        first.stderr.close()
        kills += 1
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(lines) == 1, second.stderr
        assert lines[0].startswith("lottery imp: error: ") and f"pid {first.pid}" in lines[0]
    assert kills >= 2
    done = subprocess.run([*CMD, "--out", str(out)], cwd=REPO, env=ENV, capture_output=True)
    assert done.returncode == 0, done.stderr
    assert not [p for p in out.rglob("*.tmp")], "temporary files were left behind"
    assert not list(out.rglob(layout.LAST)), "a finished run kept its resume checkpoint"

    whole = tmp_path / "whole"
    assert main([*ARGS, "--out", str(whole)]) == 0
    masks, weights, rows = records(out)
    masks_w, weights_w, rows_w = records(whole)
    assert all(a.equal(b) for a, b in zip(masks, masks_w, strict=True))
    for a, b in zip(weights, weights_w, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert rows == rows_w
