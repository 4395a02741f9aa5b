"""Model zoo: the lottery-ticket papers' architectures plus any torchvision classifier.

Every model comes from `build_model`, whose weights are a pure function of its arguments (so a
ticket's original initialization can be rebuilt from its seed), and carries a `prunable` tuple and
an `output_layer` name that tell the mask engine which tensors to prune by default.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
from torch import nn

from lottery.models import LENET_NAME, MODELS, is_known, recipe

Shape = tuple[int, int, int]
Builder = Callable[[Shape, int, int], nn.Module]

INITS = ("default", "glorot_normal", "kaiming_normal")
_FILLS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "glorot_normal": nn.init.xavier_normal_,
    "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu"),
}
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class UnknownModelError(ValueError):
    """Raised for a name that is not registered, not lenet_<widths> and not a torchvision model."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"unknown model {name!r}; known: {', '.join(list_models())}, lenet_<h1>[_<h2>...] "
            "(any hidden widths); any torchvision classification model name "
            "(torchvision.models.list_models(module=torchvision.models)) works too"
        )
        self.name = name


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers between consecutive sizes with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for fan_in, fan_out in pairwise(sizes):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _lenet(hidden: Sequence[int], input_shape: Shape, num_classes: int, width: int) -> nn.Module:
    """Fully connected ReLU net on the flattened input (LeNet-300-100 of Frankle & Carbin 2019)."""
    sizes = [math.prod(input_shape), *(h * width for h in hidden), num_classes]
    return nn.Sequential(OrderedDict(flatten=nn.Flatten(), classifier=_mlp(sizes)))


def _convnet(pairs: Sequence[int], input_shape: Shape, num_classes: int, width: int) -> nn.Module:
    """Max-pooled pairs of 3x3 ReLU convs, then fc 256-256 (Conv-2/4/6, Frankle & Carbin 2019)."""
    channels, height, breadth = input_shape
    layers: list[nn.Module] = []
    for filters in (f * width for f in pairs):
        layers += [nn.Conv2d(channels, filters, 3, padding=1), nn.ReLU()]
        layers += [nn.Conv2d(filters, filters, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        channels, height, breadth = filters, height // 2, breadth // 2
    sizes = [channels * height * breadth, 256 * width, 256 * width, num_classes]
    return nn.Sequential(
        OrderedDict(features=nn.Sequential(*layers), flatten=nn.Flatten(), classifier=_mlp(sizes))
    )


def _pooled(layers: list[nn.Module], channels: int, num_classes: int) -> nn.Sequential:
    """Convolutional features, global average pooling and one linear classifier."""
    return nn.Sequential(
        OrderedDict(
            features=nn.Sequential(*layers),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            classifier=nn.Linear(channels, num_classes),
        )
    )


def _vgg(config: str, input_shape: Shape, num_classes: int, width: int) -> nn.Module:
    """CIFAR-style VGG: 3x3 conv+BN+ReLU stacks ("M" = 2x2 max-pool), global avg pool, one fc.

    Pools use ceil_mode so that 28x28 inputs survive all five halvings; 32x32 is unaffected.
    """
    channels = input_shape[0]
    layers: list[nn.Module] = []
    for item in config.split():
        if item == "M":
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
            continue
        filters = int(item) * width
        layers += [nn.Conv2d(channels, filters, 3, padding=1, bias=False), nn.BatchNorm2d(filters)]
        layers.append(nn.ReLU())
        channels = filters
    return _pooled(layers, channels, num_classes)


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers plus a shortcut, the CIFAR ResNet block of He et al., CVPR 2016."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 for CIFAR-10 (He et al., CVPR 2016): 3 stages of 3 blocks, 16/32/64 x width."""

    def __init__(self, in_channels: int, num_classes: int, width: int) -> None:
        super().__init__()
        stem = 16 * width
        self.conv = nn.Conv2d(in_channels, stem, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(stem)
        blocks, channels = [], stem
        for stage in range(3):
            filters = stem * 2**stage
            for index in range(3):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(channels, filters, stride))
                channels = filters
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(torch.relu(self.bn(self.conv(x))))
        return self.fc(out.mean(dim=(2, 3)))


def lenet_300_100(input_shape: Shape, num_classes: int, width: int) -> nn.Module:
    """LeNet-300-100 for MNIST (Frankle & Carbin, ICLR 2019, arXiv 1803.03635)."""
    return _lenet((300, 100), input_shape, num_classes, width)


def conv2(input_shape: Shape, num_classes: int, width: int) -> nn.Module:
    """Conv-2 for CIFAR-10 (Frankle & Carbin, ICLR 2019)."""
    return _convnet((64,), input_shape, num_classes, width)


def conv4(input_shape: Shape, num_classes: int, width: int) -> nn.Module:
    """Conv-4 for CIFAR-10 (Frankle & Carbin, ICLR 2019)."""
    return _convnet((64, 128), input_shape, num_classes, width)


def conv6(input_shape: Shape, num_classes: int, width: int) -> nn.Module:
    """Conv-6 for CIFAR-10 (Frankle & Carbin, ICLR 2019)."""
    return _convnet((64, 128, 256), input_shape, num_classes, width)


def resnet20(input_shape: Shape, num_classes: int, width: int) -> nn.Module:
    """ResNet-20 with 1x1-conv+BN projection shortcuts (He et al., CVPR 2016)."""
    return ResNet20(input_shape[0], num_classes, width)


def vgg11(input_shape: Shape, num_classes: int, width: int) -> nn.Module:
    """VGG-11, configuration A of Simonyan & Zisserman (ICLR 2015), CIFAR-style."""
    config = "64 M 128 M 256 256 M 512 512 M 512 512 M"
    return _vgg(config, input_shape, num_classes, width)


def vgg13(input_shape: Shape, num_classes: int, width: int) -> nn.Module:
    """VGG-13, configuration B of Simonyan & Zisserman (ICLR 2015), CIFAR-style."""
    config = "64 64 M 128 128 M 256 256 M 512 512 M 512 512 M"
    return _vgg(config, input_shape, num_classes, width)


def vgg16(input_shape: Shape, num_classes: int, width: int) -> nn.Module:
    """VGG-16, configuration D of Simonyan & Zisserman (ICLR 2015), CIFAR-style."""
    config = "64 64 M 128 128 M 256 256 256 M 512 512 512 M 512 512 512 M"
    return _vgg(config, input_shape, num_classes, width)


def vgg19(input_shape: Shape, num_classes: int, width: int) -> nn.Module:
    """VGG-19, configuration E of Simonyan & Zisserman (ICLR 2015); Frankle & Carbin's VGG-19."""
    config = "64 64 M 128 128 M 256 256 256 256 M 512 512 512 512 M 512 512 512 512 M"
    return _vgg(config, input_shape, num_classes, width)


def allconv(input_shape: Shape, num_classes: int, width: int) -> nn.Module:
    """All-convolutional net: conv 5x5 32, 3x3 32 (each max-pooled), 3x3 64, 3x3 64 (conv+BN+ReLU),
    global average pool, one fc layer.

    Its convolutions carry nearly all of its weights, so pruning them alone (as Hubens et al.,
    ICIP 2022, prune ResNet-18's) leaves every layer a workable share even at 95% sparsity.
    """
    channels = input_shape[0]
    layers: list[nn.Module] = []
    for filters, kernel, pool in ((32, 5, True), (32, 3, True), (64, 3, False), (64, 3, False)):
        filters *= width
        conv = nn.Conv2d(channels, filters, kernel, padding=kernel // 2, bias=False)
        layers += [conv, nn.BatchNorm2d(filters), nn.ReLU()]
        layers += [nn.MaxPool2d(2)] if pool else []
        channels = filters
    return _pooled(layers, channels, num_classes)


def _torchvision_names() -> list[str]:
    """Names of torchvision's classification models (its top-level model module)."""
    import torchvision  # ~1.3 s to import: only when a torchvision model is asked for

    return torchvision.models.list_models(module=torchvision.models)


def _torchvision_model(name: str, input_shape: Shape, num_classes: int) -> nn.Module:
    """A randomly initialized torchvision classifier whose stem reads `input_shape[0]` channels."""
    import torchvision

    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if input_shape[0] != 3:
        _replace_first_conv(model, input_shape[0])
    return model


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Swap the first Conv2d for an otherwise identical one reading `in_channels` channels."""
    name, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    parent, _, attribute = name.rpartition(".")
    replacement = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
        conv.padding_mode,
    )
    setattr(model.get_submodule(parent), attribute, replacement)


def _construct(name: str, input_shape: Shape, num_classes: int, width: int) -> nn.Module:
    """Instantiate the (already validated) model `name` with whatever init its builder uses."""
    if name in MODELS:
        return MODELS[name](input_shape, num_classes, width)
    if LENET_NAME.fullmatch(name):
        hidden = [int(h) for h in name.split("_")[1:]]
        return _lenet(hidden, input_shape, num_classes, width)
    if width != 1:
        raise ValueError(f"width applies to registry and lenet models only, not {name!r}")
    return _torchvision_model(name, input_shape, num_classes)


def _initialize(model: nn.Module, init: str) -> None:
    """Refill conv/linear weights with `init`, zero their biases and reset BatchNorm to identity."""
    if init == "default":
        return
    for module in model.modules():
        if isinstance(module, (*_CONVS, nn.Linear)):
            _FILLS[init](module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, _BATCHNORMS) and module.affine:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def _weights_of(model: nn.Module, types: tuple[type[nn.Module], ...]) -> list[str]:
    """Names of the `weight` parameters owned by modules of `types`, in parameter order."""
    names = []
    for name, _ in model.named_parameters():
        owner, _, leaf = name.rpartition(".")
        if leaf == "weight" and isinstance(model.get_submodule(owner), types):
            names.append(name)
    return names


def list_models() -> list[str]:
    """The registry's own model names (lenet_<widths> and torchvision names are accepted too)."""
    return sorted(MODELS)


def default_init(name: str) -> str:
    """The init the model's paper used, or "default" (torchvision's own) for torchvision models."""
    if is_known(name) or name in _torchvision_names():
        return recipe(name).init
    raise UnknownModelError(name)


def build_model(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    init: str | None = None,
    seed: int = 0,
    width: int = 1,
) -> nn.Module:
    """Build a model whose weights depend only on the arguments, leaving the global RNG untouched.

    `width` multiplies every hidden width of registry and lenet models (ResNet-20's 16/32/64
    channels, VGG and Conv-N filters, fc hidden sizes); torchvision models accept only 1.
    Registry names shadow torchvision's (use e.g. "vgg11_bn" for torchvision's VGG).
    """
    paper_init = default_init(name)  # also rejects unknown names before any work is done
    init = paper_init if init is None else init
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose from {', '.join(INITS)} (or None)")
    if width < 1:
        raise ValueError(f"width must be a positive integer, got {width}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _construct(name, tuple(input_shape), num_classes, width)
        _initialize(model, init)
    model.prunable = tuple(prunable_names(model))
    model.output_layer = output_layer_name(model) or model.prunable[-1]
    return model


def prunable_names(model: nn.Module) -> list[str]:
    """Default prunable tensors: `model.prunable` if set, else every conv and linear weight."""
    prunable = getattr(model, "prunable", None)
    if prunable is not None:
        return list(prunable)
    return _weights_of(model, (*_CONVS, nn.Linear))


def conv_weight_names(model: nn.Module) -> list[str]:
    """The model's prunable tensors that are convolution weights, in prunable order (what
    fasterai's SparsifyCallback prunes by default, layer_type=nn.Conv2d)."""
    convs = set(_weights_of(model, _CONVS))
    return [name for name in prunable_names(model) if name in convs]


def output_layer_name(model: nn.Module) -> str | None:
    """The output layer's weight: `model.output_layer` if set, else the last Linear's weight."""
    output_layer = getattr(model, "output_layer", None)
    if output_layer is not None:
        return output_layer
    linears = _weights_of(model, (nn.Linear,))
    return linears[-1] if linears else None


def count_parameters(model: nn.Module, names: list[str] | None = None) -> int:
    """Number of scalars in the named parameters (all of them when `names` is None)."""
    params = dict(model.named_parameters())
    return sum(params[name].numel() for name in (params if names is None else names))
