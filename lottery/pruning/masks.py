"""The mask engine shared by every pruning method: masks, scores, exact-count pruning, storage.

A mask maps each prunable parameter's name to a boolean tensor of its shape (True = kept).
Pruning always removes the lowest-scoring *remaining* entries, with ties broken by position, so
counts are exact, results are deterministic and masks are nested.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from lottery.core import layout
from lottery.core.storage import write_bytes_atomic
from lottery.pruning.names import GRANULARITIES, SCOPES

if TYPE_CHECKING:
    from lottery.core.optim import Optimizer

MASK_FORMAT = "lottery-mask/1"
SPARSE_FORMAT = "lottery-sparse-weights/1"


class MaskError(ValueError):
    """A mask that does not fit a model, or a pruning request that cannot be met."""


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
        return cls({n: torch.ones_like(params[n], dtype=torch.bool) for n in names})

    def names(self) -> list[str]:
        return list(self.tensors)

    def kept(self) -> int:
        return int(sum(int(t.sum()) for t in self.tensors.values()))

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
            h.update(_pack(t).tobytes())
        return h.hexdigest()[:16]

    def save(self, path: str | Path) -> None:
        """Bit-packed (1 bit per weight) .npz with names and shapes; written atomically."""
        header = {
            "format": MASK_FORMAT,
            "names": self.names(),
            "shapes": [list(t.shape) for t in self.tensors.values()],
        }
        arrays = {f"bits_{i}": _pack(t) for i, t in enumerate(self.tensors.values())}
        write_bytes_atomic(_npz_bytes(header, arrays), path)

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> Mask:
        """Read a mask saved by `save`; with `model`, check that it fits and move it to its device."""
        header, arrays = _read_npz(path, MASK_FORMAT)
        tensors = {
            n: _unpack(arrays[f"bits_{i}"], shape)
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
# Granularity: single weights, whole filters or input channels (by Ln norm), or N:M patterns.
# Scores come from lottery.pruning.criteria (higher = keep).


def parse_nm(granularity: str) -> tuple[int, int] | None:
    """(N, M) for an "N:M" granularity (at most N kept in every M consecutive inputs), else None."""
    n, sep, m = granularity.partition(":")
    if not sep:
        return None
    if not (n.isdigit() and m.isdigit() and 0 < int(n) < int(m)):
        raise MaskError(f"N:M granularity needs integers 0 < N < M, got {granularity!r}")
    return int(n), int(m)


def check_granularity(granularity: str) -> str:
    """`granularity` if it is one of GRANULARITIES or an N:M pattern such as "2:4"."""
    if granularity not in GRANULARITIES and parse_nm(granularity) is None:
        raise MaskError(
            f"unknown granularity {granularity!r}; choose from {GRANULARITIES} or N:M (e.g. 2:4)"
        )
    return granularity


def _nm_groups(t: torch.Tensor, m: int) -> torch.Tensor:
    """Groups of m consecutive entries along the input dimension (dim 1) as rows; for a conv
    weight, along the input channels at each kernel position."""
    return t.movedim(1, -1).reshape(-1, m)


def _nm_ungroup(g: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    moved = (shape[0], *shape[2:], shape[1])
    return g.reshape(moved).movedim(-1, 1)


def nm_keep(name: str, scores: torch.Tensor, keep: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """`keep` narrowed to the n highest-scoring kept entries of every group of m (ties: the
    earlier position); a group with fewer than n kept entries keeps those (nesting)."""
    if scores.dim() < 2 or scores.shape[1] % m:
        raise MaskError(
            f"{name!r} (shape {tuple(scores.shape)}) has an input dimension that is not a "
            f"multiple of {m}, so {n}:{m} cannot apply; leave it out with a rate scale of 0"
        )
    s = _nm_groups(ranked(scores).masked_fill(~keep, -math.inf), m)
    order = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :n]
    top = torch.zeros_like(s, dtype=torch.bool).scatter_(1, order, True)
    return _nm_ungroup(top, scores.shape) & keep


def unit_scores(
    scores: dict[str, torch.Tensor], granularity: str, norm: float = 2.0
) -> dict[str, torch.Tensor]:
    """Reduce per-weight scores to one score per filter (dim 0) or input channel (dim 1) by Ln norm."""
    if granularity == "weight" or parse_nm(granularity) is not None:
        return scores
    dim = {"filter": 0, "channel": 1}.get(granularity)
    if dim is None:
        raise MaskError(f"unknown granularity {granularity!r}; choose from {GRANULARITIES}")
    out = {}
    for n, s in scores.items():
        if s.dim() < 2:
            raise MaskError(f"structured pruning needs a 2-D or larger tensor, {n!r} is 1-D")
        moved = s.movedim(dim, 0).reshape(s.shape[dim], -1)
        out[n] = torch.linalg.vector_norm(ranked(moved), ord=norm, dim=1)
    return out


def _expand_units(unit_mask: torch.Tensor, shape: torch.Size, granularity: str) -> torch.Tensor:
    dim = 0 if granularity == "filter" else 1
    view = [1] * len(shape)
    view[dim] = shape[dim]
    return unit_mask.view(view).expand(shape).clone()


def _unit_keep(mask: torch.Tensor, granularity: str) -> torch.Tensor:
    """A unit is still present when any of its weights is kept."""
    dim = 0 if granularity == "filter" else 1
    return mask.movedim(dim, 0).reshape(mask.shape[dim], -1).any(dim=1)


# ---------------------------------------------------------------------------------------------
# Exact-count selection.


def common_dtype(scores: Iterable[torch.Tensor]) -> torch.dtype:
    """The floating dtype in which to rank several score tensors together: float32 promoted with
    each floating tensor's own dtype, so float64 scores (SynFlow's span hundreds of orders of
    magnitude in deep nets) are never rounded, or overflowed to inf, before they are compared."""
    dtype = torch.float32
    for s in scores:
        if s.is_floating_point():
            dtype = torch.promote_types(dtype, s.dtype)
    return dtype


def ranked(scores: torch.Tensor) -> torch.Tensor:
    """`scores` in the dtype they are ranked in (see `common_dtype`)."""
    return scores.to(common_dtype([scores]))


def _kth_smallest(flats: list[torch.Tensor], k: int) -> float:
    """The k-th smallest value (1-based) over several 1-D tensors, without concatenating them.

    A strided sample brackets the answer, one counting pass finds the rank below the bracket, and
    an exact kthvalue runs on the few candidates inside it; if the bracket misses, it falls back to
    one exact kthvalue over everything. Linear time and little memory even for ResNet-50's 25M
    weights, which is what makes global pruning fast.
    """
    n = sum(f.numel() for f in flats)
    if n <= 1 << 20:  # small models: one exact selection beats sampling
        return float(torch.kthvalue(torch.cat(flats), k).values)
    stride = n // (1 << 18)
    sample = torch.cat([f[::stride] for f in flats]).sort().values
    m = sample.numel()
    q = k / n
    slack = 4.0 / math.sqrt(m) + 1.0 / m
    lo = sample[max(0, math.floor((q - slack) * m))]
    hi = sample[min(m - 1, math.ceil((q + slack) * m))]
    below = sum(int(torch.count_nonzero(f < lo)) for f in flats)
    inside = torch.cat([f[(f >= lo) & (f <= hi)] for f in flats])
    rank = k - below
    if 1 <= rank <= inside.numel():
        return float(torch.kthvalue(inside.cpu(), rank).values)
    return float(torch.kthvalue(torch.cat(flats).cpu(), k).values)


def _select(
    scores: dict[str, torch.Tensor], keep: dict[str, torch.Tensor], n_pruned_after: int
) -> dict[str, torch.Tensor]:
    """New keep-masks with exactly `n_pruned_after` entries pruned over all given tensors.

    Entries already pruned score -inf, so they stay pruned (nesting) and count toward the total;
    entries tied at the threshold are pruned in order of position (tensor order, then flat index).
    """
    names = list(scores)
    dtype = common_dtype(scores.values())
    flats = []
    for name in names:
        f = scores[name].reshape(-1).to(dtype)
        k = keep[name].reshape(-1)
        flats.append(f if bool(k.all()) else f.masked_fill(~k, -math.inf))
    n = sum(f.numel() for f in flats)
    if n_pruned_after <= 0:
        return {name: torch.ones_like(keep[name]) for name in names}
    if n_pruned_after >= n:
        return {name: torch.zeros_like(keep[name]) for name in names}
    thr = _kth_smallest(flats, n_pruned_after)
    kept = [f >= thr for f in flats]  # ties at thr included for now
    ties = n_pruned_after - (n - sum(int(torch.count_nonzero(k)) for k in kept))
    for f, k in zip(flats, kept, strict=True):
        if ties <= 0:
            break
        tied = f == thr
        count = int(torch.count_nonzero(tied))
        k &= ~(tied & (torch.cumsum(tied, 0) <= ties)) if count > ties else ~tied
        ties -= min(count, ties)
    return {name: k.view(keep[name].shape) for name, k in zip(names, kept, strict=True)}


def prune(
    mask: Mask,
    scores: dict[str, torch.Tensor],
    *,
    fraction: float | None = None,
    sparsity: float | None = None,
    scope: str = "global",
    granularity: str = "weight",
    rate_scale: dict[str, float] | None = None,
    norm: float = 2.0,
) -> Mask:
    """Extend `mask` by pruning the lowest-scoring remaining weights (or filters/channels).

    Give either `fraction` (prune round(fraction * remaining), per layer when scope='layer') or
    `sparsity` (a target fraction pruned of each layer / of all layers; already-pruned weights
    count, and a target below the current sparsity prunes nothing). `rate_scale` multiplies the
    rate of named layers, which are then pruned on their own (the LTH prunes the output layer at
    half the rate, 0 leaves a layer unpruned); the other layers share one threshold under
    scope='global'.

    An "N:M" granularity (e.g. "2:4") is a pattern constraint: every group of M consecutive
    weights along the input dimension keeps at most N (the highest-scoring), then the count rule
    above prunes further by weight where it asks for more, so a layer's sparsity is the larger
    of the requested one and the pattern's (1 - N/M alone). A layer whose input dimension is not
    a multiple of M is an error naming it, unless its rate scale is 0 (left unpruned).
    """
    if (fraction is None) == (sparsity is None):
        raise MaskError("give exactly one of fraction or sparsity")
    rate = fraction if fraction is not None else sparsity
    check_rate(rate, "fraction" if fraction is not None else "sparsity")
    if scope not in SCOPES:
        raise MaskError(f"unknown pruning scope {scope!r}; choose from {SCOPES}")
    nm = parse_nm(check_granularity(granularity))
    rate_scale = dict(rate_scale or {})
    unknown = set(rate_scale) - set(mask.tensors)
    if unknown:
        raise MaskError(f"rate override for tensors the mask does not cover: {sorted(unknown)}")
    missing = set(mask.tensors) - set(scores)
    if missing:
        raise MaskError(f"no scores for masked tensors: {sorted(missing)}")

    units = unit_scores({n: scores[n] for n in mask.tensors}, granularity, norm)
    weightwise = granularity == "weight" or nm is not None
    if weightwise:
        keep = {n: t.to(units[n].device) for n, t in mask.tensors.items()}
    else:
        keep = {n: _unit_keep(t, granularity).to(units[n].device) for n, t in mask.tensors.items()}
    start = dict(keep)  # with N:M: the pattern's mask, which the count rule then extends
    if nm is not None:
        for n in keep:
            if rate_scale.get(n, 1.0) != 0.0:
                start[n] = nm_keep(n, units[n], keep[n], *nm)

    def pruned_after(group: list[str], r: float) -> int:
        total = sum(keep[n].numel() for n in group)
        remaining = sum(int(keep[n].sum()) for n in group)
        if fraction is not None:
            return (total - remaining) + round(r * remaining)
        return max(total - remaining, round(r * total))

    if scope == "global":
        groups = [[n for n in keep if n not in rate_scale]] + [[n] for n in rate_scale]
    else:
        groups = [[n] for n in keep]
    new_keep: dict[str, torch.Tensor] = {}
    for group in groups:
        if not group:
            continue
        r = rate * rate_scale.get(group[0], 1.0) if len(group) == 1 else rate
        check_rate(r, f"scaled rate for {group[0]!r}")
        forced = sum(start[n].numel() - int(start[n].sum()) for n in group)
        k = max(pruned_after(group, r), forced)
        new_keep.update(_select({n: units[n] for n in group}, start, k))

    out = {}
    for n, old in mask.tensors.items():
        m = new_keep[n]
        if not weightwise:
            m = _expand_units(m, old.shape, granularity) & old.to(m.device)
        out[n] = m.to(old.device)
    return Mask(out)


def check_rate(value: float, what: str = "sparsity") -> None:
    """A pruning rate or sparsity must lie in [0, 1)."""
    if not isinstance(value, int | float) or math.isnan(value) or not 0.0 <= value < 1.0:
        raise MaskError(f"{what} must be in [0, 1), got {value!r}")


def random_mask_like(mask: Mask, seed: int) -> Mask:
    """A random mask with exactly the same kept count in every layer (the random-pruning control)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for n, t in mask.tensors.items():
        kept = int(t.sum())
        order = torch.randperm(t.numel(), generator=gen)
        m = torch.zeros(t.numel(), dtype=torch.bool)
        m[order[:kept]] = True
        out[n] = m.view(t.shape).to(t.device)
    return Mask(out)


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
            arrays[f"bits_{i}"] = _pack(keep)
            arrays[f"values_{i}"] = _to_numpy(v[keep])
            entry["sparse"] = True
        else:
            arrays[f"values_{i}"] = _to_numpy(v)
            entry["sparse"] = False
        header["tensors"].append(entry)
    write_bytes_atomic(_npz_bytes(header, arrays), path)


def load_sparse(path: str | Path) -> tuple[dict[str, torch.Tensor], Mask]:
    """Inverse of save_sparse: the dense state dict (zeros where pruned) and its mask."""
    header, arrays = _read_npz(path, SPARSE_FORMAT)
    state, masks = {}, {}
    for i, e in enumerate(header["tensors"]):
        dtype = getattr(torch, e["dtype"])
        values = _from_numpy(arrays[f"values_{i}"], dtype)
        if e["sparse"]:
            keep = _unpack(arrays[f"bits_{i}"], e["shape"])
            dense = torch.zeros(e["shape"], dtype=dtype)
            dense[keep] = values
            state[e["name"]], masks[e["name"]] = dense, keep
        else:
            state[e["name"]] = values.reshape(e["shape"])
    return state, Mask(masks)


# ---------------------------------------------------------------------------------------------
# npz helpers (np.load with allow_pickle=False: nothing executable is ever read).


def _pack(t: torch.Tensor) -> np.ndarray:
    return np.packbits(t.detach().cpu().reshape(-1).numpy().astype(np.bool_))


def _unpack(bits: np.ndarray, shape: list[int]) -> torch.Tensor:
    n = math.prod(shape)
    return torch.from_numpy(np.unpackbits(bits, count=n).astype(np.bool_)).reshape(shape)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy()
    return t.numpy()


def _from_numpy(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    t = torch.from_numpy(a.copy())
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t.to(dtype)


def _npz_bytes(header: dict, arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **arrays)
    return buf.getvalue()


def _read_npz(path: str | Path, fmt: str) -> tuple[dict, dict[str, np.ndarray]]:
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
