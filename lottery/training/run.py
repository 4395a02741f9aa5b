"""One run's bookkeeping: its folder, records, checkpoints, best-validation tracking and resume.

A run folder holds config.json, metrics.jsonl, checkpoints/ and, once finished, result.json
(names in `lottery.core.layout`). The state after step k (weights, optimizer, LR schedule, mask,
pruner, RNG, best-validation and loss tallies) is a checkpoint; the data order is a pure function
of (data seed, step), so resuming from any checkpoint replays exactly what an uninterrupted run
would have done. In a data-parallel run rank 0 alone writes.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from lottery.core import distributed, layout, storage
from lottery.core.batches import BatchStream
from lottery.core.config import ConfigError, TrainConfig
from lottery.core.device import (
    available_cores,
    check_fast_path,
    check_threads,
    default_threads,
    eval_batch_size,
    place,
)
from lottery.datasets.loading import Splits
from lottery.models.compute import Profile
from lottery.models.compute import profile as network_profile
from lottery.pruning.masks import Mask, save_sparse
from lottery.pruning.pruner import Pruner
from lottery.training.runfolder import check_identity, run_identity, settings_digest
from lottery.training.tracking import evaluation_scalars, open_trackers

log = logging.getLogger("lottery")


@dataclass
class StartState:
    """Where training begins: weights, optimizer state (None: fresh) and the step to resume at."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None = None
    step: int = 0

    @classmethod
    def from_checkpoint(cls, path: str | Path, with_optimizer: bool = True) -> StartState:
        ck = storage.load_checkpoint(path)
        return cls(ck["model"], ck["optimizer"] if with_optimizer else None, ck["step"])


class Stopper(Protocol):
    """Ends a run before its configured length: at its `due` steps the engine calls `observe`
    with the live model, and stops training (evaluating there) where it answers True. Its state
    travels in checkpoints (see `lottery.pruning.early_bird.EarlyBird`)."""

    def due(self, step: int) -> bool: ...

    def observe(self, step: int, model: nn.Module) -> bool: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class Finish:
    """How a finished run keeps its weights beside result.json: as sparse `weights.npz` with its
    mask (`weights`), the mask also as `mask.npz` (`mask_file`), and final.pt dropped unless
    `keep_checkpoint`. Applied once, from final.pt, by the run itself."""

    weights: bool = True
    keep_checkpoint: bool = False
    mask_file: bool = False


@dataclass
class RunSpec:
    """One run to train: its settings, folder, model (any module of the configured architecture),
    optional fixed mask or gradual pruner, start state, extra fields for config.json, and how it
    keeps its weights when finished (None: final.pt); a `stopper` may end it early."""

    cfg: TrainConfig
    run_dir: Path
    model: nn.Module
    mask: Mask | None = None
    start: StartState | None = None
    record: dict[str, Any] = field(default_factory=dict)
    pruner: Pruner | None = None
    finish: Finish | None = None
    stopper: Stopper | None = None


@dataclass
class TrainResult:
    """Summary of a finished run (also written to result.json)."""

    steps: int
    test_accuracy: float
    test_loss: float
    best_val_step: int | None
    best_val_loss: float | None
    test_accuracy_at_best_val: float | None
    density: float
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "extra"}
        return {**d, **self.extra}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainResult:
        names = set(cls.__dataclass_fields__) - {"extra"}
        return cls(**{k: d[k] for k in names}, extra={k: v for k, v in d.items() if k not in names})


@dataclass
class Best:
    """The evaluation with the lowest validation loss so far: its step and test accuracy there."""

    step: int | None = None
    val_loss: float | None = None
    test_accuracy: float | None = None

    def offer(self, step: int, val_loss: float, test_accuracy: float) -> None:
        if self.val_loss is None or val_loss < self.val_loss:
            self.step, self.val_loss, self.test_accuracy = step, val_loss, test_accuracy


@dataclass
class Ledger:
    """Training multiply-accumulates charged up to `step`: of the dense network and of the one
    the run's mask leaves, step by step as the mask changes (`lottery.models.compute`)."""

    step: int = 0
    dense: int = 0
    masked: int = 0


@dataclass
class Tally:
    """Training loss summed since the last evaluation, and the run's seconds of training so far."""

    loss_sum: float = 0.0
    count: int = 0
    seconds: float = 0.0


def run_length(cfg: TrainConfig, data: Splits) -> tuple[int, int]:
    """(total steps, steps per epoch) of the run `cfg` describes on `data`, as the Trainer counts."""
    per_epoch = BatchStream(
        data.train_x, data.train_y, cfg.batch_size, cfg.data_seed
    ).steps_per_epoch
    return cfg.total_steps(per_epoch), per_epoch


def check_fits_training(cfg: TrainConfig, total: int) -> None:
    """Settings that must fall within a run of `total` steps, or within the machine: checkpoint
    steps, LR milestones (in steps) and warm-up, which would never happen; the thread count, at
    which torch crashes when absurd. Every study checks them before it writes anything."""
    late = sorted(s for s in cfg.save_at if s > total)
    if late:
        raise ConfigError(f"checkpoint steps {late} lie beyond the end of training ({total} steps)")
    late = [m for m in cfg.milestones if m >= 1 and m > total]
    if late:
        raise ConfigError(f"LR milestones {late} lie beyond the end of training ({total} steps)")
    if cfg.warmup_steps > total:
        raise ConfigError(
            f"--warmup-steps {cfg.warmup_steps} is longer than training ({total} steps)"
        )
    check_threads(cfg.threads)


def keep_previous(last: Path, previous: Path) -> None:
    """Make `previous` the checkpoint `last` holds now, without `last` ever going missing: a hard
    link (no copy) swapped in atomically; a copy where the file system has no hard links. The
    name of the link while it is made is one `clean_leftovers` removes after a kill."""
    link = previous.with_name(f".{previous.name}.hardlink.tmp")
    link.unlink(missing_ok=True)
    try:
        os.link(last, link)
    except OSError:
        shutil.copyfile(last, link)
    os.replace(link, previous)


def check_resumable(run_dir: Path, cfg: TrainConfig, digest: str, finished: bool) -> dict:
    """The run's config.json record ({} for a new run), after refusing to resume an unfinished
    run on other data than it started with, or at another --threads (both change its numbers; a
    finished run only reads its records back). Fields a record lacks (older runs) pass."""
    path = run_dir / layout.CONFIG
    record = storage.read_json(path) if path.exists() else {}
    if finished:
        return record
    if record.get("data_digest") not in (None, digest):
        raise ConfigError(
            f"{run_dir} started on other data (digest {record['data_digest']}, now {digest}): "
            "the dataset files or --data-root changed; restore them or use a new --out"
        )
    threads = record.get("threads")
    if threads and cfg.threads not in (None, threads):
        raise ConfigError(
            f"{run_dir} started training with {threads} CPU threads; resuming it with "
            f"--threads {cfg.threads} would change its results (omit --threads or pass "
            f"--threads {threads})"
        )
    return record


class Run:
    """A run's settings and folder, and everything it writes there; the engine does the training."""

    def __init__(self, spec: RunSpec, data: Splits, device: torch.device):
        self.spec, self.cfg, self.dir = spec, spec.cfg, Path(spec.run_dir)
        check_fast_path(self.cfg, device)
        self.record, self.pruner, self.stopper = spec.record, spec.pruner, spec.stopper
        self.stream = BatchStream(
            data.train_x,
            data.train_y,
            self.cfg.batch_size,
            self.cfg.data_seed,
            augment=data.augment,
            rank=distributed.rank(),
            world_size=distributed.world_size(),
        )
        self.per_epoch = self.stream.steps_per_epoch
        self.total = self.cfg.total_steps(self.per_epoch)
        self.eval_every = self.cfg.eval_every or self.per_epoch
        self.ckpt_every = self.cfg.checkpoint_every or self.per_epoch
        self.save_at = set(self.cfg.save_at)
        check_fits_training(self.cfg, self.total)
        self.model = place(spec.model, self.cfg, device)
        self.mask = spec.mask.to(device) if spec.mask is not None else None
        if self.mask is not None:
            self.mask.check_fits(self.model)
        self.data_description = data.describe()
        self.data_digest = data.digest
        self.device = device
        recorded = check_resumable(self.dir, self.cfg, data.digest, self.finished())
        # --threads, else the count this run started with (so a resumed run continues exactly),
        # else one chosen from the network's size and the machine
        self.threads = (
            self.cfg.threads
            or recorded.get("threads")
            or default_threads(spec.model, data.input_shape, self.cfg.batch_size)
        )
        self.identity = run_identity(self.cfg, self.mask)  # settings and the mask's content
        self.fingerprint = self.identity.fingerprint
        check_identity(self.dir, self.identity)  # a folder holding another run: refused unchanged
        self.best, self.tally, self.ledger = Best(), Tally(), Ledger()
        self.shape = (tuple(data.input_shape), data.num_classes)
        self.metrics = self.dir / layout.METRICS
        self.trackers = (
            open_trackers(self.dir, self.cfg.tensorboard, self.cfg.track, self.cfg.to_dict())
            if distributed.is_main()
            else []
        )
        self.last = layout.checkpoint_dir(self.dir) / layout.LAST
        self.previous = layout.checkpoint_dir(self.dir) / layout.PREVIOUS
        self.writer = storage.Writer()

    # -- records -------------------------------------------------------------------------------

    def finished(self) -> bool:
        return distributed.from_main((self.dir / layout.RESULT).exists())

    def stored_result(self) -> TrainResult:
        """A finished run's result (a folder made with other settings is refused); a run that an
        older release finished (keeping final.pt until its study compacted it) is finished now."""
        self.write_config()
        if distributed.is_main():
            self.finish_files()
        distributed.barrier(f"waiting for rank 0 to finish {self.dir}")
        return TrainResult.from_dict(storage.read_json(self.dir / layout.RESULT))

    def finish_files(self, state: dict[str, Any] | None = None) -> None:
        """Apply the spec's Finish to final.pt, whose content is `state` when the caller has it
        (nothing without a Finish, or once done)."""
        finish, final = self.spec.finish, layout.checkpoint_dir(self.dir) / layout.FINAL
        if finish is None or not final.exists():
            return
        done = (not finish.weights or (self.dir / layout.WEIGHTS).exists()) and (
            not finish.mask_file or (self.dir / layout.MASK).exists()
        )
        if done and finish.keep_checkpoint:
            return
        state = state if state is not None else storage.load_checkpoint(final)
        mask = Mask(state["mask"]) if state.get("mask") is not None else Mask.ones(self.model)
        mask = mask.cpu()
        if finish.mask_file:
            mask.save(self.dir / layout.MASK)
        if finish.weights:
            save_sparse(state["model"], mask, self.dir / layout.WEIGHTS)
        if not finish.keep_checkpoint:
            final.unlink()

    def write_config(self) -> None:
        """config.json, once; a folder holding another run is refused, naming what differs."""
        path = self.dir / layout.CONFIG
        if path.exists():
            check_identity(self.dir, self.identity)
            return
        if not distributed.is_main():
            return
        storage.write_json(
            {
                "config": self.cfg.to_dict(),
                "config_digest": settings_digest(self.cfg.to_dict()),
                "total_steps": self.total,
                "steps_per_epoch": self.per_epoch,
                "data": self.data_description,
                "parameters": sum(p.numel() for p in self.model.parameters()),
                "device": str(self.device),
                "world_size": distributed.world_size(),
                "threads": self.threads,
                "eval_batch": self.eval_batch,
                "data_digest": self.data_digest,
                "fingerprint": self.fingerprint,
                "mask_digest": self.identity.mask_digest,
                **self.record,
                **storage.provenance(),
            },
            path,
        )

    def resume_points(self) -> dict[int, Path]:
        """The steps this run could resume at: last.pt's and the one before it (kept so that
        stacked runs killed between their checkpoint writes can resume from one step)."""
        points = {}
        for path in (self.previous, self.last):  # last wins where both hold one step
            if distributed.from_main(path.exists()):
                points[int(storage.load_checkpoint(path)["step"])] = path
        return points

    def open(self, at: int | None = None) -> dict[str, Any] | None:
        """Create the folder and config.json; return the resume checkpoint if there is one (the
        one at step `at` when given, else the latest)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        if at is not None:
            path = self.resume_points()[at]
        else:
            path = self.last if distributed.from_main(self.last.exists()) else None
        if path is None:
            if distributed.is_main():
                storage.write_jsonl([], self.metrics)
            return None
        ck = storage.load_checkpoint(path, map_location=self.device)
        if ck.get("fingerprint") != self.fingerprint:
            raise storage.CheckpointError(
                f"{path} belongs to a run with another configuration; "
                "use a new --out directory or delete the old one"
            )
        self.best, self.tally = Best(**ck["best"]), Tally(**ck["tally"])
        self.ledger = Ledger(**ck["ledger"]) if "ledger" in ck else Ledger(ck["step"])
        if ck["mask"] is not None:
            self.mask = Mask({n: t.to(self.device) for n, t in ck["mask"].items()})
        if self.pruner is not None and ck["pruner"] is not None:
            self.pruner.load_state_dict(ck["pruner"])
        if self.stopper is not None and ck.get("stopper") is not None:
            self.stopper.load_state_dict(ck["stopper"])
        torch.set_rng_state(ck["rng"])
        if distributed.is_main():
            log.info(f"{self.dir}: resuming from step {ck['step']}")
            storage.write_jsonl(
                [r for r in storage.read_jsonl(self.metrics) if r["step"] <= ck["step"]],
                self.metrics,
            )
        return ck

    def density(self) -> float:
        """The mask's density; a model that masks itself (a supermask) reports its own."""
        if self.mask is not None:
            return self.mask.density()
        own = getattr(self.model, "density", None)
        return own() if callable(own) else 1.0

    @functools.cached_property
    def eval_batch(self) -> int:
        """Examples per evaluation batch: --eval-batch, else the largest that fits the device."""
        return self.cfg.eval_batch or eval_batch_size(self.model, self.shape[0], self.device)

    @functools.cached_property
    def eval_workers(self) -> int:
        """Threads an evaluation may score batches on: the CPU cores available over the run's
        thread count (one on a GPU or in a data-parallel run)."""
        if self.device.type != "cpu" or distributed.world_size() > 1:
            return 1
        return max(1, available_cores() // self.threads)

    @functools.cached_property
    def profile(self) -> Profile:
        """The network's MAC counts, made on first use (a finished run read back needs none)."""
        return network_profile(self.cfg.model, *self.shape, self.cfg.width)

    def kept(self) -> dict[str, int] | None:
        """Each masked layer's kept weights (None: dense), also of a model that masks itself."""
        own = getattr(self.model, "mask", None)
        mask = self.mask if self.mask is not None else own() if callable(own) else None
        return None if mask is None else {n: k for n, (k, _) in mask.layer_counts().items()}

    def charge(self, step: int) -> None:
        """Add the training MACs of the steps since the last charge, under the mask in force
        (call before the mask changes, and at the end). A supermask computes every weight's
        gradient for its scores."""
        examples = (step - self.ledger.step) * self.cfg.batch_size
        scores = callable(getattr(self.model, "mask", None))
        self.ledger.dense += examples * self.profile.training()
        self.ledger.masked += examples * self.profile.training(self.kept(), scores)
        self.ledger.step = step

    def compute(self) -> dict[str, int]:
        """The run's compute ledger: training MACs so far (dense network, masked one) and one
        example's inference MACs and parameters (dense, effective)."""
        kept = self.kept()
        return {
            "train_macs": self.ledger.masked,
            "train_macs_dense": self.ledger.dense,
            "inference_macs": self.profile.forward(kept),
            "inference_macs_dense": self.profile.forward(),
            "parameters": self.profile.effective_parameters(kept),
            "parameters_dense": self.profile.parameters,
        }

    def restart_best(self) -> None:
        """Forget the best evaluation so far: a pruning update changed the mask, so a gradual run's
        "at min. validation loss" is taken among evaluations at its final sparsity only."""
        self.best = Best()

    def log(
        self, step: int, lr: float, val: tuple[float, float], test: tuple[float, float]
    ) -> dict:
        """Record one evaluation (val and test (loss, accuracy)) in metrics.jsonl; track the best."""
        (val_loss, val_acc), (test_loss, test_acc) = val, test
        if self.data_description["val_size"]:
            self.best.offer(step, val_loss, test_acc)
        t = self.tally
        rec = {
            "step": step,
            "epoch": step / self.per_epoch,
            "lr": lr,
            "train_loss": t.loss_sum / t.count if t.count else None,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "test_loss": test_loss,
            "test_accuracy": test_acc,
            "density": self.density(),
        }
        t.loss_sum, t.count = 0.0, 0
        self.last_test = (test_loss, test_acc)
        if distributed.is_main():
            with open(self.metrics, "a") as f:
                f.write(json.dumps(rec) + "\n")
        if self.trackers:
            density = self.mask.layer_density() if self.mask is not None else None
            for tracker in self.trackers:
                tracker.log(step, evaluation_scalars(rec, density))
        return rec

    # -- checkpoints ---------------------------------------------------------------------------

    def eval_due(self, done: int) -> bool:
        return done % self.eval_every == 0 or done == self.total

    def checkpoint_due(self, done: int) -> bool:
        return done % self.ckpt_every == 0 or done in self.save_at

    def state(self, step: int, model: dict, optimizer: dict, scheduler: dict) -> dict[str, Any]:
        """Everything a checkpoint holds, given the engine's model/optimizer/scheduler states."""
        return {
            "step": step,
            "model": model,
            "optimizer": optimizer,
            "scheduler": scheduler,
            "mask": self.mask.state() if self.mask is not None else None,
            "pruner": self.pruner.state_dict() if self.pruner is not None else None,
            "stopper": self.stopper.state_dict() if self.stopper is not None else None,
            "rng": torch.get_rng_state(),
            "best": asdict(self.best),
            "tally": asdict(self.tally),
            "ledger": asdict(self.ledger),
            "fingerprint": self.fingerprint,
        }

    def checkpoint(self, step: int, state: dict[str, Any]) -> None:
        """Keep a named checkpoint at --save-at steps and refresh last.pt (the resume point),
        written in the background from a copy taken now (`wait_for_writes` waits for them)."""
        named, resume = step in self.save_at, 0 < step < self.total  # step 0: start afresh
        if distributed.is_main() and (named or resume):
            self.writer.submit(self.write_checkpoint, step, storage.snapshot(state), named, resume)

    def write_checkpoint(self, step: int, state: dict[str, Any], named: bool, resume: bool) -> None:
        """Write one checkpoint (on the writer's thread): the --save-at file, last.pt, or both."""
        if named:
            storage.save_checkpoint(state, layout.step_checkpoint(self.dir, step))
        if resume:
            if self.last.exists():
                keep_previous(self.last, self.previous)
            storage.save_checkpoint(state, self.last)

    def wait_for_writes(self) -> None:
        """Return once every checkpoint asked for is on disk."""
        self.writer.wait()

    def complete(self, state: dict[str, Any]) -> TrainResult:
        """Write final.pt (kept as the spec's Finish says) and result.json, and drop the resume
        checkpoint. `state` is the last step's (the configured length, or where a stopper ended
        the run)."""
        self.wait_for_writes()
        state = storage.snapshot(state)  # the live tensors, or views into a stacked cohort's
        loss, acc = self.last_test  # the engine always evaluates at the final step
        b = self.best
        self.charge(state["step"])
        result = TrainResult(
            steps=state["step"],
            test_accuracy=acc,
            test_loss=loss,
            best_val_step=b.step,
            best_val_loss=b.val_loss,
            test_accuracy_at_best_val=b.test_accuracy,
            density=self.density(),
            seconds=self.tally.seconds,
            extra={"compute": self.compute()},
        )
        if distributed.is_main():
            storage.save_checkpoint(state, layout.checkpoint_dir(self.dir) / layout.FINAL)
            self.finish_files(state)
            storage.write_json(result.to_dict(), self.dir / layout.RESULT)
            self.last.unlink(missing_ok=True)
            self.previous.unlink(missing_ok=True)
        for tracker in self.trackers:
            tracker.close()
        distributed.barrier(f"waiting for rank 0 to write {self.dir / layout.RESULT}")
        return result
