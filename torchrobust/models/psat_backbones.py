"""PSAT backbones (zoo models): hypernetwork versions of CIFAR-style ResNet-18/50 and of the MSD MNIST CNN.

PSAT (Gong et al. 2023, §"Hypernetwork Design") generates every conv kernel except the first conv from a
shared two-layer hypernetwork (Eq. 8, reconstructed Eq. 11; see :mod:`torchrobust.nn.hyper`); the first conv,
all BatchNorm layers and the final fc are ordinary parameters. ResNets use the kuangliu CIFAR layout (3×3
stem, no max-pool, four stages at 64·2^s channels, global average pooling) with 64×64×3×3 units; 1×1 convs
(bottleneck and shortcut) reduce a generated 3×3 unit (default: average). With these choices the PSAT
ResNet-50 with ``z_dim=128`` and 10 classes has exactly 3 × 1,624,714 = 4,874,142 parameters over three
members, the figure in PSAT Table 1/2.

The MNIST CNN is the one of Maini et al. (MSD, ``locuslab/robust_union:MNIST``): conv 1→32 5×5 (pad 2), ReLU,
max-pool 2, conv 32→64 5×5 (pad 2), ReLU, max-pool 2, fc 3136→1024, ReLU, fc 1024→10 (biases everywhere, no
BatchNorm, no input normalisation). In its hyper version only the second conv is generated (the first conv is
never generated); its unit is ``unit × unit × 5 × 5`` with ``unit`` 16 or 32. Because 98% of this CNN's
parameters sit in the (never generated) fc layers, PSAT *cannot* save parameters on it — three members cost
about three plain CNNs; :func:`parameter_report` states this rather than hiding it.

Every model takes float NCHW input in [0, 1] and returns logits; an optional ``mean``/``std`` normalisation
is a layer inside it. They are registered in the model zoo (:func:`torchrobust.models.create`), which records
``model.torchrobust_spec`` for checkpoints; :mod:`torchrobust.psat.models` re-exports them with PSAT's parameter
reports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchrobust.errors import TorchRobustError, unknown_name
from torchrobust.nn.hyper import HyperConv2d, HyperInit, HyperNetwork, Reduce

__all__ = ["PSATResNet", "MSDCNN", "hyper_resnet18", "hyper_resnet50", "plain_resnet18", "plain_resnet50", "msd_cnn",
           "hyper_msd_cnn"]


class _Normalize(nn.Module):
    """``(x - mean) / std`` per channel; the identity when no statistics are given."""

    def __init__(self, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        super().__init__()
        if (mean is None) != (std is None):
            raise TorchRobustError("give both mean and std for input normalisation, or neither")
        self.enabled = mean is not None
        if mean is not None and std is not None:
            self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std if self.enabled else x


ConvFactory = Callable[[int, int, int, int, int, str], nn.Module]


def _conv_factory(hyper: HyperNetwork | None, reduce: Reduce, bias: bool = False) -> ConvFactory:
    def make(cin: int, cout: int, k: int, stride: int, padding: int, name: str) -> nn.Module:
        if hyper is None:
            return nn.Conv2d(cin, cout, k, stride, padding, bias=bias)
        return HyperConv2d(cin, cout, k, stride, padding, bias=bias, hyper=hyper, reduce=reduce, name=name)
    return make


def _shortcut(conv: ConvFactory, cin: int, cout: int, stride: int, name: str) -> nn.Sequential:
    """The residual branch's skip: identity (an empty ``nn.Sequential``) when the shape is kept, else 1×1 conv + BN."""
    if stride == 1 and cin == cout:
        return nn.Sequential()
    return nn.Sequential(conv(cin, cout, 1, stride, 0, f"{name}.shortcut.0"), nn.BatchNorm2d(cout))


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, conv: ConvFactory, cin: int, planes: int, stride: int, name: str) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv(cin, planes, 3, stride, 1, f"{name}.conv1"), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv(planes, planes, 3, 1, 1, f"{name}.conv2"), nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(conv, cin, planes, stride, name)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, conv: ConvFactory, cin: int, planes: int, stride: int, name: str) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1, self.bn1 = conv(cin, planes, 1, 1, 0, f"{name}.conv1"), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv(planes, planes, 3, stride, 1, f"{name}.conv2"), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = conv(planes, out, 1, 1, 0, f"{name}.conv3"), nn.BatchNorm2d(out)
        self.shortcut = _shortcut(conv, cin, out, stride, name)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + self.shortcut(x))


_DEPTHS: dict[int, tuple[type[nn.Module], list[int]]] = {
    18: (_BasicBlock, [2, 2, 2, 2]),
    34: (_BasicBlock, [3, 4, 6, 3]),
    50: (_Bottleneck, [3, 4, 6, 3]),
}


class PSATResNet(nn.Module):
    """CIFAR-style ResNet whose convs (all but the stem) are generated by one shared hypernetwork.

    Args:
        depth: 18, 34 or 50.
        num_classes: output classes.
        z_dim: embedding size ``N_z`` (PSAT: 128 for ResNet-50, 64 for ResNet-18).
        hyper: ``False`` builds the plain ResNet with ordinary convs (the baseline for parameter savings).
        unit: channels of one generated unit (``unit × unit × 3 × 3``; 64 in the paper).
        width: channels of the stem and first stage (64 in the paper); stages use ``width·2^s``.
        init, reduce: see :mod:`torchrobust.nn.hyper`.
        in_channels: image channels.
        mean, std: optional per-channel input normalisation (a layer inside the model).
    """

    def __init__(self, depth: int = 18, num_classes: int = 10, z_dim: int = 64, hyper: bool = True,
                 unit: int = 64, width: int = 64, init: HyperInit = "ha", reduce: Reduce = "mean",
                 in_channels: int = 3, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        super().__init__()
        if depth not in _DEPTHS:
            raise unknown_name("ResNet depth", depth, [str(d) for d in _DEPTHS])
        block, num_blocks = _DEPTHS[depth]
        self.input_shape = (in_channels, 32, 32)
        self.normalize = _Normalize(mean, std)
        self.hyper = HyperNetwork(z_dim, unit, unit, 3, init=init) if hyper else None
        conv = _conv_factory(self.hyper, reduce)
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)  # the stem is never generated
        self.bn1 = nn.BatchNorm2d(width)
        cin = width
        stages = []
        for s, n in enumerate(num_blocks):
            planes = width * 2 ** s
            blocks = []
            for b in range(n):
                stride = 2 if (s > 0 and b == 0) else 1
                blocks.append(block(conv, cin, planes, stride, f"layer{s + 1}.{b}"))  # type: ignore[call-arg]
                cin = planes * block.expansion  # type: ignore[attr-defined]
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


class MSDCNN(nn.Module):
    """The MNIST CNN of Maini et al. 2020 (MSD), optionally with its second conv hypernetwork-generated.

    Args:
        num_classes: output classes (10).
        hyper: generate conv2 from a ``unit × unit × 5 × 5`` hypernetwork (conv1 is never generated).
        z_dim: embedding size.
        unit: 16 or 32 (must divide 32 and 64).
        init: ``"kaiming"`` by default, since this CNN has no BatchNorm (``"ha"`` kernels have variance
            ≈ N_z² and the logits would explode).
        reduce: unused (no 1×1 convs); kept for a uniform interface.
    """

    def __init__(self, num_classes: int = 10, hyper: bool = False, z_dim: int = 32, unit: int = 32,
                 init: HyperInit = "kaiming", reduce: Reduce = "mean") -> None:
        super().__init__()
        self.input_shape = (1, 28, 28)
        self.hyper = HyperNetwork(z_dim, unit, unit, 5, init=init) if hyper else None
        self.conv1 = nn.Conv2d(1, 32, 5, padding=2)
        self.conv2 = _conv_factory(self.hyper, reduce, bias=True)(32, 64, 5, 1, 2, "conv2")
        self.fc1 = nn.Linear(7 * 7 * 64, 1024)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def hyper_resnet18(num_classes: int = 10, z_dim: int = 64, **kw: Any) -> PSATResNet:
    """PSAT ResNet-18 member (TinyImageNet setting: ``z_dim=64``)."""
    return PSATResNet(18, num_classes, z_dim, hyper=True, **kw)


def hyper_resnet50(num_classes: int = 10, z_dim: int = 128, **kw: Any) -> PSATResNet:
    """PSAT ResNet-50 member (CIFAR-10/SVHN setting: ``z_dim=128``)."""
    return PSATResNet(50, num_classes, z_dim, hyper=True, **kw)


def plain_resnet18(num_classes: int = 10, **kw: Any) -> PSATResNet:
    """Plain CIFAR ResNet-18 (same layout, ordinary convs)."""
    return PSATResNet(18, num_classes, hyper=False, **kw)


def plain_resnet50(num_classes: int = 10, **kw: Any) -> PSATResNet:
    """Plain CIFAR ResNet-50 (same layout, ordinary convs)."""
    return PSATResNet(50, num_classes, hyper=False, **kw)


def msd_cnn(num_classes: int = 10) -> MSDCNN:
    """The plain MSD MNIST CNN (baselines AT_max / AT_avg / AT_msd and single-norm AT)."""
    return MSDCNN(num_classes, hyper=False)


def hyper_msd_cnn(num_classes: int = 10, z_dim: int = 32, unit: int = 32, **kw: Any) -> MSDCNN:
    """The MSD MNIST CNN with conv2 generated by a ``unit × unit × 5 × 5`` hypernetwork (PSAT member)."""
    return MSDCNN(num_classes, hyper=True, z_dim=z_dim, unit=unit, **kw)
