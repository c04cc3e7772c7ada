"""Threat models: projections against brute-force references, norms, steepest-ascent steps, random starts."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from torchrobust.attacks import L1, L2, Linf, ThreatModel, ThreatName, get_threat
from torchrobust.attacks.threat import _project_l2_box_sorted, project_l1_box, project_l2_box
from torchrobust.errors import TorchRobustError


# ------------------------------------------------------------------------------------------------ references
def _ref_l1(d: np.ndarray, lo: np.ndarray, hi: np.ndarray, eps: float) -> np.ndarray:
    """Bisection on the Lagrange multiplier over soft-thresholding followed by clipping."""

    def v(lam: float) -> np.ndarray:
        return np.clip(np.sign(d) * np.maximum(np.abs(d) - lam, 0.0), lo, hi)

    if np.abs(v(0.0)).sum() <= eps:
        return v(0.0)
    a, b = 0.0, float(np.abs(d).max())
    for _ in range(200):
        m = (a + b) / 2
        a, b = (m, b) if np.abs(v(m)).sum() > eps else (a, m)
    return v(b)


def _ref_l2(d: np.ndarray, lo: np.ndarray, hi: np.ndarray, eps: float) -> np.ndarray:
    """Bisection on the scale s in v = clip(s d, lo, hi)."""
    if np.linalg.norm(np.clip(d, lo, hi)) <= eps:
        return np.clip(d, lo, hi)
    a, b = 0.0, 1.0
    for _ in range(200):
        m = (a + b) / 2
        a, b = (a, m) if np.linalg.norm(np.clip(m * d, lo, hi)) > eps else (m, b)
    return np.clip(a * d, lo, hi)


def _slsqp(d: np.ndarray, lo: np.ndarray, hi: np.ndarray, eps: float, p: int) -> np.ndarray:
    """The small QP min ||v - d||^2 s.t. ||v||_p <= eps, lo <= v <= hi, solved by SLSQP (ℓ1 via a split v = v+ - v-)."""
    n = len(d)
    if p == 2:
        res = minimize(
            lambda v: ((v - d) ** 2).sum(),
            np.clip(d, lo, hi) * 0.0,
            jac=lambda v: 2 * (v - d),
            bounds=list(zip(lo, hi, strict=True)),
            constraints=[{"type": "ineq", "fun": lambda v: eps**2 - (v**2).sum(), "jac": lambda v: -2 * v}],
            method="SLSQP",
            options={"ftol": 1e-14, "maxiter": 500},
        )
        return res.x

    # split variables: v = u - w with u in [0, hi], w in [0, -lo]
    def f(z: np.ndarray) -> float:
        return float(((z[:n] - z[n:] - d) ** 2).sum())

    def jac(z: np.ndarray) -> np.ndarray:
        g = 2 * (z[:n] - z[n:] - d)
        return np.concatenate([g, -g])

    res = minimize(
        f,
        np.zeros(2 * n),
        jac=jac,
        bounds=list(zip(np.zeros(n), hi, strict=True)) + list(zip(np.zeros(n), -lo, strict=True)),
        constraints=[{"type": "ineq", "fun": lambda z: eps - z.sum(), "jac": lambda z: -np.ones(2 * n)}],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    return res.x[:n] - res.x[n:]


def _random_case(g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    x = torch.rand(1, n, generator=g, dtype=torch.float64)
    x[torch.rand(1, n, generator=g) < 0.3] = 0.0  # many pixels exactly at the lower bound
    x[torch.rand(1, n, generator=g) < 0.1] = 1.0
    scale = 3 * float(torch.rand(1, generator=g))
    d = (2 * torch.rand(1, n, generator=g, dtype=torch.float64) - 1) * scale
    eps = 2 * float(torch.rand(1, generator=g))
    return x, d, eps


# ------------------------------------------------------------------------------------------------ projections
@pytest.mark.parametrize(
    "p, fn, ref",
    [
        (1, project_l1_box, _ref_l1),
        (2, project_l2_box, _ref_l2),
        (2, _project_l2_box_sorted, _ref_l2),
        (2, partial(project_l2_box, max_iter=1), _ref_l2),  # forces the sorted fallback when not settled
    ],
)
def test_projection_matches_bisection_reference(p: int, fn, ref) -> None:
    g = torch.Generator().manual_seed(1)
    inside_seen = 0
    for _ in range(400):
        n = int(torch.randint(1, 16, (1,), generator=g))
        x, d, eps = _random_case(g, n)
        lo, hi = -x, 1 - x
        v = fn(d, lo, hi, eps)[0].numpy()
        expect = ref(d[0].numpy(), lo[0].numpy(), hi[0].numpy(), eps)
        np.testing.assert_allclose(v, expect, atol=1e-9)
        inside_seen += int(np.linalg.norm(np.clip(d[0].numpy(), lo[0].numpy(), hi[0].numpy()), ord=p) <= eps)
    assert 20 < inside_seen < 380  # both branches (already inside / on the boundary) were exercised


@pytest.mark.parametrize("p, fn", [(1, project_l1_box), (2, project_l2_box)])
def test_projection_matches_slsqp(p: int, fn) -> None:
    g = torch.Generator().manual_seed(2)
    for _ in range(40):
        n = int(torch.randint(5, 9, (1,), generator=g))
        x, d, eps = _random_case(g, n)
        lo, hi = -x, 1 - x
        v = fn(d, lo, hi, eps)[0].numpy()
        expect = _slsqp(d[0].numpy(), lo[0].numpy(), hi[0].numpy(), eps, p)
        # the QP objective is strongly convex: compare objective values tightly, points loosely
        obj = ((v - d[0].numpy()) ** 2).sum()
        obj_ref = ((expect - d[0].numpy()) ** 2).sum()
        assert obj <= obj_ref + 1e-7
        np.testing.assert_allclose(v, expect, atol=2e-4)


@pytest.mark.parametrize("threat", [Linf(0.1), L2(0.7), L2(0.7, exact_projection=False), L1(2.0)])
def test_project_is_feasible_idempotent_and_nearest(threat: ThreatModel) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(64, 3, 4, 4, generator=g)
    x[x < 0.4] = 0.0
    u = x + 0.8 * torch.randn(x.shape, generator=g)
    proj = threat.project(u, x)
    assert threat.contains(proj, x).all()
    torch.testing.assert_close(threat.project(proj, x), proj, atol=1e-6, rtol=0)
    if isinstance(threat, L2) and not threat.exact_projection:
        return  # the approximation is feasible but not the nearest point
    # nearest: no random feasible point is closer to u than the projection
    dist = (proj - u).flatten(1).norm(dim=1)
    for _ in range(20):
        v = threat.project(x + torch.randn(x.shape, generator=g) * 0.3, x)
        assert (dist <= (v - u).flatten(1).norm(dim=1) + 1e-5).all()


def test_exact_l2_projection_is_closer_than_ball_then_box() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.rand(256, 20, generator=g, dtype=torch.float64)
    x[x < 0.5] = 0.0
    u = x + torch.randn(x.shape, generator=g, dtype=torch.float64)
    exact, approx = L2(1.0).project(u, x), L2(1.0, exact_projection=False).project(u, x)
    de, da = (exact - u).norm(dim=1), (approx - u).norm(dim=1)
    assert (de <= da + 1e-12).all() and (de < da - 1e-6).sum() > 50


def test_linf_projection_is_coordinatewise_clip() -> None:
    x = torch.tensor([[0.0, 0.5, 1.0, 0.95]])
    u = torch.tensor([[-0.3, 0.9, 0.2, 1.4]])
    out = Linf(0.1).project(u, x)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.6, 0.9, 1.0]]))


def test_l1_projection_rounding_stays_within_tolerance_in_float32() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.rand(128, 784, generator=g)
    x[x < 0.7] = 0.0
    u = x + torch.randn(x.shape, generator=g)
    for eps in (0.5, 10.0, 100.0):
        out = L1(eps).project(u, x)
        assert out.dtype == torch.float32
        assert L1(eps).contains(out, x).all()
        norms = (out.double() - x.double()).abs().sum(1)
        assert (norms > eps * (1 - 1e-4)).all()  # far points land on the sphere


# ------------------------------------------------------------------------------------------------ norms, contains
def test_norms_match_torch() -> None:
    d = torch.randn(7, 2, 3, 3)
    flat = d.flatten(1)
    torch.testing.assert_close(Linf(1).norm(d), flat.abs().max(1).values)
    torch.testing.assert_close(L2(1).norm(d), torch.linalg.norm(flat, dim=1))
    torch.testing.assert_close(L1(1).norm(d), flat.abs().sum(1))
    assert Linf(1).norm(d).shape == (7,)


def test_contains_flags_box_ball_and_nan() -> None:
    x = torch.full((4, 3), 0.5)
    adv = x.clone()
    adv[1, 0] = 0.5 + 0.2  # outside Linf 0.1
    adv[2, 0] = 1.2 - 0.5 + 0.5  # outside the box (1.2)
    adv[3, 1] = float("nan")
    ok = Linf(0.1).contains(adv, x)
    assert ok.tolist() == [True, False, False, False]
    assert Linf(0.1).contains(x + 0.1 + 5e-8, x).all()  # rounding-level excess is tolerated
    assert not Linf(0.1).contains(x + 0.1 + 1e-4, x).any()


# ------------------------------------------------------------------------------------------------ steps
def _feasible_moves(p: float, n: int, alpha: float, g: torch.Generator) -> torch.Tensor:
    v = torch.randn(2000, n, generator=g, dtype=torch.float64)
    if p == math.inf:
        return alpha * v.clamp(-1, 1)
    norms = v.abs().sum(1, keepdim=True) if p == 1 else v.norm(dim=1, keepdim=True)
    return alpha * v / norms


@pytest.mark.parametrize("threat", [Linf(1.0), L2(1.0), L1(1.0, q=100)])
def test_step_is_the_steepest_ascent_direction(threat: ThreatModel) -> None:
    g = torch.Generator().manual_seed(6)
    n, alpha = 12, 0.05
    x_adv = torch.full((1, n), 0.5, dtype=torch.float64)  # interior: no coordinate is blocked
    grad = torch.randn(1, n, generator=g, dtype=torch.float64)
    move = threat.step(x_adv, grad, alpha) - x_adv
    assert threat.norm(move).item() == pytest.approx(alpha, rel=1e-9)
    gain = (grad * move).sum().item()
    dual = {math.inf: grad.abs().sum(), 2.0: grad.norm(), 1.0: grad.abs().max()}[threat.p].item()
    assert gain == pytest.approx(alpha * dual, rel=1e-9)  # Hölder's bound is attained
    assert gain >= (_feasible_moves(threat.p, n, alpha, g) @ grad[0]).max().item() - 1e-12


def test_l1_topk_step_solves_its_linear_program() -> None:
    """Top-k step = argmax g·v s.t. ||v||_1 <= alpha, ||v||_inf <= alpha/k (k = coordinates moved)."""
    g = torch.Generator().manual_seed(7)
    n, alpha = 200, 0.4
    threat = L1(1.0, q=95.0)
    k = threat.num_moved(n)
    assert k == 10
    x_adv = torch.full((3, n), 0.5, dtype=torch.float64)
    grad = torch.randn(3, n, generator=g, dtype=torch.float64)
    move = threat.step(x_adv, grad, alpha) - x_adv
    assert ((move != 0).sum(1) == k).all()
    torch.testing.assert_close(move.abs().sum(1), torch.full((3,), alpha, dtype=torch.float64))
    optimum = alpha / k * grad.abs().topk(k, dim=1).values.sum(1)
    torch.testing.assert_close((grad * move).sum(1), optimum)
    assert (torch.sign(move[move != 0]) == torch.sign(grad[move != 0])).all()


def test_l1_step_skips_coordinates_blocked_by_the_box() -> None:
    x_adv = torch.tensor([[0.0, 1.0, 0.0, 0.5, 1.0]])
    grad = torch.tensor([[-9.0, 8.0, 0.1, 0.05, -0.01]])  # the two largest push out of the box
    move = L1(1.0, q=100).step(x_adv, grad, 0.3) - x_adv
    torch.testing.assert_close(move, torch.tensor([[0.0, 0.0, 0.3, 0.0, 0.0]]))
    x_adv = torch.tensor([[0.05, 0.5]])
    grad = torch.tensor([[-1.0, 0.1]])
    move = L1(1.0, q=100).step(x_adv, grad, 0.3) - x_adv
    assert move[0, 0] < 0 and move[0, 1] == 0
    move = L1(1.0, q=100, gap=0.1).step(x_adv, grad, 0.3) - x_adv  # within gap of the bound it points to
    assert move[0, 0] == 0 and move[0, 1] == pytest.approx(0.3)


def test_zero_gradient_gives_no_move() -> None:
    x = torch.rand(2, 5)
    for threat in (Linf(0.1), L2(0.1), L1(0.1)):
        torch.testing.assert_close(threat.step(x, torch.zeros_like(x), 0.1), x)


# ------------------------------------------------------------------------------------------------ random init
@pytest.mark.parametrize("threat", [Linf(0.2), L2(1.5), L1(5.0)])
def test_random_init_is_inside_per_example_and_seeded(threat: ThreatModel) -> None:
    x = torch.rand(32, 1, 8, 8)
    x[x < 0.6] = 0.0
    a = threat.random_init(x, torch.Generator().manual_seed(0))
    b = threat.random_init(x, torch.Generator().manual_seed(0))
    c = threat.random_init(x, torch.Generator().manual_seed(1))
    assert threat.contains(a, x).all()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    delta = (a - x).flatten(1)
    assert (delta.abs().sum(1) > 0).all()  # every example moved
    assert len({tuple(r.tolist()) for r in delta[:, :5]}) > 1  # not the same noise for every example
    # pixels at 0 can only move up
    assert (a[x == 0] >= 0).all() and (a[x == 0] > 0).any()


def test_l1_random_init_is_sparse() -> None:
    x = torch.full((16, 400), 0.5)
    delta = L1(5.0).random_init(x, torch.Generator().manual_seed(0)) - x
    frac = (delta != 0).float().mean().item()
    assert 0.05 < frac < 0.2


# ------------------------------------------------------------------------------------------------ names
@pytest.mark.parametrize(
    "name, cls", [("Linf", Linf), ("linf", Linf), ("inf", Linf), ("L2", L2), ("l2", L2), ("L1", L1), ("l1", L1)]
)
def test_get_threat_aliases(name: str, cls: type) -> None:
    t = get_threat(name, 0.5)
    assert type(t) is cls and t.eps == 0.5 and t.name in {"Linf", "L2", "L1"}


def test_get_threat_passes_models_through_and_enum() -> None:
    t = L1(3.0, q=90)
    assert get_threat(t) is t
    t2 = get_threat(t, 4.0)
    assert t2.eps == 4.0 and t2.q == 90
    assert get_threat(ThreatName.L2, 1.0) == L2(1.0)
    assert ThreatName("Linf") is ThreatName.LINF and ThreatName.LINF == "Linf"
    assert (Linf.p, L2.p, L1.p) == (math.inf, 2.0, 1.0)


@pytest.mark.parametrize(
    "call",
    [
        lambda: get_threat("L3", 1.0),
        lambda: get_threat("Linf"),
        lambda: get_threat(7, 1.0),
        lambda: Linf(-0.1),
        lambda: L2(float("nan")),
        lambda: L1(float("inf")),
        lambda: L1(1.0, q=101),
        lambda: L1(1.0, init_density=0),
    ],
)
def test_threat_errors_are_one_line(call) -> None:
    with pytest.raises(TorchRobustError) as info:
        call()
    assert "\n" not in str(info.value)


def test_default_alpha() -> None:
    assert Linf(0.3).default_alpha(10) == pytest.approx(0.075)
    assert L2(2.0).default_alpha(100) == pytest.approx(0.05)
    assert L1(12.0).default_alpha(100) == pytest.approx(1.2)  # SLIDE-scale steps
    assert L1(12.0).default_alpha(10) == pytest.approx(3.0)


@pytest.mark.parametrize("threat", [Linf(0.1), L2(0.7), L1(2.0)])
def test_projector_and_step_inplace_agree_with_pure_versions(threat: ThreatModel) -> None:
    g = torch.Generator().manual_seed(8)
    x = torch.rand(16, 3, 5, 5, generator=g)
    x[x < 0.3] = 0.0
    u = x + torch.randn(x.shape, generator=g)
    fast = threat.projector(x)(u)
    torch.testing.assert_close(fast, threat.project(u, x), atol=1e-6, rtol=0)
    assert threat.contains(fast, x).all()
    u_copy = u.clone()
    torch.testing.assert_close(threat.projector(x, inplace=True)(u_copy), fast, atol=0, rtol=0)
    grad = torch.randn(x.shape, generator=g)
    grad_copy = grad.clone()
    stepped = threat.step_(u.clone(), grad, 0.05)
    torch.testing.assert_close(stepped, threat.step(u, grad, 0.05), atol=1e-7, rtol=0)
    assert torch.equal(grad, grad_copy)  # the gradient is never modified


@pytest.mark.parametrize("density", [0.02, 0.3, 1.0])
def test_l1_projection_sparse_and_dense_paths_agree_with_reference(density: float) -> None:
    """Sparse perturbations take the partial top-k path, dense ones the full sort; both are exact."""
    g = torch.Generator().manual_seed(9)
    x = torch.rand(32, 60, generator=g, dtype=torch.float64)
    x[x < 0.5] = 0.0
    d = torch.randn(32, 60, generator=g, dtype=torch.float64) * (torch.rand(32, 60, generator=g) < density)
    v = project_l1_box(d, -x, 1 - x, 0.8)
    for i in range(32):
        expect = _ref_l1(d[i].numpy(), -x[i].numpy(), 1 - x[i].numpy(), 0.8)
        np.testing.assert_allclose(v[i].numpy(), expect, atol=1e-9)


def test_l2_projection_rounding_stays_within_tolerance_in_float32() -> None:
    g = torch.Generator().manual_seed(10)
    x = torch.rand(128, 784, generator=g)
    x[x < 0.7] = 0.0
    u = x + 0.3 * torch.randn(x.shape, generator=g)
    for eps in (0.05, 2.0, 5.0):
        out = L2(eps).project(u, x)
        assert out.dtype == torch.float32 and L2(eps).contains(out, x).all()
        norms = (out.double() - x.double()).norm(dim=1)
        far = (u.clamp(0, 1).double() - x.double()).norm(dim=1) > eps
        assert far.any() and (norms[far] > eps * (1 - 1e-5)).all()  # far points land on the sphere
        exact64 = L2(eps).project(u.double(), x.double())
        torch.testing.assert_close(out.double(), exact64, atol=2e-6, rtol=0)
