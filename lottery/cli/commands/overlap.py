"""`lottery overlap`: how much two or more masks agree, against independent random masks."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lottery.cli.main import add_progress_flag, command_help
from lottery.core.config import ConfigError

if TYPE_CHECKING:
    from lottery.pruning.masks import Mask


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "overlap",
        help=command_help("overlap"),
        description="Compare masks pairwise, per layer and overall, with the expected Jaccard and "
        "a hypergeometric p-value of independent random masks of the same per-layer densities. "
        "Each path is a mask .npz, a sparse-weights .npz, an IMP round directory, or a run "
        "directory (its last round's mask; all rounds with --all-rounds).",
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="RUN_OR_MASK")
    p.add_argument(
        "--all-rounds", action="store_true", help="take every round of IMP run directories"
    )
    p.add_argument(
        "--align",
        action="store_true",
        help="first permute every network's hidden units onto the first one's (weight matching, "
        "as `lottery align`), then compare masks: overlap up to the permutation symmetry",
    )
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.add_argument(
        "--heatmap",
        type=Path,
        default=None,
        help="draw the Jaccard matrix with its chance level into this image (.png, .pdf or .svg)",
    )
    add_progress_flag(p)
    p.set_defaults(func=run)


def collect(paths: list[Path], all_rounds: bool) -> dict[str, Mask]:
    """Masks of all paths under unique labels (a repeated label gets its position as a prefix)."""
    from lottery.analysis.overlap import load_masks

    masks: dict[str, Mask] = {}
    for i, path in enumerate(paths):
        for label, mask in load_masks(path, all_rounds=all_rounds).items():
            masks[f"{i}:{label}" if label in masks else label] = mask
    if len(masks) < 2:
        raise ConfigError("overlap needs at least two masks (give two paths, or --all-rounds)")
    return masks


def aligned(paths: list[Path]) -> dict[str, Mask]:
    """Each network's mask after its units are permuted onto the first network's."""
    from lottery.analysis.alignment import permute_mask
    from lottery.studies.align import match, network

    if len(paths) < 2:
        raise ConfigError("overlap --align needs at least two networks")
    nets = [network(p) for p in paths]
    masks: dict[str, Mask] = {}
    for i, (path, net) in enumerate(zip(paths, nets, strict=True)):
        if net.mask is None:
            raise ConfigError(f"{path} holds no mask to compare")
        mask, label = net.mask, str(path)
        if i > 0:
            spec, alignment = match(nets[0], net)
            mask, label = permute_mask(mask, spec, alignment.perms), f"{path} (aligned)"
        masks[f"{i}:{label}" if label in masks else label] = mask
    return masks


def run(args: argparse.Namespace) -> int:
    from lottery.analysis import plots  # seaborn loads only when a figure is drawn
    from lottery.analysis.overlap import matrix, pairwise
    from lottery.training.runfolder import check_writable

    if args.heatmap is not None and args.heatmap.suffix not in (".png", ".pdf", ".svg"):
        raise ConfigError(f"--heatmap {args.heatmap}: give a .png, .pdf or .svg file name")
    if args.heatmap is not None:
        check_writable(args.heatmap, "--heatmap", folder=False)
    if args.align and args.all_rounds:
        raise ConfigError("--align compares one network per path; drop --all-rounds")
    masks = aligned(args.paths) if args.align else collect(args.paths, args.all_rounds)
    pairs = pairwise(masks)
    if args.heatmap is not None:
        labels = list(masks)
        chance = matrix(labels, pairs, "expected_jaccard")
        plots.save(plots.overlap_heatmap(labels, matrix(labels, pairs), chance), args.heatmap)
        print(f"heatmap: {args.heatmap}", file=sys.stderr)  # stderr: stdout may be --json
    if args.json:
        print(json.dumps({"masks": list(masks), "pairs": pairs}, indent=2))
        return 0
    print(f"{'a':>24s} {'b':>24s}  jaccard  chance   overlap  hamming  log10_p      z")
    for p in pairs:
        print(
            f"{p['a']:>24s} {p['b']:>24s}  {p['jaccard']:.4f}  {p['expected_jaccard']:.4f}"
            f"  {p['overlap_coefficient']:.4f}  {p['hamming']:7d}  {p['log10_p_value']:7.1f}"
            f"  {p['z_score']:5.1f}"
        )
    return 0
