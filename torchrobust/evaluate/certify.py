"""Randomized-smoothing certification (Cohen, Rosenfeld & Kolter, ICML 2019, arXiv:1902.02918).

The smoothed classifier of a base classifier ``f`` is (Cohen et al., Eq. 1)

    g(x) = argmax_c  P( f(x + ε) = c ),   ε ~ N(0, σ² I).

Theorem 1 of the paper: if the top class has probability at least ``p_A`` under the noise (and every other class
at most ``1 - p_A``), then ``g`` is constant on the ℓ2 ball of radius ``R = σ · Φ⁻¹(p_A)``, where ``Φ⁻¹`` is the
standard normal quantile.

:class:`Smooth` implements the paper's two Monte-Carlo procedures (Section 3.2 and the pseudocode box
"PREDICT / CERTIFY"):

* ``PREDICT`` draws ``n`` noisy copies, takes the two most frequent classes and returns the top one only when a
  two-sided binomial test of ``n_A`` against ``n_A + n_B`` at p = ½ rejects at level ``α``; otherwise it
  abstains. The probability of returning a class other than ``g(x)`` is at most ``α`` (Proposition 1).
* ``CERTIFY`` guesses the top class from ``n0`` selection samples, then draws ``n`` fresh estimation samples,
  lower-bounds ``p_A`` by the one-sided ``(1 - α)`` Clopper–Pearson bound ``Beta⁻¹(α; n_A, n - n_A + 1)``
  (``scipy.stats.beta.ppf``; the same number as ``statsmodels`` ``proportion_confint(n_A, n, alpha=2α,
  method="beta")[0]`` used in the authors' code), and returns the class with radius ``σ · Φ⁻¹(p_A)``, or
  abstains when ``p_A < ½``. With probability at least ``1 - α`` a returned radius is a true certificate
  (Proposition 2).

Conventions and deliberate choices:

* The noise is added in **input space**: the base model takes inputs in [0, 1] (its normalisation is a layer
  inside it, see docs/architecture.md), so σ is measured in [0, 1] pixel units, as in the paper's σ ∈ {0.12,
  0.25, 0.5, 1.0}. Noisy inputs are **not clipped** to [0, 1]: clipping is not part of Cohen et al.'s
  algorithm (their ``core.py`` adds ``torch.randn_like(batch) * sigma`` and feeds it to the classifier) and
  Theorem 1 is proven for the unclipped Gaussian. (ART's ``loss_gradient`` clamps to ``clip_values``; its
  ``certify`` does not.)
* Sampling is batched over the noise (``batch_size`` noisy copies of one input per forward pass) and seeded by
  an explicit :class:`torch.Generator`; the same generator state gives the same counts.
* The bound is computed in float64 by scipy. Floating-point sampling of the Gaussian itself can make naive
  smoothing unsound in adversarial corner cases (Voráček & Hein, "Sound randomized smoothing in floating-point
  arithmetic", ``vvoracek/Sound-Randomized-Smoothing``); this module implements the standard (paper) procedure
  and does not address that.

Example::

    smooth = Smooth(model, num_classes=10, sigma=0.25)
    gen = torch.Generator().manual_seed(0)
    cls, radius = smooth.certify(x[0], n0=100, n=100_000, alpha=0.001, batch_size=1000, generator=gen)
    results = certify_dataset(smooth, x, y, n0=100, n=10_000, generator=gen)
    curve = certified_accuracy_curve(results, radii=[0.0, 0.25, 0.5])
    plot_certified_accuracy({"σ=0.25": results}, "certified.png")
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import beta, binomtest, norm
from torch import nn
from tqdm.auto import tqdm

from torchrobust.errors import TorchRobustError
from torchrobust.io import atomic_write_bytes

__all__ = [
    "ABSTAIN",
    "CertifyResult",
    "Smooth",
    "certified_accuracy_curve",
    "certify_to_dir",
    "certify_dataset",
    "clopper_pearson_lower",
    "plot_certified_accuracy",
]

logger = logging.getLogger(__name__)

#: Class index returned when the smoothed classifier abstains (as in Cohen et al.'s code and ART).
ABSTAIN: int = -1


def clopper_pearson_lower(count: int, n: int, alpha: float) -> float:
    """One-sided ``(1 - alpha)`` Clopper–Pearson lower confidence bound on a binomial proportion.

    Equals ``Beta⁻¹(alpha; count, n - count + 1)`` and 0 when ``count == 0`` — the ``LowerConfBound`` of
    Cohen et al.'s CERTIFY (Section 3.2), computed with ``scipy.stats.beta.ppf``.
    """
    _check_int("n", n, minimum=1)
    if not 0 <= count <= n:
        raise TorchRobustError(f"count={count} is outside [0, n={n}]; pass the number of hits among n samples")
    _check_alpha(alpha)
    if count == 0:
        return 0.0
    return float(beta.ppf(alpha, count, n - count + 1))


@dataclass(frozen=True)
class CertifyResult:
    """The outcome of CERTIFY on one example.

    ``predict`` is the certified class or :data:`ABSTAIN`; ``radius`` is the certified ℓ2 radius (0 when
    abstaining); ``p_a_lower`` the Clopper–Pearson lower bound on ``p_A``; ``count`` the number of the ``n``
    estimation samples that hit the selected class; ``correct`` whether ``predict == label``.
    """

    index: int
    label: int
    predict: int
    radius: float
    p_a_lower: float
    count: int
    n: int
    correct: bool

    @property
    def abstained(self) -> bool:
        """Whether CERTIFY abstained on this example."""
        return self.predict == ABSTAIN

    def to_dict(self) -> dict[str, float | int | bool]:
        """A JSON-serialisable dict of the fields."""
        return asdict(self)


class Smooth:
    """The Gaussian-smoothed classifier ``g`` of a base classifier (Cohen et al. 2019, Eq. 1).

    Args:
        base: the base classifier, an ``nn.Module`` taking inputs in [0, 1] and returning logits of shape
            ``(batch, num_classes)``. Put it in eval mode yourself; :class:`Smooth` does not change its mode.
        num_classes: number of classes of ``base``.
        sigma: standard deviation σ > 0 of the isotropic Gaussian noise, in input ([0, 1]) units.

    Inputs ``x`` of :meth:`predict` and :meth:`certify` are **single examples without a batch dimension**
    (e.g. ``C×H×W``), as in the paper's pseudocode; use :func:`certify_dataset` for many.
    """

    def __init__(self, base: nn.Module, num_classes: int, sigma: float) -> None:
        if not isinstance(base, nn.Module):
            raise TorchRobustError(f"base must be a torch.nn.Module, got {type(base).__name__}; pass the model")
        _check_int("num_classes", num_classes, minimum=2)
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
            raise TorchRobustError(f"sigma must be a finite number > 0, got {sigma!r}; e.g. sigma=0.25")
        self.base = base
        self.num_classes = int(num_classes)
        self.sigma = float(sigma)

    def __repr__(self) -> str:
        return f"Smooth(base={type(self.base).__name__}, num_classes={self.num_classes}, sigma={self.sigma})"

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample_counts(
        self,
        x: torch.Tensor,
        n: int,
        batch_size: int = 1000,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Class counts of ``argmax f(x + ε)`` over ``n`` draws ``ε ~ N(0, σ² I)`` (``SampleUnderNoise``).

        Returns an int64 tensor of shape ``(num_classes,)`` on the CPU. The noisy inputs are not clipped.
        """
        _check_int("n", n, minimum=1)
        _check_int("batch_size", batch_size, minimum=1)
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TorchRobustError("x must be a floating-point tensor (one example, no batch dimension)")
        if not bool(torch.isfinite(x).all()):
            raise TorchRobustError("x contains NaN or inf; clean the input data before certifying")
        counts = torch.zeros(self.num_classes, dtype=torch.long)
        remaining = n
        while remaining > 0:
            b = min(batch_size, remaining)
            remaining -= b
            batch = x.unsqueeze(0).expand(b, *x.shape)
            noise = _gaussian(batch.shape, x.dtype, x.device, generator)
            logits = self.base(batch + noise * self.sigma)
            if logits.ndim != 2 or logits.shape[1] != self.num_classes:
                raise TorchRobustError(
                    f"base returned shape {tuple(logits.shape)}, expected (batch, {self.num_classes}); "
                    "check num_classes and that the model outputs logits"
                )
            if not bool(torch.isfinite(logits).all()):  # argmax of NaN is an arbitrary class: never count it
                raise TorchRobustError("base returned NaN/inf logits on noisy inputs; check the model's weights")
            pred = logits.argmax(dim=1)
            counts += torch.bincount(pred.cpu(), minlength=self.num_classes)
        return counts

    # ------------------------------------------------------------------ PREDICT
    def predict(self, x: torch.Tensor, n: int = 100_000, alpha: float = 0.001, batch_size: int = 1000,
                generator: torch.Generator | None = None) -> int:
        """PREDICT (Cohen et al., Section 3.2): the smoothed class, or :data:`ABSTAIN`.

        Draws ``n`` noisy samples and returns the top class if the two-sided binomial test of the top count
        ``n_A`` out of ``n_A + n_B`` (top two classes) against p = ½ has p-value ≤ ``alpha``; otherwise
        abstains. Returns a class other than ``g(x)`` with probability at most ``alpha`` (Proposition 1).
        Defaults (``n = 100,000``, ``alpha = 0.001``) are those of the paper's experiments.
        """
        _check_alpha(alpha)
        counts = self.sample_counts(x, n, batch_size, generator)
        top2 = torch.topk(counts, 2)
        n_a, n_b = int(top2.values[0]), int(top2.values[1])
        if binomtest(n_a, n_a + n_b, p=0.5).pvalue > alpha:
            return ABSTAIN
        return int(top2.indices[0])

    # ------------------------------------------------------------------ CERTIFY
    def certify(self, x: torch.Tensor, n0: int = 100, n: int = 100_000, alpha: float = 0.001, batch_size: int = 1000,
                generator: torch.Generator | None = None) -> tuple[int, float]:
        """CERTIFY (Cohen et al., Section 3.2): ``(class, radius)`` or ``(ABSTAIN, 0.0)``.

        ``n0`` selection samples pick ``ĉ_A``; ``n`` fresh estimation samples give ``p_A`` ≥
        :func:`clopper_pearson_lower` ``(n_A, n, alpha)``; the radius is ``σ · Φ⁻¹(p_A)`` and the procedure
        abstains when ``p_A < ½``. See :meth:`certify_details` for the counts and the bound.
        """
        res = self.certify_details(x, n0=n0, n=n, alpha=alpha, batch_size=batch_size, generator=generator)
        return res[0], res[1]

    def certify_details(
        self,
        x: torch.Tensor,
        n0: int = 100,
        n: int = 100_000,
        alpha: float = 0.001,
        batch_size: int = 1000,
        generator: torch.Generator | None = None,
    ) -> tuple[int, float, float, int]:
        """CERTIFY returning ``(class, radius, p_a_lower, count)``; ``count`` is ``n_A`` of the estimation."""
        _check_int("n0", n0, minimum=1)
        _check_alpha(alpha)
        counts0 = self.sample_counts(x, n0, batch_size, generator)
        c_hat = int(torch.argmax(counts0))
        counts = self.sample_counts(x, n, batch_size, generator)
        n_a = int(counts[c_hat])
        p_a = clopper_pearson_lower(n_a, n, alpha)
        if p_a < 0.5:
            return ABSTAIN, 0.0, p_a, n_a
        return c_hat, self.sigma * float(norm.ppf(p_a)), p_a, n_a


def certify_dataset(
    smooth: Smooth,
    x: torch.Tensor | Iterable[tuple[torch.Tensor, int]],
    y: torch.Tensor | Sequence[int] | None = None,
    *,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    batch_size: int = 1000,
    generator: torch.Generator | None = None,
    skip: int = 1,
    max_examples: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> list[CertifyResult]:
    """Run CERTIFY on every ``skip``-th example, as Cohen et al.'s ``certify.py`` does.

    ``x`` is either a batch tensor ``(N, ...)`` with labels ``y`` ``(N,)``, or a dataset yielding
    ``(x_i, y_i)`` pairs (then ``y`` must be None). Examples are moved to ``device`` (default: the device of the
    base model's first parameter, or CPU). Returns one :class:`CertifyResult` per certified example.
    """
    _check_int("skip", skip, minimum=1)
    if max_examples is not None:
        _check_int("max_examples", max_examples, minimum=1)
    if device is None:
        param = next(iter(smooth.base.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
    if isinstance(x, torch.Tensor):
        if y is None:
            raise TorchRobustError("labels y are required when x is a tensor; pass y of shape (N,)")
        labels = torch.as_tensor(y)
        if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
            raise TorchRobustError(
                f"y has shape {tuple(labels.shape)} but x has {x.shape[0]} examples; pass one label per example"
            )
        pairs: Iterable[tuple[torch.Tensor, int]] = zip(x, labels.tolist(), strict=True)
    else:
        if y is not None:
            raise TorchRobustError("pass either (x, y) tensors or a dataset of (x, y) pairs, not both")
        pairs = x
    training = [n or type(smooth.base).__name__ for n, m in smooth.base.named_modules() if m.training]
    if training:
        logger.warning("certifying a base model with %d module(s) in training mode (e.g. %s); call model.eval()",
                       len(training), training[0])
    results: list[CertifyResult] = []
    bar = tqdm(desc="certify", unit="ex", disable=not progress)
    for i, (xi, yi) in enumerate(pairs):
        if i % skip:
            continue
        if max_examples is not None and len(results) >= max_examples:
            break
        cls, radius, p_a, count = smooth.certify_details(
            xi.to(device), n0=n0, n=n, alpha=alpha, batch_size=batch_size, generator=generator
        )
        label = int(yi)
        results.append(CertifyResult(i, label, cls, radius, p_a, count, n, cls == label))
        bar.update(1)
    bar.close()
    logger.info(
        "certified %d examples (sigma=%g, n=%d): %d abstained",
        len(results), smooth.sigma, n, sum(r.abstained for r in results),
    )
    return results


def certified_accuracy_curve(results: Sequence[CertifyResult], radii: Sequence[float] | np.ndarray) -> np.ndarray:
    """Certified accuracy at each radius: the fraction of examples that are correct **and** have radius ≥ r.

    This is the approximate certified test accuracy of Cohen et al. (Section 4; their
    ``analyze.py``). Abstentions count as wrong. Returns a float array of ``len(radii)``.
    """
    if len(results) == 0:
        raise TorchRobustError("no certification results; run certify_dataset on at least one example first")
    r = np.asarray(radii, dtype=float)
    if r.ndim != 1:
        raise TorchRobustError("radii must be a 1-D sequence of floats, e.g. [0.0, 0.25, 0.5]")
    radius = np.array([res.radius for res in results])
    correct = np.array([res.correct for res in results], dtype=bool)
    return (correct[None, :] & (radius[None, :] >= r[:, None])).mean(axis=1)


def plot_certified_accuracy(
    results: Mapping[str, Sequence[CertifyResult]] | Sequence[CertifyResult],
    path: str | Path,
    *,
    max_radius: float | None = None,
    num_points: int = 200,
    title: str | None = None,
) -> Path:
    """Write a PNG of certified accuracy vs ℓ2 radius (the style of Cohen et al.'s Section 4 plots); returns the path.

    ``results`` is one list of :class:`CertifyResult` or a mapping from a legend label (e.g. ``"σ=0.25"``) to
    such lists. Uses matplotlib's Agg backend, so it works without a display.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = dict(results) if isinstance(results, Mapping) else {"": list(results)}
    if not series or any(len(v) == 0 for v in series.values()):
        raise TorchRobustError("nothing to plot: every series needs at least one CertifyResult")
    if max_radius is None:
        max_radius = max(max(r.radius for r in v) for v in series.values()) * 1.05 or 1.0
    radii = np.linspace(0.0, max_radius, num_points)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    try:
        for label, res in series.items():
            ax.plot(radii, certified_accuracy_curve(res, radii), label=label or None)
        ax.set_xlabel("ℓ2 radius")
        ax.set_ylabel("certified accuracy")
        ax.set_ylim(0.0, 1.0)
        ax.set_xlim(0.0, max_radius)
        ax.grid(alpha=0.3)
        if title:
            ax.set_title(title)
        if any(series):
            ax.legend()
        out = Path(path)
        fig.tight_layout()
        buf = io.BytesIO()  # rendered in memory, then written atomically: no half-written figure on a crash
        fig.savefig(buf, format=out.suffix.lstrip(".").lower() or "png", dpi=120)
    finally:
        plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    return out


def certify_to_dir(model: nn.Module, x: torch.Tensor, y: torch.Tensor, out_dir: str | Path, *, sigma: float = 0.25,
                   n0: int = 100, n: int = 10_000, alpha: float = 0.001, batch_size: int = 1000, seed: int = 0,
                   progress: bool = True, checkpoint: str | None = None,
                   radii: Sequence[float] = tuple(i * 0.25 for i in range(17))) -> dict[str, object]:
    """CERTIFY every point of ``(x, y)`` with ``model`` smoothed at ``sigma`` (:func:`certify_dataset`, generator
    seeded by ``seed``) and write ``out_dir/certify.json`` (configuration, certified accuracy at ``radii``,
    per-example results) and ``out_dir/certified_accuracy.png`` (what ``torchrobust certify`` runs). Returns the
    JSON document."""
    from torchrobust.validation import probe_logits

    out = Path(out_dir)
    smooth = Smooth(model, num_classes=probe_logits(model, x), sigma=sigma)
    g = torch.Generator().manual_seed(seed)
    results = certify_dataset(smooth, x, y, n0=n0, n=n, alpha=alpha, batch_size=batch_size, generator=g,
                              progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    radii = list(radii)
    curve = certified_accuracy_curve(results, radii)
    doc: dict[str, object] = {
        "checkpoint": str(checkpoint), "sigma": sigma, "n0": n0, "n": n, "alpha": alpha, "seed": seed,
        "n_examples": len(results), "radii": radii, "certified_accuracy": curve.tolist(),
        "per_example": [r.to_dict() for r in results]}
    atomic_write_bytes(out / "certify.json", (json.dumps(doc, indent=1) + "\n").encode())
    plot_certified_accuracy(results, out / "certified_accuracy.png")
    return doc


# ---------------------------------------------------------------------- helpers
def _gaussian(
    shape: torch.Size, dtype: torch.dtype, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    """Standard normal noise drawn from ``generator`` (on the generator's device), moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, dtype=dtype, device=gen_device).to(device)


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise TorchRobustError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_alpha(alpha: object) -> None:
    if not isinstance(alpha, (int, float)) or not 0.0 < float(alpha) < 1.0:
        raise TorchRobustError(f"alpha must be in (0, 1), got {alpha!r}; the paper uses alpha=0.001")
