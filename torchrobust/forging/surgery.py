"""Model surgery for the data-driven Lipschitz defence: insert, calibrate, tune and remove forged thresholds.

Users import these names from :mod:`torchrobust.forging`; this module and :mod:`torchrobust.forging.calibration`
sit below the evaluation engine and :mod:`torchrobust.checkpoint` (which both use them), the c_r search
(:mod:`torchrobust.forging.search`) above the engine (see ``docs/architecture.md``).

Chen, Chen, Chung & Lee, arXiv 2406.19622, Sec. 3.3. The forged function :class:`~torchrobust.nn.forged.Forged`
(Eq. 9) is inserted *before* selected linear maps (``nn.Linear`` / ``nn.Conv2d``); its per-layer threshold is
``c_th = c_r * b`` with ``b`` the largest activation seen on a calibration set (Eq. 13), obtained with one
no-gradient pass in Algorithm 1's tracking mode.

Insertion points (``where``)
    ``None``: ``model.forge_insertion_points()`` when the model defines it (zoo models: the convs inside
    residual blocks, Mixer MLP linears, hidden layers of MLP / LeNet; see ``docs/architecture.md``), otherwise
    the layers :mod:`torchrobust.models.structure` finds inside residual blocks and attention modules (shortcut
    convs included; not the stem or the head), and for a model without either every ``nn.Linear`` /
    ``nn.Conv2d`` except the first one in ``named_modules()`` order (it sees the raw input). A list of qualified
    module names selects exactly those; a string is a glob (``fnmatch``) over the qualified names of the model's
    Linear/Conv2d layers; a callable ``(name, module) -> bool`` filters them.

State-dict keys
    Each target layer ``name`` is replaced by a :class:`~torchrobust.nn.forged.PreForged` wrapper that keeps
    the original layer object: ``name.weight`` becomes ``name.layer.weight`` and the new buffers are
    ``name.forged.b``, ``name.forged.c_r`` and ``name.forged.n_tracked``. :func:`unforge` restores the original
    keys and objects. A model built by :func:`torchrobust.models.create` records the transform in
    ``model.torchrobust_spec["transforms"]`` so :func:`torchrobust.checkpoint.load` can rebuild it
    (``forge(model, None, **kwargs)`` followed by loading ``b`` from the state dict).

Calibration
    :func:`forge` calibrates with :func:`torchrobust.forging.calibration.calibrate` (see there).
"""

from __future__ import annotations

import copy
import fnmatch
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from torchrobust.errors import TorchRobustError
from torchrobust.forging.calibration import CalibrationData, calibrate, forged_modules, is_forged
from torchrobust.nn.forged import Forged, PreForged, check_c_r

__all__ = ["forge", "unforge", "set_c_r", "insertion_points", "Where"]

log = logging.getLogger(__name__)

Where = None | str | Sequence[str] | Callable[[str, nn.Module], bool]

_LINEAR_TYPES = (nn.Linear, nn.Conv2d)


# ---------------------------------------------------------------------------------------------- helpers
def _linear_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _LINEAR_TYPES) and n]


def insertion_points(model: nn.Module, where: Where = None) -> list[str]:
    """Resolve ``where`` (see the module docstring) into qualified names of Linear/Conv2d layers of ``model``."""
    layers = dict(_linear_layers(model))
    if where is None:
        # the model's hook, else every layer of its residual blocks / attention modules (models.structure)
        from torchrobust.models.structure import default_insertion_points

        names = default_insertion_points(model)
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


