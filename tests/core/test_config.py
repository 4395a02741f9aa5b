"""One source of truth for configuration: flags generated from TrainConfig, paper defaults applied
by the library, and settings files (a run's own config.json or imp.json reruns it)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re

import pytest

from lottery.cli.main import add_train_args, config_from_args, main
from lottery.core.config import NON_RESULT_FIELDS, ConfigError, TrainConfig, paper_defaults
from lottery.models.registry import list_models

BASE = ["--dataset", "synthetic", "--device", "cpu", "--no-progress"]


def parsed(*flags: str) -> TrainConfig:
    p = argparse.ArgumentParser()
    add_train_args(p, "out")
    return config_from_args(p.parse_args(list(flags)))


def test_every_field_but_extra_is_a_flag():
    p = argparse.ArgumentParser()
    add_train_args(p, "out")
    dests = set(vars(p.parse_args([])))
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"extra"}
    assert fields <= dests


@pytest.mark.parametrize("model", [*list_models(), "lenet_300_100", "resnet18"])
def test_python_config_resolves_to_what_the_cli_records(model):
    python = TrainConfig(model=model)
    cli = parsed("--model", model)
    assert python.to_dict() == cli.to_dict()
    assert python.fingerprint(*NON_RESULT_FIELDS) == cli.fingerprint(*NON_RESULT_FIELDS)
    for name, value in paper_defaults(model).items():
        assert getattr(python, name) == (tuple(value) if isinstance(value, tuple) else value)


def test_paper_defaults_by_family_and_flags_override():
    resnet = TrainConfig(model="resnet18")
    assert (resnet.optimizer, resnet.lr, resnet.weight_decay) == ("sgd", 0.1, 1e-4)
    assert (resnet.lr_schedule, resnet.milestones) == ("step", (0.508, 0.762))
    conv2 = TrainConfig(model="conv2")
    assert (conv2.optimizer, conv2.lr, conv2.batch_size) == ("adam", 2e-4, 60)
    lenet = parsed("--model", "lenet_300_100", "--lr", "0.01", "--nesterov")
    assert (lenet.optimizer, lenet.lr, lenet.nesterov, lenet.epochs) == ("adam", 0.01, True, 2.0)
    assert parsed("--milestones", "").milestones == ()  # explicit empty beats the paper's


def test_config_file_round_trip(tmp_path, capsys):
    settings = {"model": "lenet_32", "steps": 12, "batch_size": 32, "optimizer": "sgd",
                "lr": 0.05, "milestones": [0.5], "lr_schedule": "step", "eval_every": 6}  # fmt: skip
    src = tmp_path / "settings.json"
    src.write_text(json.dumps(settings))
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert main(["train", "--config", str(src), *BASE, "--out", str(a)]) == 0
    assert main(["train", "--config", str(a / "config.json"), "--out", str(b)]) == 0
    ra, rb = (json.loads((d / "config.json").read_text()) for d in (a, b))
    assert ra["fingerprint"] == rb["fingerprint"] and ra["config"] == rb["config"]
    # lenet_32 on 16x16 inputs at batch 32: (256*32 + 32*10) * 32 * 3 multiply-adds a step, far below
    # the 1e9 that earn a second thread, so the recorded count is one
    assert ra["config"]["milestones"] == [0.5] and ra["threads"] == 1
    ta, tb = (json.loads((d / "result.json").read_text())["test_accuracy"] for d in (a, b))
    assert ta == tb  # the same run, bit for bit on CPU
    # a flag on the command line overrides the file
    assert main(["train", "--config", str(src), *BASE, "--lr", "0.02", "--out", str(c)]) == 0
    assert json.loads((c / "config.json").read_text())["config"]["lr"] == 0.02
    capsys.readouterr()
    # a search's imp.json reruns the search with the same fingerprint
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    flags = ["imp", "--config", str(src), *BASE, "--rounds", "1", "--controls", "random-reinit"]
    assert main([*flags, "--out", str(s1)]) == 0
    assert main(["imp", "--config", str(s1 / "imp.json"), "--out", str(s2), "--no-progress"]) == 0
    i1, i2 = (json.loads((d / "imp.json").read_text()) for d in (s1, s2))
    assert i1["fingerprint"] == i2["fingerprint"] and i1["imp"] == i2["imp"]


def test_prune_run_config_reruns_with_its_schedule(tmp_path):
    argv = ["prune", "--model", "lenet_32", "--steps", "20", "--batch-size", "32", *BASE,
            "--schedule", "agp", "--final-sparsity", "0.7", "--update-every", "5",
            "--scope", "global", "--prune-seed", "3"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    record = tmp_path / "a" / "config.json"
    assert (
        main(["prune", "--config", str(record), "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    )
    a, b = (json.loads((tmp_path / d / "config.json").read_text()) for d in ("a", "b"))
    assert a["fingerprint"] == b["fingerprint"]
    assert b["config"]["extra"]["pruning"]["seed"] == 3


def test_bad_settings_files_are_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"lr": 0.1, "no_such_setting": 1}')
    out = tmp_path / "out"
    assert main(["train", "--config", str(bad), *BASE, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no_such_setting" in err and len(err.strip().splitlines()) == 1
    bad.write_text("{not json")
    assert main(["train", "--config", str(bad), *BASE, "--out", str(out)]) == 2
    assert "not valid" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "missing.json"), "--out", str(out)]) == 2
    assert not out.exists()


def test_yaml_settings(tmp_path):
    yaml = pytest.importorskip("yaml")
    src = tmp_path / "s.yaml"
    src.write_text(yaml.safe_dump({"model": "lenet_32", "steps": 4, "batch_size": 32}))
    assert main(["train", "--config", str(src), *BASE, "--out", str(tmp_path / "o")]) == 0
    record = json.loads((tmp_path / "o" / "config.json").read_text())["config"]
    assert record["steps"] == 4 and record["model"] == "lenet_32"


def test_equal_settings_fingerprint_alike_whatever_their_python_type():
    """epochs=2 from Python and 2.0 from the command line are one run (and one search)."""
    a, b = TrainConfig(epochs=2, lr=1), TrainConfig(epochs=2.0, lr=1.0)
    assert a.to_dict() == b.to_dict() and a.fingerprint() == b.fingerprint()
    assert json.dumps(a.to_dict()) == json.dumps(b.to_dict())
    assert TrainConfig(steps=300.0).steps == 300 and isinstance(TrainConfig(steps=300.0).steps, int)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"steps": 2.5}, "steps must be a whole number, got 2.5"),
        ({"save_at": "5"}, "save_at must be a list, got '5'"),
        ({"nesterov": "yes"}, "nesterov must be true or false, got 'yes'"),
        ({"batch_size": True}, "batch_size must be a whole number, got True"),
        ({"lr": "0.1"}, "lr must be a number, got '0.1'"),
        ({"model": 3}, "model must be a string, got 3"),
        ({"steps": 10, "epochs": 1.0}, "give steps or epochs, not both"),
    ],
)
def test_a_setting_of_the_wrong_kind_is_refused_naming_it(changes, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        TrainConfig(**changes)


def test_the_python_api_resumes_the_search_the_cli_wrote(tmp_path, capsys):
    from lottery.studies.imp import IMPConfig, run_imp

    out = tmp_path / "search"
    args = ["--model", "lenet_32", "--dataset", "synthetic", "--train-limit", "256"]
    args += ["--val-size", "64", "--epochs", "1", "--batch-size", "32", "--device", "cpu"]
    assert main(["imp", *args, "--rounds", "1", "--out", str(out), "--no-progress"]) == 0
    cfg = TrainConfig(
        model="lenet_32", dataset="synthetic", train_limit=256, val_size=64, epochs=1,
        batch_size=32, device="cpu",
    )  # fmt: skip
    before = (out / "summary.json").read_text()
    summary = run_imp(cfg, IMPConfig(rounds=1), out, progress=False)
    assert summary["rounds"][1]["test_accuracy"] == json.loads(before)["rounds"][1]["test_accuracy"]
    with pytest.raises(ConfigError, match=r"lr 0.0012 -> 0.002"):
        run_imp(cfg.replace(lr=0.002), IMPConfig(rounds=1), out, progress=False)


def test_a_lenet_like_name_that_is_no_lenet_is_refused_with_the_known_names():
    """`lenet5` once took LeNet-300-100's recipe by its prefix; recipes now come from the model
    registry, and a LeNet name must spell its hidden widths."""
    with pytest.raises(ConfigError, match=r"unknown model 'lenet5'.*lenet_300_100.*conv2"):
        TrainConfig(model="lenet5")
    assert TrainConfig(model="lenet_500_300").lr == TrainConfig(model="lenet_300_100").lr == 1.2e-3
    assert TrainConfig(model="resnet18").optimizer == TrainConfig(model="resnet20").optimizer
