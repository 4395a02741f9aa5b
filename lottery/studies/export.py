"""Export a pruned network for inference by one route (compact, sparse, 2:4, dense), save it, load it.

A pruned dense tensor runs no faster: speed needs structure (compaction: pruned filters physically
removed, DepGraph's problem, Fang et al., CVPR 2023) or sparse kernels (CSR for unstructured masks,
NVIDIA's semi-structured 2:4 on Ampere and later, Mishra et al. 2021, arXiv 2104.08378). Each route
is one function here plus one line in `lottery.studies.names.ROUTES`. A saved export is a JSON spec of its layers plus a state dict, loaded
with weights_only=True and rebuilt by this module, so loading never runs pickled code.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lottery.core.storage import write_bytes_atomic
from lottery.models.registry import build_model
from lottery.pruning.masks import Mask
from lottery.studies.names import ROUTES

EXPORT_FORMAT = "lottery-export/1"


class ExportError(ValueError):
    """A network that a route cannot export (the message names the layer and the reason)."""


@dataclass(frozen=True)
class Architecture:
    """What `build_model` needs to rebuild a run's network (its registry name and data shape)."""

    model: str
    input_shape: tuple[int, int, int]
    num_classes: int
    width: int = 1

    def build(self) -> nn.Module:
        return build_model(self.model, self.input_shape, self.num_classes, width=self.width)

    @classmethod
    def of_run(cls, record: dict) -> Architecture:
        """The network a run's config.json record describes."""
        data, cfg = record["data"], record["config"]
        return cls(
            cfg["model"], tuple(data["input_shape"]), data["num_classes"], cfg.get("width", 1)
        )


@dataclass
class Exported:
    """An exported network: its route, the module, and the architecture it was built on (if any)."""

    route: str
    module: nn.Module
    base: Architecture | None  # None: the module is a plain chain of the layers in its spec


# ---------------------------------------------------------------------------------------------
# Layers the exports are made of.


class Offset(nn.Module):
    """Adds a fixed tensor: the exact contribution of removed constant channels to the next conv."""

    def __init__(self, shape: list[int]) -> None:
        super().__init__()
        self.register_buffer("value", torch.zeros(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.value


@contextlib.contextmanager
def quiet_sparse() -> Iterator[None]:
    """Silence torch's notice that CSR tensors are a beta feature, which it prints on every export
    and speed run; our CSR layers are tested against their dense counterparts."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
        yield


class SparseLinear(nn.Module):
    """A linear layer whose weight is a torch.sparse CSR matrix with int32 indices."""

    def __init__(self, in_features: int, out_features: int, nnz: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("crow", torch.zeros(out_features + 1, dtype=torch.int32))
        self.register_buffer("col", torch.zeros(nnz, dtype=torch.int32))
        self.register_buffer("values", torch.zeros(nnz))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.rebuild()

    @classmethod
    def from_dense(cls, layer: nn.Linear) -> SparseLinear:
        with quiet_sparse():
            csr = layer.weight.detach().to_sparse_csr()
        out = cls(
            layer.in_features, layer.out_features, csr.values().numel(), layer.bias is not None
        )
        out.crow, out.col = csr.crow_indices().int(), csr.col_indices().int()
        out.values = csr.values().clone()
        if layer.bias is not None:
            out.bias = nn.Parameter(layer.bias.detach().clone())
        out.rebuild()
        return out

    def rebuild(self) -> None:
        """Assemble the CSR weight from its index and value buffers (after loading or moving)."""
        shape = (self.out_features, self.in_features)
        with quiet_sparse():
            self.weight = torch.sparse_csr_tensor(
                self.crow, self.col, self.values, shape, check_invariants=False
            )

    def _apply(self, fn: Callable, recurse: bool = True) -> SparseLinear:
        super()._apply(fn, recurse)
        self.rebuild()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.sparse.mm(self.weight, x.t()).t()
        return y if self.bias is None else y + self.bias


class SemiSparseLinear(nn.Module):
    """A half-precision linear layer whose 2:4 weight runs on sparse tensor cores (CUDA, sm >= 80).

    The state dict holds the dense 2:4-masked weight; `rebuild` compresses it on the GPU.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("dense", torch.zeros(out_features, in_features, dtype=torch.half))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=torch.half)) if bias else None
        self.weight: torch.Tensor | None = None

    def rebuild(self) -> None:
        check_semi_structured_device(self.dense.device)
        self.weight = torch.sparse.to_sparse_semi_structured(self.dense)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.half(), self.weight, self.bias).float()


# Constructor arguments of every layer type an export may hold (what the saved spec records).
_LAYERS: dict[str, tuple[type[nn.Module], tuple[str, ...]]] = {
    "Conv2d": (
        nn.Conv2d,
        ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"),
    ),
    "Linear": (nn.Linear, ("in_features", "out_features")),
    "BatchNorm1d": (nn.BatchNorm1d, ("num_features", "eps", "momentum", "affine")),
    "BatchNorm2d": (nn.BatchNorm2d, ("num_features", "eps", "momentum", "affine")),
    "ReLU": (nn.ReLU, ()),
    "MaxPool2d": (nn.MaxPool2d, ("kernel_size", "stride", "padding", "dilation", "ceil_mode")),
    "AvgPool2d": (
        nn.AvgPool2d,
        ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"),
    ),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, ("output_size",)),
    "Flatten": (nn.Flatten, ("start_dim", "end_dim")),
    "Dropout": (nn.Dropout, ("p",)),
    "Identity": (nn.Identity, ()),
    "Offset": (Offset, ()),
    "SparseLinear": (SparseLinear, ("in_features", "out_features")),
    "SemiSparseLinear": (SemiSparseLinear, ("in_features", "out_features")),
}


def _layer_spec(module: nn.Module) -> dict:
    """A JSON description of one layer from which `_layer_from_spec` rebuilds it."""
    name = type(module).__name__
    if name not in _LAYERS or type(module) is not _LAYERS[name][0]:
        raise ExportError(f"cannot save a layer of type {name}")
    args = {a: getattr(module, a) for a in _LAYERS[name][1]}
    if hasattr(module, "bias") and not isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
        args["bias"] = module.bias is not None
    if isinstance(module, Offset):
        args["shape"] = list(module.value.shape)
    if isinstance(module, SparseLinear):
        args["nnz"] = module.col.numel()
    if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
        raise ExportError(f"cannot save a convolution with padding_mode={module.padding_mode!r}")
    return {"type": name, "args": args}


def _layer_from_spec(spec: dict) -> nn.Module:
    if spec.get("type") not in _LAYERS:
        raise ExportError(f"unknown layer type {spec.get('type')!r} in an export file")
    return _LAYERS[spec["type"]][0](**spec["args"])


def stored_numbers(module: nn.Module) -> int:
    """Numbers a network computes with: its parameters plus the values of its CSR weights."""
    count = sum(p.numel() for p in module.parameters())
    return count + sum(m.values.numel() for m in module.modules() if isinstance(m, SparseLinear))


def _leaves(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    return ((n, m) for n, m in model.named_modules() if n and not list(m.children()))


# ---------------------------------------------------------------------------------------------
# Routes.


@torch.no_grad()
def export_dense(model: nn.Module, mask: Mask | None, arch: Architecture) -> Exported:
    """The masked network as it is: the baseline every other route is timed against."""
    out = _masked_copy(model, mask)
    return Exported("dense", out, arch)


@torch.no_grad()
def export_sparse(model: nn.Module, mask: Mask | None, arch: Architecture) -> Exported:
    """Pruned linear layers as CSR matrices; convolutions stay dense (torch has no sparse conv)."""
    out = _masked_copy(model, mask)
    pruned = {n for n, t in (mask.tensors.items() if mask else ()) if not bool(t.all())}
    swapped = 0
    for name, layer in list(_leaves(out)):
        if isinstance(layer, nn.Linear) and f"{name}.weight" in pruned:
            out.set_submodule(name, SparseLinear.from_dense(layer))
            swapped += 1
    if not swapped:
        raise ExportError("the sparse route found no pruned linear layer to store as CSR")
    return Exported("sparse", out, arch)


def is_two_four(keep: torch.Tensor) -> bool:
    """Whether a linear mask keeps at most 2 of every 4 consecutive inputs (NVIDIA's 2:4 pattern)."""
    if keep.dim() != 2 or keep.shape[1] % 4:
        return False
    return bool((keep.reshape(keep.shape[0], -1, 4).sum(-1) <= 2).all())


def check_semi_structured_device(device: str | torch.device) -> None:
    """2:4 kernels need a CUDA GPU of compute capability >= 8.0 (Ampere or later)."""
    device = torch.device(device)
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 0):
        raise ExportError(
            "the 2:4 route needs a CUDA GPU with compute capability >= 8.0 (Ampere or later: "
            f"semi-structured sparse tensor cores); {device} has none"
        )


@torch.no_grad()
def export_two_four(model: nn.Module, mask: Mask | None, arch: Architecture) -> Exported:
    """Linear layers whose masks are 2:4 along the input, as fp16 semi-structured sparse weights."""
    check_semi_structured_device(next(model.parameters()).device)
    out = _masked_copy(model, mask)
    swapped = 0
    for name, layer in list(_leaves(out)):
        keep = mask.tensors.get(f"{name}.weight") if mask else None
        if isinstance(layer, nn.Linear) and keep is not None and is_two_four(keep):
            semi = SemiSparseLinear(layer.in_features, layer.out_features, layer.bias is not None)
            semi.to(layer.weight.device)
            semi.dense.copy_(layer.weight)
            if layer.bias is not None:
                semi.bias.copy_(layer.bias)
            try:
                semi.rebuild()
            except RuntimeError:  # shapes the 2:4 kernels do not take stay dense
                continue
            out.set_submodule(name, semi)
            swapped += 1
    if not swapped:
        raise ExportError("no linear layer's mask keeps at most 2 of every 4 consecutive inputs")
    return Exported("2:4", out, arch)


@torch.no_grad()
def export_compact(model: nn.Module, mask: Mask | None, arch: Architecture) -> Exported:
    """A smaller dense chain without the pruned filters, channels and their BatchNorm entries.

    A unit goes when all its weights are pruned (it then emits a constant, whose exact effect on
    the next layer is folded into that layer's bias, or into an `Offset` map where zero padding
    makes it vary or the layer has no bias) or when the next layer reads none of it. Parameters
    are exactly the kept weights, biases and BatchNorm entries; outputs equal the masked net's.
    """
    net = _masked_copy(model, mask).eval()
    chain = _chain(net)
    device = next(net.parameters()).device
    given = mask.tensors if mask is not None else {}
    keep_masks = {n: given[f"{n}.weight"].to(device) for n, _ in chain if f"{n}.weight" in given}
    inputs = _trace_inputs(net, chain, arch.input_shape)
    weighted = [i for i, (_, m) in enumerate(chain) if isinstance(m, nn.Conv2d | nn.Linear)]
    removed = _removed_units(chain, weighted, keep_masks)
    layers: list[tuple[str, nn.Module]] = []
    keep: torch.Tensor | None = None  # surviving channels (or features) of the current activation
    for i, (name, module) in enumerate(chain):
        short = name.replace(".", "_")
        if isinstance(module, nn.Conv2d | nn.Linear):
            out_keep = ~removed[i]
            layer, offset = _shrink(module, keep, out_keep, inputs[i])
            layers.append((short, layer))
            if offset is not None:
                layers.append((f"{short}_offset", offset))
            keep = out_keep
        elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            layers.append((short, _shrink_batchnorm(module, keep)))
        elif isinstance(module, nn.Flatten):
            if keep is not None and inputs[i].dim() > 2:
                keep = keep.repeat_interleave(inputs[i][0, 0].numel())
            layers.append((short, copy.deepcopy(module)))
        else:
            layers.append((short, copy.deepcopy(module)))
    return Exported("compact", nn.Sequential(OrderedDict(layers)).eval(), None)


def export(route: str, model: nn.Module, mask: Mask | None, arch: Architecture) -> Exported:
    """Export `model` (masked by `mask`) by the named route."""
    if route not in ROUTES:
        raise ExportError(f"unknown export route {route!r}; choose from {', '.join(ROUTES)}")
    return ROUTES[route](model, mask, arch)


# ---------------------------------------------------------------------------------------------
# Compaction helpers.

_ELEMENTWISE = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Dropout, nn.Identity)


def _chain(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's layers in order when it is a (nested) nn.Sequential of supported layers."""
    out: list[tuple[str, nn.Module]] = []

    def walk(prefix: str, module: nn.Module) -> None:
        if type(module) is nn.Sequential:
            for name, child in module.named_children():
                walk(f"{prefix}.{name}" if prefix else name, child)
        elif list(module.children()):
            raise ExportError(_coupling_message(model, prefix, module))
        elif isinstance(module, nn.Conv2d) and (
            module.groups != 1 or module.padding_mode != "zeros"
        ):
            raise ExportError(
                f"{prefix}: compaction supports plain convolutions (groups=1, zero padding)"
            )
        elif not isinstance(
            module,
            (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.Flatten) + _ELEMENTWISE,
        ):
            raise ExportError(
                f"{prefix or 'the model'}: compaction does not know {type(module).__name__} layers"
            )
        else:
            out.append((prefix, module))

    walk("", model)
    return out


def _coupling_message(model: nn.Module, prefix: str, module: nn.Module) -> str:
    """Why a container with its own forward cannot be compacted, naming a residual coupling."""
    where = prefix or "the model"
    for name, block in module.named_modules():
        skip = next((s for s in ("shortcut", "downsample") if hasattr(block, s)), None)
        if skip is None:
            continue
        full = ".".join(p for p in (prefix, name) if p)
        convs = [
            n
            for n, m in block.named_modules()
            if isinstance(m, nn.Conv2d) and not n.startswith(skip)
        ]
        conv = ".".join(p for p in (full, convs[-1]) if p) if convs else full
        return (
            f"{conv} output channels are tied to {full or 'the block'}'s {skip} by the residual "
            "sum; compaction of residual nets is not supported (export --as sparse or dense)"
        )
    return (
        f"{where} ({type(module).__name__}) runs its own forward, so its channels do not form a "
        "plain chain; compaction supports sequential nets (LeNet, Conv-2/4/6, VGG)"
    )


def _trace_inputs(
    net: nn.Module, chain: list[tuple[str, nn.Module]], input_shape: tuple[int, ...]
) -> list[torch.Tensor]:
    """Each chain layer's input for an all-zero example: removed units emit their constants here."""
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_pre_hook(lambda _, a: seen.append(a[0].clone())) for _, m in chain]
    try:
        device = next(net.parameters()).device
        net(torch.zeros((1, *input_shape), device=device))
    finally:
        for h in hooks:
            h.remove()
    return seen


def _removed_units(
    chain: list[tuple[str, nn.Module]], weighted: list[int], keep: dict[str, torch.Tensor]
) -> dict[int, torch.Tensor]:
    """Per weight layer, which output units go: all their weights pruned, or unread by the next."""
    for name, _ in (chain[i] for i in weighted):
        if name in keep and not bool(keep[name].any()):
            raise ExportError(
                f"every weight of {name} is pruned, so the network's output no longer depends on "
                "its input; refusing to compact a fully pruned layer"
            )
    removed = {}
    for j, i in enumerate(weighted):
        name, layer = chain[i]
        k = keep.get(name, torch.ones_like(layer.weight, dtype=torch.bool))
        gone = ~k.flatten(1).any(1)
        if j + 1 == len(weighted):
            removed[i] = torch.zeros_like(gone)  # the logits all stay
            continue
        next_name, next_layer = chain[weighted[j + 1]]
        read = keep.get(next_name, torch.ones_like(next_layer.weight, dtype=torch.bool))
        read = read.transpose(0, 1).flatten(1).any(1)
        if read.numel() % gone.numel():
            raise ExportError(f"cannot match {name}'s outputs to {next_name}'s inputs")
        gone = gone | ~read.view(gone.numel(), -1).any(1)
        if bool(gone.all()):
            raise ExportError(
                f"every unit of {name} is pruned or unread by {next_name}, so the network's "
                "output no longer depends on its input; refusing to compact a fully pruned layer"
            )
        removed[i] = gone
    return removed


def _shrink(
    layer: nn.Module, keep_in: torch.Tensor | None, keep_out: torch.Tensor, example: torch.Tensor
) -> tuple[nn.Module, Offset | None]:
    """The layer restricted to kept inputs and outputs, plus the exact effect of removed inputs."""
    w = layer.weight[keep_out]
    bias = None if layer.bias is None else layer.bias[keep_out].clone()
    contribution = None
    if keep_in is not None and not bool(keep_in.all()):
        gone = (~keep_in).view(1, -1, *([1] * (example.dim() - 2))).to(example.dtype)
        if isinstance(layer, nn.Conv2d):
            contribution = F.conv2d(
                example * gone, w, None, layer.stride, layer.padding, layer.dilation
            )[0]
        else:
            contribution = F.linear(example * gone, w)[0]
        w = w[:, keep_in]
    if isinstance(layer, nn.Conv2d):
        new: nn.Module = nn.Conv2d(
            w.shape[1], w.shape[0], layer.kernel_size, layer.stride, layer.padding,
            layer.dilation, bias=bias is not None,
        )  # fmt: skip
    else:
        new = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    new = new.to(w.device, w.dtype)
    new.weight.copy_(w)
    if bias is not None:
        new.bias.copy_(bias)
    offset = None
    if contribution is not None and bool(contribution.any()):
        flat = contribution.flatten(1) if contribution.dim() > 1 else contribution[:, None]
        if bias is not None and bool((flat == flat[:, :1]).all()):
            new.bias.add_(flat[:, 0])  # a uniform contribution is a bias
        else:  # padded borders (or no bias to fold into): add the exact map
            offset = Offset(list(contribution.shape)).to(w.device)
            offset.value.copy_(contribution)
    return new, offset


def _shrink_batchnorm(bn: nn.Module, keep: torch.Tensor | None) -> nn.Module:
    out = copy.deepcopy(bn)
    if keep is None or bool(keep.all()):
        return out
    out.num_features = int(keep.sum())
    for name in ("weight", "bias"):
        if getattr(bn, name) is not None:
            setattr(out, name, nn.Parameter(getattr(bn, name)[keep].clone()))
    for name in ("running_mean", "running_var"):
        if getattr(bn, name) is not None:
            setattr(out, name, getattr(bn, name)[keep].clone())
    return out


def _masked_copy(model: nn.Module, mask: Mask | None) -> nn.Module:
    out = copy.deepcopy(model).eval()
    if mask is not None:
        mask.apply_(out)
    return out


# ---------------------------------------------------------------------------------------------
# Files.


def save_export(exported: Exported, path: str | Path, info: dict | None = None) -> int:
    """Write the export (spec as JSON text + state dict) atomically; returns the bytes written."""
    spec = {
        "format": EXPORT_FORMAT,
        "route": exported.route,
        "base": None if exported.base is None else asdict(exported.base),
        "layers": {
            n: _layer_spec(m)
            for n, m in _leaves(exported.module)
            if exported.base is None or isinstance(m, SparseLinear | SemiSparseLinear)
        },
        "info": info or {},
    }
    state = {k: v.detach().cpu() for k, v in exported.module.state_dict().items()}
    buf = io.BytesIO()
    torch.save({"spec": json.dumps(spec), "state": state}, buf)
    write_bytes_atomic(buf.getvalue(), path)
    return buf.tell()


def read_spec(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The spec and state of an export file, read without executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"export file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        spec = json.loads(payload["spec"])
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise ExportError(f"cannot read {path}: truncated, corrupt or not a lottery export") from e
    if spec.get("format") != EXPORT_FORMAT:
        raise ExportError(f"{path} is not a {EXPORT_FORMAT} file")
    return spec, payload["state"]


def load_export(path: str | Path, device: str | torch.device = "cpu") -> Exported:
    """Rebuild a saved export on `device`, in eval mode, ready to run."""
    spec, state = read_spec(path)
    layers = {n: _layer_from_spec(s) for n, s in spec["layers"].items()}
    base = None if spec["base"] is None else Architecture(**spec["base"])
    if base is None:
        module: nn.Module = nn.Sequential(OrderedDict(layers))
    else:
        base = Architecture(base.model, tuple(base.input_shape), base.num_classes, base.width)
        module = base.build()
        for name, layer in layers.items():
            module.set_submodule(name, layer)
    if spec["route"] == "2:4":
        check_semi_structured_device(device)
    module.load_state_dict(state, strict=True)
    module.to(device).eval()
    for m in module.modules():
        if isinstance(m, SparseLinear | SemiSparseLinear):
            m.rebuild()
    return Exported(spec["route"], module, base)
