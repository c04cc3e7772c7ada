"""Wide residual networks (Zagoruyko & Komodakis 2016) in RobustBench's two layouts.

:class:`WideResNet` reproduces the module tree and parameter names of RobustBench's
``model_zoo/architectures/wide_resnet.py`` (from the TRADES code), so RobustBench ``WideResNet`` state_dicts
(e.g. Wu2020Adversarial_extra WRN-28-10, Chen2021LTD_WRN34_10, Chen2024Data_WRN_34_10) load strictly:

    conv1 (3×3, 16 ch) → block1, [sub_block1], block2, block3 → bn1 → ReLU → global avg-pool → fc
    blockK.layer.i = BasicBlock(bn1, relu1, conv1, bn2, relu2, conv2, convShortcut)

Blocks are *pre-activation* (He et al. 2016b): ``bn1 → act → conv1 → bn2 → act → (dropout) → conv2``, plus the
skip. RobustBench's quirk is kept exactly: when a block changes the width, the activated input
``act(bn1(x))`` feeds both ``conv1`` and the 1×1 ``convShortcut``; otherwise the skip is the raw ``x``.
Parameter counts (10 classes): WRN-28-10 36,479,194; WRN-34-10 46,160,474.

:class:`DMWideResNet` reproduces RobustBench's ``dm_wide_resnet.py`` (DeepMind's Gowal et al. 2020 /
Rebuffi et al. 2021 PyTorch port), used by the WRN-70-16 SiLU models (Gowal2020Uncovering_70_16,
Rebuffi2021Fixing_70_16_cutmix_extra, Wang2023Better_WRN-70-16, ...):

    init_conv → layer.{0,1,2}.block.i = _Block(batchnorm_0, relu_0, conv_0, batchnorm_1, relu_1, conv_1,
    shortcut) → batchnorm → act → global avg-pool → logits

Its ``conv_0`` has ``padding=0`` and the input is padded by hand to TensorFlow's ``SAME``: (1, 1, 1, 1) for
stride 1 but **(0, 1, 0, 1) for stride 2** on even sizes (asymmetric; RobustBench hard-codes these two pads, we
compute ``SAME`` in general, which agrees on every even size and also works on odd ones).

Like RobustBench, it normalises with top-level *persistent* buffers ``mean`` and ``std`` (shape C×1×1) that
are part of the checkpoint; with ``mean=None``
they are 0 and 1 (identity) until a checkpoint overwrites them.

Both take [0, 1] input and return logits. Pooling is global (adaptive) average pooling, identical to
RobustBench's ``avg_pool2d(out, 8)`` on 32×32 input. The activation is configurable (``"relu"`` or ``"silu"``;
SiLU = RobustBench's custom ``Swish``, which computes the same function).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TorchRobustError
from ._common import block_convs, check_input, check_positive_int, make_activation, qualified_names
from .normalize import Floats, Normalize, make_normalize

__all__ = ["WideResNet", "DMWideResNet", "WRNBasicBlock", "DMBlock"]

_WRN_ACTIVATIONS = ("relu", "silu", "swish")


def _check_depth(depth: int, what: str) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6 != 0:
        raise TorchRobustError(f"{what} depth must be 6n+4 with n >= 1 (e.g. 28, 34, 70), got {depth!r}")
    return (depth - 4) // 6


# ---------------------------------------------------------------------------------------------------------------
# RobustBench / TRADES layout
# ---------------------------------------------------------------------------------------------------------------


def _preact_pair(in_planes: int, out_planes: int, stride: int, activation: str,
                 first_padding: int) -> tuple[nn.Module, ...]:
    """BN, activation, 3×3 conv (``stride``, ``first_padding``), BN, activation, 3×3 conv: the layers of a
    pre-activation wide block (Zagoruyko & Komodakis 2016), in creation order; the two blocks below store them under
    RobustBench's two naming schemes."""
    return (nn.BatchNorm2d(in_planes), make_activation(activation),
            nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=first_padding, bias=False),
            nn.BatchNorm2d(out_planes), make_activation(activation),
            nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False))


class WRNBasicBlock(nn.Module):
    """Pre-activation wide basic block with RobustBench's attribute names (``convShortcut`` etc.)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0,
                 activation: str = "relu") -> None:
        super().__init__()
        self.bn1, self.relu1, self.conv1, self.bn2, self.relu2, self.conv2 = _preact_pair(
            in_planes, out_planes, stride, activation, first_padding=1)
        self.drop_rate = float(drop_rate)
        self.equalInOut = in_planes == out_planes
        self.convShortcut = None if self.equalInOut else nn.Conv2d(
            in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        # RobustBench: a width-changing block's skip reads the *activated* input; an equal-width block's the raw x.
        skip = x if self.convShortcut is None else self.convShortcut(act)
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return skip + self.conv2(out)


class _NetworkBlock(nn.Module):
    """A stage of ``n`` blocks, stored as ``.layer`` (RobustBench's ``NetworkBlock``)."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float,
                 activation: str) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[
            WRNBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate,
                          activation) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` in RobustBench's ``WideResNet`` layout (see the module docstring).

    Args:
        depth: 6n+4 (28, 34, 70, ...); n blocks per stage.
        widen_factor: k; stage widths 16k, 32k, 64k after a 16-channel stem.
        num_classes: output logits.
        activation: ``"relu"`` (RobustBench) or ``"silu"``.
        drop_rate: dropout between the two convs of a block (0 in RobustBench's models).
        in_channels: image channels (3 for CIFAR).
        sub_block1: add RobustBench's unused ``sub_block1`` stage so checkpoints saved with it (e.g. CIFAR-100
            Chen2021LTD_WRN34_10) load strictly; it is never run and excluded from the structure hooks.
        bias_last: give ``fc`` a bias (RobustBench default ``True``).
        mean, std: per-channel normalisation (default: none; RobustBench's WideResNet models take raw [0, 1]).
    """

    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10, activation: str = "relu",
                 drop_rate: float = 0.0, in_channels: int = 3, sub_block1: bool = False, bias_last: bool = True,
                 mean: Floats | None = None, std: Floats | None = None) -> None:
        super().__init__()
        n = _check_depth(depth, "WideResNet")
        check_positive_int(widen_factor, "widen_factor")
        check_positive_int(num_classes, "num_classes")
        check_positive_int(in_channels, "in_channels")
        make_activation(activation, _WRN_ACTIVATIONS)  # validate once, with a clear message
        if not isinstance(drop_rate, (int, float)) or not 0.0 <= drop_rate < 1.0:
            raise TorchRobustError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.depth, self.widen_factor, self.in_channels = depth, widen_factor, in_channels
        self.normalize = make_normalize(mean, std, in_channels)
        self.conv1 = nn.Conv2d(in_channels, ch[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = _NetworkBlock(n, ch[0], ch[1], 1, drop_rate, activation)
        if sub_block1:
            self.sub_block1 = _NetworkBlock(n, ch[0], ch[1], 1, drop_rate, activation)
        self.block2 = _NetworkBlock(n, ch[1], ch[2], 2, drop_rate, activation)
        self.block3 = _NetworkBlock(n, ch[2], ch[3], 2, drop_rate, activation)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = make_activation(activation)
        self.fc = nn.Linear(ch[3], num_classes, bias=bias_last)
        self.nChannels = ch[3]
        self._init_weights()

    def _init_weights(self) -> None:
        """RobustBench/TRADES init: He-normal convs with fan-out ``k·k·C_out``, BN (1, 0), zero fc bias."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def blocks(self) -> list[WRNBasicBlock]:
        """The residual blocks that run in ``forward`` (``sub_block1`` excluded), in order."""
        return [b for stage in (self.block1, self.block2, self.block3) for b in stage.layer]  # type: ignore[misc]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, f"WRN-{self.depth}-{self.widen_factor}")
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = self.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))

    def nrpm_default_layers(self) -> list[str]:
        """The 3×3 convs inside residual blocks (``conv1``, ``conv2``), not the stem, shortcuts or ``fc``."""
        return qualified_names(self, [c for b in self.blocks() for c in (b.conv1, b.conv2)])

    def forge_insertion_points(self, shortcuts: bool = True) -> list[str]:
        """Convs inside every residual block (Chen et al. Fig. 2; docs/paper-code-facts.md#forged-function-resolutions).

        ``conv1``, ``conv2`` and, with ``shortcuts=True`` (default), the 1×1 ``convShortcut``: it reads the same
        activation output as ``conv1``, so "before the convolutional layers" covers it. The stem is excluded.
        """
        return block_convs(self, self.blocks(), lambda b: (b.conv1, b.conv2),
                           (lambda b: b.convShortcut) if shortcuts else None)


# ---------------------------------------------------------------------------------------------------------------
# DeepMind layout (RobustBench dm_wide_resnet.py)
# ---------------------------------------------------------------------------------------------------------------


def _same_padding(h: int, w: int, stride: int, kernel: int = 3) -> tuple[int, int, int, int]:
    """TensorFlow ``SAME`` padding ``(left, right, top, bottom)``: total ``(⌈n/s⌉−1)·s + k − n``, extra on the
    bottom/right. For 3×3 kernels this is (1, 1, 1, 1) at stride 1 and, on even sizes, (0, 1, 0, 1) at stride 2,
    exactly RobustBench's hard-coded pads; on odd sizes at stride 2 it is (1, 1, 1, 1), where RobustBench's fixed
    (0, 1, 0, 1) would give one row less than the 1×1 shortcut and fail."""
    def split(n: int) -> tuple[int, int]:
        total = max((-(-n // stride) - 1) * stride + kernel - n, 0)
        return total // 2, total - total // 2

    (top, bottom), (left, right) = split(h), split(w)
    return left, right, top, bottom


class DMBlock(nn.Module):
    """DeepMind's pre-activation wide block (``_Block`` in RobustBench), TF-``SAME`` padding by hand."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, activation: str = "silu") -> None:
        super().__init__()
        if stride not in (1, 2):
            raise TorchRobustError(f"DMWideResNet blocks support stride 1 or 2, got {stride}")
        self.batchnorm_0, self.relu_0, self.conv_0, self.batchnorm_1, self.relu_1, self.conv_1 = _preact_pair(
            in_planes, out_planes, stride, activation, first_padding=0)
        self.has_shortcut = in_planes != out_planes
        self.shortcut = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0,
                                  bias=False) if self.has_shortcut else None
        self._stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu_0(self.batchnorm_0(x))
        v = F.pad(act, _same_padding(act.shape[-2], act.shape[-1], self._stride))
        out = self.conv_1(self.relu_1(self.batchnorm_1(self.conv_0(v))))
        skip = self.shortcut(act) if self.shortcut is not None else x
        return skip + out


class _DMBlockGroup(nn.Module):
    """A stage stored as ``.block`` (RobustBench's ``_BlockGroup``)."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, activation: str) -> None:
        super().__init__()
        self.block = nn.Sequential(*[
            DMBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, activation)
            for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DMWideResNet(nn.Module):
    """WRN in DeepMind's layout (RobustBench ``DMWideResNet``; names ``init_conv``, ``layer``, ``batchnorm``,
    ``logits``, buffers ``mean``/``std``).

    Args:
        depth: 6n+4 (28, 70, 106, ...).
        widen_factor: k (RobustBench calls it ``width``); stage widths 16k, 32k, 64k.
        num_classes: output logits.
        activation: ``"silu"`` (default; the SiLU/Swish models of Gowal 2020, Rebuffi 2021, Wang 2023) or
            ``"relu"`` (RobustBench's class default).
        in_channels: image channels.
        mean, std: normalisation constants stored in the persistent ``mean``/``std`` buffers (default: 0 and 1,
            i.e. none; RobustBench checkpoints carry their own values, e.g. CIFAR-10 (0.4914, 0.4822, 0.4465) /
            (0.2471, 0.2435, 0.2616)).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10, activation: str = "silu",
                 in_channels: int = 3, mean: Floats | None = None, std: Floats | None = None) -> None:
        super().__init__()
        n = _check_depth(depth, "DMWideResNet")
        check_positive_int(widen_factor, "widen_factor")
        check_positive_int(num_classes, "num_classes")
        check_positive_int(in_channels, "in_channels")
        make_activation(activation, _WRN_ACTIVATIONS)
        norm = make_normalize(mean, std, in_channels)  # validates; its constants go into the DM-style buffers
        m = norm.mean if isinstance(norm, Normalize) else torch.zeros(1)
        s = norm.std if isinstance(norm, Normalize) else torch.ones(1)
        self.register_buffer("mean", m.expand(in_channels).clone().view(in_channels, 1, 1))
        self.register_buffer("std", s.expand(in_channels).clone().view(in_channels, 1, 1))
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.depth, self.widen_factor, self.in_channels = depth, widen_factor, in_channels
        self.init_conv = nn.Conv2d(in_channels, ch[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.layer = nn.Sequential(
            _DMBlockGroup(n, ch[0], ch[1], 1, activation),
            _DMBlockGroup(n, ch[1], ch[2], 2, activation),
            _DMBlockGroup(n, ch[2], ch[3], 2, activation))
        self.batchnorm = nn.BatchNorm2d(ch[3])
        self.relu = make_activation(activation)
        self.logits = nn.Linear(ch[3], num_classes)
        self.num_channels = ch[3]

    def blocks(self) -> list[DMBlock]:
        """The residual blocks in forward order."""
        return [b for group in self.layer for b in group.block]  # type: ignore[union-attr]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, f"DM-WRN-{self.depth}-{self.widen_factor}")
        out = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        out = self.layer(self.init_conv(out))
        out = self.relu(self.batchnorm(out))
        return self.logits(F.adaptive_avg_pool2d(out, 1).flatten(1))

    def nrpm_default_layers(self) -> list[str]:
        """The 3×3 convs inside residual blocks (``conv_0``, ``conv_1``)."""
        return qualified_names(self, [c for b in self.blocks() for c in (b.conv_0, b.conv_1)])

    def forge_insertion_points(self, shortcuts: bool = True) -> list[str]:
        """``conv_0``, ``conv_1`` and (``shortcuts=True``, default) the 1×1 ``shortcut`` of every block: each
        reads an activation output (docs/paper-code-facts.md#forged-function-resolutions: right after each activation
        that feeds a conv). The stem ``init_conv`` is excluded."""
        return block_convs(self, self.blocks(), lambda b: (b.conv_0, b.conv_1),
                           (lambda b: b.shortcut) if shortcuts else None)
