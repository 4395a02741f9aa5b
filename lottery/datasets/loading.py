"""Load a registered dataset: find its files, read, split and normalise them reproducibly."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import torch

from lottery.datasets import DATASETS
from lottery.datasets.cache import read_cached
from lottery.datasets.spec import DatasetSpec


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are in none of the searched directories."""


class UnknownDatasetError(ValueError):
    """A dataset name that is not registered in DATASETS."""


@dataclass
class Splits:
    """Train/validation/test tensors of one dataset, normalised, as (N, C, H, W) float32 and int64 labels."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    input_shape: tuple[int, int, int]
    augment: bool

    def to(self, device: str | torch.device) -> Splits:
        """These splits on `device`: itself when already there (so its digest, hashed once, is
        reused by every later run), else a copy that carries the digest if it was computed."""
        names = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")
        moved = {n: getattr(self, n).to(device) for n in names}
        if all(moved[n] is getattr(self, n) for n in names):
            return self
        copy = replace(self, **moved)
        if "digest" in self.__dict__:
            copy.__dict__["digest"] = self.digest
        return copy

    @cached_property
    def digest(self) -> str:
        """A short hash of every example and label as loaded (after the split and normalisation),
        so a run or search resumed on changed data (a modified --data-root) is refused."""
        h = hashlib.sha256()
        for t in (self.train_x, self.train_y, self.val_x, self.val_y, self.test_x, self.test_y):
            if t.numel():  # an empty split (--val-size 0) adds nothing, and has no byte view
                h.update(memoryview(t.detach().cpu().contiguous().numpy()).cast("B"))
        return h.hexdigest()[:16]

    def describe(self) -> dict:
        """JSON-able summary for run metadata."""
        return {
            "name": self.name,
            "train_size": len(self.train_x),
            "val_size": len(self.val_x),
            "test_size": len(self.test_x),
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "augment": self.augment,
        }


def default_data_root() -> Path:
    """Data root used when none is given: $LOTTERY_DATA if set, else ~/.cache/lottery/data."""
    env = os.environ.get("LOTTERY_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lottery" / "data"


def _search_dirs(spec: DatasetSpec, root: Path, explicit: bool) -> list[Path]:
    """Directories searched for a dataset, in order; the root itself only if the user named it."""
    dirs = [root / sub for sub in spec.files.subdirs]
    if explicit:
        dirs.append(root)
    return dirs + list(spec.files.system_dirs)


def _missing_message(spec: DatasetSpec, dirs: list[Path]) -> str:
    """Error text for a dataset found nowhere: where we looked, what we expected, how to fix it."""
    looked = "\n".join(f"  {d}" for d in dirs)
    fixes = [
        f"pass --data-root DIR where DIR/{spec.files.subdirs[0]} or DIR itself holds these files",
        f"or pass --download (download=True) to fetch them into {dirs[0]}",
    ]
    if spec.files.install_hint:
        fixes.insert(0, spec.files.install_hint)
    return (
        f"{spec.title} not found. Looked in:\n{looked}\n"
        f"Expected files: {spec.files.expected}\nTo fix: {', '.join(fixes)}."
    )


def _locate(spec: DatasetSpec, data_root: str | Path | None, download: bool) -> Path:
    """Directory holding the dataset's files, downloading them first if allowed and found nowhere."""
    root = default_data_root() if data_root is None else Path(data_root).expanduser()
    dirs = _search_dirs(spec, root, explicit=data_root is not None)
    found = next((d for d in dirs if spec.files.present(d)), None)
    if found is None and download:
        spec.files.download(spec.files.remotes, dirs[0])
        found = dirs[0] if spec.files.present(dirs[0]) else None
    if found is None:
        raise DatasetNotFoundError(_missing_message(spec, dirs))
    return found


def _carve(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices 0..n-1 into (train, val) by a seeded permutation; each part keeps file order."""
    if not 0 <= val_size < n:
        raise ValueError(f"val_size must be in [0, {n}) for {n} training examples, got {val_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def _normalise(x: torch.Tensor, spec: DatasetSpec, device: str | torch.device) -> torch.Tensor:
    """float32 images on `device` with the dataset's constant per-channel mean/std removed; done in
    place on a fresh copy: the values of (x - mean) / std without two more full-size temporaries."""
    scale = 255.0 if x.dtype == torch.uint8 else 1.0
    x = x.to(device).to(torch.float32, copy=True)
    mean = torch.tensor(spec.mean, device=x.device).view(-1, 1, 1) * scale
    std = torch.tensor(spec.std, device=x.device).view(-1, 1, 1) * scale
    return x.sub_(mean).div_(std)


def load_dataset(
    name: str = "fashion_mnist",
    data_root: str | Path | None = None,
    *,
    val_size: int = 5000,
    split_seed: int = 0,
    train_limit: int | None = None,
    test_limit: int | None = None,
    device: str | torch.device = "cpu",
    download: bool = False,
) -> Splits:
    """Load `name` as normalised tensors, with a validation set carved from training by `split_seed`."""
    if name not in DATASETS:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}"
        )
    for label, limit in (("train_limit", train_limit), ("test_limit", test_limit)):
        if limit is not None and limit < 1:
            raise ValueError(f"{label} must be a positive integer or None, got {limit}")
    if val_size < 0:
        raise ValueError(f"val_size must be >= 0, got {val_size}")
    spec = DATASETS[name]
    if spec.files is None:
        train_x, train_y, test_x, test_y = spec.generate()
    else:
        found = _locate(spec, data_root, download)
        train_x, train_y, test_x, test_y = read_cached(spec.files, found)
    if spec.val_divisor is not None:
        val_size = min(val_size, len(train_x) // spec.val_divisor)
    for y in (train_y, test_y):
        if len(y) and not 0 <= int(y.min()) <= int(y.max()) < spec.num_classes:
            raise ValueError(f"{spec.title}: labels outside [0, {spec.num_classes})")
    train_idx, val_idx = _carve(len(train_x), val_size, split_seed)
    train_idx = train_idx[:train_limit]
    return Splits(
        name=name,
        train_x=_normalise(train_x.index_select(0, train_idx), spec, device),
        train_y=train_y.index_select(0, train_idx).to(device),
        val_x=_normalise(train_x.index_select(0, val_idx), spec, device),
        val_y=train_y.index_select(0, val_idx).to(device),
        test_x=_normalise(test_x[:test_limit], spec, device),
        test_y=test_y[:test_limit].to(device),
        num_classes=spec.num_classes,
        input_shape=tuple(train_x.shape[1:]),
        augment=spec.augment,
    )
