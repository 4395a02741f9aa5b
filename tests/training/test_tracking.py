"""TensorBoard event files hold the scalars of metrics.jsonl; without the extra, one clear error."""

from __future__ import annotations

import builtins
import json

import pytest

from lottery.cli.main import main
from lottery.core import layout
from lottery.core.config import ConfigError
from lottery.pruning.masks import Mask
from lottery.training.setup import load_data, make_model
from lottery.training.trainer import Trainer
from tests.conftest import tiny


def test_event_files_hold_the_logged_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny(steps=40, tensorboard=True)
    data = load_data(cfg)
    model = make_model(cfg, data)
    mask = Mask({n: (p.detach().abs() > 0.05) for n, p in model.named_parameters()
                 if n.endswith("weight")})  # fmt: skip
    Trainer(cfg, data, model, tmp_path / "run", mask=mask, progress=False).fit()
    events = EventAccumulator(str(tmp_path / "run" / layout.TENSORBOARD))
    events.Reload()
    rows = [json.loads(x) for x in (tmp_path / "run" / layout.METRICS).read_text().splitlines()]
    tags = set(events.Tags()["scalars"])
    layers = {f"density/{n}_pct" for n in mask.names()}
    assert {"loss/val", "loss/test", "loss/train", "accuracy/test_pct", "lr"} <= tags
    assert layers <= tags and "density/overall_pct" in tags
    test = events.Scalars("accuracy/test_pct")
    assert [e.step for e in test] == [r["step"] for r in rows] == [0, 20, 40]
    assert [e.value for e in test] == pytest.approx([100 * r["test_accuracy"] for r in rows])
    assert [e.step for e in events.Scalars("loss/train")] == [20, 40]  # none before a step
    name = mask.names()[0]
    got = events.Scalars(f"density/{name}_pct")[-1].value
    assert got == pytest.approx(100 * mask.layer_density()[name])


def test_without_the_extra_the_flag_is_one_clear_error(tmp_path, monkeypatch, capsys):
    real = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("no tensorboard")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    argv = ["train", "--model", "lenet_64_32", "--dataset", "synthetic", "--steps", "5"]
    argv += ["--device", "cpu", "--no-progress", "--tensorboard", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lottery train: error: --tensorboard needs the tensorboard package: "
                   "pip install 'lottery[tensorboard]'"]  # fmt: skip
    assert not (tmp_path / "r").exists()
    with pytest.raises(ConfigError):
        Trainer(tiny(tensorboard=True), load_data(tiny()), make_model(tiny(), load_data(tiny())),
                tmp_path / "t", progress=False)  # fmt: skip
