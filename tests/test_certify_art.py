"""Cross-check of torchrobust's randomized smoothing against ART (the ``crosscheck`` extra).

Needs ``adversarial-robustness-toolbox`` and ``statsmodels`` (ART's ``certify`` imports statsmodels for its
Clopper–Pearson bound without declaring it). Both are hard imports: CI installs the crosscheck extra.
ART draws noise from numpy's global RNG and we draw from a torch.Generator, so the two runs use the same seed
value but different streams; they must agree within binomial sampling error.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing
from scipy.stats import norm
from torch import nn

from torchrobust.evaluate.certify import ABSTAIN, Smooth


def _small_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    return model.eval()


def test_certify_agrees_with_art_within_binomial_error() -> None:
    sigma, n, n0, alpha, seed = 0.25, 4000, 100, 0.001, 0
    model = _small_model()
    torch.manual_seed(1)
    xs = torch.rand(6, 1, 4, 4)

    art_rs = PyTorchRandomizedSmoothing(
        model=model, loss=nn.CrossEntropyLoss(), input_shape=(1, 4, 4), nb_classes=3, clip_values=(0.0, 1.0),
        device_type="cpu", sample_size=n0, scale=sigma, alpha=alpha,
    )
    np.random.seed(seed)
    art_pred, art_radius = art_rs.certify(xs.numpy(), n=n, batch_size=1000)

    smooth = Smooth(model, num_classes=3, sigma=sigma)
    gen = torch.Generator().manual_seed(seed)
    ours = [smooth.certify_details(x, n0=n0, n=n, alpha=alpha, batch_size=1000, generator=gen) for x in xs]

    compared = 0
    for (cls, _radius, p_lower, count), a_cls, a_rad in zip(ours, art_pred, art_radius, strict=True):
        p_hat = count / n
        sd = math.sqrt(max(p_hat * (1 - p_hat), 1e-4) / n)
        if cls == ABSTAIN or a_cls == ABSTAIN:
            # Only a borderline p_A (within sampling error of 1/2) may certify in one run and not the other.
            assert abs(p_lower - 0.5) < 6 * sd or cls == a_cls
            continue
        assert cls == int(a_cls)
        # Compare the lower bounds on p_A: ART's radius is sigma * Phi^-1(p_lower_art).
        p_lower_art = norm.cdf(a_rad / sigma)
        assert abs(p_lower - p_lower_art) < 6 * math.sqrt(2) * sd, (p_lower, p_lower_art)
        compared += 1
    assert compared >= 3  # the test is not vacuous


def test_clopper_pearson_bound_equals_arts_statsmodels_bound() -> None:
    art_rs = PyTorchRandomizedSmoothing(
        model=_small_model(), loss=nn.CrossEntropyLoss(), input_shape=(1, 4, 4), nb_classes=3,
        device_type="cpu", sample_size=10, scale=0.5, alpha=0.001,
    )
    from torchrobust.evaluate.certify import clopper_pearson_lower

    for k, n in [(1, 10), (73, 100), (9990, 10_000), (100_000, 100_000)]:
        assert math.isclose(clopper_pearson_lower(k, n, 0.001), float(art_rs._lower_confidence_bound(k, n)),
                            rel_tol=1e-10)


def test_predict_agrees_with_art_on_clear_and_fifty_fifty_inputs() -> None:
    sigma, n, alpha = 0.25, 2000, 0.001
    model = _small_model()
    art_rs = PyTorchRandomizedSmoothing(
        model=model, loss=nn.CrossEntropyLoss(), input_shape=(1, 4, 4), nb_classes=3, device_type="cpu",
        sample_size=n, scale=sigma, alpha=alpha,
    )
    smooth = Smooth(model, num_classes=3, sigma=sigma)
    torch.manual_seed(2)
    xs = torch.rand(8, 1, 4, 4)
    np.random.seed(0)
    art_onehot = art_rs.predict(xs.numpy(), batch_size=1000)
    gen = torch.Generator().manual_seed(0)
    agree = 0
    for x, row in zip(xs, art_onehot, strict=True):
        ours = smooth.predict(x, n=n, alpha=alpha, batch_size=1000, generator=gen)
        art = int(row.argmax()) if row.sum() > 0 else ABSTAIN
        counts = smooth.sample_counts(x, n, generator=gen).double()
        top2 = torch.topk(counts, 2).values
        # Within binomial error of a tie, one run may abstain and the other not; otherwise they must agree.
        clear = float(top2[0] - top2[1]) > 6 * math.sqrt(float(top2[0] + top2[1]))
        if clear:
            assert ours == art
            agree += 1
    assert agree >= 4
