"""The on-device batch stream: seeded example order and CIFAR-style augmentation per step."""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

PAD = 4  # zero padding (pixels) of the CIFAR-style random crop


def _generator(data_seed: int, stream: str, index: int) -> torch.Generator:
    """CPU generator seeded by hashing (data_seed, stream, index), so streams never collide."""
    key = f"{data_seed}:{stream}:{index}".encode()
    seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1
    return torch.Generator().manual_seed(seed)


def crop_flip(x: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Shift images by int64 (dy, dx) in [-PAD, PAD] with zero fill, mirror where bool `flips`; one gather."""
    n, c, h, w = x.shape
    padded = F.pad(x, (PAD, PAD, PAD, PAD)).flatten(2)
    rows = shifts[:, :1] + PAD + torch.arange(h, device=x.device)
    cols = shifts[:, 1:] + PAD + torch.arange(w, device=x.device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    index = rows[:, :, None] * (w + 2 * PAD) + cols[:, None, :]
    return padded.gather(2, index.view(n, 1, h * w).expand(n, c, h * w)).view(n, c, h, w)


def _draw_augmentation(n: int, generator: torch.Generator) -> torch.Tensor:
    """Per-sample (dy, dx, flip) as int64 (n, 3) on the CPU, drawn from `generator`."""
    shifts = torch.randint(-PAD, PAD + 1, (n, 2), generator=generator)
    flips = torch.randint(0, 2, (n, 1), generator=generator)
    return torch.cat([shifts, flips], dim=1)


def _apply_augmentation(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """crop_flip with (n, 3) CPU parameters, moved to x's device in one small copy."""
    params = params.to(x.device)
    return crop_flip(x, params[:, :2], params[:, 2].bool())


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """CIFAR-style augmentation of a (N, C, H, W) batch: random crop with PAD-pixel padding + hflip."""
    return _apply_augmentation(x, _draw_augmentation(len(x), generator))


class BatchStream:
    """Deterministic batches: batch `step` is a pure function of (data_seed, step), so resuming at any
    step reproduces the data order exactly."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        data_seed: int,
        *,
        augment: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(x) != len(y) or x.device != y.device:
            raise ValueError(f"x and y differ: {len(x)} on {x.device} vs {len(y)} on {y.device}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}"
            )
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(
                f"batch_size {batch_size} must be a positive multiple of world_size {world_size}"
            )
        self.steps_per_epoch = len(x) // batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"dataset smaller than batch: {len(x)} examples < batch_size {batch_size}"
            )
        self.x, self.y = x, y
        self.batch_size, self.data_seed, self.augment = batch_size, data_seed, augment
        self.rank, self.world_size = rank, world_size
        self._epoch: int | None = None
        self._perm: torch.Tensor | None = None

    def permutation(self, epoch: int) -> torch.Tensor:
        """Epoch's example order, computed on the CPU and cached on x's device until the epoch changes."""
        if epoch != self._epoch:
            g = _generator(self.data_seed, "epoch", epoch)
            self._perm = torch.randperm(len(self.x), generator=g).to(self.x.device)
            self._epoch = epoch
        return self._perm

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's (inputs, labels) share of global batch `step`, augmented if enabled."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, within = divmod(step, self.steps_per_epoch)
        local = self.batch_size // self.world_size
        lo = self.rank * local
        start = within * self.batch_size + lo
        idx = self.permutation(epoch)[start : start + local]
        x, y = self.x.index_select(0, idx), self.y.index_select(0, idx)
        if self.augment:
            params = _draw_augmentation(
                self.batch_size, _generator(self.data_seed, "augment", step)
            )
            x = _apply_augmentation(x, params[lo : lo + local])
        return x, y
