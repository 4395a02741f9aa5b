"""Reports and the analysis commands end to end: curve, instability and training-run folders."""

from __future__ import annotations

import json

import pytest

from lottery.analysis.report import write_report
from lottery.cli.main import main
from lottery.core.config import ConfigError

TINY = [
    "--model", "lenet_64_32", "--dataset", "synthetic", "--steps", "40", "--batch-size", "32",
    "--optimizer", "sgd", "--lr", "0.05", "--device", "cpu", "--no-progress",
]  # fmt: skip
PNG = b"\x89PNG\r\n\x1a\n"


def test_curve_command_reports_curves_and_sizes(tmp_path, capsys):
    out = tmp_path / "curve"
    assert main(["curve", *TINY, "--sparsities", "0,0.5,0.9", "--out", str(out)]) == 0
    result = json.loads((out / "curve.json").read_text())
    dense = json.loads((out / "dense" / "result.json").read_text())
    zero = [r for r in result["curve"] if r["sparsity"] == 0.0]
    assert len(zero) == 4 and all(r["test_accuracy"] == dense["test_accuracy"] for r in zero)
    assert [z["sparsity"] for z in result["sizes"]] == [0.0, 0.5, 0.9]
    for name in ("pruning_curves.png", "size_on_disk.png"):
        assert (out / "report" / name).read_bytes().startswith(PNG)
    md = (out / "report" / "report.md").read_text()
    assert "layer-filter-l2" in md and "sparse bytes" in md
    assert "global-l1" in capsys.readouterr().out


def test_instability_command_and_training_run_report(tmp_path, capsys):
    out = tmp_path / "inst"
    assert main(["instability", *TINY, "--start-steps", "0,20", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "barrier" in table
    md = (out / "report" / "report.md").read_text()
    assert "| 0 |" in md and "| 20 |" in md
    assert (out / "report" / "barrier_vs_step.png").read_bytes().startswith(PNG)
    # the dense run it trained is a training run with its own report
    written = write_report(out / "dense", tmp_path / "dense_report")
    assert [p.name for p in written] == ["training.png", "schedules.png", "report.md"]
    assert (
        main(["instability", *TINY, "--start-steps", "0", "--seeds", "1", "--out", str(out)]) == 2
    )


def test_report_refuses_a_folder_without_results(tmp_path):
    with pytest.raises(ConfigError, match="no recognisable results"):
        write_report(tmp_path)


def test_a_prune_runs_schedules_figure_draws_the_schedule_itself(tmp_path):
    """One-cycle's LR at every step from its definition, and every mask update as its own drop,
    not the staircase of evaluation points."""
    from lottery.analysis import plots, records
    from lottery.core.config import TrainConfig
    from lottery.core.optim import lr_factor

    out = tmp_path / "run"
    argv = ["prune", "--model", "lenet_64_32", "--dataset", "synthetic", "--steps", "60"]
    argv += ["--batch-size", "32", "--schedule", "agp", "--final-sparsity", "0.9", "--end", "0.5"]
    argv += ["--update-every", "10", "--lr-schedule", "one-cycle", "--device", "cpu"]
    argv += ["--eval-every", "30", "--out", str(out)]
    assert main(argv) == 0
    rows = records.schedule_rows(out)
    cfg = TrainConfig.from_dict(json.loads((out / "config.json").read_text())["config"])
    factor = lr_factor(cfg, 60)
    assert [r["step"] for r in rows] == list(range(61))
    assert [r["lr"] for r in rows] == [cfg.lr * factor(s) for s in range(61)]
    log = [json.loads(x) for x in (out / "pruning.jsonl").read_text().splitlines()]
    drops = [r["step"] for a, r in zip(rows, rows[1:], strict=False) if r["density"] < a["density"]]
    assert drops == [u["step"] for u in log if u["step"] > 0 and u["sparsity"] > 0]
    assert len(drops) == 3  # agp's updates at 10, 20 and 30 (the window's end)
    assert rows[-1]["density"] == 1 - log[-1]["sparsity"]
    fig = plots.schedules({"run": rows})
    assert len(fig.axes[0].lines[0].get_xdata()) == 61  # drawn at every step, not 3 evaluations


def test_report_of_a_search_stopped_in_round_0_says_what_exists(tmp_path, capsys):
    out = tmp_path / "search"
    argv = ["imp", "--model", "lenet_32", "--dataset", "synthetic", "--steps", "10"]
    argv += ["--batch-size", "16", "--device", "cpu", "--rounds", "1", "--out", str(out)]
    assert main(argv) == 0
    (out / "summary.json").unlink()  # as if killed before round 0 finished
    assert main(["report", str(out), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "No round has finished yet (started: round_00, round_01)" in md
