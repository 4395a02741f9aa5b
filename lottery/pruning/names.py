"""The pruning layer's vocabulary, importable without torch: criteria by name, scopes, granularities.

The command line builds its choices from here, and a criterion's module loads only when it scores.
A new criterion is one function in `lottery.pruning.criteria` (or anywhere, via
`register_criterion`) plus one line in CRITERIA naming what it needs of the Context. A function
that is not registered can be named "package.module:function" (its `needs` attribute, if any,
says what it needs) or, from Python, passed itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lottery.core.config import ConfigError
from lottery.registry import Registry, path_of

GRANULARITIES = ("weight", "filter", "channel")
# How a sparsity is spread over layers: one threshold over all, the same in each, or by shape
# (ERK and ER, `lottery.pruning.allocation`).
SCOPES = ("global", "layer", "erk", "er")
# --allocation's names for them (Evci et al., ICML 2020 call the per-layer one "uniform").
ALLOCATIONS = {"uniform": "layer", "global": "global", "erk": "erk", "er": "er"}
# Dynamic sparse training (`lottery.pruning.dst`): its methods, α (Evci et al., ICML 2020; ζ of
# Mocanu et al. 2018) and T_end as a fraction of training (Evci et al. 2020).
DST_METHODS = ("set", "rigl")
DROP_FRACTION, DST_END = 0.3, 0.75

# Context fields a criterion may need, as an error message names them.
NEEDS = {
    "start": "the initial (or rewind) weights",
    "model": "the model",
    "batches": "training batches",
    "input_shape": "the input shape",
    "sparsity": "the target sparsity",
    "movement": "scores accumulated during training (use it with a gradual schedule)",
}


def _builtin(fn: str, *needs: str) -> tuple[str, dict[str, Any]]:
    return f"lottery.pruning.criteria:{fn}", {"needs": needs}


# name -> scoring function fn(ctx, generator) -> scores (higher = keep), and the Context fields
# it cannot do without.
CRITERIA: Registry = Registry(
    "pruning criterion",
    {
        "magnitude": _builtin("magnitude"),
        "large_final": _builtin("magnitude"),
        "random": _builtin("random"),
        "small_final": _builtin("small_final"),
        "large_init": _builtin("large_init", "start"),
        "small_init": _builtin("small_init", "start"),
        "large_init_large_final": _builtin("large_init_large_final", "start"),
        "small_init_small_final": _builtin("small_init_small_final", "start"),
        "large_init_large_final_min": _builtin("large_init_large_final_min", "start"),
        "small_init_small_final_max": _builtin("small_init_small_final_max", "start"),
        "magnitude_increase": _builtin("magnitude_increase", "start"),
        "movement": _builtin("movement", "start"),
        "snip": _builtin("snip", "model", "batches"),
        "grasp": _builtin("grasp", "model", "batches"),
        "synflow": _builtin("synflow", "model", "input_shape", "sparsity"),
        "movement-pruning": _builtin("movement_pruning", "movement"),
        "lamp": _builtin("lamp"),
    },
)


def register_criterion(name: str, fn: Callable, needs: tuple[str, ...] = ()) -> Callable:
    """Make `fn(ctx, generator) -> {name: scores}` usable by name everywhere (CLI included);
    `needs` names the Context fields it requires (keys of NEEDS)."""
    unknown = [n for n in needs if n not in NEEDS]
    if unknown:
        raise ValueError(f"unknown needs {unknown}; choose from {', '.join(NEEDS)}")
    return CRITERIA.register(name, fn, needs=tuple(needs))


def criterion_name(criterion: str | Callable) -> str:
    """A criterion as settings record it: its registered name or "package.module:function", also
    for a function given directly (found again by that path when a run resumes)."""
    if isinstance(criterion, str):
        return criterion
    try:
        return path_of(criterion)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def criterion_needs(name: str) -> tuple[str, ...]:
    """The Context fields criterion `name` requires: a registered one's, known without loading
    it, or a "module:function" one's `needs` attribute (none if it has none)."""
    if name in CRITERIA:
        return CRITERIA.facts(name)["needs"]
    return tuple(getattr(CRITERIA.load(name), "needs", ()))


def usable(have: set[str]) -> list[str]:
    """The registered criteria that need only Context fields in `have`, sorted."""
    return sorted(n for n in CRITERIA if set(criterion_needs(n)) <= have)
