"""Files on disk: atomic writes (also in the background), safe checkpoint loads, JSON records,
folder locks' holders and run provenance. torch loads only for checkpoints and provenance, so
records and locks can be read by a process that trains nothing (a sweep's worker)."""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

CHECKPOINT_FORMAT = "lottery-checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint or record that cannot be used: truncated, corrupt, foreign or from another run.

    A user-facing error (the command line reports it in one line, exit status 2), not a bug.
    """


def current_umask() -> int:
    """The process's umask, read without changing it where /proc allows (thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes_atomic(data: bytes, path: str | Path) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one.

    The file gets the mode a plain `open` would give (0666 less the umask), not mkstemp's 0600,
    so colleagues sharing an output folder can read the records.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # a full disk or a read-only folder: say where
        raise OSError(e.errno, f"{e.strerror or e} (writing {path})") from e
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise OSError(e.errno, f"{e.strerror or e} (writing {path})") from e
        raise


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Serialise `state` (tensors, numbers, strings, containers) atomically with a format tag."""
    import torch

    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buf)
    write_bytes_atomic(buf.getvalue(), path)


def snapshot(state: Any) -> Any:
    """A copy of `state` (containers of tensors and plain values) with every tensor copied to the
    CPU, so it can be written while training goes on changing the originals."""
    import torch

    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: snapshot(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(snapshot(v) for v in state)
    return state


class Writer:
    """File writes done in submission order on one background thread, so that training goes on
    while a checkpoint reaches the disk. Each write is atomic, so a kill at any moment leaves the
    file before it; `wait` returns once every write is done (raising the first that failed), and
    a failed write also surfaces at the next `submit`. No thread outlives a `wait`."""

    def __init__(self) -> None:
        self.pool: ThreadPoolExecutor | None = None
        self.pending: list[Future] = []

    def submit(self, write: Callable[..., None], *args: Any) -> None:
        self.raise_failed()
        if self.pool is None:
            self.pool = ThreadPoolExecutor(1, thread_name_prefix="lottery-writer")
        self.pending.append(self.pool.submit(write, *args))

    def raise_failed(self) -> None:
        done = [f for f in self.pending if f.done()]
        self.pending = [f for f in self.pending if not f.done()]
        for f in done:
            f.result()

    def wait(self) -> None:
        pending, self.pending = self.pending, []
        errors = [e for e in (f.exception() for f in pending) if e is not None]
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None
        if errors:
            raise errors[0]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without executing pickled code; any defect is an error naming the file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        # torch's own text advises loading with weights_only=False, which would run pickled code
        raise CheckpointError(
            f"cannot read checkpoint {path}: it is truncated, corrupt or not a lottery checkpoint "
            f"({type(e).__name__}; nothing in it was run). If lottery wrote it, remove its run "
            "folder and rerun the command to retrain that run exactly"
        ) from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    return state


def write_json(obj: Any, path: str | Path) -> None:
    """Write pretty JSON atomically."""
    write_bytes_atomic((json.dumps(obj, indent=2, sort_keys=False) + "\n").encode(), path)


def read_json(path: str | Path) -> Any:
    """Read a JSON record, naming the file if it is unreadable."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read JSON record {path}: {e}") from e


def write_jsonl(records: list[dict], path: str | Path) -> None:
    """Rewrite a JSON-lines file atomically (used to drop lines past a resumed checkpoint)."""
    write_bytes_atomic("".join(json.dumps(r) + "\n" for r in records).encode(), path)


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSON-lines file; a torn last line (killed mid-append) is dropped."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def git_commit(start: str | Path | None = None) -> str | None:
    """The git commit of the working tree holding this package (None outside git)."""
    here = Path(start) if start else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def provenance() -> dict[str, Any]:
    """Versions and commit recorded beside every run's configuration."""
    import torch

    from lottery import __version__

    return {
        "lottery_version": __version__,
        "torch_version": torch.__version__,
        "git_commit": git_commit(),
    }


def lock_holder(lock: Path) -> str | None:
    """Who holds the `flock` on file `lock` (the pid, host and command it records), or None when
    nobody does."""
    try:
        with Path(lock).open("r") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                    raise
                return f.read().strip() or "another process"
            fcntl.flock(f, fcntl.LOCK_UN)
            return None
    except FileNotFoundError:
        return None
