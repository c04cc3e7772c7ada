"""FGSM: the fast gradient sign method (Goodfellow, Shlens & Szegedy 2015, "Explaining and Harnessing Adversarial
Examples", Sec. 4: ``x_adv = x + eps * sign(grad_x L(f(x), y))``) and its one-step ℓ2 / ℓ1 analogues.

Distance: ℓ∞ (the paper), ℓ2 or ℓ1. One steepest-ascent step of size ``eps`` from ``x`` itself (no random start),
then the projection onto ``ball(x, eps) ∩ [0, 1]``:

* ℓ∞: ``clip(x + eps * sign(g), 0, 1)`` — exactly the reprogramming paper's MNIST FGSM;
* ℓ2: ``x + eps * g / ||g||_2``, projected (the fast gradient method, FGM; the paper code's one-step ℓ2 attack);
* ℓ1: the sparse steepest step of the threat model (top ``100 - q`` % of ``|g|``, ℓ1 size ``eps``), projected
  (``L1(eps, q=0)`` gives a dense step: every movable coordinate by ``eps / n``).

The gradient is taken at ``x`` directly (a leaf in [0, 1]), never through a clamp.

Arguments:
    threat: ``"Linf"``, ``"L2"``, ``"L1"`` or a ThreatModel (``eps`` overrides its radius when given).
    eps: radius / step size (default: the ThreatModel's, or 0.3 for a name).
    loss: ``"ce"`` or ``"margin"``.
    targeted: if True, ``y`` holds target labels and the step descends their loss.

Shape: ``x`` ``(B, ...)`` float in [0, 1], ``y`` ``(B,)`` int64 → ``x_adv`` like ``x``.

Example::

    >>> from torchrobust.attacks import FGSM
    >>> x_adv = FGSM("Linf", eps=0.1)(model, images, labels)
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from torchrobust.attacks.base import Attack, get_loss, input_gradient, register
from torchrobust.attacks.threat import ThreatModel

__all__ = ["FGSM"]


class FGSM(Attack):
    """Single-step attack of size ``eps`` along the threat model's steepest-ascent direction (Goodfellow et al.
    2015); see the module docstring."""

    def __init__(
        self,
        threat: str | ThreatModel = "Linf",
        eps: float | None = None,
        loss: str = "ce",
        targeted: bool = False,
    ) -> None:
        if eps is None and not isinstance(threat, ThreatModel):
            eps = 0.3
        super().__init__(threat, eps)
        self.loss = loss
        self._loss_fn = get_loss(loss)
        self.targeted = bool(targeted)

    def _gradient(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        x_in = x.clone().requires_grad_(True)
        return input_gradient(self._loss_fn(model(x_in), y, self.targeted), x_in)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return self.threat.project(self.threat.step(x, self._gradient(model, x, y), self.threat.eps), x)

    def perturb_radii(self, model: nn.Module, x: Tensor, y: Tensor, radii: Sequence[float]) -> list[Tensor]:
        """One ``x_adv`` per radius in ``radii``, bit for bit ``FGSM(threat, eps=r, ...)(model, x, y)`` for each
        ``r``, from one forward/backward pass: the gradient at ``x`` does not depend on the radius (an FGSM sweep
        over the reprogramming paper's six ε costs one gradient instead of six). Same contract as a call (eval
        mode, validated inputs, every result re-projected and budget-checked against its own radius)."""
        attacks = [FGSM(self.threat, eps=float(r), loss=self.loss, targeted=self.targeted) for r in radii]

        def produce(m: nn.Module, xv: Tensor, yv: Tensor) -> list[tuple[Attack, Tensor]]:
            grad = self._gradient(m, xv, yv) if attacks else None
            return [(a, a.threat.project(a.threat.step(xv, grad, a.threat.eps), xv)) for a in attacks]

        return self._run_contract(model, x, y, produce)


register("fgsm", FGSM)
