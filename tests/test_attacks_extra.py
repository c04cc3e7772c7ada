"""C&W, DeepFool, SPSA, Square, ℓ0, EOT and BPDA: invariants on tiny local models (no golden numbers)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import fit, prototype_images, tiny_mlp
from torch import Tensor, nn

from torchrobust.attacks import PGD, Attack, create
from torchrobust.attacks.cw import CW, CWLinf
from torchrobust.attacks.deepfool import DeepFool
from torchrobust.attacks.l0 import L0, L0Attack
from torchrobust.attacks.spsa import SPSA
from torchrobust.attacks.square import Square, _eta, p_schedule
from torchrobust.attacks.threat import L2, Linf
from torchrobust.attacks.wrappers import BPDA, EOT, EOTAttack, EOTModel, has_bpda_modules
from torchrobust.errors import TorchRobustError

N_CLASSES = 10
SHAPE = (1, 8, 8)


def _data(n: int, seed: int, shape: tuple[int, ...] = SHAPE) -> tuple[Tensor, Tensor]:
    return prototype_images(n, seed, shape, N_CLASSES)


def _train(shape: tuple[int, ...] = SHAPE, seed: int = 0) -> nn.Module:
    return fit(tiny_mlp(shape, N_CLASSES, seed=seed), *_data(512, 0, shape))


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    model = _train()
    xt, yt = _data(200, 1)
    assert (model(xt).argmax(1) == yt).float().mean() > 0.95
    return model


@pytest.fixture(scope="module")
def test_set() -> tuple[Tensor, Tensor]:
    return _data(64, 1)


def _acc(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


# every attack with small budgets so the whole file stays fast
ATTACKS: dict[str, tuple[callable, object]] = {
    "cw": (lambda: CW(eps=1.5, steps=60), L2(1.5)),
    "cw_linf": (lambda: CWLinf(eps=0.25, steps=20, seed=0), Linf(0.25)),
    "deepfool_l2": (lambda: DeepFool("L2", eps=1.5), L2(1.5)),
    "deepfool_linf": (lambda: DeepFool("Linf", eps=0.25), Linf(0.25)),
    "spsa": (lambda: SPSA("Linf", eps=0.25, steps=15, n_samples=32, seed=0), Linf(0.25)),
    "square_linf": (lambda: Square("Linf", eps=0.25, n_queries=200, seed=0), Linf(0.25)),
    "square_l2": (lambda: Square("L2", eps=2.0, n_queries=200, seed=0), L2(2.0)),
    "l0": (lambda: L0Attack(eps=12, steps=20), L0(12)),
    "l0_one_step": (lambda: L0Attack(eps=12, method="one_step"), L0(12)),
    "eot_pgd": (lambda: EOT(PGD("Linf", eps=0.25, steps=10, seed=0), 3), Linf(0.25)),
}
DETERMINISTIC = ["cw", "deepfool_l2", "deepfool_linf", "l0", "l0_one_step"]


@pytest.mark.parametrize("name", list(ATTACKS))
def test_budget_box_no_mutation_and_stronger_than_nothing(name: str, trained: nn.Module, test_set) -> None:
    make, threat = ATTACKS[name]
    x, y = test_set
    x0, y0 = x.clone(), y.clone()
    atk = make()
    assert isinstance(atk, Attack)
    x_adv = atk(trained, x, y)
    assert torch.equal(x, x0) and torch.equal(y, y0)  # inputs not mutated
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert bool(threat.contains(x_adv, x).all())
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    assert _acc(trained, x_adv, y) < _acc(trained, x, y) - 0.05, name
    assert trained.training is False and all(p.grad is None for p in trained.parameters())


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_batch_consistency(name: str, trained: nn.Module, test_set) -> None:
    make, _ = ATTACKS[name]
    x, y = test_set
    full = make()(trained, x[:12], y[:12])
    parts = torch.cat([make()(trained, x[i:i + 4], y[i:i + 4]) for i in range(0, 12, 4)])
    assert torch.allclose(full, parts, atol=1e-5)


@pytest.mark.parametrize("name", ["spsa", "square_linf", "square_l2", "cw_linf"])
def test_seeded_reproducibility(name: str, trained: nn.Module, test_set) -> None:
    make, _ = ATTACKS[name]
    x, y = test_set
    a, b = make()(trained, x[:16], y[:16]), make()(trained, x[:16], y[:16])
    assert torch.equal(a, b)
    other = make()
    other.seed = 1
    assert not torch.equal(other(trained, x[:16], y[:16]), a)


def test_registry_and_threat_errors() -> None:
    assert isinstance(create("cw", threat="L2", eps=1.0), CW)
    assert isinstance(create("cw_linf", threat="Linf", eps=0.1), CWLinf)
    assert isinstance(create("square", threat="L2", eps=1.0), Square)
    assert isinstance(create("spsa", threat="Linf", eps=0.1), SPSA)
    assert isinstance(create("deepfool", threat="Linf", eps=0.1), DeepFool)
    assert isinstance(create("l0", threat="L0", eps=5), L0Attack)
    with pytest.raises(TorchRobustError, match="ℓ2"):
        CW("Linf", eps=0.1)
    with pytest.raises(TorchRobustError, match="ℓ∞"):
        CWLinf("L2", eps=0.1)
    with pytest.raises(TorchRobustError, match="L1"):
        Square("L1", eps=1.0)
    with pytest.raises(TorchRobustError, match="L1"):
        DeepFool("L1", eps=1.0)
    with pytest.raises(TorchRobustError, match="whole number"):
        L0(2.5)
    with pytest.raises(TorchRobustError):
        SPSA(n_samples=0)
    with pytest.raises(TorchRobustError, match="unknown L0 method"):
        L0Attack(eps=3, method="greedy")


def test_cw_minimum_norm_below_deepfool_sanity(trained: nn.Module, test_set) -> None:
    """Unbounded C&W and DeepFool find adversarial examples for (almost) every point, and C&W's median norm is
    not larger than DeepFool's by much (both are minimum-norm attacks)."""
    x, y = test_set
    cw = CW(eps=None, steps=100)(trained, x, y)
    df = DeepFool("L2", eps=None)(trained, x, y)
    with torch.no_grad():
        ok_cw = trained(cw).argmax(1) != y
        ok_df = trained(df).argmax(1) != y
    assert ok_cw.float().mean() > 0.95 and ok_df.float().mean() > 0.95
    n_cw = (cw - x).flatten(1).norm(dim=1)[ok_cw].median()
    n_df = (df - x).flatten(1).norm(dim=1)[ok_df].median()
    assert n_cw < 1.25 * n_df


def test_cw_budget_keeps_only_small_adversarials(trained: nn.Module, test_set) -> None:
    x, y = test_set
    unb = CW(eps=None, steps=60)(trained, x, y)
    norms = (unb - x).flatten(1).norm(dim=1)
    with torch.no_grad():
        fooled = trained(unb).argmax(1) != y
    eps = float(norms[fooled].median())
    bounded = CW(eps=eps, steps=60)(trained, x, y)
    with torch.no_grad():
        fooled_b = trained(bounded).argmax(1) != y
    # every minimum-norm adversarial within eps is returned as is
    small = fooled & (norms <= eps)
    assert torch.allclose(bounded[small], unb[small])
    assert bool(fooled_b[small].all())
    assert bool(((bounded - x).flatten(1).norm(dim=1) <= eps * (1 + 1e-5)).all())


def test_deepfool_linf_overshoot_and_early_freeze(trained: nn.Module, test_set) -> None:
    x, y = test_set
    a = DeepFool("Linf", eps=None, overshoot=0.0)(trained, x, y)
    b = DeepFool("Linf", eps=None, overshoot=0.5)(trained, x, y)
    na = (a - x).flatten(1).abs().amax(1)
    nb = (b - x).flatten(1).abs().amax(1)
    assert float(nb.mean()) > float(na.mean())


def test_square_schedule_and_eta() -> None:
    assert p_schedule(0.8, 0, 10000) == 0.8
    assert p_schedule(0.8, 11, 10000) == 0.4
    assert p_schedule(0.8, 9000, 10000) == pytest.approx(0.8 / 512)
    assert p_schedule(0.8, 100, 1000) == pytest.approx(0.8 / 16)  # rescaled: 100/1000 -> 1000/10000
    for s in (1, 3, 5, 8):
        e = _eta(s, torch.float64, torch.device("cpu"))
        assert e.shape == (s, s) and float(e.norm()) == pytest.approx(1.0)


def test_square_l2_uses_the_budget(trained: nn.Module, test_set) -> None:
    x, y = test_set
    x_adv = Square("L2", eps=1.0, n_queries=50, seed=0)(trained, x[:8], y[:8])
    norms = (x_adv - x[:8]).flatten(1).norm(dim=1)
    assert bool((norms <= 1.0 + 1e-5).all()) and float(norms.max()) > 0.5


# ------------------------------------------------------------------------------------------------------------- ℓ0
def test_l0_norm_counts_pixels_across_channels() -> None:
    x = torch.zeros(2, 3, 4, 4)
    xa = x.clone()
    xa[0, :, 1, 1] = 0.5  # one pixel, three channels
    xa[0, 0, 2, 2] = 0.1  # one pixel, one channel
    xa[1, 2, 0, 0] = 1.0
    assert L0(2).norm(xa - x).tolist() == [2.0, 1.0]
    flat = torch.zeros(1, 10)
    assert L0(1).norm(flat.index_fill(1, torch.tensor([3, 4]), 0.2) - flat).tolist() == [2.0]


def test_l0_projection_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 3, 3, generator=g)
    z = x + 0.8 * torch.randn(3, 2, 3, 3, generator=g)
    k = 2
    proj = L0(k).project(z, x)
    zc = z.clamp(0, 1)
    for b in range(3):
        best, best_d = None, math.inf
        for keep in itertools.combinations(range(9), k):
            m = torch.zeros(9, dtype=torch.bool)
            m[list(keep)] = True
            cand = torch.where(m.view(1, 3, 3), zc[b], x[b])
            d = float((cand - z[b]).square().sum())
            if d < best_d:
                best, best_d = cand, d
        assert torch.allclose(proj[b], best)
    assert bool(L0(k).contains(proj, x).all())


def test_l0_one_step_sets_bounds_and_iterative_not_worse(trained: nn.Module, test_set) -> None:
    x, y = test_set
    one = L0Attack(eps=5, method="one_step")(trained, x, y)
    changed = one != x
    assert bool(((one[changed] == 0) | (one[changed] == 1)).all())
    assert bool((L0(5).norm(one - x) <= 5).all())
    it = L0Attack(eps=5, steps=20)(trained, x, y)
    with torch.no_grad():
        from torchrobust.attacks.base import margin

        m_one, m_it = margin(trained(one), y), margin(trained(it), y)
        succ_one, succ_it = trained(one).argmax(1) != y, trained(it).argmax(1) != y
    assert bool((succ_it | ~succ_one).all())  # whatever one-step breaks, iterative breaks
    assert bool((succ_it | (m_it >= m_one - 1e-5)).all())
    assert _acc(trained, it, y) <= _acc(trained, one, y)


def test_pgd_runs_with_the_l0_threat(trained: nn.Module, test_set) -> None:
    x, y = test_set
    x_adv = PGD(L0(8), steps=10, seed=0)(trained, x, y)  # random start, steps and projection from the threat
    assert bool(L0(8).contains(x_adv, x).all())
    assert bool((L0(8).norm(x_adv - x) <= 8).all())
    start = L0(8).random_init(x, torch.Generator().manual_seed(0))
    assert bool((L0(8).norm(start - x) <= 8).all()) and float(L0(8).norm(start - x).max()) > 0


def test_l0_three_channel_budget() -> None:
    model = _train((3, 4, 4))
    x, y = _data(32, 1, (3, 4, 4))
    x_adv = L0Attack(eps=3, steps=10)(model, x, y)
    assert bool((L0(3).norm(x_adv - x) <= 3).all())
    assert float(L0(3).norm(x_adv - x).max()) == 3.0


# ------------------------------------------------------------------------------------------------------------- EOT
class _Noisy(nn.Module):
    """A randomised model: logits + Gaussian noise on every forward pass."""

    def __init__(self, base: nn.Module, sigma: float) -> None:
        super().__init__()
        self.base, self.sigma = base, sigma

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        return out + self.sigma * torch.randn_like(out)


def test_eot_model_averages_and_its_gradient_is_the_mean(trained: nn.Module, test_set) -> None:
    x, _ = test_set
    noisy = _Noisy(trained, 5.0)
    eot = EOTModel(noisy, 2000)
    with torch.no_grad():
        assert torch.allclose(eot(x[:4]), trained(x[:4]), atol=0.5)
    xa = x[:4].clone().requires_grad_(True)
    (g_eot,) = torch.autograd.grad(EOTModel(noisy, 3)(xa)[:, 0].sum(), xa)
    (g_true,) = torch.autograd.grad(trained(xa)[:, 0].sum(), xa)
    assert torch.allclose(g_eot, g_true, atol=1e-5)  # additive noise: every draw has the true gradient
    unbatched = EOTModel(noisy, 3, batched=False)
    assert unbatched(x[:4]).shape == (4, N_CLASSES)


def test_eot_factory_and_attack(trained: nn.Module, test_set) -> None:
    x, y = test_set
    assert isinstance(EOT(trained, 4), EOTModel)
    atk = EOT(PGD("Linf", eps=0.25, steps=10, seed=0), 4)
    assert isinstance(atk, EOTAttack) and atk.threat == Linf(0.25)
    with pytest.raises(TorchRobustError):
        EOT("pgd", 4)
    reg = create("eot", attack="pgd", n_samples=2, threat="Linf", eps=0.1, steps=5)
    assert isinstance(reg, EOTAttack)
    x_adv = reg(_Noisy(trained, 0.5), x[:8], y[:8])
    assert bool(Linf(0.1).contains(x_adv, x[:8]).all())


# ------------------------------------------------------------------------------------------------------------- BPDA
class _Step(nn.Module):
    """Hard threshold with zero gradient almost everywhere, declaring the BPDA protocol (identity surrogate)."""

    bpda_surrogate = "identity"

    def __init__(self) -> None:
        super().__init__()
        self.straight_through = False

    def forward(self, x: Tensor) -> Tensor:
        hard = (x > 0.5).to(x.dtype)
        return x + (hard - x).detach() if self.straight_through else hard


def test_bpda_straight_through_real_forward(trained: nn.Module, test_set) -> None:
    x, y = test_set
    model = nn.Sequential(_Step(), trained).eval()
    assert has_bpda_modules(model) and not has_bpda_modules(trained)
    xa = x[:8].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(model(xa), y[:8]), xa, allow_unused=True)
    assert g is None or float(g.abs().sum()) == 0.0
    wrapped = BPDA(model)
    assert wrapped.active_modules == ["0"]
    out_real = model(x[:8])
    out_bpda = wrapped(xa)
    assert torch.equal(out_bpda.detach(), out_real)  # forward is the real model, bit for bit
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(out_bpda, y[:8]), xa)
    assert float(g.abs().sum()) > 0
    assert model[0].straight_through is False  # restored after the call
    with BPDA(model) as m:
        assert m is model and model[0].straight_through is True
    assert model[0].straight_through is False
    # PGD through BPDA is stronger than plain PGD on the thresholded model
    plain = PGD("Linf", eps=0.3, steps=20, seed=0)(model, x, y)
    adaptive = PGD("Linf", eps=0.3, steps=20, seed=0)(BPDA(model), x, y)
    assert _acc(model, adaptive, y) < _acc(model, plain, y)


def test_bpda_generic_surrogate_for_nrpm_and_user_modules(test_set) -> None:
    from torchrobust.nn.nrpm_layers import NRPMLinear

    x, _ = test_set
    torch.manual_seed(0)
    lin = nn.Linear(64, N_CLASSES)
    nrpm = NRPMLinear.from_module(lin, lam=0.3, K=2, backend="eager")
    model = nn.Sequential(nn.Flatten(), nrpm).eval()
    assert has_bpda_modules(model)
    xa = x[:4].clone().requires_grad_(True)
    with torch.no_grad():
        real = model(x[:4])
    out = BPDA(model, nrpm="linear")(xa)
    assert torch.equal(out.detach(), real)
    (g,) = torch.autograd.grad(out[:, 3].sum(), xa)
    assert torch.allclose(g.flatten(1), lin.weight[3].expand(4, -1).detach(), atol=1e-6)  # linear surrogate
    assert not nrpm._forward_hooks  # hooks removed after the call

    # default: IRLS weights held constant -> gradient λ W + (1 - λ) D u W / Σ u with u the last IRLS weights
    out = BPDA(model)(xa)
    assert torch.equal(out.detach(), real)
    (g,) = torch.autograd.grad(out[:, 3].sum(), xa)
    with torch.no_grad():
        xr, w = x[:4].flatten(1).double(), lin.weight.double()
        D = w.shape[1]
        p = xr[:, None, :] * w[None]
        z = p.sum(-1)
        u = 1.0 / ((p - z[..., None] / D).abs() + nrpm.irls_eps)  # K = 2: weights of the second (last) step
        z = D * (u * p).sum(-1) / u.sum(-1)
        u = 1.0 / ((p - z[..., None] / D).abs() + nrpm.irls_eps)
        expect = 0.3 * w[3] + 0.7 * D * u[:, 3] * w[3] / u[:, 3].sum(-1, keepdim=True)
    assert torch.allclose(g.flatten(1).double(), expect, atol=1e-4)
    (g_true,) = torch.autograd.grad(model(xa)[:, 3].sum(), xa)
    assert not torch.allclose(g, g_true, atol=1e-4)  # a different (surrogate) gradient

    # a user surrogate for an arbitrary module type: quantiser with identity backward
    class Quant(nn.Module):
        def forward(self, v: Tensor) -> Tensor:
            return torch.round(v * 4) / 4

    q = nn.Sequential(Quant(), nn.Flatten(), nn.Linear(64, N_CLASSES)).eval()
    xa = x[:4].clone().requires_grad_(True)
    out = BPDA(q, surrogates={Quant: lambda mod, v: v})(xa)
    assert torch.equal(out.detach(), q(x[:4]))
    (g,) = torch.autograd.grad(out[:, 0].sum(), xa)
    assert float(g.abs().sum()) > 0


def test_bpda_with_forged(trained: nn.Module, test_set) -> None:
    from torchrobust.nn.forged import Forged

    x, y = test_set
    forged = Forged(c_r=0.5)
    forged.track()
    model = nn.Sequential(forged, trained).eval()
    with torch.no_grad():
        model(x)
    forged.freeze()
    xa = x[:8].clone().requires_grad_(True)
    out = BPDA(model)(xa)
    assert torch.equal(out.detach(), model(x[:8]))
    (g,) = torch.autograd.grad(out.sum(), xa)
    with torch.no_grad():
        z = forged(x[:8])
    assert not torch.equal(z, x[:8])  # the threshold zeroes something
    z.requires_grad_(True)
    (g_base,) = torch.autograd.grad(trained(z).sum(), z)
    assert torch.allclose(g, g_base, atol=1e-6)  # identity surrogate: d forged / dx = 1
    assert forged.straight_through is False


def test_spsa_small_forward_batches_and_gradient_estimate(trained: nn.Module, test_set) -> None:
    """With max_batch smaller than one example's samples the directions are drawn in chunks; the attack still works,
    and on a linear model the SPSA estimate points along the true margin gradient."""
    x, y = test_set
    x_adv = SPSA("Linf", eps=0.25, steps=15, n_samples=32, max_batch=16, seed=0)(trained, x[:16], y[:16])
    assert bool(Linf(0.25).contains(x_adv, x[:16]).all())
    assert _acc(trained, x_adv, y[:16]) < _acc(trained, x[:16], y[:16])
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(64, N_CLASSES)).eval()
    xs, ys = torch.full((2, *SHAPE), 0.5), y[:2]
    atk = SPSA("Linf", eps=0.1, n_samples=2000, delta=1e-2, max_batch=1000)
    est = atk.estimate_gradient(lin, xs, ys, torch.Generator().manual_seed(0))
    xg = xs.clone().requires_grad_(True)
    from torchrobust.attacks.base import margin

    (true,) = torch.autograd.grad(margin(lin(xg), ys).sum(), xg)
    cos = nn.functional.cosine_similarity(est.flatten(1), true.flatten(1))
    assert bool((cos > 0.7).all()), cos


def test_irls_surrogate_value_matches_nrpm_conv(test_set) -> None:
    from torchrobust.attacks.wrappers import irls_fixed_surrogate
    from torchrobust.nn.nrpm_layers import NRPMConv2d

    x, _ = test_set
    torch.manual_seed(0)
    conv = NRPMConv2d.from_module(nn.Conv2d(1, 3, 3, stride=2, padding=1), lam=0.4, K=3, backend="eager")
    with torch.no_grad():
        real = conv(x[:4])
    xa = x[:4].clone().requires_grad_(True)
    h = irls_fixed_surrogate(conv, xa)
    assert h.shape == real.shape
    assert torch.allclose(h.detach(), real, atol=1e-4)
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(48, N_CLASSES)).eval()
    out = BPDA(model)(xa)
    assert torch.equal(out.detach(), model(x[:4]))
    (g,) = torch.autograd.grad(out.sum(), xa)
    assert bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0
