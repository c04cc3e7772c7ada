"""The attack contract: ``attack(model, x, y) -> x_adv`` with ``x_adv`` inside its threat model, checked.

:class:`Attack` owns everything every attack must get right, once (foolbox's ``FixedEpsilonAttack.__call__``,
torchattacks' mode handling, without their pitfalls):

* input validation with one-line :class:`~torchrobust.errors.TorchRobustError` messages (``x`` float, finite, in
  [0, 1], batched; ``y`` int64 of shape ``(B,)`` and within the model's number of classes, checked on the first
  forward pass through a temporary hook — no extra forward);
* the model runs in eval mode during the attack and **every submodule's** ``training`` flag is restored afterwards
  (torchattacks #21 restored only the top-level mode);
* ``x`` is never mutated, and subclasses take gradients with ``torch.autograd.grad`` w.r.t. the input only, so no
  gradient accumulates in the model's parameters (:func:`input_gradient`);
* the result is checked with :meth:`ThreatModel.contains`; if any point is outside, it is re-projected (a numerical
  safety net against rounding) and checked strictly again: NaN, or a point still outside the box or ball, raises
  :class:`AttackBudgetError` (a bug in the attack, never user input). A result that needed more than
  rounding-level correction is logged as a warning.

Subclasses implement :meth:`Attack.perturb` and register themselves with :func:`register` so that
:func:`create` and :func:`list_attacks` find them.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from contextlib import nullcontext
from typing import final

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchrobust.attacks.threat import ThreatModel, get_threat
from torchrobust.errors import TorchRobustError, unknown_name
from torchrobust.validation import check_images, check_labels, dtype_mismatch, eval_mode, frozen_parameters

__all__ = [
    "Attack",
    "AttackBudgetError",
    "register",
    "create",
    "list_attacks",
    "LOSSES",
    "margin",
    "input_gradient",
]

logger = logging.getLogger(__name__)


class AttackBudgetError(RuntimeError):
    """An attack returned NaN or a point outside its ε-ball or the [0, 1] box. This is a bug in the attack (never a
    user-input problem), so it is a hard error rather than a silently clipped result."""


# ----------------------------------------------------------------------------------------------------------- losses
def margin(logits: Tensor, y: Tensor, targeted: bool = False) -> Tensor:
    """Per-example margin to be **maximised** by the attacker, shape ``(B,)``.

    Untargeted: ``max_{j != y} z_j - z_y`` (positive iff misclassified, up to ties; Carlini & Wagner 2017, Eq. f6
    without the clamp). Targeted (``y`` = target): ``z_y - max_{j != y} z_j`` (positive iff the target wins).
    """
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return z_y - others if targeted else others - z_y


def _ce(logits: Tensor, y: Tensor, targeted: bool = False) -> Tensor:
    """Cross-entropy to be maximised: ``CE(z, y)`` untargeted, ``-CE(z, t)`` targeted. Shape ``(B,)``."""
    loss = F.cross_entropy(logits, y, reduction="none")
    return -loss if targeted else loss


#: Attack losses by name: ``fn(logits, y, targeted) -> (B,)`` per-example loss to maximise.
LOSSES: dict[str, Callable[[Tensor, Tensor, bool], Tensor]] = {"ce": _ce, "margin": margin}


def get_loss(name: str) -> Callable[[Tensor, Tensor, bool], Tensor]:
    """The loss called ``name`` (``"ce"`` or ``"margin"``), or a :class:`TorchRobustError` listing the valid ones."""
    if not isinstance(name, str) or name.lower() not in LOSSES:
        raise unknown_name("attack loss", name, LOSSES)
    return LOSSES[name.lower()]


def input_gradient(loss: Tensor, x_adv: Tensor) -> Tensor:
    """``d loss.sum() / d x_adv`` via ``torch.autograd.grad`` (no ``.grad`` accumulation in any parameter).

    ``loss`` holds independent per-example terms, so the gradient of the sum is the per-example gradient.
    A model whose output does not depend on its input gives a zero gradient rather than an error (attacks run with
    the parameters' ``requires_grad`` off, so such a loss has no graph at all).
    """
    if not loss.requires_grad:
        return torch.zeros_like(x_adv)
    (grad,) = torch.autograd.grad(loss.sum(), x_adv, allow_unused=True)
    return torch.zeros_like(x_adv) if grad is None else grad


# --------------------------------------------------------------------------------------------------------- the base
class Attack:
    """Base class of every attack. Call it as ``attack(model, x, y) -> x_adv``.

    Args of the contract:
        model: ``nn.Module`` mapping float NCHW (or ``(B, ...)``) input in [0, 1] to logits ``(B, num_classes)``;
            normalisation belongs inside the model.
        x: clean inputs, float, ``(B, ...)``, values in [0, 1]; never modified.
        y: ``(B,)`` int64 labels (the *target* labels for targeted attacks).

    Returns:
        ``x_adv`` with ``x``'s shape, dtype and device, inside ``threat`` (ball ∩ box), detached.

    Subclasses set ``self.threat`` and implement :meth:`perturb`; they must not override :meth:`__call__`.
    """

    threat: ThreatModel
    targeted: bool = False
    #: switch off the parameters' ``requires_grad`` while attacking (:func:`torchrobust.validation.frozen_parameters`);
    #: False for wrappers of external code that differentiate on their own (the reference AutoAttack)
    freeze_parameters: bool = True

    def __init__(self, threat: str | ThreatModel, eps: float | None = None) -> None:
        self.threat = get_threat(threat, eps)

    @final
    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return self._run_contract(model, x, y, lambda m, xv, yv: [(self, self.perturb(m, xv, yv))])[0]

    @final
    def _run_contract(self, model: nn.Module, x: Tensor, y: Tensor,
             produce: Callable[[nn.Module, Tensor, Tensor], list[tuple[Attack, Tensor]]]) -> list[Tensor]:
        """The contract of :meth:`__call__` around ``produce(model, x, y)``, which returns ``(attack, x_adv)``
        pairs; each ``x_adv`` is finalised (re-projected and budget-checked) by its own attack. One pair is an
        ordinary call; several let an attack share work between budgets (:meth:`FGSM.perturb_radii`)."""
        if not isinstance(model, nn.Module):
            raise TorchRobustError(f"model must be a torch.nn.Module, got {type(model).__name__}; wrap your function")
        # Attacks need autograd even when called under torch.no_grad() or torch.inference_mode() (common in
        # evaluation loops); inference tensors are cloned into ordinary ones first.
        with torch.inference_mode(False), torch.enable_grad():
            x = _detached(check_images(x))
            y = _detached(check_labels(y, x.shape[0], dtype=torch.int64, device=x.device))
            handle = _register_label_check(model, y)
            try:
                with eval_mode(model), frozen_parameters(model) if self.freeze_parameters else nullcontext():
                    pairs = produce(model, x, y)  # gradients for the input only
            except RuntimeError:
                why = dtype_mismatch(model, x)  # e.g. float32 images into a float64 model: name the cast to make
                if why is None:
                    raise
                raise TorchRobustError(why) from None
            finally:
                if handle is not None:
                    handle.remove()
            return [attack._finalize(x_adv, x) for attack, x_adv in pairs]

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Compute adversarial examples. ``model`` is already in eval mode, inputs are validated; return a tensor
        shaped like ``x`` inside ``self.threat`` (the base re-projects and checks it)."""
        raise NotImplementedError

    @final
    def _finalize(self, x_adv: Tensor, x: Tensor) -> Tensor:
        name = type(self).__name__
        if not isinstance(x_adv, Tensor) or x_adv.shape != x.shape:
            shape = tuple(x_adv.shape) if isinstance(x_adv, Tensor) else type(x_adv).__name__
            raise AttackBudgetError(f"{name} returned {shape}, expected a tensor of shape {tuple(x.shape)}")
        x_adv = x_adv.detach().to(dtype=x.dtype, device=x.device)
        if bool(self.threat.contains(x_adv, x).all()):
            return x_adv  # the common case: the attack already projected (a re-projection would be the identity)
        if not bool(torch.isfinite(x_adv).all()):
            raise AttackBudgetError(f"{name} returned NaN or inf values")
        if not bool(self.threat.contains(x_adv, x, tol=1e-4).all()):
            logger.warning("%s returned points outside %s beyond rounding error; projected them", name, self.threat)
        projected = self.threat.project(x_adv, x)
        ok = self.threat.contains(projected, x)
        if not bool(ok.all()):
            worst = float((self.threat.norm(projected - x) - self.threat.eps).max())
            raise AttackBudgetError(
                f"{name}: {int((~ok).sum())} result(s) outside {self.threat} ∩ [0,1] after projection "
                f"(worst norm excess {worst:.3g})"
            )
        return projected

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


# ------------------------------------------------------------------------------------------------------ validation
def _detached(t: Tensor) -> Tensor:
    """``t`` detached; an inference tensor (made under ``torch.inference_mode``) is cloned into an ordinary one."""
    return t.detach().clone() if t.is_inference() else t.detach()


def _register_label_check(model: nn.Module, y: Tensor) -> torch.utils.hooks.RemovableHandle | None:
    """Check the model's output shape and ``y < num_classes`` on the first forward of the attack (no extra pass)."""
    y_max = int(y.max())
    state = {"done": False}

    def hook(module: nn.Module, inputs: tuple, output: object) -> None:
        if state["done"]:
            return
        state["done"] = True
        if not isinstance(output, Tensor) or output.dim() != 2:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise TorchRobustError(
                f"the model must return logits shaped (batch, num_classes), got {shape}; wrap it to return logits"
            )
        if y_max >= output.shape[1]:
            raise TorchRobustError(
                f"label {y_max} is out of range for a model with {output.shape[1]} classes; "
                f"labels must be in 0..{output.shape[1] - 1}"
            )

    try:
        return model.register_forward_hook(hook)
    except (RuntimeError, AttributeError):  # e.g. a ScriptModule without hook support
        return None


# -------------------------------------------------------------------------------------------------------- registry
_REGISTRY: dict[str, type[Attack]] = {}


def register(name: str, cls: type[Attack]) -> type[Attack]:
    """Register attack class ``cls`` under ``name`` (case-insensitive) for :func:`create`; returns ``cls``.

    Re-registering the same class is a no-op; a different class under a taken name is an error.
    """
    key = name.lower()
    if not (isinstance(cls, type) and issubclass(cls, Attack)):
        raise TypeError(f"register({name!r}, ...) expects an Attack subclass, got {cls!r}")
    old = _REGISTRY.get(key)
    if old is not None and old is not cls and old.__qualname__ != cls.__qualname__:
        raise ValueError(f"attack name {name!r} is already registered to {old.__qualname__}")
    _REGISTRY[key] = cls
    return cls


def create(name: str, **kwargs: object) -> Attack:
    """Build a registered attack by name, e.g. ``create("pgd", threat="L2", eps=0.5, steps=50)``.

    Unknown names or keyword arguments raise :class:`TorchRobustError` listing the valid ones.
    """
    key = name.lower() if isinstance(name, str) else name
    cls = _REGISTRY.get(key)  # type: ignore[arg-type]
    if cls is None:
        raise unknown_name("attack", name, _REGISTRY)
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        valid = [p for p in params if p != "self"]
        for k in kwargs:
            if k not in params or k == "self":
                raise TorchRobustError(f"unknown argument {k!r} for attack {key!r}; valid: {', '.join(valid)}")
    return cls(**kwargs)


def list_attacks() -> list[str]:
    """Registered attack names, sorted."""
    return sorted(_REGISTRY)


def attack_class(name: str) -> type[Attack]:
    """The class registered under ``name`` (e.g. to inspect which keyword arguments it takes)."""
    cls = _REGISTRY.get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        raise unknown_name("attack", name, _REGISTRY)
    return cls
