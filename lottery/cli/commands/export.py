"""`lottery export`: a run's pruned network by one inference route, loaded back and scored."""

from __future__ import annotations

import argparse
from pathlib import Path

from lottery.cli.main import add_progress_flag
from lottery.studies.names import ROUTES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a pruned run for inference: compact, sparse (CSR), 2:4 or dense",
        description="Write a run's (or IMP round's) masked network by one route, load the file "
        "back with one call and score it on the test set beside the masked original. compact "
        "removes pruned filters and channels (sequential nets); sparse stores pruned linear "
        "layers as CSR; 2:4 needs a CUDA GPU of compute capability >= 8.0.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN", help="a finished run or IMP round folder")
    p.add_argument("--as", dest="route", choices=list(ROUTES), required=True, help="the route")
    p.add_argument("--out", type=Path, required=True, help="the export file to write")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--no-eval", action="store_true", help="skip scoring on the test set")
    add_progress_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from lottery.core.device import resolve_device
    from lottery.studies.export import (
        Architecture,
        check_semi_structured_device,
        export,
        load_export,
        save_export,
        stored_numbers,
    )
    from lottery.training.runfolder import check_writable
    from lottery.training.setup import load_data, load_run
    from lottery.training.stacked import evaluate

    device = resolve_device(args.device)
    if args.route == "2:4":
        check_semi_structured_device(device)
    if args.out.is_dir():
        raise ValueError(f"--out {args.out} is a folder; give the export file's path")
    check_writable(args.out, "--out", folder=False)
    loaded = load_run(args.run_dir, device)
    arch = Architecture.of_run(loaded.record)
    exported = export(args.route, loaded.model, loaded.mask, arch)
    size = save_export(exported, args.out, info={"run": str(args.run_dir)})
    back = load_export(args.out, device)
    numbers, dense = stored_numbers(back.module), stored_numbers(loaded.model)
    print(f"{args.route}: {args.out} ({size} bytes), {numbers} stored numbers (dense {dense})")
    if args.route == "compact" and numbers >= dense and loaded.mask is not None:
        print(
            "note: compact removes only whole filters and channels; this mask prunes single "
            "weights, so nothing was saved. --as sparse stores only the kept weights."
        )
    if args.no_eval:
        return 0
    data = load_data(loaded.cfg.replace(device=device.type))
    with torch.inference_mode():
        gap = max(
            float((loaded.model(xb) - back.module(xb)).abs().max())
            for xb in data.test_x.split(1024)
        )
    _, original = evaluate(loaded.model, data.test_x, data.test_y)
    _, exported_acc = evaluate(back.module, data.test_x, data.test_y)
    print(
        f"test accuracy: masked original {100 * original:.2f}%, export loaded back "
        f"{100 * exported_acc:.2f}% ({len(data.test_x)} images; max |logit difference| {gap:.2e})"
    )
    return 0
