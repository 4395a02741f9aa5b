"""`lottery align`: network B with its hidden units permuted onto network A's, as a run folder.

The aligned folder is a finished run (config.json, weights.npz with B's mask permuted alike,
mask.npz, B's result.json), so every command that reads runs (overlap, instability --dense,
export, speed, report) takes it; alignment.json records the permutations, the weight-matching
objective before and after, the masks' Jaccard before and after, and the largest difference between
B's and the aligned network's outputs (zero up to float rounding: the function is unchanged).
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import torch
from torch import nn

from lottery.analysis.alignment import Alignment, permute, permute_mask, weight_matching
from lottery.analysis.overlap import compare_masks
from lottery.core import layout
from lottery.core.config import ConfigError
from lottery.core.storage import read_json, write_json
from lottery.models.symmetry import NoSymmetryError, PermutationSpec, permutation_spec
from lottery.pruning.masks import Mask, save_sparse
from lottery.training.runfolder import check_writable, hold
from lottery.training.setup import LoadedRun, load_run

OUTPUT_EXAMPLES = 16  # random inputs on which the aligned network's outputs are checked


def run_folder(path: str | Path) -> Path:
    """The run a path names: itself, an IMP round's ticket, or an IMP search's last round's."""
    path = Path(path)
    if layout.is_search(path) and layout.round_dirs(path):
        path = layout.round_dirs(path)[-1]
    if (path / layout.TICKET).is_dir() and not layout.is_run(path):
        path = path / layout.TICKET
    if not layout.is_run(path):
        raise ConfigError(f"{path} is not a finished run, IMP round or IMP search")
    return path


def network(path: str | Path) -> LoadedRun:
    """The finished network (final weights, mask applied) that `path` names."""
    return load_run(run_folder(path))


def match(a: LoadedRun, b: LoadedRun, seed: int = 0) -> tuple[PermutationSpec, Alignment]:
    """The model's symmetry and the permutations taking B's units onto A's (refused, as bad
    input, for two architectures or a model whose symmetry is unknown)."""
    if a.record["data"]["input_shape"] != b.record["data"]["input_shape"] or repr(a.model) != repr(
        b.model
    ):
        raise ConfigError(
            f"the two networks differ in architecture ({a.cfg.model} width {a.cfg.width}, "
            f"{b.cfg.model} width {b.cfg.width}); align two runs of one model"
        )
    try:
        spec = permutation_spec(a.model)
    except NoSymmetryError as e:
        raise ConfigError(str(e)) from None
    return spec, weight_matching(a.model.state_dict(), b.model.state_dict(), spec, seed=seed)


def output_difference(b: nn.Module, aligned: nn.Module, input_shape: list[int]) -> float:
    """max |B(x) - aligned(x)| over seeded random inputs, in evaluation mode."""
    x = torch.randn(OUTPUT_EXAMPLES, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return float((b.eval()(x) - aligned.eval()(x)).abs().max())


def check_out(out: Path, a: Path, b: Path) -> None:
    """`out` is new, or an earlier alignment of the same two networks (redone identically)."""
    check_writable(out, "--out", kinds=("run",))
    record = out / layout.ALIGNMENT
    if record.exists():
        old = read_json(record)
        if (old["a"], old["b"]) != (str(a), str(b)):
            raise ConfigError(
                f"--out {out} holds the alignment of {old['b']} to {old['a']}; use another --out"
            )
    elif (out / layout.CONFIG).exists():
        raise ConfigError(f"--out {out} holds a run; use another --out")


def align(a_path: str | Path, b_path: str | Path, out: str | Path, seed: int = 0) -> dict:
    """Write B aligned to A into `out` and return alignment.json's record."""
    a_path, b_path, out = Path(a_path), Path(b_path), Path(out)
    check_out(out, a_path, b_path)
    a, source = network(a_path), run_folder(b_path)
    b = load_run(source)
    spec, alignment = match(a, b, seed)
    state = permute(b.model.state_dict(), spec, alignment.perms)
    mask = permute_mask(b.mask, spec, alignment.perms) if b.mask is not None else None
    aligned = copy.deepcopy(b.model)
    aligned.load_state_dict(state)
    record = {
        "a": str(a_path),
        "b": str(b_path),
        "model": b.cfg.model,
        "seed": seed,
        **alignment.to_dict(),
        "max_output_difference": output_difference(
            b.model, aligned, b.record["data"]["input_shape"]
        ),
    }
    if a.mask is not None and b.mask is not None:
        record["jaccard_before"] = compare_masks(a.mask, b.mask).overall.jaccard
        record["jaccard_after"] = compare_masks(a.mask, mask).overall.jaccard
    with hold(out):
        write_json({**b.record, "aligned_to": str(a_path)}, out / layout.CONFIG)
        save_sparse(state, mask if mask is not None else Mask.ones(aligned), out / layout.WEIGHTS)
        if mask is not None:
            mask.save(out / layout.MASK)
        if (source / layout.RESULT).exists():
            shutil.copyfile(source / layout.RESULT, out / layout.RESULT)
        write_json(record, out / layout.ALIGNMENT)
    return record
