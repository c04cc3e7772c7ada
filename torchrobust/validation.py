"""Input validation shared by every public entry point (attacks, evaluation, reprogramming, NRPM layers, training,
PSAT and the CLI): one-line :class:`~torchrobust.errors.TorchRobustError` messages that name the problem and the fix.

Also the two model helpers every layer needs: :func:`model_device` (where a model's parameters live) and
:func:`eval_mode` (evaluate without touching any submodule's mode), and :func:`renamed_argument` for keyword
arguments kept one release under their old name.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import TorchRobustError

__all__ = ["check_images", "check_labels", "check_eps", "check_positive_int", "check_lam", "check_irls_steps",
           "check_irls_eps", "renamed_argument", "probe_logits", "check_output_file", "check_output_dir",
           "eval_mode", "model_device", "dtype_mismatch"]


def check_images(x: Any, name: str = "x") -> torch.Tensor:
    """``x`` must be a non-empty floating batch (≥ 2 dims, NCHW for images) of finite values in [0, 1]; returns it.

    One pass over the data in the common case (``aminmax``); the finiteness check runs only when the range fails.
    """
    if not isinstance(x, torch.Tensor):
        raise TorchRobustError(f"{name} must be a torch.Tensor, got {type(x).__name__}; convert with torch.as_tensor")
    if not x.is_floating_point():
        raise TorchRobustError(f"{name} must be a float tensor in [0, 1], got dtype {x.dtype}; divide uint8 "
                               "images by 255 (x.float() / 255)")
    if x.dim() < 2:
        raise TorchRobustError(f"{name} must have a batch dimension (N, C, H, W), got shape {tuple(x.shape)}; add "
                               f"one with {name}[None]")
    if x.numel() == 0:
        raise TorchRobustError(f"{name} is empty (shape {tuple(x.shape)}); pass at least one example")
    lo_t, hi_t = torch.aminmax(x.detach())
    lo, hi = float(lo_t), float(hi_t)
    if not (lo >= 0.0 and hi <= 1.0) and not bool(torch.isfinite(x).all()):  # NaN fails both comparisons
        raise TorchRobustError(f"{name} contains NaN or inf; clean the input data")
    if lo < 0.0 or hi > 1.0:
        raise TorchRobustError(f"{name} must lie in [0, 1] (got min {lo:.4g}, max {hi:.4g}); torchrobust models "
                               "take unnormalised images and normalise inside (torchrobust.models.Normalize)")
    return x


def check_labels(y: Any, n: int, num_classes: int | None = None, name: str = "y", *,
                 dtype: torch.dtype | None = None, device: torch.device | None = None) -> torch.Tensor:
    """``y`` must be an integer vector of length ``n`` with values in ``[0, num_classes)``; returns it.

    ``dtype`` demands exactly that dtype (attacks index with int64 labels); ``device`` demands that device (the
    inputs' device)."""
    if not isinstance(y, torch.Tensor):
        raise TorchRobustError(f"{name} must be a torch.Tensor of class indices, got {type(y).__name__}")
    if dtype is not None and y.dtype != dtype:
        raise TorchRobustError(f"{name} must be {str(dtype).replace('torch.', '')} class labels, got dtype {y.dtype}; "
                               f"use {name}.long()")
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TorchRobustError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    if device is not None and y.device != device:
        raise TorchRobustError(f"the inputs are on {device} but {name} is on {y.device}; move both to the same device")
    if y.dim() != 1 or y.shape[0] != n:
        raise TorchRobustError(f"{name} must have shape ({n},) to match the inputs, got {tuple(y.shape)}")
    if n and int(y.min()) < 0:
        raise TorchRobustError(f"{name} has a negative label ({int(y.min())}); labels are class indices >= 0")
    if num_classes is not None and n and int(y.max()) >= num_classes:
        raise TorchRobustError(f"{name} has label {int(y.max())} but the model has {num_classes} classes; "
                               "check the dataset and num_classes")
    return y


def check_eps(eps: float, name: str = "eps") -> None:
    """An attack radius: a finite number >= 0."""
    if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise TorchRobustError(f"{name} must be a finite number >= 0, got {eps!r}")


def check_positive_int(value: Any, name: str, example: int | None = None) -> int:
    """``value`` as an int >= 1 (bools rejected), or a one-line error naming ``name`` (and ``name=example``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        hint = f"; pass e.g. {name}={example}" if example is not None else ""
        raise TorchRobustError(f"{name} must be a positive integer (>= 1), got {value!r}{hint}")
    return value


# NRPM hyperparameters (Hou et al., ICLR 2025, Algorithm 1 / Appendix Algorithm 2): the one place that checks them
# for reprogram(), set_lam/set_K and the NRPM layers.
def check_lam(value: Any, name: str = "lam", *, bounded: bool = True) -> float:
    """λ, the weight of the linear (LPM) term in ``λ·z_LPM + (1−λ)·z_NRPM``: a number in [0, 1].

    ``bounded=False`` (the NRPM layers' ``lam_parametrization="raw"``, the paper code's unconstrained λ): any finite
    number."""
    what = "a number in [0, 1]" if bounded else "a finite number"
    if isinstance(value, (str, bytes)):
        raise TorchRobustError(f"{name} must be {what}, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise TorchRobustError(f"{name} must be {what}, got {value!r}") from None
    if not bounded:
        if not math.isfinite(v):
            raise TorchRobustError(f"{name}={v} is not a finite number; pass a finite λ")
        return v
    if not (0.0 <= v <= 1.0):  # NaN fails too
        raise TorchRobustError(f"{name}={v} is outside [0, 1]; λ weighs the linear (LPM) term, pass a value in [0, 1]")
    return v


def check_irls_steps(K: Any) -> int:
    """K, the number of IRLS steps of NRPM: an integer >= 0 (0 is the plain layer)."""
    if isinstance(K, bool) or not isinstance(K, int) or K < 0:
        raise TorchRobustError(f"K={K!r} is invalid; K (IRLS steps) must be an integer >= 0 (e.g. K=3)")
    return K


def check_irls_eps(value: Any, name: str = "irls_eps") -> float:
    """The IRLS damping ε in the weights ``1/(|a_d x_d − z/D| + ε)`` (Appendix Algorithm 2): finite and > 0."""
    if isinstance(value, (bool, str, bytes)) or not isinstance(value, (int, float)) and not (
            isinstance(value, torch.Tensor) and value.numel() == 1):
        raise TorchRobustError(f"{name} must be a positive number, got {value!r}; try {name}=1e-3")
    v = float(value)
    if not (v > 0.0 and math.isfinite(v)):
        raise TorchRobustError(f"{name}={value!r} must be a finite number > 0 (it damps the IRLS weights "
                               f"1/(|r| + {name})); try {name}=1e-3")
    return v


def renamed_argument(where: str, old: str, new: str, old_value: Any, new_value: Any, default: Any) -> Any:
    """The value of keyword ``new`` of ``where``, also accepted for one release under its old name ``old``.

    ``old_value`` is None when the caller did not use the old name; otherwise a :class:`DeprecationWarning` names the
    new one (pointing at the caller's line), and giving both names with different values is an error."""
    if old_value is None:
        return new_value
    if new_value != default and new_value != old_value:
        raise TorchRobustError(f"{where}: {old}={old_value!r} and {new}={new_value!r} both given; pass only {new} "
                               f"({old} is its deprecated old name)")
    warnings.warn(f"{where}({old}=...) is deprecated and will be removed in the next release; use {new}=... instead",
                  DeprecationWarning, stacklevel=3)
    return old_value


def model_device(model: nn.Module, default: torch.device | str | None = None) -> torch.device:
    """The device of ``model``'s first parameter (else its first buffer), or ``default`` (CPU when None) for a
    model without tensors — e.g. the inputs' device, so a parameter-free model runs where its data is."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu") if default is None else torch.device(default)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode inside the context; every submodule's ``training`` flag is restored on exit.

    Every evaluation forward pass uses it, so evaluating never updates BatchNorm running statistics, never
    samples dropout masks, and never changes the modes a caller set per submodule (``model.train(was)`` would
    set them all alike).
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[nn.Module]:
    """Switch off ``requires_grad`` of ``model``'s parameters inside the context; every flag is restored on exit.

    An attack differentiates with respect to its input only. ``torch.autograd.grad(loss, x)`` already skips the
    parameter gradients of built-in layers, but a custom autograd Function (NRPM, :mod:`torchrobust.nn`) decides
    from ``ctx.needs_input_grad``, which follows ``requires_grad`` alone: with the flags on, every attack step of a
    reprogrammed model also ran the NRPM weight-gradient kernel and threw its result away. Shared parameters are
    restored to their first recorded flag.
    """
    flags: dict[int, tuple[nn.Parameter, bool]] = {}
    for p in model.parameters():
        flags.setdefault(id(p), (p, p.requires_grad))
    try:
        for p, _ in flags.values():
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in flags.values():
            p.requires_grad_(flag)


def dtype_mismatch(model: nn.Module, x: torch.Tensor) -> str | None:
    """A one-line error naming the fix when ``x``'s floating dtype differs from the model's parameters' dtype
    (e.g. a float64 model given float32 images), or None when they agree (or the model has no parameters)."""
    dtypes = {t.dtype for t in model.parameters() if t.is_floating_point()}
    if not dtypes or x.dtype in dtypes:
        return None
    want = sorted(str(d).replace("torch.", "") for d in dtypes)
    got = str(x.dtype).replace("torch.", "")
    if len(want) > 1:
        return (f"the model mixes parameter dtypes ({', '.join(want)}) and the input is {got}; cast the model to one "
                "dtype (e.g. model.float()) and the input to match (x.float())")
    return (f"the input is {got} but the model's parameters are {want[0]}; cast the model "
            f"(model.to(torch.{got})) or the input (x.to(torch.{want[0]}))")


def probe_logits(model: nn.Module, x: torch.Tensor) -> int:
    """Run the model (in eval mode, modes restored) on one example; returns the number of classes, or a clear
    error if the shape or the dtype is wrong."""
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(x[:1])
    except RuntimeError as exc:
        why = dtype_mismatch(model, x)
        if why is not None:
            raise TorchRobustError(why) from None
        first = str(exc).strip().splitlines()[0][:160]
        raise TorchRobustError(f"inputs of shape {tuple(x.shape[1:])} do not fit the model ({first}); check the "
                               "dataset's channels and image size") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise TorchRobustError("the model must return logits of shape (N, num_classes); got "
                               f"{type(out).__name__} {tuple(getattr(out, 'shape', ()))}")
    return int(out.shape[1])


def _check_writable_folder(folder: Path, flag: str, shown: Path) -> None:
    """``folder`` exists as a writable directory or can be created (its nearest existing ancestor is a writable
    directory on a writable filesystem). Creates nothing."""
    p = folder
    while not os.path.lexists(p):
        if p.parent == p:
            break
        p = p.parent
    if os.path.lexists(p) and not p.exists():
        raise TorchRobustError(f"{flag} {shown}: {p} is a broken symbolic link; remove it or choose another path")
    if not p.is_dir():
        raise TorchRobustError(f"{flag} {shown}: {p} is a file, not a folder; choose a path outside it")
    if not os.access(p, os.W_OK | os.X_OK):
        raise TorchRobustError(f"{flag} {shown}: folder {p} is not writable; choose a writable location")
    try:
        read_only = bool(os.statvfs(p).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows) or it failed: os.access already answered
        read_only = False
    if read_only:
        raise TorchRobustError(f"{flag} {shown}: {p} is on a read-only filesystem; choose a writable location")


def check_output_file(path: str | os.PathLike[str], *, overwrite: bool = False, flag: str = "--out") -> Path:
    """Before any work: ``path`` can be written as a file (not a folder, its folder writable or creatable) and,
    unless ``overwrite``, does not exist yet. Creates nothing; returns ``Path(path)``."""
    out = Path(path)
    if str(path) == "" or out.is_dir():
        raise TorchRobustError(f"{flag} {out} is a folder; give a file path such as {out / 'model.safetensors'}")
    _check_writable_folder(out.parent, flag, out)
    if out.exists() and not overwrite:
        raise TorchRobustError(f"{flag} {out} already exists; pass --overwrite to replace it or choose another path")
    return out


def check_output_dir(path: str | os.PathLike[str], results: Iterable[str] = (), *, overwrite: bool = False,
                     flag: str = "--out") -> Path:
    """Before any work: ``path`` is a writable folder or can be created and, unless ``overwrite``, holds none of
    ``results`` (file names relative to it that the command writes). Creates nothing; returns ``Path(path)``."""
    out = Path(path)
    if os.path.lexists(out) and not out.is_dir():
        raise TorchRobustError(f"{flag} {out} is a file, not a folder; give a folder path")
    _check_writable_folder(out, flag, out)
    if not overwrite:
        for name in results:
            if os.path.lexists(out / name):
                raise TorchRobustError(f"{flag} {out} already holds results ({name}); pass --overwrite to replace "
                                       "them or choose another folder")
    return out
