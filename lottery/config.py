"""Run configuration: one dataclass that fully determines a training run, plus its validation."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("constant", "step", "cosine", "one-cycle", "linear")


class ConfigError(ValueError):
    """A configuration value that cannot be used."""


@dataclass
class TrainConfig:
    """Everything that determines a training run; seeds for init, data order and split are separate."""

    model: str = "lenet_300_100"
    dataset: str = "fashion_mnist"
    data_root: str | None = None
    val_size: int = 5000
    train_limit: int | None = None
    test_limit: int | None = None
    width: int = 1
    init: str | None = None
    # Length: give steps or epochs (epochs are converted with the dataset's steps per epoch).
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    lr_schedule: str = "constant"
    milestones: tuple[float, ...] = ()  # steps; values in (0, 1) are fractions of training
    gamma: float = 0.1
    warmup_steps: int = 0
    # Evaluation and checkpoints, in steps (None: once per epoch).
    eval_every: int | None = None
    checkpoint_every: int | None = None
    save_at: tuple[int, ...] = ()
    init_seed: int = 0
    data_seed: int = 0
    split_seed: int = 0
    device: str = "auto"
    bf16: bool = False
    compile: bool = False
    tensorboard: bool = False  # also write TensorBoard event files (JSONL stays the record)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.milestones = tuple(float(m) for m in self.milestones)
        self.save_at = tuple(sorted({int(s) for s in self.save_at}))
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError on values no run could use."""
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose from {OPTIMIZERS}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(
                f"unknown LR schedule {self.lr_schedule!r}; choose from {LR_SCHEDULES}"
            )
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu or cuda[:N], not {self.device!r}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.epochs is not None and not (math.isfinite(self.epochs) and self.epochs > 0):
            raise ConfigError(f"--epochs must be a finite number > 0, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr must be a finite number > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:  # also refuses NaN
            raise ConfigError(f"--momentum must be in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(
                f"--weight-decay must be a finite number >= 0, got {self.weight_decay}"
            )
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"Adam betas must be two numbers in [0, 1), got {self.betas}")
        if not (math.isfinite(self.gamma) and self.gamma > 0):
            raise ConfigError(f"--gamma must be a finite number > 0, got {self.gamma}")
        if self.warmup_steps < 0:
            raise ConfigError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if not all(math.isfinite(m) and m > 0 for m in self.milestones):
            raise ConfigError(f"LR milestones must be > 0, got {self.milestones}")
        if any(s < 0 for s in self.save_at):
            raise ConfigError(f"save-at steps must be >= 0, got {self.save_at}")
        for name in ("eval_every", "checkpoint_every"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"{name} must be >= 1, got {v}")

    def total_steps(self, steps_per_epoch: int) -> int:
        """Training length in optimizer steps; epochs are converted with the data's batches per epoch."""
        if self.steps is not None:
            return self.steps
        if self.epochs is None:
            raise ConfigError("give the training length as steps or epochs")
        return max(1, round(self.epochs * steps_per_epoch))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of every field."""
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        d["save_at"] = list(self.save_at)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of to_dict; unknown keys are an error so typos do not pass silently."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown configuration keys: {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def fingerprint(self, *ignore: str) -> str:
        """Short hash of the fields that change results, to refuse resuming a different run."""
        d = {k: v for k, v in self.to_dict().items() if k not in ignore}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# Fields that do not change the numbers a run produces (where and how often it reports or saves).
NON_RESULT_FIELDS = (
    "device",
    "eval_every",
    "checkpoint_every",
    "save_at",
    "data_root",
    "compile",
    "tensorboard",
)


def check_seeds(seeds: Sequence[int]) -> None:
    """Seeds of runs side by side: at least one, all distinct (each names its own folder)."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct and at least one, got {list(seeds)}")
