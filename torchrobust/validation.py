"""Input validation shared by attacks, evaluation and the CLI: one-line errors that name the problem and the fix."""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import TorchRobustError

__all__ = ["check_images", "check_labels", "check_eps", "probe_logits"]


def check_images(x: torch.Tensor, name: str = "x") -> None:
    """``x`` must be a floating NCHW-style batch (≥ 2 dims) of finite values in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise TorchRobustError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TorchRobustError(f"{name} must be a float tensor in [0, 1], got dtype {x.dtype}; divide uint8 "
                               "images by 255")
    if x.dim() < 2:
        raise TorchRobustError(f"{name} must have a batch dimension (N, C, H, W), got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise TorchRobustError(f"{name} is empty (shape {tuple(x.shape)}); pass at least one example")
    if not bool(torch.isfinite(x).all()):
        raise TorchRobustError(f"{name} contains NaN or inf; clean the input data")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise TorchRobustError(f"{name} must lie in [0, 1] (got min {lo:.4g}, max {hi:.4g}); torchrobust models "
                               "take unnormalised images and normalise inside")


def check_labels(y: torch.Tensor, n: int, num_classes: int | None = None, name: str = "y") -> None:
    """``y`` must be an integer vector of length ``n`` with values in ``[0, num_classes)``."""
    if not isinstance(y, torch.Tensor):
        raise TorchRobustError(f"{name} must be a torch.Tensor of class indices, got {type(y).__name__}")
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TorchRobustError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    if y.dim() != 1 or y.shape[0] != n:
        raise TorchRobustError(f"{name} must have shape ({n},) to match the inputs, got {tuple(y.shape)}")
    if n and int(y.min()) < 0:
        raise TorchRobustError(f"{name} has a negative label ({int(y.min())}); labels are class indices >= 0")
    if num_classes is not None and n and int(y.max()) >= num_classes:
        raise TorchRobustError(f"{name} has label {int(y.max())} but the model has {num_classes} classes; "
                               "check the dataset and num_classes")


def check_eps(eps: float, name: str = "eps") -> None:
    if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise TorchRobustError(f"{name} must be a finite number >= 0, got {eps!r}")


def probe_logits(model: nn.Module, x: torch.Tensor) -> int:
    """Run the model on one example; returns the number of classes, or a clear error if the shape is wrong."""
    try:
        with torch.no_grad():
            out = model(x[:1])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:160]
        raise TorchRobustError(f"inputs of shape {tuple(x.shape[1:])} do not fit the model ({first}); check the "
                               "dataset's channels and image size") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise TorchRobustError("the model must return logits of shape (N, num_classes); got "
                               f"{type(out).__name__} {tuple(getattr(out, 'shape', ()))}")
    return int(out.shape[1])
