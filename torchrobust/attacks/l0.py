r"""ℓ0 (sparse) attacks: a budget of ``k`` changed **pixels**, each changed arbitrarily within [0, 1].

Threat model :class:`L0`: ``‖δ‖₀ ≤ k`` where the count is over **pixel locations**: for image batches
``(B, C, H, W)`` a pixel counts once if any of its ``C`` channels changed (the convention of Croce & Hein 2019,
"Sparse and Imperceivable Adversarial Attacks", Sec. 2, and of the one-pixel attack); for other shapes ``(B, n)``
every coordinate is a pixel. The Euclidean projection onto ``{‖δ‖₀ ≤ k} ∩ [0, 1]`` clips ``x + δ`` to the box and
then keeps the ``k`` pixels with the largest saving ``Σ_c [(x_c − z_c)² − (clip(z_c) − z_c)²]`` (``z = x + δ``;
exact: the box clip is coordinate-wise, and keeping a pixel replaces its cost ``(x − z)²`` by ``(clip(z) − z)²``).
The budget check of :class:`~torchrobust.attacks.Attack` applies.

:class:`L0Attack`, two methods:

* ``method="one_step"`` — the robustness-reprogramming paper's ℓ0 attack (Hou et al. 2025, Appendix C.3,
  Fig. 9(a); its ``mnist_mlp.py``): one gradient at ``x``; the ``k`` pixels with the largest ``Σ_c |∂L/∂x_c|``
  are set to the box bound in the gradient-sign direction (``1`` where the gradient is positive, ``0`` where
  negative), all other pixels unchanged.
* ``method="iterative"`` (default, stronger) — start from the one-step point, then PGD₀ (Croce & Hein 2019,
  Sec. 3.1): a dense step ``α · g / max|g|`` followed by the ℓ0 ∩ box projection, for ``steps`` iterations,
  keeping the best iterate per example (success first, then margin). The one-step point is the first candidate,
  so the iterative result is never worse (per example, by margin) than the one-step one.

Defaults: ``eps`` (= ``k``) 10 pixels, ``steps=50``, ``alpha=0.25``, ``loss="ce"``.

Shape: ``x`` ``(B, C, H, W)`` or ``(B, n)`` in [0, 1], ``y`` ``(B,)`` → ``x_adv`` like ``x``.

Example::

    >>> from torchrobust.attacks import L0Attack
    >>> x_adv = L0Attack(eps=20, steps=50)(model, images, labels)   # at most 20 changed pixels
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from torchrobust.attacks.base import Attack, get_loss, input_gradient, margin, register
from torchrobust.attacks.threat import ThreatModel
from torchrobust.errors import TorchRobustError
from torchrobust.validation import check_positive_int

__all__ = ["L0", "L0Attack"]


def _bview(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def _pixels(t: Tensor) -> Tensor:
    """Per-pixel aggregate view: (B, C, H, W) → (B, H·W) summing channels; (B, ...) → (B, n)."""
    if t.dim() == 4:
        return t.sum(1).flatten(1)
    return t.flatten(1)


def _expand_pixels(mask: Tensor, like: Tensor) -> Tensor:
    """(B, H·W) pixel mask → like's shape (broadcast over channels)."""
    if like.dim() == 4:
        b, c, h, w = like.shape
        return mask.view(b, 1, h, w).expand(b, c, h, w)
    return mask.view(like.shape)


@dataclass(frozen=True)
class L0(ThreatModel):
    """At most ``eps`` (an integer) changed pixels, values in [0, 1]; see the module docstring."""

    name: ClassVar[str] = "L0"
    p: ClassVar[float] = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if float(self.eps) != math.floor(float(self.eps)):
            raise TorchRobustError(f"L0 budget must be a whole number of pixels, got {self.eps}; pass e.g. eps=10")

    @property
    def k(self) -> int:
        """The pixel budget as an int."""
        return int(self.eps)

    def default_alpha(self, steps: int) -> float:
        """0.25: a quarter of the box per step (steps are ℓ∞-normalised and then sparsified)."""
        return 0.25

    def norm(self, delta: Tensor) -> Tensor:
        return _pixels((delta != 0).to(torch.float64)).gt(0).sum(1).to(torch.float64)

    def random_init(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        kw = {"generator": generator, "device": x.device}
        n_pix = _pixels(x).shape[1]
        scores = torch.rand((x.shape[0], n_pix), **kw)
        keep = torch.zeros_like(scores, dtype=torch.bool)
        if self.k > 0:
            keep.scatter_(1, scores.topk(min(self.k, n_pix), dim=1).indices, True)
        vals = torch.rand(x.shape, **kw).to(x.dtype)
        return torch.where(_expand_pixels(keep, x), vals, x)

    def step(self, x_adv: Tensor, grad: Tensor, alpha: float) -> Tensor:
        scale = grad.flatten(1).abs().amax(1).clamp_min(1e-12)
        return x_adv + alpha * grad / _bview(scale, grad)

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        xa = x_adv.clamp(0.0, 1.0)
        z, x64, xc = x_adv.to(torch.float64), x.to(torch.float64), xa.to(torch.float64)
        # keeping a pixel costs (clip(z) - z)^2 instead of (x - z)^2: keep the k largest savings
        energy = _pixels((x64 - z).square() - (xc - z).square())
        n_pix = energy.shape[1]
        keep = torch.zeros_like(energy, dtype=torch.bool)
        if self.k > 0:
            keep.scatter_(1, energy.topk(min(self.k, n_pix), dim=1).indices, True)
        keep &= energy > 0
        return torch.where(_expand_pixels(keep, x), xa, x)


class L0Attack(Attack):
    """Sparse attack under :class:`L0` (one-step top-k of the reprogramming paper, or iterative PGD₀); see the
    module docstring.

    Args:
        threat: ``"L0"`` or an :class:`L0` instance.
        eps: pixel budget ``k`` (default 10).
        method: ``"iterative"`` (default) or ``"one_step"``.
        steps: PGD₀ iterations after the one-step start (iterative only).
        alpha: step size of the ℓ∞-normalised dense step (``None`` → 0.25).
        loss: ``"ce"`` or ``"margin"``.
        targeted: ``y`` holds target labels.
    """

    def __init__(
        self,
        threat: str | ThreatModel = "L0",
        eps: float | None = None,
        method: str = "iterative",
        steps: int = 50,
        alpha: float | None = None,
        loss: str = "ce",
        targeted: bool = False,
    ) -> None:
        if isinstance(threat, ThreatModel):
            if not isinstance(threat, L0):
                raise TorchRobustError(f"L0Attack needs an L0 threat model, got {threat}; pass threat='L0'")
            tm = threat if eps is None else threat.with_eps(eps)
        else:
            if str(threat).strip().lower() not in ("l0", "l_0", "0"):
                raise TorchRobustError(f"L0Attack needs threat='L0', got {threat!r}")
            tm = L0(10.0 if eps is None else eps)
        super().__init__(tm)
        if method not in ("iterative", "one_step"):
            raise TorchRobustError(f"unknown L0 method {method!r}; valid: iterative, one_step")
        self.method = method
        self.steps = check_positive_int(steps, "steps", 50)
        alpha = self.threat.default_alpha(self.steps) if alpha is None else alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (0 < float(alpha) < math.inf):
            raise TorchRobustError(f"alpha must be a positive step size, got {alpha!r}; or pass alpha=None")
        self.alpha = float(alpha)
        self.loss = loss
        self._loss_fn = get_loss(loss)
        self.targeted = bool(targeted)

    def _grad(self, model: nn.Module, x_adv: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        xa = x_adv.clone().requires_grad_(True)
        logits = model(xa)
        grad = input_gradient(self._loss_fn(logits, y, self.targeted), xa)
        return grad, logits.detach()

    def _one_step(self, x: Tensor, grad: Tensor) -> Tensor:
        k = self.threat.k  # type: ignore[attr-defined]
        score = _pixels(grad.abs())
        keep = torch.zeros_like(score, dtype=torch.bool)
        if k > 0:
            keep.scatter_(1, score.topk(min(k, score.shape[1]), dim=1).indices, True)
        keep &= score > 0
        bound = (grad > 0).to(x.dtype)  # 1 where increasing the pixel raises the loss, else 0
        moved = torch.where(grad == 0, x, bound)
        return torch.where(_expand_pixels(keep, x), moved, x)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        grad, _ = self._grad(model, x, y)
        x_adv = self.threat.project(self._one_step(x, grad), x)
        if self.method == "one_step":
            return x_adv
        best_x = x_adv.clone()
        best_succ = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        best_score = torch.full((x.shape[0],), -math.inf, dtype=x.dtype, device=x.device)
        for t in range(self.steps + 1):
            grad, logits = self._grad(model, x_adv, y)
            score = margin(logits, y, self.targeted)
            pred = logits.argmax(1)
            succ = pred == y if self.targeted else pred != y
            # the first successful iterate is kept (so an example's result does not depend on its batch)
            better = ~best_succ & (succ | (score > best_score))
            best_x = torch.where(_bview(better, x), x_adv, best_x)
            best_succ = torch.where(better, succ, best_succ)
            best_score = torch.where(better, score, best_score)
            if t == self.steps or bool(best_succ.all()):
                break
            x_adv = self.threat.project(self.threat.step(x_adv, grad, self.alpha), x)
        return best_x


register("l0", L0Attack)
