"""Live tracking: a run's evaluations as TensorBoard event files in RUN/tensorboard/, and in
Weights & Biases or MLflow runs.

One event folder per run, so `tensorboard --logdir SEARCH` shows a search's rounds and controls as
a group. Written through `torch.utils.tensorboard` (the optional extra `lottery[tensorboard]`).
W&B and MLflow (extras `lottery[wandb]`, `lottery[mlflow]`) get one run per lottery run, grouped by
the sweep it belongs to. Every tracker has `log(step, scalars)` and `close()`; metrics.jsonl stays
the record of truth.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from lottery.core import layout
from lottery.core.config import ConfigError
from lottery.core.storage import read_json, write_json


class TensorBoardTracker:
    """Writes scalars of one run; the writer opens at the first `log`, purging any events a killed
    run left at or after that step, so a resumed run's curves do not double back."""

    def __init__(self, run_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "--tensorboard needs the tensorboard package: pip install 'lottery[tensorboard]'"
            ) from None
        self.path = Path(run_dir) / layout.TENSORBOARD
        self._open = SummaryWriter
        self._writer = None

    def log(self, step: int, scalars: dict[str, float | None]) -> None:
        """Add each non-None scalar at `step` (tags like "accuracy/test") and flush."""
        if self._writer is None:
            self._writer = self._open(log_dir=str(self.path), purge_step=step)
        for tag, value in scalars.items():
            if value is not None:
                self._writer.add_scalar(tag, float(value), step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def evaluation_scalars(record: dict, layer_density: dict[str, float] | None) -> dict:
    """The scalars of one metrics.jsonl record: losses, accuracies and densities in %, the LR."""
    out = {
        "loss/train": record["train_loss"],
        "loss/val": record["val_loss"],
        "loss/test": record["test_loss"],
        "accuracy/val_pct": 100 * record["val_accuracy"],
        "accuracy/test_pct": 100 * record["test_accuracy"],
        "lr": record["lr"],
        "density/overall_pct": 100 * record["density"],
    }
    for name, d in (layer_density or {}).items():
        out[f"density/{name}_pct"] = 100 * d
    return out


def run_label(run_dir: Path) -> tuple[str, str | None]:
    """(run name, group): inside a sweep, the run's path under the sweep folder and the sweep's
    folder name; otherwise the run folder as given, and no group."""
    sweep = os.environ.get(layout.SWEEP_ENV)
    if sweep:
        with contextlib.suppress(ValueError):
            return str(Path(run_dir).resolve().relative_to(Path(sweep).resolve())), Path(sweep).name
    return str(run_dir), None


def _ids(run_dir: Path) -> dict[str, str]:
    path = Path(run_dir) / layout.TRACKER_IDS
    return read_json(path) if path.is_file() else {}


def _keep_id(run_dir: Path, tracker: str, run_id: str) -> None:
    """Remember a tracker's run id in the run folder, so a resumed run logs to the same run."""
    write_json({**_ids(run_dir), tracker: run_id}, Path(run_dir) / layout.TRACKER_IDS)


class WandbTracker:
    """Weights & Biases (`lottery[wandb]`): one W&B run per lottery run, grouped by sweep, offline
    (files under RUN/wandb/, `wandb sync` uploads them) unless WANDB_MODE says otherwise."""

    def __init__(self, run_dir: str | Path, config: dict[str, Any]):
        try:
            import wandb
        except ImportError:
            raise ConfigError("--track wandb needs wandb: pip install 'lottery[wandb]'") from None
        self.wandb, self.dir, self.config, self.run = wandb, Path(run_dir), config, None

    def log(self, step: int, scalars: dict[str, float | None]) -> None:
        if self.run is None:
            name, group = run_label(self.dir)
            run_id = _ids(self.dir).get("wandb") or secrets.token_hex(4)
            self.run = self.wandb.init(
                project=os.environ.get("WANDB_PROJECT", "lottery"), name=name, group=group,
                id=run_id, resume="allow", dir=str(self.dir), config=self.config,
                mode=os.environ.get("WANDB_MODE", "offline"), reinit="create_new",
            )  # fmt: skip
            _keep_id(self.dir, "wandb", run_id)
        self.run.log({k: v for k, v in scalars.items() if v is not None}, step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


class MlflowTracker:
    """MLflow (`lottery[mlflow]`): one MLflow run per lottery run in the experiment named for its
    sweep ("lottery" outside one), at MLFLOW_TRACKING_URI or a file store in SWEEP/mlruns (or
    RUN/mlruns for a run of its own)."""

    def __init__(self, run_dir: str | Path, config: dict[str, Any]):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ConfigError(
                "--track mlflow needs MLflow: pip install 'lottery[mlflow]'"
            ) from None
        self.dir, self.config, self.run_id = Path(run_dir), config, None
        self.client_class = MlflowClient

    def _start(self) -> None:
        name, group = run_label(self.dir)
        home = Path(os.environ.get(layout.SWEEP_ENV) or self.dir).resolve()
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if uri is None:  # a local file store: kept by MLflow 3 only when asked for by name
            uri = (home / "mlruns").as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = self.client_class(tracking_uri=uri)
        self.run_id = _ids(self.dir).get("mlflow")
        if self.run_id is None:
            exp_id = self._experiment(group or "lottery", home)
            tags = {"mlflow.runName": name, **({"lottery.sweep": group} if group else {})}
            self.run_id = self.client.create_run(exp_id, tags=tags).info.run_id
            for k, v in self.config.items():
                self.client.log_param(
                    self.run_id, k, json.dumps(v) if not isinstance(v, str) else v
                )
            _keep_id(self.dir, "mlflow", self.run_id)

    def _experiment(self, name: str, home: Path) -> str:
        """The id of experiment `name`, created if missing. The points of a sweep start side by
        side, so the look-up and creation hold a lock in the sweep folder: a file store would
        otherwise create the experiment twice."""
        import fcntl

        home.mkdir(parents=True, exist_ok=True)
        with (home / layout.MLFLOW_LOCK).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            found = self.client.get_experiment_by_name(name)
            return found.experiment_id if found else self.client.create_experiment(name)

    def log(self, step: int, scalars: dict[str, float | None]) -> None:
        from mlflow.entities import Metric

        if self.run_id is None:
            self._start()
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in scalars.items() if v is not None]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id)
            self.run_id = None


TRACKER_CLASSES = {"wandb": WandbTracker, "mlflow": MlflowTracker}


def open_trackers(run_dir: str | Path, tensorboard: bool, track: str | None, config: dict) -> list:
    """The trackers a run asked for (`--tensorboard`, `--track wandb,mlflow`), each with
    `log(step, scalars)` and `close()`; a missing extra is a ConfigError naming its install."""
    out: list = [TensorBoardTracker(run_dir)] if tensorboard else []
    return out + [TRACKER_CLASSES[t](run_dir, config) for t in (track or "").split(",") if t]
