"""Bad input over every command: one line naming the problem, exit status 2, and nothing written,
so the corrected command runs in the same --out."""

from __future__ import annotations

import json
import re
import sys

import pytest

from lottery.cli.main import main

RUN = ["--model", "lenet_32", "--dataset", "synthetic", "--steps", "20", "--batch-size", "16"]
RUN += ["--device", "cpu"]
PRUNE = ["--schedule", "agp", "--final-sparsity", "0.5"]

CASES = {
    "imp N:M a layer cannot take": (
        ["imp", *RUN, "--granularity", "3:7"], "not a multiple of 7"),
    "prune N:M a layer cannot take": (
        ["prune", *RUN, *PRUNE, "--granularity", "3:7"], "not a multiple of 7"),
    "rewind-sweep N:M a layer cannot take": (
        ["rewind-sweep", *RUN, "--rewind-steps", "0,5", "--granularity", "3:7"],
        "not a multiple of 7"),
    "curve sparsity above 1": (["curve", *RUN, "--sparsities", "1.5"], "sparsity must be in"),
    "curve unknown method": (["curve", *RUN, "--methods", "nosuch"], "unknown pruning method"),
    "curve negative norm": (["curve", *RUN, "--norm", "-1"], "--norm must be a finite number"),
    "rewind-sweep no step": (
        ["rewind-sweep", *RUN, "--rewind-steps", ","], "at least one rewind step"),
    "rewind-sweep a step twice": (
        ["rewind-sweep", *RUN, "--rewind-steps", "5,5"], "names step(s) [5] twice"),
    "instability step beyond training": (
        ["instability", *RUN, "--start-steps", "99999"], "lie outside training"),
    "instability negative step": (
        ["instability", *RUN, "--start-steps", "-1"], "lie outside training"),
    "instability too few points": (
        ["instability", *RUN, "--start-steps", "5", "--points", "3"], "at least 11 points"),
    "imp threads beyond the machine": (["imp", *RUN, "--threads", "100000"], "CPU cores available"),
    "train evaluation batch of zero": (["train", *RUN, "--eval-batch", "0"], "eval_batch must be"),
    "imp warm-up longer than training": (
        ["imp", *RUN, "--warmup-steps", "100"], "is longer than training"),
    "instability threads beyond the machine": (
        ["instability", *RUN, "--start-steps", "0", "--threads", "100000"], "CPU cores available"),
    "instability checkpoint past the end": (
        ["instability", *RUN, "--start-steps", "0", "--save-at", "999"], "beyond the end"),
    "threads beyond the machine": (["train", *RUN, "--threads", "100000"], "CPU cores"),
    "LR milestone beyond training": (
        ["train", *RUN, "--lr-schedule", "step", "--milestones", "500"],
        "milestones [500.0] lie beyond"),
    "warm-up longer than training": (
        ["train", *RUN, "--warmup-steps", "500"], "--warmup-steps 500 is longer"),
    "control rounds beyond rounds": (
        ["imp", *RUN, "--controls", "random-reinit", "--control-rounds", "3", "--rounds", "2"],
        "--control-rounds [3] lie beyond --rounds 2"),
    "control rounds without controls": (
        ["imp", *RUN, "--control-rounds", "1"], "--control-rounds needs --controls"),
    "instability unknown model": (
        ["instability", *RUN, "--start-steps", "0", "--model", "nosuch"], "unknown model"),
    "instability zero width": (
        ["instability", *RUN, "--start-steps", "0", "--width", "0"], "width must be"),
    "finetune LR without finetuning": (
        ["imp", *RUN, "--finetune-lr", "0.1"], "--finetune-lr applies to --reset finetune"),
    "dst with a schedule that prunes": (
        ["prune", *RUN, *PRUNE, "--dst", "rigl"], "the agp schedule would also prune"),
    "dst with another criterion": (
        ["prune", *RUN, "--final-sparsity", "0.5", "--dst", "set", "--criterion", "snip"],
        "--criterion snip does not apply"),
    "dst with filters": (
        ["prune", *RUN, "--final-sparsity", "0.5", "--dst", "set", "--granularity", "filter"],
        "moves single weights"),
    "dst end outside training": (
        ["prune", *RUN, "--final-sparsity", "0.5", "--dst", "set", "--dst-end", "1.5"],
        "--dst-end must be"),
    "unknown allocation": (
        ["at-init", *RUN, "--allocation", "nosuch"], "invalid choice: 'nosuch'"),
    "scope and allocation disagree": (
        ["at-init", *RUN, "--allocation", "erk", "--scope", "layer"], "disagree"),
    "erk with filters": (
        ["at-init", *RUN, "--allocation", "erk", "--granularity", "filter"],
        "prunes single weights"),
    "align a path that holds no run": (
        ["align", "no/such/run", "no/other/run"], "no/such/run is not a finished run"),
    "early bird with another criterion": (
        ["imp", *RUN, "--early-bird", "--criterion", "snip"], "--early-bird draws"),
    "early bird threshold above 1": (
        ["imp", *RUN, "--early-bird", "--eb-threshold", "1.5"], "--eb-threshold must be in [0, 1]"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys):
    argv, message = CASES[case]
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists(), sorted(p.name for p in out.iterdir())


def test_overlap_align_takes_one_network_per_path(tmp_path, capsys):
    assert main(["overlap", "a", "b", "--align", "--all-rounds"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--align compares one network per path" in err


@pytest.mark.parametrize("content", [bytes(range(256)), "{}".encode("utf-16")])
def test_a_config_file_that_is_not_text_is_one_line(tmp_path, capsys, content):
    path = tmp_path / "settings.json"
    path.write_bytes(content)
    out = tmp_path / "out"
    assert main(["train", *RUN, "--config", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a UTF-8 text file" in err
    assert not out.exists()


def test_resuming_with_another_thread_count_is_refused_and_the_recorded_one_works(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", *RUN, "--checkpoint-every", "5", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    record = json.loads((out / "config.json").read_text())
    assert record["threads"] == 1  # the default for a tiny network
    record["threads"] = 2  # as if started on a machine that chose 2, then killed after step 20
    (out / "config.json").write_text(json.dumps(record))
    (out / "result.json").unlink()
    assert main([*argv, "--threads", "1"]) == 2
    assert "started training with 2 CPU threads" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text()) == record
    assert main(argv) == 0  # no --threads: the recorded count


def test_a_file_that_is_not_a_mask_says_so_and_gives_no_folder_advice(tmp_path, capsys):
    from lottery.pruning.maskfile import MASK_FORMAT, MaskError
    from lottery.pruning.masks import Mask

    noise = tmp_path / "masks" / "noise.npz"
    noise.parent.mkdir()
    noise.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(MaskError) as e:
        Mask.load(noise)
    message = str(e.value)
    assert f"{noise} is not a {MASK_FORMAT} file" in message
    assert "pickle" not in message and "remove" not in message
    assert main(["train", *RUN, "--mask", str(noise), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{noise} is not a" in err
    assert not (tmp_path / "out").exists()


def test_export_into_a_path_under_a_file_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *RUN, "--out", str(run), "--no-progress"]) == 0
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["export", str(run), "--as", "dense", "--out", str(afile / "e.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file, not a folder" in err


def test_an_unreadable_record_is_named_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *RUN, "--out", str(run), "--no-progress"]) == 0
    (run / "metrics.jsonl").write_bytes(b"\xff\xfe" + bytes(range(128, 256)))
    assert main(["report", str(run), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot read {run / 'metrics.jsonl'}" in err


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"nesterov": "yes"}, "nesterov must be true or false, got 'yes'"),
        ({"batch_size": True}, "batch_size must be a whole number, got True"),
        ({"steps": 2.5}, "steps must be a whole number, got 2.5"),
    ],
)
def test_a_config_setting_of_the_wrong_kind_is_named(tmp_path, capsys, settings, message):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(settings))
    out = tmp_path / "out"
    argv = ["train", "--model", "lenet_32", "--dataset", "synthetic", "--device", "cpu"]
    assert main([*argv, "--config", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--config {path}: {message}" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "second",
    [
        ["imp", *RUN, "--rounds", "1"],
        ["at-init", *RUN, "--criterion", "magnitude", "--sparsities", "0.5"],
        ["curve", *RUN, "--sparsities", "0.5"],
    ],
    ids=["imp", "at-init", "curve"],
)
def test_a_folder_holding_a_training_run_refuses_another_kind_of_results(tmp_path, capsys, second):
    out = tmp_path / "out"
    assert main(["train", *RUN, "--out", str(out), "--no-progress"]) == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert main([*second, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds results of another kind (run)" in err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_a_search_resumed_on_changed_data_is_refused(tmp_path, capsys):
    """A modified copy under --data-root between rounds: the search names the change instead of
    mixing rounds trained on two datasets."""
    from tests.datasets.test_datasets import fake_idx_dataset

    root = tmp_path / "data"
    fake_idx_dataset(root / "mnist")
    out = tmp_path / "search"
    argv = ["imp", "--model", "lenet_32", "--dataset", "mnist", "--data-root", str(root)]
    argv += ["--val-size", "40", "--steps", "10", "--batch-size", "16", "--device", "cpu"]
    argv += ["--out", str(out), "--no-progress"]
    assert main([*argv, "--rounds", "1"]) == 0
    record = json.loads((out / "imp.json").read_text())
    fake_idx_dataset(root / "mnist", n_train=210)  # the training files changed
    assert main([*argv, "--rounds", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "started on other data" in err
    assert json.loads((out / "imp.json").read_text()) == record
    assert not (out / "round_02").exists()


def test_a_run_resumed_on_changed_data_is_refused(tmp_path, capsys):
    from tests.datasets.test_datasets import fake_idx_dataset

    root = tmp_path / "data"
    fake_idx_dataset(root / "mnist")
    out = tmp_path / "run"
    argv = ["train", "--model", "lenet_32", "--dataset", "mnist", "--data-root", str(root)]
    argv += ["--val-size", "40", "--steps", "10", "--batch-size", "16", "--device", "cpu"]
    argv += ["--checkpoint-every", "5", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    assert len(json.loads((out / "config.json").read_text())["data_digest"]) == 16
    (out / "result.json").unlink()  # as if killed after its last checkpoint
    fake_idx_dataset(root / "mnist", n_train=210)
    assert main(argv) == 2
    assert "started on other data" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("body", "message"),
    [("return 1.7", "gave sparsity 1.7"), ("return 'half'", "returned 'half'")],
)
def test_a_custom_schedule_with_bad_values_is_refused_before_training(
    tmp_path, monkeypatch, capsys, body, message
):
    module = f"my_schedules_{abs(hash(body))}"  # one module per case (imports are cached)
    (tmp_path / f"{module}.py").write_text(f"def bad(p, s_i, s_f):\n    {body}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    argv = ["prune", *RUN, "--schedule", f"{module}:bad", "--final-sparsity", "0.5"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not out.exists()


def test_a_hand_edited_config_is_named_not_silently_ignored(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", *RUN, "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    record = json.loads((out / "config.json").read_text())
    record["config"]["lr"] = 0.5  # edited in place, hoping the rerun trains at 0.5
    (out / "config.json").write_text(json.dumps(record))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was changed by hand" in err


def test_an_unknown_key_in_a_runs_config_names_the_file(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *RUN, "--out", str(out), "--no-progress"]) == 0
    record = json.loads((out / "config.json").read_text())
    record["config"]["learning_rate"] = 0.1
    (out / "config.json").write_text(json.dumps(record))
    assert main(["export", str(out), "--as", "dense", "--out", str(tmp_path / "e.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out / 'config.json'}: unknown configuration keys" in err


def test_a_full_disk_names_the_file_it_could_not_write(tmp_path, monkeypatch, capsys):
    import errno
    import os

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "run"
    assert main(["train", *RUN, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device (writing " in err
    assert str(out) in err


def test_a_yaml_config_without_pyyaml_says_what_to_install(tmp_path, capsys, monkeypatch):
    path = tmp_path / "settings.yaml"
    path.write_text("steps: 4\n")
    monkeypatch.setitem(sys.modules, "yaml", None)  # as on a machine without PyYAML
    out = tmp_path / "out"
    assert main(["train", *RUN, "--config", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "YAML files need PyYAML (pip install 'lottery[yaml]')" in err
    assert "not valid" not in err and not out.exists()


def test_instability_with_a_mask_of_another_network_is_refused_before_training(tmp_path, capsys):
    from lottery import Mask, TrainConfig, load_data, make_model

    cfg = TrainConfig(model="lenet_300_100", dataset="synthetic", device="cpu")
    mask = tmp_path / "other.npz"
    Mask.ones(make_model(cfg, load_data(cfg))).save(mask)
    out = tmp_path / "out"
    argv = ["instability", *RUN, "--start-steps", "0", "--mask", str(mask)]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the mask does not fit lenet_32" in err, err
    assert re.search("[0-9a-f]{16}", err) is None  # shapes, not raw hashes
    assert not out.exists()
