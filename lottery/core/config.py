"""Run configuration: one dataclass that fully determines a training run, plus its validation."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lottery.models import MODELS, is_known, recipe

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("constant", "step", "cosine", "one-cycle", "linear")


class ConfigError(ValueError):
    """A configuration value that cannot be used."""


def flag(default: Any = None, help: str = "", **meta: Any) -> Any:
    """A configuration field that is also a command-line flag (`lottery.cli.main.add_config_args`):
    its help, and `group`, `choices`, `paper` (unset: the model's paper default), `exclusive`."""
    if isinstance(default, tuple | dict):
        return field(default_factory=lambda: default, metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


# Training settings that no model's recipe names (see `lottery.models.Recipe`).
GENERIC: dict[str, Any] = {
    "batch_size": 128,
    "optimizer": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 0.0,
    "lr_schedule": "constant",
    "milestones": (),
    "gamma": 0.1,
    "warmup_steps": 0,
}
DEFAULT_EPOCHS = 2.0  # when neither steps nor epochs is given


def paper_defaults(model: str) -> dict[str, Any]:
    """The training settings the papers used for `model`: its registry recipe over GENERIC."""
    return {**GENERIC, **recipe(model).training}


DATA, TRAINING, RECORDS = (
    "data and model",
    "training (unset: the model's paper default)",
    ("records, seeds and device"),
)


@dataclass
class TrainConfig:
    """Everything that determines a training run; seeds for init, data order and split are separate.

    Training settings left None take the model's paper defaults (`paper_defaults`), so
    `TrainConfig(model="resnet20")` is exactly what `lottery train --model resnet20` records.
    """

    model: str = flag(
        "lenet_300_100",
        "registry name, lenet_<h1>_<h2>..., or any torchvision classifier",
        group=DATA,
    )
    dataset: str = flag("fashion_mnist", "dataset", group=DATA)
    data_root: str | None = flag(
        None,
        "folder holding the dataset files (default: $LOTTERY_DATA or ~/.cache/lottery/data; "
        "Fashion-MNIST also from Debian's dataset-fashion-mnist)",
        group=DATA,
    )
    val_size: int = flag(5000, "validation examples carved from the training set", group=DATA)
    train_limit: int | None = flag(None, "use only the first N training examples", group=DATA)
    test_limit: int | None = flag(None, "use only the first N test examples", group=DATA)
    width: int = flag(1, "width multiplier of the model's hidden layers", group=DATA)
    init: str | None = flag(
        None,
        "kaiming_normal, glorot_normal or default (model's paper default if unset)",
        group=DATA,
    )
    steps: int | None = flag(
        None, "training length in optimizer steps", group=TRAINING, exclusive="length"
    )
    epochs: float | None = flag(
        None,
        f"training length in epochs, converted to steps (default {DEFAULT_EPOCHS:g} if neither "
        "is given)",
        group=TRAINING,
        exclusive="length",
    )
    batch_size: int | None = flag(None, "examples per optimizer step", group=TRAINING, paper=True)
    optimizer: str | None = flag(None, "optimizer", group=TRAINING, paper=True, choices=OPTIMIZERS)
    lr: float | None = flag(None, "base learning rate", group=TRAINING, paper=True)
    momentum: float | None = flag(None, "SGD momentum", group=TRAINING, paper=True)
    nesterov: bool | None = flag(None, "Nesterov momentum (SGD)", group=TRAINING, paper=True)
    weight_decay: float | None = flag(None, "L2 weight decay", group=TRAINING, paper=True)
    betas: tuple[float, ...] = flag((0.9, 0.999), "Adam's beta1,beta2", group=TRAINING)
    lr_schedule: str | None = flag(
        None, "LR schedule", group=TRAINING, paper=True, choices=LR_SCHEDULES
    )
    milestones: tuple[float, ...] | None = flag(
        None,
        "LR x gamma at these steps (values < 1: fractions of training), comma-separated",
        group=TRAINING,
        paper=True,
    )
    gamma: float | None = flag(
        None, "LR decay factor at each milestone", group=TRAINING, paper=True
    )
    warmup_steps: int | None = flag(None, "linear LR warm-up length", group=TRAINING, paper=True)
    eval_every: int | None = flag(
        None, "evaluate every N steps (default: every epoch)", group=RECORDS
    )
    eval_batch: int | None = flag(
        None,
        "examples per evaluation batch (default: the largest power of two whose activations fit "
        "16 MiB on a CPU, i.e. its cache, or an eighth of the free GPU memory; 16 to 8192)",
        group=RECORDS,
    )
    skip_start_eval: bool = flag(
        False,
        "do not evaluate a fresh run at its first step: its records begin at the first "
        "evaluation due after it (saves a full validation and test pass on a short run)",
        group=RECORDS,
    )
    checkpoint_every: int | None = flag(
        None, "resume checkpoint every N steps (default: every epoch)", group=RECORDS
    )
    save_at: tuple[int, ...] = flag(
        (), "also keep checkpoints at these steps, e.g. 0,100,500", group=RECORDS
    )
    init_seed: int = flag(0, "seed of the initial weights", group=RECORDS)
    data_seed: int = flag(0, "seed of the data order and augmentation", group=RECORDS)
    split_seed: int = flag(0, "seed of the validation split", group=RECORDS)
    device: str = flag("auto", "where to train", group=RECORDS, choices=("auto", "cpu", "cuda"))
    threads: int | None = flag(
        None,
        "CPU threads for torch's intra-op work (default: one per 1e9 multiply-adds of a training "
        "step, at most the cores available, so small networks take one; a resumed run keeps the "
        "count it started with). CPU results are bit-identical only at the same thread count, "
        "which config.json records",
        group=RECORDS,
    )
    bf16: bool = flag(False, "bf16 autocast (CUDA only)", group=RECORDS)
    compile: bool = flag(False, "torch.compile the model", group=RECORDS)
    tensorboard: bool = flag(
        False,
        "also write TensorBoard event files to RUN/tensorboard/ (needs lottery[tensorboard])",
        group=RECORDS,
    )
    track: str | None = flag(
        None,
        "also log evaluations to these trackers, comma-separated: wandb (Weights & Biases, "
        "offline unless WANDB_MODE says otherwise; lottery[wandb]), mlflow (MLFLOW_TRACKING_URI, "
        "default a file store beside the run or sweep; lottery[mlflow]); one run each, grouped "
        "by sweep",
        group=RECORDS,
    )
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, _typed(f, getattr(self, f.name)))
        for name, value in paper_defaults(self.model).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.steps is None and self.epochs is None:
            self.epochs = DEFAULT_EPOCHS
        elif self.steps is not None and self.epochs is not None:
            raise ConfigError(
                f"give steps or epochs, not both (steps={self.steps}, epochs={self.epochs})"
            )
        self.milestones = tuple(float(m) for m in self.milestones)
        self.save_at = tuple(sorted({int(s) for s in self.save_at}))
        self.betas = tuple(float(b) for b in self.betas)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError on values no run could use."""
        if self.model.startswith("lenet") and not is_known(self.model):  # not a torchvision name
            raise ConfigError(
                f"unknown model {self.model!r}; a LeNet is lenet_<h1>[_<h2>...] (hidden widths, "
                f"e.g. lenet_300_100); registered models: {', '.join(MODELS)}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose from {OPTIMIZERS}")
        unknown = [t for t in (self.track or "").split(",") if t and t not in TRACKERS]
        if unknown:
            raise ConfigError(f"--track {self.track}: {unknown} not among {', '.join(TRACKERS)}")
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
        for name in ("eval_every", "eval_batch", "checkpoint_every", "threads"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"{name} must be >= 1, got {v}")

    def total_steps(self, steps_per_epoch: int) -> int:
        """Training length in optimizer steps; epochs are converted with the data's batches per epoch."""
        if self.steps is not None:
            return self.steps
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
    "eval_batch",
    "skip_start_eval",
    "checkpoint_every",
    "save_at",
    "data_root",
    "compile",
    "tensorboard",
    "threads",
    "track",
)
TRACKERS = ("wandb", "mlflow")  # what --track names (lottery.training.tracking)


def field_value(name: str, value: Any) -> Any:
    """`value` as TrainConfig's field `name` takes it (see `_typed`), or ConfigError."""
    return _typed(next(f for f in dataclasses.fields(TrainConfig) if f.name == name), value)


def _typed(f: dataclasses.Field, value: Any) -> Any:
    """`value` as field `f`'s declared type, so equal settings record (and fingerprint) alike
    whether they came from the command line or from Python (epochs=2 is epochs=2.0); a value of
    another kind is refused naming the field."""
    kinds = [k.strip() for k in str(f.type).split("|")]
    if value is None:
        if "None" in kinds:
            return None
        raise ConfigError(f"{f.name} must be set, got None")
    kind = kinds[0]
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if kind == "float":
        if not number:
            raise ConfigError(f"{f.name} must be a number, got {value!r}")
        return float(value)
    if kind == "int":
        if not number or not float(value).is_integer():
            raise ConfigError(f"{f.name} must be a whole number, got {value!r}")
        return int(value)
    if kind == "bool" and not isinstance(value, bool):
        raise ConfigError(f"{f.name} must be true or false, got {value!r}")
    if kind == "str" and not isinstance(value, str):
        raise ConfigError(f"{f.name} must be a string, got {value!r}")
    if kind.startswith("tuple"):
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise ConfigError(f"{f.name} must be a list, got {value!r}")
        return tuple(value)
    if kind.startswith("dict") and not isinstance(value, dict):
        raise ConfigError(f"{f.name} must be a mapping, got {value!r}")
    return value


def check_seeds(seeds: Sequence[int]) -> None:
    """Seeds of runs side by side: at least one, all distinct (each names its own folder)."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct and at least one, got {list(seeds)}")
