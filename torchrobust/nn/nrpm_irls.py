"""The NRPM IRLS step, written once: every backend (eager chunks, compiled kernels, the autograd reference) calls
these functions, so the forward and reverse algebra exist in one place only.

Robustness Reprogramming (Hou et al., ICLR 2025), Algorithm 1 (eq. 7) with the ε of Algorithm 2. Rows ``x``
(n, D), weights ``w`` (o, D) and the current estimate ``m = z/D`` (n, o) define the residuals
``r_d = x_d w_d − m`` and the IRLS weights ``u_d = 1/(|r_d| + ε)`` on the (n, o, D) grid. One step is::

    S = Σ_d u_d,   T = Σ_d u_d r_d,   z⁺ = z + D · T / S          (= D Σ_d u_d p_d / S, eq. 7)

The reverse of that step, with ``c = ∂L/∂z⁺ · D / S`` and ``δ = (z − z⁺)/D`` (both (n, o)), has the per-element
term ``q_d = (r_d + δ) u_d² sign(r_d)``; ``∂L/∂p_d += c (u_d − q_d)`` and ``∂L/∂z = c/D · Σ_d q_d``. Since
``u_d |r_d| = 1 − ε u_d``, ``u_d − q_d = v_d`` with::

    v_d = u_d² · (ε − δ · sign(r_d)),     so    ∂L/∂p_d += c v_d,    ∂L/∂z = c/D · (S − Σ_d v_d)

which is what :func:`irls_reverse` computes: 13 operations per element instead of 20, the sign a select between
three per-output values. With the weights held constant (BPDA surrogate, straight-through) ``∂L/∂p_d = c u_d``.

The functions build at most three (n, o, D) temporaries and then work on them in place: the eager backend calls
them on cache-sized chunks, and ``torch.compile`` turns each reduction of them into one fused loop nest (the
in-place updates of fresh temporaries are functionalised), so no (n, o, D) tensor reaches memory there.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["irls_weights", "irls_step", "irls_reverse", "reverse_coefficients", "irls_fixed", "blocks"]


def irls_weights(xb: Tensor, wb: Tensor, mb: Tensor, eps: float | Tensor) -> tuple[Tensor, Tensor]:
    """Residuals ``r = x_d w_d − m`` and IRLS weights ``u = 1/(|r| + ε)`` on the broadcast grid of ``xb``, ``wb``
    and ``mb`` (the caller picks the axis order, e.g. ``x[:, None, :]``, ``w``, ``m[..., None]`` for (n, o, D)).

    Safe under autograd (the reference backend differentiates through it): the in-place updates touch only
    fresh temporaries whose values no backward formula saves."""
    r = xb * wb
    r -= mb
    u = r.abs().add_(eps).reciprocal_()
    return r, u


def irls_step(x: Tensor, w: Tensor, m: Tensor, eps: float | Tensor, fixed: bool = False) -> tuple[Tensor, Tensor]:
    """One IRLS step (eq. 7) of rows ``x`` (n, D), weights ``w`` (o, D) around ``m = z/D`` (n, o):
    ``(S, T) = (Σ_d u_d, Σ_d u_d r_d)``, each (n, o); the new iterate is ``z + D·T/S``.
    ``fixed`` detaches the weights (autograd reference of the BPDA surrogate)."""
    r, u = irls_weights(x.unsqueeze(-2), w, m.unsqueeze(-1), eps)
    if fixed:
        u = u.detach()
    return u.sum(-1), (u * r).sum(-1)


def irls_reverse(
    xb: Tensor, wb: Tensor, mb: Tensor, a_pos: Tensor, a_neg: Tensor, a_zero: Tensor | float, eps: float | Tensor
) -> Tensor:
    """Per-element reverse term ``u² · a`` of one step on the broadcast grid of :func:`irls_weights`, ``a`` being
    ``a_pos`` where ``r > 0``, ``a_neg`` where ``r < 0`` and ``a_zero`` at ``r = 0`` (broadcast like ``mb``;
    ``a_pos + a_neg = 2 a_zero``, i.e. ``a = a_zero − sign(r)·δ``).

    With ``(a_pos, a_neg, a_zero) = (ε − δ, ε + δ, ε)`` it is ``v`` of the module docstring; with each multiplied
    by ``c`` it is ``c v = ∂L/∂p`` of this step. ``sign(0) = 0`` at the kink, the subgradient autograd uses for
    ``abs``. No autograd."""
    r, u = irls_weights(xb, wb, mb, eps)
    if torch.compiler.is_compiling():  # two compares and two selects per element in the fused kernel
        a = torch.where(r > 0, a_pos, torch.where(r < 0, a_neg, a_zero))
    else:  # the same select as a_zero − sign(r)·δ, in place (an eager broadcast torch.where is 10× slower)
        a = r.sign_().mul_((a_pos - a_neg) * 0.5).add_(a_zero)
    return u.mul_(u).mul_(a)


def reverse_coefficients(m: Tensor, z_next: Tensor, d: int, eps: float | Tensor) -> tuple[Tensor, Tensor]:
    """``(ε − δ, ε + δ)`` per output for :func:`irls_reverse`, with ``δ = m − z⁺/D``."""
    delta = m - z_next / d
    return eps - delta, eps + delta


def irls_fixed(xb: Tensor, wb: Tensor, mb: Tensor, cb: Tensor, eps: float | Tensor) -> Tensor:
    """Straight-through per-element gradient ``t = c · u`` (the last step's weights held constant), on the
    broadcast grid of :func:`irls_weights`."""
    _, u = irls_weights(xb, wb, mb, eps)
    return u.mul_(cb)


def blocks(n: int, o: int, d: int, budget: int) -> tuple[int, int]:
    """Row and output-unit block sizes with ``bn · bo · d ≲ budget``: whole rows of ``o`` preferred."""
    per_row = o * d
    if per_row <= budget:
        return max(1, min(n, budget // max(per_row, 1))), o
    return 1, max(1, min(o, budget // max(d, 1)))
