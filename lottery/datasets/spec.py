"""What the registry knows about one dataset: its constants, and where and how its files are found."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lottery.datasets.download import RemoteFile

# train_x, train_y, test_x, test_y: images (N, C, H, W) (uint8 from files), int64 labels.
Raw = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Files:
    """Where a dataset's files live and how to recognise, read and download them."""

    subdirs: tuple[str, ...]  # searched under the data root, in order; downloads land in the first
    expected: str  # the files a complete copy holds, as the not-found message names them
    present: Callable[[Path], bool]  # whether a folder holds a complete copy
    read: Callable[[Path], Raw]
    remotes: tuple[RemoteFile, ...]
    download: Callable[[tuple[RemoteFile, ...], Path], None]  # fetch remotes so a folder holds it
    system_dirs: tuple[Path, ...] = ()  # system-wide copies, searched last
    install_hint: str | None = None  # first fix the not-found message suggests
    sources: Callable[[Path], list[Path]] | None = None  # files `read` decodes: if named, cached


@dataclass(frozen=True)
class DatasetSpec:
    """Fixed facts about one dataset: display name, classes, normalisation constants, augmentation,
    and either its files or a generator of its data."""

    title: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool
    files: Files | None = None
    generate: Callable[[], Raw] | None = None
    val_divisor: int | None = None  # at most len(train) // val_divisor examples go to validation

    def __post_init__(self) -> None:
        if (self.files is None) == (self.generate is None):
            raise ValueError(f"{self.title}: give exactly one of files and generate")
