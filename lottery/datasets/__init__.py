"""Datasets registered by name; `lottery.datasets.loading` finds, reads, splits and normalises them.

A new dataset is one module defining its DatasetSpec plus one line in DATASETS, or
`register_dataset` from your own code. The registry imports no torch, so the command line lists
the names without loading any dataset module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lottery.registry import Registry

if TYPE_CHECKING:
    from lottery.datasets.spec import DatasetSpec

DATASETS: Registry = Registry(
    "dataset",
    {
        "fashion_mnist": "lottery.datasets.fashion_mnist:FASHION_MNIST",
        "mnist": "lottery.datasets.mnist:MNIST",
        "cifar10": "lottery.datasets.cifar10:CIFAR10",
        "synthetic": "lottery.datasets.synthetic:SYNTHETIC",
    },
)


def register_dataset(name: str, spec: DatasetSpec) -> DatasetSpec:
    """Make `spec` (a `lottery.datasets.spec.DatasetSpec`: files to read, or a generator) loadable
    by name everywhere, the command line included."""
    return DATASETS.register(name, spec)
