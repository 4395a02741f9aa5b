"""Run layout: the name of every file and folder that `lottery` writes, and what a folder holds.

One place for these names (as OpenLTH keeps its paths in one module), so the writers, the readers
and the analyses agree. A *run* is one training run; a *search* is an IMP search (rounds of a
ticket and its controls); *seeds* is a folder of searches or runs, one per seed; a *sweep* is a
rewind-point comparison; an *at-init* study prunes at initialization at several sparsities; a
*grid* is a sweep folder of `lottery sweep`, one run folder per point.
"""

from __future__ import annotations

import re
from pathlib import Path

# A training run.
CONFIG = "config.json"  # settings, data, provenance and the fingerprint that guards resume
METRICS = "metrics.jsonl"  # one line per evaluation
RESULT = "result.json"  # written last: the run is finished when it exists
CHECKPOINTS = "checkpoints"
LAST = "last.pt"  # the resume point, removed once the run is finished
PREVIOUS = "previous.pt"  # the resume point before last.pt (stacked runs killed between writes)
FINAL = "final.pt"
MASK = "mask.npz"  # bit-packed mask (a round's, or a gradual-pruning run's final mask)
WEIGHTS = "weights.npz"  # final weights as sparse arrays with their mask
PRUNING_LOG = "pruning.jsonl"  # a gradual-pruning run's mask updates
LOCK = ".lock"  # held by the one process that writes the folder
TENSORBOARD = "tensorboard"  # optional event files (--tensorboard)
TRACKER_IDS = "trackers.json"  # the W&B and MLflow run ids of a run (--track), kept for resume
MLFLOW_LOCK = ".mlflow.lock"  # in a sweep (or run) folder: one MLflow experiment made at a time

# An IMP search.
IMP_RECORD = "imp.json"  # the search's full configuration
SUMMARY = "summary.json"  # per-round results, refreshed after every round
TICKET = "ticket"

# Other studies.
AT_INIT = "at_init.json"  # a pruning-at-initialization study's settings
AT_INIT_TABLE = "at_init.md"  # its mean ± std table over seeds
REWIND_SWEEP = "rewind_sweep.json"
DENSE = "dense"
INSTABILITY = "instability.json"
INSTABILITY_SETTINGS = "settings.json"
CURVE = "curve.json"
# A sweep (`lottery sweep`): one run folder per point, named from the settings that vary.
SWEEP_PLAN = "sweep.json"  # the sweep as given and every point it expanded to
SWEEP_LOGS = "logs"  # each point's output, one file per point, attempts appended
SWEEP_STATUS = "status"  # each point's state: running, done or failed, with its executor job
SWEEP_ENV = "LOTTERY_SWEEP"  # set for each point's process: its sweep folder (trackers group by it)
SPEED = "speed.json"  # `lottery speed`: inference timings per export route
ALIGNMENT = "alignment.json"  # `lottery align`: the permutations that took run B onto run A
EARLY_BIRD = "early_bird.jsonl"  # `imp --early-bird`: mask distances during dense training
SPEED_FIGURE = "speed_vs_sparsity"  # its figure (extension from --format)

_ROUND = re.compile(r"round_(\d+)")
_SEED = re.compile(r"seed_(-?\d+)")
_REWIND = re.compile(r"rewind_(\d+)")
_STEP = re.compile(r"step_(\d+)\.pt")


def checkpoint_dir(run: Path) -> Path:
    return Path(run) / CHECKPOINTS


def step_checkpoint(run: Path, step: int) -> Path:
    """The checkpoint a run keeps at `step` (`--save-at`)."""
    return checkpoint_dir(run) / f"step_{step:07d}.pt"


def saved_steps(run: Path) -> list[int]:
    """The steps at which a run kept named checkpoints."""
    found = (_STEP.fullmatch(p.name) for p in checkpoint_dir(run).glob("step_*.pt"))
    return sorted(int(m.group(1)) for m in found if m)


def round_dir(search: Path, r: int) -> Path:
    return Path(search) / f"round_{r:02d}"


def ticket_dir(search: Path, r: int) -> Path:
    return round_dir(search, r) / TICKET


def control_dir(round_folder: Path, control: str) -> Path:
    """A control's run beside a round's ticket (`random-reinit` lives in `random_reinit/`)."""
    return Path(round_folder) / control.replace("-", "_")


def seed_dir(out: Path, seed: int) -> Path:
    return Path(out) / f"seed_{seed}"


def rewind_dir(out: Path, step: int) -> Path:
    return Path(out) / f"rewind_{step:07d}"


def sparsity_dir(out: Path, sparsity: float) -> Path:
    """An at-init study's folder for one sparsity (its mask, the pruned run and the controls)."""
    return Path(out) / f"sparsity_{sparsity:.4f}"


def _numbered(folder: Path, pattern: re.Pattern, require: str | None = None) -> list[Path]:
    """Sub-folders named by `pattern` (holding `require`, if given), in numeric order."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and pattern.fullmatch(p.name)]
    found = [p for p in found if require is None or (p / require).exists()]
    return sorted(found, key=lambda p: int(pattern.fullmatch(p.name).group(1)))


def round_dirs(search: Path) -> list[Path]:
    """A search's round folders that hold a mask, in round order."""
    return _numbered(search, _ROUND, MASK)


def round_number(path: Path) -> int:
    return int(_ROUND.fullmatch(Path(path).name).group(1))


def seed_dirs(out: Path) -> list[Path]:
    """The per-seed folders under `out`, in seed order."""
    return _numbered(out, _SEED)


def seed_number(path: Path) -> int:
    return int(_SEED.fullmatch(Path(path).name).group(1))


def rewind_dirs(out: Path) -> list[Path]:
    return _numbered(out, _REWIND)


def is_run(path: Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def is_search(path: Path) -> bool:
    return (Path(path) / IMP_RECORD).is_file()


def kind(path: Path) -> str | None:
    """What a folder holds: run, search, seeds, sweep (of rewind points), instability, curve,
    at-init, grid (of `lottery sweep`); or None."""
    path = Path(path)
    if (path / SWEEP_PLAN).exists():
        return "grid"
    if (path / REWIND_SWEEP).exists():
        return "sweep"
    if (path / INSTABILITY).exists():
        return "instability"
    if (path / CURVE).exists():
        return "curve"
    if (path / AT_INIT).exists():
        return "at-init"
    if is_search(path):
        return "search"
    if is_run(path):
        return "run"
    if seed_dirs(path):
        return "seeds"
    return None
