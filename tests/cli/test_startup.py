"""Start-up stays light: `lottery --help`/`--version` and every `lottery CMD --help` load no torch
(nor numpy, scipy or plotting), a training command no torchvision/scipy/plotting; every
subcommand takes --no-progress and shows defaults in --help."""

from __future__ import annotations

import subprocess
import sys

import pytest

import lottery
from lottery.cli.main import COMMANDS, build_parser

HEAVY = ("torch", "torchvision", "scipy", "matplotlib", "seaborn", "pandas")


def loaded_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter holds after running `code`."""
    probe = f"{code}\nimport sys; print('LOADED', *(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1].split()[1:]


def test_help_and_version_import_no_torch():
    run = "from lottery.cli.main import main\ntry:\n    main([{}])\nexcept SystemExit:\n    pass"
    assert loaded_after(run.format("'--help'")) == []
    assert loaded_after(run.format("'--version'")) == []
    out = subprocess.run([sys.executable, "-m", "lottery", "--version"], capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert out.stdout.strip() == f"lottery {lottery.__version__}"


def test_every_command_help_imports_nothing_heavy():
    """Each parser takes its choices from the torch-free registries, and the help it prints lists
    every registered dataset, criterion, scope, control and route."""
    code = (
        "import contextlib, io\n"
        "from lottery.cli.main import COMMANDS, main\n"
        "for name in COMMANDS:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        assert main([name, '--help']) == 0, name"
    )
    assert loaded_after(code) == []
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    text = {name: " ".join(p.format_help().split()) for name, p in sub.choices.items()}
    assert all(name in text["train"] for name in lottery.DATASETS)
    usable_at_init = "{grasp,lamp,large_final,magnitude,random,small_final,snip,synflow}"
    assert f"--criterion {usable_at_init}" in text["at-init"]  # none needing θ0 or movement
    assert all(name in text["imp"] for name in [*lottery.CRITERIA, "random-reinit", "lr-rewind"])
    assert "--as {compact,sparse,2:4,dense}" in text["export"]


@pytest.mark.parametrize(
    "command",
    ["train", *(pytest.param(c, marks=pytest.mark.slow) for c in ("imp", "prune", "rewind-sweep"))],
)
def test_training_commands_import_no_torchvision_scipy_or_plotting(command):
    code = (
        "from lottery.cli.main import build_parser\n"
        f"build_parser([{command!r}])\n"
        "from lottery.training.setup import make_model, load_data\n"
        "from lottery.core.config import TrainConfig\n"
        "cfg = TrainConfig(model='lenet_300_100', dataset='synthetic', device='cpu')\n"
        "make_model(cfg, load_data(cfg))"
    )
    assert loaded_after(code) == ["torch"]


def test_every_subcommand_takes_no_progress_and_help_shows_defaults():
    parser = build_parser()
    positional = {
        "schedule": ["agp", "--final-sparsity", "0.9"],
        "overlap": ["a", "b"],
        "align": ["a", "b", "--out", "c"],
        "report": ["d"],
        "prune": ["--final-sparsity", "0.9"],
        "rewind-sweep": ["--rewind-steps", "0"],
        "instability": ["--start-steps", "0"],
        "export": ["r", "--as", "dense", "--out", "f"],
        "speed": ["r"],
        "sweep": ["s.yaml"],
    }
    for name in COMMANDS:
        args = parser.parse_args([name, *positional.get(name, []), "--no-progress"])
        assert args.no_progress is True, name
    sub = next(a for a in parser._actions if a.dest == "command")
    imp_help = sub.choices["imp"].format_help()
    assert "(default: 5)" in imp_help and "(default: checkpoints/imp)" in imp_help
    curve_help = sub.choices["curve"].format_help()
    assert "95%" in curve_help and "%%" not in curve_help


@pytest.mark.parametrize("optimizer", ["sgd", pytest.param("adam", marks=pytest.mark.slow)])
def test_a_training_command_never_imports_dynamo(tmp_path, optimizer):
    """torch.optim's classes import torch._dynamo (1-2 s) on first use; lottery.core.optim steps
    through torch's functional kernels instead, so a whole run, with checkpoints, stays clear."""
    code = (
        "from lottery.cli.main import main\n"
        f"main(['train', '--dataset', 'synthetic', '--model', 'lenet_32', '--steps', '6',\n"
        f"      '--optimizer', {optimizer!r}, '--checkpoint-every', '3', '--device', 'cpu',\n"
        f"      '--no-progress', '--out', {str(tmp_path / 'run')!r}])\n"
        "import sys; assert 'torch._dynamo' not in sys.modules, 'torch._dynamo was imported'"
    )
    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert (tmp_path / "run" / "result.json").exists()
