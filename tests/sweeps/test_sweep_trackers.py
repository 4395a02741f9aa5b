"""Weights & Biases (offline) and MLflow (a local file store) as trackers of a sweep: one tracker
run per lottery run, grouped by the sweep, holding exactly what metrics.jsonl records."""

from __future__ import annotations

import json
import sys

import pytest

from lottery.cli.main import main
from lottery.core import layout
from lottery.core.storage import read_json, read_jsonl
from tests.sweeps.test_sweep import write_sweep

pytestmark = pytest.mark.slow


def test_mlflow_gets_one_run_per_point_grouped_by_the_sweep(tmp_path, capsys, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads a file store on request
    sweep = tmp_path / "s.json"
    sweep.write_text(json.dumps({"command": "train", "settings": {
        "model": "lenet_64_32", "dataset": "synthetic", "steps": 40, "eval_every": 20,
        "device": "cpu", "track": "mlflow"}, "grid": {"init_seed": [0, 1]}}))  # fmt: skip
    out = tmp_path / "grid"
    assert main(["sweep", str(sweep), "--out", str(out)]) == 0
    client = MlflowClient(tracking_uri=(out / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("grid")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["init_seed=0", "init_seed=1"]
    for r in runs:
        assert r.data.tags["lottery.sweep"] == "grid" and r.info.status == "FINISHED"
        history = client.get_metric_history(r.info.run_id, "accuracy/test_pct")
        records = read_jsonl(out / r.info.run_name / layout.METRICS)
        assert [(m.step, m.value) for m in history] == [
            (rec["step"], pytest.approx(100 * rec["test_accuracy"])) for rec in records]  # fmt: skip
        assert read_json(out / r.info.run_name / layout.TRACKER_IDS) == {"mlflow": r.info.run_id}


def test_wandb_offline_gets_one_run_per_point_grouped_by_the_sweep(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    sweep = write_sweep(tmp_path / "s.json", command="train", grid={"seed": [0, 1]}, track="wandb")
    sweep.write_text(sweep.read_text().replace(', "rounds": 1', ""))
    out = tmp_path / "grid"
    assert main(["sweep", str(sweep), "--out", str(out)]) == 0
    for seed in (0, 1):
        run = out / f"seed={seed}"
        run_id = read_json(run / layout.TRACKER_IDS)["wandb"]
        offline = list((run / "wandb").glob(f"offline-run-*-{run_id}"))
        assert len(offline) == 1 and (offline[0] / f"run-{run_id}.wandb").is_file()


def test_a_tracker_whose_extra_is_missing_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    argv = ["train", "--model", "lenet_32", "--dataset", "synthetic", "--steps", "4",
            "--device", "cpu", "--track", "mlflow", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("--track mlflow needs MLflow: pip install 'lottery[mlflow]'")
    assert not (tmp_path / "run").exists()
    assert main([*argv[:-4], "--track", "comet", "--out", str(tmp_path / "run")]) == 2
    assert "['comet'] not among wandb, mlflow" in capsys.readouterr().err
