"""Extending lottery from outside the package: an installed plugin (a `lottery.plugins` entry
point) registers a criterion, a schedule with its own parameter, a dataset, a model with its
recipe, an IMP control, a study (a command of its own) and an analysis (a report section), and the
command line uses each by name; a function not registered is named by its path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lottery import Mask

REPO = Path(__file__).resolve().parents[2]
PLUGIN = '''
import json
import math
from pathlib import Path
from typing import Annotated

import torch
from torch import nn

from lottery import (IMP_CONTROLS, Context, ControlRun, Mask, Recipe, StudyRecord, TrainConfig,
                     hold, load_data, make_model, prune, register_command, register_criterion,
                     register_dataset, register_model, register_report_section, register_schedule,
                     score)
from lottery.datasets.spec import DatasetSpec


def smallest(ctx, gen=None):
    """Keep the smallest magnitudes: the inverse of magnitude pruning."""
    return {n: -w.abs() for n, w in ctx.weights.items()}


def halfway(p, s_i, s_f, at: Annotated[float, "progress at which all pruning happens"] = 0.5):
    return s_f if p >= at else s_i


def blobs():
    """Four Gaussian classes of 1x8x8 images around fixed centres."""
    g = torch.Generator().manual_seed(0)
    centres = 2 * torch.randn(4, 1, 8, 8, generator=g)
    y, yt = torch.arange(800) % 4, torch.arange(200) % 4
    x = centres[y] + torch.randn(800, 1, 8, 8, generator=g)
    xt = centres[yt] + torch.randn(200, 1, 8, 8, generator=g)
    return x, y, xt, yt


def tiny(input_shape, num_classes, width):
    hidden = 32 * width
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


def random_prune_global(c):
    """A random mask with the ticket's total count, spread over layers by one global threshold."""
    seed = 1000 + c.round

    def make():
        ones = Mask({n: torch.ones_like(t) for n, t in c.mask.tensors.items()})
        noise = score("random", Context({n: t.float() for n, t in c.mask.tensors.items()}), seed)
        return prune(ones, noise, sparsity=c.mask.sparsity(), scope="global")

    return ControlRun(mask=make, record={"mask_seed": seed})


NORMS = StudyRecord(file="norms_study.json", what="an init-norms study", key="norms")


def add_norms_parser(sub):
    p = sub.add_parser("init-norms", help="weight norms at initialisation, per seed")
    p.add_argument("--model", default="lenet_32")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=norms_study)


def norms_study(args):
    cfg = TrainConfig(model=args.model, dataset="blobs", device="cpu", steps=1)
    data = load_data(cfg)
    settings = {"seeds": [int(s) for s in args.seeds.split(",")]}
    NORMS.check(args.out, cfg, settings, data.digest)
    with hold(args.out):
        NORMS.write(args.out, cfg, settings, data.digest)
        norms = {str(s): {n: float(p.norm()) for n, p in make_model(cfg, data, seed=s)
                          .named_parameters() if n.endswith("weight")}
                 for s in settings["seeds"]}
        (args.out / "norms.json").write_text(json.dumps(norms))
    return 0


def norms_section(folder):
    norms = json.loads((folder / "norms.json").read_text())
    layers = sorted(next(iter(norms.values())))
    rows = [f"| {s} | " + " | ".join(f"{v[n]:.4f}" for n in layers) + " |"
            for s, v in norms.items()]
    text = "\\n".join(["## Weight norms at initialisation", "",
                       "| seed | " + " | ".join(layers) + " |", "|---" * (len(layers) + 1) + "|",
                       *rows])
    return {}, text, {"norms.csv": "\\n".join(rows).encode()}


register_criterion("smallest", smallest)
register_schedule("halfway", halfway)
IMP_CONTROLS.register("random-prune-global", random_prune_global)
register_command("init-norms", add_norms_parser, "weight norms at initialisation, per seed")
register_report_section("init-norms", lambda p: (p / "norms.json").exists(), norms_section)
register_dataset("blobs", DatasetSpec("Blobs", 4, (0.0,), (1.0,), False, generate=blobs,
                                      val_divisor=8))
register_model("tiny", tiny, Recipe("kaiming_normal", {"optimizer": "adam", "lr": 3e-3,
               "batch_size": 32}, prune_fraction=0.5, prune_scope="global", output_rate=0.0,
               paper="a test"))
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """An installed distribution `lab-plugin` whose entry point is the module above."""
    root = tmp_path_factory.mktemp("site")
    (root / "lab_plugin.py").write_text(PLUGIN)
    info = root / "lab_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[lottery.plugins]\nlab = lab_plugin\n")
    return root


def lottery(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    return subprocess.run([sys.executable, "-m", "lottery", *args], cwd=REPO, env=env,
                          capture_output=True, text=True)  # fmt: skip


def search(site: Path, out: Path, *flags: str) -> None:
    """One round of `lottery imp` on the plugin's model and dataset."""
    done = lottery(site, "imp", "--model", "tiny", "--dataset", "blobs", "--rounds", "1",
                   "--device", "cpu", "--no-progress", "--out", str(out), *flags)  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_a_plugin_model_dataset_and_criterion_run_an_imp_search(site, tmp_path):
    out = tmp_path / "search"
    search(site, out, "--steps", "60", "--criterion", "smallest")
    config = json.loads((out / "round_01" / "ticket" / "config.json").read_text())["config"]
    assert (config["optimizer"], config["lr"], config["batch_size"]) == ("adam", 3e-3, 32)
    record = json.loads((out / "imp.json").read_text())["imp"]
    assert (record["fraction"], record["scope"], record["criterion"]) == (0.5, "global", "smallest")
    mask = Mask.load(out / "round_01" / "mask.npz")
    assert mask.layer_counts() == {"1.weight": (1024, 2048), "3.weight": (128, 128)}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"][0]["test_accuracy"] > 0.6  # 4 classes: chance is 0.25


@pytest.mark.slow
def test_a_plugin_schedule_gets_a_flag_for_its_own_parameter(site):
    help_text = lottery(site, "schedule", "--help").stdout
    assert "halfway: progress at which all pruning happens (default 0.5)" in " ".join(
        help_text.split()
    )
    done = lottery(site, "schedule", "halfway", "--final-sparsity", "0.8", "--at", "0.25",
                   "--steps", "4")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["step,sparsity", "0,0.000000", "1,0.800000", "2,0.800000",
                                   "3,0.800000", "4,0.800000"]  # fmt: skip


@pytest.mark.slow
def test_an_unregistered_function_is_named_by_its_path(site, tmp_path):
    out = tmp_path / "prune"
    done = lottery(site, "prune", "--model", "tiny", "--dataset", "blobs", "--steps", "40",
                   "--schedule", "lab_plugin:halfway", "--final-sparsity", "0.75",
                   "--criterion", "lab_plugin:smallest", "--update-every", "10",
                   "--device", "cpu", "--no-progress", "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    mask = Mask.load(out / "mask.npz")
    assert mask.total() - mask.kept() == round(0.75 * mask.total())


def test_a_broken_plugin_is_one_line(site, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad_plugin.py").write_text("raise RuntimeError('no GPU driver')\n")
    info = broken / "bad_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bad-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[lottery.plugins]\nbad = bad_plugin\n")
    done = lottery(broken, "train", "--help")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "plugin bad (bad_plugin) failed to load: RuntimeError: no GPU driver" in done.stderr
    assert done.stdout == ""


@pytest.mark.slow
def test_a_plugin_control_trains_beside_every_ticket(site, tmp_path):
    out = tmp_path / "search"
    search(site, out, "--steps", "30", "--controls", "random-prune-global")
    ticket = Mask.load(out / "round_01" / "mask.npz")
    control = Mask.load(out / "round_01" / "random_prune_global" / "mask.npz")
    assert control.kept() == ticket.kept() == 1024 + 128  # the same count, spread over both layers
    assert control.layer_counts()["3.weight"][0] < 128 and not control.equal(ticket)
    row = json.loads((out / "summary.json").read_text())["rounds"][1]
    assert row["controls"]["random-prune-global"]["mask_seed"] == 1001
    assert 0 < row["controls"]["random-prune-global"]["test_accuracy"] <= 1


@pytest.mark.slow
def test_a_plugin_study_records_itself_and_its_report_section_is_written(site, tmp_path):
    from lottery.models.registry import build_model

    out = tmp_path / "norms"
    done = lottery(site, "init-norms", "--seeds", "0,1", "--out", str(out))
    assert done.returncode == 0, done.stderr
    norms = json.loads((out / "norms.json").read_text())
    for seed in (0, 1):
        model = build_model("lenet_32", (1, 8, 8), 4, seed=seed)
        expected = {
            n: float(p.detach().norm()) for n, p in model.named_parameters() if "weight" in n
        }
        assert norms[str(seed)] == pytest.approx(expected, rel=1e-6)
    refused = lottery(site, "init-norms", "--seeds", "0,1,2", "--out", str(out))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "holds an init-norms study with other settings (norms.seeds" in refused.stderr
    report = lottery(site, "report", str(out))
    assert report.returncode == 0, report.stderr
    md = (out / "report" / "report.md").read_text()
    assert (
        "## Weight norms at initialisation" in md
        and f"{norms['1']['classifier.2.weight']:.4f}" in md
    )
