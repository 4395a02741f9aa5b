"""Data flows one way through the package's layers: each subpackage imports only from those below
it (function-level imports included), so there are no cycles; docs/architecture.md draws them."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Bottom to top. `registry` is the one shared utility; the model catalogue sits below the
# configuration, which reads each model's recipe from it.
LAYERS = ["registry", "models", "core", "datasets", "pruning", "training", "analysis", "studies",
          "cli", "sweeps"]  # fmt: skip


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "lottery"


def test_every_import_goes_down_the_layers():
    upward = []
    for path in sorted((ROOT / "lottery").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        own = layer_of(module)
        if own not in LAYERS:  # lottery/__init__.py (the lazy public API) and __main__.py
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lottery")):
                continue
            target = layer_of(node.module)
            if target == "lottery":  # only the version, from the package itself
                assert [a.name for a in node.names] == ["__version__"], (module, node.module)
            elif LAYERS.index(target) > LAYERS.index(own):
                upward.append(f"{module} imports {node.module}")
    assert upward == []
