"""The file format of masks and sparse weights: bit-packed booleans and values in an .npz archive
with a JSON header, read with `allow_pickle=False` so a file never runs code, and checked against
its format name so a file of another kind is named as such."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import torch

from lottery.core import layout

MASK_FORMAT = "lottery-mask/1"
SPARSE_FORMAT = "lottery-sparse-weights/1"


class MaskError(ValueError):
    """A mask that does not fit a model, or a pruning request that cannot be met."""


def pack_bits(t: torch.Tensor) -> np.ndarray:
    return np.packbits(t.detach().cpu().reshape(-1).numpy().astype(np.bool_))


def unpack_bits(bits: np.ndarray, shape: list[int]) -> torch.Tensor:
    n = math.prod(shape)
    return torch.from_numpy(np.unpackbits(bits, count=n).astype(np.bool_)).reshape(shape)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy()
    return t.numpy()


def from_numpy(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    t = torch.from_numpy(a.copy())
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t.to(dtype)


def npz_bytes(header: dict, arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **arrays)
    return buf.getvalue()


def read_npz(path: str | Path, fmt: str) -> tuple[dict, dict[str, np.ndarray]]:
    path = Path(path)
    try:
        with path.open("rb") as f:
            archive = f.read(4) == b"PK\x03\x04"  # what np.savez writes
    except FileNotFoundError:
        raise MaskError(f"{path} does not exist") from None
    except OSError as e:
        raise MaskError(f"cannot read {path}: {e.strerror or e}") from None
    if not archive:
        raise MaskError(f"{path} is not a {fmt} file (lottery writes those as .npz archives)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        header = json.loads(arrays.pop("header").tobytes())
    except Exception as e:
        run = path.parent
        redo = (
            f". It belongs to a run: remove the run folder {run} and rerun the command to redo "
            "it exactly"
            if (run / layout.CONFIG).exists()
            else ""
        )
        raise MaskError(f"cannot read {path}: truncated or corrupt {fmt} file ({e}){redo}") from e
    if header.get("format") != fmt:
        raise MaskError(f"{path} is not a {fmt} file (format {header.get('format')!r})")
    return header, arrays
