"""`lottery speed`: inference time of each export route against the masked dense network."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from lottery.cli.main import add_progress_flag, parse_ints
from lottery.core import layout
from lottery.studies.names import ROUTES, SPEED_BATCHES, SWEEP_ROUTES, SWEEP_SPARSITIES

if TYPE_CHECKING:
    import torch

FORMATS = ("png", "pdf", "svg")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "speed",
        help="time inference of dense vs compact, sparse and 2:4 exports (and a sparsity sweep)",
        description="Time the run's masked network against each applicable export route at "
        "batch sizes 1 and 256, alternately in one run (median of repeats), and report the "
        "speed-ups. --sweep prunes the run's weights one-shot to several sparsities (filters "
        "for compact, single weights for sparse) and draws speed-up vs sparsity beside the "
        "size on disk.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN", help="a finished run or IMP round folder")
    p.add_argument(
        "--routes",
        type=lambda s: tuple(r for r in s.split(",") if r),
        default=None,
        help=f"comma-separated from {', '.join(r for r in ROUTES if r != 'dense')} (default: "
        "compact,sparse, plus 2:4 on a capable GPU)",
    )
    p.add_argument("--sweep", action="store_true", help="prune to --sparsities and time each")
    p.add_argument(
        "--sparsities",
        type=lambda s: tuple(float(t) for t in s.split(",") if t.strip()),
        default=SWEEP_SPARSITIES,
        help="sweep sparsities in [0, 1), comma-separated",
    )
    p.add_argument("--batches", type=parse_ints, default=SPEED_BATCHES, help="batch sizes (1,256)")
    p.add_argument("--repeats", type=int, default=11, help="timed samples per route and batch")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--format", choices=FORMATS, default="png", help="figure file format")
    p.add_argument("--out", type=Path, default=Path("checkpoints/speed"), help="output folder")
    add_progress_flag(p)
    p.set_defaults(func=run)


def _routes(args: argparse.Namespace, device: torch.device) -> tuple[str, ...]:
    import torch

    from lottery.studies.export import check_semi_structured_device

    if args.routes is None:
        default = SWEEP_ROUTES if args.sweep else ("compact", "sparse")
        two_four = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)
        return default + (("2:4",) if two_four and not args.sweep else ())
    unknown = [r for r in args.routes if r not in ROUTES or r == "dense"]
    if unknown or not args.routes:
        raise ValueError(f"--routes: unknown route {unknown[0] if unknown else ''!r}")
    if "2:4" in args.routes:
        if args.sweep:
            raise ValueError("--routes 2:4 cannot be swept (its masks come from 2:4 pruning)")
        check_semi_structured_device(device)
    return args.routes


def run(args: argparse.Namespace) -> int:
    import torch

    from lottery.core.device import resolve_device
    from lottery.core.storage import write_json
    from lottery.pruning.selection import check_rate
    from lottery.studies.export import Architecture
    from lottery.studies.speed import figure, measure, sweep, table
    from lottery.training.setup import load_run

    device = resolve_device(args.device)
    routes = _routes(args, device)
    for s in args.sparsities:
        check_rate(s, "--sparsities value")
    if not args.batches or min(args.batches) < 1 or args.repeats < 1:
        raise ValueError("--batches and --repeats must be positive")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.out.is_file():
        raise ValueError(f"--out {args.out} is a file; give a folder")
    loaded = load_run(args.run_dir, device)
    arch = Architecture.of_run(loaded.record)
    options = {"batches": tuple(args.batches), "repeats": args.repeats}
    if args.sweep:
        result = sweep(loaded.model, arch, tuple(args.sparsities), routes, **options)
    else:
        result = {"rows": measure(loaded.model, loaded.mask, arch, routes, **options), "sizes": []}
    record = {
        "run": str(args.run_dir),
        "model": arch.model,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "sweep": args.sweep,
        **result,
    }
    write_json(record, args.out / layout.SPEED)
    fig_path = args.out / f"{layout.SPEED_FIGURE}.{args.format}"
    figure(result["rows"], result["sizes"]).savefig(fig_path, dpi=150)
    print(table(result["rows"]))
    print(f"results: {args.out / layout.SPEED}; figure: {fig_path}")
    return 0
