"""The studies' vocabulary, importable without torch: resets, controls, context, methods, routes.

Every study module takes its choices and defaults from here, and so does the command line, whose
parsers and --help are built without loading the modules that train.
"""

from __future__ import annotations

from dataclasses import dataclass

from lottery.registry import Registry

# IMP (Frankle & Carbin, ICLR 2019; Frankle et al., ICML 2020): where survivors go back to.
RESETS = ("init", "rewind", "lr-rewind", "finetune")
# name -> control(ImpControl) -> ControlRun, trained beside each round's ticket
IMP_CONTROLS: Registry = Registry(
    "IMP control",
    {
        "random-reinit": "lottery.studies.imp:random_reinit",
        "random-prune": "lottery.studies.imp:random_prune",
    },
)
# What pruning a trained network can offer a criterion (IMP rounds, one-shot curves).
TICKET_CONTEXT = frozenset({"start", "model", "batches", "input_shape", "sparsity"})

# Supermasks: edge-popup's optimiser (Ramanujan et al., CVPR 2020), SGD with momentum 0.9, LR 0.1
# on a cosine schedule, weight decay 5e-4 on the scores; what a supermask run uses where a flag
# leaves a setting unset.
SUPERMASK_TRAINING = {
    "optimizer": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "lr_schedule": "cosine",
}

# Pruning at initialisation and the sanity checks of Frankle et al. (ICLR 2021).
# name -> control(AtInitControl) -> ControlRun, trained beside each pruned-at-init network
AT_INIT_CONTROLS: Registry = Registry(
    "at-init control",
    {
        "layer-shuffle": "lottery.studies.at_init:layer_shuffle",
        "reinit": "lottery.studies.at_init:reinit",
        "invert": "lottery.studies.at_init:invert",
    },
)
AT_INIT_CONTEXT = frozenset({"model", "batches", "input_shape", "sparsity"})

# Two primes from which the controls' seeds derive (IMP's random re-init and random prune,
# pruning at init's reinit and layer-shuffle), so that no control shares a seed with a run or with
# the other control. They are part of every recorded control's result, so they never change.
CONTROL_PRIMES = (7919, 104729)

# Gradual pruning: every prunable tensor, or convolution weights only.
LAYERS = ("all", "conv")

# One-shot curves: 0%, 5%, ..., 95%.
CURVE_SPARSITIES = tuple(round(0.05 * i, 2) for i in range(20))

# Linear mode connectivity (Frankle et al., ICML 2020): evaluation points on a path, at least.
MIN_POINTS = 11

# Inference timing: batch sizes, and the routes and sparsities of a sweep.
SPEED_BATCHES = (1, 256)
SWEEP_ROUTES = ("compact", "sparse")
SWEEP_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)

# Export routes: name -> fn(model, mask, architecture) -> Exported.
ROUTES: Registry = Registry(
    "export route",
    {
        "compact": "lottery.studies.export:export_compact",
        "sparse": "lottery.studies.export:export_sparse",
        "2:4": "lottery.studies.export:export_two_four",
        "dense": "lottery.studies.export:export_dense",
    },
)


@dataclass(frozen=True)
class Method:
    """How one curve prunes: scope, granularity and criterion of the shared mask engine."""

    name: str
    scope: str
    granularity: str
    criterion: str


def methods(norm: float = 2.0) -> dict[str, Method]:
    """The compared curve methods by name; structured pruning ranks filters by their `norm`-norm."""
    structured = f"layer-filter-l{norm:g}"
    return {
        "layer-l1": Method("layer-l1", "layer", "weight", "magnitude"),
        structured: Method(structured, "layer", "filter", "magnitude"),
        "global-l1": Method("global-l1", "global", "weight", "magnitude"),
        "random": Method("random", "layer", "weight", "random"),
    }
