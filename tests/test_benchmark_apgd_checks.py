"""The helpers of the APGD-vs-reference benchmarks (benchmarks/apgd_l2_cost.py, apgd_seed_sweep.py,
apgd_reference_diffs.py, strong_vs_pgd20_cost.py): the projections they time are the ones they name, the seed
summary counts right, the patched old behaviours are what they claim and are undone."""

from __future__ import annotations

import pytest
import torch
from conftest import load_benchmark

from torchrobust.attacks import L1, L2
from torchrobust.attacks import apgd as apgd_module


@pytest.fixture(scope="module")
def cost():
    return load_benchmark("apgd_l2_cost")


@pytest.fixture(scope="module")
def diffs():
    return load_benchmark("apgd_reference_diffs")


def test_timed_projections_are_the_exact_and_the_scale_then_clip_one(cost) -> None:
    pytest.importorskip("pyautoattack")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 28, 28, generator=g) * (torch.rand(6, 1, 28, 28, generator=g) > 0.7)  # MNIST-like zeros
    d = torch.randn(x.shape, generator=g)
    x_u = x + 2.0 * d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    fns = cost.projections(x, 1.0)
    out = {k: fn(x_u.clone()) for k, fn in fns.items()}
    exact = out["exact-general"]
    for k in ("newton", "newton-s"):
        assert torch.allclose(out[k], exact, atol=1e-5), k
    assert torch.allclose(out["scale-clip"], out["reference"], atol=1e-6)
    for k, v in out.items():
        assert bool(L2(1.0).contains(v, x, tol=1e-5).all()), k
    dist = {k: (v - x_u).flatten(1).norm(dim=1) for k, v in out.items()}
    assert bool((dist["exact-general"] <= dist["reference"] + 1e-5).all())  # the exact one is the nearest
    assert bool((dist["exact-general"] < dist["reference"] - 1e-3).any())  # and strictly so where the box bites


def test_seed_summary_counts() -> None:
    sweep = load_benchmark("apgd_seed_sweep")
    t, f = True, False
    flags = {"ours": {0: torch.tensor([t, t, f, f]), 1: torch.tensor([t, f, f, f])},
             "ref": {0: torch.tensor([t, f, f, f]), 1: torch.tensor([t, f, f, f])}}
    s = sweep.summarise(flags)
    assert s["rows"][0] == {"seed": 0, "ours": 50.0, "ref": 25.0, "diff": 25.0, "agree": 75.0}
    assert s["rows"][1] == {"seed": 1, "ours": 25.0, "ref": 25.0, "diff": 0.0, "agree": 100.0}
    assert s["mean"] == {"ours": 37.5, "ref": 25.0}
    assert s["self_agree"] == {"ours": 75.0, "ref": 100.0}


def test_patched_old_l1_behaviours_are_the_old_ones_and_are_undone(diffs) -> None:
    g = torch.Generator().manual_seed(0)
    x = 0.1 + 0.9 * torch.rand(4, 1, 28, 28, generator=g)
    x_u = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    threat = L1(5.0)
    current = apgd_module._project(threat, x_u, x)
    with diffs.exact_l1_iterates():
        assert torch.equal(apgd_module._project(threat, x_u, x), threat.project(x_u, x))
    assert torch.equal(apgd_module._project(threat, x_u, x), current)
    assert not torch.equal(current, threat.project(x_u, x))  # the residues: the patch changes something

    with diffs.sparse_l1_start():
        sparse = apgd_module._start(threat, x, torch.Generator().manual_seed(1))
        l2 = apgd_module._start(L2(1.0), x, torch.Generator().manual_seed(1))
    assert torch.equal(sparse, threat.random_init(x, torch.Generator().manual_seed(1)))
    assert torch.equal(l2, L2(1.0).random_init(x, torch.Generator().manual_seed(1)))
    ref_start = apgd_module._start(threat, x, torch.Generator().manual_seed(1))
    assert not torch.equal(ref_start, sparse)


def test_budget_counts_points_over_eps(diffs) -> None:
    x = torch.zeros(3, 4)
    x_adv = torch.tensor([[0.5, 0.5, 0, 0], [0.5, 0.5, 0.1, 0], [0.2, 0, 0, 0]])
    over, worst, box = diffs._budget(x_adv, x, 1.0)
    assert (over, box) == (1, True) and worst == pytest.approx(0.1)
    assert diffs._budget(x_adv - 0.3, x, 1.0)[2] is False
