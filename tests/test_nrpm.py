"""Tests for the NRPM functional core and layers (Robustness Reprogramming, Algorithm 1 / Algorithm 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchrobust.errors import TorchRobustError
from torchrobust.nn import NRPMConv2d, NRPMLinear, nrpm_conv2d, nrpm_core, nrpm_eager, nrpm_linear
from torchrobust.nn.nrpm_compiled import compiler_available

ROOT = Path(__file__).resolve().parents[1]
D64 = torch.float64


# ------------------------------------------------------------------------------------------------------------
# slow, obviously-correct reference: one Python loop per output unit, Algorithm 1 (+ ε of Algorithm 2)
# ------------------------------------------------------------------------------------------------------------
def loop_reference_unit(a: list[float], x: list[float], lam: float, K: int, eps: float) -> float:
    D = len(a)
    p = [a[d] * x[d] for d in range(D)]
    z_lpm = sum(p)
    z = z_lpm
    for _ in range(K):
        w = [1.0 / (abs(p[d] - z / D) + eps) for d in range(D)]
        tot = sum(w)
        w = [wd / tot for wd in w]
        z = D * sum(w[d] * p[d] for d in range(D))
    return lam * z_lpm + (1 - lam) * z


def loop_reference_linear(x, W, b, lam, K, eps):
    out = torch.empty(x.shape[0], W.shape[0], dtype=D64)
    for n in range(x.shape[0]):
        for o in range(W.shape[0]):
            out[n, o] = loop_reference_unit(W[o].tolist(), x[n].tolist(), lam, K, eps) + (
                0.0 if b is None else float(b[o])
            )
    return out


def loop_reference_conv(x, W, b, lam, K, eps, stride, padding, dilation, groups):
    """Direct per-output-pixel loop over the zero-padded input (no unfold)."""
    B, C, H, Wd = x.shape
    Cout, Cg, kh, kw = W.shape
    xp = F.pad(x, (padding, padding, padding, padding))
    Ho = (H + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    Wo = (Wd + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    out = torch.empty(B, Cout, Ho, Wo, dtype=D64)
    opg = Cout // groups
    for n in range(B):
        for o in range(Cout):
            g = o // opg
            a = W[o].reshape(-1).tolist()
            for i in range(Ho):
                for j in range(Wo):
                    patch = [
                        float(xp[n, g * Cg + c, i * stride + u * dilation, j * stride + v * dilation])
                        for c in range(Cg)
                        for u in range(kh)
                        for v in range(kw)
                    ]
                    val = loop_reference_unit(a, patch, lam, K, eps)
                    out[n, o, i, j] = val + (0.0 if b is None else float(b[o]))
    return out


FAST_BACKENDS = ["eager", "reference"]


# ------------------------------------------------------------------------------------------------------------
# correctness against the loop reference
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("K", [1, 3])
def test_linear_matches_loop_reference(backend: str, K: int) -> None:
    x = torch.randn(4, 9, dtype=D64)
    W = torch.randn(5, 9, dtype=D64)
    b = torch.randn(5, dtype=D64)
    got = nrpm_linear(x, W, b, lam=0.3, K=K, eps=1e-3, backend=backend)
    ref = loop_reference_linear(x, W, b, 0.3, K, 1e-3)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize(
    "stride,padding,dilation,groups", [(1, 0, 1, 1), (2, 1, 1, 1), (1, 2, 2, 2), (2, 1, 1, 3)]
)
def test_conv_matches_loop_reference(backend: str, stride: int, padding: int, dilation: int, groups: int) -> None:
    cin, cout = 3 * groups, 2 * groups
    x = torch.randn(2, cin, 7, 6, dtype=D64)
    W = torch.randn(cout, cin // groups, 3, 2, dtype=D64)
    b = torch.randn(cout, dtype=D64)
    got = nrpm_conv2d(x, W, b, 0.4, 2, 1e-3, stride, padding, dilation, groups, backend=backend)
    ref = loop_reference_conv(x, W, b, 0.4, 2, 1e-3, stride, padding, dilation, groups)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ["eager", "compiled", "reference"])
def test_conv_output_keeps_the_input_memory_format(backend: str) -> None:
    """As F.conv2d: NCHW in, NCHW-contiguous out; channels_last in, channels_last out (same values). A
    channels-last-strided output for an NCHW input once sent a gradient to a plain strided 1x1 conv that made
    oneDNN corrupt the heap (torch 2.14.1)."""
    if backend == "compiled" and not compiler_available("cpu"):
        pytest.skip("no C++ compiler for the compiled backend")
    x = torch.rand(3, 4, 9, 8)
    W = torch.randn(6, 4, 3, 3)
    y = nrpm_conv2d(x, W, torch.randn(6), 0.5, 2, 1e-3, 1, 1, 1, 1, backend=backend)
    assert y.is_contiguous()
    xl = x.contiguous(memory_format=torch.channels_last)
    yl = nrpm_conv2d(xl, W, None, 0.5, 2, 1e-3, 1, 1, 1, 1, backend=backend)
    assert yl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(yl, nrpm_conv2d(x, W, None, 0.5, 2, 1e-3, 1, 1, 1, 1, backend=backend))
    xg = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(nrpm_conv2d(xg, W, None, 0.5, 2, 1e-3, 2, 1, 1, 1, backend=backend).square().sum(), xg)
    assert gx.shape == x.shape and bool(torch.isfinite(gx).all())


def test_conv_equals_linear_over_unfolded_patches() -> None:
    x = torch.randn(2, 4, 8, 8, dtype=D64)
    W = torch.randn(6, 2, 3, 3, dtype=D64)
    y = nrpm_conv2d(x, W, None, 0.2, 3, 1e-3, stride=2, padding=1, dilation=1, groups=2, backend="eager")
    cols = F.unfold(x, 3, padding=1, stride=2)  # (B, C·9, L)
    B, _, L = cols.shape
    outs = []
    for g in range(2):
        xg = cols[:, g * 18 : (g + 1) * 18].transpose(1, 2).reshape(B * L, 18)
        outs.append(nrpm_linear(xg, W[g * 3 : (g + 1) * 3].reshape(3, 18), None, 0.2, 3, 1e-3, backend="eager"))
    ref = torch.cat(outs, 1).view(B, L, 6).transpose(1, 2).reshape(y.shape)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)


def test_chunking_does_not_change_result(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(13, 11, dtype=D64, requires_grad=True)
    W = torch.randn(7, 11, dtype=D64, requires_grad=True)
    y1 = nrpm_linear(x, W, None, 0.3, 3, 1e-3, backend="eager")
    g1 = torch.autograd.grad(y1.square().sum(), (x, W))
    monkeypatch.setattr(nrpm_eager, "_EAGER_CHUNK", 30)  # forces blocks of 1 row × 2 outputs
    y2 = nrpm_linear(x, W, None, 0.3, 3, 1e-3, backend="eager")
    g2 = torch.autograd.grad(y2.square().sum(), (x, W))
    torch.testing.assert_close(y1, y2, rtol=1e-12, atol=1e-12)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------------------
# plain-layer equivalence
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lam,K", [(1.0, 3), (0.3, 0), (0.0, 0)])
def test_linear_plain_cases(lam: float, K: int) -> None:
    m = nn.Linear(20, 6)
    x = torch.randn(5, 20)
    r = NRPMLinear.from_module(m, lam=lam, K=K)
    torch.testing.assert_close(r(x), m(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("lam,K", [(1.0, 3), (0.7, 0)])
def test_conv_plain_cases(lam: float, K: int) -> None:
    m = nn.Conv2d(3, 5, 3, stride=2, padding=1)
    x = torch.randn(2, 3, 9, 9)
    r = NRPMConv2d.from_module(m, lam=lam, K=K)
    torch.testing.assert_close(r(x), m(x), rtol=0, atol=1e-6)


def test_lam_one_through_core_equals_plain() -> None:
    """λ = 1 with a learnable λ cannot take the plain fast path; it must still equal the plain layer."""
    m = nn.Conv2d(3, 4, 3, padding=1)
    r = NRPMConv2d.from_module(m, lam=1.0, learn_lam=True, backend="eager")
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(r(x), m(x), rtol=0, atol=1e-6)


def test_padding_modes_and_same_padding_match_conv_at_lam_one() -> None:
    for kw in ({"padding": 1, "padding_mode": "reflect"}, {"padding": "same", "dilation": 2}):
        m = nn.Conv2d(2, 3, 3, **kw)
        r = NRPMConv2d.from_module(m, lam=1.0, learn_lam=True, backend="eager")
        x = torch.randn(1, 2, 7, 7)
        torch.testing.assert_close(r(x), m(x), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------------------
# gradients: gradcheck in float64, and the custom backward equals autograd through the unrolled loop
# ------------------------------------------------------------------------------------------------------------
def test_gradcheck_linear() -> None:
    x = torch.randn(3, 6, dtype=D64, requires_grad=True)
    W = torch.randn(4, 6, dtype=D64, requires_grad=True)
    b = torch.randn(4, dtype=D64, requires_grad=True)
    lam = torch.tensor(0.35, dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *a: nrpm_linear(*a, K=3, eps=1e-2, backend="eager"), (x, W, b, lam), eps=1e-6, atol=1e-5
    )


def test_gradcheck_conv() -> None:
    x = torch.randn(2, 4, 5, 5, dtype=D64, requires_grad=True)
    W = torch.randn(4, 2, 3, 3, dtype=D64, requires_grad=True)
    b = torch.randn(4, dtype=D64, requires_grad=True)
    lam = torch.tensor(0.6, dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, W, b, lam: nrpm_conv2d(x, W, b, lam, 2, 1e-2, 2, 1, 1, 2, backend="eager"),
        (x, W, b, lam),
        eps=1e-6,
        atol=1e-5,
    )


@pytest.mark.parametrize("K", [1, 3, 5])
def test_custom_backward_equals_unrolled_autograd(K: int) -> None:
    x = torch.randn(6, 30, dtype=D64, requires_grad=True)
    W = torch.randn(8, 30, dtype=D64, requires_grad=True)
    lam = torch.tensor(0.25, dtype=D64, requires_grad=True)
    gy = torch.randn(6, 8, dtype=D64)
    grads = {}
    for backend in ("eager", "reference"):
        y = nrpm_linear(x, W, None, lam, K, 1e-3, backend=backend)
        grads[backend] = torch.autograd.grad(y, (x, W, lam), gy)
    for a, b in zip(grads["eager"], grads["reference"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_only_input_grad_requested() -> None:
    """Attacks need ∂/∂x only; frozen weights must get no gradient and x's must be right."""
    m = nn.Linear(12, 5).double().requires_grad_(False)
    r = NRPMLinear.from_module(m, lam=0.5, backend="eager")
    x = torch.randn(3, 12, dtype=D64, requires_grad=True)
    r(x).sum().backward()
    assert m.weight.grad is None
    x2 = x.detach().clone().requires_grad_(True)
    nrpm_linear(x2, m.weight, m.bias, 0.5, 3, 1e-3, backend="reference").sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backend", ["eager"])
def test_conv_custom_backward_equals_unrolled_autograd(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The conv Function (batch blocks, re-unfold + fold in backward) against autograd through the paper's loop."""
    monkeypatch.setattr(nrpm_core, "_CONV_COLS_CHUNK", 1)  # one image per block
    x = torch.randn(3, 4, 7, 6, dtype=D64, requires_grad=True)
    W = torch.randn(6, 2, 3, 3, dtype=D64, requires_grad=True)
    lam = torch.tensor(0.3, dtype=D64, requires_grad=True)
    grads = {}
    for be in (backend, "reference"):
        y = nrpm_conv2d(x, W, None, lam, 3, 1e-3, stride=2, padding=1, dilation=(1, 2), groups=2, backend=be)
        gy = torch.linspace(-1, 1, y.numel(), dtype=D64).view_as(y)
        grads[be] = (y,) + torch.autograd.grad(y, (x, W, lam), gy)
    for a, b in zip(grads[backend], grads["reference"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_inference_path_equals_training_path() -> None:
    x = torch.randn(4, 3, 8, 8)
    m = NRPMConv2d(3, 5, 3, padding=1, lam=0.4, backend="eager")
    with torch.no_grad():
        y_inf = m(x)
    y_train = m(x)
    torch.testing.assert_close(y_inf, y_train, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------------------
# compiled backend (torch.compile / inductor): agreement with eager, many shapes without recompile errors
# ------------------------------------------------------------------------------------------------------------
def test_compiled_matches_reference_fwd_and_grads_linear() -> None:
    x = torch.randn(6, 33, dtype=D64, requires_grad=True)
    W = torch.randn(5, 33, dtype=D64, requires_grad=True)
    lam = torch.tensor(0.3, dtype=D64, requires_grad=True)
    gy = torch.randn(6, 5, dtype=D64)
    out = {}
    for be in ("compiled", "eager", "reference"):
        y = nrpm_linear(x, W, None, lam, 3, 1e-3, backend=be)
        out[be] = (y,) + torch.autograd.grad(y, (x, W, lam), gy)
    for be in ("compiled", "eager"):
        for a, b in zip(out[be], out["reference"], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    with torch.no_grad():
        torch.testing.assert_close(nrpm_linear(x, W, None, 0.3, 3, 1e-3, backend="compiled"), out["reference"][0])


def test_compiled_matches_eager_conv_fwd_and_grads() -> None:
    x = torch.randn(2, 4, 6, 6, dtype=D64, requires_grad=True)
    W = torch.randn(6, 2, 3, 3, dtype=D64, requires_grad=True)
    b = torch.randn(6, dtype=D64, requires_grad=True)
    lam = torch.tensor(0.6, dtype=D64, requires_grad=True)
    out = {}
    for be in ("compiled", "eager"):
        y = nrpm_conv2d(x, W, b, lam, 2, 1e-3, 2, 1, 1, 2, backend=be)
        out[be] = (y,) + torch.autograd.grad(y.square().sum(), (x, W, b, lam))
    for a, c in zip(out["compiled"], out["eager"], strict=True):
        torch.testing.assert_close(a, c, rtol=1e-9, atol=1e-9)


def test_compiled_many_batch_sizes_and_shapes_without_recompiling() -> None:
    """One process, 12 batch sizes and several layer shapes: dynamic shapes + per-shape-class code objects mean
    no function is ever compiled twice (``error_on_recompile``), so dynamo's recompile limit cannot be hit."""
    import torch._dynamo

    shapes = [(33, 5), (10, 7), (64, 3), (17, 17)]
    layers = [NRPMLinear(i, o, lam=0.4, backend="compiled").double() for i, o in shapes]
    conv = NRPMConv2d(3, 4, 3, padding=1, lam=0.4, backend="compiled").double()
    # warm-up: one call per shape class (sizes 1 are specialised, by key)
    for m in layers[:1]:
        m(torch.randn(2, 33, dtype=D64, requires_grad=True)).sum().backward()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for i, batch in enumerate([2, 3, 4, 5, 7, 8, 9, 16, 31, 64, 100, 129]):
            m = layers[i % len(layers)]
            x = torch.randn(batch, m.in_features, dtype=D64, requires_grad=True)
            y = m(x)
            y.sum().backward()
            ref = nrpm_linear(x.detach(), m.weight.detach(), m.bias.detach(), m.lam, 3, 1e-3, backend="eager")
            torch.testing.assert_close(y.detach(), ref, rtol=1e-9, atol=1e-9)
        for batch in (2, 3, 5):
            xc = torch.randn(batch, 3, 5 + batch, 6, dtype=D64, requires_grad=True)
            conv(xc).sum().backward()


# ------------------------------------------------------------------------------------------------------------
# layers: sharing, reversibility, λ handling, validation
# ------------------------------------------------------------------------------------------------------------
def test_from_module_shares_parameters_and_round_trips() -> None:
    m = nn.Linear(8, 3)
    r = NRPMLinear.from_module(m, lam=0.4, K=2, irls_eps=5e-4)
    assert r.weight is m.weight and r.bias is m.bias
    assert r.to_module() is m
    assert (r.lam, r.K, r.irls_eps) == (pytest.approx(0.4), 2, 5e-4)
    assert set(r.state_dict()) == {"weight", "bias", "lam_raw"}
    c = nn.Conv2d(2, 4, 3, bias=False)
    rc = NRPMConv2d.from_module(c, lam=0.1)
    assert rc.weight is c.weight and rc.bias is None and rc.to_module() is c
    # training the wrapper trains the original
    opt = torch.optim.SGD(r.parameters(), lr=0.1)
    before = m.weight.detach().clone()
    r(torch.randn(4, 8)).sum().backward()
    opt.step()
    assert not torch.equal(before, m.weight.detach())


def test_constructed_layers_to_module() -> None:
    r = NRPMConv2d(3, 4, 3, padding=1, lam=0.5)
    m = r.to_module()
    assert isinstance(m, nn.Conv2d) and m.weight is r.weight
    rl = NRPMLinear(5, 2, bias=False)
    ml = rl.to_module()
    assert isinstance(ml, nn.Linear) and ml.weight is rl.weight and ml.bias is None
    assert "lam=0.5" in repr(r) and "K=3" in repr(rl)


def test_drop_bias_option() -> None:
    c = nn.Conv2d(2, 3, 3)
    x = torch.randn(1, 2, 5, 5)
    with_b = NRPMConv2d.from_module(c, lam=0.3, backend="eager")(x)
    without = NRPMConv2d.from_module(c, lam=0.3, drop_bias=True, backend="eager")(x)
    torch.testing.assert_close(with_b - without, c.bias.detach().view(1, -1, 1, 1).expand_as(with_b))


def test_learn_lam_and_project() -> None:
    r = NRPMLinear(6, 3, lam=0.9, learn_lam=True, backend="eager")
    assert r.learn_lam and r.lam_raw.requires_grad
    opt = torch.optim.SGD([r.lam_raw], lr=100.0)
    r(torch.randn(8, 6)).square().sum().backward()
    assert r.lam_raw.grad is not None and r.lam_raw.grad.abs() > 0
    opt.step()
    r.project_()
    assert 0.0 <= r.lam <= 1.0
    r.learn_lam = False
    assert not r.lam_raw.requires_grad


def test_sigmoid_parametrization() -> None:
    r = NRPMLinear(6, 3, lam=0.3, learn_lam=True, lam_parametrization="sigmoid", backend="eager")
    assert "lam_logit" in dict(r.named_parameters())
    assert r.lam == pytest.approx(0.3, abs=1e-6)
    r(torch.randn(2, 6)).sum().backward()
    assert r.lam_logit.grad is not None
    r.lam = 0.8
    assert r.lam == pytest.approx(0.8, abs=1e-6)


def _push_lam_down(layer: nn.Module, x: torch.Tensor, to: float) -> None:
    """One SGD step on λ alone whose size moves λ from its value to ``to`` (the loss is linear in λ)."""
    y = layer(x).sum()
    (g,) = torch.autograd.grad(y, layer.lam_parameter, retain_graph=True)
    loss = y * g.sign()  # ∂loss/∂λ = |g| > 0: a descent step lowers λ
    opt = torch.optim.SGD([layer.lam_parameter], lr=(layer.lam - to) / float(g.abs()))
    loss.backward()
    opt.step()


def test_raw_parametrization_leaves_the_unit_interval_and_is_never_projected() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 6, dtype=D64)
    base = nn.Linear(6, 3).double()
    raw = NRPMLinear.from_module(base, lam=0.5, K=2, learn_lam=True, lam_parametrization="raw", backend="eager")
    clamp = NRPMLinear.from_module(base, lam=0.5, K=2, learn_lam=True, backend="eager")
    assert set(raw.state_dict()) == {"weight", "bias", "lam_unbounded"} and raw.lam_parameter is raw.lam_unbounded
    for layer in (raw, clamp):
        _push_lam_down(layer, x, -0.75)
        layer.project_()  # what torchrobust's training loop calls after every step
    assert raw.lam == pytest.approx(-0.75, abs=1e-12) and clamp.lam == 0.0
    # the forward uses the raw λ as-is: an extrapolation beyond pure NRPM, equal to the loop reference at λ = -0.75
    ref = loop_reference_linear(x, base.weight.detach(), base.bias.detach(), -0.75, 2, 1e-3)
    torch.testing.assert_close(raw(x), ref, rtol=1e-10, atol=1e-10)
    raw.learn_lam = False  # frozen λ outside [0, 1] (no float path, which would refuse it): same output
    with torch.no_grad():
        torch.testing.assert_close(raw(x), ref, rtol=1e-10, atol=1e-10)
    assert "lam=-0.75" in repr(raw) and "lam_parametrization='raw'" in repr(raw)
    raw.lam = 1.5  # the setter takes any finite λ for raw, [0, 1] otherwise
    assert raw.lam == 1.5
    with pytest.raises(TorchRobustError, match=r"^lam=nan is not a finite number; pass a finite λ$"):
        raw.lam = float("nan")
    with pytest.raises(TorchRobustError, match="outside"):
        clamp.lam = 1.5


def test_raw_parametrization_state_dict_round_trip() -> None:
    conv = NRPMConv2d(2, 3, 3, padding=1, lam=-0.4, K=1, lam_parametrization="raw", backend="eager")
    x = torch.randn(2, 2, 5, 5)
    fresh = NRPMConv2d(2, 3, 3, padding=1, lam=0.5, K=1, lam_parametrization="raw", backend="eager")
    fresh.load_state_dict(conv.state_dict())
    assert fresh.lam == pytest.approx(-0.4) and torch.equal(fresh(x), conv(x))
    # a raw λ never loads silently into another parametrisation (different Parameter names)
    with pytest.raises(RuntimeError, match="lam_raw"):
        NRPMConv2d(2, 3, 3, padding=1, K=1).load_state_dict(conv.state_dict())


def test_reprogram_raw_lam_checkpoint_round_trip(tmp_path: Path) -> None:
    """reprogram(..., lam_parametrization="raw") through training's projection, learned_lams, set_lam and a
    checkpoint: the raw λ (outside [0, 1]) comes back as stored."""
    from torchrobust import checkpoint
    from torchrobust.models import create
    from torchrobust.reprogramming import learned_lams, reprogram, set_lam, set_paradigm
    from torchrobust.train import TrainConfig, fit

    model = create("mlp", widths=[8])
    r = reprogram(model, lam=-0.2, K=1, backend="eager", lam_parametrization="raw")
    assert r.torchrobust_spec["transforms"][-1]["kwargs"]["lam_parametrization"] == "raw"
    assert learned_lams(r) == pytest.approx({"fc1": -0.2, "fc2": -0.2})
    set_lam(r, [1.25, -0.5])  # every layer is raw: any finite λ
    # a few steps of the library's training loop (which calls project_() after each step) keep λ outside [0, 1]
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    fit(r, (x, y), TrainConfig(epochs=1, batch_size=16, lr=1e-3, optimizer="sgd"), params=set_paradigm(r, 2))
    lams = learned_lams(r)
    assert lams["fc1"] > 1.0 and lams["fc2"] < 0.0 and lams != pytest.approx({"fc1": 1.25, "fc2": -0.5})
    checkpoint.save(r, tmp_path / "raw.safetensors")
    back = checkpoint.load(tmp_path / "raw.safetensors")
    assert learned_lams(back) == lams and back.fc1.lam_parametrization == "raw"
    r.eval()
    torch.testing.assert_close(back(x), r(x), rtol=0, atol=0)
    with pytest.raises(TorchRobustError, match="outside"):  # the default parametrisation keeps [0, 1]
        reprogram(model, lam=-0.2)
    with pytest.raises(TorchRobustError, match=r"^unknown lam_parametrization 'tanh'; valid: clamp, sigmoid, raw$"):
        reprogram(model, lam_parametrization="tanh")


@pytest.mark.parametrize("lam", [-0.5, 1.5])
@pytest.mark.parametrize("backend", ["eager", "reference", "compiled"])
def test_gradcheck_raw_lam_outside_unit_interval(lam: float, backend: str) -> None:
    """The layers' forward and backward through every backend at a raw λ outside [0, 1], in float64."""
    if backend == "compiled" and not compiler_available():
        pytest.skip("no working torch.compile on this machine")
    torch.manual_seed(1)
    layers = [
        (NRPMLinear(6, 4, lam=lam, K=2, irls_eps=1e-2, learn_lam=True, lam_parametrization="raw", backend=backend,
                    dtype=D64), torch.randn(3, 6, dtype=D64)),
        (NRPMConv2d(2, 3, 3, padding=1, lam=lam, K=2, irls_eps=1e-2, learn_lam=True, lam_parametrization="raw",
                    backend=backend, dtype=D64), torch.randn(2, 2, 4, 4, dtype=D64)),
    ]
    for layer, x in layers:
        params = {k: v.detach().clone().requires_grad_(True) for k, v in layer.named_parameters()}

        def f(x, w, b, lam_t, layer=layer):
            return torch.func.functional_call(layer, {"weight": w, "bias": b, "lam_unbounded": lam_t}, (x,))

        args = (x.requires_grad_(True), params["weight"], params["bias"], params["lam_unbounded"])
        assert float(args[3].detach()) == lam
        assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [{"lam": 1.5}, {"lam": -0.1}, {"K": -1}, {"K": 2.0}, {"irls_eps": 0.0}, {"irls_eps": -1e-3}, {"backend": "cuda"},
     {"lam_parametrization": "tanh"}, {"lam_parametrization": "RAW"}, {"lam_parametrization": None},
     {"lam": float("nan"), "lam_parametrization": "raw"}, {"lam": float("inf"), "lam_parametrization": "raw"}],
)
def test_validation_errors(kwargs: dict) -> None:
    with pytest.raises(TorchRobustError):
        NRPMLinear.from_module(nn.Linear(3, 2), **kwargs)
    with pytest.raises(TorchRobustError):
        NRPMConv2d(2, 2, 3, **kwargs)


def test_functional_validation_errors() -> None:
    x = torch.randn(2, 4)
    with pytest.raises(TorchRobustError):
        nrpm_linear(x, torch.randn(3, 5))
    with pytest.raises(TorchRobustError):
        nrpm_linear(x, torch.randn(3, 4), lam=2.0)
    with pytest.raises(TorchRobustError):
        nrpm_conv2d(torch.randn(1, 3, 4, 4), torch.randn(2, 2, 3, 3))
    with pytest.raises(TorchRobustError):
        NRPMLinear.from_module(nn.Conv2d(1, 1, 1))
    with pytest.raises(TorchRobustError):
        NRPMLinear(3, 2).lam = 3.0


def test_leading_dims_and_robustness_property() -> None:
    """An outlier in one input coordinate moves NRPM far less than the linear layer (Theorem 3.2)."""
    torch.manual_seed(1)
    W = torch.rand(1, 100, dtype=D64) + 0.5
    x = torch.rand(3, 2, 100, dtype=D64)
    y = nrpm_linear(x, W, None, 0.0, 3, 1e-3, backend="eager")
    assert y.shape == (3, 2, 1)
    x_adv = x.clone()
    x_adv[..., 7] += 50.0
    lin_shift = (x_adv - x) @ W.T
    nrpm_shift = nrpm_linear(x_adv, W, None, 0.0, 3, 1e-3, backend="eager") - y
    assert (nrpm_shift.abs() < 0.5 * lin_shift.abs()).all()


# ------------------------------------------------------------------------------------------------------------
# memory: the eager path never allocates the full N × D_out × D product tensor
# ------------------------------------------------------------------------------------------------------------
_MEM_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, torch
    torch.set_num_threads(1)
    from torchrobust.nn import nrpm_linear
    backend = sys.argv[1]
    x = torch.randn(16, 4096, requires_grad=True)
    W = torch.randn(512, 4096, requires_grad=True)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    y = nrpm_linear(x, W, None, 0.5, 2, 1e-3, backend=backend)
    y.sum().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"delta_mb": (peak - base) / 1024}))
    """
)


def _peak_delta_mb(backend: str) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, "-c", _MEM_SCRIPT, backend], capture_output=True, text=True, env=env, timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["delta_mb"]


def test_eager_never_materialises_product_tensor() -> None:
    # full product: 16·512·4096 fp32 = 128 MiB per tensor (the reference path holds several); the eager
    # chunk temporaries are 1 MiB each, the gradients 8 MiB.
    delta = _peak_delta_mb("eager")
    assert delta < 64, f"eager NRPM peak grew by {delta:.0f} MB; the full product tensor is 128 MB"


_RESNET_SCRIPT = textwrap.dedent(
    """
    import json, resource, torch
    from torch import nn
    torch.set_num_threads(1)
    from torchrobust.nn import NRPMConv2d

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.short = nn.Sequential()
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(out)) + self.short(x))

    layers, cin = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()], 64
    for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10))
    n = 0
    for blk in model.modules():
        if isinstance(blk, Block):
            blk.conv1 = NRPMConv2d.from_module(blk.conv1, lam=0.5, K=3)
            blk.conv2 = NRPMConv2d.from_module(blk.conv2, lam=0.5, K=3)
            n += 2
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.rand(32, 3, 32, 32), torch.randint(0, 10, (32,))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"n": n, "loss": float(loss), "peak_mb": peak / 1024, "delta_mb": (peak - base) / 1024}))
    """
)


@pytest.mark.slow
def test_full_width_resnet18_with_nrpm_block_convs_trains_at_batch_32() -> None:
    """One SGD step of a full-width CIFAR ResNet-18 with NRPM (K=3) in all 16 block convs, batch 32, in a fresh
    process: the peak resident memory stays far below the 24 GiB of the target machine."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", _RESNET_SCRIPT], capture_output=True, text=True, env=env,
                         timeout=3000, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["n"] == 16
    assert res["loss"] == res["loss"]  # finite, not NaN
    assert res["peak_mb"] < 6 * 1024, res


def test_auto_backend_choice() -> None:
    dev = torch.device("cpu")
    assert nrpm_core.resolve_backend("auto", dev, 1000) == "eager"  # too small to repay compilation
    assert nrpm_core.resolve_backend("auto", dev, 1 << 23, torch.bfloat16) == "eager"  # untested dtype
    assert nrpm_core.resolve_backend("eager", dev, 1 << 30) == "eager"
    # this project's machines have a working inductor C++ toolchain
    assert nrpm_core.resolve_backend("auto", dev, 1 << 23) == "compiled"
