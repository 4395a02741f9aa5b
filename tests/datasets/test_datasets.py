"""Tests for lottery.datasets: readers, dataset discovery, registry, splits and download."""

import gzip
import hashlib
import io
import json
import os
import pickle
import tarfile
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lottery.datasets import DATASETS, cache, synthetic
from lottery.datasets import loading as datasets
from lottery.datasets.cifar10 import CIFAR10_BATCHES, CIFAR10_DIR, read_cifar10
from lottery.datasets.download import RemoteFile, fetch_all
from lottery.datasets.fashion_mnist import DEBIAN_FASHION_MNIST
from lottery.datasets.idx import read_idx
from lottery.datasets.loading import DatasetNotFoundError, UnknownDatasetError, load_dataset
from lottery.datasets.spec import DatasetSpec, Files

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode `array` in the IDX format (big-endian header and data)."""
    dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    header = bytes([0, 0, IDX_CODES[dtype], array.ndim])
    header += np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(dtype).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write `array` as an IDX file, gzipped when the name ends in .gz."""
    raw = idx_bytes(array)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def unique_images(n: int, offset: int = 0, size: int = 28) -> np.ndarray:
    """n distinct uint8 images: image i carries (i + offset) in its first two pixels."""
    rng = np.random.default_rng(offset)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    ids = np.arange(offset, offset + n)
    images[:, 0, 0], images[:, 0, 1] = ids // 256, ids % 256
    return images


def fake_idx_dataset(directory: Path, n_train: int = 200, n_test: int = 50, gz: bool = True):
    """Write a small MNIST-format dataset to `directory`; return its raw arrays."""
    ext = ".gz" if gz else ""
    arrays = {
        "train-images-idx3-ubyte": unique_images(n_train),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": unique_images(n_test, offset=n_train),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) * 3 % 10).astype(np.uint8),
    }
    for name, array in arrays.items():
        write_idx(directory / (name + ext), array)
    return arrays


def fake_cifar_dir(directory: Path, per_batch: int = 20, str_keys: bool = False):
    """Write CIFAR-10-format python batches to `directory`; return (train_x, train_y, test_x, test_y)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in CIFAR10_BATCHES:
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, per_batch)]
        batches[name] = (x, y)
        keys = ("data", "labels") if str_keys else (b"data", b"labels")
        payload = {keys[0]: x, keys[1]: y, b"batch_label": name.encode()}
        (directory / name).write_bytes(pickle.dumps(payload, protocol=2))
    nhwc = {k: x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1) for k, (x, _) in batches.items()}
    train = CIFAR10_BATCHES[:-1]
    return (
        np.concatenate([nhwc[k] for k in train]),
        np.concatenate([batches[k][1] for k in train]),
        nhwc["test_batch"],
        np.asarray(batches["test_batch"][1]),
    )


def row_keys(x: torch.Tensor) -> set[bytes]:
    """Set of per-example byte strings, to compare example identity across tensors."""
    return {row.numpy().tobytes() for row in x.flatten(1)}


def patch_files(monkeypatch, name: str, **changes) -> None:
    """Register `name` with its Files changed by `changes`, for this test only."""
    spec = DATASETS[name]
    changed = replace(spec, files=replace(spec.files, **changes))
    monkeypatch.setitem(DATASETS, name, changed)


@pytest.fixture
def no_debian(monkeypatch, tmp_path):
    """Point the Debian Fashion-MNIST path at a directory that does not exist."""
    missing = tmp_path / "no-debian-package"
    patch_files(monkeypatch, "fashion_mnist", system_dirs=(missing,))
    return missing


# --- IDX reader ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["labels-idx1-ubyte", "labels-idx1-ubyte.gz"])
def test_read_idx_round_trip_labels(tmp_path, name):
    labels = np.arange(37, dtype=np.uint8) % 10
    out = read_idx(write_idx(tmp_path / name, labels))
    assert out.dtype == np.uint8 and out.shape == (37,)
    np.testing.assert_array_equal(out, labels)


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images.idx3-ubyte.gz"])
def test_read_idx_round_trip_images(tmp_path, name):
    images = unique_images(5, size=7)
    out = read_idx(write_idx(tmp_path / name, images))
    assert out.shape == (5, 7, 7)
    np.testing.assert_array_equal(out, images)


@pytest.mark.parametrize("dtype", [">i4", ">f4"])
def test_read_idx_multibyte_is_native_endian(tmp_path, dtype):
    values = (np.arange(12).reshape(3, 4) - 5).astype(dtype)
    out = read_idx(write_idx(tmp_path / "x.idx", values))
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, values)


def test_read_idx_truncated_names_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(unique_images(4))[:-10])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*size mismatch"):
        read_idx(path)


def test_read_idx_truncated_gzip_names_file(tmp_path):
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(1000, np.uint8)))[:-20])
    with pytest.raises(ValueError, match="labels.gz"):
        read_idx(path)


@pytest.mark.parametrize("raw", [b"", b"\x00\x00\x08", b"\x01\x00\x08\x01", b"\x00\x00\x07\x01"])
def test_read_idx_bad_magic(tmp_path, raw):
    path = tmp_path / "bad.idx"
    path.write_bytes(raw + bytes(16))
    with pytest.raises(ValueError, match=r"bad\.idx.*not an IDX file"):
        read_idx(path)


# --- discovery and errors -----------------------------------------------------------------------


def test_unknown_dataset_lists_known_names():
    with pytest.raises(UnknownDatasetError) as err:
        load_dataset("imagenet")
    assert isinstance(err.value, ValueError)
    for name in DATASETS:
        assert name in str(err.value)


def test_missing_fashion_mnist_lists_paths_and_install_hint(tmp_path, no_debian):
    root = tmp_path / "root"
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fashion_mnist", root)
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    for path in (root / "fashion_mnist", root / "fashion-mnist", root, no_debian):
        assert f"  {path}\n" in message
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert "--data-root" in message and "--download" in message


def test_default_root_comes_from_env_and_is_not_searched_itself(tmp_path, monkeypatch, no_debian):
    monkeypatch.setenv("LOTTERY_DATA", str(tmp_path))
    fake_idx_dataset(tmp_path)  # files directly in the default root are not picked up
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("mnist")
    message = str(err.value)
    assert str(tmp_path / "mnist") in message and str(tmp_path / "MNIST" / "raw") in message
    assert f"  {tmp_path}\n" not in message
    monkeypatch.delenv("LOTTERY_DATA")
    assert datasets.default_data_root() == Path.home() / ".cache" / "lottery" / "data"


@pytest.mark.parametrize(
    ("name", "expected"),
    [("mnist", "train-images-idx3-ubyte"), ("cifar10", "data_batch_1")],
)
def test_missing_other_datasets_name_files_and_download_flag(tmp_path, name, expected):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset(name, tmp_path)
    message = str(err.value)
    assert expected in message and "--download" in message and f"  {tmp_path}\n" in message


@pytest.mark.parametrize("layout", ["mnist", "MNIST/raw", "."])
def test_mnist_found_in_each_layout(tmp_path, layout):
    raw = fake_idx_dataset(tmp_path / layout, gz=layout != "MNIST/raw")
    splits = load_dataset("mnist", tmp_path, val_size=0)
    assert splits.train_x.shape == (200, 1, 28, 28)
    assert splits.test_y.tolist() == raw["t10k-labels-idx1-ubyte"].tolist()


def test_dotted_idx_names_accepted(tmp_path):
    raw = fake_idx_dataset(tmp_path, gz=False)
    for name in raw:
        stem, kind = name.rsplit("-idx", 1)
        (tmp_path / name).rename(tmp_path / f"{stem}.idx{kind}")
    assert len(load_dataset("mnist", tmp_path, val_size=10).val_x) == 10


# --- splits and normalisation -------------------------------------------------------------------


def test_normalisation_uses_dataset_constants(tmp_path):
    raw = fake_idx_dataset(tmp_path / "mnist")
    splits = load_dataset("mnist", tmp_path, val_size=0)
    expected = (torch.from_numpy(raw["t10k-images-idx3-ubyte"]).float() / 255 - 0.1307) / 0.3081
    assert splits.test_x.dtype == torch.float32 and splits.train_y.dtype == torch.int64
    torch.testing.assert_close(splits.test_x[:, 0], expected)


def test_normalisation_is_bitwise_the_out_of_place_formula_and_spares_the_source(monkeypatch):
    """In-place normalising gives exactly (x - mean) / std and never writes the reader's tensors."""
    raw = synthetic.generate()
    spec = replace(synthetic.SYNTHETIC, mean=(0.3,), std=(1.7,), generate=lambda: raw)
    monkeypatch.setitem(DATASETS, "synthetic", spec)
    before = raw[2].clone()
    splits = load_dataset("synthetic")
    assert torch.equal(raw[2], before)
    expected = (before - torch.tensor(0.3).view(1, 1, 1)) / torch.tensor(1.7).view(1, 1, 1)
    assert torch.equal(splits.test_x.view(torch.int32), expected.view(torch.int32))


def test_val_split_deterministic_disjoint_and_seeded(tmp_path):
    fake_idx_dataset(tmp_path / "fashion_mnist", n_train=300)
    a = load_dataset("fashion_mnist", tmp_path, val_size=60)
    b = load_dataset("fashion_mnist", tmp_path, val_size=60)
    for field in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    train, val = row_keys(a.train_x), row_keys(a.val_x)
    assert len(train) == 240 and len(val) == 60 and not train & val
    other = load_dataset("fashion_mnist", tmp_path, val_size=60, split_seed=1)
    assert row_keys(other.val_x) != val
    assert row_keys(other.train_x) | row_keys(other.val_x) == train | val


def test_limits_apply_after_val_carve_out(tmp_path):
    fake_idx_dataset(tmp_path / "mnist", n_train=100)
    full = load_dataset("mnist", tmp_path, val_size=30)
    small = load_dataset("mnist", tmp_path, val_size=30, train_limit=20, test_limit=7)
    assert torch.equal(small.val_x, full.val_x)
    assert torch.equal(small.train_x, full.train_x[:20])
    assert torch.equal(small.test_x, full.test_x[:7])
    assert small.describe() == {
        "name": "mnist",
        "train_size": 20,
        "val_size": 30,
        "test_size": 7,
        "num_classes": 10,
        "input_shape": [1, 28, 28],
        "augment": False,
    }
    json.dumps(small.describe())


def test_zero_val_size_gives_empty_val_with_right_shape(tmp_path):
    fake_idx_dataset(tmp_path / "mnist", n_train=50)
    splits = load_dataset("mnist", tmp_path, val_size=0)
    assert splits.val_x.shape == (0, 1, 28, 28) and splits.val_y.shape == (0,)
    assert len(splits.train_x) == 50
    # its digest hashes the other splits alone (a run without validation data records one)
    other = load_dataset("mnist", tmp_path, val_size=0, test_limit=5)
    assert len(splits.digest) == 16 and splits.digest != other.digest


def test_a_run_without_validation_data_trains_and_records(tmp_path):
    from lottery.cli.main import main

    argv = ["train", "--model", "lenet_32", "--dataset", "synthetic", "--val-size", "0",
            "--steps", "10", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "r")]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    assert result["best_val_step"] is None and result["test_accuracy"] > 0


@pytest.mark.parametrize(
    "kwargs", [{"val_size": 50}, {"val_size": -1}, {"train_limit": 0}, {"test_limit": -3}]
)
def test_bad_split_arguments_rejected(tmp_path, kwargs):
    fake_idx_dataset(tmp_path / "mnist", n_train=50)
    with pytest.raises(ValueError):
        load_dataset("mnist", tmp_path, **kwargs)


def test_splits_to_moves_every_tensor(tmp_path):
    splits = load_dataset("synthetic", val_size=10)
    moved = splits.to(torch.device("meta"))
    assert moved is not splits and moved.name == "synthetic"
    for field in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert getattr(moved, field).device.type == "meta"
        assert getattr(splits, field).device.type == "cpu"


@pytest.fixture(scope="module")
def fashion_slice():
    if not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not installed at {DEBIAN_FASHION_MNIST}")
    return load_dataset(val_size=1000, train_limit=3000, test_limit=500)


def test_real_fashion_mnist_slice(fashion_slice):
    s = fashion_slice
    assert s.name == "fashion_mnist" and s.num_classes == 10 and s.input_shape == (1, 28, 28)
    assert s.train_x.shape == (3000, 1, 28, 28) and s.val_x.shape == (1000, 1, 28, 28)
    assert s.test_x.shape == (500, 1, 28, 28) and s.test_y.shape == (500,)
    assert set(s.train_y.tolist()) == set(range(10))
    assert abs(s.train_x.mean().item()) < 0.05 and abs(s.train_x.std().item() - 1) < 0.05
    assert not s.augment


def test_real_fashion_mnist_deterministic(fashion_slice):
    again = load_dataset(val_size=1000, train_limit=3000, test_limit=500)
    assert torch.equal(again.train_x, fashion_slice.train_x)
    assert torch.equal(again.val_y, fashion_slice.val_y)


# --- synthetic ----------------------------------------------------------------------------------


def test_synthetic_shapes_and_determinism():
    a = load_dataset("synthetic")
    b = load_dataset("synthetic", val_size=5000)
    assert a.input_shape == (1, 16, 16) and a.num_classes == 10
    assert (len(a.train_x), len(a.val_x), len(a.test_x)) == (1600, 400, 500)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert set(a.train_y.tolist()) == set(range(10))
    assert abs(a.train_x.mean().item()) < 0.1 and abs(a.train_x.std().item() - 1) < 0.1
    assert len(load_dataset("synthetic", val_size=100).val_x) == 100


# --- CIFAR-10 reader ----------------------------------------------------------------------------


@pytest.mark.parametrize("str_keys", [False, True])
def test_read_cifar10(tmp_path, str_keys):
    expected = fake_cifar_dir(tmp_path, str_keys=str_keys)
    got = read_cifar10(tmp_path)
    assert got[0].shape == (100, 32, 32, 3) and got[0].dtype == np.uint8
    assert got[2].shape == (20, 32, 32, 3) and got[3].dtype == np.int64
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


def test_read_cifar10_python2_module_names(tmp_path):
    """Real CIFAR-10 batches were pickled by numpy 1.x under Python 2 (numpy.core, bytes keys)."""
    fake_cifar_dir(tmp_path)
    for name in CIFAR10_BATCHES:
        raw = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(raw.replace(b"numpy._core.", b"numpy.core."))
    assert read_cifar10(tmp_path)[0].shape == (100, 32, 32, 3)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > should-not-exist",))


def test_read_cifar10_refuses_malicious_pickle(tmp_path, monkeypatch):
    fake_cifar_dir(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(pickle.UnpicklingError, match=r"data_batch_3.*(posix|os)\.system"):
        read_cifar10(tmp_path)
    assert not (tmp_path / "should-not-exist").exists()


def test_load_cifar10_is_nchw_and_augmented(tmp_path):
    _, _, test_x, test_y = fake_cifar_dir(tmp_path / CIFAR10_DIR)
    splits = load_dataset("cifar10", tmp_path, val_size=10)
    assert splits.augment and splits.input_shape == (3, 32, 32)
    assert splits.train_x.shape == (90, 3, 32, 32) and splits.train_x.is_contiguous()
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)
    expected = (torch.from_numpy(test_x).permute(0, 3, 1, 2).float() / 255 - mean) / std
    torch.testing.assert_close(splits.test_x, expected)
    assert splits.test_y.tolist() == test_y.tolist()


# --- decoded cache: later loads memory-map the decoded arrays ----------------------------------


def counting(files: Files) -> tuple[Files, list[Path]]:
    """`files` whose reader records each folder it decodes (same name, so the same cache key)."""
    calls = []

    def read(directory: Path) -> tuple[torch.Tensor, ...]:
        calls.append(directory)
        return files.read(directory)

    read.__module__, read.__qualname__ = files.read.__module__, files.read.__qualname__
    return replace(files, read=read), calls


def assert_same_raw(got: tuple, expected: tuple) -> None:
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("LOTTERY_CACHE", str(cache))
    return cache


def test_cache_root_from_env(tmp_path, monkeypatch):
    monkeypatch.delenv("LOTTERY_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "xdg" / "lottery" / "decoded"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.cache_root() == Path.home() / ".cache" / "lottery" / "decoded"
    monkeypatch.setenv("LOTTERY_CACHE", str(tmp_path / "mine"))
    assert cache.cache_root() == tmp_path / "mine"


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_cached_load_equals_fresh_decode(tmp_path, cache_dir, name):
    folder = tmp_path / "data"
    fake_idx_dataset(folder) if name == "mnist" else fake_cifar_dir(folder)
    files, calls = counting(DATASETS[name].files)
    fresh = DATASETS[name].files.read(folder)
    first = cache.read_cached(files, folder)
    again = cache.read_cached(files, folder)
    assert calls == [folder] and len(list(cache_dir.glob("*/*/key.json"))) == 1
    assert_same_raw(first, fresh)
    assert_same_raw(again, fresh)
    splits = [load_dataset(name, folder, val_size=10, split_seed=1) for _ in range(2)]
    for field in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(splits[0], field), getattr(splits[1], field))


def test_changed_or_truncated_source_is_decoded_anew(tmp_path, cache_dir):
    folder = tmp_path / "data"
    fake_idx_dataset(folder)
    files, calls = counting(DATASETS["mnist"].files)
    cache.read_cached(files, folder)
    labels = folder / "train-labels-idx1-ubyte.gz"
    mtime = labels.stat().st_mtime_ns
    new_labels = (np.arange(200) * 7 % 10).astype(np.uint8)
    write_idx(labels, new_labels)
    os.utime(labels, ns=(mtime + 10**9, mtime + 10**9))  # a rewrite in the same clock tick
    got = cache.read_cached(files, folder)
    assert len(calls) == 2 and got[1].tolist() == new_labels.tolist()
    assert len(list(cache_dir.glob("*/*/key.json"))) == 1  # the stale entry is gone
    images = folder / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(ValueError, match="train-images"):
        cache.read_cached(files, folder)


def test_damaged_entry_is_decoded_anew(tmp_path, cache_dir):
    folder = tmp_path / "data"
    fake_idx_dataset(folder)
    files, calls = counting(DATASETS["mnist"].files)
    fresh = DATASETS["mnist"].files.read(folder)
    cache.read_cached(files, folder)
    (stored,) = cache_dir.glob("*/*/0.npy")
    stored.write_bytes(stored.read_bytes()[:200])
    assert_same_raw(cache.read_cached(files, folder), fresh)  # decoded and stored again
    assert_same_raw(cache.read_cached(files, folder), fresh)  # from the repaired entry
    assert len(calls) == 2


def test_unwritable_cache_still_loads(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("LOTTERY_CACHE", str(blocker / "cache"))
    folder = tmp_path / "data"
    fake_idx_dataset(folder)
    files, calls = counting(DATASETS["mnist"].files)
    fresh = DATASETS["mnist"].files.read(folder)
    for _ in range(2):
        assert_same_raw(cache.read_cached(files, folder), fresh)
    assert len(calls) == 2 and blocker.read_text() == "not a folder"


# --- download (urlopen monkeypatched: no network) -----------------------------------------------


def serve(monkeypatch, files: dict[str, bytes]) -> list[str]:
    """Make urllib.request.urlopen serve `files` by URL (others fail); return the requested URLs."""
    requested = []

    def fake_urlopen(url, timeout=None):
        requested.append(url)
        if url not in files:
            raise urllib.error.URLError("unreachable")
        return io.BytesIO(files[url])

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return requested


def test_download_mnist_tries_mirrors_and_then_loads(tmp_path, monkeypatch):
    source = tmp_path / "source"
    fake_idx_dataset(source)
    remotes, files = [], {}
    for path in sorted(source.iterdir()):
        body = path.read_bytes()
        urls = (f"https://dead.example/{path.name}", f"https://ok.example/{path.name}")
        remotes.append(RemoteFile(path.name, urls, hashlib.md5(body).hexdigest()))
        files[urls[1]] = body
    patch_files(monkeypatch, "mnist", remotes=tuple(remotes))
    requested = serve(monkeypatch, files)
    root = tmp_path / "root"

    with pytest.raises(DatasetNotFoundError):
        load_dataset("mnist", root)
    assert requested == []
    splits = load_dataset("mnist", root, val_size=20, download=True)
    assert len(requested) == 8 and len(splits.train_x) == 180
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(r.name for r in remotes)
    load_dataset("mnist", root, download=True, val_size=0)
    assert len(requested) == 8  # already present: no second download


def test_download_rejects_bad_checksum_and_leaves_nothing(tmp_path, monkeypatch):
    url = "https://ok.example/train-images-idx3-ubyte.gz"
    remote = RemoteFile("train-images-idx3-ubyte.gz", (url,), "0" * 32)
    patch_files(monkeypatch, "fashion_mnist", remotes=(remote,))
    serve(monkeypatch, {url: b"tampered"})
    patch_files(monkeypatch, "fashion_mnist", system_dirs=(tmp_path / "absent",))
    with pytest.raises(OSError, match="MD5"):
        load_dataset("fashion_mnist", tmp_path, download=True)
    assert list((tmp_path / "fashion_mnist").iterdir()) == []


def tar_gz(members: dict[str, bytes]) -> bytes:
    """A .tar.gz archive holding `members` (name -> contents)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


def test_download_cifar10_extracts_and_loads(tmp_path, monkeypatch):
    source = tmp_path / "source"
    fake_cifar_dir(source)
    archive = tar_gz({f"{CIFAR10_DIR}/{p.name}": p.read_bytes() for p in source.iterdir()})
    url = "https://ok.example/cifar-10-python.tar.gz"
    remote = RemoteFile("cifar-10-python.tar.gz", (url,), hashlib.md5(archive).hexdigest())
    patch_files(monkeypatch, "cifar10", remotes=(remote,))
    serve(monkeypatch, {url: archive})
    root = tmp_path / "root"
    splits = load_dataset("cifar10", root, val_size=0, download=True)
    assert len(splits.train_x) == 100
    assert sorted(p.name for p in root.iterdir()) == [CIFAR10_DIR]


def test_download_cifar10_refuses_path_traversal(tmp_path, monkeypatch):
    archive = tar_gz({"../escaped": b"x"})
    url = "https://ok.example/cifar-10-python.tar.gz"
    remote = RemoteFile("cifar-10-python.tar.gz", (url,), hashlib.md5(archive).hexdigest())
    patch_files(monkeypatch, "cifar10", remotes=(remote,))
    serve(monkeypatch, {url: archive})
    root = tmp_path / "root"
    with pytest.raises(tarfile.FilterError):
        load_dataset("cifar10", root, download=True)
    assert not (tmp_path / "escaped").exists() and list(root.iterdir()) == []


# --- registry: a new dataset is one spec plus one registry entry --------------------------------


def read_toy(directory: Path) -> tuple[torch.Tensor, ...]:
    """The toy format: one .npz holding train_x, train_y, test_x, test_y."""
    with np.load(directory / "toy.npz") as f:
        return tuple(torch.from_numpy(f[k]) for k in ("train_x", "train_y", "test_x", "test_y"))


def test_registering_a_toy_dataset_makes_it_loadable(tmp_path, monkeypatch):
    rng = np.random.default_rng(7)
    arrays = {
        "train_x": rng.integers(0, 256, (40, 2, 5, 5), dtype=np.uint8),
        "train_y": np.arange(40, dtype=np.int64) % 3,
        "test_x": rng.integers(0, 256, (9, 2, 5, 5), dtype=np.uint8),
        "test_y": np.arange(9, dtype=np.int64) % 3,
    }
    arrays["train_x"][:, 0, 0, 0] = np.arange(40)  # each training image carries its index
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    body = buffer.getvalue()
    url = "https://ok.example/toy.npz"
    toy = DatasetSpec(
        title="Toy",
        num_classes=3,
        mean=(0.5, 0.25),
        std=(0.5, 0.125),
        augment=True,
        files=Files(
            subdirs=("toy",),
            expected="toy.npz",
            present=lambda d: (d / "toy.npz").is_file(),
            read=read_toy,
            remotes=(RemoteFile("toy.npz", (url,), hashlib.md5(body).hexdigest()),),
            download=fetch_all,
        ),
    )
    monkeypatch.setitem(DATASETS, "toy", toy)
    with pytest.raises(UnknownDatasetError, match="toy"):
        load_dataset("nope")
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("toy", tmp_path)
    assert str(err.value).startswith(f"Toy not found. Looked in:\n  {tmp_path / 'toy'}\n")
    assert "Expected files: toy.npz\n" in str(err.value)

    requested = serve(monkeypatch, {url: body})
    splits = load_dataset("toy", tmp_path, val_size=10, split_seed=3, download=True)
    assert requested == [url] and (tmp_path / "toy" / "toy.npz").read_bytes() == body
    assert splits.describe() == {
        "name": "toy",
        "train_size": 30,
        "val_size": 10,
        "test_size": 9,
        "num_classes": 3,
        "input_shape": [2, 5, 5],
        "augment": True,
    }
    mean = torch.tensor([0.5, 0.25]).view(2, 1, 1)
    std = torch.tensor([0.5, 0.125]).view(2, 1, 1)
    normalise = lambda x: (torch.from_numpy(x).float() / 255 - mean) / std  # noqa: E731
    torch.testing.assert_close(splits.test_x, normalise(arrays["test_x"]))
    assert splits.test_y.tolist() == arrays["test_y"].tolist()
    ids = {k: (getattr(splits, k)[:, 0, 0, 0] * 0.5 + 0.5) * 255 for k in ("train_x", "val_x")}
    train_ids, val_ids = (ids[k].round().long() for k in ("train_x", "val_x"))
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(3))
    assert val_ids.tolist() == sorted(perm[:10].tolist())
    assert train_ids.tolist() == sorted(perm[10:].tolist())
    assert splits.train_y.tolist() == arrays["train_y"][train_ids.numpy()].tolist()


def test_spec_needs_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one of files and generate"):
        DatasetSpec("bad", 2, (0.0,), (1.0,), False)
