"""Model surgery for the data-driven Lipschitz defence: insert, calibrate, tune and remove forged thresholds.

Users import these names from :mod:`torchrobust.forge`; they live here, below the evaluation engine and
:mod:`torchrobust.checkpoint` (which both use them), so that :mod:`torchrobust.forge` can also offer the c_r search
and the checkpoint workflow without an import cycle.

Chen, Chen, Chung & Lee, arXiv 2406.19622, Sec. 3.3. The forged function :class:`~torchrobust.nn.forged.Forged`
(Eq. 9) is inserted *before* selected linear maps (``nn.Linear`` / ``nn.Conv2d``); its per-layer threshold is
``c_th = c_r * b`` with ``b`` the largest activation seen on a calibration set (Eq. 13), obtained with one
no-gradient pass in Algorithm 1's tracking mode.

Insertion points (``where``)
    ``None``: ``model.forge_insertion_points()`` when the model defines it (zoo models: the convs inside
    residual blocks, Mixer MLP linears, hidden layers of MLP / LeNet; see ``docs/architecture.md``), otherwise
    every ``nn.Linear`` / ``nn.Conv2d`` except the first one in ``named_modules()`` order (it sees the raw
    input). A list of qualified module names selects exactly those; a string is a glob (``fnmatch``) over the
    qualified names of the model's Linear/Conv2d layers; a callable ``(name, module) -> bool`` filters them.

State-dict keys
    Each target layer ``name`` is replaced by a :class:`~torchrobust.nn.forged.PreForged` wrapper that keeps
    the original layer object: ``name.weight`` becomes ``name.layer.weight`` and the new buffers are
    ``name.forged.b``, ``name.forged.c_r`` and ``name.forged.n_tracked``. :func:`unforge` restores the original
    keys and objects. A model built by :func:`torchrobust.models.create` records the transform in
    ``model.torchrobust_spec["transforms"]`` so :func:`torchrobust.checkpoint.load` can rebuild it
    (``forge(model, None, **kwargs)`` followed by loading ``b`` from the state dict).

Calibration
    One pass over the calibration data with the model in eval mode (BatchNorm on running statistics), all forged
    modules tracking and returning their input unchanged, so every ``b`` is measured on the *unmodified*
    network (Algorithm 1: "feeding all images in the set S once in track mode"). ``b`` is reset first, which
    makes calibration idempotent. The paper uses the full training set without augmentation for CIFAR and
    ~5,000 random training images for ImageNet (``max_batches`` / a subset). A NaN/inf input value (one would make
    every ``b``, hence every threshold, NaN) or a non-finite resulting ``b`` (overflowing activations) is refused
    with a :class:`~torchrobust.errors.TorchRobustError`, and a failed calibration leaves the previous ``b``.

c_r search
    :func:`~torchrobust.forge_search.search_c_r` and friends live in :mod:`torchrobust.forge_search` (robust
    accuracy per ``c_r`` through the evaluation engine), re-exported by :mod:`torchrobust.forge`.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from torchrobust.errors import TorchRobustError
from torchrobust.nn.forged import Forged, PreForged, check_c_r

__all__ = [
    "forge",
    "unforge",
    "calibrate",
    "set_c_r",
    "forged_modules",
    "is_forged",
    "insertion_points",
    "calibration_batches",
    "model_device",
    "subset_tensors",
    "Where",
    "CalibrationData",
]

log = logging.getLogger(__name__)

Where = None | str | Sequence[str] | Callable[[str, nn.Module], bool]
CalibrationData = torch.Tensor | Dataset | DataLoader | Iterable[Any] | tuple[torch.Tensor, ...]

_LINEAR_TYPES = (nn.Linear, nn.Conv2d)


# ---------------------------------------------------------------------------------------------- helpers
def _linear_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _LINEAR_TYPES) and n]


def forged_modules(model: nn.Module) -> list[tuple[str, Forged]]:
    """All :class:`Forged` modules of ``model`` as ``(qualified name, module)``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, Forged)]


def is_forged(model: nn.Module) -> bool:
    """Whether ``model`` contains at least one :class:`Forged` module."""
    return any(isinstance(m, Forged) for m in model.modules())


def insertion_points(model: nn.Module, where: Where = None) -> list[str]:
    """Resolve ``where`` (see the module docstring) into qualified names of Linear/Conv2d layers of ``model``."""
    layers = dict(_linear_layers(model))
    if where is None:
        hook = getattr(model, "forge_insertion_points", None)
        names = list(hook()) if callable(hook) else list(layers)[1:]
    elif isinstance(where, str):
        names = [n for n in layers if fnmatch.fnmatchcase(n, where)]
        if not names:
            raise TorchRobustError(
                f"where={where!r} matches none of the model's Linear/Conv2d layers; valid names include "
                f"{', '.join(list(layers)[:6]) or '(none)'}"
            )
    elif callable(where):
        names = [n for n, m in layers.items() if where(n, m)]
    else:
        names = list(where)
        unknown = [n for n in names if n not in layers]
        if unknown:
            raise TorchRobustError(
                f"unknown insertion point {unknown[0]!r}: not a Linear/Conv2d layer of the model; valid names "
                f"include {', '.join(list(layers)[:6]) or '(none)'}"
            )
    bad = [n for n in names if n not in layers]
    if bad:
        raise TorchRobustError(
            f"insertion point {bad[0]!r} is not a Linear/Conv2d layer of the model; fix forge_insertion_points() "
            "or pass where=[...]"
        )
    if not names:
        raise TorchRobustError(
            "the model has no insertion point for the forged function (it needs a Linear/Conv2d layer that does "
            "not see the raw input); pass where=[...] with layer names"
        )
    return list(dict.fromkeys(names))


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _make_forged(layer: nn.Module, c_r: float, per_channel: bool, signed_max: bool) -> Forged:
    if isinstance(layer, nn.Conv2d):
        return Forged(c_r, per_channel=per_channel, num_channels=layer.in_channels, channel_dim=1,
                      signed_max=signed_max)
    return Forged(c_r, per_channel=per_channel, num_channels=layer.in_features, channel_dim=-1,
                  signed_max=signed_max)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


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


def _record(model: nn.Module, kwargs: dict[str, Any] | None) -> None:
    spec = getattr(model, "torchrobust_spec", None)
    if not isinstance(spec, dict):
        return
    transforms = [t for t in spec.get("transforms", []) if t.get("name") != "forge"]
    if kwargs is not None:
        transforms.append({"name": "forge", "kwargs": json.loads(json.dumps(kwargs))})
    spec["transforms"] = transforms


# ---------------------------------------------------------------------------------------------- public API
def forge(
    model: nn.Module,
    calibration_data: CalibrationData | None,
    c_r: float = 2**-7,
    where: Where = None,
    inplace: bool = False,
    per_channel: bool = False,
    max_batches: int | None = None,
    batch_size: int = 256,
    progress: bool = False,
    signed_max: bool = False,
) -> nn.Module:
    """Insert forged thresholds (Eq. 9) before the insertion points and calibrate them (Eq. 13, Algorithm 1).

    Args:
        model: a classifier taking [0, 1] inputs. It is deep-copied unless ``inplace``.
        calibration_data: tensor, ``(x, y)``, Dataset or DataLoader of clean (unaugmented) training inputs;
            ``None`` inserts the modules uncalibrated (``b = 0``), e.g. before loading ``b`` from a state dict.
        c_r: the shared ratio of Eq. 13 (``>= 0``; 2**-7 is the paper's default for WRN-34-10 models).
        where: insertion points (see the module docstring); ``None`` uses the model's own hook.
        inplace: modify ``model`` itself instead of a copy.
        per_channel: one running maximum per channel (ablation; the paper uses one scalar per layer).
        max_batches: calibrate on the first ``max_batches`` batches only (the paper's ImageNet subset).
        batch_size: batch size when ``calibration_data`` is a tensor or a Dataset.
        progress: show a tqdm bar during calibration.
        signed_max: track the signed maximum of Algorithm 1 instead of ``max |x|``.

    Returns:
        The forged model (in the train/eval mode it had on entry), with the Forged modules in inference mode.
    """
    c_r = check_c_r(c_r)
    if is_forged(model):
        raise TorchRobustError("the model is already forged; use set_c_r(model, c_r) / calibrate(model, data), "
                               "or unforge(model) first")
    names = insertion_points(model, where)
    if not inplace:
        model = copy.deepcopy(model)
    for name in names:
        layer = model.get_submodule(name)
        _replace(model, name, PreForged(_make_forged(layer, c_r, per_channel, signed_max), layer))
    _record(model, {"c_r": c_r, "where": names, "per_channel": per_channel, "signed_max": signed_max})
    if calibration_data is not None:
        try:
            calibrate(model, calibration_data, max_batches=max_batches, batch_size=batch_size, progress=progress)
        except BaseException:
            if inplace:
                unforge(model, inplace=True)
            raise
    log.info("forged %d insertion points (c_r=%g)", len(names), c_r)
    return model


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
    modes = [(m, m.training) for m in model.modules()]
    device = model_device(model)
    batches, total = calibration_batches(calibration_data, batch_size, max_batches)
    saved = [(m.b.clone(), m.n_tracked.clone(), m._has_tracked, m._warned_uncalibrated) for m in modules]
    if reset:
        for m in modules:
            m.reset()
    n_seen = 0
    model.eval()
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
        for m, mode in modes:
            m.training = mode
        if not ok:  # never leave half-measured or non-finite thresholds behind
            for m, (b, n, has, warned) in zip(modules, saved, strict=True):
                m.b.copy_(b)
                m.n_tracked.copy_(n)
                m._has_tracked, m._warned_uncalibrated = has, warned
    log.info("calibrated %d forged modules on %d examples", len(modules), n_seen)
    return model


def unforge(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Remove every forged threshold: each wrapper is replaced by the original layer object it holds.

    On a model forged with ``forge(m, ..., inplace=True)`` this gives back exactly ``m`` (same layer objects,
    same parameters, same state-dict keys). The ``forge`` entry of ``torchrobust_spec["transforms"]`` is removed.
    """
    if not inplace:
        model = copy.deepcopy(model)
    wrappers = [n for n, m in model.named_modules() if isinstance(m, PreForged)]
    if not wrappers and not is_forged(model):
        raise TorchRobustError("the model is not forged; nothing to unforge")
    for name in sorted(wrappers, key=lambda n: -n.count(".")):
        wrapper = model.get_submodule(name)
        assert isinstance(wrapper, PreForged)
        _replace(model, name, wrapper.layer)
    _record(model, None)
    return model


def set_c_r(model: nn.Module, c_r: float) -> nn.Module:
    """Set ``c_r`` of every Forged module of ``model`` (no recalibration: ``b`` is kept); returns ``model``."""
    value = check_c_r(c_r)
    modules = forged_modules(model)
    if not modules:
        raise TorchRobustError("the model has no Forged modules; call forge(model, data) first")
    for _, m in modules:
        m.set_c_r(value)
    spec = getattr(model, "torchrobust_spec", None)
    if isinstance(spec, dict):
        for t in spec.get("transforms", []):
            if t.get("name") == "forge":
                t.setdefault("kwargs", {})["c_r"] = value
    return model


# ---------------------------------------------------------------------------------------------- CLI helpers


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
