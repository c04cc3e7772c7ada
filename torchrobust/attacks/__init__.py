"""Adversarial attacks behind one contract: ``attack(model, x, y) -> x_adv`` inside ``ball(x, eps) ∩ [0, 1]``.

* threat models (:mod:`torchrobust.attacks.threat`): :class:`Linf`, :class:`L2`, :class:`L1`, :func:`get_threat`;
* the base class and registry (:mod:`torchrobust.attacks.base`): :class:`Attack`, :func:`register`, :func:`create`,
  :func:`list_attacks`, :class:`AttackBudgetError`;
* attacks, one file each: :class:`PGD` (``pgd.py``), :class:`FGSM` (``fgsm.py``), and the modules listed in
  ``_OPTIONAL_MODULES`` when present (they register themselves on import).

Example::

    >>> from torchrobust import attacks
    >>> pgd = attacks.create("pgd", threat="L2", eps=0.5, steps=50, seed=0)
    >>> x_adv = pgd(model, x, y)
"""

from __future__ import annotations

import importlib
import importlib.util

from torchrobust.attacks.base import (
    Attack,
    AttackBudgetError,
    create,
    list_attacks,
    margin,
    register,
)
from torchrobust.attacks.fgsm import FGSM
from torchrobust.attacks.pgd import PGD
from torchrobust.attacks.threat import L1, L2, Linf, ThreatModel, ThreatName, get_threat

__all__ = [
    "Attack",
    "AttackBudgetError",
    "FGSM",
    "L1",
    "L2",
    "Linf",
    "PGD",
    "ThreatModel",
    "ThreatName",
    "create",
    "get_threat",
    "list_attacks",
    "margin",
    "register",
]

# Attack modules written alongside this package; each calls ``register(name, cls)`` when imported. A module that is
# absent is skipped; one that is present but fails to import raises (no error is swallowed).
_OPTIONAL_MODULES = ("cw", "deepfool", "spsa", "square", "l0", "wrappers", "autoattack", "apgd", "fab", "eot", "bpda")
for _name in _OPTIONAL_MODULES:
    if importlib.util.find_spec(f"{__name__}.{_name}") is not None:
        importlib.import_module(f"{__name__}.{_name}")
del _name
