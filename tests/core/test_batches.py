"""Tests for lottery.core.batches: deterministic, resumable, rank-sharded batches and seeded augmentation."""

import pytest
import torch

from lottery.core.batches import BatchStream, augment_batch, crop_flip

# --- batching -----------------------------------------------------------------------------------


def toy(n: int = 103) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs whose single value is the example index, and labels equal to that index."""
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1), torch.arange(n)


def test_batch_stream_deterministic_and_resumable():
    x, y = toy()
    a, b = BatchStream(x, y, 10, data_seed=3), BatchStream(x, y, 10, data_seed=3)
    assert a.steps_per_epoch == 10
    walked = [a.batch(step) for step in range(35)]
    for step in (34, 0, 17, 9, 10, 25):  # fresh instance, arbitrary order
        xb, yb = b.batch(step)
        assert torch.equal(xb, walked[step][0]) and torch.equal(yb, walked[step][1])
        assert torch.equal(xb.view(-1).long(), yb)


def test_batch_stream_each_example_once_per_epoch():
    x, y = toy(100)
    stream = BatchStream(x, y, 20, data_seed=0)
    for epoch in range(3):
        seen = torch.cat([stream.batch(epoch * 5 + i)[1] for i in range(5)])
        assert sorted(seen.tolist()) == list(range(100))
    first = torch.cat([stream.batch(i)[1] for i in range(5)])
    second = torch.cat([stream.batch(5 + i)[1] for i in range(5)])
    assert not torch.equal(first, second)


def test_batch_stream_seed_changes_order():
    x, y = toy()
    a, b = BatchStream(x, y, 10, data_seed=0), BatchStream(x, y, 10, data_seed=1)
    assert not torch.equal(a.batch(0)[1], b.batch(0)[1])


@pytest.mark.parametrize("augment", [False, True])
def test_rank_chunks_concatenate_to_global_batch(augment):
    x = torch.randn(64, 3, 8, 8)
    y = torch.arange(64)
    full = BatchStream(x, y, 16, data_seed=5, augment=augment)
    ranks = [BatchStream(x, y, 16, 5, augment=augment, rank=r, world_size=4) for r in range(4)]
    for step in (0, 3, 7):
        xs, ys = zip(*(r.batch(step) for r in ranks), strict=True)
        assert all(len(part) == 4 for part in ys)
        gx, gy = full.batch(step)
        assert torch.equal(torch.cat(xs), gx) and torch.equal(torch.cat(ys), gy)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 200}, "dataset smaller than batch"),
        ({"batch_size": 0}, "positive multiple"),
        ({"batch_size": 10, "world_size": 3}, "multiple of world_size 3"),
        ({"batch_size": 10, "rank": 2, "world_size": 2}, "rank"),
    ],
)
def test_batch_stream_rejects_bad_config(kwargs, match):
    x, y = toy()
    with pytest.raises(ValueError, match=match):
        BatchStream(x, y, data_seed=0, **kwargs)


def test_batch_stream_augment_is_reproducible_and_uses_step_seed():
    x = torch.randn(40, 3, 8, 8)
    y = torch.arange(40)
    a = BatchStream(x, y, 8, data_seed=2, augment=True)
    b = BatchStream(x, y, 8, data_seed=2, augment=True)
    plain = BatchStream(x, y, 8, data_seed=2)
    assert torch.equal(a.batch(6)[0], b.batch(6)[0])
    assert torch.equal(a.batch(6)[1], plain.batch(6)[1])
    assert not torch.equal(a.batch(6)[0], plain.batch(6)[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batch_stream_same_batches_on_cuda():
    x = torch.randn(50, 3, 8, 8)
    y = torch.arange(50)
    cpu = BatchStream(x, y, 8, data_seed=4, augment=True)
    gpu = BatchStream(x.cuda(), y.cuda(), 8, data_seed=4, augment=True)
    for step in (0, 5, 6, 13):
        gx, gy = gpu.batch(step)
        assert gx.is_cuda
        cx, cy = cpu.batch(step)
        assert torch.equal(gx.cpu(), cx) and torch.equal(gy.cpu(), cy)


# --- augmentation -------------------------------------------------------------------------------


def test_crop_flip_identity_and_flip():
    x = torch.randn(5, 3, 8, 8)
    zero = torch.zeros(5, 2, dtype=torch.long)
    assert torch.equal(crop_flip(x, zero, torch.zeros(5, dtype=torch.bool)), x)
    assert torch.equal(crop_flip(x, zero, torch.ones(5, dtype=torch.bool)), torch.flip(x, [-1]))


def test_crop_flip_shift_fills_with_zeros():
    x = torch.arange(1, 17, dtype=torch.float32).view(1, 1, 4, 4)
    out = crop_flip(x, torch.tensor([[1, -2]]), torch.tensor([False]))
    expected = torch.zeros(4, 4)
    expected[:3, 2:] = x[0, 0, 1:, :2]
    assert torch.equal(out[0, 0], expected)


def test_augment_batch_properties():
    x = torch.randn(6, 3, 10, 10)
    out = augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.equal(out, augment_batch(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, augment_batch(x, torch.Generator().manual_seed(1)))
    for i in range(len(x)):  # every output is some shift (+ flip) of its own input
        options = [
            crop_flip(x[i : i + 1], torch.tensor([[dy, dx]]), torch.tensor([flip]))
            for dy in range(-4, 5)
            for dx in range(-4, 5)
            for flip in (False, True)
        ]
        assert any(torch.equal(out[i : i + 1], o) for o in options)
