"""Iterative magnitude pruning (IMP): the winning-ticket search, with rewinding and controls.

Round 0 trains the dense network (saving θ0 and θk). Each later round prunes a fraction of the
remaining weights by the previous round's final magnitudes, resets the survivors and retrains
(Frankle & Carbin, ICLR 2019; rewinding: Frankle et al. 2019/2020; LR rewinding and fine-tuning:
Renda et al., ICLR 2020). Controls (random re-init, random pruning) run beside each round.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lottery.core import distributed, layout
from lottery.core.config import ConfigError, TrainConfig, check_seeds
from lottery.core.device import resolve_device
from lottery.core.storage import read_json, write_json
from lottery.datasets.loading import Splits
from lottery.models import recipe
from lottery.models.registry import output_layer_name, prunable_names
from lottery.pruning.allocation import SHAPED
from lottery.pruning.checks import check_prune, check_rate_scale, keep_classes
from lottery.pruning.criteria import Context, check, score, training_batches
from lottery.pruning.early_bird import THRESHOLD as EB_THRESHOLD
from lottery.pruning.early_bird import EarlyBird, default_every
from lottery.pruning.early_bird import check as check_early_bird
from lottery.pruning.maskfile import MaskError
from lottery.pruning.masks import Mask, load_sparse
from lottery.pruning.names import criterion_name, criterion_needs
from lottery.pruning.selection import check_granularity, check_rate, prune, random_mask_like
from lottery.studies.base import ControlRun, StudyRecord, stored_mask
from lottery.studies.names import CONTROL_PRIMES, IMP_CONTROLS, RESETS, TICKET_CONTEXT
from lottery.training.engine import train_runs
from lottery.training.run import (
    Finish,
    RunSpec,
    StartState,
    TrainResult,
    check_fits_training,
    run_length,
)
from lottery.training.runfolder import hold
from lottery.training.setup import load_data, make_model

# Seeds derived for each round from the search's init seed. SEED_STRIDE keeps searches with
# different init seeds apart for up to 1000 rounds; the primes keep the two controls' seeds from
# colliding with each other and with the pruning seeds. Changing any of them changes every
# recorded control (they are part of past results), so they are fixed.
SEED_STRIDE = 1000
REINIT_PRIME, RANDOM_PRUNE_PRIME = CONTROL_PRIMES


def mask_seed(init_seed: int, r: int) -> int:
    """Seed of round r's pruning scores (only random criteria use it)."""
    return init_seed * SEED_STRIDE + r


def reinit_seed(init_seed: int, r: int) -> int:
    """Seed of the fresh init of round r's random-reinit control."""
    return init_seed + REINIT_PRIME * r


def random_prune_seed(init_seed: int, r: int) -> int:
    """Seed of the random mask of round r's random-prune control."""
    return init_seed * SEED_STRIDE + RANDOM_PRUNE_PRIME * r


# What a round's pruning can offer a criterion (scores accumulated in training are not kept).


@dataclass
class IMPConfig:
    """Pruning settings of a search; None means the model's paper default (see `imp_defaults`)."""

    rounds: int = 5
    fraction: float | None = None
    scope: str | None = None
    rate_scale: dict[str, float] | None = None
    granularity: str = "weight"
    criterion: str = "magnitude"
    reset: str = "init"
    rewind_step: int = 0
    finetune_lr: float | None = None
    controls: tuple[str, ...] = ()
    control_rounds: tuple[int, ...] = ()  # train the controls only at these rounds (empty: every)
    save_control_weights: bool = False
    keep_checkpoints: bool = False
    batched: bool = False
    early_bird: bool = False  # stop round 0 where its ticket is drawn (You et al., ICLR 2020)
    eb_every: int | None = None  # steps between mask checks (None: `early_bird.default_every`)
    eb_threshold: float = EB_THRESHOLD

    def __post_init__(self) -> None:
        self.controls = tuple(self.controls)
        self.control_rounds = tuple(self.control_rounds)
        if any(r < 1 for r in self.control_rounds):
            raise ConfigError(f"control rounds must be >= 1, got {list(self.control_rounds)}")
        if self.rounds < 0:
            raise ConfigError(f"rounds must be >= 0, got {self.rounds}")
        if self.reset not in RESETS:
            raise ConfigError(f"unknown reset {self.reset!r}; choose from {RESETS}")
        bad = set(self.controls) - set(IMP_CONTROLS)
        if bad:
            raise ConfigError(
                f"unknown control {sorted(bad)[0]!r}; choose from {tuple(IMP_CONTROLS)}"
            )
        if self.fraction is not None:
            check_rate(self.fraction, "prune fraction per round")
        self.criterion = criterion_name(self.criterion)
        try:
            check_granularity(self.granularity)
            check(self.criterion, TICKET_CONTEXT)
        except MaskError as e:
            raise ConfigError(str(e)) from None
        if self.rewind_step < 0:
            raise ConfigError(f"rewind step must be >= 0, got {self.rewind_step}")
        if self.reset == "init" and self.rewind_step:
            raise ConfigError(
                f"--rewind-step {self.rewind_step} needs --reset rewind, lr-rewind or finetune; "
                "--reset init restarts every round from step 0"
            )
        if self.finetune_lr is not None and not (
            math.isfinite(self.finetune_lr) and self.finetune_lr > 0
        ):
            raise ConfigError(f"--finetune-lr must be a finite number > 0, got {self.finetune_lr}")
        if self.finetune_lr is not None and self.reset != "finetune":
            raise ConfigError(
                f"--finetune-lr applies to --reset finetune, not --reset {self.reset}"
            )
        if self.control_rounds and not self.controls:
            raise ConfigError("--control-rounds needs --controls (which controls to train)")
        late = [r for r in self.control_rounds if r > self.rounds]
        if late:
            raise ConfigError(f"--control-rounds {late} lie beyond --rounds {self.rounds}")
        if self.early_bird:
            check_early_bird(self.eb_every, self.eb_threshold)
            if self.criterion != "magnitude":
                raise ConfigError(
                    "--early-bird draws the mask magnitude pruning would choose; "
                    f"use --criterion magnitude, not {self.criterion}"
                )
            if self.rounds < 1:
                raise ConfigError("--early-bird draws round 1's ticket: give --rounds >= 1")
        elif self.eb_every is not None or self.eb_threshold != EB_THRESHOLD:
            raise ConfigError("--eb-every and --eb-threshold apply with --early-bird")


def imp_defaults(model_name: str, model) -> dict[str, Any]:
    """Per-model pruning defaults from the model's registry recipe (`lottery.models.Recipe`).

    LeNet: layer-wise 20%, output layer 10% (Frankle & Carbin 2019). Conv-2/4/6: layer-wise, fc 20%,
    conv 10% (Conv-6: 15%), output 10% (same paper). ResNet-20, VGG and other deep nets: global 20%
    over the conv layers, output layer unpruned (same paper, Sec. 4; OpenLTH's default).
    """
    r = recipe(model_name)
    params = dict(model.named_parameters())
    convs = [n for n in prunable_names(model) if params[n].dim() == 4 and r.conv_rate != 1.0]
    scale = dict.fromkeys(convs, r.conv_rate)
    out = output_layer_name(model)
    if out:
        scale[out] = r.output_rate
    return {"fraction": r.prune_fraction, "scope": r.prune_scope, "rate_scale": scale}


def _resolved(imp: IMPConfig, model_name: str, model) -> IMPConfig:
    d = imp_defaults(model_name, model)
    rate_scale = imp.rate_scale
    if rate_scale is None:  # the paper's output-layer rate gives way to keeping every class
        rate_scale = {**d["rate_scale"], **keep_classes({}, model, imp.granularity)}
        if imp.scope in SHAPED:  # the allocation sets every layer's rate; unpruned stay so
            rate_scale = {n: m for n, m in rate_scale.items() if m == 0.0}
    return dataclasses.replace(
        imp,
        fraction=imp.fraction if imp.fraction is not None else d["fraction"],
        scope=imp.scope or d["scope"],
        rate_scale=keep_classes(rate_scale, model, imp.granularity),
    )


def run_imp(cfg: TrainConfig, imp: IMPConfig, out: str | Path, progress: bool = True) -> dict:
    """Run, resume or extend an IMP search in `out`; returns the summary also in summary.json.

    Every setting is checked against the model and data before anything is written, and the
    search holds `out`'s lock while it runs. summary.json is refreshed after every round. A smaller
    --rounds than a finished search holds returns its first rounds and rewrites no record.
    Under torchrun every rank runs this; rank 0 writes the files and the others read them.
    """
    return run_searches([cfg], [imp], [Path(out)], Path(out), progress)[0]


def run_imp_seeds(
    cfg: TrainConfig, imp: IMPConfig, out: str | Path, seeds: Sequence[int], progress: bool = True
) -> dict[int, dict]:
    """One search per seed (its init and data-order seed) in out/seed_<s>/, each laid out as usual.

    The searches advance round by round together, so with `imp.batched` a round's tickets and
    controls of every seed train as one batched model.
    """
    check_seeds(seeds)
    cfgs = [cfg.replace(init_seed=s, data_seed=s) for s in seeds]
    outs = [layout.seed_dir(Path(out), s) for s in seeds]
    summaries = run_searches(cfgs, [imp] * len(seeds), outs, Path(out), progress)
    return dict(zip(seeds, summaries, strict=True))


def validate_search(
    cfgs: list[TrainConfig], imp: IMPConfig, outs: list[Path], data: Splits, model
) -> IMPConfig:
    """Check a search's settings against the model, the data and the folders' records, writing
    nothing; returns the settings with the model's paper defaults filled in."""
    imp = _resolved(imp, cfgs[0].model, model)
    check_rate_scale(imp.rate_scale or {}, model, imp.fraction)
    check_prune(
        model,
        rate=imp.fraction,
        scope=imp.scope,
        granularity=imp.granularity,
        rate_scale=imp.rate_scale or {},
    )
    total, _ = run_length(cfgs[0], data)
    for cfg in cfgs:
        check_fits_training(cfg, total)
    if imp.rewind_step > total:
        raise ConfigError(
            f"--rewind-step {imp.rewind_step} lies beyond the end of training ({total} steps)"
        )
    for cfg, out in zip(cfgs, outs, strict=True):
        RECORD.check(out, cfg, dataclasses.asdict(imp), data.digest)
    return imp


def run_searches(
    cfgs: list[TrainConfig], imps: list[IMPConfig], outs: list[Path], root: Path, progress: bool
) -> list[dict]:
    """Several searches side by side (same data and model; seeds, rewind points and the like may
    differ): validated first, then, holding `root`'s lock, advanced round by round together, so
    that with `batched` each round's runs of every search go to the engine in one call."""
    if len({imp.rounds for imp in imps}) != 1:
        raise ConfigError("searches side by side must have the same number of rounds")
    distributed.setup(resolve_device(cfgs[0].device))
    data = load_data(cfgs[0])
    model = make_model(cfgs[0], data)
    imps = [
        validate_search([c], i, [o], data, model) for c, i, o in zip(cfgs, imps, outs, strict=True)
    ]
    with hold(root):
        return _loop(cfgs, imps, outs, data, model, progress)


def _loop(
    cfgs: list[TrainConfig],
    imps: list[IMPConfig],
    outs: list[Path],
    data: Splits,
    model,
    progress: bool,
) -> list[dict]:
    """The IMP rounds; each search's summary.json is refreshed after every round."""
    ks = [imp.rewind_step if imp.reset != "init" else 0 for imp in imps]
    recorded = [_recorded_rounds(out) for out in outs]
    for cfg, imp, out in zip(cfgs, imps, outs, strict=True):
        RECORD.write(out, cfg, dataclasses.asdict(imp), data.digest)

    # Round 0: the dense network, saving θ0 and θk once for every later round.
    dense = [
        cfg.replace(save_at=tuple({*cfg.save_at, 0, k})) for cfg, k in zip(cfgs, ks, strict=True)
    ]
    masks = [Mask.ones(model) for _ in cfgs]
    first = _rounds(0, outs, dense, data, masks, [None] * len(cfgs), imps, progress)
    rounds = [[row] for row in first]
    _write_summaries(rounds, imps, outs, recorded)
    dense_runs = [layout.ticket_dir(out, 0) for out in outs]
    theta_0 = [StartState.from_checkpoint(layout.step_checkpoint(d, 0)) for d in dense_runs]
    theta_k = [StartState.from_checkpoint(layout.step_checkpoint(d, k))
               for d, k in zip(dense_runs, ks, strict=True)]  # fmt: skip

    for r in range(1, imps[0].rounds + 1):
        prev = [_final_weights(layout.ticket_dir(out, r - 1)) for out in outs]
        masks = [
            _next_mask(layout.round_dir(out, r), m, p, imp, seed=mask_seed(cfg.init_seed, r),
                       context=(cfg, data, t0.model, tk.model))
            for out, m, p, cfg, imp, t0, tk in zip(outs, masks, prev, cfgs, imps, theta_0,
                                                    theta_k, strict=True)
        ]  # fmt: skip
        resets = [_reset(*a) for a in zip(imps, cfgs, theta_0, theta_k, prev, ks, strict=True)]
        starts, round_cfgs = [s for s, _ in resets], [c for _, c in resets]
        rows = _rounds(r, outs, round_cfgs, data, masks, starts, imps, progress)
        for kept, row in zip(rounds, rows, strict=True):
            kept.append(row)
        _write_summaries(rounds, imps, outs, recorded)
    return [
        {"settings": dataclasses.asdict(imp), "rounds": rows}
        for imp, rows in zip(imps, rounds, strict=True)
    ]


def _recorded_rounds(out: Path) -> int:
    """How many rounds the search's summary.json lists (0 if it has none yet)."""
    path = out / layout.SUMMARY
    return len(read_json(path)["rounds"]) if path.exists() else 0


def _write_summaries(
    rounds: list[list[dict]], imps: list[IMPConfig], outs: list[Path], recorded: list[int]
) -> None:
    """Refresh each summary.json once it gains rounds, and leave it otherwise (a smaller or the
    same --rounds on a finished search reports the rounds it holds and rewrites no record)."""
    if not distributed.is_main():
        return
    for rows, imp, out, n in zip(rounds, imps, outs, recorded, strict=True):
        if len(rows) > n:
            write_json({"settings": dataclasses.asdict(imp), "rounds": rows}, out / layout.SUMMARY)


def _rounds(
    r: int,
    outs: list[Path],
    cfgs: list[TrainConfig],
    data: Splits,
    masks: list[Mask],
    starts: list[StartState | None],
    imps: list[IMPConfig],
    progress: bool,
) -> list[dict]:
    """Train round r's ticket and controls of every search in one call to the engine (which
    stacks, with `batched`, the runs that can share a step); return each search's summary row
    (and print it)."""
    args = zip(outs, cfgs, masks, starts, imps, strict=True)
    runs = [_round_runs(r, out, cfg, mask, start, data, imp) for out, cfg, mask, start, imp in args]
    specs = [spec for search in runs for _, spec, _ in search]
    results = iter(train_runs(specs, data, batched=imps[0].batched, progress=progress))
    rows = []
    for i, (search, mask, imp) in enumerate(zip(runs, masks, imps, strict=True)):
        controls: dict[str, dict] = {}
        for name, _, extra in search:
            result = next(results)
            if name is None:
                ticket = result
            else:
                controls[name] = {**_metrics(result), **extra}
        row = {
            "round": r,
            "density": mask.density(),
            "percent_remaining": 100 * mask.density(),
            "layer_density": mask.layer_density(),
            **_metrics(ticket),
            "controls": controls,
        }
        tag = outs[i].name if len(outs) > 1 else ""
        _print_row(row, imp.controls, header=r == 0 and i == 0, tag=tag)
        rows.append(row)
    return rows


def _round_runs(
    r: int,
    out: Path,
    cfg: TrainConfig,
    mask: Mask,
    start: StartState | None,
    data: Splits,
    imp: IMPConfig,
) -> list[tuple[str | None, RunSpec, dict]]:
    """Round r's ticket (name None) and controls as runs to train, with the controls' seeds."""
    rdir = layout.round_dir(out, r)
    if distributed.is_main() and not (rdir / layout.MASK).exists():
        mask.save(rdir / layout.MASK)
    model = make_model(cfg, data)
    stopper = _early_bird(imp, cfg, data, model, rdir / layout.TICKET) if r == 0 else None
    ticket = RunSpec(
        cfg, rdir / layout.TICKET, model, mask if r else None, start,
        record={"label": f"round {r}", "round": r},
        finish=Finish(keep_checkpoint=imp.keep_checkpoints), stopper=stopper,
    )  # fmt: skip
    due = r > 0 and (not imp.control_rounds or r in imp.control_rounds)
    finish = Finish(weights=imp.save_control_weights, keep_checkpoint=imp.keep_checkpoints)
    names = imp.controls if due else ()
    controls = [_control(c, r, rdir, cfg, data, mask, start, finish) for c in names]
    return [(None, ticket, {}), *controls]


def _early_bird(
    imp: IMPConfig, cfg: TrainConfig, data: Splits, model, run: Path
) -> EarlyBird | None:
    """Round 0's early-bird stopper: it draws exactly the mask round 1 prunes from the weights
    it sees (the search's criterion, scope, fraction and rates), and stops no earlier than the
    rewind step."""
    if not imp.early_bird:
        return None
    ones = Mask.ones(model)

    def draw(weights: dict[str, torch.Tensor]) -> Mask:
        ctx = Context({n: weights[n] for n in ones.names()}, mask=ones, scope=imp.scope)
        return round_prune(ones, ctx, imp, mask_seed(cfg.init_seed, 1))

    total, _ = run_length(cfg, data)
    return EarlyBird(
        draw,
        every=imp.eb_every or default_every(total),
        threshold=imp.eb_threshold,
        earliest=imp.rewind_step if imp.reset != "init" else 0,
        log_path=run / layout.EARLY_BIRD,
    )


def _reset(
    imp: IMPConfig,
    cfg: TrainConfig,
    theta_0: StartState,
    theta_k: StartState,
    prev: dict,
    k: int,
) -> tuple[StartState, TrainConfig]:
    """The state each round restarts from, and its training configuration, per reset mode."""
    if imp.reset == "init":
        return StartState(theta_0.model), cfg
    if imp.reset == "rewind":
        return theta_k, cfg
    start = StartState(prev, None, k)
    if imp.reset == "lr-rewind":
        return start, cfg
    return start, cfg.replace(lr=imp.finetune_lr or cfg.lr * 0.01, lr_schedule="constant")


@dataclass(frozen=True)
class ImpControl:
    """What a control of round r may use: the search's configuration and the round's ticket mask."""

    round: int
    cfg: TrainConfig
    mask: Mask


def random_reinit(c: ImpControl) -> ControlRun:
    """The ticket's mask on a fresh initialisation (Frankle & Carbin, ICLR 2019)."""
    seed = reinit_seed(c.cfg.init_seed, c.round)
    return ControlRun(init_seed=seed, record={"reinit_seed": seed})


def random_prune(c: ImpControl) -> ControlRun:
    """A random mask with the ticket's per-layer densities, from the ticket's start."""
    seed = random_prune_seed(c.cfg.init_seed, c.round)
    return ControlRun(mask=lambda: random_mask_like(c.mask, seed), record={"mask_seed": seed})


def _control(
    name: str,
    r: int,
    rdir: Path,
    cfg: TrainConfig,
    data: Splits,
    mask: Mask,
    start: StartState,
    finish: Finish,
) -> tuple[str, RunSpec, dict]:
    """One control beside round r, as its registered function (IMP_CONTROLS) describes it."""
    cdir = layout.control_dir(rdir, name)
    run = IMP_CONTROLS[name](ImpControl(r, cfg, mask))
    cmask = stored_mask(cdir / layout.MASK, run.mask) if run.mask is not None else mask
    cstart = start
    if run.init_seed is not None:
        fresh = make_model(cfg, data, seed=run.init_seed).state_dict()
        cstart = StartState(fresh, None, start.step)
    record = {"label": f"round {r} {name}", "round": r, "control": name, **run.record}
    spec = RunSpec(cfg, cdir, make_model(cfg, data), cmask, cstart, record, finish=finish)
    return name, spec, run.record


def _next_mask(
    rdir: Path, mask: Mask, weights: dict, imp: IMPConfig, seed: int, context: tuple
) -> Mask:
    """Prune the previous round's final weights; stored once, so a resumed search reuses it.

    `context` (config, data, θ0 and θk state dicts) feeds criteria that look beyond the weights.
    """

    def make() -> Mask:
        return round_prune(mask, _criterion_context(mask, weights, imp, seed, *context), imp, seed)

    return stored_mask(rdir / layout.MASK, make)


def round_prune(mask: Mask, ctx: Context, imp: IMPConfig, seed: int) -> Mask:
    """One IMP round's pruning: `mask` extended by the search's criterion, fraction, scope,
    granularity and rates (what the next round trains, and what an early-bird check draws)."""
    scores = score(imp.criterion, ctx, seed=seed)
    return prune(
        mask.to(next(iter(scores.values())).device),
        scores,
        fraction=imp.fraction,
        scope=imp.scope,
        granularity=imp.granularity,
        rate_scale=imp.rate_scale,
    )


def _criterion_context(
    mask: Mask,
    weights: dict,
    imp: IMPConfig,
    seed: int,
    cfg: TrainConfig,
    data: Splits,
    theta_0: dict,
    theta_k: dict,
) -> Context:
    """What a criterion may use at a round's pruning: the final weights, θ0 (θk when rewinding),
    the trained model, seeded training batches and the round's approximate target sparsity."""
    device = data.train_x.device
    names = mask.names()
    model = None
    if "model" in criterion_needs(imp.criterion):
        model = make_model(cfg, data).to(device)
        model.load_state_dict(weights)
    return Context(
        weights={n: weights[n].to(device) for n in names},
        initial={n: theta_0[n] for n in names},
        rewind={n: theta_k[n] for n in names} if imp.reset == "rewind" else None,
        model=model,
        mask=mask.to(device),
        sparsity=1.0 - mask.density() * (1.0 - imp.fraction),
        batches=training_batches(data.train_x, data.train_y, cfg.batch_size, seed),
        input_shape=data.input_shape,
        scope=imp.scope,
    )


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    """A finished run's final weights, exactly, from its sparse record."""
    state, _ = load_sparse(run / layout.WEIGHTS)
    return state


def _metrics(result: TrainResult) -> dict[str, Any]:
    keys = (
        "test_accuracy",
        "test_loss",
        "best_val_step",
        "test_accuracy_at_best_val",
        "steps",
        "seconds",
    )
    compute = result.extra.get("compute")  # runs finished before runs kept a ledger have none
    return {k: getattr(result, k) for k in keys} | ({"compute": compute} if compute else {})


# imp.json. --rounds may grow on resume; --batched changes how runs are scheduled, not what they
# are; control_rounds was added after searches were recorded: at its default it stays out of the
# fingerprint, so those searches still resume.
RECORD = StudyRecord(
    file=layout.IMP_RECORD,
    what="an IMP search",
    key="imp",
    free=("rounds", "batched"),
    resumable="--rounds",
    later={"control_rounds": (), "early_bird": False, "eb_every": None, "eb_threshold": 0.1},
    rewrite=lambda old, new: new["rounds"] > old.get("rounds", 0),
)


def _fmt(x: float | None) -> str:
    return "   -  " if x is None else f"{100 * x:6.2f}"


def _print_row(row: dict, controls: tuple[str, ...], header: bool = False, tag: str = "") -> None:
    """One line of the per-round table (through tqdm so progress bars stay intact); `tag` names
    the search when several run side by side."""
    if header:
        cols = "round  weights%  test_acc  acc@best_val  best_step" + "".join(
            f"  {c:>13s}" for c in controls
        )
        cols = f"{'search':>8s}  {cols}" if tag else cols
        tqdm.write(cols)
        tqdm.write("-" * len(cols))
    line = (
        f"{row['round']:5d}  {row['percent_remaining']:8.2f}  {_fmt(row['test_accuracy']):>8s}"
        f"  {_fmt(row['test_accuracy_at_best_val']):>12s}  {row['best_val_step'] or 0:9d}"
    )
    for c in controls:
        m = row["controls"].get(c)
        line += f"  {_fmt(m['test_accuracy_at_best_val'] if m else None):>13s}"
    tqdm.write(f"{tag:>8s}  {line}" if tag else line)
