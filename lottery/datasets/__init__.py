"""Datasets registered by name; `lottery.datasets.loading` finds, reads, splits and normalises them.

A new dataset is one module defining its DatasetSpec plus one line in DATASETS. The registry
imports no torch, so the command line lists the names without loading any dataset module.
"""

from __future__ import annotations

from lottery.core.registry import Registry

DATASETS: Registry = Registry(
    "dataset",
    {
        "fashion_mnist": "lottery.datasets.fashion_mnist:FASHION_MNIST",
        "mnist": "lottery.datasets.mnist:MNIST",
        "cifar10": "lottery.datasets.cifar10:CIFAR10",
        "synthetic": "lottery.datasets.synthetic:SYNTHETIC",
    },
)
