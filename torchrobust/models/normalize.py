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

__all__ = ["Normalize", "make_normalize", "Normalized", "with_normalization"]

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


class Normalized(nn.Module):
    """``model(Normalize(mean, std)(x))``: a classifier trained on normalised input, taking [0, 1] input.

    Built by :func:`with_normalization`. Its structure hooks (docs/architecture.md, "Model structure hooks") are the
    wrapped model's defaults (its own hooks, or :mod:`torchrobust.models.structure`) under the ``model.`` prefix, so
    the wrapper itself is never mistaken for a residual block.
    """

    def __init__(self, model: nn.Module, mean: Floats, std: Floats) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))

    def nrpm_default_layers(self) -> list[str]:
        from .structure import default_nrpm_layers

        return [f"model.{n}" for n in default_nrpm_layers(self.model)]

    def forge_insertion_points(self) -> list[str]:
        from .structure import default_insertion_points

        return [f"model.{n}" for n in default_insertion_points(self.model)]


def with_normalization(model: nn.Module, mean: Floats, std: Floats) -> Normalized:
    """Put ``Normalize(mean, std)`` in front of a model that normalises nothing itself (e.g. a torchvision or timm
    classifier trained on ``(x - mean) / std``), so it takes [0, 1] input and attacks measure ε in pixel units.

    ``mean``/``std``: one value per input channel (or one for all), e.g. ImageNet's (0.485, 0.456, 0.406) /
    (0.229, 0.224, 0.225). The wrapped model's parameters are shared, not copied; ``result.model`` is ``model``.

    Raises:
        TorchRobustError: ``model`` is not an ``nn.Module``, already contains a :class:`Normalize` layer (it would
            normalise twice), or mean/std are invalid or do not match its first convolution's input channels.
    """
    if not isinstance(model, nn.Module):
        raise TorchRobustError(f"with_normalization expects an nn.Module, got {type(model).__name__}")
    inner = next((name for name, m in model.named_modules() if isinstance(m, Normalize)), None)
    if inner is not None:
        raise TorchRobustError(f"the model already normalises its input (Normalize layer {inner or 'at its root'!r}); "
                               "use it as it is, or remove that layer first")
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is not None:
        make_normalize(mean, std, first_conv.in_channels)  # validates the channel count
    wrapped = Normalized(model, mean, std)
    wrapped.train(model.training)
    return wrapped
