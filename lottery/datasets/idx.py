"""The IDX format of MNIST and Fashion-MNIST (LeCun et al., 1998): read files, find and load a folder."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from lottery.datasets.download import RemoteFile, fetch_all
from lottery.datasets.spec import Files, Raw

# (prefix, kind, ndim) of the four IDX files, in the order train images, train labels, test ...
PARTS = (
    ("train", "images", 3),
    ("train", "labels", 1),
    ("t10k", "images", 3),
    ("t10k", "labels", 1),
)

EXPECTED = ", ".join(f"{p}-{k}-idx{n}-ubyte[.gz]" for p, k, n in PARTS)

_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an MNIST-style IDX file (gzipped or not) into a native-endian array, rejecting bad files."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt gzip data ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES or raw[3] == 0:
        raise ValueError(f"{path}: not an IDX file (magic bytes {raw[:4].hex()})")
    dtype, ndim = _DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path}: IDX size mismatch: shape {shape} needs {expected} bytes, file has {len(raw)}"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def idx_files(directory: Path) -> list[Path] | None:
    """The four IDX files in `directory` (any accepted naming, plain preferred over .gz), or None."""
    found = []
    for prefix, kind, ndim in PARTS:
        bases = (f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte")
        candidates = [directory / (b + ext) for ext in ("", ".gz") for b in bases]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found


def has_idx_files(directory: Path) -> bool:
    """Whether `directory` holds all four IDX files."""
    return idx_files(directory) is not None


def read_idx_folder(directory: Path) -> Raw:
    """Train and test images (N, 1, H, W) uint8 and int64 labels from the IDX files in `directory`."""
    paths = idx_files(directory)
    train_x, train_y, test_x, test_y = (read_idx(p) for p in paths)
    for images, labels, path in ((train_x, train_y, paths[0]), (test_x, test_y, paths[2])):
        if images.dtype != np.uint8 or images.ndim != 3 or labels.shape != (len(images),):
            raise ValueError(
                f"{path}: expected uint8 images (N, H, W) with N labels, "
                f"got {images.dtype} {images.shape} and labels {labels.shape}"
            )
    return (
        torch.from_numpy(train_x).unsqueeze(1),
        torch.from_numpy(train_y).long(),
        torch.from_numpy(test_x).unsqueeze(1),
        torch.from_numpy(test_y).long(),
    )


def idx_dataset_files(
    subdirs: tuple[str, ...], remotes: tuple[RemoteFile, ...], **where: object
) -> Files:
    """The files of a dataset in the four IDX files of MNIST's layout (MNIST, Fashion-MNIST),
    found in `subdirs` of the data root (and `where`: system folders, an install hint)."""
    return Files(
        subdirs=subdirs,
        expected=EXPECTED,
        present=has_idx_files,
        read=read_idx_folder,
        sources=idx_files,
        remotes=remotes,
        download=fetch_all,
        **where,
    )
