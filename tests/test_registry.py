"""Registries load a built-in entry's module only when the entry is used, and take a user's entry
beside the built-ins; a criterion registered from outside the package prunes like a built-in."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from lottery import CRITERIA, DATASETS, Mask, prune, register_criterion, score
from lottery.pruning.criteria import Context
from lottery.pruning.names import criterion_needs, usable
from lottery.registry import Registry
from lottery.studies.names import AT_INIT_CONTEXT, ROUTES


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A module the test writes, counting how often it is imported."""
    (tmp_path / "counted_plugin.py").write_text(
        "import builtins\nbuiltins.counted_imports = getattr(builtins, 'counted_imports', 0) + 1\n"
        "def double(x):\n    return 2 * x\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "counted_plugin", raising=False)
    yield
    import builtins

    if hasattr(builtins, "counted_imports"):
        del builtins.counted_imports


def test_a_builtin_entry_loads_on_first_use_only(plugin):
    import builtins

    reg = Registry("thing", {"double": ("counted_plugin:double", {"cost": 1}), "b": "x.y:z"})
    assert list(reg) == ["double", "b"] and len(reg) == 2 and "double" in reg
    assert reg.facts("double") == {"cost": 1}
    assert "counted_plugin" not in sys.modules
    assert reg["double"](21) == 42 and reg["double"](1) == 2
    assert builtins.counted_imports == 1  # imported once, then kept


def test_a_user_entry_sits_beside_the_builtins_and_unknown_names_are_listed():
    reg = Registry("thing", {"a": "os.path:join"})
    fn = reg.register("mine", len, cost=3)
    assert fn is len and reg["mine"] is len and reg.facts("mine") == {"cost": 3}
    reg["a"] = abs  # replacing keeps the facts
    assert reg["a"] is abs and reg.facts("a") == {}
    del reg["mine"]
    with pytest.raises(KeyError, match="unknown thing 'mine'; choose from a"):
        reg["mine"]
    with pytest.raises(KeyError, match="unknown thing 'zz'"):
        reg.facts("zz")


def test_every_builtin_entry_resolves():
    import os.path

    for registry in (CRITERIA, DATASETS, ROUTES):
        for name in registry:
            assert registry[name] is not None, name
    code = "import sys; from lottery import CRITERIA; list(CRITERIA); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert os.path.join is Registry("t", {"j": "os.path:join"})["j"]


def test_a_criterion_registered_from_outside_prunes_like_a_builtin():
    """A criterion written outside the package: the smallest magnitudes kept (the inverse of
    magnitude pruning), checked against an independent sort."""

    def smallest(ctx: Context, gen: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        return {n: -w.abs() for n, w in ctx.weights.items()}

    assert register_criterion("smallest", smallest) is smallest
    try:
        check_smallest(smallest)
    finally:
        del CRITERIA["smallest"]
    assert "smallest" not in CRITERIA


def check_smallest(smallest) -> None:
    assert criterion_needs("smallest") == () and "smallest" in usable(set(AT_INIT_CONTEXT))
    w = {"w": torch.randn(40, 30, generator=torch.Generator().manual_seed(0))}
    mask = prune(Mask({"w": torch.ones(40, 30, dtype=torch.bool)}), score("smallest", Context(w)),
                 sparsity=0.75, scope="global")  # fmt: skip
    kept = w["w"].abs().flatten().sort().indices[:300]
    assert mask.kept() == 300 and mask.tensors["w"].flatten()[kept].all()
    with pytest.raises(ValueError, match="unknown needs"):
        register_criterion("bad", smallest, needs=("weights",))


def test_a_function_given_directly_is_recorded_by_its_path():
    from lottery import IMPConfig
    from lottery.core.config import ConfigError
    from lottery.pruning import criteria, schedules
    from lottery.pruning.schedules import Schedule

    by_fn = Schedule(schedules.cosine, final_sparsity=0.6)
    assert by_fn.name == "lottery.pruning.schedules:cosine"
    by_name = Schedule("cosine", final_sparsity=0.6)
    assert [by_fn.value(p / 10) for p in range(11)] == [by_name.value(p / 10) for p in range(11)]
    assert IMPConfig(criterion=criteria.snip).criterion == "lottery.pruning.criteria:snip"
    with pytest.raises(ConfigError, match="cannot be recorded by name"):
        Schedule(lambda p, s_i, s_f: s_f, final_sparsity=0.5)
    w = {"w": torch.randn(10, 10, generator=torch.Generator().manual_seed(1))}
    by_path = score("lottery.pruning.criteria:magnitude", Context(w))
    assert torch.equal(by_path["w"], score(criteria.magnitude, Context(w))["w"])
    assert torch.equal(by_path["w"], score("magnitude", Context(w))["w"])


def test_a_function_passed_to_score_need_not_be_importable():
    """Scoring records nothing, so a nested function (or a lambda) scores directly; its `needs`
    attribute is honoured."""

    def negative(ctx: Context, gen: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        return {n: -w for n, w in ctx.weights.items()}

    w = {"w": torch.arange(6.0).view(2, 3)}
    assert torch.equal(score(negative, Context(w))["w"], -w["w"])
    negative.needs = ("model",)
    with pytest.raises(ValueError, match="criterion '.*negative' needs the model"):
        score(negative, Context(w))
