"""Run folders written by an earlier lottery (commit ebb4d7d, before the data digest, the settings
digest, previous.pt and the default thread rule) still report, resume and extend.

tests/fixtures/legacy_run_folders holds what these commands wrote then:
    lottery imp   ARGS --rounds 1 --controls random-reinit --out search
    lottery train ARGS --save-at 10 --out run
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from lottery.cli.main import main
from lottery.core.storage import load_checkpoint

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_run_folders"
ARGS = ["--model", "lenet_32", "--dataset", "synthetic", "--steps", "20", "--batch-size", "16"]
ARGS += ["--optimizer", "sgd", "--lr", "0.05", "--momentum", "0", "--device", "cpu"]
ARGS += ["--eval-every", "10", "--checkpoint-every", "10", "--threads", "1", "--no-progress"]


def legacy(tmp_path: Path) -> Path:
    out = tmp_path / "legacy"
    shutil.copytree(FIXTURE, out)
    return out


def test_a_legacy_search_reports_reruns_unchanged_and_extends(tmp_path, capsys):
    out = legacy(tmp_path) / "search"
    before = (out / "summary.json").read_text()
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    assert "## IMP search" in (tmp_path / "report" / "report.md").read_text()
    argv = ["imp", *ARGS, "--controls", "random-reinit", "--out", str(out)]
    assert main([*argv, "--rounds", "1"]) == 0  # the same command: nothing to do
    assert json.loads((out / "summary.json").read_text()) == json.loads(before)
    assert main([*argv, "--rounds", "2"]) == 0  # extended by a round
    rounds = json.loads((out / "summary.json").read_text())["rounds"]
    assert len(rounds) == 3 and rounds[:2] == json.loads(before)["rounds"]
    capsys.readouterr()


def test_a_legacy_run_killed_at_a_checkpoint_resumes_to_its_recorded_end(tmp_path, capsys):
    run = legacy(tmp_path) / "run"
    final = load_checkpoint(run / "checkpoints" / "final.pt")["model"]
    result = json.loads((run / "result.json").read_text())
    # as the run stood when killed after its step-10 checkpoint
    shutil.copy(run / "checkpoints" / "step_0000010.pt", run / "checkpoints" / "last.pt")
    (run / "result.json").unlink()
    (run / "checkpoints" / "final.pt").unlink()
    assert main(["train", *ARGS, "--save-at", "10", "--out", str(run)]) == 0
    resumed = load_checkpoint(run / "checkpoints" / "final.pt")["model"]
    assert all(torch.equal(final[n], resumed[n]) for n in final)
    assert json.loads((run / "result.json").read_text())["test_loss"] == result["test_loss"]
    capsys.readouterr()
