"""Guarantees of a run folder: one writer at a time, nothing left behind, a complete identity.

`hold(out)` takes the folder's lock for as long as a command writes it and then removes what
interrupted writers left (temporary files of atomic writes, a finished run's resume checkpoint).
`run_identity` is everything that changes a run's numbers (its settings and its mask's content),
and `check_identity` refuses a folder that holds another run, naming the settings that differ.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lottery.core import distributed, layout
from lottery.core.config import NON_RESULT_FIELDS, ConfigError, TrainConfig
from lottery.core.storage import lock_holder, read_json
from lottery.pruning.masks import Mask

# Temporary files of `storage.write_bytes_atomic`: `.NAME.` + 8 random characters (mkstemp) + `.tmp`.
_TEMP = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


class FolderInUseError(RuntimeError):
    """Another live process holds the lock of the folder a command wants to write."""


class ChecksPassed(Exception):  # noqa: N818 - a signal, not an error
    """Raised by `hold` inside `checks_only()`: the command passed every check it makes before
    its first write, and stops there."""


# Whether `hold` stops a command before its first write (`checks_only`).
_checks_only = False


@contextlib.contextmanager
def checks_only() -> Iterator[None]:
    """Run a command's checks and nothing more: its first `hold` raises ChecksPassed instead of
    taking the folder (every command checks all its settings before it writes a byte)."""
    global _checks_only
    before, _checks_only = _checks_only, True
    try:
        yield
    finally:
        _checks_only = before


# Folders this process holds (resolved path -> [open lock file, depth]), so nested holds nest.
_held: dict[Path, list[Any]] = {}


@contextlib.contextmanager
def hold(out: str | Path, command: str | None = None) -> Iterator[Path]:
    """Be the one process writing `out` (created if missing) until the block ends.

    The lock is `fcntl.flock` on `out/.lock`, which records the holder's pid, host and command for
    the refusal message. The kernel drops the lock when its holder dies (even by `kill -9`), so a
    lock left by a killed process is taken over safely on local filesystems and on NFS with working
    lock support (Linux maps flock to NFS byte-range locks). It is NOT safe where locks are not
    shared between hosts: NFS mounted with `nolock`/`local_lock`, or some FUSE and SMB mounts; there
    two machines may write one folder at once. Under torchrun only rank 0 (the writer) locks.
    Holding a folder again, or one inside a held folder, from the same process is a no-op.
    """
    out = Path(out)
    if not distributed.is_main():
        yield out
        return
    key = out.resolve()
    if any(p in _held for p in key.parents):  # inside a tree this process already holds
        yield out
        return
    if key in _held:
        _held[key][1] += 1
        try:
            yield out
        finally:
            _held[key][1] -= 1
        return
    check_tree_free(key)
    if _checks_only:
        raise ChecksPassed(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    f = open(out / layout.LOCK, "a+")  # noqa: SIM115 - held open as long as the lock
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise FolderInUseError(
                f"{out} is being written by {holder}; wait for it to finish or use another --out"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} ({command or _command()})")
        f.flush()
        _held[key] = [f, 1]
        clean_leftovers(out)
        try:
            yield out
        except BaseException:
            if created and [p.name for p in out.iterdir()] == [layout.LOCK]:
                shutil.rmtree(out)  # refused before writing: leave no folder behind
            raise
        finally:
            del _held[key]
    finally:
        f.close()  # releases the lock


def check_tree_free(folder: Path) -> None:
    """Refuse to write `folder` while another process holds a folder above it (a multi-seed
    search writing its seed folders) or inside it: one writer per folder tree."""
    above = [p / layout.LOCK for p in folder.parents]
    below = folder.rglob(layout.LOCK) if folder.is_dir() else []
    for lock in [*above, *below]:
        if lock.parent in _held or lock.parent == folder or not lock.is_file():
            continue
        holder = lock_holder(lock)
        if holder is not None:
            raise FolderInUseError(
                f"{folder} lies {'inside' if lock in above else 'around'} {lock.parent}, which is "
                f"being written by {holder}; wait for it to finish or use another --out"
            )


def holder(folder: str | Path) -> str | None:
    """Who holds `folder`'s lock (the recorded pid, host and command), or None when nobody does."""
    return lock_holder(Path(folder) / layout.LOCK)


def _command() -> str:
    """This process's command line as the user typed it (`lottery ...` or `python -m lottery`)."""
    prog = Path(sys.argv[0]).name if sys.argv else "python"
    prog = "python -m lottery" if prog == "__main__.py" else prog
    return " ".join([prog, *sys.argv[1:]])


def clean_leftovers(out: str | Path) -> list[Path]:
    """Remove what interrupted writers left under `out`; returns the removed paths.

    Temporary files of interrupted atomic writes go; a finished run (result.json present) keeps no
    resume checkpoint (a kill between writing result.json and removing last.pt leaves one). Call
    it only while holding the folder's lock, since a live writer's temporary files look the same.
    """
    removed = []
    for root, dirs, files in os.walk(out):
        here = Path(root)
        removed += [here / n for n in files if _TEMP.fullmatch(n)]
        if layout.RESULT in files:
            for name in (layout.LAST, layout.PREVIOUS):
                path = layout.checkpoint_dir(here) / name
                if path.is_file():
                    removed.append(path)
        dirs.sort()
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


# -- identity -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunIdentity:
    """What determines a run's numbers: its result-changing settings and its mask's content."""

    settings: dict[str, Any]
    mask_digest: str | None
    fingerprint: str


def run_identity(cfg: TrainConfig, mask: Mask | None) -> RunIdentity:
    """The identity of a run of `cfg` trained under `mask` (None: dense)."""
    settings = {k: v for k, v in cfg.to_dict().items() if k not in NON_RESULT_FIELDS}
    digest = mask.digest() if mask is not None else None
    return RunIdentity(settings, digest, run_fingerprint(cfg, mask))


def run_fingerprint(cfg: TrainConfig, mask: Mask | None) -> str:
    """Short hash of everything that changes a run's result; a dense run's is its config's."""
    base = cfg.fingerprint(*NON_RESULT_FIELDS)
    if mask is None:
        return base
    return hashlib.sha256(json.dumps([base, mask.digest()]).encode()).hexdigest()[:16]


def settings_digest(config: Any) -> str:
    """A short hash of a recorded configuration exactly as written, to notice a hand edit."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def check_identity(run_dir: str | Path, identity: RunIdentity) -> None:
    """Refuse a folder whose config.json records another run, naming the settings that differ."""
    path = Path(run_dir) / layout.CONFIG
    if not path.exists():
        return
    old = read_json(path)
    if "config_digest" in old and old["config_digest"] != settings_digest(old.get("config")):
        raise ConfigError(
            f"{path} was changed by hand after the run recorded it, and a run's settings are never "
            f"read back from there: restore the file, or train the settings you want in a new "
            f"--out (--config {path} reads them)"
        )
    if old.get("fingerprint") == identity.fingerprint:
        return
    recorded = {k: v for k, v in old.get("config", {}).items() if k not in NON_RESULT_FIELDS}
    before = {**recorded, "mask": old.get("mask_digest")}
    after = {**identity.settings, "mask": identity.mask_digest}
    raise ConfigError(
        f"{run_dir} already holds a run with another configuration ({describe_diff(before, after)}); "
        f"use a new --out directory, or remove {run_dir} to start over"
    )


def config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> dict[str, tuple]:
    """The settings that differ between two recorded configurations: name -> (old, new).

    Nested dicts are compared key by key (`extra.pruning.every`); a missing key reads as None.
    """
    out: dict[str, tuple] = {}
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(config_diff(a, b, f"{name}."))
        elif a != b:
            out[name] = (a, b)
    return out


def describe_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    """`lr 0.1 -> 0.05, mask none -> 3f2a...`: a config_diff as one line for a message."""
    diff = config_diff(old, new)
    if not diff:
        return "recorded by another version of lottery"

    def show(v: Any) -> str:
        return "none" if v is None else json.dumps(v)

    return ", ".join(f"{k} {show(a)} -> {show(b)}" for k, (a, b) in diff.items())


# -- where to write -------------------------------------------------------------------------


def check_writable(
    path: str | Path, flag: str, folder: bool = True, kinds: tuple[str, ...] = ()
) -> None:
    """Refuse, before anything is written, a `flag` path that names a file where a folder belongs
    (or the reverse), lies under a file, or sits in a folder this user cannot write; with `kinds`
    (`layout.kind` names), a folder that already holds results of another kind (a training run
    where a search would go), so two commands never mix their records in one folder."""
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            raise ConfigError(f"{flag} {path} is a file, not a folder")
        if not folder and path.is_dir():
            raise ConfigError(f"{flag} {path} is a folder, not a file")
    probe = path if folder and path.is_dir() else path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{flag} {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: cannot write in {probe} (permission denied)")
    found = layout.kind(path) if folder and path.is_dir() else None
    if kinds and found is not None and found not in kinds:
        raise ConfigError(
            f"{flag} {path} already holds results of another kind ({found}); use another {flag}"
        )


def recorded_config(run_dir: str | Path) -> TrainConfig:
    """The settings a run's config.json records, or one line naming the file and what is wrong
    (a hand-edited key that is no setting, a value of the wrong kind, no config at all)."""
    path = Path(run_dir) / layout.CONFIG
    record = read_json(path)
    try:
        return TrainConfig.from_dict(record["config"])
    except (ConfigError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: {e}") from None
