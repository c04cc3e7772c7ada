r"""DeepFool (Moosavi-Dezfooli, Fawzi & Frossard 2016, "DeepFool: a simple and accurate method to fool deep
neural networks"), ℓ2 and ℓ∞, reported at a fixed budget ``ε``.

Algorithm 2 of the paper (multi-class), per example: at the current point ``x_i`` linearise the classifier; for
each candidate class ``k ≠ y`` let ``w_k = ∇Z_k(x_i) − ∇Z_y(x_i)`` and ``f_k = Z_k(x_i) − Z_y(x_i)`` (< 0 while
``y`` wins); pick ``l = argmin_k |f_k| / ‖w_k‖_q`` (``q`` the dual norm: 2 for ℓ2, 1 for ℓ∞, Sec. 3.3 Eq. 11) and
step

* ℓ2 (Eq. 8 / Alg. 2):  ``r_i = (|f_l| + 1e-4) / ‖w_l‖_2² · w_l``;
* ℓ∞ (Sec. 3.3):        ``r_i = (|f_l| + 1e-4) / ‖w_l‖_1 · sign(w_l)``;

accumulate ``r = Σ r_i`` and set ``x_{i+1} = clip(x + (1 + overshoot) r, 0, 1)``, until the label changes or
``steps`` iterations. ``1e-4`` is the usual small push past the linearised boundary (reference code and ART).
Candidates are the ``candidates`` classes with the highest clean logits (ART's ``nb_grads``; the paper's
reference code uses the top 10).

Fixed budget (documented choice): DeepFool is a minimum-norm attack. The final point is projected onto
``ball(x, ε) ∩ [0, 1]`` — when DeepFool needed more than ``ε`` the projection keeps its direction at norm ``ε``
(which may no longer fool the model). ``eps=None`` gives a box-sized budget (no projection), for minimum-norm
measurements.

Defaults: ``steps=50``, ``overshoot=0.02``, ``candidates=10`` (paper and ART).

Shape: ``x`` ``(B, ...)`` in [0, 1], ``y`` ``(B,)`` int64 → ``x_adv`` like ``x``. Deterministic, per example.

Example::

    >>> from torchrobust.attacks import DeepFool
    >>> x_adv = DeepFool("L2", eps=2.0)(model, images, labels)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from torchrobust.attacks.base import Attack, register
from torchrobust.attacks.threat import L1, ThreatModel
from torchrobust.errors import TorchRobustError
from torchrobust.validation import check_positive_int

__all__ = ["DeepFool"]

_UNBOUNDED = {"Linf": 1.0, "L2": 1e6}


def _bview(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


class DeepFool(Attack):
    """DeepFool (Moosavi-Dezfooli et al. 2016, Alg. 2), ℓ2 or ℓ∞, projected to the budget; see the module
    docstring.

    Args:
        threat: ``"L2"`` or ``"Linf"`` (or a ThreatModel of those kinds).
        eps: budget; ``None`` → unbounded (ℓ∞ 1, ℓ2 1e6).
        steps: maximum number of linearisation steps.
        overshoot: the final perturbation is ``(1 + overshoot)`` times the accumulated one.
        candidates: number of classes (top clean logits, the true class included) considered.
    """

    def __init__(
        self,
        threat: str | ThreatModel = "L2",
        eps: float | None = None,
        steps: int = 50,
        overshoot: float = 0.02,
        candidates: int = 10,
    ) -> None:
        if eps is None and not isinstance(threat, ThreatModel):
            key = str(threat).strip().lower()
            eps = _UNBOUNDED["Linf"] if key in ("linf", "l_inf", "inf") else _UNBOUNDED["L2"]
        super().__init__(threat, eps)
        if isinstance(self.threat, L1):
            raise TorchRobustError("DeepFool supports threat='L2' or 'Linf', got L1; use PGD('L1', ...)")
        self.steps = check_positive_int(steps, "steps", 50)
        if isinstance(overshoot, bool) or not isinstance(overshoot, (int, float)) or not (
            0 <= float(overshoot) < math.inf
        ):
            raise TorchRobustError(f"overshoot must be a number >= 0, got {overshoot!r}; pass e.g. overshoot=0.02")
        self.overshoot = float(overshoot)
        self.candidates = check_positive_int(candidates, "candidates", 10)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        linf = self.threat.name == "Linf"
        with torch.no_grad():
            logits0 = model(x)
        n_cls = logits0.shape[1]
        k = min(self.candidates, n_cls)
        # candidate classes: the true class first, then the top (k - 1) others by clean logit
        others = logits0.scatter(1, y[:, None], float("-inf")).topk(k - 1, dim=1).indices if k > 1 else None
        if others is None:
            return x.clone()
        r_tot = torch.zeros_like(x)
        x_adv = x.clone()
        active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.steps):
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xa = x_adv[idx].clone().requires_grad_(True)
            logits = model(xa)
            ya = y[idx]
            t_done = logits.argmax(1) != ya  # already fooled: freeze (no further step)
            cls = torch.cat([ya[:, None], others[idx]], 1)  # (b, k)
            z = logits.gather(1, cls)  # (b, k)
            grads = []
            for j in range(k):
                if not z.requires_grad:  # output independent of the input (parameters are frozen while attacking)
                    grads.append(torch.zeros_like(xa).flatten(1))
                    continue
                (g,) = torch.autograd.grad(z[:, j].sum(), xa, retain_graph=j < k - 1)
                grads.append(g.flatten(1))
            g = torch.stack(grads, 1)  # (b, k, n)
            with torch.no_grad():
                w = g[:, 1:] - g[:, :1]  # (b, k-1, n)
                f = (z[:, 1:] - z[:, :1]).detach()  # (b, k-1)
                dual = w.abs().sum(2) if linf else w.norm(dim=2)
                ratio = f.abs() / dual.clamp_min(1e-12)
                best = ratio.argmin(1)
                w_l = w[torch.arange(len(idx)), best]
                f_l = f[torch.arange(len(idx)), best].abs()
                if linf:
                    r = ((f_l + 1e-4) / w_l.abs().sum(1).clamp_min(1e-12))[:, None] * w_l.sign()
                else:
                    r = ((f_l + 1e-4) / w_l.square().sum(1).clamp_min(1e-12))[:, None] * w_l
                still = ~t_done
                r = r * still[:, None]
                r_tot[idx] += r.view(-1, *x.shape[1:])
                x_adv[idx] = (x[idx] + (1 + self.overshoot) * r_tot[idx]).clamp(0, 1)
                active[idx[t_done]] = False
        return self.threat.project(x_adv, x)


register("deepfool", DeepFool)
