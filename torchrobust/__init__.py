"""torchrobust: make a pretrained PyTorch classifier robust, then measure that robustness honestly.

>>> import torchrobust as tr
>>> model = tr.models.create("mlp", widths=[256, 64], activation=None)    # takes [0,1] input
>>> train, test = tr.data.load("mnist", "train"), tr.data.load("mnist", "test")
>>> atk = tr.attacks.PGD(threat="Linf", eps=0.3, steps=40)                # also FGSM; "L2", "L1"
>>> x_adv = atk(model, x, y)                                              # in [0,1], inside the ball
>>> robust = tr.reprogram(model, lam=0.8, K=3)                            # NRPM, same weights
>>> tr.save(robust, "mlp.safetensors", note="..."); robust = tr.load("mlp.safetensors")

Sub-packages are imported on first use (PEP 562), so ``import torchrobust`` stays cheap and a CLI call only
loads what it needs.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = {"data", "models", "attacks", "nn", "train", "evaluate", "checkpoint", "errors", "experiments",
               "psat", "validation", "robustbench"}
_FUNCTIONS = {
    "save": ("checkpoint", "save"),
    "load": ("checkpoint", "load"),
    "unreprogram": ("reprogramming", "unreprogram"),
    "unforge": ("forging", "unforge"),
    "reprogram": ("reprogramming", "reprogram"),
    "forge": ("forging", "forge"),
}

# ``reprogram`` and ``forge`` are functions only: their modules are ``reprogramming`` and ``forging`` (moved in 0.2,
# issue 12), so importing a submodule never rebinds these attributes and they can be resolved lazily like the others.
from .errors import TorchRobustError as TorchRobustError  # noqa: E402

__all__ = sorted(_SUBMODULES | set(_FUNCTIONS) | {"__version__", "TorchRobustError"})


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _FUNCTIONS:
        mod, attr = _FUNCTIONS[name]
        return getattr(importlib.import_module(f".{mod}", __name__), attr)
    raise AttributeError(f"module 'torchrobust' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
