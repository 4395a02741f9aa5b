"""Decoded-array cache: a dataset's decoded arrays kept as .npy files under the user's cache, so
later loads memory-map them instead of decompressing IDX or unpickling CIFAR files again (~1 s).

An entry is keyed by the reader and each source file's path, size and mtime, so a changed or
truncated source is decoded anew; entries are written to a temp folder and renamed into place, and
a cache that cannot be written or read is skipped, so the data returned is always the decoded data.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from lottery.datasets.spec import Files, Raw

CACHE_VERSION = 1
KEY_FILE = "key.json"


def cache_root() -> Path:
    """$LOTTERY_CACHE if set, else $XDG_CACHE_HOME/lottery/decoded, else ~/.cache/lottery/decoded."""
    if env := os.environ.get("LOTTERY_CACHE"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "lottery" / "decoded"


def source_key(files: Files, sources: list[Path]) -> dict:
    """What a cache entry must match: format version, reader, and each source's path, size, mtime."""
    stats = [(p.resolve(), p.stat()) for p in sources]
    return {
        "version": CACHE_VERSION,
        "reader": f"{files.read.__module__}.{files.read.__qualname__}",
        "sources": [
            {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns} for p, st in stats
        ],
    }


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:24]


def _entry(directory: Path, key: dict) -> Path:
    """cache_root()/<source folder and reader>/<key>: one folder per source, one entry per key."""
    folder = _digest([str(directory.resolve()), key["reader"]])
    return cache_root() / folder / _digest(key)


def _load(entry: Path, key: dict) -> Raw | None:
    """The entry's arrays (copy-on-write memory maps) if it exists and holds `key`, else None."""
    try:
        if json.loads((entry / KEY_FILE).read_text()) != key:
            return None
        return tuple(torch.from_numpy(np.load(entry / f"{i}.npy", mmap_mode="c")) for i in range(4))
    except (OSError, ValueError):  # absent, partly deleted or damaged: decode instead
        return None


def _store(entry: Path, key: dict, raw: Raw) -> None:
    """Write `raw` as entry (temp folder, then rename) and drop older entries of the same source."""
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.part")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        for i, tensor in enumerate(raw):
            np.save(tmp / f"{i}.npy", tensor.numpy())
        (tmp / KEY_FILE).write_text(json.dumps(key, indent=1))
        shutil.rmtree(entry, ignore_errors=True)  # a damaged entry under the same key
        os.rename(tmp, entry)
    except OSError:  # read-only or full cache, or another process renamed first: skip
        shutil.rmtree(tmp, ignore_errors=True)
        return
    for old in entry.parent.iterdir():
        if old != entry and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)


def read_cached(files: Files, directory: Path) -> Raw:
    """`files.read(directory)`, from the cache while its sources are unchanged (read as-is when the
    dataset names no sources)."""
    if files.sources is None:
        return files.read(directory)
    key = source_key(files, files.sources(directory))
    entry = _entry(directory, key)
    raw = _load(entry, key)
    if raw is None:
        raw = files.read(directory)
        _store(entry, key, raw)
    return raw
