"""NRPM autograd Functions (linear and conv) and the backend dispatch; the math is in
:mod:`torchrobust.nn.nrpm_irls`, the public functions and the full description in :mod:`torchrobust.nn.nrpm`.

:class:`NRPMCore` maps rows ``x`` (N, D) and weights ``W`` (O, D) to ``(z_LPM, z⁽ᴷ⁾)`` with the hand-derived
backward (Robustness Reprogramming, Hou et al., ICLR 2025, Algorithm 1 unrolled); it saves ``x``, ``W`` and the
per-output iterates and normalisers (``O(N·O·K)``), never the (N, O, D) products. :class:`NRPMConvCore` does the
same for a convolution, unfolding the input one batch block at a time (``_CONV_COLS_CHUNK``) in the forward and
again in the backward, so the unfolded input is never stored either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from torchrobust.errors import TorchRobustError
from torchrobust.nn import nrpm_compiled, nrpm_eager

__all__ = ["NRPMCore", "NRPMConvCore", "ConvGeom", "conv_rows", "conv_forward", "forward_all", "resolve_backend"]

#: Elements of unfolded input per batch block of a convolution (the patches are never unfolded for the whole batch).
_CONV_COLS_CHUNK = 1 << 19
#: ``backend="auto"`` compiles only problems with at least this many products per IRLS iteration.
_COMPILE_MIN_WORK = 1 << 16


def resolve_backend(backend: str, device: torch.device, work: int, dtype: torch.dtype = torch.float32) -> str:
    """The backend to run; ``work`` is the number of products per IRLS iteration (rows × outputs × fan-in).

    ``"auto"`` compiles only float32/float64 (the dtypes the compiled kernels are tested with)."""
    if backend != "auto":
        if backend == "compiled" and not nrpm_compiled.compiler_available(device):
            raise TorchRobustError(
                f"NRPM backend='compiled' but torch.compile does not work on {device.type} here; "
                "use backend='eager' or 'auto'"
            )
        return backend
    if dtype in (torch.float32, torch.float64) and work >= _COMPILE_MIN_WORK and \
            nrpm_compiled.compiler_available(device):
        return "compiled"
    return "eager"


def forward_all(
    x: Tensor, w: Tensor, z0: Tensor, K: int, eps: float, backend: str, keep: bool = True
) -> tuple[Tensor, Tensor]:
    """All iterates ``zs`` (K+1, n, o) (``zs[0] = z0``) and normalisers ``ss`` (K, n, o).

    With ``keep=False`` (no backward will follow) only ``z⁽ᴷ⁾`` is returned, as ``zs`` of shape (1, n, o)."""
    if K == 0:
        return z0[None], x.new_empty((0,) + z0.shape)
    run = nrpm_compiled.forward_compiled if backend == "compiled" else nrpm_eager.forward_eager
    return run(x, w, z0, K, eps, keep)


def backward_all(
    x: Tensor, w: Tensor, zs: Tensor, ss: Tensor, g_last: Tensor, eps: float, backend: str,
    need_x: bool, need_w: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Reverse sweep: ``(ḡ_0, Σ direct ∂L/∂x terms, Σ direct ∂L/∂W terms)`` (the ḡ_0 matmuls are the caller's)."""
    gx = torch.zeros_like(x) if need_x else None
    gw = torch.zeros_like(w) if need_w else None
    if ss.shape[0] == 0:
        return g_last.clone(), gx, gw
    run = nrpm_compiled.backward_compiled if backend == "compiled" else nrpm_eager.backward_eager
    return run(x, w, zs, ss, g_last, eps, gx, gw), gx, gw


def backward_fixed(
    x: Tensor, w: Tensor, z_prev: Tensor, s_prev: Tensor, g_last: Tensor, eps: float, backend: str,
    need_x: bool, need_w: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Straight-through backward of ``z⁽ᴷ⁾ = D Σ_d u_d p_d`` with the last IRLS weights held constant.

    ``z_prev`` = z⁽ᴷ⁻¹⁾ and ``s_prev`` its normaliser, both (n, o). Returns ``(0, ∂L/∂x, ∂L/∂W)`` (nothing
    reaches z⁽⁰⁾: the weights are constants), in the layout of :func:`backward_all`."""
    d = x.shape[1]
    gx = torch.zeros_like(x) if need_x else None
    gw = torch.zeros_like(w) if need_w else None
    c = (g_last * d / s_prev).contiguous()
    run = nrpm_compiled.backward_fixed_compiled if backend == "compiled" else nrpm_eager.backward_fixed_eager
    run(x, w, z_prev / d, c, eps, gx, gw)
    return torch.zeros_like(g_last), gx, gw


def core_backward(
    x: Tensor, w: Tensor, zs: Tensor, ss: Tensor, g_lpm: Tensor | None, g_last: Tensor | None, eps: float,
    backend: str, need_x: bool, need_w: bool, fixed: bool = False,
) -> tuple[Tensor | None, Tensor | None]:
    """∂L/∂x (n, D) and ∂L/∂W (o, D) from the output gradients of (z_LPM, z⁽ᴷ⁾).

    ``fixed`` (straight-through): ``zs`` (1, n, o) holds z⁽ᴷ⁻¹⁾ and ``ss`` (1, n, o) the last normaliser."""
    if g_last is None:
        g_last = torch.zeros_like(zs[0])
    back = backward_fixed if fixed else backward_all
    g0, gx, gw = back(x, w, zs if not fixed else zs[0], ss if not fixed else ss[0], g_last.contiguous(), eps,
                      backend, need_x, need_w)
    g_total = g0 if g_lpm is None else g0 + g_lpm
    if need_x:
        gx = g_total @ w if gx is None else gx.addmm_(g_total, w)
    if need_w:
        gw = g_total.T @ x if gw is None else gw.addmm_(g_total.T, x)
    return gx, gw


class NRPMCore(torch.autograd.Function):
    """``(x (N, D), W (O, D)) ↦ (z_LPM, z⁽ᴷ⁾)``, both (N, O), with the hand-derived backward (exact, or with the
    last IRLS weights held constant when ``fixed``; K ≥ 1)."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, w: Tensor, K: int, eps: float, backend: str, fixed: bool = False
    ) -> tuple[Tensor, Tensor]:
        x = x.contiguous()
        w = w.contiguous()
        z0 = x @ w.T
        zs, ss = forward_all(x, w, z0, K, eps, backend)
        zk = zs[K].clone()
        if fixed:  # only the last step is needed: z⁽ᴷ⁻¹⁾ and its normaliser
            zs, ss = zs[K - 1 : K].clone(), ss[K - 1 : K].clone()
        ctx.save_for_backward(x, w, zs, ss)
        ctx.eps, ctx.backend, ctx.fixed = eps, backend, fixed
        return z0, zk

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g_lpm: Tensor | None, g_last: Tensor | None) -> tuple[Tensor | None, ...]:
        x, w, zs, ss = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gx, gw = core_backward(x, w, zs, ss, g_lpm, g_last, ctx.eps, ctx.backend, need_x, need_w, ctx.fixed)
        return gx if need_x else None, gw if need_w else None, None, None, None, None


@dataclass(frozen=True)
class ConvGeom:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    size: tuple[int, int]  # input H, W
    L: int  # output pixels per image


def _conv_batch_block(x: Tensor, geom: ConvGeom) -> int:
    per_image = geom.L * x.shape[1] * geom.kernel[0] * geom.kernel[1]
    return max(1, min(x.shape[0], _CONV_COLS_CHUNK // max(per_image, 1)))


def conv_rows(x: Tensor, geom: ConvGeom, g: int) -> Tensor:
    """Unfolded patches of group ``g`` as rows (b·L, D), channel-major (c, kh, kw) like ``F.unfold``."""
    cols = F.unfold(x, geom.kernel, dilation=geom.dilation, padding=geom.padding, stride=geom.stride)
    b = x.shape[0]
    D = cols.shape[1] // geom.groups
    return cols.view(b, geom.groups, D, geom.L)[:, g].transpose(1, 2).reshape(b * geom.L, D).contiguous()


def conv_forward(
    x: Tensor, w: Tensor, geom: ConvGeom, K: int, eps: float, backend: str, keep: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``z_LPM``, ``z⁽ᴷ⁾`` (B, L, C_out) and, if ``keep``, all iterates (K+1, B, L, C_out) and normalisers
    (K, B, L, C_out). Works on batch blocks so the unfolded patches never exist for the whole batch."""
    B = x.shape[0]
    G = geom.groups
    wg = w.reshape(G, w.shape[0] // G, -1)
    og = wg.shape[1]
    cout = w.shape[0]
    z0_all = x.new_empty((B, geom.L, cout))
    zk_all = x.new_empty((B, geom.L, cout))
    zs_all = x.new_empty((K + 1, B, geom.L, cout)) if keep else x.new_empty(0)
    ss_all = x.new_empty((K, B, geom.L, cout)) if keep else x.new_empty(0)
    bb = _conv_batch_block(x, geom)
    for b0 in range(0, B, bb):
        xb = x[b0 : b0 + bb]
        nb = xb.shape[0]
        for g in range(G):
            rows = conv_rows(xb, geom, g)
            wgg = wg[g].contiguous()
            z0 = rows @ wgg.T
            zs, ss = forward_all(rows, wgg, z0, K, eps, backend, keep=keep)
            sl = slice(g * og, (g + 1) * og)
            z0_all[b0 : b0 + nb, :, sl] = z0.view(nb, geom.L, og)
            zk_all[b0 : b0 + nb, :, sl] = zs[-1].view(nb, geom.L, og)
            if keep:
                zs_all[:, b0 : b0 + nb, :, sl] = zs.view(K + 1, nb, geom.L, og)
                ss_all[:, b0 : b0 + nb, :, sl] = ss.view(K, nb, geom.L, og)
    return z0_all, zk_all, zs_all, ss_all


class NRPMConvCore(torch.autograd.Function):
    """``(x (B, C, H, W), W (C_out, C/G, kh, kw)) ↦ (z_LPM, z⁽ᴷ⁾)`` as (B, L, C_out), hand-derived backward.

    Saves only ``x``, ``W`` and the per-output iterates; the backward unfolds each batch block again and folds
    the patch gradients back (``F.fold``), so the unfolded input is never stored."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, w: Tensor, geom: ConvGeom, K: int, eps: float, backend: str, fixed: bool = False
    ) -> tuple[Tensor, Tensor]:
        z0, zk, zs, ss = conv_forward(x, w, geom, K, eps, backend, keep=True)
        if fixed:  # straight-through: only z⁽ᴷ⁻¹⁾ and the last normaliser are needed
            zs, ss = zs[K - 1 : K].clone(), ss[K - 1 : K].clone()
        ctx.save_for_backward(x, w, zs, ss)
        ctx.geom, ctx.eps, ctx.backend, ctx.fixed = geom, eps, backend, fixed
        return z0, zk

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g_lpm: Tensor | None, g_last: Tensor | None) -> tuple[Tensor | None, ...]:
        x, w, zs_all, ss_all = ctx.saved_tensors
        geom: ConvGeom = ctx.geom
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        B = x.shape[0]
        G = geom.groups
        wg = w.reshape(G, w.shape[0] // G, -1)
        og, D = wg.shape[1], wg.shape[2]
        K, nz = ss_all.shape[0], zs_all.shape[0]
        gx = torch.zeros_like(x) if need_x else None
        gw = torch.zeros_like(wg) if need_w else None
        bb = _conv_batch_block(x, geom)
        for b0 in range(0, B, bb):
            xb = x[b0 : b0 + bb]
            nb = xb.shape[0]
            gcols = x.new_zeros((nb, G, D, geom.L)) if need_x else None
            for g in range(G):
                rows = conv_rows(xb, geom, g)
                sl = slice(g * og, (g + 1) * og)
                zs = zs_all[:, b0 : b0 + nb, :, sl].reshape(nz, nb * geom.L, og)
                ss = ss_all[:, b0 : b0 + nb, :, sl].reshape(K, nb * geom.L, og)
                glp = None if g_lpm is None else g_lpm[b0 : b0 + nb, :, sl].reshape(nb * geom.L, og)
                gla = None if g_last is None else g_last[b0 : b0 + nb, :, sl].reshape(nb * geom.L, og)
                gxg, gwg = core_backward(rows, wg[g].contiguous(), zs, ss, glp, gla, ctx.eps, ctx.backend,
                                         need_x, need_w, ctx.fixed)
                if gcols is not None and gxg is not None:
                    gcols[:, g] = gxg.view(nb, geom.L, D).transpose(1, 2)
                if gw is not None and gwg is not None:
                    gw[g] += gwg
            if gx is not None and gcols is not None:
                gx[b0 : b0 + nb] = F.fold(gcols.view(nb, G * D, geom.L), geom.size, geom.kernel,
                                          dilation=geom.dilation, padding=geom.padding, stride=geom.stride)
        return gx, gw.view_as(w) if gw is not None else None, None, None, None, None, None
