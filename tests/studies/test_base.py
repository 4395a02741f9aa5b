"""The study contract: one record per study folder, its fingerprint unchanged for folders written
before, another study refused before any folder is written, naming what differs."""

from __future__ import annotations

import json
from pathlib import Path

from lottery import IMPConfig, TrainConfig
from lottery.cli.main import main
from lottery.studies.at_init import RECORD as AT_INIT
from lottery.studies.imp import RECORD as IMP

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_run_folders" / "search"
RUN = ["--model", "lenet_32", "--dataset", "synthetic", "--steps", "8", "--batch-size", "16"]
RUN += ["--device", "cpu", "--no-progress"]


def test_a_search_recorded_by_the_previous_release_keeps_its_fingerprint():
    record = json.loads((LEGACY / "imp.json").read_text())
    cfg = TrainConfig(**{k: v for k, v in record["train"].items() if k != "extra"})
    settings = IMPConfig(**record["imp"]).__dict__
    assert IMP.fingerprint(cfg, settings) == record["fingerprint"]


def test_at_init_checks_every_seed_folder_before_writing_any(tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["at-init", *RUN, "--criterion", "magnitude", "--sparsities", "0.5", "--out", str(out)]
    assert main([*argv, "--seeds", "1"]) == 0  # seed_1 holds a global-scope study
    record = json.loads((out / "seed_1" / AT_INIT.file).read_text())
    assert record["data_digest"] and record["at_init"]["scope"] == "global"
    capsys.readouterr()
    assert main([*argv, "--seeds", "0,1", "--scope", "layer"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a pruning-at-init study with other settings" in err
    assert 'at_init.scope "global" -> "layer"' in err and "--sparsities, --controls" in err
    assert not (out / "seed_0").exists()
    assert json.loads((out / "seed_1" / AT_INIT.file).read_text()) == record


def test_library_entry_points_take_the_folders_lock(tmp_path):
    """A Python caller gets the same one-writer guarantee as the command line."""
    import subprocess
    import sys
    import time

    import pytest

    from lottery import (
        IMPConfig,
        Trainer,
        instability_sweep,
        load_data,
        make_model,
        rewind_sweep,
        run_curve,
    )
    from lottery.training.runfolder import FolderInUseError

    out = tmp_path / "busy"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom lottery.training.runfolder import hold\n"
         f"with hold({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        cfg = TrainConfig(model="lenet_32", dataset="synthetic", steps=4, device="cpu")
        data = load_data(cfg)
        calls = [
            lambda: Trainer(cfg, data, make_model(cfg, data), out, progress=False).fit(),
            lambda: run_curve(cfg, out, sparsities=(0.5,), progress=False),
            lambda: instability_sweep(cfg, [0], out, progress=False),
            lambda: rewind_sweep(cfg, IMPConfig(rounds=1), [0, 2], out, progress=False),
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(FolderInUseError, match="is being written by pid"):
                call()
            assert time.monotonic() - started < 30
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
