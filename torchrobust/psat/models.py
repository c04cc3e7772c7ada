"""PSAT backbones and their parameter accounting.

The backbones themselves (hypernetwork ResNet-18/50 and the MSD MNIST CNN, PSAT §"Hypernetwork Design") are zoo
models defined in :mod:`torchrobust.models.psat_backbones` and re-exported here; this module adds building them by
PSAT name, their plain counterparts and the parameter reports of PSAT Table 1/2 (:func:`parameter_report`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from torchrobust import models
from torchrobust.errors import TorchRobustError, unknown_name
from torchrobust.models.lightweight import timm_member
from torchrobust.models.psat_backbones import (
    MSDCNN,
    PSATResNet,
    hyper_msd_cnn,
    hyper_resnet18,
    hyper_resnet50,
    msd_cnn,
    plain_resnet18,
    plain_resnet50,
)

__all__ = [
    "PSATResNet", "MSDCNN", "create", "list_models", "msd_cnn", "hyper_msd_cnn", "hyper_resnet18",
    "hyper_resnet50", "plain_counterpart", "count_parameters", "parameter_report", "ParameterReport",
    "hypernetwork_parameter_count",
]


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "hyper_resnet18": hyper_resnet18,
    "hyper_resnet50": hyper_resnet50,
    "hyper_msd_cnn": hyper_msd_cnn,
    "plain_resnet18": plain_resnet18,
    "plain_resnet50": plain_resnet50,
    "msd_cnn": msd_cnn,
    "psat_timm": timm_member,  # PSAT Table 5's lightweight networks (torchrobust.psat.lightweight)
}
_PLAIN_OF = {"hyper_resnet18": "plain_resnet18", "hyper_resnet50": "plain_resnet50", "hyper_msd_cnn": "msd_cnn"}
_HYPER_ONLY_KW = ("z_dim", "unit", "init", "reduce")


def list_models() -> list[str]:
    """Names accepted by :func:`create`."""
    return sorted(_REGISTRY)


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build a PSAT backbone by name through the model zoo (:func:`torchrobust.models.create`), so its checkpoints
    reload with :func:`torchrobust.load`."""
    if name not in _REGISTRY:
        raise unknown_name("PSAT model", name, _REGISTRY)
    return models.create(name, **kwargs)


def plain_counterpart(model: nn.Module) -> nn.Module:
    """The plain (directly parameterised) version of a model built by :func:`create`."""
    spec = getattr(model, "torchrobust_spec", None)
    if not spec or spec.get("name") not in _REGISTRY:
        raise TorchRobustError("cannot infer the plain model; pass `plain=` explicitly or build with psat.create")
    name = _PLAIN_OF.get(spec["name"], spec["name"])
    kw = {k: v for k, v in spec["kwargs"].items() if k not in _HYPER_ONLY_KW or name == spec["name"]}
    return create(name, **kw)


def count_parameters(model: nn.Module) -> int:
    """Number of distinct trainable parameters (shared tensors counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def hypernetwork_parameter_count(z_dim: int, unit_out: int, unit_in: int, kernel_size: int,
                                 hidden: int | None = None) -> int:
    """``U_in d N_z + U_in d + d U_out k² + U_out k²`` (the reconstructed Eq. 11), ``d = N_z`` by default."""
    d = z_dim if hidden is None else hidden
    k2 = kernel_size ** 2
    return unit_in * d * z_dim + unit_in * d + d * unit_out * k2 + unit_out * k2


@dataclass(frozen=True)
class ParameterReport:
    """Parameter count of a (PSAT) model against its plain counterpart.

    ``saving`` is ``1 - params / plain_params`` (PSAT Table 1's "Paras Saving"; negative means more).
    """

    params: int
    plain_params: int
    members: int

    @property
    def saving(self) -> float:
        return 1.0 - self.params / self.plain_params

    def __str__(self) -> str:
        arrow = "saving" if self.saving >= 0 else "increase"
        return (f"{self.params:,} parameters ({self.members} member(s)) vs {self.plain_params:,} plain: "
                f"{abs(self.saving) * 100:.2f}% {arrow}")


def parameter_report(model: nn.Module, plain: nn.Module | None = None) -> ParameterReport:
    """Count ``model`` (a single model or a :class:`~torchrobust.psat.aggregate.PSATEnsemble`, all members)
    against ``plain`` (default: the plain counterpart of its first member)."""
    members = list(model.members.values()) if hasattr(model, "members") else [model]
    if plain is None:
        plain = plain_counterpart(members[0])
    return ParameterReport(count_parameters(model), count_parameters(plain), len(members))
