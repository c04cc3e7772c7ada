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
iterations). :class:`torchrobust.nn.nrpm_core.NRPMCore` is a ``torch.autograd.Function`` whose backward is the
hand-derived reverse sweep of the unrolled loop; it equals autograd through the loop (``backend="reference"``) to
rounding. The backward saves only ``x``, ``W`` and the iterates ``z⁽ᵏ⁾`` and normalisers ``Σ_d w_d`` per output
(``O(N·D_out·K)``) and recomputes the products. Derivation, with ``c_k = ḡ_{k+1} · D / S_k``, ``u`` the
unnormalised weights at step ``k``, ``s_d = sign(p_d − z⁽ᵏ⁾/D)`` and ``q_d = (p_d − z⁽ᵏ⁺¹⁾/D) u_d² s_d``::

    ∂L/∂p_d  +=  c_k (u_d − q_d)          ḡ_k = ∂L/∂z⁽ᵏ⁾ = (c_k / D) Σ_d q_d        (k = K−1 … 0)
    ∂L/∂p_d  +=  ḡ_0 + ∂L/∂z_LPM      (through z_LPM = Σ_d p_d)

and ``∂L/∂x_{n,d} = Σ_o ∂L/∂p_{n,o,d} W_{o,d}``, ``∂L/∂W_{o,d} = Σ_n ∂L/∂p_{n,o,d} x_{n,d}``. The non-smooth
point ``p_d = z/D`` uses ``sign(0) = 0``, the same subgradient autograd uses for ``abs``.

Backends. The full product tensor ``N × D_out × D`` (paper code; 4.8 GB for one 64→64 3×3 conv at batch 32
on 32×32) is never materialised except by ``backend="reference"``. All backends run the same IRLS step,
written once in :mod:`torchrobust.nn.nrpm_irls`:

* ``"eager"`` (:mod:`torchrobust.nn.nrpm_eager`) — plain PyTorch on cache-sized chunks of rows × output units,
  temporaries updated in place; the K steps of a chunk run back to back. The fallback without a compiler.
* ``"compiled"`` (:mod:`torchrobust.nn.nrpm_compiled`) — ``torch.compile`` (inductor: C++ on CPU, Triton on
  CUDA) of one IRLS step (forward) and of the three reductions of one reverse step, each one fused loop nest, so
  only per-output sums reach memory. Shape-dynamic, compiled once per dtype / device per process.
* ``"auto"`` — ``"compiled"`` when a compiler works on this machine and the problem is large enough to repay
  compilation (``≥ 65536`` products per iteration), else ``"eager"``.
* ``"reference"`` (:mod:`torchrobust.nn.nrpm_reference`) — autograd through the unrolled loop on the full product
  tensor, as in the paper's code. For tests and small problems only.

Convolutions (:class:`torchrobust.nn.nrpm_core.NRPMConvCore`) unfold the input one batch block at a time and
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

import torch
import torch.nn.functional as F
from torch import Tensor

from torchrobust.errors import TorchRobustError
from torchrobust.nn.nrpm_compiled import compiler_available
from torchrobust.nn.nrpm_core import ConvGeom, NRPMConvCore, NRPMCore, conv_forward, forward_all, resolve_backend
from torchrobust.nn.nrpm_reference import reference_conv, reference_core
from torchrobust.validation import check_irls_eps, check_irls_steps, check_lam

__all__ = ["nrpm_linear", "nrpm_conv2d", "BACKENDS", "compiler_available"]

BACKENDS = ("auto", "compiled", "eager", "reference")


def _check_hparams(K: int, eps: float, backend: str) -> None:
    check_irls_steps(K)
    check_irls_eps(eps, "eps")  # the IRLS damping (called irls_eps in the layers and reprogram)
    if backend not in BACKENDS:
        raise TorchRobustError(f"unknown NRPM backend {backend!r}; valid: {', '.join(BACKENDS)}")


def _as_lam(lam: float | Tensor, ref: Tensor) -> Tensor:
    if isinstance(lam, Tensor):
        if lam.numel() != 1:
            raise TorchRobustError(f"NRPM lam must be a scalar, got shape {tuple(lam.shape)}; pass one value")
        return lam.reshape(()).to(dtype=ref.dtype, device=ref.device) if lam.dtype != ref.dtype or \
            lam.device != ref.device else lam.reshape(())
    lam_f = check_lam(lam)
    return torch.tensor(lam_f, dtype=ref.dtype, device=ref.device)


def _needs_graph(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _core(x2: Tensor, w2: Tensor, K: int, eps: float, backend: str, fixed: bool = False) -> tuple[Tensor, Tensor]:
    backend = resolve_backend(backend, x2.device, x2.shape[0] * w2.shape[0] * x2.shape[1], x2.dtype)
    if backend == "reference":
        return reference_core(x2, w2, K, eps, fixed)
    if not _needs_graph(x2, w2):  # inference: keep only the last iterate
        x2, w2 = x2.contiguous(), w2.contiguous()
        z0 = x2 @ w2.T
        zs, _ = forward_all(x2, w2, z0, K, float(eps), backend, keep=False)
        return z0, zs[0]
    return NRPMCore.apply(x2, w2, K, float(eps), backend, bool(fixed))


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
def nrpm_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, lam: float | Tensor = 0.5, K: int = 3,
                eps: float = 1e-3, backend: str = "auto", straight_through: bool = False) -> Tensor:
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


def _memory_format(x: Tensor) -> torch.memory_format:
    """``channels_last`` for a channels-last input (that is not also plain contiguous), else contiguous."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


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
    geom = ConvGeom((kh, kw), stride_, padding_, dilation_, groups, (H, W), Ho * Wo)
    backend = resolve_backend(backend, x.device, B * geom.L * Cout * Cg * kh * kw, x.dtype)
    if backend == "reference":
        z0, zk = reference_conv(x, weight, geom, K, eps, bool(straight_through))
    elif not _needs_graph(x, weight):
        z0, zk, _, _ = conv_forward(x, weight, geom, K, float(eps), backend, keep=False)
    else:
        z0, zk = NRPMConvCore.apply(x, weight, geom, K, float(eps), backend, bool(straight_through))
    out = _mix(z0, zk, lam_t).transpose(1, 2).reshape(B, Cout, Ho, Wo)
    # The output in the input's memory format, as F.conv2d returns it. The rows layout would otherwise hand NCHW
    # callers a channels-last-strided tensor; the gradient that then reaches a plain conv before this layer made
    # oneDNN's weight backward (torch 2.14.1, AVX2 CPU, 3->2 channel stem) corrupt the heap and abort the process.
    out = out.contiguous(memory_format=_memory_format(x))
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out

