"""NRPM eager fallback: plain PyTorch on cache-sized chunks, no compiler needed.

Each chunk of rows × output units runs the K IRLS steps of :mod:`torchrobust.nn.nrpm_irls` back to back on
temporaries of about ``_EAGER_CHUNK`` elements (a few of them fit the L2 cache together), updated in place, so the
full ``N × D_out × D`` product tensor of the paper's code is never built. Robustness Reprogramming (Hou et al.,
ICLR 2025), Algorithm 1 with the ε of Algorithm 2; the backward is the hand-derived reverse sweep documented in
:mod:`torchrobust.nn.nrpm`.
"""

from __future__ import annotations

from torch import Tensor

from torchrobust.nn.nrpm_irls import blocks, irls_fixed, irls_reverse, irls_step, reverse_coefficients

__all__ = ["forward_eager", "backward_eager", "backward_fixed_eager"]

#: Elements in one chunk temporary (rows × output units × fan-in); about three are alive at once (3 MiB in fp32,
#: L3-resident; 1 << 16 and 1 << 20 measured slower: more Python dispatch, or out of cache).
_EAGER_CHUNK = 1 << 18


def _fwd_chunk(x: Tensor, w: Tensor, z0: Tensor, K: int, eps: float) -> tuple[Tensor, Tensor]:
    """IRLS iterates z⁽¹⁾…z⁽ᴷ⁾ and normalisers S₀…S_{K−1}, each (K, n, o), for rows ``x`` and weights ``w``."""
    D = x.shape[-1]
    zs = z0.new_empty((K,) + z0.shape)
    ss = z0.new_empty((K,) + z0.shape)
    z = z0
    for k in range(K):
        s, t = irls_step(x, w, z / D, eps)
        z = zs[k]
        z.copy_(zs[k - 1] if k else z0).addcdiv_(t, s, value=D)
        ss[k] = s
    return zs, ss


def _bwd_chunk(
    x: Tensor, w: Tensor, zs: Tensor, ss: Tensor, g_last: Tensor, eps: float, need_x: bool, need_w: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Reverse sweep of one chunk: ``zs`` (K+1, n, o) = z⁽⁰⁾…z⁽ᴷ⁾, ``ss`` (K, n, o), ``g_last`` = ∂L/∂z⁽ᴷ⁾.

    Returns ``ḡ_0`` (n, o), the gradient reaching z⁽⁰⁾ through the chain, and the per-element terms' reductions to
    ∂L/∂x (n, D) and ∂L/∂W (o, D) (the ḡ_0 / z_LPM matmuls are the caller's)."""
    D = x.shape[-1]
    gbar = g_last
    gp: Tensor | None = None
    for k in range(ss.shape[0] - 1, -1, -1):
        c = gbar * D / ss[k]
        m = zs[k] / D
        a_pos, a_neg = reverse_coefficients(m, zs[k + 1], D, eps)
        v = irls_reverse(x.unsqueeze(1), w, m.unsqueeze(-1), a_pos.unsqueeze(-1), a_neg.unsqueeze(-1), eps, eps)
        gbar = c * (ss[k] - v.sum(-1)) / D
        v.mul_(c.unsqueeze(-1))
        gp = v if gp is None else gp.add_(v)
    return gbar, *_reduce(x, w, gp, need_x, need_w)


def _st_chunk(
    x: Tensor, w: Tensor, m: Tensor, c: Tensor, eps: float, need_x: bool, need_w: bool
) -> tuple[Tensor | None, Tensor | None]:
    """Straight-through terms of one chunk (``m = z⁽ᴷ⁻¹⁾/D``, ``c = ∂L/∂z⁽ᴷ⁾·D/S``), reduced to ∂L/∂x and ∂L/∂W."""
    return _reduce(x, w, irls_fixed(x.unsqueeze(1), w, m.unsqueeze(-1), c.unsqueeze(-1), eps), need_x, need_w)


def _reduce(x: Tensor, w: Tensor, gp: Tensor | None, need_x: bool, need_w: bool) -> tuple[Tensor | None, ...]:
    """``(Σ_o gp·W, Σ_n gp·x)``; ``gp`` (n, o, D) is consumed."""
    if gp is None:
        return None, None
    gx = (gp * w).sum(1) if need_x else None
    gw = gp.mul_(x.unsqueeze(1)).sum(0) if need_w else None
    return gx, gw


def forward_eager(x: Tensor, w: Tensor, z0: Tensor, K: int, eps: float, keep: bool) -> tuple[Tensor, Tensor]:
    """All iterates (K+1, n, o) and normalisers (K, n, o); with ``keep=False`` only ``z⁽ᴷ⁾`` as (1, n, o)."""
    n, d = x.shape
    o = w.shape[0]
    zs = x.new_empty((K + 1 if keep else 1, n, o))
    ss = x.new_empty((K if keep else 0, n, o))
    if keep:
        zs[0] = z0
    bn, bo = blocks(n, o, d, _EAGER_CHUNK)
    for i in range(0, n, bn):
        for j in range(0, o, bo):
            zk, sk = _fwd_chunk(x[i : i + bn], w[j : j + bo], z0[i : i + bn, j : j + bo], K, eps)
            if keep:
                zs[1:, i : i + bn, j : j + bo] = zk
                ss[:, i : i + bn, j : j + bo] = sk
            else:
                zs[0, i : i + bn, j : j + bo] = zk[-1]
    return zs, ss


def backward_eager(
    x: Tensor, w: Tensor, zs: Tensor, ss: Tensor, g_last: Tensor, eps: float, gx: Tensor | None, gw: Tensor | None
) -> Tensor:
    """Chunked reverse sweep: returns ``ḡ_0`` and adds the direct terms to ``gx`` (n, D) / ``gw`` (o, D)."""
    n, d = x.shape
    o = w.shape[0]
    g0 = g_last.new_empty(g_last.shape)
    bn, bo = blocks(n, o, d, _EAGER_CHUNK)
    for i in range(0, n, bn):
        for j in range(0, o, bo):
            gb, gxc, gwc = _bwd_chunk(
                x[i : i + bn], w[j : j + bo], zs[:, i : i + bn, j : j + bo], ss[:, i : i + bn, j : j + bo],
                g_last[i : i + bn, j : j + bo], eps, gx is not None, gw is not None,
            )
            g0[i : i + bn, j : j + bo] = gb
            if gx is not None and gxc is not None:
                gx[i : i + bn] += gxc
            if gw is not None and gwc is not None:
                gw[j : j + bo] += gwc
    return g0


def backward_fixed_eager(
    x: Tensor, w: Tensor, m: Tensor, c: Tensor, eps: float, gx: Tensor | None, gw: Tensor | None
) -> None:
    """Chunked straight-through backward: adds its terms to ``gx`` / ``gw``."""
    n, d = x.shape
    o = w.shape[0]
    bn, bo = blocks(n, o, d, _EAGER_CHUNK)
    for i in range(0, n, bn):
        for j in range(0, o, bo):
            gxc, gwc = _st_chunk(x[i : i + bn], w[j : j + bo], m[i : i + bn, j : j + bo],
                                 c[i : i + bn, j : j + bo], eps, gx is not None, gw is not None)
            if gx is not None and gxc is not None:
                gx[i : i + bn] += gxc
            if gw is not None and gwc is not None:
                gw[j : j + bo] += gwc
