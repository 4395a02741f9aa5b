"""`lottery report`: the figures of a results folder, its tables (markdown, CSV, JSON) and report.md.

Recognised folders (see `lottery.core.layout.kind`): an IMP search, a training run (dense, masked or
gradually pruned), a rewind sweep, an instability study, a pruning curve, and a group of runs of
the same settings differing by seed (`imp --seeds` output, or any folder of searches, sweeps or
runs), reported as mean, sample std and 95% Student-t interval with the cross-seed mask overlap.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from lottery.analysis import plots, records
from lottery.analysis.aggregate import (
    Aggregate,
    aggregate,
    aggregate_folder,
    aggregate_group,
    density_rows,
    members,
    stat_text,
    sweep_groups,
)
from lottery.analysis.compute import ledger
from lottery.analysis.compute import summary as compute_summary
from lottery.analysis.overlap import (
    load_masks,
    matrix,
    pairwise,
    round_layer_density,
    run_sign_agreement,
)
from lottery.core import layout
from lottery.core.config import ConfigError
from lottery.core.storage import read_json, read_jsonl, write_bytes_atomic
from lottery.pruning.masks import Mask
from lottery.registry import Registry

Section = tuple[dict[str, Figure], str, dict[str, bytes]]  # figures, markdown, table files


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _num(x: float) -> str:
    return "-" if x != x else f"{x:.2f}"  # NaN: no value


def _json(value: dict) -> bytes:
    """JSON with NaN (a statistic of fewer than two seeds) written as null."""

    def clean(v):
        if isinstance(v, float) and v != v:
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return (json.dumps(clean(value), indent=1) + "\n").encode()


def _table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _heatmap(masks: dict[str, Mask], title: str) -> tuple[Figure, list[dict]]:
    pairs = pairwise(masks)
    labels = list(masks)
    fig = plots.overlap_heatmap(
        labels, matrix(labels, pairs), matrix(labels, pairs, "expected_jaccard"), title
    )
    return fig, pairs


def _pairs_table(pairs: list[dict]) -> str:
    rows = [
        [p["a"], p["b"], f"{p['jaccard']:.4f}", f"{p['expected_jaccard']:.4f}",
         f"{p['log10_p_value']:.1f}", f"{p['z_score']:.1f}"]
        for p in pairs
    ]  # fmt: skip
    return _table(["a", "b", "Jaccard", "chance Jaccard", "log10 p", "z"], rows)


def _training(run: Path) -> list[dict]:
    return records.metric_rows(read_jsonl(run / layout.METRICS))


def imp_section(run: Path) -> Section:
    """Figures, table and rounds.csv of one IMP search (a search stopped before its first round
    finished has no results yet, and the report says so)."""
    if not (run / layout.SUMMARY).exists():
        started = ", ".join(p.name for p in layout.round_dirs(run))
        return {}, f"## IMP search `{run}`\n\nNo round has finished yet (started: {started}).", {}
    summary = read_json(run / layout.SUMMARY)
    rounds = summary["rounds"]
    controls = summary.get("settings", summary).get("controls", [])
    frame = records.search_rounds(run)
    table = aggregate(frame, ["network", "round"])
    tickets = {
        r.name: r / layout.TICKET
        for r in layout.round_dirs(run)
        if (r / layout.TICKET / layout.METRICS).exists()
    }
    masks = {label.rsplit("/", 1)[-1]: m for label, m in load_masks(run, all_rounds=True).items()}
    heat, _ = _heatmap(masks, "Overlap of the rounds' masks (Jaccard)")
    figures = {
        "accuracy_vs_density": plots.accuracy_vs_density(density_rows(table, ["network", "round"])),
        "training": plots.training_curves(
            {k: _training(p) for k, p in tickets.items()}, "Tickets during training, by round"
        ),
        "schedules": plots.schedules({k: records.schedule_rows(p) for k, p in tickets.items()}),
        "layer_density": plots.layer_density(round_layer_density(run)),
        "overlap_heatmap": heat,
    }
    signs = run_sign_agreement(run)
    rows = [
        [r["round"], f"{r['percent_remaining']:.2f}", _pct(r["test_accuracy"]),
         _pct(r["test_accuracy_at_best_val"]),
         *(_pct(r["controls"].get(c, {}).get("test_accuracy")) for c in controls),
         _pct(signs.get(f"round_{r['round']:02d}", {}).get("overall"))]
        for r in rounds
    ]  # fmt: skip
    headers = ["round", "% remaining", "test acc %", f"test acc % {plots.BEST_VAL}"]
    headers += [f"{c} acc %" for c in controls] + ["sign agreement θ0→θT %"]
    text = f"## IMP search `{run}`\n\n" + _table(headers, rows)
    birds = layout.ticket_dir(run, 0) / layout.EARLY_BIRD
    if birds.exists():
        threshold = summary.get("settings", {}).get("eb_threshold", 0.1)
        marks = read_jsonl(birds)
        figures["early_bird"] = plots.early_bird_distances(marks, threshold)
        text += "\n\n" + early_bird_text(marks, threshold, read_json(birds.parent / layout.CONFIG))
    return figures, text, {"rounds.csv": frame.to_csv(index=False).encode()}


def early_bird_text(marks: list[dict], threshold: float, config: dict) -> str:
    """Where round 0's early-bird ticket was drawn, as a share of the dense training it saved."""
    total = config["total_steps"]
    drawn = next((r["step"] for r in marks if r["drawn"]), None)
    if drawn is None:
        return f"No early-bird ticket was drawn: the mask distance stayed above {threshold:g}."
    return (
        f"Early-bird ticket drawn at step {drawn} of {total} ({100 * drawn / total:.1f}% of "
        f"dense training; masks checked {len(marks)} times, threshold {threshold:g})."
    )


def compute_section(folder: Path) -> Section:
    """Accuracy against training compute of every finished network under the folder, with the
    ledger as a table and ledger.csv."""
    frame = ledger(folder)
    table = compute_summary(frame)
    rows = table.to_dict("records")
    text = f"## Compute `{folder}`\n\n" + _table(
        ["method", "sparsity %", "n", "test acc % (mean ± std)", "training MACs (mean)",
         "× dense cost", "inference MACs"],
        [[r["method"], f"{100 * r['sparsity']:.1f}", r["n"],
          mean_std_pct(r["test_accuracy"], r["test_accuracy_std"]), f"{r['train_macs']:.3g}",
          f"{r['train_macs'] / r['train_macs_dense']:.2f}", f"{r['inference_macs']:.3g}"]
         for r in rows],
    )  # fmt: skip
    figures = {"accuracy_vs_compute": plots.accuracy_vs_compute(rows)}
    return figures, text, {"ledger.csv": frame.to_csv(index=False).encode()}


def mean_std_pct(mean: float, std: float) -> str:
    return f"{100 * mean:.2f}" + ("" if std != std else f" ± {100 * std:.2f}")  # NaN: one seed


def _has_ledger(folder: Path) -> bool:
    """A search, seeds, at-init study or sweep with several finished networks that recorded their
    compute."""
    return layout.kind(folder) in ("search", "seeds", "at-init", "grid") and len(ledger(folder)) > 1


def train_section(run: Path) -> Section:
    """Figures and summary of a single training run (dense, masked or gradually pruned)."""
    figures = {
        "training": plots.training_curves({run.name: _training(run)}, f"Training run {run.name}"),
        "schedules": plots.schedules({run.name: records.schedule_rows(run)}),
    }
    text = f"## Training run `{run}`\n"
    if (run / layout.RESULT).exists():
        r = read_json(run / layout.RESULT)
        text += "\n" + _table(
            ["steps", "% remaining", "test acc %", f"test acc % {plots.BEST_VAL}"],
            [[r["steps"], _pct(r["density"]), _pct(r["test_accuracy"]),
              _pct(r["test_accuracy_at_best_val"])]],
        )  # fmt: skip
        if r["density"] < 1.0:
            mask = next(iter(load_masks(run).values()))
            figures["layer_density"] = plots.layer_density(
                {run.name: mask.layer_density()}, "Per-layer density of the final mask"
            )
    return figures, text, {}


def sweep_section(run: Path) -> Section:
    """Accuracy vs density per rewind point and the overlap of their last masks."""
    sweep = read_json(run / layout.REWIND_SWEEP)
    series = {f"k={k}": rows for k, rows in sweep["runs"].items()}
    import pandas as pd

    frame = pd.DataFrame(
        [
            {**row, "rewind_step": int(k)}
            for k, rows in sweep["runs"].items()
            for row in records.rounds_rows(rows)
            if row["network"] == "ticket"
        ]
    )
    table = aggregate(frame, ["rewind_step", "round"])
    figures = {
        "rewind_accuracy": plots.accuracy_vs_density(
            density_rows(table, ["rewind_step", "round"]),
            title="IMP with rewinding to step k",
            legend="rewind step",
        )
    }
    first = next(iter(series.values()))
    rows = [
        [r["round"], f"{r['percent_remaining']:.2f}",
         *(_pct(s[i]["test_accuracy"]) if i < len(s) else "-" for s in series.values())]
        for i, r in enumerate(first)
    ]  # fmt: skip
    text = f"## Rewind sweep `{run}` (test accuracy %, end of training)\n\n"
    text += _table(["round", "% remaining", *series], rows)
    if sweep["overlap"]:
        last = sorted(sweep["overlap"])[-1]
        pairs = sweep["overlap"][last]
        labels = [f"k={k}" for k in sweep["steps"]]
        figures["rewind_overlap"] = plots.overlap_heatmap(
            labels,
            matrix(labels, pairs),
            matrix(labels, pairs, "expected_jaccard"),
            f"Masks at {last} by rewind step (Jaccard)",
        )
        text += f"\n\nMask overlap at {last}:\n\n" + _pairs_table(pairs)
    return figures, text, {"rounds.csv": frame.to_csv(index=False).encode()}


def barrier_cell(row: dict, key: str = "barrier") -> str:
    """An instability row's barrier in % (`key`: "aligned_barrier" for the one after weight
    matching): `mean ± std (n=N)` over its pairs (`mean (n=1)`); "-" where it was not measured."""
    if key not in row:
        return "-"
    if row[f"{key}_std"] is None:
        return f"{100 * row[key]:.2f} (n={row['n_pairs']})"
    return f"{100 * row[key]:.2f} ± {100 * row[f'{key}_std']:.2f} (n={row['n_pairs']})"


def instability_section(run: Path) -> Section:
    """Error barrier vs starting step (mean ± std over pairs, each pair's value) and the
    interpolation curves of every pair."""
    result = read_json(run / layout.INSTABILITY)
    rows = result["rows"]
    label = "dense" if result["density"] == 1.0 else f"{100 * result['density']:.1f}% weights"
    figures = {
        "barrier_vs_step": plots.barrier_vs_step({label: rows}),
        "instability_curves": plots.instability_curves(
            [p for r in rows for p in r["pairs"]],
            f"Linear interpolation between pairs of copies ({label})",
        ),
    }
    aligned = all("aligned_barrier" in r for r in rows)
    table = _table(
        ["start step k", "barrier % mean ± std", "95% CI %", "per pair %",
         *(["aligned barrier % mean ± std"] if aligned else []),
         "endpoint errors % per pair", "mean endpoint gap %"],
        [[r["step"], barrier_cell(r),
          "-" if r["barrier_ci95_low"] is None
          else f"[{_pct(r['barrier_ci95_low'])}, {_pct(r['barrier_ci95_high'])}]",
          ", ".join(_pct(p["barrier"]) for p in r["pairs"]),
          *([barrier_cell(r, "aligned_barrier")] if aligned else []),
          ", ".join(" / ".join(_pct(e) for e in p["endpoint_errors"]) for p in r["pairs"]),
          _pct(r["endpoint_gap"])]
         for r in rows],
    )  # fmt: skip
    pairs = ", ".join(f"{a}:{b}" for a, b in result["pairs"])
    return figures, f"## Instability `{run}` ({label}, seed pairs {pairs})\n\n{table}", {}


def curve_section(run: Path) -> Section:
    """One-shot pruning curves and sizes on disk."""
    result = read_json(run / layout.CURVE)
    figures = {
        "pruning_curves": plots.pruning_curves(result["curve"]),
        "size_on_disk": plots.sizes_on_disk(result["sizes"]),
    }
    methods = list(dict.fromkeys(r["method"] for r in result["curve"]))
    by = {(r["method"], r["sparsity"]): r for r in result["curve"]}
    sparsities = sorted({r["sparsity"] for r in result["curve"]})
    curve = _table(
        ["sparsity %", *methods],
        [
            [f"{100 * s:.0f}", *(_pct(by[m, s]["test_accuracy"]) for m in methods)]
            for s in sparsities
        ],
    )
    sizes = _table(
        ["sparsity %", "dense bytes", "gzip bytes", "sparse bytes"],
        [[f"{100 * z['sparsity']:.0f}", z["dense_bytes"], z["gzip_bytes"], z["sparse_bytes"]]
         for z in result["sizes"]],
    )  # fmt: skip
    text = f"## One-shot pruning `{run}` ({result['model']} on {result['dataset']})\n\n"
    text += (
        f"Test accuracy (%):\n\n{curve}\n\nSize on disk ({result['size_method']} masks):\n\n{sizes}"
    )
    return figures, text, {}


def _cell(stat: dict) -> str:
    return _num(stat["mean"]) if stat["n"] < 2 else stat_text(stat)


def group_markdown(agg: Aggregate, metric: str) -> str:
    """One metric of a group's aggregate as a markdown table: a row per key group (round), a
    column per network, cells `mean ± std [95% CI]`."""
    from lottery.analysis.aggregate import KINDS

    keys = KINDS[agg.kind].keys
    column = keys[0] if agg.kind == "sweep" else "network"
    rest = [k for k in keys if k != column and k != "network"] if agg.kind == "sweep" else keys[1:]
    t = agg.table
    if agg.kind == "sweep":
        t = t[t["network"] == "ticket"]
    density = t[t["metric"] == "percent_remaining"]
    part = t[t["metric"] == metric]
    names = sorted(dict.fromkeys(part[column]), key=lambda n: (n != "ticket", str(n)))
    cells: dict[tuple, dict] = {}
    for r in part.to_dict("records"):
        cells.setdefault(tuple(r[k] for k in rest), {})[r[column]] = r
    rows = []
    for group, by_name in sorted(cells.items()):
        match = density
        for k, v in zip(rest, group, strict=True):
            match = match[match[k] == v]
        remaining = _num(float(match["mean"].mean())) if len(match) else "-"
        rows.append(
            [*group, remaining, *(_cell(by_name[n]) if n in by_name else "-" for n in names)]
        )
    label = {"rewind_step": "k"}
    return _table([*rest, "% remaining", *(f"{label.get(column, '')}{n}" for n in names)], rows)


def group_section(folder: Path) -> Section:
    """Mean ± std [95% CI] over seeds, with bands in the figure, and the cross-seed overlap."""
    agg = aggregate_folder(folder)
    title = f"## {len(agg.members)} seeds of one {agg.kind} `{folder}` ({', '.join(agg.members)})"
    figures, text = _group_parts(agg, title, "seeds_")
    tables = {
        "seeds_records.csv": agg.records.to_csv(index=False).encode(),
        "seeds_aggregate.csv": agg.table.to_csv(index=False).encode(),
        "seeds_aggregate.json": _json(
            {
                "kind": agg.kind,
                "members": list(agg.members),
                "aggregate": agg.table.to_dict("records"),
            }
        ),
    }
    return figures, text, tables


def _group_parts(agg: Aggregate, title: str, prefix: str) -> tuple[dict[str, Figure], str]:
    """A group's figures (accuracy vs density with bands, cross-seed overlap) and markdown."""
    from lottery.analysis.aggregate import KINDS

    n = len(agg.members)
    keys = KINDS[agg.kind].keys
    figures = {}
    if "round" in keys:
        figures[f"{prefix}accuracy_vs_density"] = plots.accuracy_vs_density(
            density_rows(agg.table, keys),
            title=f"Test accuracy over {n} seeds",
        )
    text = f"{title}\n\nCells: mean ± sample std [95% Student-t interval] over seeds.\n\n"
    for metric, what in plots.ACCURACY.items():
        text += f"{what[0].upper()}{what[1:]}:\n\n{group_markdown(agg, metric)}\n\n"
    if agg.overlap_pairs:
        labels = agg.overlap_labels
        figures[f"{prefix}overlap"] = plots.overlap_heatmap(
            labels,
            matrix(labels, agg.overlap_pairs),
            matrix(labels, agg.overlap_pairs, "expected_jaccard"),
            "Last masks of the seeds (Jaccard)",
        )
        text += "Cross-seed overlap of the last masks:\n\n" + _pairs_table(agg.overlap_pairs)
    return figures, text.rstrip()


def grid_section(folder: Path) -> Section:
    """A `lottery sweep` folder: its finished points grouped by the settings that vary other than
    seeds, each group's statistics over seeds as `group_section` gives them."""
    import pandas as pd

    plan = read_json(folder / layout.SWEEP_PLAN)
    groups = sweep_groups(folder)
    n = len(plan["points"])
    done = sum(len(g) for _, g in groups.values())
    text = f"## Sweep `{folder}`: lottery {plan['sweep']['command']}, {done} of {n} points done\n\n"
    figures, frames = {}, []
    for i, (label, (kind, group)) in enumerate(groups.items()):
        agg = aggregate_group(kind, group)
        title = f"### {label}: {len(group)} seed(s) ({', '.join(group)})"
        figs, part = _group_parts(agg, title, f"sweep_{i:02d}_")
        figures.update(figs)
        text += part + "\n\n"
        frames.append(agg.table.assign(group=label))
    tables = {}
    if frames:
        table = pd.concat(frames, ignore_index=True)
        tables["sweep_aggregate.csv"] = table.to_csv(index=False).encode()
    return figures, text.rstrip(), tables


def at_init_section(folder: Path) -> Section:
    """A pruning-at-init study (or its seeds): accuracy per sparsity for the criterion's mask and
    each control, mean ± std over seeds, with the figure and the per-seed records."""
    import pandas as pd

    from lottery.analysis.aggregate import summarize

    summaries = records.at_init_summaries(folder)
    settings = summaries[0]["settings"]
    runs = [records.AT_INIT_PRUNED, *settings["controls"]]
    rows = []
    for seed, summary in enumerate(summaries):
        for row in summary["sparsities"]:
            for run in runs:
                m = records.at_init_result(row, run)
                if m is not None:
                    rows.append({
                        "member": seed, "sparsity": row["sparsity"], "network": run,
                        "percent_remaining": 100 * row["density"],
                        "test_acc_pct": 100 * m["test_accuracy"],
                        "test_acc_best_val_pct": records.best_val_pct(m),
                        "best_val_step": m["best_val_step"],
                    })  # fmt: skip
    frame = pd.DataFrame(rows)
    stats = []
    for (run, _), part in frame.groupby(["network", "sparsity"], sort=False):
        stats.append({
            "network": run, "metric": "test_acc_best_val_pct",
            "percent_remaining": float(part["percent_remaining"].mean()),
            **summarize(list(part["test_acc_best_val_pct"])),
        })  # fmt: skip
    n = len(summaries)
    figure = plots.accuracy_vs_density(
        stats,
        metrics=("test_acc_best_val_pct",),
        title=f"{settings['criterion']} at initialization and its controls ({n} seed(s))",
    )
    text = f"## Pruning at initialization `{folder}`: {settings['criterion']}, {n} seed(s)\n\n"
    text += f"Test accuracy (%) {plots.BEST_VAL}, mean ± sample std over seeds:\n\n"
    text += records.at_init_table(summaries)
    tables = {"at_init_records.csv": frame.to_csv(index=False).encode()}
    return {"at_init_accuracy": figure}, text, tables


def _is_group(p: Path) -> bool:
    try:
        members(p)
    except ConfigError:
        return False
    return layout.kind(p) in (None, "seeds")


@dataclass(frozen=True)
class ReportSection:
    """A part of report.md: for a folder it `applies` to, `make(folder)` gives its figures,
    markdown and table files."""

    applies: Callable[[Path], bool]
    make: Callable[[Path], Section]


# In report order; every section that applies to a folder is written.
SECTIONS: Registry = Registry(
    "report section",
    {
        "imp": ReportSection(
            lambda p: layout.is_search(p) and bool(layout.round_dirs(p)), imp_section
        ),
        "rewind-sweep": ReportSection(lambda p: (p / layout.REWIND_SWEEP).exists(), sweep_section),
        "instability": ReportSection(
            lambda p: (p / layout.INSTABILITY).exists(), instability_section
        ),
        "curve": ReportSection(lambda p: (p / layout.CURVE).exists(), curve_section),
        "at-init": ReportSection(lambda p: bool(records.at_init_summaries(p)), at_init_section),
        "train": ReportSection(lambda p: (p / layout.METRICS).exists(), train_section),
        "seeds": ReportSection(_is_group, group_section),
        "sweep": ReportSection(lambda p: (p / layout.SWEEP_PLAN).exists(), grid_section),
        "compute": ReportSection(_has_ledger, compute_section),
    },
)


def register_report_section(
    name: str, applies: Callable[[Path], bool], make: Callable[[Path], Section]
) -> None:
    """Add a section to every report of a folder that `applies` holds (after the built-in ones):
    `make(folder)` returns (figures by file stem, markdown, table files by name)."""
    SECTIONS.register(name, ReportSection(applies, make))


def write_report(
    run_dir: str | Path, out: str | Path | None = None, fmt: str = "png", compute: bool = False
) -> list[Path]:
    """Write the figures (as `fmt`), tables and report.md for `run_dir` into `out`
    (default run_dir/report); returns the files written, report.md last. `compute` adds the
    compute ledger of any folder holding finished networks (a folder of several studies)."""
    run = Path(run_dir)
    out = Path(out) if out is not None else run / "report"
    if fmt not in plots.FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(plots.FORMATS)}, not {fmt!r}")
    if not run.is_dir():
        raise ConfigError(f"{run} is not a directory")
    written, texts = [], []
    for key, section in SECTIONS.items():
        if section.applies(run) or (compute and key == "compute" and len(ledger(run)) > 0):
            figures, text, tables = section.make(run)
            paths = [plots.save(fig, out / f"{name}.{fmt}") for name, fig in figures.items()]
            for name, data in tables.items():
                write_bytes_atomic(data, out / name)
            written += paths + [out / name for name in tables]
            links = "\n".join(f"![{p.stem}]({p.name})" for p in paths)
            texts.append(text + "\n\n" + links)
    if not texts:
        raise ConfigError(
            f"{run} holds no recognisable results (an IMP search, seed_<s>/ folders or a folder "
            f"of runs of one kind, {layout.REWIND_SWEEP}, {layout.INSTABILITY}, {layout.CURVE}, "
            f"{layout.AT_INIT} or {layout.METRICS}, or what a registered report section reads)"
        )
    md = out / "report.md"
    write_bytes_atomic(("# Report\n\n" + "\n\n".join(texts) + "\n").encode(), md)
    return [*written, md]
