"""Build torchvision and timm classifiers by name, without downloading weights.

torchrobust never downloads: both builders create the architecture with random weights (``weights=None`` /
``pretrained=False``); load weights you have on disk with ``model.load_state_dict(torch.load(path,
weights_only=True))``. The returned models take whatever input their library expects; wrap one trained on normalised
input with :func:`torchrobust.models.with_normalization` so it takes [0, 1] images. Where NRPM layers and forged
thresholds go in them is derived from their module structure (:mod:`torchrobust.models.structure`).

``timm`` is an optional dependency (``pip install torchrobust[timm]``).
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from ..errors import TorchRobustError

__all__ = ["timm_model", "torchvision_model"]


#: what the libraries' constructors raise for arguments they reject: an unknown keyword (TypeError), an assert
#: (torchvision vit_b_16 image_size=15, timm ViT global_pool="bogus"), a ValueError (timm ConvNeXt global_pool) or
#: an IndexError (timm ConvNeXt depths=(1,))
_BAD_ARGUMENTS = (TypeError, ValueError, AssertionError, IndexError)


def _first(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def _unknown(kind: str, name: str, valid: list[str]) -> TorchRobustError:
    close = difflib.get_close_matches(name, valid, n=4, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else f"see {kind}'s model list"
    return TorchRobustError(f"unknown {kind} model {name!r}; {hint}")


def timm_model(name: str, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)`` in eval mode.

    ``kwargs`` go to timm (e.g. ``img_size=32`` for a ViT on CIFAR-sized input). Raises :class:`TorchRobustError`
    for a name timm does not know (with close matches), when timm is missing, and for ``pretrained=True``.
    """
    try:
        import timm
    except ImportError:
        raise TorchRobustError("timm is not installed; pip install 'torchrobust[timm]' (or pip install timm)") from None
    if kwargs.pop("pretrained", False):
        raise TorchRobustError("timm_model builds random weights only (torchrobust never downloads); load a local "
                               "state dict with model.load_state_dict(torch.load(path, weights_only=True))")
    if not isinstance(name, str) or not timm.is_model(name):
        raise _unknown("timm", str(name), list(timm.list_models()))
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except _BAD_ARGUMENTS as exc:
        raise TorchRobustError(f"timm model {name!r} rejects the arguments {sorted(kwargs)} ({_first(exc)})") from None
    return model.eval()


def torchvision_model(name: str, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """``torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)`` in eval mode.

    ``kwargs`` go to torchvision (e.g. ``image_size=32`` for ``vit_b_16``). Raises :class:`TorchRobustError` for a
    name torchvision does not list as a classification model (with close matches) and for ``weights=...``.
    """
    import torchvision

    if kwargs.pop("weights", None) is not None:
        raise TorchRobustError("torchvision_model builds random weights only (torchrobust never downloads); load a "
                               "local state dict with model.load_state_dict(torch.load(path, weights_only=True))")
    valid = sorted(torchvision.models.list_models(module=torchvision.models))
    if name not in valid:
        raise _unknown("torchvision", str(name), valid)
    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except _BAD_ARGUMENTS as exc:
        raise TorchRobustError(f"torchvision model {name!r} rejects the arguments {sorted(kwargs)} "
                               f"({_first(exc)})") from None
    return model.eval()
