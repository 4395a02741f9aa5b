"""The public API in `lottery/__init__.py`: every name resolves, lazily (importing the package
loads no torch), and the experiments import from it alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import lottery

ROOT = Path(__file__).resolve().parents[2]


def test_every_public_name_resolves_to_what_its_module_defines():
    import importlib

    for name in lottery.__all__:
        if name == "__version__":
            continue
        module, attribute = lottery._API[name]
        expected = importlib.import_module(module)
        if attribute is not None:
            expected = getattr(expected, attribute)
        assert getattr(lottery, name) is expected, name


def test_importing_the_package_loads_no_torch():
    code = "import sys, lottery; lottery.TrainConfig; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_experiments_import_lottery_only_through_its_public_api():
    offenders = []
    for path in sorted((ROOT / "experiments").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lottery."):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.module}")
            if isinstance(node, ast.Import):
                offenders += [
                    f"{path.relative_to(ROOT)}:{node.lineno} {a.name}"
                    for a in node.names
                    if a.name.startswith("lottery.")
                ]
    assert offenders == []
