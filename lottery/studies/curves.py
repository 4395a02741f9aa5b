"""One-shot pruning curves of a trained model, and what pruning buys on disk.

Each method prunes the trained weights once to every sparsity with the shared mask engine and
evaluates the result without retraining: layer-wise unstructured magnitude (L1), layer-wise
structured filters by their Ln norm, global unstructured magnitude, and layer-wise random pruning
as the control (torch.nn.utils.prune's conventions; on a trained ResNeXt-50 such curves hold to
~40-50%, ~5-10% and ~80% sparsity respectively). Any other method is named
SCOPE/GRANULARITY/CRITERION (e.g. global/2:4/snip): every criterion × granularity × scope.
The output layer stays dense by default: one of its filters is a whole class (OpenLTH leaves it
unpruned too).
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from lottery.core import layout
from lottery.core.config import ConfigError, TrainConfig
from lottery.core.storage import load_checkpoint, write_json
from lottery.datasets.loading import Splits
from lottery.models.registry import output_layer_name
from lottery.pruning.checks import keep_classes
from lottery.pruning.criteria import Context, check, score, training_batches
from lottery.pruning.maskfile import MaskError
from lottery.pruning.masks import Mask, baked_state_dict, load_sparse, save_sparse
from lottery.pruning.names import SCOPES
from lottery.pruning.selection import check_granularity, check_rate, prune
from lottery.studies.names import CURVE_SPARSITIES, TICKET_CONTEXT, Method, methods
from lottery.studies.rewind_sweep import train_dense
from lottery.training.runfolder import hold, recorded_config
from lottery.training.setup import load_data, make_model
from lottery.training.stacked import evaluate


def resolve_method(name: str, norm: float = 2.0) -> Method:
    """A method of `methods`, or any SCOPE/GRANULARITY/CRITERION such as global/2:4/snip."""
    table = methods(norm)
    if name in table:
        return table[name]
    parts = name.split("/")
    if len(parts) != 3 or parts[0] not in SCOPES:
        raise ConfigError(
            f"unknown pruning method {name!r}; choose from {list(table)} or "
            f"SCOPE/GRANULARITY/CRITERION with SCOPE in {SCOPES}"
        )
    check_granularity(parts[1])
    check(parts[2], TICKET_CONTEXT)
    return Method(name, *parts)


def one_shot_mask(
    model: nn.Module,
    method: Method,
    sparsity: float,
    *,
    seed: int = 0,
    norm: float = 2.0,
    prune_output: bool = False,
    context: Context | None = None,
) -> Mask:
    """Prune `model`'s current weights once to `sparsity` with `method`; `context` supplies what
    criteria beyond the weights need (θ0, batches, input shape)."""
    mask = Mask.ones(model)
    params = dict(model.named_parameters())
    weights = {n: params[n].detach() for n in mask.names()}
    ctx = Context(weights, model=model, sparsity=sparsity, scope=method.scope)
    if context is not None:
        ctx = dataclasses.replace(
            context, weights=weights, model=model, sparsity=sparsity, scope=method.scope
        )
    scores = score(method.criterion, ctx, seed=seed)
    out = output_layer_name(model)
    rate_scale = {out: 0.0} if out in mask.tensors and not prune_output else {}
    rate_scale = keep_classes(rate_scale, model, method.granularity)
    return prune(
        mask,
        scores,
        sparsity=sparsity,
        scope=method.scope,
        granularity=method.granularity,
        rate_scale=rate_scale,
        norm=norm,
    )


def pruning_curve(
    model: nn.Module,
    data: Splits,
    *,
    names: list[str] | None = None,
    sparsities: tuple[float, ...] = CURVE_SPARSITIES,
    seed: int = 0,
    norm: float = 2.0,
    prune_output: bool = False,
    context: Context | None = None,
) -> list[dict]:
    """Test loss and accuracy of `model` pruned one-shot by each method at each sparsity.

    Rows carry the change relative to the dense model (sparsity 0 reproduces it exactly) and
    the actual sparsity over all prunable weights (the output layer, kept dense, lowers it).
    """
    table = {n: resolve_method(n, norm) for n in names or methods(norm)}
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    dense_loss, dense_acc = evaluate(model, data.test_x, data.test_y)
    rows = []
    try:
        for name in table:
            for s in sparsities:
                model.load_state_dict(trained)
                mask = one_shot_mask(
                    model,
                    table[name],
                    s,
                    seed=seed,
                    norm=norm,
                    prune_output=prune_output,
                    context=context,
                )
                mask.apply_(model)
                loss, acc = evaluate(model, data.test_x, data.test_y)
                rows.append(
                    {
                        "method": name,
                        "sparsity": s,
                        "actual_sparsity": mask.sparsity(),
                        "test_loss": loss,
                        "test_accuracy": acc,
                        "loss_change": loss - dense_loss,
                        "accuracy_change": acc - dense_acc,
                    }
                )
    finally:
        model.load_state_dict(trained)
    return rows


@dataclass(frozen=True)
class Size:
    """Bytes on disk of one pruned model in three forms."""

    sparsity: float
    actual_sparsity: float
    dense_bytes: int
    gzip_bytes: int
    sparse_bytes: int


def state_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """A state dict as torch.save writes it."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def sizes_on_disk(
    model: nn.Module,
    *,
    method: str = "global-l1",
    sparsities: tuple[float, ...] = CURVE_SPARSITIES,
    seed: int = 0,
    norm: float = 2.0,
    prune_output: bool = False,
    context: Context | None = None,
) -> list[Size]:
    """For each sparsity: bytes of the pruned dense state dict, of its gzip, and of save_sparse."""
    chosen = resolve_method(method, norm)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / layout.WEIGHTS
        for s in sparsities:
            mask = one_shot_mask(
                model,
                chosen,
                s,
                seed=seed,
                norm=norm,
                prune_output=prune_output,
                context=context,
            )
            state = baked_state_dict(model, mask)
            dense = state_bytes(state)
            save_sparse(state, mask, path)
            rows.append(
                Size(
                    sparsity=s,
                    actual_sparsity=mask.sparsity(),
                    dense_bytes=len(dense),
                    gzip_bytes=len(gzip.compress(dense, compresslevel=6)),
                    sparse_bytes=path.stat().st_size,
                )
            )
    return rows


def trained_run(run_dir: str | Path) -> tuple[TrainConfig, dict[str, torch.Tensor]]:
    """The configuration and final weights of a finished training run (or an IMP run's dense round)."""
    run = Path(run_dir)
    if layout.ticket_dir(run, 0).is_dir():
        run = layout.ticket_dir(run, 0)
    if not layout.is_run(run):
        raise ConfigError(f"{run_dir} is not a training run directory (no config.json)")
    cfg = recorded_config(run)
    final = layout.checkpoint_dir(run) / layout.FINAL
    if final.exists():
        return cfg, load_checkpoint(final)["model"]
    if (run / layout.WEIGHTS).exists():
        return cfg, load_sparse(run / layout.WEIGHTS)[0]
    raise ConfigError(f"{run} has no final weights (checkpoints/final.pt or weights.npz)")


def check_curve(
    names: list[str],
    sparsities: tuple[float, ...] = CURVE_SPARSITIES,
    norm: float = 2.0,
    prune_output: bool = False,
) -> None:
    """Refuse, before any work, an unknown method, a sparsity outside [0, 1), a norm that is not
    positive, or a method that would prune the output layer's rows (its classes)."""
    if not (math.isfinite(norm) and norm > 0):
        raise ConfigError(f"--norm must be a finite number > 0, got {norm}")
    try:
        for s in sparsities:
            check_rate(s, "sparsity")
    except MaskError as e:
        raise ConfigError(str(e)) from None
    for name in names:
        if resolve_method(name, norm).granularity == "filter" and prune_output:
            raise ConfigError(
                f"--prune-output with {name!r}: filter pruning of the output layer would remove "
                "classes (its rows are the classes)"
            )


def run_curve(
    cfg: TrainConfig,
    out: str | Path,
    *,
    source: str | Path | None = None,
    names: list[str] | None = None,
    sparsities: tuple[float, ...] = CURVE_SPARSITIES,
    size_method: str = "global-l1",
    seed: int = 0,
    norm: float = 2.0,
    prune_output: bool = False,
    progress: bool = True,
) -> dict:
    """Pruning curves and sizes of a trained model; writes out/curve.json.

    The model is the finished run at `source` (its own configuration replaces `cfg`), or else a
    dense network trained with `cfg` in out/dense.
    """
    out = Path(out)
    check_curve([*(names or []), size_method], sparsities, norm, prune_output)
    with hold(out):  # one writer for the folder, from the dense run to curve.json
        if source is None:
            source = out / layout.DENSE
            train_dense(cfg, [], source, progress=progress)
        cfg, state = trained_run(source)
        data = load_data(cfg)
        model = make_model(cfg, data).to(data.test_x.device)
        initial = {n: p.detach().to(data.test_x.device) for n, p in model.named_parameters()}
        model.load_state_dict(state)
        context = Context(
            {},
            initial=initial,
            batches=training_batches(data.train_x, data.train_y, cfg.batch_size, seed),
            input_shape=data.input_shape,
        )
        options = {"seed": seed, "norm": norm, "prune_output": prune_output}
        rows = pruning_curve(
            model, data, names=names, sparsities=sparsities, context=context, **options
        )
        sizes = sizes_on_disk(
            model, method=size_method, sparsities=sparsities, context=context, **options
        )
        result = {
            "source": str(source),
            "model": cfg.model,
            "dataset": cfg.dataset,
            **options,
            "size_method": size_method,
            "curve": rows,
            "sizes": [asdict(z) for z in sizes],
        }
        write_json(result, out / layout.CURVE)
    return result
