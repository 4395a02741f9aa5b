"""The Slurm executor on a real single-node Slurm (Debian's slurm-wlm and munge), started here as
root: a sweep runs as a job array, and a task cancelled with scancel is finished by a rerun."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lottery.cli.main import main
from lottery.core import layout
from lottery.sweeps.points import status_rows
from tests.sweeps.test_sweep import files, write_sweep

pytest.importorskip("submitit", reason="the slurm extra is not installed")
pytestmark = pytest.mark.slow

SLURM_CONF = """ClusterName=lotterytest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={port}
SlurmdPort={port2}
AuthType=auth/munge
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
NodeName={host} CPUs={cpus} State=UNKNOWN
PartitionName=lottery Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _munge_answers() -> bool:
    try:
        enc = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        dec = subprocess.run(["unmunge"], input=enc.stdout, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return enc.returncode == 0 and dec.returncode == 0


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node Slurm of its own (controller and node daemon on free ports) for this module."""
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch") if shutil.which(b) is None]
    if missing:
        pytest.skip(
            f"Slurm is not installed here ({', '.join(missing)}; apt-get install slurm-wlm munge)"
        )
    if os.geteuid() != 0:
        pytest.skip("starting slurmd needs root")
    if not _munge_answers():
        for d in ("/run/munge", "/var/lib/munge", "/var/log/munge"):
            Path(d).mkdir(parents=True, exist_ok=True)
            shutil.chown(d, "munge", "munge")
        subprocess.run(["runuser", "-u", "munge", "--", "munged"], capture_output=True, timeout=30)
        if not _munge_answers():
            pytest.skip("munged does not start here (no /etc/munge/munge.key?)")
    folder = tmp_path_factory.mktemp("slurm")
    (folder / "state").mkdir()
    (folder / "spool").mkdir()
    conf = folder / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=socket.gethostname(), port=_free_port(),
                                      port2=_free_port(), dir=folder, cpus=os.cpu_count()))  # fmt: skip
    env = {**os.environ, "SLURM_CONF": str(conf)}
    for daemon in ("slurmctld", "slurmd"):
        done = subprocess.run(
            [daemon, "-c", "-f", str(conf)], env=env, capture_output=True, timeout=60
        )
        if done.returncode != 0:
            pytest.skip(f"{daemon} does not start here: {done.stderr.decode().strip()[-200:]}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(conf))
        deadline = time.time() + 60
        while time.time() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
            if state.stdout.strip() == "idle":
                break
            time.sleep(0.5)
        else:
            pytest.skip(f"the Slurm node never became idle ({state.stdout.strip()})")
        yield folder
        for pid_file in ("slurmd.pid", "slurmctld.pid"):
            pid = folder / pid_file
            if pid.exists():
                subprocess.run(["kill", pid.read_text().strip()], capture_output=True)


def test_a_sweep_runs_as_a_slurm_job_array_and_equals_the_local_executor(slurm, tmp_path, capsys):
    sweep = write_sweep(tmp_path / "s.json", grid={"seed": [0, 1]})
    out = tmp_path / "slurm_out"
    assert main(["sweep", str(sweep), "--out", str(out), "--executor", "slurm",
                 "--partition", "lottery", "--time", "10"]) == 0  # fmt: skip
    assert "2 of 2 points done" in capsys.readouterr().out
    rows = status_rows(out)
    jobs = [r["job"] for r in rows]
    assert all("_" in j for j in jobs) and len({j.split("_")[0] for j in jobs}) == 1  # one array
    assert list((out / "slurm").glob("*_log.out"))  # Slurm's own logs, per task
    local = tmp_path / "local_out"
    assert main(["sweep", str(sweep), "--out", str(local), "--threads", "1"]) == 0
    for p in ("seed=0", "seed=1"):
        assert files(out / p) == files(local / p)


def start_long_sweep(tmp_path) -> tuple[Path, list[str], subprocess.Popen, str]:
    """A one-point Slurm sweep started in a driver process, returned once its point has a
    checkpoint: (sweep file, argv, driver, the point's Slurm job id)."""
    sweep = write_sweep(tmp_path / "s.json", grid={"seed": [0]}, steps=3000, eval_every=1000,
                        checkpoint_every=20)  # fmt: skip
    out = tmp_path / "out"
    argv = ["sweep", str(sweep), "--out", str(out), "--executor", "slurm", "--time", "10"]
    driver = subprocess.Popen([sys.executable, "-m", "lottery", *argv], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)  # fmt: skip
    last = out / "seed=0" / "round_00" / layout.TICKET / layout.CHECKPOINTS / layout.LAST
    deadline = time.time() + 180
    while not last.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert last.exists(), driver.communicate()[0] if driver.poll() is not None else "no checkpoint"
    return sweep, argv, driver, status_rows(out)[0]["job"]


def finished_like_an_uncut_run(tmp_path, sweep: Path) -> None:
    """The point's second attempt resumed from a checkpoint, and it equals an uncut sweep's."""
    out = tmp_path / "out"
    log = (out / layout.SWEEP_LOGS / "seed=0.log").read_text()
    assert log.count("=== attempt") == 2 and "resuming from step" in log.split("=== attempt 2")[1]
    whole = tmp_path / "whole"
    assert main(["sweep", str(sweep), "--out", str(whole), "--threads", "1"]) == 0
    assert files(out / "seed=0") == files(whole / "seed=0")


def test_a_task_cancelled_with_scancel_is_finished_by_rerunning_the_sweep(slurm, tmp_path, capsys):
    sweep, argv, driver, job = start_long_sweep(tmp_path)
    subprocess.run(["scancel", job.split("_")[0]], check=True)
    text, _ = driver.communicate(timeout=120)
    assert driver.returncode == 4 and "failed: seed=0" in text, text
    assert main(argv) == 0
    assert "1 of 1 points done" in capsys.readouterr().out
    finished_like_an_uncut_run(tmp_path, sweep)


def test_a_requeued_task_resumes_its_point_from_its_last_checkpoint(slurm, tmp_path):
    """What Slurm does to a preempted job (scontrol requeue): the task starts again and its point
    resumes where its last checkpoint left it; the sweep ends done, equal to an uncut run."""
    sweep, _, driver, job = start_long_sweep(tmp_path)
    subprocess.run(["scontrol", "requeue", job], check=True)
    # Slurm holds a requeued job back for two minutes; let it start again at once
    deadline = time.time() + 60
    while time.time() < deadline:
        state = subprocess.run(
            ["squeue", "-h", "-o", "%T", "-j", job], capture_output=True, text=True
        )
        if state.stdout.strip() == "PENDING":
            break
        time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    text, _ = driver.communicate(timeout=300)
    assert driver.returncode == 0 and "1 of 1 points done" in text, text
    finished_like_an_uncut_run(tmp_path, sweep)
