"""A sweep folder and its points: the plan record, each point's state, and running one point.

Running a point is running its command (`python -m lottery CMD ... --out SWEEP/POINT`) in a
child process, with its output appended to SWEEP/logs/POINT.log and its state written to
SWEEP/status/POINT.json before and after. Every executor runs points through `run_point`, so a
point's folder is exactly what the command writes by hand, and the command's own lock keeps two
workers, or two sweeps, off one point. The child dies with the process that started it (Linux),
so a killed driver or worker leaves the point to resume from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lottery.core import layout
from lottery.core.config import ConfigError
from lottery.core.storage import lock_holder, provenance, read_json, write_json
from lottery.sweeps.plan import SEED, Point, Sweep, point_name

# A point's states, as `lottery sweep status` prints them.
DONE, RUNNING, FAILED, QUEUED, INTERRUPTED, PENDING = (
    "done", "running", "failed", "queued", "interrupted", "pending"
)  # fmt: skip
STATES = (DONE, RUNNING, QUEUED, FAILED, INTERRUPTED, PENDING)
BUSY = "busy"  # a run_point outcome: another process holds the point's folder


def log_path(out: Path, name: str) -> Path:
    return Path(out) / layout.SWEEP_LOGS / f"{name}.log"


def status_path(out: Path, name: str) -> Path:
    return Path(out) / layout.SWEEP_STATUS / f"{name}.json"


def read_status(out: Path, name: str) -> dict[str, Any]:
    path = status_path(out, name)
    return read_json(path) if path.is_file() else {}


def write_status(out: Path, name: str, **fields: Any) -> dict[str, Any]:
    """Update a point's status record (atomically) with `fields`."""
    record = {**read_status(out, name), **fields}
    write_json(record, status_path(out, name))
    return record


def check_plan(out: Path, sweep: Sweep) -> None:
    """Refuse a folder that records another sweep (another command or fixed settings)."""
    path = Path(out) / layout.SWEEP_PLAN
    if not path.is_file():
        return
    old = read_json(path)["sweep"]
    for key in ("command", "settings"):
        if old[key] != sweep.to_dict()[key]:
            raise ConfigError(
                f"{out} holds another sweep ({key}: {old[key]} there, {sweep.to_dict()[key]} "
                "here); use another --out"
            )


def record_plan(out: Path, sweep: Sweep, points: list[Point]) -> None:
    """Write SWEEP/sweep.json: the sweep as given and every point (by name, with its settings);
    a grid that gains values adds its points to the record."""
    path = Path(out) / layout.SWEEP_PLAN
    old = read_json(path) if path.is_file() else None
    known = {p["name"]: p for p in (old or {}).get("points", [])}
    for p in points:
        known.setdefault(p.name, {"name": p.name, "varying": p.varying, "settings": p.settings})
    record = {"sweep": sweep.to_dict(), "points": list(known.values()), **provenance()}
    if old != record:
        write_json(record, path)


def planned_points(out: Path) -> list[Point]:
    """Every point recorded in a sweep folder."""
    path = Path(out) / layout.SWEEP_PLAN
    if not path.is_file():
        raise ConfigError(f"{out} is not a sweep folder (no {layout.SWEEP_PLAN})")
    plan = read_json(path)
    return [Point(p["name"], p["settings"], p["varying"]) for p in plan["points"]]


def point_state(out: Path, name: str) -> tuple[str, dict[str, Any]]:
    """(state, status record) of a point: running while a process holds its folder; done or
    failed as its last attempt ended; queued while an executor job waits for it; interrupted when
    an attempt started and its process is gone (rerunning resumes it); else pending."""
    status = read_status(out, name)
    folder = Path(out) / status.get("cohort", name)  # a cohort's member: the stacked run's folder
    if lock_holder(folder / layout.LOCK) is not None:
        return RUNNING, status
    state = status.get("state", PENDING)
    return (INTERRUPTED if state == RUNNING else state), status


@dataclass(frozen=True)
class Outcome:
    """How one attempt at a point ended: done, failed (with exit status) or busy elsewhere."""

    name: str
    state: str
    exit: int | None = None
    detail: str = ""  # the holder of a busy point, or where a failed point's log is


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to kill this child when the thread that started it dies (PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def point_argv(command: str, point: Point, out: Path, threads: int | None) -> list[str]:
    """The point's command line: `python -m lottery CMD SETTINGS --out OUT/NAME`, with the
    sweep's thread count unless the point sets its own."""
    argv = [sys.executable, "-m", "lottery", command, *point.argv(Path(out) / point.name)]
    if threads is not None and "threads" not in point.settings:
        argv += ["--threads", str(threads)]
    return argv


def run_point(
    out: str | Path,
    command: str,
    point: Point,
    threads: int | None = None,
    env: dict[str, str] | None = None,
    job: dict[str, Any] | None = None,
) -> Outcome:
    """Run one point to its end (resuming what an earlier attempt left) in a child process."""
    return run_points(out, command, [point], threads, env, job)[0]


COHORTS = ".cohorts"  # in a sweep folder: the stacked runs of `--batched` sweeps


def cohort(points: list[Point]) -> Point:
    """The one run that trains `points` (which differ only by `seed`) as one stacked model:
    `--seeds S1,S2,... --batched`, in SWEEP/.cohorts/NAME/seed_<s>/."""
    shared = {k: v for k, v in points[0].varying.items() if k != SEED}
    seeds = [p.settings[SEED] for p in points]
    settings = {k: v for k, v in points[0].settings.items() if k != SEED}
    name = point_name({**shared, SEED: seeds})
    return Point(f"{COHORTS}/{name}", {**settings, "seeds": seeds, "batched": True}, {})


def run_points(
    out: str | Path,
    command: str,
    points: list[Point],
    threads: int | None = None,
    env: dict[str, str] | None = None,
    job: dict[str, Any] | None = None,
) -> list[Outcome]:
    """Run one point, or several that differ only by `seed` as one stacked run (`cohort`), each
    point's folder then a link to its seed's folder in the cohort's."""
    out = Path(out)
    where = socket.gethostname() + (f" ({job['node']})" if job and job.get("node") else "")
    run = points[0] if len(points) == 1 else cohort(points)
    for folder in {out / run.name, *(out / p.name for p in points)}:
        who = lock_holder(folder / layout.LOCK)
        if who is not None:
            return [Outcome(p.name, BUSY, detail=who) for p in points]
    argv = point_argv(command, run, out, threads)
    started = time.time()
    log = log_path(out, run.name)
    attempts = 0
    for p in points:
        attempts = read_status(out, p.name).get("attempts", 0) + 1
        write_status(
            out, p.name, state=RUNNING, attempts=attempts, started=started, host=where,
            argv=argv[1:], **({"job": job} if job else {}),
            **({"cohort": run.name} if run.name != p.name else {}),
        )  # fmt: skip
        if p.name != run.name:  # a member of a cohort: its log says where the output goes
            with _opened(log_path(out, p.name)) as f:
                f.write(f"=== attempt {attempts}: trained in the cohort {run.name}, log {log}\n")
    child_env = {**os.environ, **(env or {}), layout.SWEEP_ENV: str(out.resolve())}
    if threads is not None:  # no thread pool larger than the point's share of the cores
        child_env.setdefault("OMP_NUM_THREADS", str(threads))
    with _opened(log) as f:
        f.write(f"=== attempt {attempts} on {where} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.write(" ".join(argv[1:]) + "\n")
        f.flush()
        proc = subprocess.run(
            argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=child_env, preexec_fn=_die_with_parent,
        )  # fmt: skip
    seconds = round(time.time() - started, 3)
    if proc.returncode == 2 and "is being written by" in _tail(log):
        for p in points:
            write_status(out, p.name, state=PENDING, exit=2)
        return [Outcome(p.name, BUSY, 2, "taken by another process") for p in points]
    state = DONE if proc.returncode == 0 else FAILED
    outcomes = []
    for p in points:
        if state == DONE and p.name != run.name and not os.path.lexists(out / p.name):
            seed_folder = layout.seed_dir(out / run.name, p.settings[SEED])
            (out / p.name).symlink_to(seed_folder.relative_to(out), target_is_directory=True)
        write_status(out, p.name, state=state, exit=proc.returncode, seconds=seconds)
        outcomes.append(Outcome(p.name, state, proc.returncode, detail=str(log)))
    return outcomes


def _opened(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("a")


def _tail(path: Path, size: int = 4096) -> str:
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - size))
        return f.read().decode(errors="replace")


def status_rows(out: str | Path) -> list[dict[str, Any]]:
    """One row per planned point: name, state, attempts, seconds, exit, executor job, log."""
    out = Path(out)
    points = planned_points(out)
    rows = []
    for p in points:
        state, status = point_state(out, p.name)
        job = status.get("job") or {}
        rows.append({
            "point": p.name, "state": state, "attempts": status.get("attempts", 0),
            "seconds": status.get("seconds"), "exit": status.get("exit"),
            "job": job.get("id") or job.get("node") or "", "host": status.get("host", ""),
            "log": str(log_path(out, p.name)) if log_path(out, p.name).exists() else "",
        })  # fmt: skip
    return rows


def status_table(rows: list[dict[str, Any]]) -> str:
    """The status rows as an aligned text table, then a line of counts per state."""
    columns = ("point", "state", "attempts", "seconds", "job", "log")
    cells = [[("" if r[c] is None else str(r[c])) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    counts = {s: sum(r["state"] == s for r in rows) for s in STATES}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" of {len(rows)} points")
    return "\n".join(lines)
