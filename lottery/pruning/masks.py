"""The mask type shared by every pruning method, its conversions and its files.

A mask maps each prunable parameter's name to a boolean tensor of its shape (True = kept). Which
weights a prune removes is `lottery.pruning.selection`; the .npz format is
`lottery.pruning.maskfile`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from lottery.core.device import memory_bound
from lottery.core.storage import write_bytes_atomic
from lottery.pruning.maskfile import (
    MASK_FORMAT,
    SPARSE_FORMAT,
    MaskError,
    from_numpy,
    npz_bytes,
    pack_bits,
    read_npz,
    to_numpy,
    unpack_bits,
)

if TYPE_CHECKING:
    from lottery.core.optim import Optimizer


@dataclass
class Mask:
    """Boolean keep-masks by parameter name."""

    tensors: dict[str, torch.Tensor]

    @classmethod
    def ones(cls, model: nn.Module, names: Iterable[str] | None = None) -> Mask:
        """A mask that keeps everything in `names` (default: the model's prunable tensors).

        A model carrying torch.nn.utils.prune hooks (weight_orig + weight_mask) is refused: its
        prunable weights are not parameters any more, so the mask would silently be empty.
        """
        from lottery.models.registry import prunable_names

        hooked = [n for n, _ in model.named_buffers() if n.endswith("_mask")]
        if hooked:
            raise MaskError(
                f"model carries torch.nn.utils.prune hooks ({hooked[0]}): take its mask with "
                "lottery.pruning.masks.from_torch_prune(model), or make the pruning permanent with "
                "torch.nn.utils.prune.remove first"
            )
        params = dict(model.named_parameters())
        names = list(names) if names is not None else prunable_names(model)
        missing = [n for n in names if n not in params]
        if missing:
            raise MaskError(f"model has no parameter named {missing[0]!r}")
        with memory_bound(params[n] for n in names):
            return cls({n: torch.ones_like(params[n], dtype=torch.bool) for n in names})

    def names(self) -> list[str]:
        return list(self.tensors)

    def kept(self) -> int:
        """Weights kept, summed where the mask lives (one host sync, not one per tensor)."""
        return int(sum(t.sum() for t in self.tensors.values()))

    def total(self) -> int:
        return int(sum(t.numel() for t in self.tensors.values()))

    def density(self) -> float:
        """Fraction of prunable weights kept."""
        return self.kept() / max(1, self.total())

    def sparsity(self) -> float:
        return 1.0 - self.density()

    def layer_density(self) -> dict[str, float]:
        return {n: float(t.float().mean()) for n, t in self.tensors.items()}

    def layer_counts(self) -> dict[str, tuple[int, int]]:
        """(kept, total) per tensor."""
        return {n: (int(t.sum()), t.numel()) for n, t in self.tensors.items()}

    def to(self, device: str | torch.device) -> Mask:
        return Mask({n: t.to(device) for n, t in self.tensors.items()})

    def cpu(self) -> Mask:
        return self.to("cpu")

    def clone(self) -> Mask:
        return Mask({n: t.clone() for n, t in self.tensors.items()})

    def _combine(self, other: Mask, op: Callable) -> Mask:
        if self.names() != other.names():
            raise MaskError("masks cover different tensors and cannot be combined")
        return Mask({n: op(t, other.tensors[n].to(t.device)) for n, t in self.tensors.items()})

    def __and__(self, other: Mask) -> Mask:
        return self._combine(other, torch.logical_and)

    def __or__(self, other: Mask) -> Mask:
        return self._combine(other, torch.logical_or)

    def equal(self, other: Mask) -> bool:
        """Same tensors, same shapes, same bits."""
        return self.names() == other.names() and all(
            torch.equal(t.cpu(), other.tensors[n].cpu()) for n, t in self.tensors.items()
        )

    def is_subset_of(self, other: Mask) -> bool:
        """True when every weight kept here is also kept in `other` (nesting)."""
        return all(
            not bool((t.cpu() & ~other.tensors[n].cpu()).any()) for n, t in self.tensors.items()
        )

    def check_fits(self, model: nn.Module) -> None:
        """Raise MaskError naming the first tensor that the model lacks or shapes differently."""
        params = dict(model.named_parameters())
        for n, t in self.tensors.items():
            if n not in params:
                raise MaskError(f"mask tensor {n!r} does not exist in the model")
            if tuple(params[n].shape) != tuple(t.shape):
                raise MaskError(
                    f"mask tensor {n!r} has shape {tuple(t.shape)} but the model's parameter "
                    f"has shape {tuple(params[n].shape)}"
                )

    @torch.no_grad()
    def apply_(
        self, model: nn.Module, optimizer: torch.optim.Optimizer | Optimizer | None = None
    ) -> None:
        """Zero pruned weights in place and, given an optimizer, their momentum/Adam moments too."""
        self.check_fits(model)
        params = dict(model.named_parameters())
        for n, t in self.tensors.items():
            p = params[n]
            p.mul_(t.to(p.device, p.dtype))
            if optimizer is not None:
                for v in optimizer.state.get(p, {}).values():
                    if torch.is_tensor(v) and v.shape == p.shape:
                        v.mul_(t.to(v.device, v.dtype))

    def keep_(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> torch.utils.hooks.RemovableHandle:
        """Keep pruned weights at zero in your own training loop: `mask.keep_(model, optimizer)`
        applies the mask now and again after every `optimizer.step()` (a step post-hook, one fused
        multiply), so momentum, Adam moments and weight decay cannot revive pruned weights.
        Returns the hook's handle (`.remove()` stops it)."""
        self.apply_(model, optimizer)
        params = dict(model.named_parameters())
        kept = [params[n] for n in self.names()]
        factors = [
            t.to(p.device, p.dtype) for t, p in zip(self.tensors.values(), kept, strict=True)
        ]

        def reapply(*_: object) -> None:
            with torch.no_grad():
                torch._foreach_mul_(kept, factors)

        return optimizer.register_step_post_hook(reapply)

    def digest(self) -> str:
        """Short hash of the names, shapes and bit-packed content: part of a run's identity."""
        h = hashlib.sha256()
        for n, t in self.tensors.items():
            h.update(json.dumps([n, list(t.shape)]).encode())
            h.update(pack_bits(t).tobytes())
        return h.hexdigest()[:16]

    def save(self, path: str | Path) -> None:
        """Bit-packed (1 bit per weight) .npz with names and shapes; written atomically."""
        header = {
            "format": MASK_FORMAT,
            "names": self.names(),
            "shapes": [list(t.shape) for t in self.tensors.values()],
        }
        arrays = {f"bits_{i}": pack_bits(t) for i, t in enumerate(self.tensors.values())}
        write_bytes_atomic(npz_bytes(header, arrays), path)

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> Mask:
        """Read a mask saved by `save`; with `model`, check that it fits and move it to its device."""
        header, arrays = read_npz(path, MASK_FORMAT)
        tensors = {
            n: unpack_bits(arrays[f"bits_{i}"], shape)
            for i, (n, shape) in enumerate(zip(header["names"], header["shapes"], strict=True))
        }
        mask = cls(tensors)
        if model is not None:
            mask.check_fits(model)
            device = next(model.parameters()).device
            mask = mask.to(device)
        return mask

    def state(self) -> dict[str, torch.Tensor]:
        """Plain dict for checkpoints."""
        return {n: t.cpu() for n, t in self.tensors.items()}


# ---------------------------------------------------------------------------------------------
# Interop with torch.nn.utils.prune and deployment.


def from_torch_prune(model: nn.Module) -> Mask:
    """Read the `<name>_mask` buffers that torch.nn.utils.prune leaves on a model."""
    tensors = {}
    for mod_name, module in model.named_modules():
        for buf_name, buf in module.named_buffers(recurse=False):
            if buf_name.endswith("_mask"):
                param = buf_name[: -len("_mask")]
                full = f"{mod_name}.{param}" if mod_name else param
                tensors[full] = buf.detach().bool().clone()
    if not tensors:
        raise MaskError("model carries no torch.nn.utils.prune masks (no *_mask buffers)")
    return Mask(tensors)


def to_torch_prune(model: nn.Module, mask: Mask) -> nn.Module:
    """Attach `mask` with torch.nn.utils.prune.custom_from_mask, for tools that expect that form."""
    from torch.nn.utils import prune as tprune

    mask.check_fits(model)
    modules = dict(model.named_modules())
    for n, t in mask.tensors.items():
        mod_name, _, param = n.rpartition(".")
        tprune.custom_from_mask(modules[mod_name], param, t.to(next(model.parameters()).device))
    return model


@torch.no_grad()
def baked_state_dict(model: nn.Module, mask: Mask) -> dict[str, torch.Tensor]:
    """A plain state dict with pruned weights set to zero, for deployment."""
    mask.check_fits(model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for n, t in mask.tensors.items():
        state[n].mul_(t.to(state[n].device, state[n].dtype))
    return state


def save_sparse(state: dict[str, torch.Tensor], mask: Mask, path: str | Path) -> None:
    """Store weights compactly: masked tensors as packed keep-bits plus surviving values.

    Loading gives back exactly the masked weights; unmasked tensors (biases, BN) are stored dense.
    """
    header: dict = {"format": SPARSE_FORMAT, "tensors": []}
    arrays: dict[str, np.ndarray] = {}
    for i, (n, v) in enumerate(state.items()):
        v = v.detach().cpu()
        entry = {"name": n, "shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
        if n in mask.tensors:
            keep = mask.tensors[n].cpu()
            arrays[f"bits_{i}"] = pack_bits(keep)
            arrays[f"values_{i}"] = to_numpy(v[keep])
            entry["sparse"] = True
        else:
            arrays[f"values_{i}"] = to_numpy(v)
            entry["sparse"] = False
        header["tensors"].append(entry)
    write_bytes_atomic(npz_bytes(header, arrays), path)


def load_sparse(path: str | Path) -> tuple[dict[str, torch.Tensor], Mask]:
    """Inverse of save_sparse: the dense state dict (zeros where pruned) and its mask."""
    header, arrays = read_npz(path, SPARSE_FORMAT)
    state, masks = {}, {}
    for i, e in enumerate(header["tensors"]):
        dtype = getattr(torch, e["dtype"])
        values = from_numpy(arrays[f"values_{i}"], dtype)
        if e["sparse"]:
            keep = unpack_bits(arrays[f"bits_{i}"], e["shape"])
            dense = torch.zeros(e["shape"], dtype=dtype)
            dense[keep] = values
            state[e["name"]], masks[e["name"]] = dense, keep
        else:
            state[e["name"]] = values.reshape(e["shape"])
    return state, Mask(masks)
