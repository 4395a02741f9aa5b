"""`lottery sweep` on the local executor: points expand to stable folders, each exactly what its
command writes by hand; bad sweeps are refused before a byte is written; reruns skip what is done,
resume what was cut, and leave a busy point to its owner."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lottery.analysis.aggregate import summarize
from lottery.cli.main import main
from lottery.core import layout
from lottery.core.storage import load_checkpoint, read_json
from lottery.pruning.masks import load_sparse
from lottery.sweeps.plan import Sweep, read_sweep
from lottery.sweeps.points import status_rows
from lottery.training.runfolder import hold

TINY = {
    "model": "lenet_64_32", "dataset": "synthetic", "steps": 60, "batch_size": 32,
    "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "eval_every": 20, "checkpoint_every": 20,
    "device": "cpu",
}  # fmt: skip


def write_sweep(path: Path, command: str = "imp", grid=None, **settings) -> Path:
    body = {"command": command, "settings": {**TINY, "rounds": 1, **settings},
            "grid": grid if grid is not None else {"seed": [0, 1]}}  # fmt: skip
    path.write_text(json.dumps(body))
    return path


# What differs between two runs of one command: timings, and a checkpoint's copy of the process's
# global generator (seeded anew by each process; no result draws from it, every draw uses its own
# seeded generator; a resumed run restores it).
TIMINGS = {"provenance", "created", "finished", "seconds", "wall_seconds", "started", "rng"}


def _untimed(value):
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    if isinstance(value, torch.Tensor):
        return ("tensor", value.dtype, tuple(value.shape), value.numpy().tobytes())
    return value


def files(folder: Path) -> dict[str, object]:
    """Every result file of a folder by relative path: bytes, JSON records without their timings,
    checkpoints as their exact tensors (a checkpoint's zip names its temporary file)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name == layout.LOCK:
            continue
        if p.suffix == ".json":
            out[str(p.relative_to(folder))] = _untimed(json.loads(p.read_bytes()))
        elif p.suffix == ".pt":
            out[str(p.relative_to(folder))] = _untimed(load_checkpoint(p))
        else:
            out[str(p.relative_to(folder))] = p.read_bytes()
    return out


def test_points_are_named_from_what_varies_and_stable_under_reordering():
    a = Sweep("imp", {"rounds": 2}, {"seed": [0, 1], "criterion": ["magnitude", "snip"]})
    b = Sweep("imp", {"rounds": 2}, {"criterion": ["magnitude", "snip"], "seed": [0, 1]})
    assert sorted(p.name for p in a.points()) == sorted(p.name for p in b.points())
    assert "criterion=snip,seed=1" in [p.name for p in a.points()]
    zipped = Sweep(
        "imp", {}, {"seed": [0, 1, 2]}, {"reset": ["init", "rewind"], "rewind_step": [0, 50]}
    )
    names = [p.name for p in zipped.points()]
    assert len(names) == 6 == len(set(names))
    assert "reset=rewind,rewind_step=50,seed=2" in names
    point = next(p for p in zipped.points() if p.name == "reset=rewind,rewind_step=50,seed=2")
    argv = point.argv(Path("X"))
    assert argv[argv.index("--init-seed") + 1] == argv[argv.index("--data-seed") + 1] == "2"


def test_a_long_or_unsafe_value_gives_a_short_safe_unique_name():
    from lottery.sweeps.plan import MAX_NAME, point_name

    assert point_name({"mask": "/runs/a b/round_01/mask.npz"}) == "mask=_runs_a_b_round_01_mask.npz"
    long = [point_name({"mask": f"/{'x' * 300}/{i}.npz"}) for i in range(2)]
    assert all(len(n) == MAX_NAME for n in long) and long[0] != long[1]
    assert point_name({"controls": ["random-reinit", "random-prune"], "flag": True}) == (
        "controls=random-reinit+random-prune,flag=true"
    )


def test_yaml_and_json_sweeps_read_the_same(tmp_path):
    pytest.importorskip("yaml")
    (tmp_path / "s.yaml").write_text(
        "command: imp\nsettings:\n  rounds: 2\n  controls: [random-reinit]\ngrid:\n  seed: [0, 1]\n"
    )
    (tmp_path / "s.json").write_text(
        json.dumps(
            {
                "command": "imp",
                "settings": {"rounds": 2, "controls": ["random-reinit"]},
                "grid": {"seed": [0, 1]},
            }
        )  # fmt: skip
    )
    assert read_sweep(tmp_path / "s.yaml") == read_sweep(tmp_path / "s.json")


BAD = {
    "malformed YAML names its line": ("s.yaml", "command: imp\ngrid:\n  seed: [0, 1\n", "line 4"),
    "malformed JSON names its line": ("s.json", '{"command": "imp",\n "grid": }', "line 2"),
    "unknown top-level key": ("s.json", '{"command": "imp", "grids": {"seed": [0]}}', "['grids']"),
    "unknown command": ("s.json", '{"command": "fly", "grid": {"seed": [0]}}', "'fly' is not one of"),
    "empty grid": ("s.json", '{"command": "imp", "grid": {}}', "grid is empty"),
    "empty list": ("s.json", '{"command": "imp", "grid": {"seed": []}}', "grid.seed: expected a non-empty"),
    "zip of unequal lists": (
        "s.json", '{"command": "imp", "zip": {"seed": [0, 1], "lr": [0.1]}}', "different lengths"),
    "reserved key": ("s.json", '{"command": "imp", "settings": {"out": "x"}, "grid": {"seed": [0]}}',
                     "'out' cannot be set"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_malformed_sweep_file_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys):
    if case.startswith("malformed YAML"):
        pytest.importorskip("yaml")
    name, text, message = BAD[case]
    (tmp_path / name).write_text(text)
    assert main(["sweep", str(tmp_path / name), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()


REFUSED = {
    "unknown setting": ({"grid": {"seed": [0], "wings": [2]}}, "['wings'] are not settings of lottery imp"),
    "value the parser refuses": ({"grid": {"criterion": ["magnitude", "nosuch"]}}, "point criterion=nosuch"),
    "value the configuration refuses": ({"grid": {"width": [1, 0]}}, "point width=0: width must be"),
    "value only the command's run refuses": (
        {"grid": {"warmup_steps": [10, 100]}}, "--warmup-steps 100 is longer than training"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_point_the_command_would_refuse_stops_the_sweep_before_any_folder(case, tmp_path, capsys):
    change, message = REFUSED[case]
    path = write_sweep(tmp_path / "s.json", **{k: v for k, v in change.items() if k != "grid"},
                       grid=change["grid"])  # fmt: skip
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_executor_options_the_machine_cannot_give_are_refused(tmp_path, capsys):
    path = write_sweep(tmp_path / "s.json")
    assert main(["sweep", str(path), "--out", str(tmp_path / "o"), "--workers", "100000",
                 "--threads", "1"]) == 2  # fmt: skip
    assert "exceeds the" in capsys.readouterr().err
    assert main(["sweep", str(path), "--out", str(tmp_path / "o"), "--executor", "moon"]) == 2
    assert "invalid choice: 'moon'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_folder_of_another_sweep_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["sweep", str(write_sweep(tmp_path / "a.json")), "--out", str(out)]) == 0
    capsys.readouterr()
    other = write_sweep(tmp_path / "b.json", lr=0.01)
    assert main(["sweep", str(other), "--out", str(out)]) == 2
    assert "holds another sweep (settings:" in capsys.readouterr().err


def hand_run(tmp_path: Path, seed: int) -> Path:
    out = tmp_path / f"hand_{seed}"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    argv = [sys.executable, "-m", "lottery", "imp", *flags, "--rounds", "1", "--controls",
            "random-reinit", "--init-seed", str(seed), "--data-seed", str(seed), "--threads", "1",
            "--out", str(out), "--no-progress"]  # fmt: skip
    subprocess.run(argv, check=True, capture_output=True)
    return out


@pytest.mark.slow  # 7 s: the fast subset keeps the sweep's planning, checks and status tests
def test_a_sweep_at_two_workers_equals_each_command_run_by_hand(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "s.json", controls=["random-reinit"])
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "--out", str(out), "--workers", "2", "--threads", "1"]) == 0
    assert "2 of 2 points done" in capsys.readouterr().out
    for seed in (0, 1):
        point = out / f"seed={seed}"
        assert files(point) == files(hand_run(tmp_path, seed))
    rows = status_rows(out)
    assert [(r["point"], r["state"], r["attempts"]) for r in rows] == [
        ("seed=0", "done", 1), ("seed=1", "done", 1)]  # fmt: skip
    plan = read_json(out / layout.SWEEP_PLAN)
    assert [p["name"] for p in plan["points"]] == ["seed=0", "seed=1"]
    # a rerun skips both; status exits 0 only when all points are done
    assert main(["sweep", str(sweep), "--out", str(out), "--workers", "2", "--threads", "1"]) == 0
    assert "(2 before this run)" in capsys.readouterr().out
    assert [r["attempts"] for r in status_rows(out)] == [1, 1]
    assert main(["sweep", "status", str(out)]) == 0
    assert "2 done of 2 points" in capsys.readouterr().out


@pytest.mark.slow
def test_a_grid_that_grows_adds_points_and_report_aggregates_over_seeds(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["sweep", str(write_sweep(tmp_path / "a.json")), "--out", str(out)]) == 0
    grown = write_sweep(tmp_path / "b.json", grid={"seed": [0, 1, 2]})
    assert main(["sweep", str(grown), "--out", str(out)]) == 0
    assert "3 of 3 points done (2 before this run)" in capsys.readouterr().out
    assert [p["name"] for p in read_json(out / layout.SWEEP_PLAN)["points"]] == [
        "seed=0", "seed=1", "seed=2"]  # fmt: skip
    crossed = write_sweep(
        tmp_path / "c.json", grid={"seed": [0, 1, 2], "reset": ["init", "rewind"]}
    )
    assert main(["sweep", str(crossed), "--out", str(tmp_path / "out2")]) == 0
    assert main(["report", str(tmp_path / "out2")]) == 0
    capsys.readouterr()
    table = (tmp_path / "out2" / "report" / "sweep_aggregate.csv").read_text().splitlines()
    header = table[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=True)) for line in table[1:]]
    ticket = [r for r in rows if r["group"] == "reset=rewind" and r["network"] == "ticket"
              and r["metric"] == "test_acc_pct" and r["round"] == "1"]  # fmt: skip
    assert len(ticket) == 1 and ticket[0]["n"] == "3"
    accs = [
        100
        * read_json(tmp_path / "out2" / f"reset=rewind,seed={s}" / layout.SUMMARY)["rounds"][1][
            "test_accuracy"
        ]
        for s in range(3)
    ]
    want = summarize(accs)
    assert float(ticket[0]["mean"]) == pytest.approx(want["mean"], abs=1e-9)
    assert float(ticket[0]["ci95_high"]) == pytest.approx(want["ci95_high"], abs=1e-9)


@pytest.mark.slow
def test_a_failing_point_is_reported_with_its_log_and_the_others_finish(
    tmp_path, capsys, monkeypatch
):
    # a criterion that passes every check and fails when it first scores, after round 0 trains
    (tmp_path / "failing.py").write_text(
        "def crit(weight, context):\n    raise RuntimeError('this criterion always fails')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    sweep = write_sweep(tmp_path / "s.json", grid={"criterion": ["magnitude", "failing:crit"]})
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "--out", str(out), "--retries", "1"]) == 4
    text = capsys.readouterr().out
    assert "1 of 2 points done" in text and "failed: criterion=failing:crit (exit 1)" in text
    rows = {r["point"]: r for r in status_rows(out)}
    assert (
        rows["criterion=magnitude"]["state"] == "done"
        and rows["criterion=magnitude"]["attempts"] == 1
    )
    assert rows["criterion=failing:crit"]["state"] == "failed"
    assert rows["criterion=failing:crit"]["attempts"] == 2  # --retries 1
    log = Path(rows["criterion=failing:crit"]["log"]).read_text()
    assert log.count("=== attempt") == 2 and "this criterion always fails" in log
    assert main(["sweep", "status", str(out)]) == 4
    assert "1 done, 1 failed of 2 points" in capsys.readouterr().out


@pytest.mark.slow
def test_a_point_another_process_holds_is_left_to_it(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "s.json")
    out = tmp_path / "out"
    with hold(out / "seed=1", command="someone else's run"):
        assert main(["sweep", str(sweep), "--out", str(out)]) == 4
        text = capsys.readouterr().out
        assert "busy: seed=1 is being run by pid" in text and "someone else's run" in text
        assert [r["state"] for r in status_rows(out)] == ["done", "running"]
    assert main(["sweep", str(sweep), "--out", str(out)]) == 0
    assert [r["state"] for r in status_rows(out)] == ["done", "done"]


@pytest.mark.slow
def test_a_driver_killed_mid_sweep_resumes_to_what_an_uninterrupted_sweep_gives(tmp_path):
    """kill -9 of the driver takes its point's process with it; the rerun skips the finished
    point, resumes the cut one from its checkpoint, and every folder equals an uninterrupted run."""
    settings = {"steps": 600, "eval_every": 200, "checkpoint_every": 20}
    sweep = write_sweep(tmp_path / "s.json", grid={"seed": [0, 1, 2]}, **settings)
    base = [
        sys.executable,
        "-m",
        "lottery",
        "sweep",
        str(sweep),
        "--workers",
        "1",
        "--threads",
        "1",
    ]
    whole = tmp_path / "whole"
    subprocess.run([*base, "--out", str(whole)], check=True, capture_output=True)
    cut = tmp_path / "cut"
    driver = subprocess.Popen([*base, "--out", str(cut)], stderr=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL)  # fmt: skip
    second = cut / "seed=1" / "round_00" / layout.TICKET / layout.CHECKPOINTS / layout.LAST
    deadline = time.time() + 300
    while not second.exists() and time.time() < deadline:
        time.sleep(0.02)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    time.sleep(0.5)  # the point's process dies with the driver
    rows = {r["point"]: r for r in status_rows(cut)}
    assert rows["seed=0"]["state"] == "done"
    assert rows["seed=1"]["state"] == "interrupted" and rows["seed=2"]["state"] == "pending"
    subprocess.run([*base, "--out", str(cut)], check=True, capture_output=True)
    rows = {r["point"]: r for r in status_rows(cut)}
    assert {n: r["attempts"] for n, r in rows.items()} == {"seed=0": 1, "seed=1": 2, "seed=2": 1}
    log = (cut / layout.SWEEP_LOGS / "seed=1.log").read_text()
    resumed = re.search(r"round_00/ticket: resuming from step (\d+)", log.split("=== attempt 2")[1])
    assert resumed and int(resumed.group(1)) >= 20  # resumed from its checkpoint, not step 0
    for seed in range(3):
        assert files(cut / f"seed={seed}") == files(whole / f"seed={seed}"), seed


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


EXECUTOR_REFUSALS = {
    "ray not installed": (["--executor", "ray"], {"ray": None}, None, "pip install 'lottery[ray]'"),
    "submitit not installed": (
        ["--executor", "slurm"], {"submitit": None}, None, "pip install 'lottery[slurm]'"),
    "a ray address nobody answers": (
        ["--executor", "ray", "--address", f"127.0.0.1:{_free_port()}"], {}, "ray",
        "no Ray cluster answers there"),
    "a ray address that is no address": (
        ["--executor", "ray", "--address", "nowhere"], {}, "ray", "expected auto or HOST:PORT"),
    "no slurm on this machine": (
        ["--executor", "slurm"], {}, "submitit", "no Slurm on this machine (sinfo not found)"),
    "cohorts on ray": (["--executor", "ray", "--batched"], {}, "ray", "local executor only"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(EXECUTOR_REFUSALS))
def test_an_executor_that_cannot_run_is_one_line_exit_2_and_writes_nothing(
    case, tmp_path, capsys, monkeypatch
):
    flags, modules, needs, message = EXECUTOR_REFUSALS[case]
    if needs:
        pytest.importorskip(needs)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    if case == "no slurm on this machine":
        monkeypatch.setenv("PATH", str(tmp_path))
    out = tmp_path / "out"
    assert main(["sweep", str(write_sweep(tmp_path / "s.json")), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


@pytest.mark.slow
def test_batched_points_that_differ_by_seed_train_as_one_stacked_run(tmp_path, capsys):
    """--batched: the seeds of each setting train as one stacked model (`imp --seeds --batched`),
    each point's folder a link to its seed's folder; the results equal separate runs to float
    tolerance."""
    sweep = write_sweep(tmp_path / "s.json", grid={"seed": [0, 1], "reset": ["init", "rewind"]})
    stacked, alone = tmp_path / "stacked", tmp_path / "alone"
    assert main(["sweep", str(sweep), "--out", str(stacked), "--batched", "--threads", "1"]) == 0
    assert main(["sweep", str(sweep), "--out", str(alone), "--threads", "1"]) == 0
    assert "4 of 4 points done" in capsys.readouterr().out
    rows = status_rows(stacked)
    assert {r["state"] for r in rows} == {"done"} and len(rows) == 4
    cohorts = sorted(p.name for p in (stacked / ".cohorts").iterdir())
    assert cohorts == ["reset=init,seed=0+1", "reset=rewind,seed=0+1"]
    for reset in ("init", "rewind"):
        for seed in (0, 1):
            point = stacked / f"reset={reset},seed={seed}"
            assert point.is_symlink()
            assert (
                point.resolve()
                == (stacked / ".cohorts" / f"reset={reset},seed=0+1" / f"seed_{seed}").resolve()
            )
            a = read_json(point / layout.SUMMARY)["rounds"]
            b = read_json(alone / point.name / layout.SUMMARY)["rounds"]
            assert [r["density"] for r in a] == [r["density"] for r in b]
            for x, y in zip(a, b, strict=True):
                assert x["test_accuracy"] == pytest.approx(y["test_accuracy"], abs=0.01)
            wa, _ = load_sparse(point / "round_01" / layout.TICKET / layout.WEIGHTS)
            wb, _ = load_sparse(alone / point.name / "round_01" / layout.TICKET / layout.WEIGHTS)
            assert wa.keys() == wb.keys()
            for name, t in wa.items():
                assert torch.allclose(t, wb[name], atol=1e-4), name
    # a rerun finds every point done, and the report reads the linked folders
    assert main(["sweep", str(sweep), "--out", str(stacked), "--batched"]) == 0
    assert "(4 before this run)" in capsys.readouterr().out
    assert main(["report", str(stacked)]) == 0
