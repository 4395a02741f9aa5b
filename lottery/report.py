"""`lottery report`: the figures of a run directory as PNG files plus a short markdown summary.

Recognised directories: an IMP search (accuracy vs density with controls, training schedules,
per-layer density, overlap heatmap of the rounds' masks, sign agreement), a training run
(schedules, density), and the outputs of `rewind-sweep`, `instability` and `curve`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lottery import plots
from lottery.config import ConfigError
from lottery.masks import Mask
from lottery.overlap import (
    load_masks,
    matrix,
    pairwise,
    round_dirs,
    round_layer_density,
    run_sign_agreement,
)
from lottery.storage import read_json, read_jsonl, write_bytes_atomic


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _heatmap(masks: dict[str, Mask], path: Path, title: str) -> tuple[Path, list[dict]]:
    pairs = pairwise(masks)
    labels = list(masks)
    return plots.overlap_heatmap(labels, matrix(labels, pairs), path, title), pairs


def _pairs_table(pairs: list[dict]) -> str:
    rows = [
        [p["a"], p["b"], f"{p['jaccard']:.4f}", f"{p['expected_jaccard']:.4f}",
         f"{p['log10_p_value']:.1f}", f"{p['z_score']:.1f}"]
        for p in pairs
    ]  # fmt: skip
    return _table(["a", "b", "Jaccard", "chance Jaccard", "log10 p", "z"], rows)


def imp_section(run: Path, out: Path) -> tuple[list[Path], str]:
    """Figures and summary of an IMP search."""
    summary = read_json(run / "summary.json")
    rounds = summary["rounds"]
    controls = summary.get("settings", summary).get("controls", [])
    series = {"ticket": rounds}
    for name in controls:
        series[name] = [
            {**r["controls"][name], "percent_remaining": r["percent_remaining"]}
            for r in rounds
            if name in r["controls"]
        ]
    figures = [plots.accuracy_vs_density(series, out / "accuracy_vs_density.png")]
    metrics = {
        r.name: read_jsonl(r / "ticket" / "metrics.jsonl")
        for r in round_dirs(run)
        if (r / "ticket" / "metrics.jsonl").exists()
    }
    figures.append(plots.schedules(metrics, out / "schedules.png"))
    figures.append(plots.layer_density(round_layer_density(run), out / "layer_density.png"))
    masks = load_masks(run, all_rounds=True)
    masks = {label.rsplit("/", 1)[-1]: m for label, m in masks.items()}
    heat, _ = _heatmap(masks, out / "overlap_heatmap.png", "Overlap of the rounds' masks (Jaccard)")
    figures.append(heat)
    signs = run_sign_agreement(run)
    rows = [
        [r["round"], f"{r['percent_remaining']:.2f}", _pct(r["test_accuracy"]),
         _pct(r["test_accuracy_at_best_val"]),
         *(_pct(r["controls"].get(c, {}).get("test_accuracy")) for c in controls),
         _pct(signs.get(f"round_{r['round']:02d}", {}).get("overall"))]
        for r in rounds
    ]  # fmt: skip
    headers = ["round", "% remaining", "test acc %", "acc@best val %"]
    headers += [f"{c} acc %" for c in controls] + ["sign agreement θ0→θT %"]
    text = f"## IMP search `{run}`\n\n" + _table(headers, rows)
    return figures, text


def train_section(run: Path, out: Path) -> tuple[list[Path], str]:
    """Figures and summary of a single training run (dense, masked or gradually pruned)."""
    figures = [
        plots.schedules({run.name: read_jsonl(run / "metrics.jsonl")}, out / "schedules.png")
    ]
    text = f"## Training run `{run}`\n"
    if (run / "result.json").exists():
        r = read_json(run / "result.json")
        text += "\n" + _table(
            ["steps", "density %", "test acc %", "acc@best val %"],
            [[r["steps"], _pct(r["density"]), _pct(r["test_accuracy"]),
              _pct(r["test_accuracy_at_best_val"])]],
        )  # fmt: skip
        if r["density"] < 1.0:
            masks = load_masks(run)
            density = {run.name: next(iter(masks.values())).layer_density()}
            figures.append(plots.layer_density(density, out / "layer_density.png"))
    return figures, text


def sweep_section(run: Path, out: Path) -> tuple[list[Path], str]:
    """Accuracy vs density per rewind point and the overlap of their last masks."""
    sweep = read_json(run / "rewind_sweep.json")
    series = {f"k={k}": rows for k, rows in sweep["runs"].items()}
    figures = [
        plots.accuracy_vs_density(
            series, out / "rewind_accuracy.png", title="IMP with rewinding to step k"
        )
    ]
    first = next(iter(series.values()))
    rows = [
        [r["round"], f"{r['percent_remaining']:.2f}",
         *(_pct(s[i]["test_accuracy"]) if i < len(s) else "-" for s in series.values())]
        for i, r in enumerate(first)
    ]  # fmt: skip
    text = f"## Rewind sweep `{run}` (test accuracy %)\n\n"
    text += _table(["round", "% remaining", *series], rows)
    if sweep["overlap"]:
        last = sorted(sweep["overlap"])[-1]
        pairs = sweep["overlap"][last]
        labels = [f"k={k}" for k in sweep["steps"]]
        figures.append(
            plots.overlap_heatmap(
                labels,
                matrix(labels, pairs),
                out / "rewind_overlap.png",
                f"Masks at {last} by rewind step (Jaccard)",
            )  # fmt: skip
        )
        text += f"\n\nMask overlap at {last}:\n\n" + _pairs_table(pairs)
    return figures, text


def instability_section(run: Path, out: Path) -> tuple[list[Path], str]:
    """Error barrier vs starting step and the interpolation curves."""
    result = read_json(run / "instability.json")
    rows = result["rows"]
    label = "dense" if result["density"] == 1.0 else f"{100 * result['density']:.1f}% weights"
    figures = [
        plots.barrier_vs_step({label: rows}, out / "barrier_vs_step.png"),
        plots.instability_curves(rows, out / "instability_curves.png"),
    ]
    table = _table(
        ["start step k", "barrier %", "endpoint errors %"],
        [[r["step"], _pct(r["barrier"]), " / ".join(_pct(e) for e in r["endpoint_errors"])]
         for r in rows],
    )  # fmt: skip
    return figures, f"## Instability `{run}` ({label}, seeds {result['seeds']})\n\n{table}"


def curve_section(run: Path, out: Path) -> tuple[list[Path], str]:
    """One-shot pruning curves and sizes on disk."""
    result = read_json(run / "curve.json")
    figures = [
        plots.pruning_curves(result["curve"], out / "pruning_curves.png"),
        plots.sizes_on_disk(result["sizes"], out / "size_on_disk.png"),
    ]
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
    return figures, text


SECTIONS: list[tuple[Callable[[Path], bool], Callable[[Path, Path], tuple[list[Path], str]]]] = [
    (lambda p: (p / "summary.json").exists() and bool(round_dirs(p)), imp_section),
    (lambda p: (p / "rewind_sweep.json").exists(), sweep_section),
    (lambda p: (p / "instability.json").exists(), instability_section),
    (lambda p: (p / "curve.json").exists(), curve_section),
    (lambda p: (p / "metrics.jsonl").exists(), train_section),
]


def write_report(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """Write the figures and report.md for `run_dir` into `out` (default run_dir/report)."""
    run = Path(run_dir)
    out = Path(out) if out is not None else run / "report"
    if not run.is_dir():
        raise ConfigError(f"{run} is not a directory")
    figures, texts = [], []
    for applies, section in SECTIONS:
        if applies(run):
            f, t = section(run, out)
            figures += f
            texts.append(t + "\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in f))
    if not texts:
        raise ConfigError(
            f"{run} holds no recognisable results (summary.json, rewind_sweep.json, "
            "instability.json, curve.json or metrics.jsonl)"
        )
    md = out / "report.md"
    write_bytes_atomic(("# Report\n\n" + "\n\n".join(texts) + "\n").encode(), md)
    return [*figures, md]
