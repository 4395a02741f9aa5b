"""Background writes: in order, failures raised, no thread left behind; snapshots independent of
the tensors they copy."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from lottery.core.storage import Writer, snapshot


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("lottery-writer")]


def test_writes_run_in_order_off_the_calling_thread_and_none_outlives_wait():
    done: list[tuple[int, str]] = []

    def write(i: int) -> None:
        time.sleep(0.01 * (3 - i))  # the first is the slowest: order is kept anyway
        done.append((i, threading.current_thread().name))

    writer = Writer()
    for i in range(3):
        writer.submit(write, i)
    writer.wait()
    assert [i for i, _ in done] == [0, 1, 2]
    assert all(name.startswith("lottery-writer") for _, name in done)
    assert writer_threads() == []


def test_a_failed_write_is_raised_at_wait_and_at_the_next_submit():
    def fail() -> None:
        raise OSError(28, "No space left on device")

    writer = Writer()
    writer.submit(fail)
    with pytest.raises(OSError, match="No space"):
        writer.wait()
    writer.submit(fail)
    while writer.pending and not writer.pending[0].done():
        time.sleep(0.001)
    with pytest.raises(OSError, match="No space"):
        writer.submit(lambda: None)
    writer.wait()
    assert writer_threads() == []


def test_a_snapshot_is_a_cpu_copy_of_every_tensor_in_its_containers():
    w = torch.ones(3)
    state = {"model": {"w": w}, "masks": [w > 0], "pair": (w, 2), "step": 5}
    copy = snapshot(state)
    w.mul_(0)
    assert torch.equal(copy["model"]["w"], torch.ones(3))
    assert torch.equal(copy["masks"][0], torch.ones(3, dtype=torch.bool))
    assert isinstance(copy["pair"], tuple) and copy["pair"][1] == 2 and copy["step"] == 5
