"""Adversarial attacks behind one contract: ``attack(model, x, y) -> x_adv`` inside ``ball(x, eps) ∩ [0, 1]``.

* threat models (:mod:`torchrobust.attacks.threat`): :class:`Linf`, :class:`L2`, :class:`L1`, :func:`get_threat`;
* the base class and registry (:mod:`torchrobust.attacks.base`): :class:`Attack`, :func:`register`, :func:`create`,
  :func:`list_attacks`, :class:`AttackBudgetError`;
* attacks, one file each, registered by name for :func:`create`: :class:`PGD`, :class:`APGD` (``"apgd-ce"``),
  :class:`APGDDLR` (``"apgd-dlr"``) and :class:`APGDT` (``"apgd-t"``), :class:`FGSM`, :class:`CW` and
  :class:`CWLinf`, :class:`DeepFool`, :class:`SPSA`, :class:`Square`, :class:`L0Attack` (with the :class:`L0`
  threat model), the :func:`EOT` and :class:`BPDA` wrappers, and :class:`AutoAttack` (the reference
  implementation from the ``pyautoattack`` package, imported only when used).

Example::

    >>> from torchrobust import attacks
    >>> pgd = attacks.create("pgd", threat="L2", eps=0.5, steps=50, seed=0)
    >>> x_adv = pgd(model, x, y)
"""

from __future__ import annotations

from torchrobust.attacks.apgd import APGD, APGDDLR, APGDT
from torchrobust.attacks.autoattack import AutoAttack, AutoAttackResult, run_autoattack
from torchrobust.attacks.base import (
    Attack,
    AttackBudgetError,
    attack_class,
    create,
    list_attacks,
    margin,
    register,
)
from torchrobust.attacks.cw import CW, CWLinf
from torchrobust.attacks.deepfool import DeepFool
from torchrobust.attacks.fgsm import FGSM
from torchrobust.attacks.l0 import L0, L0Attack
from torchrobust.attacks.pgd import PGD
from torchrobust.attacks.spsa import SPSA
from torchrobust.attacks.square import Square
from torchrobust.attacks.threat import L1, L2, THREAT_NAMES, Linf, ThreatModel, ThreatName, get_threat
from torchrobust.attacks.wrappers import BPDA, EOT, EOTAttack, EOTModel

__all__ = [
    "APGD", "APGDDLR", "APGDT",
    "Attack", "AttackBudgetError", "attack_class", "AutoAttack", "AutoAttackResult", "BPDA", "CW", "CWLinf",
    "DeepFool", "EOT", "EOTAttack", "EOTModel", "FGSM", "L0", "L0Attack", "L1", "L2", "Linf", "PGD", "SPSA", "Square",
    "ThreatModel",
    "ThreatName", "THREAT_NAMES", "create", "get_threat", "list_attacks", "margin", "register", "run_autoattack",
]
