"""The NRPM IRLS step, written once: every backend (eager chunks, compiled kernels, the autograd reference) calls
these functions, so the forward and reverse algebra exist in one place only.

Robustness Reprogramming (Hou et al., ICLR 2025), Algorithm 1 (eq. 7) with the ε of Algorithm 2. Rows ``x``
(n, D), weights ``w`` (o, D) and the current estimate ``m = z/D`` (n, o) define the residuals
``r_d = x_d w_d − m`` and the IRLS weights ``u_d = 1/(|r_d| + ε)`` on the (n, o, D) grid. One step is::

    S = Σ_d u_d,   T = Σ_d u_d r_d,   z⁺ = z + D · T / S          (= D Σ_d u_d p_d / S, eq. 7)

The reverse of that step, with ``c = ∂L/∂z⁺ · D / S`` and ``δ = (z − z⁺)/D`` (both (n, o)), has the per-element
terms ``q_d = (r_d + δ) u_d² sign(r_d)`` and ``t_d = c (u_d − q_d)``: ``∂L/∂p_d += t_d`` and
``∂L/∂z = c/D · Σ_d q_d``. With the weights held constant (BPDA surrogate, straight-through) it is ``t_d = c u_d``.

The functions build at most three (n, o, D) temporaries and then work on them in place: the eager backend calls
them on cache-sized chunks, and ``torch.compile`` turns each reduction of them into one fused loop nest (the
in-place updates of fresh temporaries are functionalised), so no (n, o, D) tensor reaches memory there.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["irls_weights", "irls_step", "irls_reverse", "irls_fixed", "blocks"]


def irls_weights(x: Tensor, w: Tensor, m: Tensor, eps: float | Tensor) -> tuple[Tensor, Tensor]:
    """Residuals ``r = x_d w_d − m`` and IRLS weights ``u = 1/(|r| + ε)``, both (n, o, D).

    Safe under autograd (the reference backend differentiates through it): the in-place updates touch only
    fresh temporaries whose values no backward formula saves."""
    r = x.unsqueeze(-2) * w
    r -= m.unsqueeze(-1)
    u = r.abs().add_(eps).reciprocal_()
    return r, u


def irls_step(x: Tensor, w: Tensor, m: Tensor, eps: float | Tensor, fixed: bool = False) -> tuple[Tensor, Tensor]:
    """One IRLS step (eq. 7) around ``m = z/D``: ``(S, T) = (Σ_d u_d, Σ_d u_d r_d)``, each (n, o);
    the new iterate is ``z + D·T/S``. ``fixed`` detaches the weights (autograd reference of the BPDA surrogate)."""
    r, u = irls_weights(x, w, m, eps)
    if fixed:
        u = u.detach()
    return u.sum(-1), (u * r).sum(-1)


def irls_reverse(
    x: Tensor, w: Tensor, m: Tensor, delta: Tensor, c: Tensor, eps: float | Tensor
) -> tuple[Tensor, Tensor]:
    """Per-element terms ``(q, t)`` (n, o, D) of the reverse of one step (see the module docstring); no autograd."""
    r, u = irls_weights(x, w, m, eps)
    q = r + delta.unsqueeze(-1)
    q.mul_(u).mul_(u).mul_(r.sign_())
    return q, u.sub_(q).mul_(c.unsqueeze(-1))


def irls_fixed(x: Tensor, w: Tensor, m: Tensor, c: Tensor, eps: float | Tensor) -> Tensor:
    """Straight-through per-element gradient ``t = c · u`` (n, o, D): the last step's weights held constant."""
    _, u = irls_weights(x, w, m, eps)
    return u.mul_(c.unsqueeze(-1))


def blocks(n: int, o: int, d: int, budget: int) -> tuple[int, int]:
    """Row and output-unit block sizes with ``bn · bo · d ≲ budget``: whole rows of ``o`` preferred."""
    per_row = o * d
    if per_row <= budget:
        return max(1, min(n, budget // max(per_row, 1))), o
    return 1, max(1, min(o, budget // max(d, 1)))
