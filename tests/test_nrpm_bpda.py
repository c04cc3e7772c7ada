"""NRPM's declared BPDA surrogate (IRLS weights of the last iteration held constant), Hou et al. 2025 Algorithm 1
with eq. 7's weights frozen; Athalye, Carlini & Wagner 2018, Sec. 4.1 (BPDA).

The reference gradients are autograd through an independent unrolled loop (written here) with the normalised
weights detached, in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import torchrobust.nn.nrpm_core as nrpm_core
import torchrobust.nn.nrpm_eager as nrpm_eager
from torchrobust.attacks.wrappers import BPDA, has_bpda_modules
from torchrobust.evaluate.checks import check_bpda_evaluated, check_bpda_surrogates, find_zero_gradient_modules
from torchrobust.nn.forged import bpda_mode
from torchrobust.nn.nrpm import compiler_available, nrpm_conv2d, nrpm_linear
from torchrobust.nn.nrpm_layers import NRPMConv2d, NRPMLinear

torch.set_num_threads(1)


def _ref_rows(x: Tensor, w: Tensor, lam: float, K: int, eps: float, fixed: bool) -> Tensor:
    """Independent unrolled NRPM on rows ``x`` (n, D), weights ``w`` (o, D); ``fixed`` detaches the weights."""
    D = x.shape[-1]
    p = x[:, None, :] * w[None, :, :]
    z0 = p.sum(-1)
    z = z0
    for _ in range(K):
        u = 1.0 / ((p - z[..., None] / D).abs() + eps)
        u = u / u.sum(-1, keepdim=True)
        if fixed:
            u = u.detach()
        z = D * (u * p).sum(-1)
    return lam * z0 + (1 - lam) * z


def _ref_conv(x: Tensor, w: Tensor, lam: float, K: int, eps: float, stride: int, padding: int, groups: int,
              fixed: bool) -> Tensor:
    B, _, H, W = x.shape
    cout, cg, kh, kw = w.shape
    cols = F.unfold(x, (kh, kw), padding=padding, stride=stride)
    L = cols.shape[-1]
    D = cg * kh * kw
    cols = cols.view(B, groups, D, L)
    wg = w.reshape(groups, cout // groups, D)
    outs = []
    for g in range(groups):
        rows = cols[:, g].transpose(1, 2).reshape(B * L, D)
        outs.append(_ref_rows(rows, wg[g], lam, K, eps, fixed).view(B, L, -1))
    Ho = (H + 2 * padding - kh) // stride + 1
    Wo = (W + 2 * padding - kw) // stride + 1
    return torch.cat(outs, -1).transpose(1, 2).reshape(B, cout, Ho, Wo)


def _grads(out: Tensor, cot: Tensor, *inputs: Tensor) -> tuple[Tensor, ...]:
    return torch.autograd.grad((out * cot).sum(), inputs, retain_graph=True)


@pytest.mark.parametrize("backend", ["eager", "reference"])
@pytest.mark.parametrize("K", [1, 3])
def test_linear_straight_through_matches_detached_reference(backend: str, K: int) -> None:
    g = torch.Generator().manual_seed(K)
    x = torch.randn(7, 13, dtype=torch.float64, generator=g).requires_grad_(True)
    w = torch.randn(5, 13, dtype=torch.float64, generator=g).requires_grad_(True)
    b = torch.randn(5, dtype=torch.float64, generator=g)
    lam = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    cot = torch.randn(7, 5, dtype=torch.float64, generator=g)
    out = nrpm_linear(x, w, b, lam, K, 1e-3, backend=backend, straight_through=True)
    ref = _ref_rows(x, w, lam, K, 1e-3, fixed=True) + b
    assert torch.allclose(out, ref, rtol=1e-10, atol=1e-10)
    got = _grads(out, cot, x, w, lam)
    exp = _grads(ref, cot, x, w, lam)
    for a, e in zip(got, exp, strict=True):
        assert torch.allclose(a, e, rtol=1e-9, atol=1e-10)
    # differs from the exact (white-box) gradient, which differentiates through the weights
    exact = _grads(nrpm_linear(x, w, b, lam, K, 1e-3, backend=backend), cot, x)[0]
    assert not torch.allclose(got[0], exact, atol=1e-6)


def test_linear_straight_through_closed_form() -> None:
    """∂z/∂x_d = Σ_o cot_o a_{o,d} (λ + (1−λ) D u_{o,d}) with u the last normalised IRLS weights."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 9, dtype=torch.float64, generator=g).requires_grad_(True)
    w = torch.randn(4, 9, dtype=torch.float64, generator=g)
    lam, K, eps = 0.25, 2, 1e-2
    cot = torch.randn(3, 4, dtype=torch.float64, generator=g)
    (gx,) = _grads(nrpm_linear(x, w, None, lam, K, eps, backend="eager", straight_through=True), cot, x)
    with torch.no_grad():
        D = 9
        p = x[:, None, :] * w[None]
        z = p.sum(-1)
        for _ in range(K):
            u = 1.0 / ((p - z[..., None] / D).abs() + eps)
            u = u / u.sum(-1, keepdim=True)
            z_new = D * (u * p).sum(-1)
            z = z_new
        dz_dp = lam + (1 - lam) * D * u
        expect = (cot[..., None] * dz_dp * w[None]).sum(1)
    assert torch.allclose(gx, expect, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("stride,padding,groups", [(1, 0, 1), (2, 1, 1), (1, 1, 2), (2, 2, 3)])
def test_conv_straight_through_matches_detached_reference(stride: int, padding: int, groups: int) -> None:
    g = torch.Generator().manual_seed(stride * 10 + padding + groups)
    cin, cout = 2 * groups, 2 * groups
    x = torch.randn(2, cin, 6, 5, dtype=torch.float64, generator=g).requires_grad_(True)
    w = torch.randn(cout, cin // groups, 3, 3, dtype=torch.float64, generator=g).requires_grad_(True)
    b = torch.randn(cout, dtype=torch.float64, generator=g).requires_grad_(True)
    lam, K, eps = 0.4, 3, 1e-3
    out = nrpm_conv2d(x, w, b, lam, K, eps, stride=stride, padding=padding, groups=groups, backend="eager",
                      straight_through=True)
    ref = _ref_conv(x, w, lam, K, eps, stride, padding, groups, fixed=True) + b.view(1, -1, 1, 1)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, rtol=1e-10, atol=1e-10)
    cot = torch.randn(out.shape, dtype=torch.float64, generator=g)
    for a, e in zip(_grads(out, cot, x, w, b), _grads(ref, cot, x, w, b), strict=True):
        assert torch.allclose(a, e, rtol=1e-9, atol=1e-10)
    # the reference backend implements the same surrogate
    out_r = nrpm_conv2d(x, w, b, lam, K, eps, stride=stride, padding=padding, groups=groups, backend="reference",
                        straight_through=True)
    for a, e in zip(_grads(out_r, cot, x, w), _grads(ref, cot, x, w), strict=True):
        assert torch.allclose(a, e, rtol=1e-9, atol=1e-10)


def test_straight_through_is_memory_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a tiny chunk budget the eager surrogate backward runs in many chunks (never the full product
    tensor) and still matches the reference; only the last iterate is saved for backward."""
    monkeypatch.setattr(nrpm_eager, "_EAGER_CHUNK", 64)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(11, 20, dtype=torch.float64, generator=g).requires_grad_(True)
    w = torch.randn(6, 20, dtype=torch.float64, generator=g).requires_grad_(True)
    calls = []
    real = nrpm_eager._st_chunk

    def spy(xc: Tensor, wc: Tensor, *a: object) -> object:
        calls.append(xc.shape[0] * wc.shape[0] * xc.shape[1])
        return real(xc, wc, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(nrpm_eager, "_st_chunk", spy)
    out = nrpm_linear(x, w, None, 0.5, 3, 1e-3, backend="eager", straight_through=True)
    node, todo = None, [out.grad_fn]
    while todo:  # find the NRPM autograd node
        n = todo.pop()
        if n is not None and "NRPMCore" in type(n).__name__:
            node = n
            break
        todo.extend(f for f, _ in (n.next_functions if n is not None else ()))
    assert node is not None
    saved = [t.numel() for t in node.saved_tensors]
    assert max(saved[2:]) == 11 * 6  # z⁽ᴷ⁻¹⁾ and Σw of the last step only, not all K iterates
    cot = torch.randn(11, 6, dtype=torch.float64, generator=g)
    got = _grads(out, cot, x, w)
    assert len(calls) > 1 and max(calls) <= 64 < 11 * 6 * 20
    exp = _grads(_ref_rows(x, w, 0.5, 3, 1e-3, True), cot, x, w)
    for a, e in zip(got, exp, strict=True):
        assert torch.allclose(a, e, rtol=1e-9, atol=1e-10)


@pytest.mark.skipif(not compiler_available("cpu"), reason="torch.compile unavailable")
def test_compiled_straight_through_matches_eager() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 5, 5, generator=g).requires_grad_(True)
    w = torch.randn(4, 3, 3, 3, generator=g).requires_grad_(True)
    cot = torch.randn(2, 4, 5, 5, generator=g)
    res = {}
    for backend in ("eager", "compiled"):
        out = nrpm_conv2d(x, w, None, 0.3, 2, 1e-3, padding=1, backend=backend, straight_through=True)
        res[backend] = (out.detach(), *_grads(out, cot, x, w))
    for a, e in zip(res["compiled"], res["eager"], strict=True):
        assert torch.allclose(a, e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layer_kind", ["linear", "conv"])
def test_layer_protocol_forward_bit_exact_and_switch(layer_kind: str) -> None:
    torch.manual_seed(0)
    if layer_kind == "linear":
        layer: nn.Module = NRPMLinear.from_module(nn.Linear(12, 5), lam=0.2, K=3, backend="eager")
        x = torch.randn(4, 12)
    else:
        layer = NRPMConv2d.from_module(nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=2), lam=0.2, K=3,
                                       backend="eager")
        x = torch.randn(3, 2, 7, 7)
    assert type(layer).bpda_surrogate == "irls_fixed" and layer.straight_through is False
    model = nn.Sequential(layer).eval()
    xa = x.clone().requires_grad_(True)
    out = model(xa)
    (g_exact,) = torch.autograd.grad(out.sum(), xa)
    with bpda_mode(model):
        assert layer.straight_through is True
        out_st = model(xa)
        (g_st,) = torch.autograd.grad(out_st.sum(), xa)
    assert layer.straight_through is False
    assert torch.equal(out_st, out)  # forward bit for bit
    assert not torch.allclose(g_st, g_exact, atol=1e-5)
    with torch.no_grad():
        assert torch.equal(BPDA(model)(x), model(x))
    # BPDA uses the layer's own mode: no hook is attached, the flag is switched and restored
    out_b = BPDA(model)(xa)
    (g_b,) = torch.autograd.grad(out_b.sum(), xa)
    assert torch.equal(out_b, out) and torch.equal(g_b, g_st)
    with BPDA(model):
        assert layer.straight_through is True and not layer._forward_hooks
    assert layer.straight_through is False
    assert "straight_through" not in layer.state_dict()


def test_bpda_linear_option_and_user_override() -> None:
    torch.manual_seed(1)
    lin = nn.Linear(10, 3)
    layer = NRPMLinear.from_module(lin, lam=0.3, K=2, backend="eager")
    model = nn.Sequential(layer).eval()
    xa = torch.randn(4, 10, requires_grad=True)
    out = BPDA(model, nrpm="linear")(xa)
    (g,) = torch.autograd.grad(out[:, 1].sum(), xa)
    assert torch.allclose(g, lin.weight[1].detach().expand(4, -1), atol=1e-6)
    assert layer.straight_through is False and not layer._forward_hooks
    # a user surrogate overrides the declared mode (here: zero backward)
    out = BPDA(model, surrogates={NRPMLinear: lambda m, v: v[:, :3] * 0})(xa)
    (g,) = torch.autograd.grad(out.sum(), xa)
    assert float(g.abs().sum()) == 0.0 and layer.straight_through is False
    assert has_bpda_modules(model)


def test_checks_recognise_nrpm_surrogate(monkeypatch: pytest.MonkeyPatch) -> None:
    """A briefly trained MNIST MLP reprogrammed with λ=0.8, K=3, ε=1e-3: the probe sees its NRPM layers as
    masking ("jump"); undeclared they are flagged MISSING_BPDA_SURROGATE, declared (as now) they are accepted,
    and check_bpda_evaluated then asks for an evaluation under BPDA."""
    from torchrobust import data
    from torchrobust.reprogramming import reprogram

    x, y = data.as_tensors(data.load("mnist", "test"), n=2008)
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10))
    opt = torch.optim.SGD(mlp.parameters(), lr=0.1, momentum=0.9)
    for i in range(0, 2000, 50):
        loss = F.cross_entropy(mlp(x[i : i + 50]), y[i : i + 50])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model = reprogram(mlp.eval(), lam=0.8, K=3, irls_eps=1e-3)
    probe = x[2000:2008]
    found = find_zero_gradient_modules(model, probe)
    assert found and all(z.type == "NRPMLinear" and z.declares_surrogate for z in found)
    assert check_bpda_surrogates(model, probe) is None
    flag = check_bpda_evaluated(model, False)
    assert flag is not None and flag.code == "BPDA_NOT_EVALUATED"
    assert check_bpda_evaluated(model, True) is None
    monkeypatch.setattr(NRPMLinear, "bpda_surrogate", None)  # what the check saw before the declaration
    flag = check_bpda_surrogates(model, probe)
    assert flag is not None and flag.code == "MISSING_BPDA_SURROGATE" and "NRPMLinear: jump" in flag.message


def test_evaluate_adaptive_runs_bpda_through_the_nrpm_surrogate(monkeypatch: pytest.MonkeyPatch) -> None:
    """evaluate_adaptive sees the declared surrogate (bpda="auto"), runs its BPDA attacks through the layers'
    straight-through backward, and leaves the flags as they were."""
    from torchrobust.evaluate.adaptive import evaluate_adaptive

    calls = []
    real = nrpm_core.backward_fixed

    def spy(*a: object, **k: object) -> object:
        calls.append(1)
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(nrpm_core, "backward_fixed", spy)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), NRPMLinear(16, 8, lam=0.5, K=2, backend="eager"), nn.ReLU(),
                          NRPMLinear(8, 3, lam=0.5, K=2, backend="eager")).eval()
    x = torch.rand(12, 1, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    assert has_bpda_modules(model)
    res = evaluate_adaptive(model, x, y, "Linf", 0.1, whitebox="pgd", steps=3, restarts=1, blackbox=False,
                            checks=False, batch_size=12)
    assert res.config["bpda"] is True and {"bpda-pgd-ce", "bpda-pgd-margin"} <= set(res.correct)
    assert calls  # the BPDA jobs used the memory-bounded surrogate backward
    assert all(not m.straight_through for m in model.modules() if isinstance(m, NRPMLinear))


def test_layer_mode_equals_generic_hook_surrogate() -> None:
    """The memory-bounded in-layer surrogate and the generic full-tensor hook (irls_fixed_surrogate) agree."""
    from torchrobust.attacks.wrappers import irls_fixed_surrogate

    torch.manual_seed(2)
    conv = NRPMConv2d.from_module(nn.Conv2d(3, 4, 3, stride=2, padding=1).double(), lam=0.6, K=2, irls_eps=1e-2,
                                  backend="eager")
    model = nn.Sequential(conv).eval()
    x = torch.rand(2, 3, 7, 7, dtype=torch.float64, requires_grad=True)
    cot = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    (g_layer,) = _grads(BPDA(model)(x), cot, x)
    (g_hook,) = _grads(BPDA(model, surrogates={NRPMConv2d: irls_fixed_surrogate})(x), cot, x)
    assert torch.allclose(g_layer, g_hook, rtol=1e-9, atol=1e-11)
