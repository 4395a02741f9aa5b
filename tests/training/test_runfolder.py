"""Run folders a researcher can trust: settings checked before the first byte is written, one-line
user errors (and honest internal errors), a complete identity, one writer, nothing left behind,
readable permissions, per-round summaries and messages that say how to recover.

CLI cases run `lottery` in-process on small real Fashion-MNIST slices."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lottery.cli.main import main
from lottery.core import layout
from lottery.core.storage import CheckpointError, load_checkpoint, write_json
from lottery.datasets.cifar10 import CIFAR10_DIR
from lottery.models.registry import build_model
from lottery.pruning.criteria import Context, score
from lottery.pruning.maskfile import MaskError
from lottery.pruning.masks import Mask, load_sparse
from lottery.pruning.selection import prune
from lottery.training.runfolder import FolderInUseError, clean_leftovers, config_diff, hold
from tests.datasets.test_datasets import fake_cifar_dir

REPO = Path(__file__).resolve().parents[2]
FM = ["--dataset", "fashion_mnist", "--train-limit", "600", "--val-size", "100",
      "--test-limit", "200", "--batch-size", "60", "--device", "cpu", "--no-progress"]  # fmt: skip
IS_ROOT = os.geteuid() == 0


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]] | None:
    """Every file under `folder` with its bytes and mtime (None: the folder does not exist)."""
    if not folder.exists():
        return None
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def refused(argv: list[str], capsys, *words: str, status: int = 2) -> str:
    """Run `lottery argv`; it must exit `status` with exactly one stderr line holding `words`."""
    assert main(argv) == status
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"lottery {argv[0]}: error: "), lines[0]
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def ok(argv: list[str], capsys) -> str:
    assert main(argv) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def lenet_mask(path: Path) -> Path:
    """Half of every LeNet-300-100 layer pruned at random (a mask a round might produce)."""
    model = build_model("lenet_300_100", (1, 28, 28), 10, seed=0)
    ones = Mask.ones(model)
    weights = {n: p.detach() for n, p in model.named_parameters() if n in ones.tensors}
    prune(ones, score("random", Context(weights), seed=1), fraction=0.5, scope="layer").save(path)
    return path


# -- 1. every setting is checked before the first byte is written ------------------------------


TRAIN_BAD = [
    (["--steps", "20", "--lr", "nan"], "--lr"),
    (["--steps", "20", "--momentum", "-1"], "--momentum"),
    (["--steps", "20", "--weight-decay", "-1"], "--weight-decay"),
    (["--steps", "20", "--gamma", "nan"], "--gamma"),
    (["--steps", "20", "--warmup-steps", "-3"], "--warmup-steps"),
    (["--steps", "20", "--save-at", "5000"], "beyond the end"),
    (["--epochs", "nan"], "--epochs"),
    (["--epochs", "inf"], "--epochs"),
]


def test_train_refuses_bad_settings_before_writing_then_the_corrected_command_runs(
    tmp_path, capsys
):
    out = tmp_path / "run"
    for flags, word in TRAIN_BAD:
        refused(["train", *FM, *flags, "--out", str(out)], capsys, word)
        assert not out.exists()
    ok(["train", *FM, "--steps", "20", "--out", str(out)], capsys)
    before = snapshot(out)
    for flags, word in TRAIN_BAD:
        refused(["train", *FM, *flags, "--out", str(out)], capsys, word)
        assert snapshot(out) == before


IMP_BAD = [
    (["--rate-scale", "nosuch.weight=0.5"], "'nosuch.weight' is not a prunable tensor"),
    (["--rate-scale", "classifier.4.weight=10"], "multiplier 10.0"),
    (["--rate-scale", "classifier.4.weight=-1"], "multiplier -1.0"),
    (["--reset", "rewind", "--rewind-step", "100000"], "beyond the end of training (20 steps)"),
    (["--reset", "init", "--rewind-step", "5"], "--reset init"),
    (["--finetune-lr", "nan", "--reset", "finetune"], "--finetune-lr"),
]


def test_imp_refuses_bad_settings_before_writing_then_the_corrected_command_runs(tmp_path, capsys):
    out = tmp_path / "search"
    base = ["imp", *FM, "--steps", "20", "--rounds", "1", "--out", str(out)]
    for flags, words in IMP_BAD:
        refused([*base, *flags], capsys, words)
        assert not out.exists()
    ok([*base, "--rate-scale", "classifier.4.weight=0.5"], capsys)
    before = snapshot(out)
    for flags, words in IMP_BAD:
        refused([*base, *flags], capsys, words)
        assert snapshot(out) == before
    # the refused resume names what differs
    refused([*base, "--prune-fraction", "0.3"], capsys, "imp.fraction 0.2 -> 0.3", "other settings")
    assert snapshot(out) == before


def test_prune_refuses_an_unknown_rate_scale_tensor_before_writing(tmp_path, capsys):
    out = tmp_path / "prune"
    base = ["prune", *FM, "--steps", "20", "--final-sparsity", "0.5", "--update-every", "10"]
    refused([*base, "--rate-scale", "nosuch.weight=0.5", "--out", str(out)], capsys, "nosuch")
    refused([*base, "--rate-scale", "classifier.0.weight=2", "--out", str(out)], capsys, "< 2")
    assert not out.exists()
    ok([*base, "--rate-scale", "classifier.4.weight=0.5", "--out", str(out)], capsys)
    assert (out / layout.MASK).exists()


# -- 2. user errors are one line naming the path or flag; bugs and OOM are not "bad input" ------


def test_out_naming_a_file_or_a_path_under_a_file_is_one_line(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    for cmd in ("train", "imp", "prune"):
        extra = ["--final-sparsity", "0.5"] if cmd == "prune" else []
        refused([cmd, *FM, *extra, "--out", str(afile)], capsys, str(afile), "is a file")
        refused([cmd, *FM, *extra, "--out", str(afile / "sub")], capsys, str(afile), "is a file")
    assert afile.read_text() == "keep me" and list(tmp_path.iterdir()) == [afile]


@pytest.mark.skipif(IS_ROOT, reason="root writes into a chmod 555 folder anyway")
def test_out_in_a_read_only_folder_is_one_line(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for cmd in ("train", "imp"):
            refused([cmd, *FM, "--out", str(ro / "run")], capsys, str(ro), "permission denied")
        refused(["schedule", "cosine", "--final-sparsity", "0.5", "--plot", str(ro / "s.png")],
                capsys, "--plot", "permission denied")  # fmt: skip
        refused(["report", str(tmp_path), "--out", str(ro / "rep")], capsys, "permission denied")
    finally:
        ro.chmod(0o755)
    assert list(ro.iterdir()) == []


def test_permission_errors_while_writing_are_one_line_naming_the_path(
    tmp_path, capsys, monkeypatch
):
    """Works as root too: the OS refusal is simulated where the run folder is created."""
    out = tmp_path / "run"

    def denied(self, *a, **kw):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", denied)
    refused(
        ["train", *FM, "--steps", "5", "--out", str(out)], capsys, str(out), "Permission denied"
    )


def test_figure_paths_under_a_file_fail_before_any_output(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    line = refused(
        ["schedule", "cosine", "--final-sparsity", "0.5", "--plot", str(afile / "s.png")], capsys
    )
    assert "--plot" in line and "is a file" in line
    assert capsys.readouterr().out == ""  # the CSV is not printed before the failure
    masks = [lenet_mask(tmp_path / "a.npz"), lenet_mask(tmp_path / "b.npz")]
    refused(["overlap", *map(str, masks), "--heatmap", str(afile / "h.png")], capsys, "--heatmap")
    refused(["report", str(tmp_path), "--out", str(afile)], capsys, "--out", "is a file")


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", "empty file"),
        (b"\x80\x02garbage that is no pickle", "not a readable CIFAR-10"),
        ("truncated", "not a readable CIFAR-10"),
        ("string labels", "labels must be integers"),
    ],
)
def test_bad_cifar_batches_are_one_line_naming_the_file(tmp_path, capsys, content, words):
    root = tmp_path / "data"
    folder = root / CIFAR10_DIR
    fake_cifar_dir(folder, per_batch=4)
    bad = folder / "data_batch_2"
    if content == "truncated":
        bad.write_bytes(bad.read_bytes()[:100])
    elif content == "string labels":
        x = np.zeros((4, 3072), dtype=np.uint8)
        bad.write_bytes(pickle.dumps({b"data": x, b"labels": ["cat"] * 4}, protocol=2))
    else:
        bad.write_bytes(content)
    argv = ["train", "--dataset", "cifar10", "--data-root", str(root), "--model", "conv2",
            "--val-size", "2", "--device", "cpu", "--out", str(tmp_path / "run")]  # fmt: skip
    refused(argv, capsys, str(bad), words)
    assert not (tmp_path / "run").exists()


def test_a_bug_is_an_internal_error_and_out_of_memory_has_its_own_status(capsys, monkeypatch):
    import lottery.cli.commands.schedule as schedule_cmd

    argv = ["schedule", "cosine", "--final-sparsity", "0.5", "--steps", "4"]

    def bug(*a, **kw):
        raise RuntimeError("index out of range in self")

    monkeypatch.setattr(schedule_cmd, "schedules_from_args", bug)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "lottery schedule: internal error: RuntimeError" in err
    assert "error: index" not in err  # not reported as bad input

    def oom(*a, **kw):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(schedule_cmd, "schedules_from_args", oom)
    refused(argv, capsys, "out of memory", "--batch-size", status=3)
    refused(["schedule", "cosine", "--final-sparsity", "x"], capsys, "--final-sparsity", "--help")


# -- 3. a run's identity: every setting that changes the result, the mask's content included ----


def crash_at(step: int, monkeypatch, nth: int = 1) -> None:
    """Make the `nth` engine made from now on raise after `step` optimizer steps (a kill)."""
    from lottery.training import engine

    real, made = engine.Engine.__init__, []

    def bomb(done: int) -> None:
        if done == step:
            monkeypatch.setattr(engine.Engine, "__init__", real)
            raise KeyboardInterrupt

    def patched(self, *a, **kw):
        real(self, *a, **kw)
        made.append(self)
        if len(made) == nth:
            self.hooks = engine.Hooks(**{**self.hooks.__dict__, "after_step": [bomb]})

    monkeypatch.setattr(engine.Engine, "__init__", patched)


def test_the_mask_content_is_part_of_a_runs_identity(tmp_path, capsys, monkeypatch):
    mask = str(lenet_mask(tmp_path / "mask.npz"))
    base = ["train", *FM, "--steps", "20", "--checkpoint-every", "5"]
    done = tmp_path / "done"
    ok([*base, "--out", str(done)], capsys)
    before = snapshot(done)
    refused([*base, "--mask", mask, "--out", str(done)], capsys, "mask none -> ")
    assert snapshot(done) == before

    killed = tmp_path / "killed"  # an unfinished unmasked run resumed with --mask
    crash_at(10, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        main([*base, "--out", str(killed)])
    assert (killed / "checkpoints" / "last.pt").exists()
    before = snapshot(killed)
    refused([*base, "--mask", mask, "--out", str(killed)], capsys, "mask none -> ")
    assert snapshot(killed) == before

    masked = tmp_path / "masked"  # an unfinished masked run resumed without --mask
    crash_at(10, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        main([*base, "--mask", mask, "--out", str(masked)])
    before = snapshot(masked)
    line = refused([*base, "--out", str(masked)], capsys, "-> none")
    assert Mask.load(mask).digest() in line
    assert snapshot(masked) == before
    result = json.loads(ok([*base, "--mask", mask, "--out", str(masked)], capsys))
    assert result["density"] == Mask.load(mask).density()


def test_config_diff_names_nested_settings():
    old = {"lr": 0.1, "extra": {"pruning": {"every": 10}}, "mask": None}
    new = {"lr": 0.1, "extra": {"pruning": {"every": 20}}, "mask": "ab12"}
    assert config_diff(old, new) == {"extra.pruning.every": (10, 20), "mask": (None, "ab12")}


# -- 4. one writer per folder ------------------------------------------------------------------


def test_a_second_writer_is_refused_and_a_killed_holders_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from lottery.training.runfolder import hold\n"
         "with hold(sys.argv[1], 'the holder'):\n print('held', flush=True); time.sleep(120)",
         str(out)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        argv = ["train", *FM, "--steps", "10", "--out", str(out)]
        before = snapshot(out)
        refused(argv, capsys, str(out), f"pid {holder.pid}", "the holder")
        assert snapshot(out) == before
        with pytest.raises(FolderInUseError, match=f"pid {holder.pid}"), hold(out):
            pass
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock
        holder.wait()
    ok(argv, capsys)
    assert (out / layout.RESULT).exists()
    assert f"pid {os.getpid()}" in (out / layout.LOCK).read_text()


@pytest.mark.parametrize("held", ["parent", "child"])
def test_one_writer_per_folder_tree(tmp_path, capsys, held):
    """A multi-seed search writing X and a search on X/seed_0 must not run together, whichever
    starts first; a dead holder's lock, or this process's own, does not block."""
    parent, child = tmp_path / "X", tmp_path / "X" / "seed_0"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from lottery.training.runfolder import hold\n"
         "with hold(sys.argv[1], 'the holder'):\n print('held', flush=True); time.sleep(120)",
         str(parent if held == "parent" else child)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    other = child if held == "parent" else parent
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUseError, match=f"pid {holder.pid}"), hold(other):
            pass
        argv = ["imp", *FM, "--steps", "10", "--rounds", "1", "--out", str(other)]
        refused(argv, capsys, f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    with hold(parent), hold(child):  # nested in one process: allowed
        pass


# -- 5. nothing left behind --------------------------------------------------------------------


def test_leftover_temp_files_and_a_stale_resume_checkpoint_are_removed(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", *FM, "--steps", "10", "--out", str(out)]
    first = json.loads(ok(argv, capsys))
    ckpts = out / "checkpoints"
    (ckpts / "last.pt").write_bytes((ckpts / "final.pt").read_bytes())  # killed after result.json
    leftovers = [out / ".metrics.jsonl.k3x_9q0z.tmp", ckpts / ".last.pt.abcdefgh.tmp"]
    for p in leftovers:
        p.write_bytes(b"half a write")
    kept = [out / "notes.tmp", out / ".hidden"]  # the user's own files stay
    for p in kept:
        p.write_text("mine")
    again = json.loads(ok(argv, capsys))
    assert again == first
    assert not any(p.exists() for p in leftovers) and not (ckpts / "last.pt").exists()
    assert all(p.read_text() == "mine" for p in kept)
    assert clean_leftovers(out) == []


# -- 6. records honour the umask ---------------------------------------------------------------


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_records_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_json({"a": 1}, tmp_path / "r.json")
        Mask({"w": torch.ones(3, dtype=torch.bool)}).save(tmp_path / "m.npz")
    finally:
        os.umask(old)
    for name in ("r.json", "m.npz"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode


# -- 7. summaries after every round; a smaller --rounds rewrites nothing -----------------------


def test_summary_is_written_per_round_and_fewer_rounds_leave_the_record(
    tmp_path, capsys, monkeypatch
):
    out = tmp_path / "search"
    base = ["imp", *FM, "--steps", "20", "--out", str(out)]
    crash_at(15, monkeypatch, nth=2)  # round 0 trains 20 steps, round 1 is killed at step 15
    with pytest.raises(KeyboardInterrupt):
        main([*base, "--rounds", "2"])
    summary = json.loads((out / layout.SUMMARY).read_text())
    assert [r["round"] for r in summary["rounds"]] == [0]
    report = tmp_path / "report"
    assert main(["report", str(out), "--out", str(report)]) == 0, capsys.readouterr().err
    assert (report / "report.md").exists()
    capsys.readouterr()

    ok([*base, "--rounds", "2"], capsys)
    assert len(json.loads((out / layout.SUMMARY).read_text())["rounds"]) == 3
    records = {n: snapshot(out)[n] for n in (layout.SUMMARY, layout.IMP_RECORD)}
    table = ok([*base, "--rounds", "1"], capsys)
    assert [line.split()[0] for line in table.splitlines()[2:4]] == ["0", "1"]
    assert "\n    2 " not in table
    assert {n: snapshot(out)[n] for n in records} == records


# -- 8. messages say what differs and how to recover -------------------------------------------


def test_unreadable_checkpoints_do_not_advise_running_pickled_code(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ("true",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "lottery-checkpoint/1", "x": Boom()}, evil, pickle_module=pickle)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(evil)
    assert "weights_only" not in str(e.value) and "evil.pt" in str(e.value)
    assert "remove its run folder" in str(e.value)


def test_a_truncated_weights_file_says_how_to_recover_and_that_works(tmp_path, capsys):
    out = tmp_path / "search"
    base = ["imp", *FM, "--steps", "20", "--out", str(out)]
    ok([*base, "--rounds", "1"], capsys)
    ticket = out / "round_01" / "ticket"
    good, _ = load_sparse(ticket / layout.WEIGHTS)
    data = (ticket / layout.WEIGHTS).read_bytes()
    (ticket / layout.WEIGHTS).write_bytes(data[: len(data) // 2])
    where = str(ticket / layout.WEIGHTS)
    refused([*base, "--rounds", "2"], capsys, where, f"remove the run folder {ticket}")
    assert (ticket / layout.WEIGHTS).read_bytes() == data[: len(data) // 2]
    with pytest.raises(MaskError, match="rerun the command"):
        load_sparse(ticket / layout.WEIGHTS)
    import shutil

    shutil.rmtree(ticket)
    ok([*base, "--rounds", "2"], capsys)
    again, _ = load_sparse(ticket / layout.WEIGHTS)
    assert all(torch.equal(good[k], again[k]) for k in good)
    assert len(json.loads((out / layout.SUMMARY).read_text())["rounds"]) == 3


def test_lock_file_names_this_process_while_held(tmp_path):
    with hold(tmp_path / "x", "lottery train --out x"):
        text = (tmp_path / "x" / layout.LOCK).read_text()
        assert text.startswith(f"pid {os.getpid()} on ") and text.endswith(
            "(lottery train --out x)"
        )
        with hold(tmp_path / "x"):  # nested holds in one process nest
            pass
    t0 = time.monotonic()
    with hold(tmp_path / "x"):
        pass
    assert time.monotonic() - t0 < 5
