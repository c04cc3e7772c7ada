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

from torchrobust.nn.nrpm_irls import irls_fixed, irls_reverse, irls_step

__all__ = ["compiler_available", "forward_compiled", "backward_compiled", "backward_fixed_compiled",
           "compile_seconds"]

logger = logging.getLogger(__name__)

#: Elements of ``x`` per row block in the ∂L/∂W kernel (a block stays in the L2 cache while all outputs use it).
_W_GRAD_ROWS = 1 << 16


def _k_fwd(x: Tensor, w: Tensor, m: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    return irls_step(x, w, m, eps)


def _k_bwd_z(x: Tensor, w: Tensor, m: Tensor, delta: Tensor, c: Tensor, eps: Tensor) -> Tensor:
    return irls_reverse(x, w, m, delta, c, eps)[0].sum(-1)


def _k_bwd_x(x: Tensor, w: Tensor, m: Tensor, delta: Tensor, c: Tensor, eps: Tensor) -> Tensor:
    return (irls_reverse(x, w, m, delta, c, eps)[1] * w).sum(1)


def _k_bwd_w(x: Tensor, w: Tensor, m: Tensor, delta: Tensor, c: Tensor, eps: Tensor) -> Tensor:
    return (irls_reverse(x, w, m, delta, c, eps)[1] * x.unsqueeze(1)).sum(0)


def _k_st_x(x: Tensor, w: Tensor, m: Tensor, c: Tensor, eps: Tensor) -> Tensor:
    return (irls_fixed(x, w, m, c, eps) * w).sum(1)


def _k_st_w(x: Tensor, w: Tensor, m: Tensor, c: Tensor, eps: Tensor) -> Tensor:
    return (irls_fixed(x, w, m, c, eps) * x.unsqueeze(1)).sum(0)


_KERNELS: dict[str, Callable[..., Any]] = {"fwd": _k_fwd, "bwd_z": _k_bwd_z, "bwd_x": _k_bwd_x, "bwd_w": _k_bwd_w,
                                          "st_x": _k_st_x, "st_w": _k_st_w}
_COMPILED: dict[tuple[Any, ...], Callable[..., Any]] = {}
_COMPILER_OK: dict[str, bool] = {}
#: Thread CPU seconds spent in first calls (compilation) per kernel key; see :func:`compile_seconds`.
_COMPILE_S: dict[tuple[Any, ...], float] = {}


def compile_seconds() -> float:
    """Thread CPU seconds this process spent in the first call of each compiled NRPM kernel (compilation)."""
    return sum(_COMPILE_S.values())


def _fresh(fn: Callable[..., Any], tag: str) -> Callable[..., Any]:
    """A copy of ``fn`` with its own code object: dynamo keeps compiled graphs (and counts recompiles) per code
    object, so one copy per cache key means each copy only ever sees one graph."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{tag}")
    new = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
    new.__qualname__ = code.co_name
    return new


def _compiled(name: str, x: Tensor, w: Tensor) -> Callable[..., Any]:
    """The compiled kernel ``name``, cached per dtype, device type and which sizes are 1 (dynamic shapes still
    specialise sizes 0/1), each key with its own code object; its first call is timed into ``_COMPILE_S``."""
    key = (name, x.dtype, x.device.type, x.shape[0] == 1, w.shape[0] == 1, x.shape[1] == 1)
    fn = _COMPILED.get(key)
    if fn is None:
        tag = "_".join(str(v).replace("torch.", "") for v in key[1:]).replace(" ", "")
        compiled = torch.compile(_fresh(_KERNELS[name], f"{len(_COMPILED)}_{tag}"), dynamic=True, fullgraph=True)

        def first_call(*args: Tensor) -> Any:
            t0 = time.thread_time()
            out = compiled(*args)
            _COMPILE_S[key] = time.thread_time() - t0
            _COMPILED[key] = compiled
            return out

        fn = first_call
        _COMPILED[key] = fn
    return fn


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
            x = torch.randn(3, 5, device=device)
            w = torch.randn(2, 5, device=device)
            m = (x @ w.T) / 5
            eps = torch.tensor(1e-3, device=device)
            got = _compiled("fwd", x, w)(x, w, m, eps)
            ref = irls_step(x, w, m, eps)
            ok = all(bool(torch.allclose(g, r, rtol=1e-4, atol=1e-4)) for g, r in zip(got, ref, strict=True))
        except Exception as exc:  # noqa: BLE001 - any compiler failure means "fall back to eager"
            logger.info("torch.compile unavailable for NRPM on %s (%s: %s); using eager", dev_type,
                        type(exc).__name__, exc)
            ok = False
        _COMPILER_OK[dev_type] = ok
    return ok


def forward_compiled(x: Tensor, w: Tensor, z0: Tensor, K: int, eps: float, keep: bool) -> tuple[Tensor, Tensor]:
    """All iterates (K+1, n, o) and normalisers (K, n, o); with ``keep=False`` only ``z⁽ᴷ⁾`` as (1, n, o)."""
    n, d = x.shape
    o = w.shape[0]
    x, w = _plain(x), _plain(w)
    step = _compiled("fwd", x, w)
    eps_t = torch.tensor(eps, dtype=x.dtype, device=x.device)
    zs = x.new_empty((K + 1 if keep else 1, n, o))
    ss = x.new_empty((K if keep else 0, n, o))
    z = z0
    if keep:
        zs[0] = z0
    for k in range(K):
        sk, tk = step(x, w, z / d, eps_t)
        z = torch.addcdiv(z, tk, sk, value=d)
        if keep:
            zs[k + 1] = z
            ss[k] = sk
    if not keep:
        zs[0] = z
    return zs, ss


def backward_compiled(
    x: Tensor, w: Tensor, zs: Tensor, ss: Tensor, g_last: Tensor, eps: float, gx: Tensor | None, gw: Tensor | None
) -> Tensor:
    """Reverse sweep with the compiled step kernels: returns ``ḡ_0`` and adds the direct terms to ``gx`` / ``gw``."""
    n, d = x.shape
    x, w = _plain(x), _plain(w)
    step_z = _compiled("bwd_z", x, w)
    step_x = _compiled("bwd_x", x, w) if gx is not None else None
    step_w = _compiled("bwd_w", x, w) if gw is not None else None
    eps_t = torch.tensor(eps, dtype=x.dtype, device=x.device)
    rb = max(16, _W_GRAD_ROWS // max(d, 1))
    gbar = g_last
    for k in range(ss.shape[0] - 1, -1, -1):
        c = gbar * d / ss[k]
        m = zs[k] / d
        delta = m - zs[k + 1] / d
        if gx is not None and step_x is not None:
            gx += step_x(x, w, m, delta, c, eps_t)
        if gw is not None and step_w is not None:
            # reduction over rows, on row blocks that stay in cache (one pass over all rows per output unit
            # would stream x from memory o times)
            for i in range(0, n, rb):
                gw += step_w(x[i : i + rb], w, m[i : i + rb], delta[i : i + rb], c[i : i + rb], eps_t)
        gbar = c * step_z(x, w, m, delta, c, eps_t) / d
    return gbar


def backward_fixed_compiled(
    x: Tensor, w: Tensor, m: Tensor, c: Tensor, eps: float, gx: Tensor | None, gw: Tensor | None
) -> None:
    """Straight-through backward with the compiled kernels: adds its terms to ``gx`` / ``gw``."""
    n, d = x.shape
    x, w, m = _plain(x), _plain(w), m.contiguous()
    eps_t = torch.tensor(eps, dtype=x.dtype, device=x.device)
    if gx is not None:
        gx += _compiled("st_x", x, w)(x, w, m, c, eps_t)
    if gw is not None:
        step_w = _compiled("st_w", x, w)
        rb = max(16, _W_GRAD_ROWS // max(d, 1))
        for i in range(0, n, rb):
            gw += step_w(x[i : i + rb], w, m[i : i + rb], c[i : i + rb], eps_t)
