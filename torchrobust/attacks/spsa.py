r"""SPSA: a gradient-free attack (Uesato, O'Donoghue, van den Oord & Kohli 2018, "Adversarial Risk and the
Dangers of Evaluating Against Weak Attacks", Sec. 3.1 and Alg. 1).

Only model *outputs* are used, so the attack is immune to masked or obfuscated gradients (zero, random or
shattered gradients: thresholds, quantisation, non-differentiable pre-processing).

Per iteration and example (Alg. 1): draw ``n_samples`` Rademacher directions ``v_i ∈ {−1, +1}^n`` and estimate the
gradient of the loss ``L`` by simultaneous perturbation

.. math::  \hat g = \frac{1}{n_s} \sum_i \frac{L(x' + \delta v_i) - L(x' - \delta v_i)}{2 \delta} v_i

then take an Adam step on ``x'`` with ``\hat g`` (ascent) and project onto ``ball(x, ε) ∩ [0, 1]``. ``L`` is the
margin ``max_{j≠y} Z_j − Z_y`` (the logit-difference loss of the paper; targeted: ``Z_t − max_{j≠t} Z_j``).
Finite-difference points are clipped to [0, 1] (the model's input domain; the paper's code does not clip).
The best point over all iterations is kept (success first, then margin), and an example stops once it succeeds
(``early_stop``).

Any threat model works (the step is Adam, the projection the threat's own); the paper and the default use ℓ∞.

Defaults: ``steps=100``, ``n_samples=128`` (the paper uses 8192 samples per step on ImageNet-scale models —
raise it for final evaluations), ``delta=0.01``, ``lr=0.01`` (paper; by default raised to ``2.5 ε / steps`` when
that is larger). ``max_batch`` bounds the rows per forward pass. Random directions come from a
``torch.Generator`` seeded with ``seed`` afresh on every call.

Shape: ``x`` ``(B, ...)`` in [0, 1], ``y`` ``(B,)`` → ``x_adv`` like ``x``. Queries per example and step:
``2 n_samples + 1``.

Example::

    >>> from torchrobust.attacks import SPSA
    >>> x_adv = SPSA("Linf", eps=0.3, steps=100, n_samples=256, seed=0)(model, images, labels)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from torchrobust.attacks.base import Attack, margin, register
from torchrobust.attacks.threat import ThreatModel
from torchrobust.errors import TorchRobustError
from torchrobust.validation import check_positive_int

__all__ = ["SPSA"]


def _bview(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def _positive(name: str, value: object, example: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(float(value)) and float(value) > 0
    ):
        raise TorchRobustError(f"{name} must be a positive number, got {value!r}; pass e.g. {name}={example}")
    return float(value)


class SPSA(Attack):
    """SPSA gradient-free attack with Adam (Uesato et al. 2018, Alg. 1); see the module docstring.

    Args:
        threat, eps: threat model (default ℓ∞, ``eps`` 0.3 for a name).
        steps: iterations.
        n_samples: Rademacher directions per iteration (each costs two queries).
        delta: finite-difference step.
        lr: Adam learning rate (``None``: ``max(0.01, 2.5 ε / steps)`` for ℓ∞ — the paper's 0.01, raised so that
            ``steps`` Adam steps of about ``lr`` per coordinate can cross the ball; for ℓ2/ℓ1 the same per-coordinate
            scale divided by ``sqrt(n)``).
        targeted: ``y`` holds target labels.
        seed: seed of the random directions and the random start (``None``: torch's global RNG).
        random_start: start from a random point of the ball (``False``: from ``x``).
        early_stop: stop an example once it is misclassified (its point is kept).
        max_batch: maximum rows per forward pass.
    """

    def __init__(
        self,
        threat: str | ThreatModel = "Linf",
        eps: float | None = None,
        steps: int = 100,
        n_samples: int = 128,
        delta: float = 0.01,
        lr: float | None = None,
        targeted: bool = False,
        seed: int | None = 0,
        random_start: bool = False,
        early_stop: bool = True,
        max_batch: int = 4096,
    ) -> None:
        if eps is None and not isinstance(threat, ThreatModel):
            eps = 0.3
        super().__init__(threat, eps)
        self.steps = check_positive_int(steps, "steps", 100)
        self.n_samples = check_positive_int(n_samples, "n_samples", 128)
        self.delta = _positive("delta", delta, 0.01)
        self.lr = None if lr is None else _positive("lr", lr, 0.01)
        self.targeted = bool(targeted)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TorchRobustError(f"seed must be an int or None, got {seed!r}")
        self.seed = seed
        self.random_start = bool(random_start)
        self.early_stop = bool(early_stop)
        self.max_batch = check_positive_int(max_batch, "max_batch", 4096)

    def _loss(self, model: nn.Module, xs: Tensor, ys: Tensor) -> Tensor:
        out = []
        for i in range(0, xs.shape[0], self.max_batch):
            out.append(margin(model(xs[i:i + self.max_batch]), ys[i:i + self.max_batch], self.targeted))
        return torch.cat(out)

    @torch.no_grad()
    def estimate_gradient(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None) -> Tensor:
        """The SPSA estimate (Alg. 1) of the margin's gradient at ``x``, from ``n_samples`` Rademacher directions.

        Directions are drawn in chunks so that one chunk is one forward pass of at most ``max_batch`` rows (memory
        stays ``O(max_batch · n)`` however many samples are drawn).
        """
        b, shape, ns = x.shape[0], x.shape[1:], self.n_samples
        chunk = max(1, min(ns, self.max_batch // (2 * b)))
        g = torch.zeros_like(x)
        for start in range(0, ns, chunk):
            cs = min(chunk, ns - start)
            signs = torch.randint(0, 2, (b, cs, *shape), generator=generator, device=x.device).to(x.dtype) * 2 - 1
            pts = torch.cat([(x[:, None] + self.delta * signs), (x[:, None] - self.delta * signs)], 1)
            pts = pts.clamp_(0.0, 1.0).view(b * 2 * cs, *shape)
            yy = y[:, None].expand(b, 2 * cs).reshape(-1)
            losses = self._loss(model, pts, yy).view(b, 2, cs)
            diff = (losses[:, 0] - losses[:, 1]) / (2 * self.delta)  # (b, cs)
            g += (diff.view(b, cs, *([1] * len(shape))) * signs).sum(1)
        return g / ns

    @torch.no_grad()
    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        gen = None if self.seed is None else torch.Generator(device=x.device).manual_seed(self.seed)
        x_adv = self.threat.random_init(x, gen) if self.random_start else x.clone()
        m = torch.zeros_like(x)
        v = torch.zeros_like(x)
        b1, b2, adam_eps = 0.9, 0.999, 1e-8
        score = self._loss(model, x_adv, y)
        best_x, best_score = x_adv.clone(), score.clone()
        best_succ = score > 0
        active = ~best_succ if self.early_stop else torch.ones_like(best_succ)
        lr = self.lr
        if lr is None:
            lr = max(0.01, 2.5 * self.threat.eps / self.steps)
            if self.threat.name != "Linf":
                lr = 2.5 * self.threat.eps / self.steps / math.sqrt(x[0].numel())
        for t in range(1, self.steps + 1):
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xa, ya = x_adv[idx], y[idx]
            g = self.estimate_gradient(model, xa, ya, gen)
            m[idx] = b1 * m[idx] + (1 - b1) * g
            v[idx] = b2 * v[idx] + (1 - b2) * g * g
            m_hat = m[idx] / (1 - b1**t)
            v_hat = v[idx] / (1 - b2**t)
            xa = xa + lr * m_hat / (v_hat.sqrt() + adam_eps)
            xa = self.threat.project(xa, x[idx])
            x_adv[idx] = xa
            s = self._loss(model, xa, ya)
            succ = s > 0
            better = (succ & ~best_succ[idx]) | ((succ == best_succ[idx]) & (s > best_score[idx]))
            sel = idx[better]
            best_x[sel] = xa[better]
            best_score[sel] = s[better]
            best_succ[sel] = succ[better]
            if self.early_stop:
                active[idx[succ]] = False
        return best_x


register("spsa", SPSA)
