"""Statistics over seeds: mean, sample std and 95% Student-t interval per round (or sparsity)
for the ticket and every control, and the cross-seed mask overlap against chance.

ShrinkBench (Blalock et al., MLSys 2020) asks for mean ± std over several seeds; the interval is
mean ± t(0.975, n-1) · std / sqrt(n). A *group* is a folder of runs with the same settings that
differ only by seed: `imp --seeds` output (seed_<s>/), or any folder of searches, rewind sweeps or
training runs (e.g. prune runs). A new kind of study joins with one line in `KINDS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lottery.analysis.records import SEARCH_COLUMNS, metric_rows, rounds_rows
from lottery.core import layout
from lottery.core.config import NON_RESULT_FIELDS, ConfigError
from lottery.core.storage import read_json, read_jsonl

if TYPE_CHECKING:
    import pandas as pd

SEED_FIELDS = ("init_seed", "data_seed")
METRICS = ("test_acc_pct", "test_acc_best_val_pct", "best_val_step", "percent_remaining")
STAT_COLUMNS = ("n", "mean", "std", "ci95_low", "ci95_high")


def summarize(values: list[float]) -> dict[str, float]:
    """n, mean, sample std (ddof 1) and the 95% Student-t interval of the mean; NaN below 2."""
    from scipy import stats

    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    n = len(v)
    mean = sum(v) / n if n else math.nan
    if n < 2:
        return {"n": n, "mean": mean, "std": math.nan, "ci95_low": math.nan, "ci95_high": math.nan}
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half}


def stat_text(stats: dict, digits: int = 2, scale: float = 1.0) -> str:
    """`mean ± std [95% CI]` of a `summarize` result (times `scale`); the mean alone without a std."""
    mean, std, low, high = (
        f"{scale * v:.{digits}f}" if v is not None else None
        for v in (stats["mean"], stats.get("std"), stats.get("ci95_low"), stats.get("ci95_high"))
    )
    if std is None or std == "nan":
        return mean
    return f"{mean} ± {std} [{low}, {high}]"


def aggregate(records: pd.DataFrame, keys: list[str], metrics: tuple[str, ...] = METRICS):
    """Long table: one row per (keys, metric) with `summarize` of that metric over the members."""
    import pandas as pd

    rows = []
    for group, frame in records.groupby(keys, sort=True):
        group = group if isinstance(group, tuple) else (group,)
        for m in metrics:
            if m in frame:
                rows.append(
                    {
                        **dict(zip(keys, group, strict=True)),
                        "metric": m,
                        **summarize(list(frame[m])),
                    }
                )
    return pd.DataFrame(rows, columns=[*keys, "metric", *STAT_COLUMNS])


def density_rows(table: pd.DataFrame, keys: list[str]) -> list[dict]:
    """`aggregate` output as rows for `plots.accuracy_vs_density`: each accuracy row gains the
    mean % remaining of its group and a `network` label built from the keys other than round."""
    density = table[table["metric"] == "percent_remaining"].set_index(keys)["mean"]
    label_keys = [k for k in keys if k != "round"]
    out = []
    for r in table[table["metric"] != "percent_remaining"].to_dict("records"):
        group = tuple(r[k] for k in keys)
        name = " ".join(f"k={r[k]}" if k == "rewind_step" else str(r[k]) for k in label_keys)
        out.append({**r, "network": name, "percent_remaining": float(density[group])})
    return out


# -- what a member folder contributes -----------------------------------------------------------


def _search_records(path: Path) -> list[dict]:
    return rounds_rows(read_json(path / layout.SUMMARY)["rounds"])


def _search_settings(path: Path) -> dict:
    record = read_json(path / layout.IMP_RECORD)
    return {"train": record["train"], "imp": record["imp"]}


def _sweep_records(path: Path) -> list[dict]:
    sweep = read_json(path / layout.REWIND_SWEEP)
    return [
        {**row, "rewind_step": int(k)}
        for k, rounds in sweep["runs"].items()
        for row in rounds_rows(rounds)
    ]


def _sweep_settings(path: Path) -> dict:
    sweep = read_json(path / layout.REWIND_SWEEP)
    return {"steps": sweep["steps"], "imp": sweep["imp"], **_run_settings(path / layout.DENSE)}


def _run_records(path: Path) -> list[dict]:
    """A training run's final result (a gradual-pruning run: its final mask's density)."""
    last = metric_rows(read_jsonl(path / layout.METRICS))[-1]
    result = read_json(path / layout.RESULT)
    return [
        {
            "network": "run",
            "test_acc_pct": 100 * result["test_accuracy"],
            "test_acc_best_val_pct": 100 * (result["test_accuracy_at_best_val"] or math.nan),
            "best_val_step": result["best_val_step"],
            "percent_remaining": last["percent_remaining"],
        }
    ]


def _run_settings(path: Path) -> dict:
    return {"train": read_json(path / layout.CONFIG)["config"]}


@dataclass(frozen=True)
class Kind:
    """How to read one member of a group: its records, the keys they aggregate over, settings."""

    records: Callable[[Path], list[dict]]
    keys: list[str]
    settings: Callable[[Path], dict]
    masks: bool = True  # whether members carry masks to compare across seeds


KINDS: dict[str, Kind] = {
    "search": Kind(_search_records, ["network", "round"], _search_settings),
    "sweep": Kind(_sweep_records, ["rewind_step", "network", "round"], _sweep_settings),
    "run": Kind(_run_records, ["network"], _run_settings),
}


def members(folder: str | Path) -> tuple[str, dict[str, Path]]:
    """(kind, {label: folder}) of the runs in `folder`: its seed_<s>/ folders, or else its
    sub-folders of one kind that `KINDS` can read."""
    folder = Path(folder)
    found = {p.name: p for p in layout.seed_dirs(folder)} or {
        p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and layout.kind(p) in KINDS
    }
    kinds = {layout.kind(p) for p in found.values()}
    if len(kinds) != 1 or None in kinds or not kinds <= set(KINDS):
        raise ConfigError(
            f"{folder} holds no group of runs of one kind ({', '.join(KINDS)}) to aggregate"
        )
    return kinds.pop(), found


def _without_seeds(settings: dict) -> dict:
    ignore = {*SEED_FIELDS, *NON_RESULT_FIELDS}
    return {
        k: _without_seeds(v) if isinstance(v, dict) else v
        for k, v in settings.items()
        if k not in ignore
    }


def check_same_settings(kind: str, group: dict[str, Path]) -> None:
    """Refuse a group whose members differ in anything but their seeds (and where they ran)."""
    first, *rest = group
    want = _without_seeds(KINDS[kind].settings(group[first]))
    for label in rest:
        got = _without_seeds(KINDS[kind].settings(group[label]))
        if got != want:
            diff = sorted(_differences(want, got))[:3]
            raise ConfigError(
                f"{group[label]} and {group[first]} differ in settings ({', '.join(diff)}); "
                "aggregate only runs that differ by seed"
            )


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += _differences(a[k], b[k], f"{prefix}{k}.")
        elif a.get(k) != b.get(k):
            out.append(f"{prefix}{k}")
    return out


@dataclass
class Aggregate:
    """A group's per-member records, their statistics and the cross-seed overlap of masks."""

    kind: str
    members: dict[str, Path]
    records: pd.DataFrame  # one row per member and key, with a "member" column
    table: pd.DataFrame  # `aggregate` of the records
    overlap_labels: list[str] = field(default_factory=list)
    overlap_pairs: list[dict] = field(default_factory=list)


def aggregate_folder(folder: str | Path, overlap: bool = True) -> Aggregate:
    """Records of every member of the group in `folder`, aggregated over members (seeds); with
    `overlap`, the exact pairwise overlap (lottery.analysis.overlap) of the members' last masks."""
    kind, group = members(folder)
    return aggregate_group(kind, group, overlap)


def aggregate_group(kind: str, group: dict[str, Path], overlap: bool = True) -> Aggregate:
    """`aggregate_folder` of the runs in `group` ({label: folder}, all of `kind`)."""
    import pandas as pd

    check_same_settings(kind, group)
    spec = KINDS[kind]
    rows = [{"member": label, **r} for label, p in group.items() for r in spec.records(p)]
    records = pd.DataFrame(rows)
    if kind == "search":
        records = records[["member", *SEARCH_COLUMNS]]
    result = Aggregate(kind, group, records, aggregate(records, spec.keys))
    if overlap and spec.masks and len(group) > 1:
        result.overlap_labels, result.overlap_pairs = cross_seed_overlap(group)
    return result


def cross_seed_overlap(group: dict[str, Path]) -> tuple[list[str], list[dict]]:
    """Pairwise overlap (with its chance baseline) of each member's last mask."""
    from lottery.analysis.overlap import load_mask, pairwise
    from lottery.pruning.maskfile import MaskError

    masks = {}
    for label, path in group.items():
        try:
            masks[label] = load_mask(path)
        except MaskError:
            return [], []  # dense runs carry no mask to compare
    return list(masks), pairwise(masks)


SWEEP_SEEDS = ("seed", *SEED_FIELDS)  # a sweep's settings that name seeds


def sweep_groups(folder: str | Path) -> dict[str, tuple[str, dict[str, Path]]]:
    """A sweep folder's finished points, grouped by the settings that vary other than seeds:
    {group label: (kind, {point name: folder})}; points of kinds `KINDS` cannot read are left out."""
    folder = Path(folder)
    plan = read_json(folder / layout.SWEEP_PLAN)
    groups: dict[str, tuple[str, dict[str, Path]]] = {}
    for point in plan["points"]:
        path, status = (
            folder / point["name"],
            folder / layout.SWEEP_STATUS / f"{point['name']}.json",
        )
        kind = layout.kind(path)
        if kind not in KINDS or not status.is_file() or read_json(status).get("state") != "done":
            continue
        varying = {k: v for k, v in point["varying"].items() if k not in SWEEP_SEEDS}
        label = ",".join(f"{k}={varying[k]}" for k in sorted(varying)) or "all points"
        groups.setdefault(label, (kind, {}))[1][point["name"]] = path
    return groups
