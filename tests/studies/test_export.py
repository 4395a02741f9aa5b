"""Export routes: compact, sparse and dense reproduce the masked network on real Fashion-MNIST
images, with exactly the parameters the mask leaves; residual nets and fully pruned layers are
refused with their reason; 2:4 runs on a capable GPU and is refused elsewhere; files load back."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from lottery.cli.main import main
from lottery.datasets.fashion_mnist import DEBIAN_FASHION_MNIST
from lottery.datasets.loading import load_dataset
from lottery.models.registry import build_model
from lottery.pruning.criteria import Context, score
from lottery.pruning.masks import Mask
from lottery.pruning.selection import prune
from lottery.studies.export import (
    Architecture,
    ExportError,
    SparseLinear,
    export,
    is_two_four,
    load_export,
    save_export,
)
from lottery.training.stacked import evaluate

SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def fmnist():
    if not (DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not installed at {DEBIAN_FASHION_MNIST}")
    return load_dataset(val_size=0, train_limit=1, test_limit=200)


def trained_like(name: str, seed: int = 0) -> nn.Module:
    """A model with non-zero biases and BatchNorm statistics, as training leaves them."""
    model = build_model(name, SHAPE, 10, seed=seed).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear) and m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=gen))
    return model


def pruned(model: nn.Module, sparsity: float, granularity: str) -> Mask:
    """Layer-wise magnitude pruning (output layer kept), applied to the model."""
    params = dict(model.named_parameters())
    mask = Mask.ones(model)
    scores = score("magnitude", Context({n: params[n] for n in mask.names()}))
    mask = prune(
        mask,
        scores,
        sparsity=sparsity,
        scope="layer",
        granularity=granularity,
        rate_scale={model.output_layer: 0.0},
    )
    mask.apply_(model)
    return mask


def expected_compact_parameters(model: nn.Module, mask: Mask) -> int:
    """Parameters left when pruned filters and the inputs that read them go (from the mask)."""
    total, kept_prev, width_prev = 0, None, None
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    for i, (name, m) in enumerate(layers):
        keep = mask.tensors[f"{name}.weight"]
        rows = int(keep.flatten(1).any(1).sum()) if i + 1 < len(layers) else keep.shape[0]
        fan_in = (
            m.weight.shape[1]
            if kept_prev is None
            else kept_prev * (m.weight.shape[1] // width_prev)
        )
        total += rows * fan_in * math.prod(m.weight.shape[2:]) + (rows if m.bias is not None else 0)
        kept_prev, width_prev = rows, m.weight.shape[0]
    bn = sum(
        2 * int(mask.tensors[f"{n}.weight"].flatten(1).any(1).sum())
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and any(isinstance(x, nn.BatchNorm2d) for x in model.modules())
    )
    return total + bn


@pytest.mark.parametrize("name", ["lenet_300_100", "conv2", "vgg11"])
def test_compact_reproduces_logits_with_expected_parameters(name, fmnist):
    model = trained_like(name)
    mask = pruned(model, 0.5, "filter")
    exported = export("compact", model, mask, Architecture(name, SHAPE, 10))
    with torch.no_grad():
        torch.testing.assert_close(
            exported.module(fmnist.test_x), model(fmnist.test_x), atol=1e-5, rtol=1e-5
        )
    got = sum(p.numel() for p in exported.module.parameters())
    assert got == expected_compact_parameters(model, mask)
    assert got < 0.55 * sum(p.numel() for p in model.parameters())


def test_compact_removes_units_the_next_layer_never_reads(fmnist):
    """Channel pruning of features.2 leaves features.0's matching filters unread: they go too."""
    model = trained_like("conv2")
    mask = Mask.ones(model)
    mask.tensors["features.2.weight"][:, :16] = False
    mask.apply_(model)
    exported = export("compact", model, mask, Architecture("conv2", SHAPE, 10))
    first = exported.module.features_0
    assert first.out_channels == 48 and exported.module.features_2.in_channels == 48
    with torch.no_grad():
        torch.testing.assert_close(
            exported.module(fmnist.test_x), model(fmnist.test_x), atol=1e-5, rtol=1e-5
        )


def test_compact_refuses_a_fully_pruned_layer():
    model = trained_like("conv2")
    mask = Mask.ones(model)
    mask.tensors["features.2.weight"][:] = False
    with pytest.raises(ExportError, match="every weight of features.2 is pruned"):
        export("compact", model, mask, Architecture("conv2", SHAPE, 10))
    mask = Mask.ones(model)
    mask.tensors["classifier.0.weight"][:] = False  # reads nothing of features.2's output
    mask.tensors["features.2.weight"][:] = True
    with pytest.raises(ExportError, match="every weight of classifier.0 is pruned"):
        export("compact", model, mask, Architecture("conv2", SHAPE, 10))


@pytest.mark.parametrize(
    "name, message",
    [
        ("resnet20", "blocks.0.conv2 output channels are tied to blocks.0's shortcut"),
        ("resnet18", "layer1.0.conv2 output channels are tied to layer1.0's downsample"),
    ],
)
def test_compact_refuses_residual_nets_naming_the_coupling(name, message):
    model = build_model(name, SHAPE, 10)
    with pytest.raises(ExportError, match=message):
        export("compact", model, Mask.ones(model), Architecture(name, SHAPE, 10))


def test_sparse_reproduces_logits_and_stores_only_kept_weights(fmnist):
    model = trained_like("lenet_300_100")
    mask = pruned(model, 0.9, "weight")
    exported = export("sparse", model, mask, Architecture("lenet_300_100", SHAPE, 10))
    sparse = {n: m for n, m in exported.module.named_modules() if isinstance(m, SparseLinear)}
    assert sorted(sparse) == ["classifier.0", "classifier.2"]  # the output layer is unpruned
    for n, m in sparse.items():
        assert m.values.numel() == int(mask.tensors[f"{n}.weight"].sum())
        assert torch.equal(m.weight.to_dense(), dict(model.named_parameters())[f"{n}.weight"])
    with torch.no_grad():
        torch.testing.assert_close(
            exported.module(fmnist.test_x), model(fmnist.test_x), atol=1e-5, rtol=1e-5
        )


def test_sparse_needs_a_pruned_linear_layer():
    model = build_model("lenet_64_32", SHAPE, 10)
    with pytest.raises(ExportError, match="no pruned linear layer"):
        export("sparse", model, Mask.ones(model), Architecture("lenet_64_32", SHAPE, 10))


def two_four_mask(model: nn.Module) -> Mask:
    """Keep inputs 0 and 3 of every group of 4 in the hidden layers (by hand)."""
    mask = Mask.ones(model)
    for n in list(mask.names())[:-1]:
        t = mask.tensors[n]
        t[:] = torch.tensor([True, False, False, True]).repeat(t.shape[1] // 4)
    return mask


def test_two_four_pattern_check():
    keep = torch.tensor([[1, 1, 0, 0, 0, 1, 0, 1]], dtype=torch.bool)
    assert is_two_four(keep)
    assert not is_two_four(torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0]], dtype=torch.bool))
    assert not is_two_four(torch.ones(2, 6, dtype=torch.bool))  # not a multiple of 4 inputs


def test_two_four_is_refused_without_a_capable_gpu():
    model = build_model("lenet_64_32", SHAPE, 10)
    with pytest.raises(ExportError, match="needs a CUDA GPU with compute capability >= 8.0"):
        export("2:4", model, two_four_mask(model), Architecture("lenet_64_32", SHAPE, 10))


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
    reason="2:4 sparse kernels need a CUDA GPU of compute capability >= 8.0",
)
def test_two_four_on_cuda_matches_half_precision_dense(tmp_path):
    arch = Architecture("lenet_256_128", (1, 32, 32), 10)
    model = arch.build().cuda().eval()
    mask = two_four_mask(model).to("cuda")
    mask.apply_(model)
    exported = export("2:4", model, mask, arch)
    x = torch.randn(64, 1, 32, 32, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(exported.module(x), model(x), atol=2e-2, rtol=2e-2)
    save_export(exported, tmp_path / "e.pt")
    back = load_export(tmp_path / "e.pt", "cuda")
    with torch.no_grad():
        torch.testing.assert_close(back.module(x), exported.module(x))


@pytest.mark.parametrize("route", ["compact", "sparse", "dense"])
def test_saved_export_loads_back_in_one_call_with_the_same_accuracy(route, tmp_path, fmnist):
    model = trained_like("conv2")
    mask = pruned(model, 0.5, "filter" if route == "compact" else "weight")
    exported = export(route, model, mask, Architecture("conv2", SHAPE, 10))
    save_export(exported, tmp_path / "e.pt")
    back = load_export(tmp_path / "e.pt")
    assert back.route == route and not back.module.training
    with torch.no_grad():
        assert torch.equal(back.module(fmnist.test_x), exported.module(fmnist.test_x))
    assert evaluate(back.module, fmnist.test_x, fmnist.test_y)[1] == pytest.approx(
        evaluate(model, fmnist.test_x, fmnist.test_y)[1], abs=0
    )


def test_foreign_or_truncated_export_is_refused(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not an export")
    with pytest.raises(ExportError, match="cannot read"):
        load_export(tmp_path / "bad.pt")
    with pytest.raises(ExportError, match="does not exist"):
        load_export(tmp_path / "missing.pt")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, fmnist):
    """A filter-pruned LeNet trained for a few steps on a Fashion-MNIST slice."""
    out = tmp_path_factory.mktemp("run") / "run"
    args = ["prune", "--model", "lenet_64_32", "--train-limit", "300", "--val-size", "50"]
    args += ["--test-limit", "200", "--steps", "10", "--batch-size", "30", "--device", "cpu"]
    args += ["--schedule", "one-shot", "--final-sparsity", "0.5", "--start", "0.5"]
    args += ["--granularity", "filter", "--rate-scale", "classifier.4.weight=0"]
    args += ["--update-every", "5", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    return out


def test_cli_exports_a_run_and_scores_it(tiny_run, tmp_path, capsys):
    assert (
        main(
            [
                "export",
                str(tiny_run),
                "--as",
                "compact",
                "--out",
                str(tmp_path / "c.pt"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert (tmp_path / "c.pt").is_file()
    line = next(x for x in out.splitlines() if x.startswith("test accuracy"))
    original, loaded = (float(p.split("%")[0].split()[-1]) for p in line.split(",")[:2])
    assert original == loaded
    back = load_export(tmp_path / "c.pt")
    assert back.module.classifier_0.out_features == 32  # half of the 64 filters pruned
    assert "note: compact" not in out


def test_cli_compact_export_of_an_unstructured_mask_says_it_saves_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["prune", "--model", "lenet_64_32", "--dataset", "synthetic", "--steps", "10"]
    args += ["--batch-size", "30", "--device", "cpu", "--schedule", "one-shot"]
    args += ["--final-sparsity", "0.5", "--start", "0.5", "--update-every", "5", "--out", str(run)]
    assert main(args) == 0
    argv = ["export", str(run), "--as", "compact", "--out", str(tmp_path / "c.pt"), "--no-eval"]
    assert main([*argv, "--device", "cpu"]) == 0
    assert "nothing was saved. --as sparse stores only the kept weights" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--as", "2:4"], "needs a CUDA GPU"),
        (["--as", "compact", "--run", "missing"], "is not a run folder"),
        (["--as", "compact", "--out-dir"], "is a folder"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(argv, message, tiny_run, tmp_path, capsys):
    run_dir = str(tmp_path / "missing") if "--run" in argv else str(tiny_run)
    out = str(tmp_path) if "--out-dir" in argv else str(tmp_path / "e.pt")
    argv = [a for a in argv if a not in ("--run", "missing", "--out-dir")]
    assert main(["export", run_dir, *argv, "--out", out, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "e.pt").exists()


@pytest.mark.slow  # 2.2 s of the fast subset
def test_sparse_layers_raise_none_of_torchs_known_sparse_notices():
    """In a fresh process (torch prints each notice once per process): no beta or invariant
    notice from building and running a CSR layer, and the same output as the dense layer."""
    code = (
        "import torch, warnings\n"
        "warnings.simplefilter('always')\n"
        "from lottery.studies.export import SparseLinear\n"
        "layer = torch.nn.Linear(8, 4)\n"
        "with torch.no_grad(): layer.weight[:, ::2] = 0\n"
        "y = SparseLinear.from_dense(layer)(torch.ones(3, 8))\n"
        "assert torch.allclose(y, layer(torch.ones(3, 8)), atol=1e-6)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "sparse" not in done.stderr.lower(), done.stderr
