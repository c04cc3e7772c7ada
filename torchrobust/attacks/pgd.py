r"""PGD: projected gradient descent on the loss (Madry et al. 2018, "Towards Deep Learning Models Resistant to
Adversarial Attacks", Sec. 2.1; Kurakin et al. 2017's BIM is the same loop without the random start).

Distance: ℓ∞, ℓ2 or ℓ1 (any :class:`~torchrobust.attacks.threat.ThreatModel`), always intersected with [0, 1].

The iteration, written once for every norm (foolbox ``gradient_descent_base.py`` shape):

.. math::  x^{t+1} = \Pi_{B_\epsilon(x) \cap [0,1]^n}\big(\mathrm{step}(x^t, \nabla_{x^t} L(f(x^t), y), \alpha)\big)

with ``step`` the threat model's steepest-ascent move (sign for ℓ∞, normalised gradient for ℓ2, sparse top-k for
ℓ1) and :math:`\Pi` its projection. Implementation choices (each can be checked in ``tests/test_attacks.py``):

* **Gradients at the attacked point itself.** ``x^t`` is a leaf already inside the box; the loss is computed on it,
  never through ``(x + delta).clamp(0, 1)`` in the graph (``clamp`` passes a zero gradient at the bounds, which
  would freeze the ~80 % of MNIST pixels that are exactly 0).
* **Best iterate, not last** ("silent success", Pintor et al. 2022). Every iterate, including the final one, is
  scored per example by the **margin** ``max_{j != y} z_j - z_y`` (targeted: ``z_t - max_{j != t} z_j``), and the
  point with the highest margin over all steps and restarts is returned. A margin > 0 means success (some other
  class — the target — strictly beats the label), so "misclassified beats correct" holds, and among equals the point
  closest to (or furthest past) the decision boundary wins. The margin rather than the attack loss is used because
  it is what decides success and is comparable across CE- and margin-driven runs. (A point where the label ties
  with another class has margin 0 and counts as not yet successful.) With a random start the clean input is scored
  too (one extra forward pass), so PGD never returns a point classified better than ``x`` itself.
* **Restarts** run only on examples that are still robust (the others already have a successful point), as in
  AutoAttack and robust_union's evaluation code. With ``random_start=False`` every restart would repeat the same
  deterministic path, so only one run is made.
* **Early stop** (``early_stop=True``): examples leave the active batch as soon as they succeed, and the loop ends
  when none is left. This changes no result (a successful point is kept) and saves compute; it costs one device
  sync per step, so it is off by default.
* Per-example independence: steps, projections, scoring and keeping are per example, so an example's result does
  not depend on the rest of its batch (for models without cross-example interaction in eval mode). Random starts
  are drawn per example; with ``seed`` they come from a ``torch.Generator`` on ``x``'s device seeded afresh on every
  call, so a call is reproducible (a sub-batch does not get the same noise as inside the full batch).

Arguments:
    threat: ``"Linf"``, ``"L2"``, ``"L1"`` or a ThreatModel (then ``eps`` overrides its radius if given).
    eps: radius (default: the ThreatModel's own, or 0.3 for a name — the MNIST ℓ∞ budget; CIFAR-10 uses ℓ∞ 8/255,
        ℓ2 0.5, ℓ1 12).
    steps: iterations (default 40; ≥ 1).
    alpha: step size; ``None`` → ``threat.default_alpha(steps)`` (2.5 ε / steps, the ``robustness`` library rule;
        ℓ1: ε · max(2.5/steps, 0.1)).
    restarts: number of runs (≥ 1); later runs only on still-robust examples.
    random_start: start from ``threat.random_init`` (True) or from ``x`` (False).
    loss: ``"ce"`` (cross-entropy) or ``"margin"`` (C&W-style logit margin, stronger against saturated softmax).
    targeted: if True, ``y`` holds target labels and the attack tries to make the model predict them.
    seed: integer seed of the random starts (``None``: torch's global RNG).
    early_stop: drop examples from the batch once they succeed.

Shape: ``x`` ``(B, C, H, W)`` (or any ``(B, ...)``) in [0, 1]; ``y`` ``(B,)`` int64; returns ``x_adv`` like ``x``.

Example::

    >>> from torchrobust.attacks import PGD
    >>> attack = PGD("Linf", eps=0.3, steps=40, seed=0)
    >>> x_adv = attack(model, images, labels)
    >>> robust_acc = (model(x_adv).argmax(1) == labels).float().mean()
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from torchrobust.attacks.base import Attack, get_loss, input_gradient, margin, register
from torchrobust.attacks.threat import ThreatModel
from torchrobust.errors import TorchRobustError
from torchrobust.validation import check_positive_int

__all__ = ["PGD"]


class PGD(Attack):
    """Projected gradient descent (Madry et al. 2018) with random restarts and best-iterate keeping; see the module
    docstring for the algorithm, arguments and an example."""

    def __init__(
        self,
        threat: str | ThreatModel = "Linf",
        eps: float | None = None,
        steps: int = 40,
        alpha: float | None = None,
        restarts: int = 1,
        random_start: bool = True,
        loss: str = "ce",
        targeted: bool = False,
        seed: int | None = None,
        early_stop: bool = False,
    ) -> None:
        if eps is None and not isinstance(threat, ThreatModel):
            eps = 0.3
        super().__init__(threat, eps)
        self.steps = check_positive_int(steps, "steps", 40)
        self.restarts = check_positive_int(restarts, "restarts", 1)
        if alpha is None:
            alpha = self.threat.default_alpha(self.steps)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (alpha > 0 and math.isfinite(alpha)):
            raise TorchRobustError(f"alpha must be a positive step size, got {alpha!r}; or pass alpha=None for default")
        self.alpha = float(alpha)
        self.loss = loss
        self._loss_fn = get_loss(loss)
        self.random_start = bool(random_start)
        self.targeted = bool(targeted)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TorchRobustError(f"seed must be an int or None, got {seed!r}")
        self.seed = seed
        self.early_stop = bool(early_stop)

    # ------------------------------------------------------------------------------------------------------------
    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        generator = None
        if self.seed is not None and self.random_start:
            generator = torch.Generator(device=x.device).manual_seed(self.seed)
        best_x, best_score = self._run(model, x, y, generator)
        if self.random_start:
            # The clean point is a candidate too (a random start may undo a misclassification). It can only matter
            # where the run has not succeeded, so only those rows are scored (saves a forward pass on most rows).
            todo = (best_score <= 0).nonzero().squeeze(1)
            if todo.numel():
                with torch.no_grad():
                    clean_score = margin(model(x[todo]), y[todo], self.targeted)
                better = clean_score > best_score[todo]
                idx = todo[better]
                best_x[idx] = x[idx]
                best_score[idx] = clean_score[better]
        runs = self.restarts if self.random_start else 1
        for _ in range(runs - 1):
            todo = (best_score <= 0).nonzero().squeeze(1)  # still robust
            if todo.numel() == 0:
                break
            cand_x, cand_score = self._run(model, x[todo], y[todo], generator)
            better = cand_score > best_score[todo]
            idx = todo[better]
            best_x[idx] = cand_x[better]
            best_score[idx] = cand_score[better]
        return best_x

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """One PGD run from a (random) start. Returns the best point per example and its margin (> 0: success)."""
        threat, alpha, loss_fn, targeted = self.threat, self.alpha, self._loss_fn, self.targeted
        # x_adv is always a fresh tensor owned by this loop: steps and projections update it in place
        x_adv = threat.random_init(x, generator) if self.random_start else x.clone()
        project = threat.projector(x, inplace=True)
        best_x = x_adv.clone()
        best_score = torch.full((x.shape[0],), -math.inf, dtype=x.dtype, device=x.device)
        active: Tensor | None = None  # indices of the examples still attacked (early stop only)
        ys = y
        for t in range(self.steps + 1):
            last = t == self.steps
            x_adv.requires_grad_(not last)
            with torch.set_grad_enabled(not last):
                logits = model(x_adv)
                grad = None if last else input_gradient(loss_fn(logits, ys, targeted), x_adv)
            x_adv = x_adv.detach()
            score = margin(logits.detach(), ys, targeted)
            if active is None:
                better = score > best_score
                best_score = torch.where(better, score, best_score)
                _keep_rows(best_x, x_adv, better)
            else:
                better = score > best_score[active]
                idx = active[better]
                best_x[idx] = x_adv[better]
                best_score[idx] = score[better]
            if last:
                break
            if self.early_stop:
                keep = score <= 0
                if not bool(keep.all()):
                    if not bool(keep.any()):
                        break
                    active = torch.arange(x.shape[0], device=x.device) if active is None else active
                    active, ys = active[keep], ys[keep]
                    x_adv, grad = x_adv[keep], grad[keep]
                    project = threat.projector(x[active], inplace=True)
            x_adv = project(threat.step_(x_adv, grad, alpha))
        return best_x, best_score


def _keep_rows(best: Tensor, new: Tensor, better: Tensor) -> None:
    """``best[better] = new[better]`` in place. On CPU an index copy of only the improved rows is cheapest; on
    accelerators a dense ``where`` avoids the host sync that ``nonzero`` implies."""
    best, new = best.view(best.shape[0], -1), new.reshape(new.shape[0], -1)
    if best.device.type == "cpu":
        idx = better.nonzero().squeeze(1)
        best.index_copy_(0, idx, new.index_select(0, idx))
    else:
        torch.where(better[:, None], new, best, out=best)


register("pgd", PGD)
