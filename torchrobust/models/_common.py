"""Small helpers shared by the zoo models: activations by name, input checks, module names, JSON kwargs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import TorchRobustError, unknown_name
from ..validation import check_positive_int

__all__ = [
    "ACTIVATIONS", "make_activation", "check_positive_int", "check_input", "qualified_names", "block_convs", "jsonable",
]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,  # = swish; RobustBench's custom `Swish` autograd function computes the same function
    "swish": nn.SiLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
}


def make_activation(name: str, allowed: Iterable[str] | None = None) -> nn.Module:
    """A fresh activation module by name (``"relu"``, ``"silu"``, ...); unknown names raise a one-line error."""
    valid = list(allowed) if allowed is not None else list(ACTIVATIONS)
    if not isinstance(name, str) or name.lower() not in valid:
        raise unknown_name("activation", name, valid)
    return ACTIVATIONS[name.lower()]()


def check_input(x: torch.Tensor, in_channels: int, model: str, min_size: int = 1) -> None:
    """One-line error for an input that cannot be an NCHW batch of this model's images."""
    if x.dim() != 4:
        raise TorchRobustError(f"{model} expects NCHW images (N, {in_channels}, H, W), got shape "
                               f"{tuple(x.shape)}; add the batch/channel dimensions")
    if x.shape[1] != in_channels:
        raise TorchRobustError(f"{model} was built for in_channels={in_channels} but got {x.shape[1]}-channel "
                               f"input; build it with in_channels={x.shape[1]}")
    if min(x.shape[2], x.shape[3]) < min_size:
        raise TorchRobustError(f"{model} needs images of at least {min_size}x{min_size}, got "
                               f"{x.shape[2]}x{x.shape[3]}")


def block_convs(root: nn.Module, blocks: Iterable[Any], convs: Callable[[Any], Sequence[nn.Module]],
                shortcut: Callable[[Any], nn.Module | None] | None = None) -> list[str]:
    """Qualified names of a residual network's forge insertion points (Chen et al. Fig. 2), block by block: the
    block's ``convs(b)``, then its shortcut conv ``shortcut(b)`` when ``shortcut`` is given and the block has one."""
    mods: list[nn.Module] = []
    for b in blocks:
        mods.extend(convs(b))
        extra = None if shortcut is None else shortcut(b)
        if extra is not None:
            mods.append(extra)
    return qualified_names(root, mods)


def qualified_names(root: nn.Module, modules: Iterable[nn.Module]) -> list[str]:
    """Qualified names (as in ``root.named_modules()``) of ``modules``, in the given order."""
    index = {id(m): name for name, m in root.named_modules()}
    out = []
    for m in modules:
        if id(m) not in index:  # pragma: no cover - a programming error in a zoo class
            raise RuntimeError(f"module {type(m).__name__} is not a submodule of {type(root).__name__}")
        out.append(index[id(m)])
    return out


def jsonable(value: Any, what: str) -> Any:
    """``value`` with tuples → lists and tensors → lists; errors if the result is not JSON-serialisable."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().tolist()
    elif type(value).__module__ == "numpy" and hasattr(value, "tolist"):  # numpy arrays and scalars
        value = value.tolist()
    elif isinstance(value, tuple):
        value = [jsonable(v, what) for v in value]
    elif isinstance(value, list):
        value = [jsonable(v, what) for v in value]
    elif isinstance(value, dict):
        value = {str(k): jsonable(v, what) for k, v in value.items()}
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        raise TorchRobustError(f"{what}={value!r} is not JSON-serialisable; pass numbers, strings, lists or None")\
            from None
    return value
