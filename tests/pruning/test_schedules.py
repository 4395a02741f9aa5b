"""Pruning schedules: formulas, window edges, monotonicity, validation, and `lottery schedule`."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from lottery.cli.main import main
from lottery.core.config import ConfigError
from lottery.pruning.schedules import SCHEDULES, Schedule, register_schedule, schedule_params

S_I, S_F = 0.1, 0.95


def reference(name: str, p: float, s_i: float, s_f: float, **kw) -> float:
    """The schedules' published formulas (Zhu & Gupta 2017; Hubens et al. 2022), written out
    independently (exact fractions where possible)."""
    if name == "one-shot":
        return s_f
    if name == "iterative":
        n = kw.get("n_steps", 3)
        k = math.ceil(Fraction(p) * n)  # exact: no float rounding at k / n
        return s_i + (s_f - s_i) * k / n
    if name == "agp":
        return s_f + (s_i - s_f) * (1 - p) ** 3
    if name == "one-cycle":
        a, b = kw.get("alpha", 14.0), kw.get("beta", 5.0)
        return s_i + (s_f - s_i) * (1 + np.exp(-a + b)) / (1 + np.exp(-a * p + b))
    if name == "linear":
        return s_i + p * (s_f - s_i)
    if name == "cosine":
        return s_i + (s_f - s_i) * (1 - np.cos(np.pi * p)) / 2
    if name == "exponential":
        return s_i * (s_f / s_i) ** p
    raise KeyError(name)


BUILTIN = ["one-shot", "iterative", "agp", "one-cycle", "linear", "cosine", "exponential"]


@pytest.mark.parametrize("name", BUILTIN)
def test_values_follow_the_formula_inside_and_outside_the_window(name):
    total, a, b = 1000, 200, 800  # window 0.2..0.8 of a 1000-step run
    sched = Schedule(name, S_F, S_I, start=0.2, end=0.8)
    assert sched.window_steps(total) == (a, b)
    for step in range(0, total + 1, 7):
        got = sched.at_step(step, total)
        if step < a:
            want = S_I
        elif step >= b:
            want = S_F
        else:
            want = reference(name, Fraction(step - a, b - a), S_I, S_F)
        assert got == pytest.approx(float(want), abs=1e-12), (name, step)
    # window edges: last step before, first step in, last step in, the end and after it
    assert sched.at_step(a - 1, total) == S_I
    assert sched.at_step(a, total) == pytest.approx(float(reference(name, 0.0, S_I, S_F)))
    assert sched.at_step(b - 1, total) == pytest.approx(
        float(reference(name, Fraction(b - 1 - a, b - a), S_I, S_F)), abs=1e-12
    )
    assert sched.at_step(b, total) == S_F
    assert sched.at_step(total, total) == S_F
    assert sched.value(1.0) == S_F  # exactly, no float rounding at the window end
    if name not in ("one-shot", "one-cycle"):
        assert sched.value(0.0) == S_I


def test_window_start_values():
    assert Schedule("one-shot", 0.9, start=0.4).value(0.0) == 0.9  # jumps at the window start
    for name in ("iterative", "agp", "linear", "cosine"):
        assert Schedule(name, 0.9, 0.2).value(0.0) == pytest.approx(0.2)
    assert Schedule("exponential", 0.9, 0.2).value(0.0) == pytest.approx(0.2)
    # one-cycle starts a little above s_i, as the paper's formula does, and ends at s_f exactly
    oc = Schedule("one-cycle", 0.9, 0.2)
    assert oc.value(0.0) == pytest.approx(0.2 + 0.7 * (1 + math.exp(-9)) / (1 + math.exp(5)))
    assert oc.value(1.0) == 0.9
    assert Schedule("one-cycle", 0.95).value(1.0) == 0.95


def test_iterative_jumps_exactly_at_multiples_of_one_over_n():
    sched = Schedule("iterative", 0.9, 0.0, params={"n_steps": 10})
    for k in range(11):
        assert sched.value(k / 10) == pytest.approx(0.9 * k / 10, abs=1e-12)  # 0.7 * 10 = 7.0000001
        if k < 10:
            assert sched.value(k / 10 + 1e-6) == pytest.approx(0.9 * (k + 1) / 10)
    # over a 100-step run, 4 steps: s jumps right after steps 0, 25, 50, 75
    four = Schedule("iterative", 0.8, params={"n_steps": 4})
    curve = four.curve(100)
    assert curve[0] == 0 and curve[1] == curve[25] == pytest.approx(0.2)
    assert curve[26] == pytest.approx(0.4) and curve[76] == curve[100] == pytest.approx(0.8)


def test_one_cycle_alpha_beta_are_settable():
    sched = Schedule("one-cycle", 0.9, params={"alpha": 10.0, "beta": 6.0})
    for p in np.linspace(0, 1, 23):
        assert sched.value(p) == pytest.approx(reference("one-cycle", p, 0, 0.9, alpha=10, beta=6))
    assert schedule_params(SCHEDULES["one-cycle"]) == {"alpha": 14.0, "beta": 5.0}


@pytest.mark.parametrize(
    "name,s_i,s_f",
    [
        (name, s_i, s_f)
        for name in BUILTIN
        for s_i, s_f in [(0.0, 0.95), (0.3, 0.8), (0.5, 0.5), (0.01, 0.99)]
        if not (name == "exponential" and s_i == 0)  # an error, tested below
    ],
)
def test_monotone_non_decreasing(name, s_i, s_f):
    sched = Schedule(name, s_f, s_i, start=0.1, end=0.9)
    curve = np.array(sched.curve(997))
    assert np.all(np.diff(curve) >= 0)
    assert curve[0] == s_i and curve[-1] == s_f
    assert np.all((curve >= s_i) & (curve <= s_f))


def test_windows_in_epochs_and_steps():
    by_epoch = Schedule("linear", 0.5, start=1, end=3, unit="epoch")
    assert by_epoch.window_steps(500, steps_per_epoch=100) == (100, 300)
    assert by_epoch.at_step(200, 500, steps_per_epoch=100) == pytest.approx(0.25)
    by_step = Schedule("linear", 0.5, start=10, end=30, unit="step")
    assert by_step.at_step(20, 100) == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="steps per epoch"):
        by_epoch.window_steps(500)
    with pytest.raises(ConfigError, match="past the end of training"):
        by_step.window_steps(20)
    with pytest.raises(ConfigError, match="shorter than one step"):
        Schedule("linear", 0.5, start=0.5, end=0.501).window_steps(100)


def test_user_functions_of_progress():
    register_schedule("square", lambda p, s_i, s_f: s_i + (s_f - s_i) * p * p)
    try:
        sched = Schedule("square", 0.8)
        assert sched.value(0.5) == pytest.approx(0.2)
        assert sched.to_dict()["name"] == "square"
    finally:
        del SCHEDULES["square"]
    by_path = Schedule("lottery.pruning.schedules:cosine", 0.8)
    assert by_path.value(0.5) == pytest.approx(0.4)
    register_schedule("wild", lambda p, s_i, s_f: 1.5)
    try:
        with pytest.raises(ConfigError, match="outside"):
            Schedule("wild", 0.8).value(0.5)
    finally:
        del SCHEDULES["wild"]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"name": "linear", "final_sparsity": 1.0}, "final sparsity must be in"),
        ({"name": "linear", "final_sparsity": 1.5}, "final sparsity must be in"),
        ({"name": "linear", "final_sparsity": -0.1}, "final sparsity must be in"),
        ({"name": "linear", "final_sparsity": float("nan")}, "final sparsity must be in"),
        ({"name": "linear", "final_sparsity": 0.9, "initial_sparsity": -0.2}, "initial sparsity"),
        ({"name": "linear", "final_sparsity": 0.5, "initial_sparsity": 0.6}, "exceeds final"),
        ({"name": "linear", "final_sparsity": 0.9, "start": 0.7, "end": 0.3}, "before its end"),
        ({"name": "linear", "final_sparsity": 0.9, "start": 0.5, "end": 0.5}, "before its end"),
        ({"name": "linear", "final_sparsity": 0.9, "start": -0.1}, "start must be >= 0"),
        ({"name": "linear", "final_sparsity": 0.9, "end": 1.2}, "past the end of training"),
        ({"name": "linear", "final_sparsity": 0.9, "unit": "hour"}, "unknown window unit"),
        ({"name": "quadratic", "final_sparsity": 0.9}, "unknown pruning schedule 'quadratic'"),
        ({"name": "no.such.module:f", "final_sparsity": 0.9}, "cannot load schedule function"),
        ({"name": "os:getcwd", "final_sparsity": 0.9}, r"must take \(p, s_i, s_f\)"),
        ({"name": "exponential", "final_sparsity": 0.9}, "non-zero initial sparsity"),
        ({"name": "agp", "final_sparsity": 0.9, "params": {"alpha": 3}}, "no parameter 'alpha'"),
        ({"name": "iterative", "final_sparsity": 0.9, "params": {"n_steps": 0}}, "n_steps"),
        ({"name": "iterative", "final_sparsity": 0.9, "params": {"n_steps": 2.5}}, "integer"),
        ({"name": "one-cycle", "final_sparsity": 0.9, "params": {"alpha": -1.0}}, "alpha"),
    ],
)
def test_bad_parameters_give_clear_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Schedule(**kwargs)


def test_cli_prints_n_plus_one_rows(capsys):
    assert (
        main(["schedule", "agp", "--final-sparsity", "0.9", "--steps", "50", "--start", "0.2"]) == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "step,sparsity" and len(lines) == 52
    sched = Schedule("agp", 0.9, start=0.2)
    for line in lines[1:]:
        step, value = line.split(",")
        assert float(value) == pytest.approx(sched.at_step(int(step), 50), abs=1e-6)


def test_cli_overlays_several_schedules_and_plots(capsys, tmp_path):
    png = tmp_path / "fig" / "schedules.png"
    argv = ["schedule", "one-cycle", "cosine", "iterative", "--final-sparsity", "0.95"]
    argv += ["--steps", "20", "--n-steps", "4", "--alpha", "12", "--plot", str(png)]
    assert main(argv) == 0
    printed = capsys.readouterr()
    lines = printed.out.strip().splitlines()
    assert lines[0] == "step,one-cycle,cosine,iterative" and len(lines) == 22
    assert lines[-1] == "20,0.950000,0.950000,0.950000"
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert printed.err.strip() == f"plot: {png}"  # the path, beside (not inside) the CSV


@pytest.mark.parametrize(
    "argv,match",
    [
        (["linear", "--final-sparsity", "1.0"], "final sparsity must be in"),
        (["linear", "--final-sparsity", "0.9", "--start", "0.8", "--end", "0.2"], "before its end"),
        (["nope", "--final-sparsity", "0.9"], "unknown pruning schedule 'nope'"),
        (["exponential", "--final-sparsity", "0.9"], "--initial-sparsity"),
        (["linear", "--final-sparsity", "0.9", "--alpha", "3"], "--alpha applies to none"),
        (["linear", "--final-sparsity", "0.9", "--steps", "0"], "--steps must be >= 1"),
    ],
)
def test_cli_errors_exit_2_with_the_reason(argv, match, capsys):
    assert main(["schedule", *argv]) == 2
    assert match in capsys.readouterr().err
