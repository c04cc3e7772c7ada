"""Functional NRPM (Non-linear Robust Pattern Matching) with an exact, memory-bounded custom backward.

Robustness Reprogramming (Hou et al., ICLR 2025), Sec. 3.2, Algorithm 1 (hybrid architecture) and Appendix A,
Algorithm 2 (robust MLP). For one output unit with weights ``a ∈ R^D`` and input ``x ∈ R^D`` (``D`` is the
fan-in: ``in_features`` for a linear layer, ``C_in/groups · kh · kw`` over an unfolded, zero-padded patch for a
convolution), with products ``p_d = a_d x_d``::

    z⁽⁰⁾ = z_LPM = Σ_d p_d
    repeat K times:  w_d = 1 / (|p_d − z/D| + ε),   z ← D · Σ_d w_d p_d / Σ_d w_d        (IRLS step, eq. 7)
    output = λ · z_LPM + (1 − λ) · z⁽ᴷ⁾ + bias

λ weights the *linear* part (λ = 1 is the original layer). ε is the damping of Algorithm 2 (absent from
Algorithm 1); it caps every weight at 1/ε.

Gradients. As in the paper's code, the IRLS weights are differentiated through (white-box through all K
iterations). :class:`_NRPMCore` is a ``torch.autograd.Function`` whose backward is the hand-derived reverse sweep
of the unrolled loop; it equals autograd through the loop (``backend="reference"``) to rounding. The backward
saves only ``x``, ``W`` and the iterates ``z⁽ᵏ⁾`` and normalisers ``Σ_d w_d`` per output (``O(N·D_out·K)``) and
recomputes the products. Derivation, with ``c_k = ḡ_{k+1} · D / S_k``, ``u`` the unnormalised weights at step
``k``, ``s_d = sign(p_d − z⁽ᵏ⁾/D)`` and ``q_d = (p_d − z⁽ᵏ⁺¹⁾/D) u_d² s_d``::

    ∂L/∂p_d  +=  c_k (u_d − q_d)          ḡ_k = ∂L/∂z⁽ᵏ⁾ = (c_k / D) Σ_d q_d        (k = K−1 … 0)
    ∂L/∂p_d  +=  ḡ_0 + ∂L/∂z_LPM      (through z_LPM = Σ_d p_d)

and ``∂L/∂x_{n,d} = Σ_o ∂L/∂p_{n,o,d} W_{o,d}``, ``∂L/∂W_{o,d} = Σ_n ∂L/∂p_{n,o,d} x_{n,d}``. The non-smooth
point ``p_d = z/D`` uses ``sign(0) = 0``, the same subgradient autograd uses for ``abs``.

Backends. The full product tensor ``N × D_out × D`` (paper code; 4.8 GB for one 64→64 3×3 conv at batch 32
on 32×32) is never materialised except by ``backend="reference"``:

* ``"eager"`` — plain PyTorch, chunked over rows and output units so the live temporaries stay bounded
  (about ``_EAGER_CHUNK`` elements each); the K steps of a chunk run back to back on the same products.
* ``"compiled"`` — ``torch.compile`` (inductor: C++ on CPU, Triton on CUDA) of one IRLS step (forward) and of
  the three reductions of one reverse step (∂/∂z over the fan-in, ∂/∂x over output units, ∂/∂W over rows),
  each one fused loop nest per output so products, residuals and weights stay in registers and only per-output
  sums reach memory. One kernel per step, not a K-unrolled graph, and the three reverse reductions separate:
  in a single graph inductor stores the shared (N, D_out, D) terms, which is slower and breaks the memory bound.
  Shapes are dynamic (``dynamic=True``) and kernels are cached per dtype / device / size-1 pattern, each cache
  entry with its own code object (:func:`_compiled`), so one model with many layer shapes and batch sizes
  compiles each kernel once and never reaches dynamo's recompile limit. Inputs are passed as plain, contiguous
  tensors (dynamo specialises ``nn.Parameter`` shapes).
* ``"auto"`` — ``"compiled"`` when a compiler works on this machine and the problem is large enough to repay
  compilation (``≥ _COMPILE_MIN_WORK`` products per iteration), else ``"eager"``.
* ``"reference"`` — autograd through the unrolled loop on the full product tensor, as in the paper's code. For
  tests and small problems only.

Convolutions (:class:`_NRPMConvCore`) unfold the input one batch block at a time (``_CONV_COLS_CHUNK``) and
treat every output pixel as a row of the linear core; the backward unfolds each block again and folds the patch
gradients back, so the unfolded input is never stored. Without autograd (``torch.no_grad()`` or nothing requires
grad) only the last iterate is kept.

Double backward (e.g. ``create_graph=True``) is not supported by the fast backends; use ``"reference"``.

BPDA surrogate (``straight_through=True``). Differentiating through the K reweighting steps is ill-conditioned
(the weights ``1/(|r| + ε)`` have curvature ``~1/ε²``), which can mask gradients (Athalye, Carlini & Wagner 2018,
Sec. 4.1). With ``straight_through=True`` the forward pass is unchanged (bit for bit: the same code runs) and the
backward treats the normalised weights of the final IRLS step, ``u_d = w_d / Σ_e w_e`` with ``w`` computed at
``z⁽ᴷ⁻¹⁾``, as constants. Then ``z⁽ᴷ⁾ = D Σ_d u_d p_d`` is linear in the products and, for the hybrid
``z = λ Σ_d p_d + (1−λ) D Σ_d u_d p_d``::

    ∂z/∂p_d = λ + (1 − λ) · D · u_d,     ∂L/∂x_{n,d} = Σ_o ∂L/∂p_{n,o,d} W_{o,d},   ∂L/∂W_{o,d} likewise with x

(the gradient to λ is unchanged: ``z_LPM − z⁽ᴷ⁾``). The fast backends keep only ``z⁽ᴷ⁻¹⁾`` and ``Σ_d w_d`` of
the last step (``O(N·D_out)``, not ``O(N·D_out·K)``) and compute the reductions chunked (eager) or as fused
kernels (compiled), never the full product tensor; ``"reference"`` detaches the weights in the unrolled loop.
The NRPM layers expose this as the BPDA protocol of :mod:`torchrobust.nn.forged` (``bpda_surrogate =
"irls_fixed"``, switched by ``bpda_mode``).
"""

from __future__ import annotations

import logging
import math
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from torchrobust.errors import TorchRobustError

__all__ = ["nrpm_linear", "nrpm_conv2d", "BACKENDS", "compiler_available"]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "compiled", "eager", "reference")

#: Elements in one eager chunk temporary (rows × output units × fan-in); a handful are alive at once.
_EAGER_CHUNK = 1 << 18
#: Elements of unfolded input per batch block of a convolution (the patches are never unfolded for the whole batch).
_CONV_COLS_CHUNK = 1 << 19
#: Elements of ``x`` per row block in the compiled ∂L/∂W kernel (a block stays in the L2 cache).
_W_GRAD_ROWS = 1 << 16
#: ``backend="auto"`` compiles only problems with at least this many products per IRLS iteration.
_COMPILE_MIN_WORK = 1 << 16


# ----------------------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------------------
def _check_hparams(K: int, eps: float, backend: str) -> None:
    if isinstance(K, bool) or not isinstance(K, int) or K < 0:
        raise TorchRobustError(f"NRPM K={K!r} is invalid; pass a non-negative int number of IRLS steps (e.g. K=3)")
    if not isinstance(eps, (int, float)) or not math.isfinite(float(eps)) or float(eps) <= 0:
        raise TorchRobustError(f"NRPM eps={eps!r} is invalid; pass a positive finite float (e.g. eps=1e-3)")
    if backend not in BACKENDS:
        raise TorchRobustError(f"unknown NRPM backend {backend!r}; valid: {', '.join(BACKENDS)}")


def _as_lam(lam: float | Tensor, ref: Tensor) -> Tensor:
    if isinstance(lam, Tensor):
        if lam.numel() != 1:
            raise TorchRobustError(f"NRPM lam must be a scalar, got shape {tuple(lam.shape)}; pass one value")
        return lam.reshape(()).to(dtype=ref.dtype, device=ref.device) if lam.dtype != ref.dtype or \
            lam.device != ref.device else lam.reshape(())
    lam_f = float(lam)
    if not (0.0 <= lam_f <= 1.0):
        raise TorchRobustError(f"NRPM lam={lam_f} is outside [0, 1]; pass the weight of the linear part in [0, 1]")
    return torch.tensor(lam_f, dtype=ref.dtype, device=ref.device)


# ----------------------------------------------------------------------------------------------------------
# chunk kernels (pure tensor code: run as-is by the eager backend, through torch.compile by the compiled one)
# ----------------------------------------------------------------------------------------------------------
def _fwd_chunk(x: Tensor, w: Tensor, z0: Tensor, K: int, eps: float) -> tuple[Tensor, Tensor]:
    """IRLS iterates for rows ``x`` (n, D) and weights ``w`` (o, D) from ``z0`` (n, o).

    Returns ``zs`` (K, n, o) = z⁽¹⁾…z⁽ᴷ⁾ and ``ss`` (K, n, o) = Σ_d u_d at steps 0…K−1.
    """
    D = x.shape[-1]
    p = x[:, None, :] * w[None, :, :]
    z = z0
    zs = []
    ss = []
    for _ in range(K):
        u = 1.0 / ((p - z[..., None] / D).abs() + eps)
        s = u.sum(-1)
        z = D * (u * p).sum(-1) / s
        zs.append(z)
        ss.append(s)
    return torch.stack(zs), torch.stack(ss)


def _bwd_chunk(
    x: Tensor, w: Tensor, zs: Tensor, ss: Tensor, g_last: Tensor, eps: float, need_x: bool, need_w: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Reverse sweep for one chunk.

    ``zs`` (K+1, n, o) holds z⁽⁰⁾…z⁽ᴷ⁾, ``ss`` (K, n, o) the normalisers, ``g_last`` (n, o) = ∂L/∂z⁽ᴷ⁾. Returns
    ``ḡ_0`` (n, o) — the gradient reaching z⁽⁰⁾ through the IRLS chain — and the contributions of the
    per-element terms to ∂L/∂x (n, D) and ∂L/∂W (o, D). (The ``ḡ_0`` / z_LPM terms are matmuls, done by the
    caller.)
    """
    D = x.shape[-1]
    K = ss.shape[0]
    p = x[:, None, :] * w[None, :, :]
    gbar = g_last
    gp = None
    for k in range(K - 1, -1, -1):
        c = gbar * D / ss[k]
        diff = p - zs[k][..., None] / D
        u = 1.0 / (diff.abs() + eps)
        q = (p - zs[k + 1][..., None] / D) * (u * u) * torch.sign(diff)
        term = c[..., None] * (u - q)
        gp = term if gp is None else gp + term
        gbar = c * q.sum(-1) / D
    gx = (gp * w[None, :, :]).sum(1) if need_x and gp is not None else None
    gw = (gp * x[:, None, :]).sum(0) if need_w and gp is not None else None
    return gbar, gx, gw


def _st_chunk(
    x: Tensor, w: Tensor, m: Tensor, c: Tensor, eps: float, need_x: bool, need_w: bool
) -> tuple[Tensor | None, Tensor | None]:
    """Straight-through (IRLS weights held constant) terms for one chunk: with ``m = z⁽ᴷ⁻¹⁾/D`` (n, o) and
    ``c = ∂L/∂z⁽ᴷ⁾ · D / Σ_d w_d`` (n, o), ``∂L/∂p_d = c · w_d`` with ``w_d = 1/(|p_d − m| + ε)``; returns its
    reductions to ∂L/∂x (n, D) and ∂L/∂W (o, D)."""
    t = c[..., None] / ((x[:, None, :] * w[None, :, :] - m[..., None]).abs() + eps)
    gx = (t * w[None, :, :]).sum(1) if need_x else None
    gw = (t * x[:, None, :]).sum(0) if need_w else None
    return gx, gw


# ----------------------------------------------------------------------------------------------------------
# compiled kernels: one IRLS step per call (a K-unrolled graph makes inductor fuse badly), each a single fused
# loop nest per output, so the (n, o, D) products never reach memory.
# ----------------------------------------------------------------------------------------------------------
def _fwd_step(x: Tensor, w: Tensor, m: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """One IRLS step (eq. 7) around ``m = z/D`` (n, o): returns ``(Σ_d u_d, Σ_d u_d (p_d − m))``.

    With ``diff = p − m`` (one fused multiply-add per element) the update is ``z ← z + D·Σ u·diff / Σ u``,
    algebraically the same as ``D·Σ u p / Σ u`` with one operation less per element.
    """
    diff = x[:, None, :] * w[None, :, :] - m[..., None]
    u = 1.0 / (diff.abs() + eps)
    return u.sum(-1), (u * diff).sum(-1)


def _bwd_terms(x: Tensor, w: Tensor, m: Tensor, delta: Tensor, c: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """Per-element terms of the reverse of one step: ``(q, c·(u − q))`` on the (n, o, D) grid, where
    ``q = (p − z⁽ᵏ⁺¹⁾/D)·u²·sign(p − z⁽ᵏ⁾/D)``; ``m = z⁽ᵏ⁾/D`` and ``delta = (z⁽ᵏ⁾ − z⁽ᵏ⁺¹⁾)/D``."""
    diff = x[:, None, :] * w[None, :, :] - m[..., None]
    u = 1.0 / (diff.abs() + eps)
    q = (diff + delta[..., None]) * (u * u) * torch.sign(diff)
    return q, c[..., None] * (u - q)


# The three reductions of one reverse step are separate kernels: in one graph inductor stores the shared
# (n, o, D) terms in memory, which is exactly what must not happen (and is slower than recomputing them).
def _bwd_step_z(x: Tensor, w: Tensor, m: Tensor, delta: Tensor, c: Tensor, eps: Tensor) -> Tensor:
    """``Σ_d q_d`` (reduction over the fan-in); ``∂L/∂z⁽ᵏ⁾ = c/D · Σ_d q_d``."""
    q, _ = _bwd_terms(x, w, m, delta, c, eps)
    return q.sum(-1)


def _bwd_step_x(x: Tensor, w: Tensor, m: Tensor, delta: Tensor, c: Tensor, eps: Tensor) -> Tensor:
    """This step's direct ``∂L/∂x = Σ_o c (u − q) W`` (reduction over output units)."""
    _, t = _bwd_terms(x, w, m, delta, c, eps)
    return (t * w[None, :, :]).sum(1)


def _bwd_step_w(x: Tensor, w: Tensor, m: Tensor, delta: Tensor, c: Tensor, eps: Tensor) -> Tensor:
    """This step's direct ``∂L/∂W = Σ_n c (u − q) x`` (reduction over rows)."""
    _, t = _bwd_terms(x, w, m, delta, c, eps)
    return (t * x[:, None, :]).sum(0)


def _st_step_x(x: Tensor, w: Tensor, m: Tensor, c: Tensor, eps: Tensor) -> Tensor:
    """Straight-through ``∂L/∂x = Σ_o c · W / (|p − m| + ε)`` (IRLS weights held constant; reduction over outputs)."""
    t = c[..., None] / ((x[:, None, :] * w[None, :, :] - m[..., None]).abs() + eps)
    return (t * w[None, :, :]).sum(1)


def _st_step_w(x: Tensor, w: Tensor, m: Tensor, c: Tensor, eps: Tensor) -> Tensor:
    """Straight-through ``∂L/∂W = Σ_n c · x / (|p − m| + ε)`` (IRLS weights held constant; reduction over rows)."""
    t = c[..., None] / ((x[:, None, :] * w[None, :, :] - m[..., None]).abs() + eps)
    return (t * x[:, None, :]).sum(0)


_COMPILED: dict[tuple[Any, ...], Callable[..., Any]] = {}
_COMPILER_OK: dict[str, bool] = {}


def _fresh(fn: Callable[..., Any], tag: str) -> Callable[..., Any]:
    """A copy of ``fn`` with its own code object: dynamo keeps compiled graphs (and counts recompiles) per code
    object, so one copy per cache key means each copy only ever sees one graph."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{tag}")
    new = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
    new.__qualname__ = code.co_name
    return new


def _compiled(name: str, x: Tensor, w: Tensor) -> Callable[..., Any]:
    """The compiled step kernel ``name`` ("fwd", "bwd_z", "bwd_x", "bwd_w", "st_x", "st_w").

    Cached per dtype, device type and which sizes are 1 (dynamic shapes still specialise sizes 0/1), each key with
    its own code object, so dynamo never recompiles one function for another shape class and its recompile limit
    is never reached."""
    key = (name, x.dtype, x.device.type, x.shape[0] == 1, w.shape[0] == 1, x.shape[1] == 1)
    fn = _COMPILED.get(key)
    if fn is None:
        base = {"fwd": _fwd_step, "bwd_z": _bwd_step_z, "bwd_x": _bwd_step_x, "bwd_w": _bwd_step_w,
                "st_x": _st_step_x, "st_w": _st_step_w}[name]
        tag = "_".join(str(v).replace("torch.", "") for v in key[1:]).replace(" ", "")
        fn = torch.compile(_fresh(base, f"{len(_COMPILED)}_{tag}"), dynamic=True, fullgraph=True)
        _COMPILED[key] = fn
    return fn


def _plain(t: Tensor) -> Tensor:
    """``t`` as a plain, row-major tensor: dynamo treats ``nn.Parameter`` inputs as static-shaped (and views
    through their base), which would specialise the compiled kernels to one layer's shape; and a kernel compiled
    for one stride order is slow for the other (the fan-in must be the contiguous, vectorised axis)."""
    t = t.detach().contiguous()
    return t if t._base is None else t.clone()


def compiler_available(device: torch.device | str = "cpu") -> bool:
    """Whether ``torch.compile`` (inductor) works for NRPM on ``device``'s type; probed once per process."""
    dev_type = torch.device(device).type
    ok = _COMPILER_OK.get(dev_type)
    if ok is None:
        try:
            x = torch.randn(3, 5, device=device)
            w = torch.randn(2, 5, device=device)
            m = (x @ w.T) / 5
            eps = torch.tensor(1e-3, device=device)
            got = _compiled("fwd", x, w)(x, w, m, eps)
            ref = _fwd_step(x, w, m, eps)
            ok = all(bool(torch.allclose(g, r, rtol=1e-4, atol=1e-4)) for g, r in zip(got, ref, strict=True))
        except Exception as exc:  # noqa: BLE001 - any compiler failure means "fall back to eager"
            logger.info("torch.compile unavailable for NRPM on %s (%s: %s); using eager", dev_type,
                        type(exc).__name__, exc)
            ok = False
        _COMPILER_OK[dev_type] = ok
    return ok


def _resolve_backend(backend: str, device: torch.device, work: int, dtype: torch.dtype = torch.float32) -> str:
    """The backend to run; ``work`` is the number of products per IRLS iteration (rows × outputs × fan-in).

    ``"auto"`` compiles only float32/float64 (the dtypes the compiled kernels are tested with)."""
    if backend != "auto":
        if backend == "compiled" and not compiler_available(device):
            raise TorchRobustError(
                f"NRPM backend='compiled' but torch.compile does not work on {device.type} here; "
                "use backend='eager' or 'auto'"
            )
        return backend
    if dtype in (torch.float32, torch.float64) and work >= _COMPILE_MIN_WORK and compiler_available(device):
        return "compiled"
    return "eager"


# ----------------------------------------------------------------------------------------------------------
# chunk drivers
# ----------------------------------------------------------------------------------------------------------
def _blocks(n: int, o: int, d: int, budget: int) -> tuple[int, int]:
    """Row and output-unit block sizes with ``bn · bo · d ≲ budget``: whole rows of ``o`` preferred."""
    per_row = o * d
    if per_row <= budget:
        return max(1, min(n, budget // per_row)), o
    return 1, max(1, min(o, budget // max(d, 1)))


def _forward_all(
    x: Tensor, w: Tensor, z0: Tensor, K: int, eps: float, backend: str, keep: bool = True
) -> tuple[Tensor, Tensor]:
    """All iterates ``zs`` (K+1, n, o) (``zs[0] = z0``) and normalisers ``ss`` (K, n, o).

    With ``keep=False`` (no backward will follow) only ``z⁽ᴷ⁾`` is returned, as ``zs`` of shape (1, n, o), and
    ``ss`` is empty: the per-step buffers are not kept.
    """
    n, d = x.shape
    o = w.shape[0]
    if K == 0:
        return z0[None], x.new_empty((0, n, o))
    if backend == "compiled":
        x, w = _plain(x), _plain(w)
        step = _compiled("fwd", x, w)
        eps_t = torch.tensor(eps, dtype=x.dtype, device=x.device)
        zs = x.new_empty((K + 1, n, o)) if keep else None
        ss = x.new_empty((K, n, o)) if keep else x.new_empty((0, n, o))
        z = z0
        if zs is not None:
            zs[0] = z0
        for k in range(K):
            sk, tk = step(x, w, z / d, eps_t)
            z = torch.addcdiv(z, tk, sk, value=d)
            if zs is not None:
                zs[k + 1] = z
                ss[k] = sk
        return (zs, ss) if zs is not None else (z[None], ss)
    zs = x.new_empty((K + 1 if keep else 1, n, o))
    ss = x.new_empty((K if keep else 0, n, o))
    if keep:
        zs[0] = z0
    bn, bo = _blocks(n, o, d, _EAGER_CHUNK)
    for i in range(0, n, bn):
        for j in range(0, o, bo):
            zk, sk = _fwd_chunk(x[i : i + bn], w[j : j + bo], z0[i : i + bn, j : j + bo], K, eps)
            if keep:
                zs[1:, i : i + bn, j : j + bo] = zk
                ss[:, i : i + bn, j : j + bo] = sk
            else:
                zs[0, i : i + bn, j : j + bo] = zk[-1]
    return zs, ss


def _backward_all(
    x: Tensor, w: Tensor, zs: Tensor, ss: Tensor, g_last: Tensor, eps: float, backend: str,
    need_x: bool, need_w: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Reverse sweep: ``(ḡ_0, Σ direct ∂L/∂x terms, Σ direct ∂L/∂W terms)`` (the ḡ_0 matmuls are the caller's)."""
    n, d = x.shape
    o = w.shape[0]
    K = ss.shape[0]
    gx = torch.zeros_like(x) if need_x else None
    gw = torch.zeros_like(w) if need_w else None
    if K == 0:
        return g_last.clone(), gx, gw
    if backend == "compiled":
        x, w = _plain(x), _plain(w)
        step_z = _compiled("bwd_z", x, w)
        step_x = _compiled("bwd_x", x, w) if need_x else None
        step_w = _compiled("bwd_w", x, w) if need_w else None
        eps_t = torch.tensor(eps, dtype=x.dtype, device=x.device)
        gbar = g_last
        for k in range(K - 1, -1, -1):
            c = gbar * d / ss[k]
            m = zs[k] / d
            delta = m - zs[k + 1] / d
            if gx is not None and step_x is not None:
                gx += step_x(x, w, m, delta, c, eps_t)
            if gw is not None and step_w is not None:
                # reduction over rows: blocks of rows that stay in cache (one pass over all rows per output unit
                # would stream x from memory o times)
                rb = max(16, _W_GRAD_ROWS // max(d, 1))
                for i in range(0, n, rb):
                    gw += step_w(x[i : i + rb], w, m[i : i + rb], delta[i : i + rb], c[i : i + rb], eps_t)
            gbar = c * step_z(x, w, m, delta, c, eps_t) / d
        return gbar, gx, gw
    g0 = torch.zeros_like(g_last)
    bn, bo = _blocks(n, o, d, _EAGER_CHUNK)
    for i in range(0, n, bn):
        for j in range(0, o, bo):
            gb, gxc, gwc = _bwd_chunk(
                x[i : i + bn], w[j : j + bo], zs[:, i : i + bn, j : j + bo], ss[:, i : i + bn, j : j + bo],
                g_last[i : i + bn, j : j + bo], eps, need_x, need_w,
            )
            g0[i : i + bn, j : j + bo] = gb
            if gx is not None and gxc is not None:
                gx[i : i + bn] += gxc
            if gw is not None and gwc is not None:
                gw[j : j + bo] += gwc
    return g0, gx, gw


def _backward_fixed(
    x: Tensor, w: Tensor, z_prev: Tensor, s_prev: Tensor, g_last: Tensor, eps: float, backend: str,
    need_x: bool, need_w: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Straight-through backward of ``z⁽ᴷ⁾ = D Σ_d u_d p_d`` with the last IRLS weights held constant.

    ``z_prev`` = z⁽ᴷ⁻¹⁾ and ``s_prev`` = Σ_d w_d of the last step, both (n, o). Returns ``(0, ∂L/∂x, ∂L/∂W)``
    (nothing reaches z⁽⁰⁾: the weights are constants), in the layout of :func:`_backward_all`."""
    n, d = x.shape
    o = w.shape[0]
    gx = torch.zeros_like(x) if need_x else None
    gw = torch.zeros_like(w) if need_w else None
    m = z_prev / d
    c = (g_last * d / s_prev).contiguous()
    if backend == "compiled":
        x, w = _plain(x), _plain(w)
        m = m.contiguous()
        eps_t = torch.tensor(eps, dtype=x.dtype, device=x.device)
        if gx is not None:
            gx += _compiled("st_x", x, w)(x, w, m, c, eps_t)
        if gw is not None:
            step_w = _compiled("st_w", x, w)
            rb = max(16, _W_GRAD_ROWS // max(d, 1))
            for i in range(0, n, rb):
                gw += step_w(x[i : i + rb], w, m[i : i + rb], c[i : i + rb], eps_t)
        return torch.zeros_like(g_last), gx, gw
    bn, bo = _blocks(n, o, d, _EAGER_CHUNK)
    for i in range(0, n, bn):
        for j in range(0, o, bo):
            gxc, gwc = _st_chunk(x[i : i + bn], w[j : j + bo], m[i : i + bn, j : j + bo],
                                 c[i : i + bn, j : j + bo], eps, need_x, need_w)
            if gx is not None and gxc is not None:
                gx[i : i + bn] += gxc
            if gw is not None and gwc is not None:
                gw[j : j + bo] += gwc
    return torch.zeros_like(g_last), gx, gw


def _core_backward(
    x: Tensor, w: Tensor, zs: Tensor, ss: Tensor, g_lpm: Tensor | None, g_last: Tensor | None, eps: float,
    backend: str, need_x: bool, need_w: bool, fixed: bool = False,
) -> tuple[Tensor | None, Tensor | None]:
    """∂L/∂x (n, D) and ∂L/∂W (o, D) from the output gradients of (z_LPM, z⁽ᴷ⁾).

    ``fixed`` (straight-through): ``zs`` (1, n, o) holds z⁽ᴷ⁻¹⁾ and ``ss`` (1, n, o) the last normaliser, and the
    IRLS weights are held constant (:func:`_backward_fixed`)."""
    if g_last is None:
        g_last = torch.zeros_like(zs[0])
    if fixed:
        g0, gx, gw = _backward_fixed(x, w, zs[0], ss[0], g_last.contiguous(), eps, backend, need_x, need_w)
    else:
        g0, gx, gw = _backward_all(x, w, zs, ss, g_last.contiguous(), eps, backend, need_x, need_w)
    g_total = g0 if g_lpm is None else g0 + g_lpm
    if need_x:
        gx = g_total @ w if gx is None else gx.addmm_(g_total, w)
    if need_w:
        gw = g_total.T @ x if gw is None else gw.addmm_(g_total.T, x)
    return gx, gw


class _NRPMCore(torch.autograd.Function):
    """``(x (N, D), W (O, D)) ↦ (z_LPM, z⁽ᴷ⁾)``, both (N, O), with the hand-derived backward (exact, or with the
    last IRLS weights held constant when ``fixed``; K ≥ 1)."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, w: Tensor, K: int, eps: float, backend: str, fixed: bool = False
    ) -> tuple[Tensor, Tensor]:
        x = x.contiguous()
        w = w.contiguous()
        z0 = x @ w.T
        zs, ss = _forward_all(x, w, z0, K, eps, backend)
        zk = zs[K].clone()
        if fixed:  # only the last step is needed: z⁽ᴷ⁻¹⁾ and its normaliser
            zs, ss = zs[K - 1 : K].clone(), ss[K - 1 : K].clone()
        ctx.save_for_backward(x, w, zs, ss)
        ctx.eps = eps
        ctx.backend = backend
        ctx.fixed = fixed
        return z0, zk

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g_lpm: Tensor | None, g_last: Tensor | None) -> tuple[Tensor | None, ...]:
        x, w, zs, ss = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gx, gw = _core_backward(x, w, zs, ss, g_lpm, g_last, ctx.eps, ctx.backend, need_x, need_w, ctx.fixed)
        return gx if need_x else None, gw if need_w else None, None, None, None, None


@dataclass(frozen=True)
class _ConvGeom:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    size: tuple[int, int]  # input H, W
    L: int  # output pixels per image


def _conv_batch_block(x: Tensor, geom: _ConvGeom) -> int:
    per_image = geom.L * x.shape[1] * geom.kernel[0] * geom.kernel[1]
    return max(1, min(x.shape[0], _CONV_COLS_CHUNK // max(per_image, 1)))


def _conv_rows(x: Tensor, geom: _ConvGeom, g: int) -> Tensor:
    """Unfolded patches of group ``g`` as rows (b·L, D), channel-major (c, kh, kw) like ``F.unfold``."""
    cols = F.unfold(x, geom.kernel, dilation=geom.dilation, padding=geom.padding, stride=geom.stride)
    b = x.shape[0]
    D = cols.shape[1] // geom.groups
    return cols.view(b, geom.groups, D, geom.L)[:, g].transpose(1, 2).reshape(b * geom.L, D).contiguous()


def _conv_forward(
    x: Tensor, w: Tensor, geom: _ConvGeom, K: int, eps: float, backend: str, keep: bool
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
            rows = _conv_rows(xb, geom, g)
            wgg = wg[g].contiguous()
            z0 = rows @ wgg.T
            zs, ss = _forward_all(rows, wgg, z0, K, eps, backend, keep=keep)
            sl = slice(g * og, (g + 1) * og)
            z0_all[b0 : b0 + nb, :, sl] = z0.view(nb, geom.L, og)
            zk_all[b0 : b0 + nb, :, sl] = zs[-1].view(nb, geom.L, og)
            if keep:
                zs_all[:, b0 : b0 + nb, :, sl] = zs.view(K + 1, nb, geom.L, og)
                ss_all[:, b0 : b0 + nb, :, sl] = ss.view(K, nb, geom.L, og)
    return z0_all, zk_all, zs_all, ss_all


class _NRPMConvCore(torch.autograd.Function):
    """``(x (B, C, H, W), W (C_out, C/G, kh, kw)) ↦ (z_LPM, z⁽ᴷ⁾)`` as (B, L, C_out), hand-derived backward.

    Saves only ``x``, ``W`` and the per-output iterates; the backward unfolds each batch block again and folds
    the patch gradients back (``F.fold``), so the unfolded input is never stored."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, w: Tensor, geom: _ConvGeom, K: int, eps: float, backend: str, fixed: bool = False
    ) -> tuple[Tensor, Tensor]:
        z0, zk, zs, ss = _conv_forward(x, w, geom, K, eps, backend, keep=True)
        if fixed:  # straight-through: only z⁽ᴷ⁻¹⁾ and the last normaliser are needed
            zs, ss = zs[K - 1 : K].clone(), ss[K - 1 : K].clone()
        ctx.save_for_backward(x, w, zs, ss)
        ctx.geom, ctx.eps, ctx.backend, ctx.fixed = geom, eps, backend, fixed
        return z0, zk

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g_lpm: Tensor | None, g_last: Tensor | None) -> tuple[Tensor | None, ...]:
        x, w, zs_all, ss_all = ctx.saved_tensors
        geom: _ConvGeom = ctx.geom
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
                rows = _conv_rows(xb, geom, g)
                sl = slice(g * og, (g + 1) * og)
                zs = zs_all[:, b0 : b0 + nb, :, sl].reshape(nz, nb * geom.L, og)
                ss = ss_all[:, b0 : b0 + nb, :, sl].reshape(K, nb * geom.L, og)
                glp = None if g_lpm is None else g_lpm[b0 : b0 + nb, :, sl].reshape(nb * geom.L, og)
                gla = None if g_last is None else g_last[b0 : b0 + nb, :, sl].reshape(nb * geom.L, og)
                gxg, gwg = _core_backward(rows, wg[g].contiguous(), zs, ss, glp, gla, ctx.eps, ctx.backend,
                                          need_x, need_w, ctx.fixed)
                if gcols is not None and gxg is not None:
                    gcols[:, g] = gxg.view(nb, geom.L, D).transpose(1, 2)
                if gw is not None and gwg is not None:
                    gw[g] += gwg
            if gx is not None and gcols is not None:
                gx[b0 : b0 + nb] = F.fold(gcols.view(nb, G * D, geom.L), geom.size, geom.kernel,
                                          dilation=geom.dilation, padding=geom.padding, stride=geom.stride)
        return gx, gw.view_as(w) if gw is not None else None, None, None, None, None, None


def _reference_core(x: Tensor, w: Tensor, K: int, eps: float, fixed: bool = False) -> tuple[Tensor, Tensor]:
    """Autograd through the unrolled loop on the full product tensor (the paper's code, Algorithm 2).

    ``fixed``: the IRLS weights are detached (BPDA surrogate); the values are the same."""
    D = x.shape[-1]
    p = x[:, None, :] * w[None, :, :]
    z0 = x @ w.T
    z = z0
    for _ in range(K):
        u = 1.0 / ((p - z[..., None] / D).abs() + eps)
        u = u / u.sum(-1, keepdim=True)
        if fixed:
            u = u.detach()
        z = D * (u * p).sum(-1)
    return z0, z


def _needs_graph(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _core(x2: Tensor, w2: Tensor, K: int, eps: float, backend: str, fixed: bool = False) -> tuple[Tensor, Tensor]:
    backend = _resolve_backend(backend, x2.device, x2.shape[0] * w2.shape[0] * x2.shape[1], x2.dtype)
    if backend == "reference":
        return _reference_core(x2, w2, K, eps, fixed)
    if not _needs_graph(x2, w2):  # inference: keep only the last iterate
        x2, w2 = x2.contiguous(), w2.contiguous()
        z0 = x2 @ w2.T
        zs, _ = _forward_all(x2, w2, z0, K, float(eps), backend, keep=False)
        return z0, zs[0]
    return _NRPMCore.apply(x2, w2, K, float(eps), backend, bool(fixed))


def _is_plain(lam: float | Tensor, K: int) -> bool:
    """λ = 1 without a gradient to λ, or K = 0: the layer is exactly the linear one."""
    if K == 0:
        return True
    if isinstance(lam, Tensor):
        return not lam.requires_grad and bool(lam.detach().reshape(()).item() == 1.0)
    return float(lam) == 1.0


def _mix(z0: Tensor, zk: Tensor, lam: Tensor) -> Tensor:
    return lam * z0 + (1 - lam) * zk


# ----------------------------------------------------------------------------------------------------------
# public functional API
# ----------------------------------------------------------------------------------------------------------
def nrpm_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    lam: float | Tensor = 0.5,
    K: int = 3,
    eps: float = 1e-3,
    backend: str = "auto",
    straight_through: bool = False,
) -> Tensor:
    """NRPM version of :func:`torch.nn.functional.linear` (Algorithm 1 with the ε of Algorithm 2).

    Args:
        x: input ``(*, in_features)``.
        weight: ``(out_features, in_features)``.
        bias: optional ``(out_features,)``, added after the hybrid.
        lam: weight λ ∈ [0, 1] of the linear part (float or 0-d tensor; a tensor may require grad).
        K: number of IRLS steps (K = 0 is the plain layer).
        eps: damping ε > 0 of the IRLS weights ``1/(|p_d − z/D| + ε)``.
        backend: ``"auto"``, ``"compiled"``, ``"eager"`` or ``"reference"`` (see the module docstring).
        straight_through: BPDA surrogate backward with the last IRLS weights held constant (same forward value;
            see the module docstring).

    Returns:
        ``(*, out_features)``: ``λ·z_LPM + (1−λ)·z⁽ᴷ⁾ + bias``.
    """
    _check_hparams(K, eps, backend)
    if x.shape[-1] != weight.shape[-1] or weight.dim() != 2:
        raise TorchRobustError(
            f"nrpm_linear: input has {x.shape[-1]} features but weight is {tuple(weight.shape)}; "
            "pass x of shape (*, in_features) and weight (out_features, in_features)"
        )
    lam_t = _as_lam(lam, x)
    if _is_plain(lam, K):
        return F.linear(x, weight, bias)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    z0, zk = _core(x2, weight, K, eps, backend, bool(straight_through))
    out = _mix(z0, zk, lam_t)
    if bias is not None:
        out = out + bias
    return out.reshape(*lead, weight.shape[0])


def _pair(v: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(a) for a in v)
    if len(t) != 2:
        raise TorchRobustError(f"nrpm_conv2d: expected an int or a pair, got {v!r}; pass e.g. 1 or (1, 1)")
    return t  # type: ignore[return-value]


def nrpm_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    lam: float | Tensor = 0.5,
    K: int = 3,
    eps: float = 1e-3,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    backend: str = "auto",
    straight_through: bool = False,
) -> Tensor:
    """NRPM version of :func:`torch.nn.functional.conv2d` (Algorithm 1 per output pixel; Appendix A.2 unfolding).

    Every output pixel of every output channel is one robust sum over its receptive field, unfolded as
    ``F.unfold`` gives it (channel-major ``(c, kh, kw)``, zero padding included, so ``D = C_in/groups·kh·kw``).
    The bias *is* added (the paper's ``RobustConv2d`` silently drops it; pass ``bias=None`` to reproduce that).
    Only zero padding is supported (``padding`` as ints); other padding modes are for the caller to apply first.
    ``straight_through``: BPDA surrogate backward with the last IRLS weights held constant (as
    :func:`nrpm_linear`).
    """
    _check_hparams(K, eps, backend)
    if x.dim() != 4 or weight.dim() != 4:
        raise TorchRobustError(
            f"nrpm_conv2d: expected 4-D input and weight, got {tuple(x.shape)} and {tuple(weight.shape)}; "
            "pass x as (B, C, H, W)"
        )
    if isinstance(padding, str):
        raise TorchRobustError(f"nrpm_conv2d: padding={padding!r} unsupported; pass explicit ints")
    stride_, padding_, dilation_ = _pair(stride), _pair(padding), _pair(dilation)
    lam_t = _as_lam(lam, x)
    if _is_plain(lam, K):
        return F.conv2d(x, weight, bias, stride_, padding_, dilation_, groups)
    B, C, H, W = x.shape
    Cout, Cg, kh, kw = weight.shape
    if C != Cg * groups or Cout % groups != 0:
        raise TorchRobustError(
            f"nrpm_conv2d: input has {C} channels but weight {tuple(weight.shape)} with groups={groups}; "
            "pass a weight of shape (C_out, C_in/groups, kh, kw)"
        )
    Ho = (H + 2 * padding_[0] - dilation_[0] * (kh - 1) - 1) // stride_[0] + 1
    Wo = (W + 2 * padding_[1] - dilation_[1] * (kw - 1) - 1) // stride_[1] + 1
    if Ho <= 0 or Wo <= 0:
        raise TorchRobustError(f"nrpm_conv2d: input {H}x{W} is smaller than the kernel; pass a larger input")
    geom = _ConvGeom((kh, kw), stride_, padding_, dilation_, groups, (H, W), Ho * Wo)
    backend = _resolve_backend(backend, x.device, B * geom.L * Cout * Cg * kh * kw, x.dtype)
    if backend == "reference":
        z0, zk = _reference_conv(x, weight, geom, K, eps, bool(straight_through))
    elif not _needs_graph(x, weight):
        z0, zk, _, _ = _conv_forward(x, weight, geom, K, float(eps), backend, keep=False)
    else:
        z0, zk = _NRPMConvCore.apply(x, weight, geom, K, float(eps), backend, bool(straight_through))
    out = _mix(z0, zk, lam_t).transpose(1, 2).reshape(B, Cout, Ho, Wo)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def _reference_conv(
    x: Tensor, weight: Tensor, geom: _ConvGeom, K: int, eps: float, fixed: bool = False
) -> tuple[Tensor, Tensor]:
    """The paper code's unfold formulation with autograd through the loop (full product tensor); ``fixed``
    detaches the IRLS weights (BPDA surrogate)."""
    G = geom.groups
    wg = weight.reshape(G, weight.shape[0] // G, -1)
    z0s, zks = [], []
    for g in range(G):
        z0, zk = _reference_core(_conv_rows(x, geom, g), wg[g], K, eps, fixed)
        z0s.append(z0)
        zks.append(zk)
    B = x.shape[0]
    return (torch.cat(z0s, 1).view(B, geom.L, -1), torch.cat(zks, 1).view(B, geom.L, -1))
