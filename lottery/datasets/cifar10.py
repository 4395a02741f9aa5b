"""CIFAR-10 (Krizhevsky, 2009): the python batches, read with a restricted unpickler."""

from __future__ import annotations

import os
import pickle
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

from lottery.datasets.download import RemoteFile, fetch, remote_files
from lottery.datasets.spec import DatasetSpec, Files, Raw

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_BATCHES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")

# The only globals a CIFAR-10 batch pickle may name: what numpy needs to rebuild an array.
_PICKLE_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)


class CifarBatchError(pickle.UnpicklingError, ValueError):
    """A CIFAR-10 batch file that is garbage, truncated, empty or names a foreign global."""


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and refuses every other global, so no code can run."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing global {module}.{name}: only numpy arrays allowed"
            )
        return super().find_class(module, name)


def _batch_field(batch: dict, key: str, path: Path) -> object:
    """`batch[key]`, accepting the bytes keys that Python 2 pickles load with."""
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise ValueError(f"{path}: CIFAR-10 batch has no {key!r} entry")


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (N,) int64 of one CIFAR-10 python batch file."""
    with open(path, "rb") as f:
        try:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
        except Exception as e:  # garbage, truncated or empty files fail in many ways
            empty = path.stat().st_size == 0
            reason = "empty file" if empty else f"{type(e).__name__}: {e}"
            raise CifarBatchError(
                f"{path}: not a readable CIFAR-10 python batch ({reason}); "
                "delete it and download the dataset again"
            ) from e
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a dict, got {type(batch).__name__}")
    data = np.asarray(_batch_field(batch, "data", path))
    try:
        labels = np.asarray(_batch_field(batch, "labels", path), dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"{path}: CIFAR-10 labels must be integers ({e})") from e
    if data.dtype != np.uint8 or data.shape[1:] != (3072,) or labels.shape != (len(data),):
        raise ValueError(
            f"{path}: expected uint8 data (N, 3072) and N labels, "
            f"got {data.dtype} {data.shape} and labels {labels.shape}"
        )
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_cifar10(root: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """train_x (N, 32, 32, 3) uint8, train_y, test_x, test_y from data_batch_1..5 and test_batch."""
    root = Path(root)
    train = [_read_batch(root / name) for name in CIFAR10_BATCHES[:-1]]
    test_x, test_y = _read_batch(root / CIFAR10_BATCHES[-1])
    return (
        np.concatenate([x for x, _ in train]),
        np.concatenate([y for _, y in train]),
        np.ascontiguousarray(test_x),
        test_y,
    )


def read_cifar10_folder(directory: Path) -> Raw:
    """The batches in `directory` as images (N, 3, 32, 32) uint8 and int64 labels."""
    train_x, train_y, test_x, test_y = read_cifar10(directory)
    return (
        torch.from_numpy(train_x).permute(0, 3, 1, 2).contiguous(),
        torch.from_numpy(train_y),
        torch.from_numpy(test_x).permute(0, 3, 1, 2).contiguous(),
        torch.from_numpy(test_y),
    )


def batch_files(directory: Path) -> list[Path]:
    """The six batch files of a CIFAR-10 folder, training batches first."""
    return [directory / b for b in CIFAR10_BATCHES]


def has_batches(directory: Path) -> bool:
    """Whether `directory` holds all six batch files."""
    return all(p.is_file() for p in batch_files(directory))


def download_archive(remotes: tuple[RemoteFile, ...], dest: Path) -> None:
    """Fetch the archive next to `dest` and move its extracted batch folder to `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".cifar10-") as tmp:
        (remote,) = remotes
        archive = Path(tmp) / remote.name
        fetch(remote, archive)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        os.replace(Path(tmp) / CIFAR10_DIR, dest)


CIFAR10 = DatasetSpec(
    title="CIFAR-10",
    num_classes=10,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    augment=True,
    files=Files(
        subdirs=(CIFAR10_DIR,),
        expected=(
            f"{', '.join(CIFAR10_BATCHES)} (the {CIFAR10_DIR}/ folder of cifar-10-python.tar.gz)"
        ),
        present=has_batches,
        read=read_cifar10_folder,
        sources=batch_files,
        remotes=remote_files(
            ("https://www.cs.toronto.edu/~kriz/",),
            {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
        ),
        download=download_archive,
    ),
)
