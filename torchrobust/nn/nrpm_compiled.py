"""NRPM compiled kernels: ``torch.compile`` (inductor: C++/OpenMP on CPU, Triton on CUDA) of the IRLS step of
:mod:`torchrobust.nn.nrpm_irls`, one fused loop nest per reduction, so the (n, o, D) products, residuals and
weights stay in registers and only per-output sums reach memory.

Kernels: one IRLS step (forward); the three reductions of one reverse step (∂/∂z over the fan-in, ∂/∂x over
output units, ∂/∂W over rows); the two reductions of the straight-through backward. One kernel per step, not a
K-unrolled graph, and the three reverse reductions separate: in a single graph inductor stores the shared
(n, o, D) terms, which is slower and breaks the memory bound. Shapes are dynamic (``dynamic=True``) and kernels
are cached per dtype / device / size-1 pattern, each entry with its own code object (:func:`_compiled`), so a
model with many layer shapes and batch sizes compiles each kernel once and never reaches dynamo's recompile
limit. Inputs are passed as plain, contiguous tensors (dynamo specialises ``nn.Parameter`` shapes).
"""

from __future__ import annotations

import logging
import time
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from torchrobust.nn.nrpm_irls import irls_fixed, irls_reverse, irls_step, irls_weights, reverse_coefficients

__all__ = ["compiler_available", "forward_compiled", "backward_compiled", "backward_fixed_compiled",
           "backward_cols_compiled", "backward_fixed_cols_compiled", "compile_seconds"]

logger = logging.getLogger(__name__)

#: Elements of ``x`` per row block of the ∂L/∂W kernels (a block stays in cache while all output units use it).
_W_GRAD_ELEMS = 1 << 18
#: From this many output units on, ∂L/∂x runs on the (rows, fan-in, outputs) grid, reducing over the contiguous
#: output axis; below it, on the (rows, outputs, fan-in) grid (a short output axis vectorises badly). Measured on
#: AVX2; with 512-bit vectors the (rows, outputs, fan-in) grid was faster for every width (:func:`_wide_simd`).
_X_T_MIN_OUT = 48
_WIDE_SIMD: dict[str, bool] = {}


def _wide_simd(device: torch.device) -> bool:
    """Whether inductor emits 512-bit vector code for ``device`` (CPU with AVX-512). There the ∂L/∂x kernel on the
    (rows, outputs, fan-in) grid ran at 7.2–8.0 G products/s against 6.2–7.0 for the transposed one, for 64, 128
    and 256 outputs (one thread, fp32); with 256-bit code the transposed one won from 128 outputs on."""
    if device.type != "cpu":
        return False
    wide = _WIDE_SIMD.get("cpu")
    if wide is None:
        try:
            from torch._inductor import cpu_vec_isa

            wide = int(cpu_vec_isa.pick_vec_isa().bit_width()) >= 512
        except Exception:  # noqa: BLE001 - an internal API; without it keep the AVX2 threshold
            wide = False
        _WIDE_SIMD["cpu"] = wide
    return wide


def _use_x_t(o: int, device: torch.device) -> bool:
    return o >= _X_T_MIN_OUT and not _wide_simd(device)


# Kernels. Arguments are plain contiguous tensors: x (n, D), w (o, D), wT (D, o), xT (D, n), per-output values
# (n, o) or, transposed, (o, n). Each reduces along one axis of the broadcast grid of the IRLS terms; the
# ``_t`` variants put the reduced axis last (contiguous), which inductor vectorises best.
def _k_fwd(x: Tensor, w: Tensor, m: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    return irls_step(x, w, m, eps)


def _k_bwd_z(x: Tensor, w: Tensor, m: Tensor, a_pos: Tensor, a_neg: Tensor, eps: Tensor) -> Tensor:
    return irls_reverse(x[:, None, :], w, m[..., None], a_pos[..., None], a_neg[..., None], eps, eps).sum(-1)


def _k_bwd_x(x: Tensor, w: Tensor, m: Tensor, a_pos: Tensor, a_neg: Tensor, a_zero: Tensor, eps: Tensor) -> Tensor:
    v = irls_reverse(x[:, None, :], w, m[..., None], a_pos[..., None], a_neg[..., None], a_zero[..., None], eps)
    return (v * w).sum(1)


def _k_bwd_x_t(x: Tensor, wT: Tensor, m: Tensor, a_pos: Tensor, a_neg: Tensor, a_zero: Tensor, eps: Tensor
               ) -> Tensor:
    v = irls_reverse(x[:, :, None], wT, m[:, None, :], a_pos[:, None, :], a_neg[:, None, :], a_zero[:, None, :], eps)
    return (v * wT).sum(-1)


def _k_bwd_w_t(w: Tensor, xT: Tensor, mT: Tensor, a_pos: Tensor, a_neg: Tensor, a_zero: Tensor, eps: Tensor
               ) -> Tensor:
    v = irls_reverse(w[:, :, None], xT, mT[:, None, :], a_pos[:, None, :], a_neg[:, None, :], a_zero[:, None, :], eps)
    return (v * xT).sum(-1)


def _k_st_x(x: Tensor, w: Tensor, m: Tensor, c: Tensor, eps: Tensor) -> Tensor:
    return (irls_fixed(x[:, None, :], w, m[..., None], c[..., None], eps) * w).sum(1)


def _k_st_x_t(x: Tensor, wT: Tensor, m: Tensor, c: Tensor, eps: Tensor) -> Tensor:
    return (irls_fixed(x[:, :, None], wT, m[:, None, :], c[:, None, :], eps) * wT).sum(-1)


def _k_st_w_t(w: Tensor, xT: Tensor, mT: Tensor, cT: Tensor, eps: Tensor) -> Tensor:
    return (irls_fixed(w[:, :, None], xT, mT[:, None, :], cT[:, None, :], eps) * xT).sum(-1)


# Column layout of narrow convolutions: patches ``c`` (b, D, L) as ``F.unfold`` gives them, per-output values
# (b, o, L). The grid is (b, o, D, L) and the L axis (output pixels, contiguous) is the vectorised one, so a short
# fan-in (D = 72) costs no masked tail and no horizontal sums per (pixel, output).
def _cols(c: Tensor, w: Tensor, m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return c[:, None], w[:, :, None], m[:, :, None]


def _k_fwd_c(c: Tensor, w: Tensor, m: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    r, u = irls_weights(*_cols(c, w, m), eps)
    return u.sum(2), (u * r).sum(2)


def _k_bwd_z_c(c: Tensor, w: Tensor, m: Tensor, a_pos: Tensor, a_neg: Tensor, eps: Tensor) -> Tensor:
    return irls_reverse(*_cols(c, w, m), a_pos[:, :, None], a_neg[:, :, None], eps, eps).sum(2)


def _k_bwd_x_c(c: Tensor, w: Tensor, m: Tensor, a_pos: Tensor, a_neg: Tensor, a_zero: Tensor, eps: Tensor
               ) -> Tensor:
    v = irls_reverse(*_cols(c, w, m), a_pos[:, :, None], a_neg[:, :, None], a_zero[:, :, None], eps)
    return (v * w[:, :, None]).sum(1)


def _k_bwd_w_c(c: Tensor, w: Tensor, m: Tensor, a_pos: Tensor, a_neg: Tensor, a_zero: Tensor, eps: Tensor
               ) -> Tensor:
    v = irls_reverse(*_cols(c, w, m), a_pos[:, :, None], a_neg[:, :, None], a_zero[:, :, None], eps)
    return (v * c[:, None]).sum((0, 3))


def _k_st_x_c(c: Tensor, w: Tensor, m: Tensor, cc: Tensor, eps: Tensor) -> Tensor:
    return (irls_fixed(*_cols(c, w, m), cc[:, :, None], eps) * w[:, :, None]).sum(1)


def _k_st_w_c(c: Tensor, w: Tensor, m: Tensor, cc: Tensor, eps: Tensor) -> Tensor:
    return (irls_fixed(*_cols(c, w, m), cc[:, :, None], eps) * c[:, None]).sum((0, 3))


_KERNELS: dict[str, Callable[..., Any]] = {
    "fwd": _k_fwd, "bwd_z": _k_bwd_z, "bwd_x": _k_bwd_x, "bwd_x_t": _k_bwd_x_t, "bwd_w_t": _k_bwd_w_t,
    "st_x": _k_st_x, "st_x_t": _k_st_x_t, "st_w_t": _k_st_w_t,
    "fwd_c": _k_fwd_c, "bwd_z_c": _k_bwd_z_c, "bwd_x_c": _k_bwd_x_c, "bwd_w_c": _k_bwd_w_c,
    "st_x_c": _k_st_x_c, "st_w_c": _k_st_w_c,
}
_COMPILED: dict[tuple[Any, ...], Callable[..., Any]] = {}
_COMPILER_OK: dict[str, bool] = {}
#: Wall seconds spent in first calls (compilation) per kernel key; see :func:`compile_seconds`.
_COMPILE_S: dict[tuple[Any, ...], float] = {}


def compile_seconds() -> float:
    """Wall seconds this process spent in the first call of each compiled NRPM kernel (compilation)."""
    return sum(_COMPILE_S.values())


def _fresh(fn: Callable[..., Any], tag: str) -> Callable[..., Any]:
    """A copy of ``fn`` with its own code object: dynamo keeps compiled graphs (and counts recompiles) per code
    object, so one copy per cache key means each copy only ever sees one graph."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{tag}")
    new = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
    new.__qualname__ = code.co_name
    return new


def _call(name: str, *args: Tensor) -> Any:
    """Run the compiled kernel ``name``. Kernels are cached per dtype, device type and which sizes are 1 (dynamic
    shapes still specialise sizes 0/1), each key with its own code object; a first call is timed (wall) into
    ``_COMPILE_S``."""
    x = args[0]
    key = (name, x.dtype, x.device.type, tuple(s == 1 for a in args for s in a.shape))
    fn = _COMPILED.get(key)
    if fn is not None:
        return fn(*args)
    tag = f"{len(_COMPILED)}_{str(x.dtype).replace('torch.', '')}_{x.device.type}"
    fn = torch.compile(_fresh(_KERNELS[name], tag), dynamic=True, fullgraph=True)
    t0 = time.perf_counter()  # wall time: the C++/Triton compiler runs in worker processes
    out = fn(*args)
    _COMPILE_S[key] = time.perf_counter() - t0
    _COMPILED[key] = fn
    return out


def _plain(t: Tensor) -> Tensor:
    """``t`` as a plain, row-major tensor: dynamo treats ``nn.Parameter`` inputs as static-shaped (and views
    through their base), which would specialise the kernels to one layer's shape; and a kernel compiled for one
    stride order is slow for the other (the fan-in must be the contiguous, vectorised axis)."""
    t = t.detach().contiguous()
    return t if t._base is None else t.clone()


def compiler_available(device: torch.device | str = "cpu") -> bool:
    """Whether ``torch.compile`` (inductor) works for NRPM on ``device``'s type; probed once per process."""
    dev_type = torch.device(device).type
    ok = _COMPILER_OK.get(dev_type)
    if ok is None:
        try:
            gen = torch.Generator().manual_seed(0)  # its own generator: the probe leaves the global RNG as it was
            x = torch.randn(3, 5, generator=gen).to(device)
            w = torch.randn(2, 5, generator=gen).to(device)
            m = (x @ w.T) / 5
            eps = torch.tensor(1e-3, device=device)
            got = _call("fwd", x, w, m, eps)
            ref = irls_step(x, w, m, eps)
            ok = all(bool(torch.allclose(g, r, rtol=1e-4, atol=1e-4)) for g, r in zip(got, ref, strict=True))
        except Exception as exc:  # noqa: BLE001 - any compiler failure means "fall back to eager"
            logger.info("torch.compile unavailable for NRPM on %s (%s: %s); using eager", dev_type,
                        type(exc).__name__, exc)
            ok = False
        _COMPILER_OK[dev_type] = ok
    return ok


def forward_compiled(x: Tensor, w: Tensor, z0: Tensor, K: int, eps: float, keep: bool, cols: bool = False
                     ) -> tuple[Tensor, Tensor]:
    """All iterates (K+1, n, o) and normalisers (K, n, o); with ``keep=False`` only ``z⁽ᴷ⁾`` as (1, n, o).

    ``cols``: the column layout, ``x`` (b, D, L) and ``z0`` (b, o, L), iterates (K+1, b, o, L)."""
    d = x.shape[-2] if cols else x.shape[-1]
    x, w = _plain(x), _plain(w)
    eps_t = torch.tensor(eps, dtype=x.dtype, device=x.device)
    zs = x.new_empty((K + 1 if keep else 1,) + z0.shape)
    ss = x.new_empty((K if keep else 0,) + z0.shape)
    z = z0
    if keep:
        zs[0] = z0
    for k in range(K):
        sk, tk = _call("fwd_c" if cols else "fwd", x, w, z / d, eps_t)
        z = torch.addcdiv(z, tk, sk, value=d)
        if keep:
            zs[k + 1] = z
            ss[k] = sk
    if not keep:
        zs[0] = z
    return zs, ss


def _reverse_terms(
    gbar: Tensor, zs: Tensor, ss: Tensor, k: int, d: int, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[Tensor, Tensor, Tensor]]:
    """Per-output terms of reverse IRLS step ``k`` (``nrpm_irls``): ``c = ḡ·D/s_k``, the mean ``m = z_k/D``, the
    coefficients ``a±`` and the products ``(c·a+, c·a−, c·ε)`` the direct-term kernels take."""
    c = gbar * d / ss[k]
    m = zs[k] / d
    a_pos, a_neg = reverse_coefficients(m, zs[k + 1], d, eps)
    return c, m, a_pos, a_neg, (c * a_pos, c * a_neg, c * eps)


def backward_compiled(
    x: Tensor, w: Tensor, zs: Tensor, ss: Tensor, g_last: Tensor, eps: float, gx: Tensor | None, gw: Tensor | None
) -> Tensor:
    """Reverse sweep with the compiled kernels: returns ``ḡ_0`` and adds the direct terms to ``gx`` / ``gw``."""
    x, w = _plain(x), _plain(w)
    n, d = x.shape
    o = w.shape[0]
    wT = w.T.contiguous() if gx is not None and _use_x_t(o, x.device) else None
    # x transposed per row block (D, rows), built once for all K steps
    xTs = [(i, x[i : i + bs].T.contiguous()) for i, bs in _blocks_of(n, d)] if gw is not None else []
    eps_t = torch.tensor(eps, dtype=x.dtype, device=x.device)
    gbar = g_last
    for k in range(ss.shape[0] - 1, -1, -1):
        c, m, a_pos, a_neg, (ca_pos, ca_neg, ca_zero) = _reverse_terms(gbar, zs, ss, k, d, eps)
        if gx is not None:
            if wT is not None:
                gx += _call("bwd_x_t", x, wT, m, ca_pos, ca_neg, ca_zero, eps_t)
            else:
                gx += _call("bwd_x", x, w, m, ca_pos, ca_neg, ca_zero, eps_t)
        if gw is not None:
            # reduction over rows, on row blocks that stay in cache, with the rows as the contiguous axis
            per_out = torch.stack((m, ca_pos, ca_neg, ca_zero)).transpose(1, 2)  # (4, o, n)
            for i, xT in xTs:
                blk = per_out[:, :, i : i + xT.shape[1]].contiguous()
                gw += _call("bwd_w_t", w, xT, blk[0], blk[1], blk[2], blk[3], eps_t)
        gbar = c * (ss[k] - _call("bwd_z", x, w, m, a_pos, a_neg, eps_t)) / d
    return gbar


def _blocks_of(n: int, d: int) -> list[tuple[int, int]]:
    """Row blocks ``(start, size)`` for the ∂L/∂W kernels."""
    step = max(64, _W_GRAD_ELEMS // max(d, 1))
    return [(i, min(step, n - i)) for i in range(0, n, step)]


def backward_fixed_compiled(
    x: Tensor, w: Tensor, m: Tensor, c: Tensor, eps: float, gx: Tensor | None, gw: Tensor | None
) -> None:
    """Straight-through backward with the compiled kernels: adds its terms to ``gx`` / ``gw``."""
    n, d = x.shape
    o = w.shape[0]
    x, w, m = _plain(x), _plain(w), m.contiguous()
    eps_t = torch.tensor(eps, dtype=x.dtype, device=x.device)
    if gx is not None:
        if _use_x_t(o, x.device):
            gx += _call("st_x_t", x, w.T.contiguous(), m, c, eps_t)
        else:
            gx += _call("st_x", x, w, m, c, eps_t)
    if gw is not None:
        per_out = torch.stack((m, c)).transpose(1, 2)  # (2, o, n)
        for i, bs in _blocks_of(n, d):
            blk = per_out[:, :, i : i + bs].contiguous()
            gw += _call("st_w_t", w, x[i : i + bs].T.contiguous(), blk[0], blk[1], eps_t)


def backward_cols_compiled(
    c: Tensor, w: Tensor, zs: Tensor, ss: Tensor, g_last: Tensor, eps: float, gc: Tensor | None, gw: Tensor | None
) -> Tensor:
    """Reverse sweep in the column layout (``c`` (b, D, L), ``zs`` (K+1, b, o, L), ``ss`` (K, b, o, L)): returns
    ``ḡ_0`` (b, o, L) and adds the direct terms to ``gc`` (b, D, L) / ``gw`` (o, D)."""
    c, w = _plain(c), _plain(w)
    d = c.shape[1]
    eps_t = torch.tensor(eps, dtype=c.dtype, device=c.device)
    gbar = g_last
    for k in range(ss.shape[0] - 1, -1, -1):
        ck, m, a_pos, a_neg, (ca_pos, ca_neg, ca_zero) = _reverse_terms(gbar, zs, ss, k, d, eps)
        if gc is not None:
            gc += _call("bwd_x_c", c, w, m, ca_pos, ca_neg, ca_zero, eps_t)
        if gw is not None:
            gw += _call("bwd_w_c", c, w, m, ca_pos, ca_neg, ca_zero, eps_t)
        gbar = ck * (ss[k] - _call("bwd_z_c", c, w, m, a_pos, a_neg, eps_t)) / d
    return gbar


def backward_fixed_cols_compiled(
    c: Tensor, w: Tensor, m: Tensor, cc: Tensor, eps: float, gc: Tensor | None, gw: Tensor | None
) -> None:
    """Straight-through backward in the column layout (``m``, ``cc`` (b, o, L)): adds to ``gc`` / ``gw``."""
    c, w, m, cc = _plain(c), _plain(w), m.contiguous(), cc.contiguous()
    eps_t = torch.tensor(eps, dtype=c.dtype, device=c.device)
    if gc is not None:
        gc += _call("st_x_c", c, w, m, cc, eps_t)
    if gw is not None:
        gw += _call("st_w_c", c, w, m, cc, eps_t)
