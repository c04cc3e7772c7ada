"""Randomized smoothing (Cohen et al. 2019): PREDICT / CERTIFY against exact answers on tiny models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import beta, norm
from torch import nn

from torchrobust.errors import TorchRobustError
from torchrobust.evaluate.certify import (
    ABSTAIN,
    CertifyResult,
    Smooth,
    certified_accuracy_curve,
    certify_dataset,
    clopper_pearson_lower,
    plot_certified_accuracy,
)


class Constant(nn.Module):
    """Always predicts class ``c``, whatever the input (so p_A = 1 exactly)."""

    def __init__(self, c: int, num_classes: int = 3) -> None:
        super().__init__()
        self.c, self.k = c, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], self.k, dtype=x.dtype, device=x.device)
        out[:, self.c] = 1.0
        return out


class SignOfFirstPixel(nn.Module):
    """Class 1 iff the first input coordinate is > 0.5: at x_0 = 0.5 the noise makes it a fair coin."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1)[:, :1] - 0.5
        return torch.cat([-z, z], dim=1)


def linear_two_class(w: torch.Tensor, b: float) -> nn.Module:
    """Logits (0, w·x + b): the smoothed top-class probability is Φ(|w·x + b| / (σ‖w‖)) exactly."""
    lin = nn.Linear(w.numel(), 2)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([torch.zeros_like(w), w]))
        lin.bias.copy_(torch.tensor([0.0, b]))
    return nn.Sequential(nn.Flatten(), lin).eval()


def test_clopper_pearson_matches_beta_quantile_and_edge_cases() -> None:
    assert clopper_pearson_lower(0, 10, 0.01) == 0.0
    assert clopper_pearson_lower(10, 10, 0.01) == pytest.approx(0.01 ** (1 / 10), rel=1e-12)
    assert clopper_pearson_lower(70, 100, 0.001) == pytest.approx(beta.ppf(0.001, 70, 31), rel=1e-12)
    # Coverage property: the bound is below the MLE and above 0.
    assert 0.0 < clopper_pearson_lower(70, 100, 0.001) < 0.7
    with pytest.raises(TorchRobustError):
        clopper_pearson_lower(11, 10, 0.01)
    with pytest.raises(TorchRobustError):
        clopper_pearson_lower(5, 10, 1.5)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 10_000), frac=st.floats(0.0, 1.0), alpha=st.floats(1e-6, 0.2))
def test_clopper_pearson_properties(n: int, frac: float, alpha: float) -> None:
    k = round(frac * n)
    lo = clopper_pearson_lower(k, n, alpha)
    assert 0.0 <= lo <= k / n  # a lower bound never exceeds the empirical frequency
    if k < n:
        assert clopper_pearson_lower(k + 1, n, alpha) > lo  # more hits -> larger bound
    if k > 0:
        assert clopper_pearson_lower(k, n, alpha / 2) < lo  # more confidence -> smaller bound
        # Exactness: P(Binomial(n, lo) >= k) = alpha, the defining property of the one-sided bound.
        assert beta.cdf(lo, k, n - k + 1) == pytest.approx(alpha, rel=1e-6)


@pytest.mark.parametrize("n", [10, 100, 1000])
def test_constant_classifier_certifies_exact_radius(n: int) -> None:
    sigma, alpha = 0.5, 0.001
    smooth = Smooth(Constant(2), num_classes=3, sigma=sigma)
    gen = torch.Generator().manual_seed(1)
    cls, radius = smooth.certify(torch.rand(1, 4, 4), n0=10, n=n, alpha=alpha, batch_size=64, generator=gen)
    expected = sigma * norm.ppf(alpha ** (1.0 / n))
    if alpha ** (1.0 / n) < 0.5:  # n = 10 and alpha = 1e-3: too few samples to certify anything
        assert (cls, radius) == (ABSTAIN, 0.0)
    else:
        assert cls == 2
        assert radius == pytest.approx(expected, rel=1e-12)


def test_radius_is_monotone_in_n() -> None:
    sigma, alpha = 0.25, 0.001
    smooth = Smooth(Constant(0), num_classes=3, sigma=sigma)
    x = torch.rand(1, 2, 2)
    radii = [smooth.certify(x, n0=10, n=n, alpha=alpha, generator=torch.Generator().manual_seed(0))[1]
             for n in (20, 100, 1000, 10_000)]
    assert all(a < b for a, b in zip(radii, radii[1:], strict=False)), radii
    # Same empirical frequency, more samples -> tighter lower bound -> larger radius.
    bounds = [clopper_pearson_lower(8 * m, 10 * m, alpha) for m in (10, 100, 1000, 10_000)]
    assert all(a < b < 0.8 for a, b in zip(bounds, bounds[1:], strict=False)), bounds


def test_monotone_in_n_on_a_real_noisy_classifier() -> None:
    torch.manual_seed(0)
    model = linear_two_class(torch.tensor([1.0, -1.0]), b=0.1)
    smooth = Smooth(model, num_classes=2, sigma=0.5)
    x = torch.tensor([0.6, 0.3])  # w·x + b = 0.4
    r_small = smooth.certify(x, n0=50, n=200, generator=torch.Generator().manual_seed(3))[1]
    r_large = smooth.certify(x, n0=50, n=20_000, generator=torch.Generator().manual_seed(3))[1]
    assert 0 < r_small < r_large


def test_fifty_fifty_classifier_abstains() -> None:
    smooth = Smooth(SignOfFirstPixel(), num_classes=2, sigma=0.25)
    x = torch.full((1, 3, 3), 0.5)
    gen = torch.Generator().manual_seed(0)
    assert smooth.certify(x, n0=100, n=5000, alpha=0.001, generator=gen) == (ABSTAIN, 0.0)
    assert smooth.predict(x, n=5000, alpha=0.001, generator=gen) == ABSTAIN
    counts = smooth.sample_counts(x, 5000, generator=gen)
    assert counts.sum() == 5000 and abs(int(counts[1]) - 2500) < 5 * math.sqrt(5000 * 0.25)


def test_predict_returns_top_class_when_clear() -> None:
    smooth = Smooth(SignOfFirstPixel(), num_classes=2, sigma=0.1)
    gen = torch.Generator().manual_seed(0)
    assert smooth.predict(torch.full((1, 2, 2), 0.9), n=200, generator=gen) == 1
    assert smooth.predict(torch.full((1, 2, 2), 0.1), n=200, generator=gen) == 0


def test_certify_matches_analytic_probability_of_linear_classifier() -> None:
    sigma, n, alpha = 0.5, 20_000, 0.001
    w = torch.tensor([1.0, 2.0, -0.5])
    model = linear_two_class(w, b=-0.2)
    smooth = Smooth(model, num_classes=2, sigma=sigma)
    x = torch.tensor([0.5, 0.3, 0.2])
    margin = float(w @ x) - 0.2
    p_true = norm.cdf(abs(margin) / (sigma * float(w.norm())))
    cls, radius, p_lower, count = smooth.certify_details(
        x, n0=100, n=n, alpha=alpha, batch_size=4096, generator=torch.Generator().manual_seed(7))
    assert cls == int(margin > 0)
    sd = math.sqrt(p_true * (1 - p_true) / n)
    assert abs(count / n - p_true) < 5 * sd
    assert p_lower < count / n and p_lower > p_true - 8 * sd
    assert radius == pytest.approx(sigma * norm.ppf(p_lower))
    # The true certified radius σΦ⁻¹(p_true) = |margin|/‖w‖ bounds the certificate from above (whp).
    assert radius < abs(margin) / float(w.norm())


def test_seeded_generator_is_reproducible_and_batching_invariant_in_distribution() -> None:
    model = linear_two_class(torch.tensor([1.0, -1.0]), b=0.0)
    smooth = Smooth(model, num_classes=2, sigma=0.3)
    x = torch.tensor([0.55, 0.45])
    a = smooth.sample_counts(x, 3000, batch_size=256, generator=torch.Generator().manual_seed(5))
    b = smooth.sample_counts(x, 3000, batch_size=256, generator=torch.Generator().manual_seed(5))
    c = smooth.sample_counts(x, 3000, batch_size=3000, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert abs(int(a[1]) - int(c[1])) < 6 * math.sqrt(2 * 3000 * 0.25)


def test_noise_is_not_clipped_to_unit_box() -> None:
    seen: list[torch.Tensor] = []

    class Spy(Constant):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.detach().clone())
            return super().forward(x)

    Smooth(Spy(0), num_classes=3, sigma=1.0).sample_counts(torch.zeros(1, 4, 4), 100,
                                                            generator=torch.Generator().manual_seed(0))
    xs = torch.cat(seen)
    assert xs.min() < 0 and xs.max() > 1  # Cohen et al. do not clip the noisy input
    assert xs.std().item() == pytest.approx(1.0, rel=0.1)


def test_certify_dataset_curve_and_plot(tmp_path) -> None:
    model = linear_two_class(torch.tensor([4.0, -4.0]), b=0.0)
    smooth = Smooth(model, num_classes=2, sigma=0.25)
    x = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.52, 0.48], [0.8, 0.2]])
    y = torch.tensor([1, 0, 1, 0])  # the last one is misclassified on purpose
    res = certify_dataset(smooth, x, y, n0=50, n=2000, alpha=0.001, generator=torch.Generator().manual_seed(0))
    assert [r.index for r in res] == [0, 1, 2, 3]
    assert res[0].correct and res[1].correct and not res[3].correct
    assert res[0].radius > 0.3 and res[2].radius < res[0].radius
    curve = certified_accuracy_curve(res, [0.0, 0.1, 0.3, 10.0])
    assert curve[0] == pytest.approx(sum(r.correct for r in res) / 4)
    assert np.all(np.diff(curve) <= 0) and curve[-1] == 0.0
    # Dataset form and skip.
    ds = torch.utils.data.TensorDataset(x, y)
    res2 = certify_dataset(smooth, ds, n0=50, n=500, skip=2, generator=torch.Generator().manual_seed(0))
    assert [r.index for r in res2] == [0, 2]
    path = plot_certified_accuracy({"σ=0.25": res, "n=500": res2}, tmp_path / "cert.png")
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curve_counts_abstentions_as_wrong() -> None:
    res = [CertifyResult(0, 1, ABSTAIN, 0.0, 0.3, 30, 100, False), CertifyResult(1, 1, 1, 0.5, 0.9, 95, 100, True)]
    assert certified_accuracy_curve(res, [0.0, 0.5, 0.6]).tolist() == [0.5, 0.5, 0.0]


def test_input_validation_errors() -> None:
    with pytest.raises(TorchRobustError):
        Smooth(Constant(0), num_classes=3, sigma=0.0)
    with pytest.raises(TorchRobustError):
        Smooth(Constant(0), num_classes=1, sigma=0.1)
    smooth = Smooth(Constant(0), num_classes=5, sigma=0.1)  # wrong num_classes for the model
    with pytest.raises(TorchRobustError, match="num_classes"):
        smooth.sample_counts(torch.zeros(2), 10)
    with pytest.raises(TorchRobustError):
        Smooth(Constant(0), num_classes=3, sigma=0.1).certify(torch.zeros(2), n=0)
    with pytest.raises(TorchRobustError):
        certified_accuracy_curve([], [0.0])


def test_certificates_hold_under_attack_on_a_noise_trained_model(tmp_path) -> None:
    """End to end: train a tiny model with Gaussian noise (σ = 0.25), certify, then move each certified input
    by an L2 attack of 0.9·R on the base model: PREDICT on the moved input must not return another class."""
    from torchrobust.attacks import PGD

    sigma = 0.25
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.2, 0.2, 0.8, 0.8], [0.8, 0.2, 0.2, 0.8], [0.5, 0.9, 0.5, 0.1]])
    y_train = torch.randint(0, 3, (600,), generator=g)
    x_train = (centers[y_train] + 0.08 * torch.randn(600, 4, generator=g)).clamp(0, 1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(200):  # Gaussian data augmentation (Cohen et al., Sec. 4: train under the same noise)
        opt.zero_grad()
        noisy = x_train + sigma * torch.randn(x_train.shape, generator=g)
        nn.functional.cross_entropy(model(noisy), y_train).backward()
        opt.step()
    model.eval()
    smooth = Smooth(model, num_classes=3, sigma=sigma)
    x_test, y_test = x_train[:20], y_train[:20]
    res = certify_dataset(smooth, x_test, y_test, n0=100, n=4000, alpha=0.001, batch_size=4000,
                          generator=torch.Generator().manual_seed(1))
    curve = certified_accuracy_curve(res, [0.0, 0.1, 0.2])
    assert curve[0] >= 0.8 and np.all(np.diff(curve) <= 0)
    checked = 0
    for r in res:
        if r.abstained or r.radius < 0.05:
            continue
        x, y = x_test[r.index:r.index + 1], torch.tensor([r.predict])
        x_adv = PGD("L2", eps=0.9 * r.radius, steps=20, seed=0)(model, x, y)[0]
        pred = smooth.predict(x_adv, n=4000, alpha=0.001, batch_size=4000, generator=torch.Generator().manual_seed(2))
        assert pred in (r.predict, ABSTAIN)
        checked += 1
    assert checked >= 10
    assert plot_certified_accuracy(res, tmp_path / "c.png", title="σ=0.25").exists()
