"""Argument checks of the gradient-masking checks: each raises a one-line TorchRobustError naming the fix.

They differ from :mod:`torchrobust.validation` on purpose: a check takes inputs *outside* the contract (NaN, values
outside [0, 1]) in order to flag them, and takes accuracies as fractions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from torchrobust.errors import TorchRobustError

__all__ = ["float_tensor", "int64_labels", "bool_vector", "check_fraction", "check_count"]


def float_tensor(name: str, t: Any) -> Tensor:
    """``t`` detached, or a one-line error unless it is a floating-point tensor (any range: checks flag ranges)."""
    if not isinstance(t, Tensor) or not t.is_floating_point():
        raise TorchRobustError(f"{name} must be a floating-point tensor, got {type(t).__name__}")
    return t.detach()


def int64_labels(y: Any, n: int) -> Tensor:
    """``y``, or a one-line error unless it is an int64 tensor of shape ``(n,)``."""
    if not isinstance(y, Tensor) or y.dtype != torch.long or y.shape != (n,):
        raise TorchRobustError(f"y must be an int64 tensor of shape ({n},); use torch.as_tensor(y).long()")
    return y


def bool_vector(name: str, t: Tensor | Sequence[bool]) -> Tensor:
    """A per-example correctness vector as a 1-D bool CPU tensor (0/1 values accepted), or a one-line error."""
    v = torch.as_tensor(t).detach().cpu()
    if v.ndim != 1:
        raise TorchRobustError(f"{name} must be a 1-D per-example bool vector, got shape {tuple(v.shape)}")
    if v.dtype != torch.bool:
        if not bool(((v == 0) | (v == 1)).all()):
            raise TorchRobustError(f"{name} must hold booleans (or 0/1), one per example")
        v = v.bool()
    return v


def check_fraction(name: str, v: Any) -> None:
    """An accuracy must be a fraction in [0, 1] (a percentage is refused)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
        raise TorchRobustError(f"{name} must be an accuracy fraction in [0, 1], got {v!r} (not a percentage)")


def check_count(name: str, v: Any, minimum: int) -> None:
    """``v`` must be an integer (not a bool) ``>= minimum``."""
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise TorchRobustError(f"{name} must be an integer >= {minimum}, got {v!r}")
