"""Model registry: ``create(name, num_classes=10, **kw)`` and ``list_models()``.

Every created model records how it was built in ``model.torchrobust_spec = {"name": name, "kwargs": {...}}``:
*all* constructor arguments after defaults are applied (``num_classes`` included), as JSON values, so that
``create(spec["name"], **spec["kwargs"])`` rebuilds the same architecture even if a default changes later
(``torchrobust.checkpoint`` relies on this).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import TorchRobustError, unknown_name
from ._common import jsonable
from .lenet import LeNet
from .mixer import MLPMixer
from .mlp import MLP
from .resnet import PreActResNet, ResNet
from .wide_resnet import DMWideResNet, WideResNet

__all__ = ["create", "list_models", "model_kwargs"]


@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., nn.Module]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    summary: str = ""

    def params(self) -> dict[str, inspect.Parameter]:
        sig = inspect.signature(self.builder)
        return {n: p for n, p in sig.parameters.items()
                if n not in self.fixed and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


# PSAT backbones (.psat_backbones) are imported when built: nothing pays for the hypernetwork code until it is used.
def _psat_resnet(depth: int, num_classes: int = 10, z_dim: int = 64, hyper: bool = True, unit: int = 64,
                 width: int = 64, init: str = "ha", reduce: str = "mean", in_channels: int = 3,
                 mean: Any = None, std: Any = None) -> nn.Module:
    from .psat_backbones import PSATResNet

    return PSATResNet(depth, num_classes, z_dim, hyper, unit, width, init, reduce, in_channels, mean, std)  # type: ignore[arg-type]


def _psat_resnet50(num_classes: int = 10, z_dim: int = 128, hyper: bool = True, unit: int = 64, width: int = 64,
                   init: str = "ha", reduce: str = "mean", in_channels: int = 3, mean: Any = None,
                   std: Any = None) -> nn.Module:
    return _psat_resnet(50, num_classes, z_dim, hyper, unit, width, init, reduce, in_channels, mean, std)


def _msd_cnn(num_classes: int = 10, hyper: bool = False, z_dim: int = 32, unit: int = 32, init: str = "kaiming",
             reduce: str = "mean") -> nn.Module:
    from .psat_backbones import MSDCNN

    return MSDCNN(num_classes, hyper, z_dim, unit, init, reduce)  # type: ignore[arg-type]


def _psat_timm(backbone: str, num_classes: int = 10, in_chans: int = 1, stem_stride: int | None = None,
               input_size: int | None = None) -> nn.Module:
    from .lightweight import timm_member

    return timm_member(backbone, num_classes, in_chans, stem_stride, input_size)


_REGISTRY: dict[str, _Entry] = {
    "mlp": _Entry(MLP, summary="784-256-64-10 MLP of the reprogramming paper (activation-free by default)"),
    "lenet": _Entry(LeNet, summary="PyTorch FGSM-tutorial LeNet (conv 1→10→20, fc 320→50→10)"),
    "resnet10": _Entry(ResNet, {"depth": 10}, "CIFAR ResNet-10 (BasicBlock 1-1-1-1)"),
    "resnet18": _Entry(ResNet, {"depth": 18}, "CIFAR ResNet-18 (11,173,962 params at width 64)"),
    "resnet34": _Entry(ResNet, {"depth": 34}, "CIFAR ResNet-34"),
    "resnet50": _Entry(ResNet, {"depth": 50}, "CIFAR ResNet-50 (Bottleneck)"),
    "preact_resnet18": _Entry(PreActResNet, {"depth": 18}, "CIFAR PreAct ResNet-18 (MSD baseline, 11,171,146)"),
    "preact_resnet34": _Entry(PreActResNet, {"depth": 34}, "CIFAR PreAct ResNet-34"),
    "wideresnet": _Entry(WideResNet, summary="WideResNet, RobustBench/TRADES layout (depth, widen_factor)"),
    "wrn28_10": _Entry(WideResNet, {"depth": 28, "widen_factor": 10}, "WRN-28-10, RobustBench layout"),
    "wrn34_10": _Entry(WideResNet, {"depth": 34, "widen_factor": 10}, "WRN-34-10, RobustBench layout"),
    "wideresnet_dm": _Entry(DMWideResNet, summary="WideResNet, DeepMind/RobustBench DMWideResNet layout"),
    "wrn70_16": _Entry(DMWideResNet, {"depth": 70, "widen_factor": 16, "activation": "silu"},
                       "WRN-70-16 SiLU, DMWideResNet layout"),
    "mlp_mixer": _Entry(MLPMixer, summary="small MLP-Mixer (patch, hidden, token/channel MLP dims, depth)"),
    "hyper_resnet18": _Entry(_psat_resnet, {"depth": 18, "hyper": True}, "PSAT ResNet-18, hypernetwork convs"),
    "hyper_resnet50": _Entry(_psat_resnet50, {"hyper": True}, "PSAT ResNet-50, hypernetwork convs (N_z=128)"),
    "plain_resnet18": _Entry(_psat_resnet, {"depth": 18, "hyper": False}, "PSAT-layout plain ResNet-18"),
    "plain_resnet50": _Entry(_psat_resnet50, {"hyper": False}, "PSAT-layout plain ResNet-50"),
    "msd_cnn": _Entry(_msd_cnn, {"hyper": False}, "MNIST CNN of Maini et al. (MSD): conv32-conv64-fc1024"),
    "hyper_msd_cnn": _Entry(_msd_cnn, {"hyper": True}, "MSD MNIST CNN with a hypernetwork-generated conv2"),
    "psat_timm": _Entry(_psat_timm, summary="a timm classifier (backbone=...) for PSAT Table 5 (needs timm)"),
}


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise unknown_name("model", name, _REGISTRY)
    return _REGISTRY[name]


def model_kwargs(name: str) -> dict[str, Any]:
    """The keyword arguments ``create(name, ...)`` accepts, with their defaults."""
    return {n: (None if p.default is inspect.Parameter.empty else p.default)
            for n, p in _entry(name).params().items()}


def create(name: str, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Build zoo model ``name`` for ``num_classes`` classes; see :func:`list_models` and :func:`model_kwargs`.

    All models take float NCHW input in [0, 1] and return logits; ``mean``/``std`` (default ``None`` = no
    normalisation) put a normalisation layer inside. Unknown names or keyword arguments raise
    :class:`~torchrobust.errors.TorchRobustError` listing the valid ones.
    """
    entry = _entry(name)
    params = entry.params()
    bad = sorted(k for k in kwargs if k not in params)
    if bad:
        fixed = [k for k in bad if k in entry.fixed]
        hint = (f" ({', '.join(fixed)} is fixed by the name {name!r}; use the generic model for other values)"
                if fixed else "")
        raise TorchRobustError(f"unknown argument(s) {', '.join(map(repr, bad))} for model {name!r}{hint}; "
                               f"valid: {', '.join(sorted(params))}")
    given = {k: jsonable(v, k) for k, v in {"num_classes": num_classes, **kwargs}.items()}
    bound = inspect.signature(entry.builder).bind_partial(**entry.fixed, **given)
    bound.apply_defaults()
    resolved = {k: v for k, v in bound.arguments.items() if k in params}
    model = entry.builder(**entry.fixed, **resolved)
    model.torchrobust_spec = {"name": name, "kwargs": jsonable(resolved, "kwargs")}
    return model
