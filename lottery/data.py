"""Datasets for lottery-ticket experiments: find, read, split, normalise and batch them reproducibly."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import pickle
import tarfile
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class _Spec:
    """Fixed facts about one dataset: display name, classes, normalisation constants, augmentation."""

    title: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool


_SPECS: dict[str, _Spec] = {
    "fashion_mnist": _Spec("Fashion-MNIST", 10, (0.2860,), (0.3530,), False),
    "mnist": _Spec("MNIST", 10, (0.1307,), (0.3081,), False),
    "cifar10": _Spec("CIFAR-10", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True),
    "synthetic": _Spec("synthetic", 10, (0.0,), (1.0,), False),
}

DATASETS: tuple[str, ...] = tuple(_SPECS)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_BATCHES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")

# Sub-directories of the data root searched per dataset; the first is where downloads land.
_SUBDIRS = {
    "fashion_mnist": ("fashion_mnist", "fashion-mnist"),
    "mnist": ("mnist", "MNIST/raw"),
    "cifar10": (CIFAR10_DIR,),
}

# (prefix, kind, ndim) of the four IDX files, in the order train images, train labels, test ...
_IDX_PARTS = (
    ("train", "images", 3),
    ("train", "labels", 1),
    ("t10k", "images", 3),
    ("t10k", "labels", 1),
)

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

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

_SYNTHETIC_SEED = 1234
_SYNTHETIC_SHAPE = (1, 16, 16)
_SYNTHETIC_SIZES = (2000, 500)
_SYNTHETIC_NOISE = 3.0

PAD = 4  # zero padding (pixels) of the CIFAR-style random crop


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are in none of the searched directories."""


class UnknownDatasetError(ValueError):
    """A dataset name that is not in DATASETS."""


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file: its name, mirror URLs (tried in order) and the MD5 it must have."""

    name: str
    urls: tuple[str, ...]
    md5: str


def _remote_files(mirrors: tuple[str, ...], md5s: dict[str, str]) -> tuple[RemoteFile, ...]:
    """RemoteFile entries for files served under each of `mirrors`."""
    return tuple(
        RemoteFile(name, tuple(m + name for m in mirrors), md5) for name, md5 in md5s.items()
    )


DOWNLOADS: dict[str, tuple[RemoteFile, ...]] = {
    "fashion_mnist": _remote_files(
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    "mnist": _remote_files(
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "cifar10": _remote_files(
        ("https://www.cs.toronto.edu/~kriz/",),
        {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    ),
}


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
        """A copy with every tensor moved to `device`."""
        return replace(
            self,
            train_x=self.train_x.to(device),
            train_y=self.train_y.to(device),
            val_x=self.val_x.to(device),
            val_y=self.val_y.to(device),
            test_x=self.test_x.to(device),
            test_y=self.test_y.to(device),
        )

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


def read_idx(path: str | Path) -> np.ndarray:
    """Read an MNIST-style IDX file (gzipped or not) into a native-endian array, rejecting bad files."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt gzip data ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(f"{path}: not an IDX file (magic bytes {raw[:4].hex()})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
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


class CifarBatchError(pickle.UnpicklingError, ValueError):
    """A CIFAR-10 batch file that is garbage, truncated, empty or names a foreign global."""


def _read_cifar10_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
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
    train = [_read_cifar10_batch(root / name) for name in CIFAR10_BATCHES[:-1]]
    test_x, test_y = _read_cifar10_batch(root / CIFAR10_BATCHES[-1])
    return (
        np.concatenate([x for x, _ in train]),
        np.concatenate([y for _, y in train]),
        np.ascontiguousarray(test_x),
        test_y,
    )


def _idx_files(directory: Path) -> list[Path] | None:
    """The four IDX files in `directory` (any accepted naming, plain preferred over .gz), or None."""
    found = []
    for prefix, kind, ndim in _IDX_PARTS:
        bases = (f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte")
        candidates = [directory / (b + ext) for ext in ("", ".gz") for b in bases]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found


def _has_files(name: str, directory: Path) -> bool:
    """Whether `directory` holds a complete copy of dataset `name`."""
    if name == "cifar10":
        return all((directory / b).is_file() for b in CIFAR10_BATCHES)
    return _idx_files(directory) is not None


def _search_dirs(name: str, root: Path, explicit: bool) -> list[Path]:
    """Directories searched for `name`, in order; the root itself only if the user named it."""
    dirs = [root / sub for sub in _SUBDIRS[name]]
    if explicit:
        dirs.append(root)
    if name == "fashion_mnist":
        dirs.append(DEBIAN_FASHION_MNIST)
    return dirs


def _missing_message(name: str, dirs: list[Path]) -> str:
    """Error text for a dataset found nowhere: where we looked, what we expected, how to fix it."""
    title, sub = _SPECS[name].title, _SUBDIRS[name][0]
    looked = "\n".join(f"  {d}" for d in dirs)
    if name == "cifar10":
        expected = (
            f"{', '.join(CIFAR10_BATCHES)} (the {CIFAR10_DIR}/ folder of cifar-10-python.tar.gz)"
        )
    else:
        expected = ", ".join(f"{p}-{k}-idx{n}-ubyte[.gz]" for p, k, n in _IDX_PARTS)
    fixes = [
        f"pass --data-root DIR where DIR/{sub} or DIR itself holds these files",
        f"or pass --download (download=True) to fetch them into {dirs[0]}",
    ]
    if name == "fashion_mnist":
        fixes.insert(0, "install them with `sudo apt-get install dataset-fashion-mnist`")
    return (
        f"{title} not found. Looked in:\n{looked}\n"
        f"Expected files: {expected}\nTo fix: {', '.join(fixes)}."
    )


def _fetch(remote: RemoteFile, dest: Path) -> None:
    """Download `remote` to `dest` atomically (temp file + os.replace), trying mirrors and checking MD5."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    for url in remote.urls:
        try:
            digest = hashlib.md5(usedforsecurity=False)
            with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
            if digest.hexdigest() != remote.md5:
                raise OSError(f"MD5 {digest.hexdigest()} does not match expected {remote.md5}")
            os.replace(tmp, dest)
            return
        except (OSError, http.client.HTTPException) as e:
            errors.append(f"  {url}: {e}")
        finally:
            tmp.unlink(missing_ok=True)
    raise OSError(f"could not download {remote.name}:\n" + "\n".join(errors))


def _download(name: str, root: Path) -> None:
    """Fetch dataset `name` into root/<first sub-directory> (CIFAR-10: extract its archive there)."""
    if name != "cifar10":
        for remote in DOWNLOADS[name]:
            _fetch(remote, root / _SUBDIRS[name][0] / remote.name)
        return
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".cifar10-") as tmp:
        (remote,) = DOWNLOADS[name]
        archive = Path(tmp) / remote.name
        _fetch(remote, archive)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        os.replace(Path(tmp) / CIFAR10_DIR, root / CIFAR10_DIR)


def _locate(name: str, data_root: str | Path | None, download: bool) -> Path:
    """Directory holding dataset `name`, downloading it first if allowed and found nowhere."""
    root = default_data_root() if data_root is None else Path(data_root).expanduser()
    dirs = _search_dirs(name, root, explicit=data_root is not None)
    found = next((d for d in dirs if _has_files(name, d)), None)
    if found is None and download:
        _download(name, root)
        found = dirs[0] if _has_files(name, dirs[0]) else None
    if found is None:
        raise DatasetNotFoundError(_missing_message(name, dirs))
    return found


def _read_files(name: str, directory: Path) -> tuple[torch.Tensor, ...]:
    """Raw train_x, train_y, test_x, test_y of an on-disk dataset; images uint8 (N, C, H, W)."""
    if name == "cifar10":
        train_x, train_y, test_x, test_y = read_cifar10(directory)
        return (
            torch.from_numpy(train_x).permute(0, 3, 1, 2).contiguous(),
            torch.from_numpy(train_y),
            torch.from_numpy(test_x).permute(0, 3, 1, 2).contiguous(),
            torch.from_numpy(test_y),
        )
    paths = _idx_files(directory)
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


def _synthetic() -> tuple[torch.Tensor, ...]:
    """Fixed-seed toy data: class prototypes plus Gaussian noise, unit variance, quick to learn."""
    g = torch.Generator().manual_seed(_SYNTHETIC_SEED)
    prototypes = torch.randn(10, *_SYNTHETIC_SHAPE, generator=g)
    out = []
    for n in _SYNTHETIC_SIZES:
        y = torch.randint(0, 10, (n,), generator=g)
        noise = torch.randn(n, *_SYNTHETIC_SHAPE, generator=g)
        out += [(prototypes[y] + _SYNTHETIC_NOISE * noise) / math.sqrt(1 + _SYNTHETIC_NOISE**2), y]
    return tuple(out)


def _carve(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices 0..n-1 into (train, val) by a seeded permutation; each part keeps file order."""
    if not 0 <= val_size < n:
        raise ValueError(f"val_size must be in [0, {n}) for {n} training examples, got {val_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def _normalise(x: torch.Tensor, spec: _Spec, device: str | torch.device) -> torch.Tensor:
    """float32 images on `device` with the dataset's constant per-channel mean/std removed."""
    scale = 255.0 if x.dtype == torch.uint8 else 1.0
    x = x.to(device).float()
    mean = torch.tensor(spec.mean, device=x.device).view(-1, 1, 1) * scale
    std = torch.tensor(spec.std, device=x.device).view(-1, 1, 1) * scale
    return (x - mean) / std


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
    if name not in _SPECS:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}"
        )
    for label, limit in (("train_limit", train_limit), ("test_limit", test_limit)):
        if limit is not None and limit < 1:
            raise ValueError(f"{label} must be a positive integer or None, got {limit}")
    if val_size < 0:
        raise ValueError(f"val_size must be >= 0, got {val_size}")
    spec = _SPECS[name]
    if name == "synthetic":
        train_x, train_y, test_x, test_y = _synthetic()
        val_size = min(val_size, len(train_x) // 5)
    else:
        train_x, train_y, test_x, test_y = _read_files(name, _locate(name, data_root, download))
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
