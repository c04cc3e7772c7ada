"""NRPM autograd Functions (linear and conv) and the backend dispatch; the math is in
:mod:`torchrobust.nn.nrpm_irls`, the public functions and the full description in :mod:`torchrobust.nn.nrpm`.

:class:`NRPMCore` maps rows ``x`` (N, D) and weights ``W`` (O, D) to ``(z_LPM, z⁽ᴷ⁾)`` with the hand-derived
backward (Robustness Reprogramming, Hou et al., ICLR 2025, Algorithm 1 unrolled); it saves ``x``, ``W`` and the
per-output iterates and normalisers (``O(N·O·K)``), never the (N, O, D) products. :class:`NRPMConvCore` does the
same for a convolution, unfolding the input one batch block at a time (``_CONV_COLS_CHUNK``) in the forward and
again in the backward, so the unfolded input is never stored either.
"""

from __future__ import annotations

from collections.abc import Iterator
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
#: Compiled convolutions with fewer output channels per group than this run in the column layout (vectorised over
#: output pixels, see :func:`conv_forward_cols`); wider ones reduce over the contiguous fan-in of patch rows.
_COLS_MAX_OUT = 16


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


def _out_hw(geom: ConvGeom) -> tuple[int, int]:
    (H, W), (kh, kw), (sh, sw) = geom.size, geom.kernel, geom.stride
    (ph, pw), (dh, dw) = geom.padding, geom.dilation
    return (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1


def _patches(xb: Tensor, geom: ConvGeom, g: int) -> Tensor:
    """Patches of group ``g`` as a strided view (b, C/G, kh, kw, Ho, Wo) of the zero-padded input, the order of
    ``F.unfold``; copying it to rows or columns measured 1.3–9× faster than ``F.unfold`` (im2col) plus a copy."""
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = geom.kernel, geom.stride, geom.dilation, geom.padding
    xp = F.pad(xb, (pw, pw, ph, ph)) if ph or pw else xb
    cg = xb.shape[1] // geom.groups
    v = xp[:, g * cg : (g + 1) * cg].unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)
    return v[..., ::dh, ::dw].permute(0, 1, 4, 5, 2, 3)


def _fold_add(gxp: Tensor, gp: Tensor, geom: ConvGeom, g: int) -> None:
    """Adjoint of :func:`_patches`: adds patch gradients ``gp`` (b, C/G, kh, kw, Ho, Wo) of group ``g`` into the
    padded input gradient ``gxp`` (b, C, H + 2ph, W + 2pw), one strided add per kernel tap (replaces ``F.fold``)."""
    (kh, kw), (sh, sw), (dh, dw) = geom.kernel, geom.stride, geom.dilation
    cg, ho, wo = gp.shape[1], gp.shape[4], gp.shape[5]
    dst = gxp[:, g * cg : (g + 1) * cg]
    for i in range(kh):
        for j in range(kw):
            rows, cols = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh), slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
            dst[:, :, rows, cols] += gp[:, :, i, j]


def _padded_input_grad(x: Tensor, geom: ConvGeom) -> Tensor:
    (ph, pw), (H, W) = geom.padding, geom.size
    return x.new_zeros((x.shape[0], x.shape[1], H + 2 * ph, W + 2 * pw))


def _crop(gxp: Tensor, geom: ConvGeom) -> Tensor:
    (ph, pw), (H, W) = geom.padding, geom.size
    return gxp[:, :, ph : ph + H, pw : pw + W]


def _rows(xb: Tensor, geom: ConvGeom, g: int) -> Tensor:
    """:func:`conv_rows` from :func:`_patches` (one copy, no im2col)."""
    p = _patches(xb, geom, g)
    return p.permute(0, 4, 5, 1, 2, 3).reshape(xb.shape[0] * geom.L, -1).contiguous()


def uses_cols(backend: str, w: Tensor, geom: ConvGeom) -> bool:
    """Whether a convolution runs in the column layout (compiled backend, < ``_COLS_MAX_OUT`` outputs per group)."""
    return backend == "compiled" and w.shape[0] // geom.groups < _COLS_MAX_OUT


def padded_len(L: int, dtype: torch.dtype) -> int:
    """Row length of the column-layout buffers: ``L`` rounded up to an odd number of 64-byte cache lines. The
    kernels step through the fan-in at this stride; a multiple of 4 KiB (L = 1024 pixels in fp32) maps every row
    to one L1 set, which measured 1.6–2.6× slower."""
    line = max(1, 64 // torch.empty((), dtype=dtype).element_size())
    k = -(-L // line)
    return (k + 1 - k % 2) * line


def _padded(src: Tensor, lp: int) -> Tensor:
    """``src`` (…, L) copied into a fresh contiguous (…, lp) tensor whose tail is zero."""
    out = src.new_empty(src.shape[:-1] + (lp,))
    out[..., : src.shape[-1]] = src
    out[..., src.shape[-1] :] = 0
    return out


def conv_forward_cols(
    x: Tensor, w: Tensor, geom: ConvGeom, K: int, eps: float, keep: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`conv_forward` in the column layout: patches (b, D, L) straight from ``F.unfold`` (no transpose),
    outputs (B, C_out, L) returned as (B, L, C_out) views; iterates (K+1, B, C_out, Lp) and normalisers
    (K, B, C_out, Lp) with the padded length ``Lp`` of :func:`padded_len`."""
    B, G, L = x.shape[0], geom.groups, geom.L
    wg = w.reshape(G, w.shape[0] // G, -1)
    og = wg.shape[1]
    lp = padded_len(L, x.dtype)
    z0_all = x.new_empty((B, w.shape[0], L))
    zk_all = x.new_empty((B, w.shape[0], L))
    zs_all = x.new_empty((K + 1, B, w.shape[0], lp)) if keep else x.new_empty(0)
    ss_all = x.new_empty((K, B, w.shape[0], lp)) if keep else x.new_empty(0)
    bb = _conv_batch_block(x, geom)
    ho, wo = _out_hw(geom)
    for b0 in range(0, B, bb):
        xb = x[b0 : b0 + bb]
        nb = xb.shape[0]
        for g in range(G):
            c = _cols(xb, geom, g, lp, ho, wo)
            wgg = wg[g].contiguous()
            z0 = torch.matmul(wgg, c)
            zs, ss = nrpm_compiled.forward_compiled(c, wgg, z0, K, eps, keep, cols=True)
            sl = slice(g * og, (g + 1) * og)
            z0_all[b0 : b0 + nb, sl] = z0[..., :L]
            zk_all[b0 : b0 + nb, sl] = zs[-1, ..., :L]
            if keep:
                zs_all[:, b0 : b0 + nb, sl] = zs
                ss_all[:, b0 : b0 + nb, sl] = ss
    return z0_all.transpose(1, 2), zk_all.transpose(1, 2), zs_all, ss_all


def _cols(xb: Tensor, geom: ConvGeom, g: int, lp: int, ho: int, wo: int) -> Tensor:
    """Patches of group ``g`` as columns (b, D, lp), zero beyond ``L``."""
    p = _patches(xb, geom, g)
    out = xb.new_empty((xb.shape[0], p.shape[1] * p.shape[2] * p.shape[3], lp))
    out[..., : geom.L].view(p.shape).copy_(p)
    out[..., geom.L :] = 0
    return out


def _backward_blocks(x: Tensor, geom: ConvGeom, gx: Tensor | None) -> Iterator[tuple[int, Tensor, Tensor | None]]:
    """Batch blocks ``(b0, x block, padded input gradient of the block or None)`` of a conv backward; after the
    caller has added a block's terms, the padded gradient is cropped into ``gx`` (when the input needs one)."""
    bb = _conv_batch_block(x, geom)
    for b0 in range(0, x.shape[0], bb):
        xb = x[b0 : b0 + bb]
        gxp = _padded_input_grad(xb, geom) if gx is not None else None
        yield b0, xb, gxp
        if gx is not None and gxp is not None:
            gx[b0 : b0 + xb.shape[0]] = _crop(gxp, geom)


def conv_backward_cols(
    x: Tensor, w: Tensor, geom: ConvGeom, zs_all: Tensor, ss_all: Tensor, g_lpm: Tensor | None,
    g_last: Tensor | None, eps: float, need_x: bool, need_w: bool, fixed: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """Backward of :func:`conv_forward_cols` (``g_lpm``, ``g_last`` (B, L, C_out)); ``fixed`` (straight-through):
    ``zs_all`` / ``ss_all`` hold z⁽ᴷ⁻¹⁾ and the last normaliser only."""
    G, L = geom.groups, geom.L
    wg = w.reshape(G, w.shape[0] // G, -1)
    og, D = wg.shape[1], wg.shape[2]
    lp = zs_all.shape[-1]
    gx = torch.zeros_like(x) if need_x else None
    gw = torch.zeros_like(wg) if need_w else None
    g_lpm_t = None if g_lpm is None else g_lpm.transpose(1, 2)
    g_last_t = None if g_last is None else g_last.transpose(1, 2)
    ho, wo = _out_hw(geom)
    for b0, xb, gxp in _backward_blocks(x, geom, gx):
        nb = xb.shape[0]
        for g in range(G):
            c = _cols(xb, geom, g, lp, ho, wo)
            wgg = wg[g].contiguous()
            sl = slice(g * og, (g + 1) * og)
            zs = zs_all[:, b0 : b0 + nb, sl].contiguous()
            ss = ss_all[:, b0 : b0 + nb, sl].contiguous()
            gla = _padded(g_last_t[b0 : b0 + nb, sl], lp) if g_last_t is not None else torch.zeros_like(zs[0])
            gc = torch.zeros_like(c) if need_x else None
            gwc = torch.zeros_like(wgg) if need_w else None
            if fixed:
                cc = gla * D / ss[0]
                nrpm_compiled.backward_fixed_cols_compiled(c, wgg, zs[0] / D, cc, eps, gc, gwc)
                g_total = None
            else:
                g_total = nrpm_compiled.backward_cols_compiled(c, wgg, zs, ss, gla, eps, gc, gwc)
            if g_lpm_t is not None:
                glp = _padded(g_lpm_t[b0 : b0 + nb, sl], lp)
                g_total = glp if g_total is None else g_total.add_(glp)
            if g_total is not None:  # the direct terms of z_LPM and of ḡ_0 (z⁽⁰⁾ = W·c)
                if gc is not None:
                    gc += torch.matmul(wgg.T, g_total)
                if gwc is not None:
                    gwc += torch.matmul(g_total, c.transpose(1, 2)).sum(0)
            if gxp is not None and gc is not None:
                _fold_add(gxp, gc[..., :L].view(nb, -1, *geom.kernel, ho, wo), geom, g)
            if gw is not None and gwc is not None:
                gw[g] += gwc
    return gx, gw.view_as(w) if gw is not None else None


def conv_forward(
    x: Tensor, w: Tensor, geom: ConvGeom, K: int, eps: float, backend: str, keep: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``z_LPM``, ``z⁽ᴷ⁾`` (B, L, C_out) and, if ``keep``, all iterates (K+1, B, L, C_out) and normalisers
    (K, B, L, C_out). Works on batch blocks so the unfolded patches never exist for the whole batch. Narrow
    compiled convolutions run in the column layout (:func:`conv_forward_cols`; iterates (K+1, B, C_out, Lp))."""
    if uses_cols(backend, w, geom):
        return conv_forward_cols(x, w, geom, K, eps, keep)
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
            rows = _rows(xb, geom, g)
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
        ctx.cols = uses_cols(backend, w, geom)
        return z0, zk

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g_lpm: Tensor | None, g_last: Tensor | None) -> tuple[Tensor | None, ...]:
        x, w, zs_all, ss_all = ctx.saved_tensors
        geom: ConvGeom = ctx.geom
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if ctx.cols:
            gx_c, gw_c = conv_backward_cols(x, w, geom, zs_all, ss_all, g_lpm, g_last, ctx.eps, need_x, need_w,
                                            ctx.fixed)
            return gx_c, gw_c, None, None, None, None, None
        G = geom.groups
        wg = w.reshape(G, w.shape[0] // G, -1)
        og = wg.shape[1]
        K, nz = ss_all.shape[0], zs_all.shape[0]
        gx = torch.zeros_like(x) if need_x else None
        gw = torch.zeros_like(wg) if need_w else None
        ho, wo = _out_hw(geom)
        for b0, xb, gxp in _backward_blocks(x, geom, gx):
            nb = xb.shape[0]
            for g in range(G):
                rows = _rows(xb, geom, g)
                sl = slice(g * og, (g + 1) * og)
                zs = zs_all[:, b0 : b0 + nb, :, sl].reshape(nz, nb * geom.L, og)
                ss = ss_all[:, b0 : b0 + nb, :, sl].reshape(K, nb * geom.L, og)
                glp = None if g_lpm is None else g_lpm[b0 : b0 + nb, :, sl].reshape(nb * geom.L, og)
                gla = None if g_last is None else g_last[b0 : b0 + nb, :, sl].reshape(nb * geom.L, og)
                gxg, gwg = core_backward(rows, wg[g].contiguous(), zs, ss, glp, gla, ctx.eps, ctx.backend,
                                         need_x, need_w, ctx.fixed)
                if gxp is not None and gxg is not None:
                    gp = gxg.view(nb, ho, wo, -1, *geom.kernel)
                    _fold_add(gxp, gp.permute(0, 3, 4, 5, 1, 2), geom, g)
                if gw is not None and gwg is not None:
                    gw[g] += gwg
        return gx, gw.view_as(w) if gw is not None else None, None, None, None, None, None
