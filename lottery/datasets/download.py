"""Downloads: files with mirror URLs and an MD5, fetched atomically."""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file: its name, mirror URLs (tried in order) and the MD5 it must have."""

    name: str
    urls: tuple[str, ...]
    md5: str


def remote_files(mirrors: tuple[str, ...], md5s: dict[str, str]) -> tuple[RemoteFile, ...]:
    """RemoteFile entries for files served under each of `mirrors`."""
    return tuple(
        RemoteFile(name, tuple(m + name for m in mirrors), md5) for name, md5 in md5s.items()
    )


def fetch(remote: RemoteFile, dest: Path) -> None:
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


def fetch_all(remotes: tuple[RemoteFile, ...], folder: Path) -> None:
    """Download each of `remotes` into `folder` under its own name."""
    for remote in remotes:
        fetch(remote, folder / remote.name)
