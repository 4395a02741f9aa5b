"""Results as pandas DataFrames, one call per record; accuracies and densities in % throughout.

Columns (every loader documents its own; `_pct` columns are percentages):
- accuracies: `test_acc_pct` (end of training), `test_acc_best_val_pct` (test accuracy at the
  step of minimum validation loss, the early-stopping criterion of Frankle & Carbin 2019);
- `percent_remaining`: % of the prunable weights kept by the mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lottery.core import layout
from lottery.core.storage import read_json, read_jsonl

if TYPE_CHECKING:
    import pandas as pd

SEARCH_COLUMNS = (
    "round", "network", "percent_remaining", "test_acc_pct", "test_acc_best_val_pct",
    "test_loss", "best_val_step", "steps",
)  # fmt: skip
METRIC_COLUMNS = (
    "step", "epoch", "lr", "train_loss", "val_loss", "val_acc_pct", "test_loss", "test_acc_pct",
    "percent_remaining",
)  # fmt: skip
PRUNING_COLUMNS = ("step", "target_sparsity_pct", "sparsity_pct", "percent_remaining", "kept")
OVERLAP_COLUMNS = (
    "a", "b", "jaccard", "expected_jaccard", "overlap_coefficient", "hamming_fraction",
    "log10_p_value", "z_score",
)  # fmt: skip


def _pct(x: float | None) -> float:
    return float("nan") if x is None else 100.0 * x


def _frame(rows: list[dict], columns: tuple[str, ...]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(rows, columns=list(columns))


def _result_row(r: dict) -> dict:
    return {
        "test_acc_pct": _pct(r.get("test_accuracy")),
        "test_acc_best_val_pct": _pct(r.get("test_accuracy_at_best_val")),
        "test_loss": r.get("test_loss"),
        "best_val_step": r.get("best_val_step"),
        "steps": r.get("steps"),
    }


def rounds_rows(summary_rounds: list[dict]) -> list[dict]:
    """A search's summary rounds as flat rows: the ticket and each control, one row each."""
    rows = []
    for r in summary_rounds:
        base = {"round": r["round"], "percent_remaining": r["percent_remaining"]}
        rows.append({**base, "network": "ticket", **_result_row(r)})
        for name, c in r.get("controls", {}).items():
            rows.append({**base, "network": name, **_result_row(c)})
    return rows


def search_rounds(search: str | Path) -> pd.DataFrame:
    """Rounds of an IMP search with its controls flattened: one row per (round, network).

    Columns: round, network ("ticket" or a control such as "random-reinit"), percent_remaining,
    test_acc_pct, test_acc_best_val_pct, test_loss, best_val_step, steps.
    """
    summary = read_json(Path(search) / layout.SUMMARY)
    return _frame(rounds_rows(summary["rounds"]), SEARCH_COLUMNS)


def metric_rows(rows: list[dict]) -> list[dict]:
    """metrics.jsonl lines with accuracies and density in %."""
    return [
        {
            "step": r["step"], "epoch": r.get("epoch"), "lr": r.get("lr"),
            "train_loss": r.get("train_loss"), "val_loss": r.get("val_loss"),
            "val_acc_pct": _pct(r.get("val_accuracy")), "test_loss": r.get("test_loss"),
            "test_acc_pct": _pct(r.get("test_accuracy")),
            "percent_remaining": _pct(r.get("density")),
        }
        for r in rows
    ]  # fmt: skip


def run_metrics(run: str | Path) -> pd.DataFrame:
    """Every evaluation of a training run (an IMP round's folder means its ticket).

    Columns: step, epoch, lr, train_loss (mean since the last evaluation; NaN at step 0),
    val_loss, val_acc_pct, test_loss, test_acc_pct, percent_remaining.
    """
    run = Path(run)
    if not layout.is_run(run) and (run / layout.TICKET).is_dir():
        run = run / layout.TICKET
    return _frame(metric_rows(read_jsonl(run / layout.METRICS)), METRIC_COLUMNS)


SCHEDULE_POINTS = 2000  # evenly spaced steps drawn per schedule, beside every mask update


def schedule_rows(run: str | Path) -> list[dict]:
    """The LR and density a run trains with at every step (about `SCHEDULE_POINTS` evenly spaced
    steps plus every mask update and the step before it), computed from its config.json and
    pruning.jsonl rather than sampled at evaluations, so a one-cycle LR is drawn smooth and every
    mask update shows as its own drop. Rows: step, lr, density (a fraction)."""
    from lottery.core.optim import lr_factor
    from lottery.training.runfolder import recorded_config

    run = Path(run)
    record = read_json(run / layout.CONFIG)
    cfg, total = recorded_config(run), int(record["total_steps"])
    factor = lr_factor(cfg, total)
    log = run / layout.PRUNING_LOG
    updates = [(u["step"], 1.0 - u["sparsity"]) for u in read_jsonl(log)] if log.exists() else []
    if not updates:  # a fixed mask (or none): the density every evaluation recorded
        updates = [(0, read_jsonl(run / layout.METRICS)[0]["density"])]
    steps = {*range(0, total + 1, max(1, total // SCHEDULE_POINTS)), total}
    steps |= {s for step, _ in updates for s in (step - 1, step) if 0 <= s <= total}
    rows, k = [], 0
    for step in sorted(steps):
        while k + 1 < len(updates) and updates[k + 1][0] <= step:
            k += 1
        rows.append({"step": step, "lr": cfg.lr * factor(step), "density": updates[k][1]})
    return rows


def pruning_log(run: str | Path) -> pd.DataFrame:
    """A gradual-pruning run's mask updates. Columns: step, target_sparsity_pct (the schedule's),
    sparsity_pct and percent_remaining (what the mask holds after the update), kept (weights)."""
    rows = [
        {
            "step": r["step"],
            "target_sparsity_pct": _pct(r["target"]),
            "sparsity_pct": _pct(r["sparsity"]),
            "percent_remaining": 100.0 - _pct(r["sparsity"]),
            "kept": r["kept"],
        }
        for r in read_jsonl(Path(run) / layout.PRUNING_LOG)
    ]
    return _frame(rows, PRUNING_COLUMNS)


def overlap_pairs(pairs: list[dict]) -> pd.DataFrame:
    """`lottery.analysis.overlap.pairwise` output (overall figures) as a frame. Columns: a, b, jaccard,
    expected_jaccard (chance), overlap_coefficient, hamming_fraction, log10_p_value, z_score."""
    return _frame([{k: p[k] for k in OVERLAP_COLUMNS} for p in pairs], OVERLAP_COLUMNS)


def overlap(*paths: str | Path, all_rounds: bool = False) -> pd.DataFrame:
    """Pairwise overlap of the masks at `paths` (files, rounds, runs, searches) against chance."""
    from lottery.analysis.overlap import load_masks, pairwise

    masks = {}
    for p in paths:
        masks.update(load_masks(p, all_rounds=all_rounds))
    return overlap_pairs(pairwise(masks))


def aggregates(folder: str | Path) -> pd.DataFrame:
    """Mean, sample std and 95% Student-t interval over seeds (see `lottery.analysis.aggregate`)."""
    from lottery.analysis.aggregate import aggregate_folder

    return aggregate_folder(folder).table


# -- pruning at initialization ------------------------------------------------------------------

AT_INIT_PRUNED = "pruned"  # the run of the criterion's own mask in an at-init summary


def at_init_summaries(folder: str | Path) -> list[dict]:
    """The summary.json of a pruning-at-init study, or of each of its seed_<s>/ studies."""
    folder = Path(folder)
    studies = [folder] if (folder / layout.AT_INIT).exists() else layout.seed_dirs(folder)
    return [
        read_json(p / layout.SUMMARY)
        for p in studies
        if (p / layout.AT_INIT).exists() and (p / layout.SUMMARY).exists()
    ]


def at_init_result(row: dict, run: str) -> dict | None:
    """One sparsity row's metrics of `run` (the criterion's mask or a control), None if absent."""
    return row[AT_INIT_PRUNED] if run == AT_INIT_PRUNED else row["controls"].get(run)


def best_val_pct(metrics: dict) -> float:
    """Test accuracy (%) at the best validation step (at the end where there was no validation)."""
    acc = metrics["test_accuracy_at_best_val"]
    return 100 * (acc if acc is not None else metrics["test_accuracy"])


def at_init_accuracy(summaries: list[dict], sparsity: float, run: str) -> list[float]:
    """Test accuracy (%) at the best validation step of `run` at `sparsity`, one per study."""
    results = (
        at_init_result(r, run)
        for s in summaries
        for r in s["sparsities"]
        if r["sparsity"] == sparsity
    )
    return [best_val_pct(m) for m in results if m is not None]


def round_accuracy(summaries: list[dict], sparsity: float) -> tuple[list[float], float]:
    """Test accuracy (%) at the best validation step of the IMP round nearest to `sparsity` (a
    pruned round, the same in every search), one per search, and that round's sparsity."""
    rounds = summaries[0]["rounds"]
    r = min(range(1, len(rounds)), key=lambda i: abs((1 - rounds[i]["density"]) - sparsity))
    accuracies = [100 * s["rounds"][r]["test_accuracy_at_best_val"] for s in summaries]
    return accuracies, 1 - rounds[r]["density"]


def mean_std(values: list[float]) -> str:
    """`mean ± std` over seeds (sample std; 0 for one value), or '-' for none."""
    import statistics

    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {std:.2f}"


def at_init_table(summaries: list[dict]) -> str:
    """Markdown: test accuracy (%) at the best validation step, mean ± std over the studies, a row
    per sparsity and a column for the criterion's mask and each control."""
    settings = summaries[0]["settings"]
    controls = list(settings["controls"])
    sparsities = sorted({r["sparsity"] for s in summaries for r in s["sparsities"]})
    lines = [
        "| sparsity | " + " | ".join([settings["criterion"], *controls]) + " |",
        "|---" * (len(controls) + 2) + "|",
    ]
    for s in sparsities:
        cells = [mean_std(at_init_accuracy(summaries, s, r)) for r in [AT_INIT_PRUNED, *controls]]
        lines.append(f"| {100 * s:g}% | " + " | ".join(cells) + " |")
    return "\n".join(lines)
