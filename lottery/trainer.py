"""The Trainer: step-based training with exact checkpoints, resume, rewind, masks and gradual pruning.

A run directory holds `config.json`, `metrics.jsonl`, `checkpoints/` and, once finished,
`result.json`. The state after step k (model, optimizer, LR schedule, mask, pruner, RNG) is a
checkpoint; the data order is a pure function of (data seed, step), so resuming from any checkpoint
replays exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from lottery import distributed
from lottery.config import NON_RESULT_FIELDS, ConfigError, TrainConfig
from lottery.data import BatchStream, Splits
from lottery.masks import Mask
from lottery.models import has_batchnorm
from lottery.optim import build_optimizer, build_scheduler
from lottery.storage import (
    CheckpointError,
    load_checkpoint,
    provenance,
    read_json,
    read_jsonl,
    save_checkpoint,
    write_json,
    write_jsonl,
)


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA where there is none is an error.

    Under torchrun a bare `cuda` means this process's own GPU, cuda:LOCAL_RANK.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} was asked for, but this machine has no usable CUDA GPU")
    return distributed.local_device(torch.device(name))


class Pruner(Protocol):
    """Gradual pruning hook: at its update steps it returns an extended mask."""

    update_steps: set[int]

    def update(self, step: int, model: nn.Module, mask: Mask) -> Mask: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class StartState:
    """Where training begins: weights, optimizer state (None: fresh) and the step to resume at."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None = None
    step: int = 0

    @classmethod
    def from_checkpoint(cls, path: str | Path, with_optimizer: bool = True) -> StartState:
        ck = load_checkpoint(path)
        return cls(ck["model"], ck["optimizer"] if with_optimizer else None, ck["step"])


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


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 2048,
    bf16: bool = False,
    sharded: bool = False,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over (x, y) in large batches, one host sync at the end.

    `sharded`: in a data-parallel run each rank scores its own slice and the sums are all-reduced.
    """
    n = len(x)
    if n == 0:
        return float("nan"), float("nan")
    if sharded:
        x, y = distributed.shard(x), distributed.shard(y)
    was_training = model.training
    model.eval()
    loss = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        with _autocast(x.device, bf16):
            out = model(xb)
        loss += F.cross_entropy(out.float(), yb, reduction="sum")
        correct += (out.argmax(1) == yb).sum()
    model.train(was_training)
    if sharded:
        loss, correct = distributed.all_reduce_sum(torch.stack([loss.double(), correct.double()]))
    return float(loss) / n, float(correct) / n


def check_fast_path(cfg: TrainConfig, device: torch.device) -> None:
    """CUDA-only switches are errors elsewhere, so a CPU run never silently differs."""
    if cfg.extra.get("cuda_graphs") and device.type != "cuda":
        raise ConfigError(f"--cuda-graphs needs a CUDA device; this run is on {device}")


def compiled(fn: Callable, cfg: TrainConfig) -> Callable:
    """`fn` under torch.compile for --compile; --cuda-graphs adds CUDA-graph replay
    (mode "reduce-overhead"), which pays off for small static-shape models bound by launches."""
    if cfg.extra.get("cuda_graphs"):
        return torch.compile(fn, mode="reduce-overhead")
    return torch.compile(fn) if cfg.compile else fn


def memory_format(model: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """Conv nets on CUDA use channels_last (faster tensor-core convs) unless --no-channels-last."""
    convs = any(p.dim() == 4 for p in model.parameters())
    if device.type == "cuda" and convs and cfg.extra.get("channels_last", True):
        return model.to(memory_format=torch.channels_last)
    return model


def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


class Trainer:
    """Trains one model in one run directory; `fit` resumes from the directory's last checkpoint."""

    def __init__(
        self,
        cfg: TrainConfig,
        data: Splits,
        model: nn.Module,
        run_dir: str | Path,
        *,
        mask: Mask | None = None,
        pruner: Pruner | None = None,
        progress: bool = True,
        record: dict[str, Any] | None = None,
        on_step: Callable[[int], None] | None = None,
    ):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.device = resolve_device(cfg.device)
        distributed.setup(self.device)
        if cfg.bf16 and self.device.type != "cuda":
            raise ConfigError("--bf16 autocast is for CUDA runs; CPU results stay in float32")
        check_fast_path(cfg, self.device)
        self.data = data.to(self.device)
        self.model = memory_format(model.to(self.device), cfg, self.device)
        self.stream = BatchStream(
            self.data.train_x,
            self.data.train_y,
            cfg.batch_size,
            cfg.data_seed,
            augment=self.data.augment,
            rank=distributed.rank(),
            world_size=distributed.world_size(),
        )
        self.total = cfg.total_steps(self.stream.steps_per_epoch)
        per_epoch = self.stream.steps_per_epoch
        self.eval_every = cfg.eval_every or per_epoch
        self.ckpt_every = cfg.checkpoint_every or per_epoch
        self.mask = mask.to(self.device) if mask is not None else None
        if self.mask is not None:
            self.mask.check_fits(self.model)
        self.pruner, self.on_step = pruner, on_step
        self.progress = progress and distributed.is_main()
        self.record = record or {}
        net = self._data_parallel() if distributed.world_size() > 1 else self.model
        self.forward = compiled(net, cfg)
        self.ckpt_dir = self.run_dir / "checkpoints"
        late = [s for s in cfg.save_at if s > self.total]
        if late:
            raise ConfigError(
                f"checkpoint steps {late} lie beyond the end of training ({self.total} steps)"
            )

    def _data_parallel(self) -> nn.Module:
        """DDP: averaging the ranks' gradients gives the single-process mean-loss gradient of the
        global batch; on CUDA, BatchNorm also takes its statistics over the global batch."""
        if self.device.type != "cuda" and has_batchnorm(self.model):
            raise ConfigError(
                "data-parallel BatchNorm models need CUDA, where SyncBatchNorm takes statistics "
                "over the global batch as one process would; on CPU train them in one process"
            )
        if self.device.type == "cuda":
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        with distributed.guard("wrapping the model in DistributedDataParallel"):
            return DistributedDataParallel(self.model, device_ids=ids)

    # -- state -------------------------------------------------------------------------------

    def _state(self, step: int, best: dict, tally: dict) -> dict[str, Any]:
        return {
            "step": step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "mask": self.mask.state() if self.mask is not None else None,
            "pruner": self.pruner.state_dict() if self.pruner is not None else None,
            "rng": torch.get_rng_state(),
            "best": best,
            "tally": tally,
            "fingerprint": self.fingerprint,
        }

    def _restore(self, ck: dict[str, Any]) -> None:
        if ck.get("fingerprint") != self.fingerprint:
            raise CheckpointError(
                f"{self.ckpt_dir / 'last.pt'} belongs to a run with another configuration; "
                "use a new --out directory or delete the old one"
            )
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        if ck["mask"] is not None:
            self.mask = Mask({n: t.to(self.device) for n, t in ck["mask"].items()})
        if self.pruner is not None and ck["pruner"] is not None:
            self.pruner.load_state_dict(ck["pruner"])
        torch.set_rng_state(ck["rng"])

    def _begin(self, start: StartState | None) -> int:
        """Set model/optimizer/scheduler to the start state; return the first step to run."""
        step = start.step if start is not None else 0
        if start is not None:
            self.model.load_state_dict(start.model)
        self.optimizer = build_optimizer(self.cfg, self.model)
        if start is not None and start.optimizer is not None:
            # a copy: load_state_dict keeps the given tensors, which training and masking change
            # in place, and one start state (θk) serves every round and control of a search
            self.optimizer.load_state_dict(copy.deepcopy(start.optimizer))
        self.scheduler = build_scheduler(self.cfg, self.optimizer, self.total, at_step=step)
        if self.mask is not None:
            self.mask.apply_(self.model, self.optimizer)
        return step

    def _write_config(self) -> None:
        path = self.run_dir / "config.json"
        if path.exists():
            old = read_json(path).get("fingerprint")
            if old != self.fingerprint:
                raise ConfigError(
                    f"{self.run_dir} already holds a run with another configuration "
                    f"(fingerprint {old} vs {self.fingerprint}); use a new --out directory"
                )
            return
        if not distributed.is_main():
            return
        write_json(
            {
                "config": self.cfg.to_dict(),
                "total_steps": self.total,
                "steps_per_epoch": self.stream.steps_per_epoch,
                "data": self.data.describe(),
                "parameters": sum(p.numel() for p in self.model.parameters()),
                "device": str(self.device),
                "world_size": distributed.world_size(),
                "fingerprint": self.fingerprint,
                **self.record,
                **provenance(),
            },
            path,
        )

    @property
    def fingerprint(self) -> str:
        return self.cfg.fingerprint(*NON_RESULT_FIELDS)

    # -- training ----------------------------------------------------------------------------

    def fit(self, start: StartState | None = None) -> TrainResult:
        """Train to the configured length, resuming from `checkpoints/last.pt` if present.

        In a data-parallel run every rank calls this; rank 0 alone writes the run directory.
        """
        with distributed.guard(f"training in {self.run_dir}"):
            return self._fit(start)

    def _fit(self, start: StartState | None) -> TrainResult:
        result_path = self.run_dir / "result.json"
        if distributed.from_main(result_path.exists()):
            self._write_config()  # refuses a finished run made with other settings
            return TrainResult.from_dict(read_json(result_path))
        step, best, tally = self._prepare(start)
        self._loop(step, best, tally, self.run_dir / "metrics.jsonl")
        return self._complete(best, tally)

    def _prepare(self, start: StartState | None) -> tuple[int, dict, dict]:
        """Write config.json, then resume from last.pt or begin at `start`: (step, best, tally)."""
        main = distributed.is_main()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        step = self._begin(start)
        # best-validation tracker and the running train-loss tally travel inside checkpoints
        best = {"step": None, "val_loss": None, "test_accuracy": None}
        tally = {"loss_sum": 0.0, "count": 0, "seconds": 0.0}
        metrics_path = self.run_dir / "metrics.jsonl"
        last = self.ckpt_dir / "last.pt"
        if distributed.from_main(last.exists()):
            ck = load_checkpoint(last, map_location=self.device)
            self._restore(ck)
            step, best, tally = ck["step"], ck["best"], ck["tally"]
            if main:
                kept = [r for r in read_jsonl(metrics_path) if r["step"] <= step]
                write_jsonl(kept, metrics_path)
        else:
            if main:
                write_jsonl([], metrics_path)
            if self.pruner is not None and step in self.pruner.update_steps:
                self._prune(step)
            self._checkpoint(step, best, tally)
            self._evaluate(step, best, tally, metrics_path)
        self._check_ranks_agree("at the start")
        return step, best, tally

    def _complete(self, best: dict, tally: dict) -> TrainResult:
        """Score the test set, write final.pt and result.json, and drop the resume checkpoint."""
        main = distributed.is_main()
        result_path = self.run_dir / "result.json"
        last = self.ckpt_dir / "last.pt"
        loss, acc = self._last_test  # the loop always evaluates at the final step
        result = TrainResult(
            steps=self.total,
            test_accuracy=acc,
            test_loss=loss,
            best_val_step=best["step"],
            best_val_loss=best["val_loss"],
            test_accuracy_at_best_val=best["test_accuracy"],
            density=self.mask.density() if self.mask is not None else 1.0,
            seconds=tally["seconds"],
        )
        self._check_ranks_agree("at the end")
        if main:
            save_checkpoint(self._state(self.total, best, tally), self.ckpt_dir / "final.pt")
            write_json(result.to_dict(), result_path)
            last.unlink(missing_ok=True)
        distributed.barrier(f"waiting for rank 0 to write {result_path}")
        return result

    def _check_ranks_agree(self, when: str) -> None:
        """In a data-parallel run, fail loudly unless every rank holds the same weights and mask."""
        if distributed.world_size() == 1:
            return
        state = {f"model {k}": v for k, v in self.model.state_dict().items()}
        if self.mask is not None:
            state.update({f"mask {k}": v for k, v in self.mask.tensors.items()})
        distributed.check_agree(state, f"weights and masks {when} of {self.run_dir}")

    def _loop(self, step: int, best: dict, tally: dict, metrics_path: Path) -> None:
        """The hot loop: batch slice, forward, backward, step, fused mask multiply."""
        model, opt, sched, stream = self.forward, self.optimizer, self.scheduler, self.stream
        bf16, on_step = self.cfg.bf16, self.on_step
        pruner_steps = self.pruner.update_steps if self.pruner is not None else set()
        save_at = set(self.cfg.save_at)
        self.model.train()
        masked = self._masked_lists()
        loss_sum = torch.zeros((), device=self.device)
        t0 = time.perf_counter()

        def flush(count: int) -> None:
            nonlocal t0
            world_loss = float(distributed.all_reduce_sum(loss_sum))
            tally["loss_sum"] += world_loss / distributed.world_size()
            tally["count"] += count
            tally["seconds"] += time.perf_counter() - t0
            loss_sum.zero_()
            t0 = time.perf_counter()

        count = 0
        bar = tqdm(
            total=self.total,
            initial=step,
            disable=not self.progress,
            desc=self.record.get("label", "train"),
            leave=False,
            mininterval=0.5,
        )
        graphs = bool(self.cfg.extra.get("cuda_graphs"))
        after_backward = getattr(self.pruner, "after_backward", None)
        tracked = [
            (n, p)
            for n, p in self.model.named_parameters()
            if after_backward is not None and (self.mask is None or n in self.mask.tensors)
        ]
        for s in range(step, self.total):
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            x, y = stream.batch(s)
            with _autocast(self.device, bf16):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if after_backward is not None:  # e.g. movement pruning's −Σ g·w (Sanh et al. 2020)
                after_backward(s, dict(tracked), {n: p.grad for n, p in tracked})
            opt.step()
            sched.step()
            if masked is not None:
                with torch.no_grad():
                    torch._foreach_mul_(masked[0], masked[1])
            loss_sum += loss.detach()
            count += 1
            bar.update(1)
            done = s + 1
            if done in pruner_steps:
                self._prune(done)
                masked = self._masked_lists()
            eval_due = done % self.eval_every == 0 or done == self.total
            ckpt_due = done % self.ckpt_every == 0 or done in save_at
            if eval_due or ckpt_due:
                flush(count)
                count = 0
            if eval_due:
                self._evaluate(done, best, tally, metrics_path)
            if ckpt_due:
                self._checkpoint(done, best, tally)
            if on_step is not None:
                on_step(done)
        bar.close()

    def _masked_lists(self) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        """Parameters and same-dtype float masks for the fused in-place multiply after each step."""
        if self.mask is None:
            return None
        params = dict(self.model.named_parameters())
        names = self.mask.names()
        return (
            [params[n] for n in names],
            [torch.empty_like(params[n]).copy_(self.mask.tensors[n]) for n in names],
        )

    def _prune(self, step: int) -> None:
        assert self.pruner is not None
        base = self.mask if self.mask is not None else Mask.ones(self.model)
        mask = self.pruner.update(step, self.model, base).to(self.device)
        self.mask = distributed.broadcast_mask(mask)
        self.mask.apply_(self.model, self.optimizer)

    def _checkpoint(self, step: int, best: dict, tally: dict) -> None:
        """Save a named checkpoint at --save-at steps and refresh last.pt (the resume point)."""
        if not distributed.is_main():
            return
        state = self._state(step, best, tally)
        if step in self.cfg.save_at:
            save_checkpoint(state, self.ckpt_dir / f"step_{step:07d}.pt")
        if 0 < step < self.total:  # step 0 is re-created exactly by starting afresh
            save_checkpoint(state, self.ckpt_dir / "last.pt")

    def _evaluate(self, step: int, best: dict, tally: dict, metrics_path: Path) -> None:
        d, bf16 = self.data, self.cfg.bf16
        val_loss, val_acc = evaluate(self.model, d.val_x, d.val_y, bf16=bf16, sharded=True)
        test_loss, test_acc = evaluate(self.model, d.test_x, d.test_y, bf16=bf16, sharded=True)
        if len(d.val_x) and (best["val_loss"] is None or val_loss < best["val_loss"]):
            best.update(step=step, val_loss=val_loss, test_accuracy=test_acc)
        rec = {
            "step": step,
            "epoch": step / self.stream.steps_per_epoch,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": tally["loss_sum"] / tally["count"] if tally["count"] else None,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "test_loss": test_loss,
            "test_accuracy": test_acc,
            "density": self.mask.density() if self.mask is not None else 1.0,
        }
        tally["loss_sum"], tally["count"] = 0.0, 0
        self._last_test = (test_loss, test_acc)
        if distributed.is_main():
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
