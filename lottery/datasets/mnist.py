"""MNIST (LeCun et al., 1998): IDX files under the data root, downloadable from two mirrors."""

from __future__ import annotations

from lottery.datasets import idx
from lottery.datasets.download import remote_files
from lottery.datasets.spec import DatasetSpec

REMOTES = remote_files(
    ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
)

MNIST = DatasetSpec(
    title="MNIST",
    num_classes=10,
    mean=(0.1307,),
    std=(0.3081,),
    augment=False,
    files=idx.idx_dataset_files(("mnist", "MNIST/raw"), REMOTES),
)
