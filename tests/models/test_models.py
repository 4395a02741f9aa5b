"""Tests for the model zoo: shapes, determinism, init, and the prunable/output-layer metadata."""

import math

import pytest
import torch
from torch import nn

from lottery.core.device import has_batchnorm
from lottery.models.registry import (
    INITS,
    UnknownModelError,
    build_model,
    conv_weight_names,
    count_parameters,
    default_init,
    list_models,
    output_layer_name,
    prunable_names,
)

SHAPES = [(1, 28, 28), (3, 32, 32)]


def conv_linear_weights(model: nn.Module) -> list[str]:
    """Independent reference: weight names of every Conv2d and Linear in module order."""
    layers = (nn.Conv2d, nn.Linear)
    return [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, layers)]


def test_registry_names():
    expected = {"lenet_300_100", "conv2", "conv4", "conv6", "resnet20", "allconv"}
    assert set(list_models()) == expected | {"vgg11", "vgg13", "vgg16", "vgg19"}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", list_models())
def test_forward_shape(name, shape):
    model = build_model(name, shape, 10)
    assert model(torch.randn(2, *shape)).shape == (2, 10)


def test_lenet_300_100_parameter_count():
    model = build_model("lenet_300_100", (1, 28, 28), 10)
    assert count_parameters(model) == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10 == 266_610
    assert count_parameters(model, prunable_names(model)) == 266_200
    assert not has_batchnorm(model)


def test_allconv_weights_sit_in_its_convolutions():
    model = build_model("allconv", (1, 28, 28), 10)
    convs = conv_weight_names(model)
    sizes = [count_parameters(model, [n]) for n in model.prunable]
    assert sizes == [800, 9216, 18432, 36864, 640]
    assert convs == list(model.prunable[:-1]) and model.output_layer == "classifier.weight"
    assert has_batchnorm(model) and default_init("allconv") == "kaiming_normal"
    wide = build_model("allconv", (3, 32, 32), 10, width=2)
    assert wide.classifier.in_features == 128
    assert conv_weight_names(build_model("lenet_300_100", (1, 28, 28), 10)) == []


def test_lenet_with_any_hidden_widths():
    model = build_model("lenet_500_300_100", (3, 32, 32), 7)
    shapes = [tuple(dict(model.named_parameters())[n].shape) for n in model.prunable]
    assert shapes == [(500, 3072), (300, 500), (100, 300), (7, 100)]
    assert default_init("lenet_500_300_100") == "glorot_normal"


def test_torchvision_model_adapted_to_one_channel():
    model = build_model("resnet18", (1, 28, 28), 10)
    assert model.conv1.in_channels == 1
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert model.output_layer == "fc.weight"
    assert has_batchnorm(model)
    assert default_init("resnet18") == "default"


def test_output_layer_of_model_without_linear_is_its_last_conv():
    model = build_model("squeezenet1_1", (3, 32, 32), 10)
    assert model.output_layer == "classifier.1.weight"


def test_width_multiplies_resnet20_channels():
    model = build_model("resnet20", (3, 32, 32), 10, width=2)
    assert model.fc.in_features == 128
    with pytest.raises(ValueError, match="width"):
        build_model("resnet18", (3, 32, 32), 10, width=2)


def test_unknown_model_name():
    with pytest.raises(UnknownModelError, match="lenet_300_100.*torchvision"):
        build_model("resnet21", (3, 32, 32), 10)
    with pytest.raises(ValueError):
        default_init("lenet_")


def test_unknown_init():
    with pytest.raises(ValueError, match="glorot_normal"):
        build_model("conv2", (3, 32, 32), 10, init="orthogonal")


@pytest.mark.parametrize("name", ["conv2", "resnet20"])
def test_same_seed_same_weights_different_seed_different_weights(name):
    first = build_model(name, (3, 32, 32), 10, seed=3).state_dict()
    second = build_model(name, (3, 32, 32), 10, seed=3).state_dict()
    other = build_model(name, (3, 32, 32), 10, seed=4).state_dict()
    assert first.keys() == second.keys() == other.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_global_rng_untouched():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    build_model("resnet18", (1, 28, 28), 10, seed=7)
    build_model("vgg11", (3, 32, 32), 10, init="glorot_normal")
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", list_models())
def test_prunable_and_output_layer(name):
    model = build_model(name, (3, 32, 32), 10)
    expected = conv_linear_weights(model)
    assert list(model.prunable) == prunable_names(model) == expected
    last_linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    assert model.output_layer == output_layer_name(model) == f"{last_linear}.weight"


def test_default_inits():
    assert default_init("lenet_300_100") == default_init("conv6") == "glorot_normal"
    assert default_init("resnet20") == default_init("vgg19") == "kaiming_normal"
    assert set(INITS) == {"default", "glorot_normal", "kaiming_normal"}


def test_glorot_normal_std_on_lenet_first_layer():
    model = build_model("lenet_300_100", (1, 28, 28), 10)
    weight = dict(model.named_parameters())[model.prunable[0]]
    assert weight.std().item() == pytest.approx(math.sqrt(2 / (784 + 300)), rel=0.05)
    assert all(not bias.any() for n, bias in model.named_parameters() if n.endswith("bias"))


def test_kaiming_normal_std_and_batchnorm_reset_on_resnet20():
    model = build_model("resnet20", (3, 32, 32), 10)
    conv = model.blocks[-1].conv2
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.05)
    assert torch.equal(model.bn.weight, torch.ones(16))
    assert torch.equal(model.bn.bias, torch.zeros(16))


def test_default_init_keeps_pytorch_init():
    model = build_model("lenet_300_100", (1, 28, 28), 10, init="default")
    first = model.classifier[0]
    assert first.weight.abs().max().item() <= 1 / math.sqrt(784)
    assert first.bias.any()


def test_helpers_on_plain_user_module():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)
    )
    assert prunable_names(model) == ["0.weight", "4.weight"]
    assert output_layer_name(model) == "4.weight"
    assert count_parameters(model, ["0.weight"]) == 36
    assert has_batchnorm(model)
    assert output_layer_name(nn.Sequential(nn.Conv2d(1, 4, 3))) is None
    assert prunable_names(nn.Linear(3, 2)) == ["weight"]
