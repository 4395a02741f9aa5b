"""Fashion-MNIST (Xiao et al., 2017): IDX files under the data root or from Debian's package."""

from __future__ import annotations

from pathlib import Path

from lottery.datasets import idx
from lottery.datasets.download import remote_files
from lottery.datasets.spec import DatasetSpec

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

REMOTES = remote_files(
    ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
)

FASHION_MNIST = DatasetSpec(
    title="Fashion-MNIST",
    num_classes=10,
    mean=(0.2860,),
    std=(0.3530,),
    augment=False,
    files=idx.idx_dataset_files(
        ("fashion_mnist", "fashion-mnist"),
        REMOTES,
        system_dirs=(DEBIAN_FASHION_MNIST,),
        install_hint="install them with `sudo apt-get install dataset-fashion-mnist`",
    ),
)
