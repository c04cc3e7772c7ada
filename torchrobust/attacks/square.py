r"""Square Attack (Andriushchenko, Croce, Flammarion & Hein 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search"), ℓ∞ and ℓ2.

A score-based black-box attack: random search over localised square-shaped updates, accepted when they lower the
margin loss ``Z_y − max_{j≠y} Z_j`` (Sec. 3, Alg. 1). Only model outputs are used.

* ℓ∞ (Alg. 2 / Sec. 3.1): start from vertical stripes ``x + ε·u`` with ``u ∈ {−ε, ε}`` drawn per column and
  channel; each iteration picks a square window of side ``s`` and sets the perturbation inside it, per channel,
  to ``±ε`` (one random sign per channel), i.e. the window moves to a vertex of the ℓ∞ ball.
* ℓ2 (Alg. 3 / Sec. 3.2): start from a grid of "meta-pseudo-Gaussian" blocks ``η`` (Eq. 5: nested rectangles with
  weights ``1/(k+1)²``, opposite signs in the two halves); each iteration moves the mass of a second random window
  into the first one and adds a fresh ``η`` there, rescaled so that ``‖δ‖₂ = ε`` (Alg. 3 lines 7–12).

The side ``s = round(sqrt(p·n/c))`` follows the piecewise-constant schedule of ``p`` (Sec. 3.3; ``p_init`` halved at
iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of a 10 000-query budget, rescaled to ``n_queries``
when ``rescale_schedule``).

Our implementation choices (ours, not copied): square positions and signs are drawn **per example** (the reference
implementation shares one window position across the batch per iteration), so an example's random stream does
not depend on which other examples are still active; an update is accepted when it lowers the margin or
misclassifies (the reference rule); examples stop once misclassified. Randomness comes from a
``torch.Generator`` seeded with ``seed`` on every call (default 0; reproducible).

Defaults: ``n_queries=5000`` (AutoAttack), ``p_init=0.8`` (paper/AutoAttack, ℓ∞ and ℓ2), ``restarts=1``.
Inputs must be image-shaped ``(B, C, H, W)``.

Example::

    >>> from torchrobust.attacks import Square
    >>> x_adv = Square("Linf", eps=0.3, n_queries=5000, seed=0)(model, images, labels)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from torchrobust.attacks.base import Attack, margin, register
from torchrobust.attacks.threat import L1, ThreatModel
from torchrobust.errors import TorchRobustError
from torchrobust.validation import check_positive_int

__all__ = ["Square", "p_schedule"]

_BREAKS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(p_init: float, it: int, n_queries: int, rescale: bool = True) -> float:
    """The fraction ``p`` of pixels changed at iteration ``it`` (Sec. 3.3 schedule, on a 10 000-query scale)."""
    if rescale:
        it = int(it / n_queries * 10000)
    halvings = sum(it > b for b in _BREAKS)
    return p_init / (2**halvings)


def _bview(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def _rand_signs(shape: tuple[int, ...], gen: torch.Generator | None, like: Tensor) -> Tensor:
    return torch.randint(0, 2, shape, generator=gen, device=like.device).to(like.dtype) * 2 - 1


def _window_mask(b: int, h: int, w: int, s: int, gen: torch.Generator | None, device: torch.device) -> Tensor:
    """(b, 1, h, w) bool masks of one random s×s window per example."""
    vh = torch.randint(0, h - s + 1, (b, 1, 1), generator=gen, device=device)
    vw = torch.randint(0, w - s + 1, (b, 1, 1), generator=gen, device=device)
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    return ((rows >= vh) & (rows < vh + s) & (cols >= vw) & (cols < vw + s))[:, None]


def _eta_rect(a: int, b: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Nested centred rectangles with weight ``1/(k+1)²`` (Eq. 5), normalised to unit ℓ2 norm."""
    out = torch.zeros(a, b, dtype=dtype, device=device)
    ca, cb = a // 2, b // 2
    for k in range(max(ca, cb) + 1):
        out[max(ca - k, 0):min(ca + k + 1, a), max(cb - k, 0):min(cb + k + 1, b)] += 1.0 / (k + 1) ** 2
    return out / out.norm().clamp_min(1e-12)


def _eta(s: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The s×s meta-pseudo-Gaussian block of the ℓ2 attack: + rectangles on top, − on the bottom, unit ℓ2."""
    out = torch.zeros(s, s, dtype=dtype, device=device)
    if s // 2 > 0:
        out[: s // 2] = _eta_rect(s // 2, s, dtype, device)
    out[s // 2:] = -_eta_rect(s - s // 2, s, dtype, device)
    return out / out.norm().clamp_min(1e-12)


class Square(Attack):
    """Square Attack (Andriushchenko et al. 2020), ℓ∞ or ℓ2, margin loss; see the module docstring.

    Args:
        threat, eps: ``"Linf"`` or ``"L2"`` (default ℓ∞, ``eps`` 0.3 for a name).
        n_queries: query budget per example and restart.
        p_init: initial fraction of changed pixels.
        restarts: independent runs (later runs only on still-robust examples).
        targeted: ``y`` holds target labels (loss ``max_{j≠t} Z_j − Z_t``).
        seed: seed of all random choices (``None``: torch's global RNG).
        rescale_schedule: rescale the ``p`` schedule to ``n_queries`` (AutoAttack's ``resc_schedule``).
    """

    def __init__(
        self,
        threat: str | ThreatModel = "Linf",
        eps: float | None = None,
        n_queries: int = 5000,
        p_init: float = 0.8,
        restarts: int = 1,
        targeted: bool = False,
        seed: int | None = 0,
        rescale_schedule: bool = True,
    ) -> None:
        if eps is None and not isinstance(threat, ThreatModel):
            eps = 0.3
        super().__init__(threat, eps)
        if isinstance(self.threat, L1):
            raise TorchRobustError("Square supports threat='Linf' or 'L2', got L1; use PGD('L1', ...)")
        self.n_queries = check_positive_int(n_queries, "n_queries", 5000)
        if isinstance(p_init, bool) or not isinstance(p_init, (int, float)) or not (0 < float(p_init) <= 1):
            raise TorchRobustError(f"p_init must be in (0, 1], got {p_init!r}; pass e.g. p_init=0.8")
        self.p_init = float(p_init)
        self.restarts = check_positive_int(restarts, "restarts", 1)
        self.targeted = bool(targeted)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TorchRobustError(f"seed must be an int or None, got {seed!r}")
        self.seed = seed
        self.rescale_schedule = bool(rescale_schedule)

    def _margin(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Loss to minimise: ``Z_y − max_{j≠y} Z_j`` (≤ 0 iff fooled, up to ties); targeted mirrored."""
        return -margin(model(x), y, self.targeted)

    def _keep_better(self, model: nn.Module, x_new: Tensor, y: Tensor, idx: Tensor, x_best: Tensor,
                     m_best: Tensor) -> None:
        """Accept, in place in ``x_best`` / ``m_best``, the candidates ``x_new`` (for the examples ``idx``) that lower
        the margin loss or fool the model (the random search's greedy step, Andriushchenko et al. 2020, Alg. 1)."""
        m_new = self._margin(model, x_new, y[idx])
        better = (m_new < m_best[idx]) | (m_new <= 0)
        sel = idx[better]
        x_best[sel] = x_new[better]
        m_best[sel] = m_new[better]

    @torch.no_grad()
    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        if x.dim() != 4:
            raise TorchRobustError(f"Square needs image batches shaped (B, C, H, W), got {tuple(x.shape)}")
        gen = None if self.seed is None else torch.Generator(device=x.device).manual_seed(self.seed)
        best_x = x.clone()
        best_m = self._margin(model, x, y)
        for _ in range(self.restarts):
            todo = (best_m > 0).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            run = self._run_linf if self.threat.name == "Linf" else self._run_l2
            cand_x, cand_m = run(model, x[todo], y[todo], gen)
            better = cand_m < best_m[todo]
            best_x[todo[better]] = cand_x[better]
            best_m[todo[better]] = cand_m[better]
        return best_x

    # ---------------------------------------------------------------------------------------------------- ℓ∞
    def _run_linf(self, model: nn.Module, x: Tensor, y: Tensor, gen: torch.Generator | None) -> tuple[Tensor, Tensor]:
        eps = self.threat.eps
        b, c, h, w = x.shape
        n_feat = c * h * w
        x_best = (x + eps * _rand_signs((b, c, 1, w), gen, x)).clamp(0, 1)
        m_best = self._margin(model, x_best, y)
        for it in range(self.n_queries - 1):
            idx = (m_best > 0).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xc, xb = x[idx], x_best[idx]
            p = p_schedule(self.p_init, it, self.n_queries, self.rescale_schedule)
            s = min(max(int(round(math.sqrt(p * n_feat / c))), 1), h, w)
            mask = _window_mask(idx.numel(), h, w, s, gen, x.device)
            signs = _rand_signs((idx.numel(), c, 1, 1), gen, x)
            # the window's perturbation goes to ±eps per channel (a vertex of the ball)
            x_new = torch.where(mask, xc + eps * signs, xb)
            x_new = torch.minimum(torch.maximum(x_new, xc - eps), xc + eps).clamp(0, 1)
            self._keep_better(model, x_new, y, idx, x_best, m_best)
        return x_best, m_best

    # ---------------------------------------------------------------------------------------------------- ℓ2
    def _run_l2(self, model: nn.Module, x: Tensor, y: Tensor, gen: torch.Generator | None) -> tuple[Tensor, Tensor]:
        eps = self.threat.eps
        b, c, h, w = x.shape
        n_feat = c * h * w
        dt, dev = x.dtype, x.device

        def norm(d: Tensor) -> Tensor:
            return d.flatten(1).norm(dim=1).clamp_min(1e-12)

        # initialisation: a grid of eta blocks with random signs per example and channel (Alg. 3, line 2)
        delta = torch.zeros_like(x)
        s0 = max(h // 5, 1)
        start = (h - s0 * 5) // 2 if h >= 5 else 0
        eta0 = _eta(s0, dt, dev)
        vh = start
        for _ in range(h // s0):
            vw = start
            for _ in range(w // s0):
                if vh + s0 <= h and vw + s0 <= w:
                    delta[:, :, vh:vh + s0, vw:vw + s0] += eta0 * _rand_signs((b, c, 1, 1), gen, x)
                vw += s0
            vh += s0
        x_best = (x + delta * _bview(eps / norm(delta), x)).clamp(0, 1)
        m_best = self._margin(model, x_best, y)
        for it in range(self.n_queries - 1):
            idx = (m_best > 0).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            k = idx.numel()
            xc = x[idx]
            d = x_best[idx] - xc
            p = p_schedule(self.p_init, it, self.n_queries, self.rescale_schedule)
            s = max(int(round(math.sqrt(p * n_feat / c))), 3)
            if s % 2 == 0:
                s += 1
            s = min(s, h, w)
            m1 = _window_mask(k, h, w, s, gen, dev)  # where the new block goes
            m2 = _window_mask(k, h, w, s, gen, dev)  # whose mass is moved there
            both = m1 | m2
            norm_img = norm(d)
            norm_w1 = (d * m1).square().sum((2, 3), keepdim=True).sqrt()  # (k, c, 1, 1)
            norm_both = (d * both).square().sum((2, 3), keepdim=True).sqrt()
            eta = _eta(s, dt, dev)
            transpose = torch.rand((k, 1, 1, 1), generator=gen, device=dev) < 0.5
            # paste eta (or its transpose) into window 1 of an empty canvas, per example
            canvas = torch.zeros(k, 1, h, w, dtype=dt, device=dev)
            pos = m1.nonzero()  # rows sorted by example, then row-major inside the window
            flat_eta = torch.where(transpose.view(k, 1), eta.t().reshape(1, -1), eta.reshape(1, -1))  # (k, s*s)
            canvas[pos[:, 0], pos[:, 1], pos[:, 2], pos[:, 3]] = flat_eta.reshape(-1)
            new = canvas * _rand_signs((k, c, 1, 1), gen, x) + (d * m1) / (norm_w1 + 1e-12)
            new_norm = (new * m1).square().sum((2, 3), keepdim=True).sqrt()
            budget = ((eps**2 - norm_img.square()).clamp_min(0)[:, None, None, None] / c + norm_both.square()).sqrt()
            new = new * m1 / (new_norm + 1e-12) * budget
            d = torch.where(m2, torch.zeros_like(d), d)
            d = torch.where(m1, new, d)
            x_new = (xc + d * _bview(eps / norm(d), d)).clamp(0, 1)
            self._keep_better(model, x_new, y, idx, x_best, m_best)
        return x_best, m_best


register("square", Square)
