"""Input validation shared by attacks, evaluation and the CLI: one-line errors that name the problem and the fix."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from .errors import TorchRobustError

__all__ = ["check_images", "check_labels", "check_eps", "probe_logits", "check_output_file", "check_output_dir",
           "eval_mode", "dtype_mismatch"]


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
