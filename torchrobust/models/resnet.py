"""CIFAR-style ResNets (He et al. 2016) in the layout of the reprogramming paper's code (Hou et al., ICLR 2025).

Layout (``models/robnet.py`` / ``models/tinyrobnet.py`` of the paper's code, itself the widely used
"kuangliu/pytorch-cifar" layout): a 3×3 stride-1 stem ``conv1``+``bn1``+ReLU with **no max-pool**, four stages
``layer1..layer4`` of post-activation blocks at widths ``w, 2w, 4w, 8w`` (strides 1, 2, 2, 2), global average
pooling and a final ``linear`` layer. Blocks:

* ``BasicBlock``: ``relu(bn1(conv1 x))`` → ``bn2(conv2 ·)`` + ``shortcut(x)`` → ReLU
* ``Bottleneck`` (×4 expansion): 1×1 ``conv1`` → 3×3 ``conv2`` (carries the stride) → 1×1 ``conv3``
* ``shortcut``: ``nn.Sequential(Conv2d 1×1 (stride), BatchNorm2d)`` when the shape changes, else an empty
  ``nn.Sequential`` (identity); state_dict keys ``layerX.Y.shortcut.0.weight`` / ``shortcut.1.*``.

Names follow that code (``linear``, not ``fc``) so its checkpoints map key for key.

**Width.** ``width=64`` is the standard ResNet (ResNet-18: 11,173,962 parameters for 10 classes). The
reprogramming paper's "narrow"/"tiny" ResNets (``TinyRobNet*``, used "for the consideration of computation",
docs/paper-code-facts.md#reprogramming-code) are ``width=8``: stage widths 8/16/32/64, 1/8 of the usual.

Pooling is adaptive global average pooling; on 32×32 input it equals the reference ``avg_pool2d(out, 4)``, and it
also accepts 28×28 MNIST-shaped input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TorchRobustError
from ._common import block_convs, check_input, check_positive_int, qualified_names
from .normalize import Floats, make_normalize

__all__ = ["ResNet", "PreActResNet", "BasicBlock", "Bottleneck", "PreActBlock", "RESNET_BLOCKS"]


class BasicBlock(nn.Module):
    """Post-activation 3×3–3×3 residual block (He et al. 2016, Fig. 2 left)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))

    def convs(self) -> list[nn.Conv2d]:
        return [self.conv1, self.conv2]

    def convs3x3(self) -> list[nn.Conv2d]:
        return [self.conv1, self.conv2]


class Bottleneck(nn.Module):
    """Post-activation 1×1–3×3–1×1 bottleneck block with ×4 expansion (He et al. 2016, Fig. 5 right)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))

    def convs(self) -> list[nn.Conv2d]:
        return [self.conv1, self.conv2, self.conv3]

    def convs3x3(self) -> list[nn.Conv2d]:
        return [self.conv2]


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    if stride != 1 or in_planes != out_planes:
        return nn.Sequential(nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
                             nn.BatchNorm2d(out_planes))
    return nn.Sequential()


#: depth → (block type, blocks per stage), as in He et al. 2016, Table 1.
RESNET_BLOCKS: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    10: (BasicBlock, (1, 1, 1, 1)),
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ResNet(nn.Module):
    """CIFAR-style post-activation ResNet-``depth`` taking [0, 1] images and returning logits.

    Args:
        depth: 10, 18, 34 (BasicBlock) or 50, 101, 152 (Bottleneck).
        num_classes: output logits.
        width: channels of the stem and of ``layer1`` (64 = standard; 8 = the reprogramming paper's narrow
            "TinyRobNet" models). Stage widths are ``width·(1, 2, 4, 8)`` (×4 after bottlenecks).
        in_channels: image channels (3 for CIFAR, 1 for MNIST).
        mean, std: per-channel normalisation inside the model (default: none, as in the paper's code; pass
            CIFAR statistics for a conventionally normalised network).
    """

    def __init__(self, depth: int = 18, num_classes: int = 10, width: int = 64, in_channels: int = 3,
                 mean: Floats | None = None, std: Floats | None = None) -> None:
        super().__init__()
        if depth not in RESNET_BLOCKS:
            raise TorchRobustError(f"unsupported ResNet depth {depth!r}; valid: "
                                   f"{', '.join(map(str, RESNET_BLOCKS))}")
        check_positive_int(num_classes, "num_classes")
        check_positive_int(width, "width")
        check_positive_int(in_channels, "in_channels")
        block, num_blocks = RESNET_BLOCKS[depth]
        self.depth = depth
        self.in_channels = in_channels
        self.normalize = make_normalize(mean, std, in_channels)
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        in_planes = width
        stages = []
        for i, (n, stride) in enumerate(zip(num_blocks, (1, 2, 2, 2), strict=True)):
            planes = width * 2**i
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(block(in_planes, planes, s))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(in_planes, num_classes)

    def blocks(self) -> list[BasicBlock | Bottleneck]:
        """The residual blocks in forward order."""
        return [b for stage in (self.layer1, self.layer2, self.layer3, self.layer4) for b in stage]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, f"ResNet-{self.depth}")
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)

    def nrpm_default_layers(self, bottleneck_1x1: bool = False) -> list[str]:
        """The 3×3 convs inside residual blocks (not the stem, 1×1 shortcuts, bottleneck 1×1s or ``linear``).

        This is what the paper's CIFAR code replaces (the 16 convs of ``TinyRobNetLearn18``'s blocks,
        docs/paper-code-facts.md#reprogramming-layers).
        The paper runs NRPM on ResNet-10/18/34 only (Appendix E.1); its code's (unused) ``Bottleneck`` makes all
        three main-path convs robust, which ``bottleneck_1x1=True`` reproduces (adds ``conv1``/``conv3`` of every
        Bottleneck; no effect on BasicBlock models).
        """
        convs = [c for b in self.blocks() for c in (b.convs() if bottleneck_1x1 else b.convs3x3())]
        return qualified_names(self, convs)

    def forge_insertion_points(self, shortcuts: bool = True) -> list[str]:
        """Every conv inside every residual block (Chen et al., data-driven Lipschitz, Fig. 2), not the stem.

        In a post-activation block the 1×1 ``shortcut`` conv reads the same ReLU output as ``conv1``, so
        thresholding it too matches "before the convolutional layers in each residual block"; ``shortcuts=True``
        (default, docs/paper-code-facts.md#forged-function-resolutions item 5) includes them, ``False`` leaves
        the skip path untouched.
        """
        return block_convs(self, self.blocks(), lambda b: b.convs(), _shortcut_conv if shortcuts else None)


# ---------------------------------------------------------------------------------------------------------------
# Pre-activation ResNet (He et al. 2016b), the MSD / robust_union CIFAR baseline
# ---------------------------------------------------------------------------------------------------------------


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016b, Fig. 4e): ``bn1 → ReLU → conv1 → bn2 → ReLU → conv2`` + skip.

    As in the kuangliu layout used by MSD (``locuslab/robust_union``), a width/stride-changing block's 1×1
    ``shortcut`` conv (no BN) reads the *activated* input ``relu(bn1(x))``; otherwise the skip is the raw ``x``.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut = (nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False))
                         if stride != 1 or in_planes != planes else nn.Sequential())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        skip = self.shortcut(act) if len(self.shortcut) > 0 else x
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return out + skip


class PreActResNet(nn.Module):
    """CIFAR pre-activation ResNet-18/34 (kuangliu layout: ``conv1``, ``layer1..4`` of :class:`PreActBlock`,
    global average pooling, ``linear``; no BN/ReLU after the last block). The MSD paper's CIFAR-10 model.

    Args are as for :class:`ResNet` (``depth`` 18 or 34).
    """

    def __init__(self, depth: int = 18, num_classes: int = 10, width: int = 64, in_channels: int = 3,
                 mean: Floats | None = None, std: Floats | None = None) -> None:
        super().__init__()
        if depth not in (18, 34):
            raise TorchRobustError(f"unsupported PreActResNet depth {depth!r}; valid: 18, 34")
        check_positive_int(num_classes, "num_classes")
        check_positive_int(width, "width")
        check_positive_int(in_channels, "in_channels")
        self.depth, self.in_channels = depth, in_channels
        self.normalize = make_normalize(mean, std, in_channels)
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        in_planes, stages = width, []
        for i, (n, stride) in enumerate(zip(RESNET_BLOCKS[depth][1], (1, 2, 2, 2), strict=True)):
            planes, blocks = width * 2**i, []
            for s in [stride] + [1] * (n - 1):
                blocks.append(PreActBlock(in_planes, planes, s))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(in_planes, num_classes)

    def blocks(self) -> list[PreActBlock]:
        """The residual blocks in forward order."""
        return [b for stage in (self.layer1, self.layer2, self.layer3, self.layer4) for b in stage]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, f"PreActResNet-{self.depth}")
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))

    def nrpm_default_layers(self) -> list[str]:
        """The 3×3 ``conv1``/``conv2`` of every block (not the stem, the 1×1 shortcuts or ``linear``)."""
        return qualified_names(self, [c for b in self.blocks() for c in (b.conv1, b.conv2)])

    def forge_insertion_points(self, shortcuts: bool = True) -> list[str]:
        """``conv1``, ``conv2`` and (``shortcuts=True``) the 1×1 shortcut conv of every block; each reads a ReLU
        output (Chen et al. Fig. 2; docs/paper-code-facts.md#forged-function-resolutions). The stem is excluded."""
        return block_convs(self, self.blocks(), lambda b: (b.conv1, b.conv2), _shortcut_conv if shortcuts else None)


def _shortcut_conv(block: nn.Module) -> nn.Module | None:
    """The 1×1 conv of a block's ``shortcut`` ``Sequential`` (None for the identity shortcut)."""
    return block.shortcut[0] if len(block.shortcut) > 0 else None  # type: ignore[arg-type,index]
