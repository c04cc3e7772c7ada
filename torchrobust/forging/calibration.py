"""Calibration of forged thresholds: measure ``b`` of every :class:`~torchrobust.nn.forged.Forged` module.

Chen, Chen, Chung & Lee, arXiv 2406.19622, Sec. 3.3, Eq. 13 and Algorithm 1: the per-layer threshold is
``c_th = c_r * b`` with ``b`` the largest activation seen on a calibration set. Users import these names from
:mod:`torchrobust.forging`; :func:`torchrobust.forging.forge` inserts the modules and calls :func:`calibrate`.

Calibration
    One pass over the calibration data with the model in eval mode (BatchNorm on running statistics), all forged
    modules tracking and returning their input unchanged, so every ``b`` is measured on the *unmodified*
    network (Algorithm 1: "feeding all images in the set S once in track mode"). ``b`` is reset first, which
    makes calibration idempotent. The paper uses the full training set without augmentation for CIFAR and
    ~5,000 random training images for ImageNet (``max_batches`` / a subset). A NaN/inf input value (one would make
    every ``b``, hence every threshold, NaN) or a non-finite resulting ``b`` (overflowing activations) is refused
    with a :class:`~torchrobust.errors.TorchRobustError`, and a failed calibration leaves the previous ``b``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from torchrobust.errors import TorchRobustError
from torchrobust.nn.forged import Forged
from torchrobust.validation import eval_mode, model_device

__all__ = ["calibrate", "calibration_batches", "forged_modules", "is_forged", "subset_tensors", "CalibrationData"]

log = logging.getLogger(__name__)

#: What :func:`calibrate` accepts: a tensor, ``(x, y)``, a Dataset, a DataLoader or any iterable of batches.
CalibrationData = torch.Tensor | Dataset | DataLoader | Iterable[Any] | tuple[torch.Tensor, ...]


def forged_modules(model: nn.Module) -> list[tuple[str, Forged]]:
    """All :class:`Forged` modules of ``model`` as ``(qualified name, module)``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, Forged)]


def is_forged(model: nn.Module) -> bool:
    """Whether ``model`` contains at least one :class:`Forged` module."""
    return any(isinstance(m, Forged) for m in model.modules())


def calibration_batches(data: CalibrationData, batch_size: int,
                        max_batches: int | None) -> tuple[Iterator[Any], int | None]:
    """Yield input tensors (labels dropped) from a tensor, ``(x, y)`` tuple, Dataset or DataLoader; with the
    number of batches when it is known."""
    if batch_size < 1:
        raise TorchRobustError(f"batch_size must be >= 1, got {batch_size}")
    if max_batches is not None and max_batches < 1:
        raise TorchRobustError(f"max_batches must be >= 1 or None, got {max_batches}")
    if isinstance(data, TensorDataset):
        data = data.tensors[0]
    if isinstance(data, (tuple, list)) and data and isinstance(data[0], torch.Tensor):
        data = data[0]
    if isinstance(data, torch.Tensor):
        tensor = data
        total = math.ceil(tensor.shape[0] / batch_size) if tensor.dim() > 0 else 1
        if max_batches is not None:
            total = min(total, max_batches)

        def gen_tensor() -> Iterator[torch.Tensor]:
            for i in range(total):
                yield tensor[i * batch_size:(i + 1) * batch_size]

        return gen_tensor(), total
    if isinstance(data, Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        data = DataLoader(data, batch_size=batch_size, shuffle=False)
    if not isinstance(data, Iterable):
        raise TorchRobustError(
            f"calibration data of type {type(data).__name__} is not supported; pass a tensor, (x, y), a Dataset "
            "or a DataLoader"
        )
    try:
        total: int | None = len(data)  # type: ignore[arg-type]
    except TypeError:
        total = None
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)

    def gen() -> Iterator[Any]:
        for i, item in enumerate(data):
            if max_batches is not None and i >= max_batches:
                break
            yield item[0] if isinstance(item, (tuple, list)) else item

    return gen(), total


def _expected_input(model: nn.Module) -> str:
    shape = getattr(model, "input_shape", None)
    if shape is not None:
        return f"(N, {', '.join(str(s) for s in shape)})"
    for _, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return f"(N, {m.in_channels}, H, W)"
        if isinstance(m, nn.Linear):
            return f"inputs that flatten to {m.in_features} features per example"
    return "the model's input shape"


def _check_batch(model: nn.Module, x: Any) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TorchRobustError(
            f"calibration batches must be tensors, got {type(x).__name__}; pass a tensor, (x, y), a Dataset or "
            "a DataLoader of (x, y)"
        )
    if not x.is_floating_point() or x.dim() < 2:
        raise TorchRobustError(
            f"calibration data must be float batches of shape {_expected_input(model)}, got dtype {x.dtype} and "
            f"shape {tuple(x.shape)}"
        )
    if not bool(torch.isfinite(x).all()):  # NaN fails every min/max comparison: test finiteness first
        raise TorchRobustError(
            f"calibration data contains {int((~torch.isfinite(x)).sum())} NaN/inf value(s); a single one makes "
            "every threshold NaN: clean or drop those examples"
        )
    if x.dim() == 4 and x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise TorchRobustError(
            f"calibration images must lie in [0, 1] (got min {float(x.min()):.3g}, max {float(x.max()):.3g}); "
            "pass unnormalised images, torchrobust models normalise inside"
        )
    return x


@torch.no_grad()
def calibrate(
    model: nn.Module,
    calibration_data: CalibrationData,
    max_batches: int | None = None,
    batch_size: int = 256,
    progress: bool = False,
    reset: bool = True,
) -> nn.Module:
    """Measure ``b`` of every Forged module with one no-grad pass in eval mode (Algorithm 1 tracking mode).

    ``reset=True`` (default) forgets previous maxima first, so calibrating twice on the same data gives the
    same ``b``; ``reset=False`` accumulates (e.g. calibration in several chunks). Returns ``model``.
    """
    modules = [m for _, m in forged_modules(model)]
    if not modules:
        raise TorchRobustError("the model has no Forged modules; call forge(model, data) first")
    device = model_device(model)
    batches, total = calibration_batches(calibration_data, batch_size, max_batches)
    saved = [m.calibration_state() for m in modules]
    if reset:
        for m in modules:
            m.reset()
    n_seen = 0
    with eval_mode(model):  # modes restored on exit, after the modules are frozen
        for m in modules:
            m.track()
        ok = False
        try:
            for x in tqdm(batches, total=total, desc="calibrating forged thresholds", disable=not progress):
                x = _check_batch(model, x).to(device)
                try:
                    model(x)
                except RuntimeError as exc:
                    if n_seen:
                        raise
                    first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
                    raise TorchRobustError(
                        f"calibration data of shape {tuple(x.shape)} does not fit the model ({first}); the model "
                        f"expects {_expected_input(model)}"
                    ) from None
                n_seen += x.shape[0]
            if n_seen == 0:
                raise TorchRobustError("calibration data is empty; pass at least one batch of training images")
            bad = [name for name, m in forged_modules(model) if not bool(torch.isfinite(m.b).all())]
            if bad:
                raise TorchRobustError(
                    f"calibration gave a non-finite threshold at {bad[0]!r} ({len(bad)} of {len(modules)} layers): the "
                    "model's activations overflow or are NaN on this data; check the model's weights and the inputs"
                )
            ok = True
        finally:
            for m in modules:
                m.freeze()
            if not ok:  # never leave half-measured or non-finite thresholds behind
                for m, state in zip(modules, saved, strict=True):
                    m.restore_calibration(state)
    log.info("calibrated %d forged modules on %d examples", len(modules), n_seen)
    return model


# ---------------------------------------------------------------------------------------------- data helpers
def subset_tensors(dataset: Dataset, n: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` items of a seeded random permutation of ``dataset`` (all of it, in order, when ``n`` is
    ``None``) as ``(x, y)`` tensors; a ``TensorDataset`` is not copied."""
    if isinstance(dataset, TensorDataset):
        x, y = dataset.tensors[0], dataset.tensors[1]
    else:
        xs, ys = zip(*[dataset[i] for i in range(len(dataset))], strict=True)  # type: ignore[arg-type]
        x, y = torch.stack(list(xs)), torch.as_tensor(ys)
    if n is not None and n < x.shape[0]:
        idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
        x, y = x[idx], y[idx]
    return x, y
