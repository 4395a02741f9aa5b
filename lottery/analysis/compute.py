"""The compute ledger of a folder: every finished network beneath it with its accuracy and what it
cost to train, so that IMP, pruning at init, gradual schedules and early-bird tickets compare at
equal compute.

A run records its own cost (result.json "compute", `lottery.training.run.Run.compute`). A ticket
of IMP round r costs what the search trained to reach it: the tickets of rounds 0..r; a control
beside round r costs its own training plus the rounds that made its mask (0..r-1). An at-init
network and a gradually pruned one cost their own training (scoring a mask at init costs a few
batches, left out).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lottery.core import layout
from lottery.core.storage import read_json

COLUMNS = ("method", "path", "sparsity", "test_accuracy", "train_macs", "train_macs_dense",
           "inference_macs", "inference_macs_dense", "parameters")  # fmt: skip


def _cost(run: Path) -> dict | None:
    """A finished run's result with its compute record (None: unfinished, or recorded before runs
    kept a ledger)."""
    path = run / layout.RESULT
    if not path.exists():
        return None
    result = read_json(path)
    return result if "compute" in result else None


def _row(method: str, run: Path, result: dict, before: tuple[int, int] = (0, 0)) -> dict:
    """One network: its accuracy, its inference cost, and its training cost (its own run's, plus
    `before`: what made it, masked and dense)."""
    c = result["compute"]
    acc = result["test_accuracy_at_best_val"]
    return {
        "method": method,
        "path": str(run),
        "sparsity": round(1.0 - result["density"], 4),
        "test_accuracy": acc if acc is not None else result["test_accuracy"],
        "train_macs": before[0] + c["train_macs"],
        "train_macs_dense": before[1] + c["train_macs_dense"],
        "inference_macs": c["inference_macs"],
        "inference_macs_dense": c["inference_macs_dense"],
        "parameters": c["parameters"],
    }


def search_rows(search: Path) -> list[dict]:
    """An IMP search's tickets (cumulative cost of rounds 0..r) and controls (their own cost plus
    rounds 0..r-1)."""
    settings = read_json(search / layout.IMP_RECORD).get("imp", {})
    method = "IMP early-bird" if settings.get("early_bird") else f"IMP ({settings.get('reset')})"
    rows, spent = [], (0, 0)
    for rdir in layout.round_dirs(search):
        ticket = _cost(rdir / layout.TICKET)
        if ticket is None:
            break
        for control in settings.get("controls", []):
            cdir = layout.control_dir(rdir, control)
            if (c := _cost(cdir)) is not None:
                rows.append(_row(control, cdir, c, spent))
        rows.append(_row(method, rdir / layout.TICKET, ticket, spent))
        spent = (rows[-1]["train_macs"], rows[-1]["train_macs_dense"])
    return rows


def run_method(run: Path) -> str:
    """What trained a plain run: its gradual schedule or dynamic sparse training, a supermask,
    a fixed mask, or dense training."""
    record = read_json(run / layout.CONFIG)
    extra = record["config"].get("extra", {})
    pruning = extra.get("pruning")
    if pruning and pruning.get("dst"):
        return pruning["dst"].upper()
    if pruning:
        return f"gradual {pruning['schedule']['name']}"
    if extra.get("supermask"):
        return "supermask"
    return "masked" if record.get("mask_digest") else "dense"


def ledger(folder: str | Path) -> pd.DataFrame:
    """One row per finished network under `folder` (COLUMNS): searches by round, at-init
    studies by sparsity and network, other runs as they are."""
    folder = Path(folder)
    rows: list[dict] = []
    searches = sorted({p.parent for p in folder.rglob(layout.IMP_RECORD)})
    studies = sorted({p.parent for p in folder.rglob(layout.AT_INIT)})
    for search in searches:
        rows += search_rows(search)
    for study in studies:
        criterion = read_json(study / layout.AT_INIT).get("at_init", {}).get("criterion", "?")
        for result in sorted(study.glob(f"sparsity_*/*/{layout.RESULT}")):
            run = result.parent
            name = f"{criterion} at init" if run.name == "pruned" else f"at init: {run.name}"
            if (c := _cost(run)) is not None:
                rows.append(_row(name, run, c))
    owned = (*searches, *studies)
    for result in sorted(folder.rglob(layout.RESULT)):
        run = result.parent
        if any(o == run or o in run.parents for o in owned) or not layout.is_run(run):
            continue
        if (c := _cost(run)) is not None:
            rows.append(_row(run_method(run), run, c))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of accuracy and training cost, per method and sparsity."""
    grouped = frame.groupby(["method", "sparsity"], sort=True)
    out = grouped.agg(
        n=("test_accuracy", "size"),
        test_accuracy=("test_accuracy", "mean"),
        test_accuracy_std=("test_accuracy", "std"),
        train_macs=("train_macs", "mean"),
        train_macs_std=("train_macs", "std"),
        train_macs_dense=("train_macs_dense", "mean"),
        inference_macs=("inference_macs", "mean"),
    )
    return out.reset_index()
