"""Pruning at initialisation: prune θ0 once by a criterion to each sparsity, then train it.

Beside each sparse network run the sanity checks of Frankle, Dziugaite, Roy & Carbin ("Pruning
Neural Networks at Initialization: Why Are We Missing the Mark?", ICLR 2021): `layer-shuffle`
(the mask shuffled within each layer: same per-layer counts, and with an N:M granularity not the
same pattern), `reinit` (the same mask on a fresh initialisation) and `invert` (keep the lowest
scores instead of the highest). Every network trains with the same settings an IMP ticket gets.

Layout of a study in OUT (one per seed in OUT/seed_<s>/ with several seeds):
    at_init.json                     settings and fingerprint (another study here is refused)
    summary.json                     per sparsity: density and every run's metrics
    at_init.md                       mean ± std table over the seeds (in OUT itself)
    sparsity_<s>/mask.npz            the criterion's mask
    sparsity_<s>/<run>/              pruned, layer_shuffle, reinit, invert: config.json,
                                     metrics.jsonl, result.json, weights.npz (+ mask.npz for
                                     the controls that have their own mask)
Rerunning resumes: masks are read back, finished runs return their stored results.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lottery.analysis.records import AT_INIT_PRUNED, at_init_summaries, at_init_table
from lottery.core import layout
from lottery.core.config import ConfigError, TrainConfig, check_seeds
from lottery.core.storage import write_bytes_atomic, write_json
from lottery.datasets.loading import Splits
from lottery.pruning.checks import check_prune, keep_classes
from lottery.pruning.criteria import Context, check, score, training_batches
from lottery.pruning.maskfile import MaskError
from lottery.pruning.masks import Mask
from lottery.pruning.names import SCOPES, criterion_name
from lottery.pruning.selection import check_granularity, check_rate, prune, random_mask_like
from lottery.studies.base import ControlRun, StudyRecord, stored_mask
from lottery.studies.names import AT_INIT_CONTEXT, AT_INIT_CONTROLS, CONTROL_PRIMES
from lottery.training.engine import train_runs
from lottery.training.run import Finish, RunSpec, TrainResult
from lottery.training.runfolder import hold
from lottery.training.setup import load_data, make_model
from lottery.training.trainer import Trainer

PRUNED = AT_INIT_PRUNED  # the run of the criterion's own mask
# reinit seed = init seed + REINIT_OFFSET; layer-shuffle seed = init seed * SHUFFLE_OFFSET +
# sparsity in basis points
REINIT_OFFSET, SHUFFLE_OFFSET = CONTROL_PRIMES
# at_init.json: sparsities and controls may grow on resume, batching is how runs are scheduled.
RECORD = StudyRecord(
    file=layout.AT_INIT,
    what="a pruning-at-init study",
    key="at_init",
    free=("sparsities", "controls", "batched"),
    resumable="--sparsities, --controls and --batched",
)


@dataclass
class AtInitConfig:
    """What to prune and which controls to run; validated on construction."""

    criterion: str = "snip"
    sparsities: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95, 0.98)
    scope: str = "global"  # as the papers prune
    granularity: str = "weight"
    rate_scale: dict[str, float] = field(default_factory=dict)
    controls: tuple[str, ...] = tuple(AT_INIT_CONTROLS)
    score_batches: int = 1
    batched: bool = False

    def __post_init__(self) -> None:
        self.sparsities = tuple(float(s) for s in self.sparsities)
        self.controls = tuple(self.controls)
        self.criterion = criterion_name(self.criterion)
        try:
            check(self.criterion, AT_INIT_CONTEXT)
            check_granularity(self.granularity)
            for s in self.sparsities:
                check_rate(s, "sparsity")
        except MaskError as e:
            raise ConfigError(str(e)) from None
        if not self.sparsities:
            raise ConfigError("give at least one sparsity")
        if len({layout.sparsity_dir(Path(), s) for s in self.sparsities}) != len(self.sparsities):
            raise ConfigError(f"sparsities must be distinct, got {list(self.sparsities)}")
        if self.scope not in SCOPES:
            raise ConfigError(f"unknown pruning scope {self.scope!r}; choose from {SCOPES}")
        bad = [c for c in self.controls if c not in AT_INIT_CONTROLS]
        if bad:
            raise ConfigError(f"unknown control {bad[0]!r}; choose from {tuple(AT_INIT_CONTROLS)}")
        if self.score_batches < 1:
            raise ConfigError(f"score batches must be >= 1, got {self.score_batches}")


def run_at_init(
    cfg: TrainConfig,
    settings: AtInitConfig,
    out: str | Path,
    seeds: Sequence[int] | None = None,
    progress: bool = True,
) -> list[dict]:
    """Run or resume the study in `out` (one per seed in out/seed_<s>/ when `seeds` is given,
    init and data-order seed alike); returns each study's summary, also in its summary.json.

    Everything is validated, the data loaded and one dry prune done before anything is written;
    with `settings.batched`, all networks of one sparsity (every seed) train as one stacked model.
    """
    out = Path(out)
    if seeds is not None:
        check_seeds(seeds)
    cfgs = [cfg] if seeds is None else [cfg.replace(init_seed=s, data_seed=s) for s in seeds]
    outs = [out] if seeds is None else [layout.seed_dir(out, s) for s in seeds]
    data = load_data(cfg)
    model = make_model(cfg, data)
    rate_scale = keep_classes(settings.rate_scale, model, settings.granularity)
    settings = dataclasses.replace(settings, rate_scale=rate_scale)
    check_prune(
        model,
        rate=max(settings.sparsities),
        scope=settings.scope,
        granularity=settings.granularity,
        rate_scale=settings.rate_scale,
    )
    Trainer(cfg, data, model, out, progress=False)  # device, bf16, save-at: checked, not written
    for c, o in zip(cfgs, outs, strict=True):  # every seed's folder, before any is written
        RECORD.check(o, c, dataclasses.asdict(settings), data.digest)
    with hold(out):  # one writer per study folder, taken once everything is validated
        summaries = _study(cfgs, outs, data, settings, progress)
        text = at_init_table(at_init_summaries(out))  # every seed the folder holds
        write_bytes_atomic((text + "\n").encode(), out / layout.AT_INIT_TABLE)
        tqdm.write(text)
        return summaries


def _study(
    cfgs: list[TrainConfig],
    outs: list[Path],
    data: Splits,
    settings: AtInitConfig,
    progress: bool,
) -> list[dict]:
    """Every sparsity's pruned network and controls, trained; the summaries written and printed."""
    for c, o in zip(cfgs, outs, strict=True):
        RECORD.write(o, c, dataclasses.asdict(settings), data.digest)

    rows: list[list[dict]] = [[] for _ in outs]
    for s in settings.sparsities:
        runs = [_sparsity_runs(o, c, data, settings, s) for c, o in zip(cfgs, outs, strict=True)]
        specs = [spec for search in runs for _, spec in search]
        results = iter(train_runs(specs, data, batched=settings.batched, progress=progress))
        for i, search in enumerate(runs):
            metrics = {name: _metrics(next(results)) for name, _ in search}
            pruned = next(spec.mask for name, spec in search if name == PRUNED)
            row = {
                "sparsity": s,
                "density": pruned.density(),
                "layer_density": pruned.layer_density(),
                PRUNED: metrics.pop(PRUNED),
                "controls": metrics,
            }
            rows[i].append(row)
    summaries = []
    for o, r in zip(outs, rows, strict=True):
        summary = {"settings": dataclasses.asdict(settings), "sparsities": r}
        write_json(summary, o / layout.SUMMARY)
        summaries.append(summary)
    return summaries


@dataclass(frozen=True)
class AtInitControl:
    """What a control at one sparsity may use: the configuration, the criterion's mask and scores
    (computed once, on first use), and the study's pruning of any scores to this sparsity."""

    cfg: TrainConfig
    sparsity: float
    pruned: Callable[[], Mask]
    scores: Callable[[], dict]
    prune: Callable[[dict], Mask]


def layer_shuffle(c: AtInitControl) -> ControlRun:
    """The criterion's per-layer densities, its kept positions shuffled within each layer
    (Frankle et al., ICLR 2021)."""
    seed = shuffle_seed(c.cfg, c.sparsity)
    return ControlRun(mask=lambda: random_mask_like(c.pruned(), seed), record={"mask_seed": seed})


def reinit(c: AtInitControl) -> ControlRun:
    """The criterion's mask on a fresh initialisation (Frankle et al., ICLR 2021)."""
    seed = c.cfg.init_seed + REINIT_OFFSET
    return ControlRun(init_seed=seed, record={"reinit_seed": seed})


def invert(c: AtInitControl) -> ControlRun:
    """The mask of the lowest scores instead of the highest (Frankle et al., ICLR 2021)."""
    return ControlRun(mask=lambda: c.prune({n: -v for n, v in c.scores().items()}))


def _sparsity_runs(
    out: Path, cfg: TrainConfig, data: Splits, settings: AtInitConfig, sparsity: float
) -> list[tuple[str, RunSpec]]:
    """The criterion's sparse network and its controls at one sparsity, as runs to train."""
    sdir = layout.sparsity_dir(out, sparsity)
    cache: dict[str, Any] = {}

    def scores() -> dict:
        if "scores" not in cache:
            cache["scores"] = criterion_scores(cfg, data, settings, sparsity)
        return cache["scores"]

    def pruned() -> Mask:
        if "pruned" not in cache:  # made and stored once, then shared by its controls
            cache["pruned"] = stored_mask(
                sdir / layout.MASK, lambda: _prune(settings, scores(), sparsity)
            )
        return cache["pruned"]

    label = f"{settings.criterion} {100 * sparsity:g}% s{cfg.init_seed}"
    record = {"label": label, "sparsity": sparsity, "criterion": settings.criterion}
    runs = [(PRUNED, RunSpec(cfg, layout.control_dir(sdir, PRUNED), make_model(cfg, data),
                             pruned(), None, record, finish=Finish()))]  # fmt: skip
    given = AtInitControl(cfg, sparsity, pruned, scores, lambda s: _prune(settings, s, sparsity))
    for name in settings.controls:
        run = AT_INIT_CONTROLS[name](given)
        folder = layout.control_dir(sdir, name)
        mask = stored_mask(folder / layout.MASK, run.mask) if run.mask is not None else pruned()
        model = make_model(cfg, data, seed=run.init_seed)
        rec = {**record, "label": f"{label} {name}", "control": name, **run.record}
        runs.append((name, RunSpec(cfg, folder, model, mask, None, rec, finish=Finish())))
    return runs


def criterion_scores(
    cfg: TrainConfig, data: Splits, settings: AtInitConfig, sparsity: float
) -> dict:
    """The criterion's scores of the initialised network (batches drawn by the data seed, random
    scores by the init seed)."""
    model = make_model(cfg, data).to(data.train_x.device)
    params = dict(model.named_parameters())
    ctx = Context(
        {n: params[n].detach() for n in Mask.ones(model).names()},
        model=model,
        sparsity=sparsity,
        batches=training_batches(data.train_x, data.train_y, cfg.batch_size, cfg.data_seed),
        score_batches=settings.score_batches,
        input_shape=data.input_shape,
        scope=settings.scope,
    )
    return score(settings.criterion, ctx, seed=cfg.init_seed)


def shuffle_seed(cfg: TrainConfig, sparsity: float) -> int:
    """The layer-shuffle control's seed: distinct per init seed and sparsity."""
    return cfg.init_seed * SHUFFLE_OFFSET + round(10_000 * sparsity)


def _prune(settings: AtInitConfig, scores: dict, sparsity: float) -> Mask:
    names = list(scores)
    ones = Mask({n: scores[n].new_ones(scores[n].shape, dtype=bool) for n in names})
    return prune(
        ones,
        scores,
        sparsity=sparsity,
        scope=settings.scope,
        granularity=settings.granularity,
        rate_scale=settings.rate_scale,
    ).cpu()


def _metrics(result: TrainResult) -> dict[str, Any]:
    keys = ("test_accuracy", "test_loss", "best_val_step", "test_accuracy_at_best_val", "seconds")
    return {k: getattr(result, k) for k in keys}
