"""Live tracking: a run's evaluations as TensorBoard event files in RUN/tensorboard/.

One event folder per run, so `tensorboard --logdir SEARCH` shows a search's rounds and controls as
a group. Written through `torch.utils.tensorboard` (the optional extra `lottery[tensorboard]`);
metrics.jsonl stays the record of truth.
"""

from __future__ import annotations

from pathlib import Path

from lottery.core import layout
from lottery.core.config import ConfigError


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
