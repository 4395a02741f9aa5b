"""The training engine: one step loop for one run or many, with explicit hooks.

`train_runs(specs, data, batched=...)` trains every run: one by one, each as a plain module, or
(`batched`) each cohort of runs that can share an optimizer as one stacked, vmapped model
(`lottery.training.stacked`). Every run keeps its own init, data order, mask, gradual pruner and records
(`lottery.training.run`), laid out exactly as a separate run's, so either mode resumes the other's folders.

The loop: batch, forward, backward, [after-backward hooks], optimizer and LR step, the fused mask
multiply, [after-step hooks]; then, where due, each copy's pruning update, evaluation and
checkpoint, each with its hook. K = 1 runs the plain module and is bit-for-bit the single-run
trainer; a run's `seconds` is its share (1/K) of the cohort's wall time. A single run's
start-of-run evaluation goes on beside its first steps where a CPU core is idle (`StartRecord`).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from lottery.core import distributed
from lottery.core.config import ConfigError
from lottery.core.device import autocast, resolve_device, run_threads
from lottery.core.optim import Optimizer
from lottery.datasets.loading import Splits
from lottery.pruning.masks import Mask
from lottery.training.run import Run, RunSpec, StartState, TrainResult
from lottery.training.stacked import SingleCopy, StackedCopies, evaluate

Copies = SingleCopy | StackedCopies


@dataclass
class Hooks:
    """Callbacks at the loop's fixed points: after backward and after the optimizer step (with the
    step just done), at each copy's evaluation (its metrics record), checkpoint and pruning update."""

    after_backward: list[Callable[[int], None]] = field(default_factory=list)
    after_step: list[Callable[[int], None]] = field(default_factory=list)
    at_evaluation: list[Callable[[Run, dict], None]] = field(default_factory=list)
    at_checkpoint: list[Callable[[Run, int], None]] = field(default_factory=list)
    at_pruning: list[Callable[[Run, int, Mask], None]] = field(default_factory=list)


def begin(
    run: Run, start: StartState | None, data: Splits, hooks: Hooks, at: int | None = None
) -> tuple[SingleCopy, int, bool]:
    """Open the run's folder and set its copy to the resume checkpoint (the one at step `at`
    when given, else the latest) or to `start`; True if the run is fresh.

    A fresh run applies its pruner's update due at the start step and keeps a checkpoint there
    if asked; its caller evaluates it there (`start_record`, or with its cohort), so that its
    records begin at the start step (unless --skip-start-eval: then at the first evaluation due
    after it).
    """
    step = start.step if start is not None else 0
    run.ledger.step = step  # steps before the start are another run's to count
    if start is not None:
        run.model.load_state_dict(start.model)
    # a copy: one start state (θk) serves every round and control of a search, and training
    # changes optimizer tensors in place
    opt = copy.deepcopy(start.optimizer) if start is not None and start.optimizer else None
    single = SingleCopy(run, step, opt)
    ck = run.open(at)
    if ck is not None:
        single.load(ck)
        step = ck["step"]
    else:
        if run.pruner is not None and step in run.pruner.update_steps:
            prune(single, 0, step, hooks)
        if run.stopper is not None and run.stopper.due(step):
            run.stopper.observe(step, single.module(0))  # the first mask: nothing to stop on
        checkpoint(single, 0, step, hooks)
    distributed.check_model_agrees(run.model, mask_tensors(run.mask), f"the start of {run.dir}")
    return single, step, ck is None


def prune(copies: Copies, i: int, step: int, hooks: Hooks) -> None:
    """Copy i's gradual pruner extends its mask at `step` (same mask on every rank)."""
    run = copies.runs[i]
    run.charge(step)  # the steps so far trained under the mask that is about to change
    base = run.mask if run.mask is not None else Mask.ones(run.model)
    mask = run.pruner.update(step, copies.module(i), base).to(run.device)
    copies.set_mask(i, Mask(distributed.broadcast_mask(mask.tensors)))
    if run.mask.kept() != base.kept():
        run.restart_best()
    for hook in hooks.at_pruning:
        hook(run, step, run.mask)


def checkpoint(copies: Copies, i: int, step: int, hooks: Hooks) -> None:
    """Copy i's checkpoint at `step`, written in the background (on disk before its hooks run)."""
    run = copies.runs[i]
    run.checkpoint(step, run.state(step, *copies.state(i)))
    if hooks.at_checkpoint:
        run.wait_for_writes()
    for hook in hooks.at_checkpoint:
        hook(run, step)


def record(
    copies: Copies, step: int, data: Splits, hooks: Hooks, only: Sequence[bool] | None = None
) -> None:
    """Evaluate every copy on validation and test data and log it in its run's metrics (or in
    those that `only` marks: one pass serves a cohort of which some runs resumed past it)."""
    bf16 = copies.runs[0].cfg.bf16
    vals = copies.evaluate(data.val_x, data.val_y, bf16)
    tests = copies.evaluate(data.test_x, data.test_y, bf16)
    only = only or [True] * len(copies.runs)
    for run, val, test, log in zip(copies.runs, vals, tests, only, strict=True):
        if not log:
            continue
        rec = run.log(step, copies.optimizer.param_groups[0]["lr"], val, test)
        for hook in hooks.at_evaluation:
            hook(run, rec)


def overlaps(run: Run) -> bool:
    """Whether a run's start-of-run evaluation can go on beside its training: on CPU cores the
    run leaves idle, in one process (`Run.eval_workers`)."""
    return run.eval_workers > 1


def score(model: nn.Module, data: Splits, batch: int, bf16: bool) -> tuple[tuple, tuple]:
    """Validation and test (loss, accuracy) of `model`."""
    return (
        evaluate(model, data.val_x, data.val_y, batch, bf16),
        evaluate(model, data.test_x, data.test_y, batch, bf16),
    )


class StartRecord:
    """A fresh run's start-of-run evaluation, scored on a copy of its weights in a background
    thread while training goes on (on a core the run leaves idle), and logged (`finish`) at the
    first step where the loop touches the run's records or mask, before anything else is."""

    def __init__(self, single: SingleCopy, step: int, data: Splits, hooks: Hooks):
        run = self.run = single.runs[0]
        self.step, self.hooks = step, hooks
        self.lr = single.optimizer.param_groups[0]["lr"]
        model, batch = copy.deepcopy(run.model), run.eval_batch  # the weights at `step`
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="lottery-eval")
        self.scores = self.pool.submit(score, model, data, batch, run.cfg.bf16)

    def finish(self) -> None:
        val, test = self.scores.result()
        self.close()
        rec = self.run.log(self.step, self.lr, val, test)
        for hook in self.hooks.at_evaluation:
            hook(self.run, rec)

    def close(self) -> None:
        self.pool.shutdown()


def start_record(single: SingleCopy, step: int, data: Splits, hooks: Hooks) -> StartRecord | None:
    """A fresh run's start-of-run evaluation: beside training where it can (`overlaps`), else
    now; none with --skip-start-eval."""
    run = single.runs[0]
    if run.cfg.skip_start_eval:
        return None
    if overlaps(run):
        return StartRecord(single, step, data, hooks)
    record(single, step, data, hooks)
    return None


class Engine:
    """Trains one set of copies (one run, or one cohort stacked) from `step` to the end; a
    single run's start-of-run evaluation may still be under way (`pending`)."""

    def __init__(
        self,
        copies: Copies,
        data: Splits,
        *,
        progress: bool = True,
        hooks: Hooks,
        pending: StartRecord | None = None,
    ):
        self.copies, self.data, self.hooks, self.pending = copies, data, hooks, pending
        self.runs = copies.runs
        self.progress = progress and distributed.is_main()

    def settle(self) -> None:
        """Log the start-of-run evaluation under way, if any."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.finish()

    def fit(self, step: int) -> list[TrainResult]:
        try:
            end = self.loop(step)
            self.settle()  # a run with no step left to train
        finally:  # also when training fails: what was checkpointed reaches the disk
            if self.pending is not None:
                self.pending.close()
            for r in self.runs:
                r.wait_for_writes()
        c = self.copies
        for r in self.runs:  # data-parallel runs are single copies
            distributed.check_model_agrees(r.model, mask_tensors(r.mask), f"the end of {r.dir}")
        return [r.complete(r.state(end, *c.state(i))) for i, r in enumerate(self.runs)]

    def loop(self, step: int) -> int:
        """The hot loop: batch, forward, backward, step, fused mask multiply; records when due.
        Returns the step training ended at (the run's length, or where its stopper ended it)."""
        c, runs, hooks, k = self.copies, self.runs, self.hooks, len(self.runs)
        lead, opt, sched = runs[0], c.optimizer, c.scheduler
        device, bf16 = lead.device, lead.cfg.bf16
        graphs = bool(lead.cfg.extra.get("cuda_graphs"))
        stopper = lead.stopper if k == 1 else None  # stacked runs have none (`train_runs`)
        prune_at = [r.pruner.update_steps if r.pruner is not None else set() for r in runs]
        any_prune, any_save = set().union(*prune_at), set().union(*(r.save_at for r in runs))
        after_backward = list(hooks.after_backward)
        for i, r in enumerate(runs):
            if getattr(r.pruner, "tracks_gradients", False):
                after_backward.append(lambda s, i=i, p=r.pruner: p.after_backward(s, *c.tracked(i)))
        loss_sum = torch.zeros(() if k == 1 else k, device=device)
        count, t0 = 0, time.perf_counter()
        desc = lead.record.get("label", "train") if k == 1 else f"{k} runs batched"
        bar = tqdm(
            total=lead.total, initial=step, disable=not self.progress, desc=desc, leave=False
        )
        done = step
        for s in range(step, lead.total):
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            x, y = c.batch(s)
            with autocast(device, bf16):
                losses = c.losses(x, y)
            opt.zero_grad(set_to_none=True)
            (losses if k == 1 else losses.sum()).backward()
            for hook in after_backward:
                hook(s)
            opt.step()
            sched.step()
            if c.masked is not None:
                with torch.no_grad():
                    torch._foreach_mul_(*c.masked)
            loss_sum += losses.detach()
            count += 1
            bar.update(1)
            done = s + 1
            if self.pending is not None and (
                done in any_prune
                or lead.eval_due(done)
                or lead.checkpoint_due(done)
                or (stopper is not None and stopper.due(done))
            ):
                self.settle()
            for i in (i for i in range(k) if done in prune_at[i]) if done in any_prune else ():
                prune(c, i, done, hooks)
            stop = stopper is not None and stopper.due(done) and stopper.observe(done, c.module(0))
            eval_due = lead.eval_due(done) or stop
            ckpt_due = done % lead.ckpt_every == 0 or done in any_save
            if eval_due or ckpt_due:
                sums = distributed.all_reduce_sum(loss_sum).reshape(-1).tolist()
                seconds = (time.perf_counter() - t0) / k  # each run's share of the shared steps
                for r, total in zip(runs, sums, strict=True):
                    r.tally.loss_sum += total / distributed.world_size()
                    r.tally.count += count
                    r.tally.seconds += seconds
                loss_sum.zero_()
                count = 0
                if eval_due:
                    record(c, done, self.data, hooks)
                for i in (i for i, r in enumerate(runs) if ckpt_due and r.checkpoint_due(done)):
                    checkpoint(c, i, done, hooks)
                t0 = time.perf_counter()
            for hook in hooks.after_step:
                hook(done)
            if stop:
                break
        bar.close()
        return done


def fit_one(
    run: Run,
    start: StartState | None,
    data: Splits,
    progress: bool,
    hooks: Hooks,
    started: Callable[[SingleCopy], None] | None = None,
) -> TrainResult:
    """Train (or resume, or read back) one run as a plain module; `started` sees its live copy."""
    if run.finished():
        return run.stored_result()
    with run_threads(run.threads), distributed.guard(f"training in {run.dir}"):
        single, step, fresh = begin(run, start, data, hooks)
        pending = start_record(single, step, data, hooks) if fresh else None
        if started is not None:
            started(single)
        engine = Engine(single, data, progress=progress, hooks=hooks, pending=pending)
        return engine.fit(step)[0]


def train_runs(
    specs: Sequence[RunSpec],
    data: Splits,
    *,
    batched: bool = False,
    progress: bool = True,
    hooks: Hooks | None = None,
) -> list[TrainResult]:
    """Train every run, one by one or (`batched`) each cohort as one stacked model; results in order.

    Every run is validated before any is written. Finished runs return their stored result;
    interrupted ones resume from their last checkpoint.
    """
    hooks = hooks or Hooks()
    devices = [resolve_device(s.cfg.device) for s in specs]
    distributed.setup(devices[0] if devices else torch.device("cpu"))
    data = data.to(devices[0]) if devices else data
    runs = [Run(s, data, d) for s, d in zip(specs, devices, strict=True)]
    if not batched:
        return [
            fit_one(r, s.start, data, progress, hooks) for r, s in zip(runs, specs, strict=True)
        ]
    if distributed.world_size() > 1:
        raise ConfigError("batched training runs in one process; do not start it with torchrun")
    results: dict[int, TrainResult] = {}
    for i, (run, spec) in enumerate(zip(runs, specs, strict=True)):
        if run.stopper is not None:  # it may stop alone: never stacked
            results[i] = fit_one(run, spec.start, data, progress, hooks)
    cohorts: dict[str, list[tuple[int, SingleCopy, int, bool]]] = {}
    at = aligned_resume_steps(runs)
    for i, (run, spec) in enumerate(zip(runs, specs, strict=True)):
        if i in results:
            continue
        if run.finished():
            results[i] = run.stored_result()
            continue
        with run_threads(run.threads):
            single, step, fresh = begin(run, spec.start, data, hooks, at.get(i))
        cohorts.setdefault(cohort_key(single, step), []).append((i, single, step, fresh))
    for members in cohorts.values():
        singles, step = [m[1] for m in members], members[0][2]
        copies = singles[0] if len(singles) == 1 else StackedCopies(singles, step)
        fresh = [m[3] and not m[1].runs[0].cfg.skip_start_eval for m in members]
        with run_threads(singles[0].runs[0].threads):  # a cohort shares every setting
            if any(fresh):  # the fresh runs' start-of-run evaluation, in one pass
                record(copies, step, data, hooks, fresh)
            done = Engine(copies, data, progress=progress, hooks=hooks).fit(step)
        results.update({m[0]: r for m, r in zip(members, done, strict=True)})
    return [results[i] for i in range(len(specs))]


def aligned_resume_steps(runs: Sequence[Run]) -> dict[int, int]:
    """Resume steps that put stacked runs back together: a kill between the checkpoint writes
    of one cohort leaves some of its runs one checkpoint ahead; those resume from their previous
    checkpoint, at the step the others stand at, so the cohort trains on as one stacked model
    (resuming from an earlier checkpoint of a run replays it exactly). Index -> step."""
    unfinished = [i for i, r in enumerate(runs) if not r.finished()]
    points = {i: runs[i].resume_points() for i in unfinished}
    latest = {i: max(p) for i, p in points.items() if p}
    kind = {i: _stack_signature(runs[i]) for i in latest}
    at = {}
    for i, step in latest.items():
        behind = {latest[j] for j in latest if kind[j] == kind[i] and latest[j] < step}
        common = sorted(behind & set(points[i]))
        if common:
            at[i] = common[0]
    return at


def _stack_signature(run: Run) -> str:
    """What runs must share to stack, less the step they stand at (see `cohort_key`)."""
    extra = {k: v for k, v in run.cfg.extra.items() if k != "pruning"}
    shared = run.cfg.replace(init_seed=0, data_seed=0, save_at=(), extra=extra).to_dict()
    return json.dumps([shared, repr(run.model)], sort_keys=True, default=str)


def cohort_key(single: SingleCopy, step: int) -> str:
    """What runs must share to train as one stacked model: architecture, every setting except the
    seeds, kept steps and pruning schedule, the current step and the optimizer's step counts."""
    run = single.runs[0]
    shapes = [(n, list(t.shape), str(t.dtype)) for n, t in run.model.state_dict().items()]
    parts = [_stack_signature(run), shapes, step, optimizer_signature(single.optimizer)]
    return json.dumps(parts, sort_keys=True, default=str)


def optimizer_signature(opt: Optimizer) -> list:
    """Settings (less the LR, which the schedule sets) and step counts of an optimizer.

    A fresh optimizer behaves as one at step 0 with zero momentum and moments, so it matches those.
    """
    sd = opt.state_dict()
    groups = [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in sd["param_groups"]]
    steps = sorted({float(s["step"]) for s in sd["state"].values() if "step" in s})
    return [groups, steps or [0.0]]


def mask_tensors(mask: Mask | None) -> dict[str, torch.Tensor] | None:
    """A mask's tensors by name, for the cross-rank checks (None without a mask)."""
    return None if mask is None else mask.tensors
