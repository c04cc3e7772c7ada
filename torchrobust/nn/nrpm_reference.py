"""NRPM ``backend="reference"``: autograd through the unrolled IRLS loop on the full product tensor, as the paper's
code computes it (Robustness Reprogramming, Hou et al., ICLR 2025, Algorithm 2). It builds the whole
``N × D_out × D`` tensor, so it is for tests and small problems; it runs the same IRLS step
(:func:`torchrobust.nn.nrpm_irls.irls_step`) as the fast backends.
"""

from __future__ import annotations

import torch
from torch import Tensor

from torchrobust.nn.nrpm_core import ConvGeom, conv_rows
from torchrobust.nn.nrpm_irls import irls_step

__all__ = ["reference_core", "reference_conv"]


def reference_core(x: Tensor, w: Tensor, K: int, eps: float, fixed: bool = False) -> tuple[Tensor, Tensor]:
    """``(z_LPM, z⁽ᴷ⁾)`` for rows ``x`` (n, D) and weights ``w`` (o, D), differentiable by autograd.

    ``fixed``: the IRLS weights are detached (BPDA surrogate); the values are the same."""
    D = x.shape[-1]
    z0 = x @ w.T
    z = z0
    for _ in range(K):
        s, t = irls_step(x, w, z / D, eps, fixed)
        z = z + D * t / s
    return z0, z


def reference_conv(
    x: Tensor, weight: Tensor, geom: ConvGeom, K: int, eps: float, fixed: bool = False
) -> tuple[Tensor, Tensor]:
    """The paper code's unfold formulation with autograd through the loop, as (B, L, C_out) each."""
    G = geom.groups
    wg = weight.reshape(G, weight.shape[0] // G, -1)
    z0s, zks = [], []
    for g in range(G):
        z0, zk = reference_core(conv_rows(x, geom, g), wg[g], K, eps, fixed)
        z0s.append(z0)
        zks.append(zk)
    B = x.shape[0]
    return torch.cat(z0s, 1).view(B, geom.L, -1), torch.cat(zks, 1).view(B, geom.L, -1)
