"""Input normalisation as a layer.

Every torchrobust model takes float NCHW images in [0, 1] and normalises *inside* (docs/architecture.md, "The
one contract"), so attacks measure ε in pixel units no matter how the network was trained.

Design choice (documented for every zoo constructor): ``mean=None, std=None`` (the default everywhere) means
*no* normalisation. This is what the reprogramming paper's code does for MNIST and CIFAR (``ToTensor()`` only,
docs/paper-code-facts.md#reprogramming-evaluation-protocol) and what RobustBench's ``WideResNet`` checkpoints
expect. Pass ``mean=(...), std=(...)`` (one value per input channel, or one value for all) to put a
:class:`Normalize` layer in front.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import TorchRobustError

__all__ = ["Normalize", "make_normalize"]

Floats = float | Sequence[float] | torch.Tensor


def _as_floats(value: Floats, what: str) -> list[float]:
    if isinstance(value, torch.Tensor):
        value = value.detach().flatten().tolist()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [float(value)]
    try:
        out = [float(v) for v in value]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise TorchRobustError(f"{what} must be a number or a sequence of numbers, got {value!r}; pass e.g. "
                               f"{what}=(0.4914, 0.4822, 0.4465)") from None
    if not out or not all(math.isfinite(v) for v in out):
        raise TorchRobustError(f"{what} must be a non-empty sequence of finite numbers, got {value!r}")
    return out


class Normalize(nn.Module):
    """Per-channel affine normalisation ``(x - mean) / std`` on NCHW (or N×C) input.

    ``mean`` and ``std`` hold one value per channel, or a single value broadcast over all channels. They are
    *non-persistent* buffers: they move with ``.to(device)`` but are configuration, not learned state, so they
    stay out of ``state_dict()`` (the constants are recorded in ``model.torchrobust_spec`` by
    :func:`torchrobust.models.create`). This keeps zoo state_dicts key-for-key identical to the reference layouts
    (RobustBench ``WideResNet``, the reprogramming paper's checkpoints), which carry no normalisation keys.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Floats, std: Floats) -> None:
        super().__init__()
        m, s = _as_floats(mean, "mean"), _as_floats(std, "std")
        if len(m) != len(s) and 1 not in (len(m), len(s)):
            raise TorchRobustError(f"mean has {len(m)} values but std has {len(s)}; give one value per channel "
                                   "for both")
        if min(s) <= 0:
            raise TorchRobustError(f"std must be positive, got {s}; pass the per-channel standard deviations")
        n = max(len(m), len(s))
        m = m * n if len(m) == 1 else m
        s = s * n if len(s) == 1 else s
        self.register_buffer("mean", torch.tensor(m, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(s, dtype=torch.float32), persistent=False)

    @property
    def num_channels(self) -> int:
        return int(self.mean.numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise TorchRobustError(f"Normalize expects a batch (N, C, ...), got shape {tuple(x.shape)}")
        c = self.mean.numel()
        if c != 1 and x.shape[1] != c:
            raise TorchRobustError(f"Normalize has {c} channel(s) of mean/std but the input has {x.shape[1]}; "
                                   "pass one mean/std value per input channel")
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean = self.mean.to(dtype=x.dtype).view(shape)
        std = self.std.to(dtype=x.dtype).view(shape)
        return (x - mean) / std

    def extra_repr(self) -> str:
        return f"mean={[round(v, 6) for v in self.mean.tolist()]}, std={[round(v, 6) for v in self.std.tolist()]}"


def make_normalize(mean: Floats | None, std: Floats | None, in_channels: int) -> nn.Module:
    """``Normalize(mean, std)`` when both are given, ``nn.Identity()`` when both are ``None``."""
    if mean is None and std is None:
        return nn.Identity()
    if mean is None or std is None:
        raise TorchRobustError("pass both mean and std (one value per channel) or neither (no normalisation)")
    layer = Normalize(mean, std)
    if layer.num_channels not in (1, in_channels):
        raise TorchRobustError(f"mean/std have {layer.num_channels} values but the model has in_channels="
                               f"{in_channels}; give {in_channels} values (or one)")
    return layer
