"""Gradual pruning schedules: training progress -> target sparsity.

A schedule function maps progress p in [0, 1] through the pruning window, the initial sparsity s_i
and the final sparsity s_f to a target sparsity. Before the window the target is s_i, after it s_f
(the tail in which the network recovers). Formulas follow Hubens et al., "Which Pruning Schedule
Should I Use?" (2021 blog; ICIP 2022, arXiv 2107.02086) and Zhu & Gupta 2017 for AGP.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, get_type_hints

from lottery.core.config import ConfigError
from lottery.registry import Registry, path_of

ScheduleFn = Callable[..., float]
UNITS = ("fraction", "epoch", "step")
# ceil(p * n) must not jump one step early because p * n came out as k + 1e-16
_CEIL_SLACK = 1e-9


def _lerp(s_i: float, s_f: float, g: float) -> float:
    """s_i + (s_f - s_i) g, exactly s_i at g = 0 and exactly s_f at g = 1 (no float rounding)."""
    return s_f if g >= 1.0 else s_i + (s_f - s_i) * g


def one_shot(p: float, s_i: float, s_f: float) -> float:
    """All pruning at the window start (Hubens: start at ~40% of a fixed budget)."""
    return s_f


def iterative(
    p: float, s_i: float, s_f: float, n_steps: Annotated[int, "number of pruning steps"] = 3
) -> float:
    """`n_steps` equal jumps: s_i + (s_f - s_i) * ceil(p * n) / n."""
    return _lerp(s_i, s_f, math.ceil(p * n_steps - _CEIL_SLACK) / n_steps)


def agp(p: float, s_i: float, s_f: float) -> float:
    """Automated gradual pruning, s_f + (s_i - s_f) (1 - p)^3 (Zhu & Gupta 2017)."""
    return _lerp(s_i, s_f, 1.0 - (1.0 - p) ** 3)


def one_cycle(
    p: float,
    s_i: float,
    s_f: float,
    alpha: Annotated[float, "slope α"] = 14.0,
    beta: Annotated[float, "offset β"] = 5.0,
) -> float:
    """Logistic ramp s_i + (s_f - s_i) (1 + e^(β-α)) / (1 + e^(β-αp)) (Hubens et al. 2022).

    α = 14, β = 5 are the paper's and blog's values. The (1 + e^(β-α)) numerator normalises the
    curve so that it equals s_f exactly at p = 1; at p = 0 it starts slightly above s_i
    (by (s_f - s_i)(1 + e^(β-α)) / (1 + e^β), 0.7% of the range at the defaults), as in the paper.
    """
    return _lerp(s_i, s_f, (1.0 + math.exp(beta - alpha)) / (1.0 + math.exp(beta - alpha * p)))


def linear(p: float, s_i: float, s_f: float) -> float:
    """s_i + p (s_f - s_i)."""
    return _lerp(s_i, s_f, p)


def cosine(p: float, s_i: float, s_f: float) -> float:
    """s_i + (s_f - s_i) (1 - cos(π p)) / 2."""
    return _lerp(s_i, s_f, (1.0 - math.cos(math.pi * p)) / 2.0)


def exponential(p: float, s_i: float, s_f: float) -> float:
    """s_i (s_f / s_i)^p; needs s_i > 0."""
    return s_f if p >= 1.0 else s_i * (s_f / s_i) ** p


SCHEDULES: Registry = Registry(
    "pruning schedule",
    {
        "one-shot": one_shot,
        "iterative": iterative,
        "agp": agp,
        "one-cycle": one_cycle,
        "linear": linear,
        "cosine": cosine,
        "exponential": exponential,
    },
)


def _check_signature(name: str, fn: object) -> ScheduleFn:
    if not callable(fn):
        raise ConfigError(f"schedule {name!r} is not a function")
    try:
        inspect.signature(fn).bind(0.0, 0.0, 0.0)
    except TypeError:
        raise ConfigError(
            f"schedule {name!r} must take (p, s_i, s_f): window progress, initial and final "
            "sparsity"
        ) from None
    except ValueError:  # no signature to inspect (some built-ins): checked on first use
        pass
    return fn


def register_schedule(name: str, fn: ScheduleFn) -> ScheduleFn:
    """Make `fn(p, s_i, s_f, **params) -> sparsity` usable by name everywhere (CLI included: its
    parameters become flags, with the help text of `Annotated[type, "help"]` annotations)."""
    return SCHEDULES.register(name, _check_signature(name, fn))


def resolve(name: str) -> ScheduleFn:
    """A registered schedule, or a user function given as "package.module:function"."""
    if name in SCHEDULES:  # checked when registered
        return SCHEDULES[name]
    if ":" not in name:
        raise ConfigError(
            f"unknown pruning schedule {name!r}; choose from {', '.join(SCHEDULES)} "
            "or give a function of progress as module:function"
        )
    try:
        fn = SCHEDULES.load(name)
    except KeyError as e:
        raise ConfigError(f"cannot load schedule function {name!r}: {e.args[0]}") from None
    return _check_signature(name, fn)


def schedule_params(fn: ScheduleFn) -> dict[str, Any]:
    """The settable parameters of a schedule function and their defaults (beyond p, s_i, s_f)."""
    sig = inspect.signature(fn)
    return {
        n: prm.default
        for n, prm in list(sig.parameters.items())[3:]
        if prm.kind in (prm.POSITIONAL_OR_KEYWORD, prm.KEYWORD_ONLY)
    }


@dataclass(frozen=True)
class Param:
    """A schedule parameter as the command line offers it: one flag for every schedule taking it."""

    name: str
    kind: type  # int, float or str, from the default
    help: str  # "iterative: number of pruning steps (default 3)", from the parameter's annotation


def schedule_flags() -> list[Param]:
    """Every parameter of the registered schedules, so a schedule registered before the command
    line is built gets its flags; the help is the `Annotated[type, "help"]` text where given."""
    takers: dict[str, list[str]] = {}
    defaults: dict[str, list[str]] = {}
    found: dict[str, tuple[type, str]] = {}
    for name, fn in SCHEDULES.items():
        try:
            hints = get_type_hints(fn, include_extras=True)
        except (NameError, TypeError):  # annotations that do not resolve: no help text
            hints = {}
        for param, default in schedule_params(fn).items():
            notes = [m for m in getattr(hints.get(param), "__metadata__", ()) if isinstance(m, str)]
            kind = type(default) if type(default) in (int, float) else str
            found.setdefault(param, (kind, notes[0] if notes else param.replace("_", " ")))
            takers.setdefault(param, []).append(name)
            defaults.setdefault(param, []).append(f"{default:g}" if kind is not str else default)
    return [
        Param(p, kind, f"{', '.join(takers[p])}: {text} (default {', '.join(defaults[p])})")
        for p, (kind, text) in found.items()
    ]


def _check_params(name: str, fn: ScheduleFn, params: dict[str, Any]) -> None:
    known = schedule_params(fn)
    unknown = sorted(set(params) - set(known))
    if unknown:
        takes = ", ".join(known) or "no parameters"
        raise ConfigError(f"schedule {name!r} has no parameter {unknown[0]!r} (it takes {takes})")
    full = {**known, **params}
    if "n_steps" in full and (
        not isinstance(full["n_steps"], int) or isinstance(full["n_steps"], bool)
    ):
        raise ConfigError(f"n_steps must be an integer, got {full['n_steps']!r}")
    if "n_steps" in full and full["n_steps"] < 1:
        raise ConfigError(f"n_steps must be >= 1, got {full['n_steps']}")
    if fn is one_cycle and not full["alpha"] > 0:
        raise ConfigError(f"one-cycle alpha must be > 0 (else sparsity falls), got {full['alpha']}")


@dataclass(frozen=True)
class Schedule:
    """A named schedule with its sparsities and pruning window.

    The window [start, end] is in `unit`: fractions of training (within [0, 1]), epochs or steps.
    `params` are the schedule function's own settings (iterative: n_steps; one-cycle: alpha, beta).
    `name` is a registered schedule, "package.module:function", or such a function itself (kept as
    its path, so records name it and a resumed run finds it again).
    """

    name: str
    final_sparsity: float
    initial_sparsity: float = 0.0
    start: float = 0.0
    end: float = 1.0
    unit: str = "fraction"
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if callable(self.name):
            try:
                object.__setattr__(self, "name", path_of(self.name))
            except ValueError as e:
                raise ConfigError(str(e)) from None
        s_i, s_f = self.initial_sparsity, self.final_sparsity
        for what, v in (("final sparsity", s_f), ("initial sparsity", s_i)):
            if not isinstance(v, int | float) or math.isnan(v) or not 0.0 <= v < 1.0:
                raise ConfigError(f"{what} must be in [0, 1), got {v!r}")
        if s_i > s_f:
            raise ConfigError(f"initial sparsity {s_i} exceeds final sparsity {s_f}")
        if self.unit not in UNITS:
            raise ConfigError(f"unknown window unit {self.unit!r}; choose from {UNITS}")
        if self.start < 0:
            raise ConfigError(f"pruning window start must be >= 0, got {self.start}")
        if self.start >= self.end:
            raise ConfigError(
                f"pruning window start {self.start} must come before its end {self.end}"
            )
        if self.unit == "fraction" and self.end > 1:
            raise ConfigError(f"pruning window end {self.end} lies past the end of training (1.0)")
        fn = resolve(self.name)
        object.__setattr__(self, "_fn", fn)  # resolved once: the schedule is read at every step
        if fn is exponential and s_i <= 0:
            raise ConfigError(
                "the exponential schedule s_i (s_f / s_i)^p needs a non-zero initial sparsity; "
                "give an initial sparsity > 0 (--initial-sparsity)"
            )
        _check_params(self.name, fn, self.params)

    @property
    def fn(self) -> ScheduleFn:
        return self._fn

    def value(self, p: float) -> float:
        """Target sparsity at progress p of the window (clipped to [0, 1])."""
        s_i, s_f = self.initial_sparsity, self.final_sparsity
        out = self.fn(min(1.0, max(0.0, p)), s_i, s_f, **self.params)
        if isinstance(out, bool) or not isinstance(out, int | float):
            raise ConfigError(
                f"schedule {self.name!r} returned {out!r} at progress {p}, not a number"
            )
        v = float(out)
        if not s_i - 1e-9 <= v <= s_f + 1e-9:
            raise ConfigError(
                f"schedule {self.name!r} gave sparsity {v} at progress {p}, "
                f"outside [initial {s_i}, final {s_f}]"
            )
        return min(s_f, max(s_i, v))

    def window_steps(self, total_steps: int, steps_per_epoch: int | None = None) -> tuple[int, int]:
        """The window as optimizer steps [a, b] of a run of `total_steps` (rounded to whole steps)."""
        if self.unit == "fraction":
            a, b = round(self.start * total_steps), round(self.end * total_steps)
        elif self.unit == "epoch":
            if not steps_per_epoch:
                raise ConfigError("a window in epochs needs the run's steps per epoch")
            a, b = round(self.start * steps_per_epoch), round(self.end * steps_per_epoch)
        else:
            a, b = round(self.start), round(self.end)
        if b > total_steps:
            raise ConfigError(
                f"pruning window ends at step {b}, past the end of training ({total_steps} steps)"
            )
        if a >= b:
            raise ConfigError(
                f"pruning window {self.start}-{self.end} ({self.unit}) is shorter than one step "
                f"of a {total_steps}-step run"
            )
        return a, b

    def at_step(self, step: int, total_steps: int, steps_per_epoch: int | None = None) -> float:
        """Target sparsity after `step` optimizer steps: s_i before the window, s_f after it."""
        a, b = self.window_steps(total_steps, steps_per_epoch)
        if step < a:
            return self.initial_sparsity
        if step >= b:
            return self.final_sparsity
        return self.value((step - a) / (b - a))

    def curve(self, total_steps: int, steps_per_epoch: int | None = None) -> list[float]:
        """Target sparsity at steps 0..total_steps (for inspection and plots)."""
        return [self.at_step(s, total_steps, steps_per_epoch) for s in range(total_steps + 1)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (recorded in run configs and pruner state)."""
        return {
            "name": self.name,
            "initial_sparsity": self.initial_sparsity,
            "final_sparsity": self.final_sparsity,
            "start": self.start,
            "end": self.end,
            "unit": self.unit,
            "params": {**schedule_params(self.fn), **self.params},
        }
