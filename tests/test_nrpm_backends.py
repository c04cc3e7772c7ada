"""Every NRPM backend against the float64 reference (Robustness Reprogramming, Algorithm 1 with the ε of
Algorithm 2): outputs and gradients for Linear and Conv2d (stride, padding, dilation, groups), λ scalar and per
layer (a learnable tensor), K = 0…4, narrow and wide layers (the two ∂x kernel layouts of Linear; the column and
row layouts of compiled convolutions), and torch.autograd's gradcheck in float64."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from torchrobust.nn import NRPMConv2d, NRPMLinear, nrpm_compiled, nrpm_conv2d, nrpm_core, nrpm_linear

D64 = torch.float64
BACKENDS = ["eager"] + (["compiled"] if nrpm_compiled.compiler_available("cpu") else [])
# (stride, padding, dilation, groups)
CONVS = [(1, 0, 1, 1), (2, 1, 1, 1), (1, 2, 2, 2), (2, 1, (1, 2), 3)]


def _linear_args(out_features: int, g: torch.Generator) -> list[Tensor]:
    return [torch.randn(7, 13, generator=g, dtype=D64), torch.randn(out_features, 13, generator=g, dtype=D64),
            torch.randn(out_features, generator=g, dtype=D64)]


def _conv_args(groups: int, g: torch.Generator, out_per_group: int = 2) -> list[Tensor]:
    o = out_per_group * groups
    return [torch.randn(2, 3 * groups, 8, 7, generator=g, dtype=D64),
            torch.randn(o, 3, 3, 2, generator=g, dtype=D64), torch.randn(o, generator=g, dtype=D64)]


def _run(kind: int | str, backend: str, a: list[Tensor], lam: float | Tensor, K: int) -> Tensor:
    if kind == "linear":
        return nrpm_linear(a[0], a[1], a[2], lam, K, 1e-3, backend=backend)
    s, p, d, gr = CONVS[int(kind)]
    return nrpm_conv2d(a[0], a[1], a[2], lam, K, 1e-3, s, p, d, gr, backend=backend)


def _rel(a: Tensor, b: Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["linear", "wide", 0, 1, 2, 3, "conv_wide"])
@pytest.mark.parametrize("lam_kind", ["scalar", "per_layer"])
def test_backend_equals_float64_reference_for_K_0_to_4(backend: str, kind: int | str, lam_kind: str) -> None:
    g = torch.Generator().manual_seed(7 * len(str(kind)) + len(lam_kind) + (kind if isinstance(kind, int) else 0))
    if kind in ("linear", "wide"):
        args = _linear_args(5 if kind == "linear" else 57, g)  # 57 outputs: the transposed ∂x kernel
        kind = "linear"
    elif kind == "conv_wide":  # 2 × 18 outputs per group: the compiled row layout (2 per group: column layout)
        args = _conv_args(2, g, out_per_group=nrpm_core._COLS_MAX_OUT + 2)
        kind = 2
    else:
        args = _conv_args(CONVS[int(kind)][3], g)
    for K in range(5):
        res = {}
        for be in (backend, "reference"):
            a = [t.clone().requires_grad_(True) for t in args]
            lam = torch.tensor(0.35, dtype=D64, requires_grad=True) if lam_kind == "per_layer" else 0.35
            y = _run(kind, be, a, lam, K)
            cot = torch.linspace(-1, 1, y.numel(), dtype=D64).view_as(y)
            wrt = a + ([lam] if isinstance(lam, Tensor) else [])
            res[be] = (y, *torch.autograd.grad(y, wrt, cot, materialize_grads=True))
        for got, ref in zip(res[backend], res["reference"], strict=True):
            assert _rel(got, ref) <= 1e-6, (K, _rel(got, ref))
        # float32 on the same data: its inputs' rounding (~6e-8), amplified by the 1/ε-weighted steps
        with torch.no_grad():
            y32 = _run(kind, backend, [t.float() for t in args], 0.35, K)
        assert _rel(y32.double(), res["reference"][0]) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K", [1, 4])
def test_gradcheck_linear_narrow_and_wide(backend: str, K: int) -> None:
    g = torch.Generator().manual_seed(K)
    for out_features in (4, 50):
        x = torch.randn(3, 5, generator=g, dtype=D64, requires_grad=True)
        W = torch.randn(out_features, 5, generator=g, dtype=D64, requires_grad=True)
        b = torch.randn(out_features, generator=g, dtype=D64, requires_grad=True)
        lam = torch.tensor(0.4, dtype=D64, requires_grad=True)
        assert torch.autograd.gradcheck(
            lambda *t: nrpm_linear(*t, K=K, eps=1e-2, backend=backend), (x, W, b, lam), eps=1e-6, atol=1e-5
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_conv_stride_padding_dilation_groups(backend: str) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 6, 5, generator=g, dtype=D64, requires_grad=True)
    W = torch.randn(4, 2, 3, 2, generator=g, dtype=D64, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=D64, requires_grad=True)
    lam = torch.tensor(0.6, dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, W, b, lam: nrpm_conv2d(x, W, b, lam, 3, 1e-2, 2, 1, (2, 1), 2, backend=backend),
        (x, W, b, lam), eps=1e-6, atol=1e-5,
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_straight_through_narrow_and_wide_equal_reference(backend: str) -> None:
    g = torch.Generator().manual_seed(4)
    for out_features in (3, 60):
        args = _linear_args(out_features, g)
        res = {}
        for be in (backend, "reference"):
            a = [t.clone().requires_grad_(True) for t in args]
            y = nrpm_linear(a[0], a[1], a[2], 0.3, 3, 1e-3, backend=be, straight_through=True)
            res[be] = (y, *torch.autograd.grad(y.square().sum(), a))
        for got, ref in zip(res[backend], res["reference"], strict=True):
            assert _rel(got, ref) <= 1e-6


@pytest.mark.skipif("compiled" not in BACKENDS, reason="torch.compile (inductor) is not usable on this machine")
def test_transposed_x_kernels_equal_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """The transposed ∂x kernels (picked from 48 outputs on where inductor emits 256-bit vector code) are run and
    checked on every machine, exact and straight-through."""
    monkeypatch.setitem(nrpm_compiled._WIDE_SIMD, "cpu", False)
    g = torch.Generator().manual_seed(11)
    args = _linear_args(57, g)
    for straight_through in (False, True):
        res = {}
        for be in ("compiled", "reference"):
            a = [t.clone().requires_grad_(True) for t in args]
            y = nrpm_linear(a[0], a[1], a[2], 0.3, 3, 1e-3, backend=be, straight_through=straight_through)
            res[be] = (y, *torch.autograd.grad(y.square().sum(), a))
        for got, ref in zip(res["compiled"], res["reference"], strict=True):
            assert _rel(got, ref) <= 1e-6
    assert {"bwd_x_t", "st_x_t"} <= {key[0] for key in nrpm_compiled._COMPILED}


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_straight_through_narrow_and_wide_equal_reference(backend: str) -> None:
    """The straight-through backward of a strided, padded, grouped conv in both compiled layouts."""
    g = torch.Generator().manual_seed(5)
    for per_group in (3, nrpm_core._COLS_MAX_OUT + 1):
        args = _conv_args(3, g, out_per_group=per_group)
        res = {}
        for be in (backend, "reference"):
            a = [t.clone().requires_grad_(True) for t in args]
            y = nrpm_conv2d(a[0], a[1], a[2], 0.3, 3, 1e-3, 2, 1, 1, 3, backend=be, straight_through=True)
            res[be] = (y, *torch.autograd.grad(y.square().sum(), a))
        for got, ref in zip(res[backend], res["reference"], strict=True):
            assert _rel(got, ref) <= 1e-6


def test_column_layout_rows_are_an_odd_number_of_cache_lines() -> None:
    """Padded row length of the column layout: ≥ L, whole 64-byte lines, an odd count (no 4 KiB stride)."""
    for dtype, line in ((torch.float32, 16), (torch.float64, 8), (torch.bfloat16, 32)):
        for L in (1, 15, 16, 64, 1000, 1024, 1025):
            lp = nrpm_core.padded_len(L, dtype)
            assert lp >= L and lp % line == 0 and (lp // line) % 2 == 1 and lp - L < 2 * line
    assert nrpm_core.padded_len(1024, torch.float32) == 1040


@pytest.mark.skipif("compiled" not in BACKENDS, reason="torch.compile (inductor) is not usable on this machine")
def test_compiled_batch_sizes_and_layer_shapes_in_one_process_without_recompiling() -> None:
    """Narrow and wide linear layers, three convolutions, 1…129 rows, exact and straight-through backward: every
    kernel is compiled once per size-1 pattern, never recompiled (``error_on_recompile``)."""
    import torch._dynamo

    torch.manual_seed(0)
    lins = [NRPMLinear(i, o, lam=0.4, K=2, backend="compiled") for i, o in [(33, 5), (20, 64), (9, 100)]]
    convs = [NRPMConv2d(3, 4, 3, padding=1, lam=0.4, K=2, backend="compiled"),
             NRPMConv2d(4, 64, 3, stride=2, lam=0.4, K=2, backend="compiled"),
             NRPMConv2d(6, 6, 3, dilation=2, groups=3, lam=0.4, K=2, backend="compiled")]
    for m in lins + convs:  # warm-up: one call per layer with batch 2 (size-1 patterns are their own kernels)
        x = torch.randn(2, m.in_features) if isinstance(m, NRPMLinear) else torch.randn(2, m.in_channels, 9, 9)
        m(x.requires_grad_(True)).sum().backward()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for i, batch in enumerate([2, 3, 5, 8, 16, 31, 64, 129]):
            m = lins[i % len(lins)]
            x = torch.randn(batch, m.in_features, requires_grad=True)
            m.straight_through = bool(i % 2)
            y = m(x)
            y.square().sum().backward()
            with torch.no_grad():
                ref = nrpm_linear(x.double(), m.weight.double(), m.bias.double(), 0.4, 2, 1e-3, backend="reference")
            assert _rel(y.detach().double(), ref) <= 1e-5
            c = convs[i % len(convs)]
            xc = torch.randn(batch % 4 + 2, c.in_channels, 7 + i, 9, requires_grad=True)
            c(xc).sum().backward()
            assert xc.grad is not None and torch.isfinite(xc.grad).all()
