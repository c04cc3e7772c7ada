"""The training objectives of :func:`torchrobust.train.fit`: what each mode crafts and which loss it trains on.

=============  ==========================================================================================
``standard``   CE(f(x), y)
``fgsm``       CE(f(x'), y), x' one FGSM step
``pgd``        CE(f(x'), y), x' = PGD on CE from a random start (Madry et al. 2018)
``trades``     CE(f(x), y) + β·KL(f(x) ‖ f(x')), x' = PGD on the KL term (Zhang et al. 2019, Eq. 5)
``mart``       BCE(f(x'), y) + β·KL(f(x) ‖ f(x'))·(1 − f_y(x)), x' = PGD on CE (Wang et al. 2020, Eq. 7)
``pgd-awp``    ``pgd`` at the adversarially perturbed weights w + v (Wu et al. 2020, Eq. 8, :mod:`.awp`)
``trades-awp`` ``trades`` at w + v (Wu et al. 2020, TRADES-AWP)
``gaussian``   CE(f(x + N(0, σ²)), y) (Cohen et al. 2019)
=============  ==========================================================================================

:func:`batch_loss` is the one place the loop asks for a batch's loss; it returns the loss, the logits that
``train_acc`` counts and a ``restore`` callable the loop runs right after the optimiser step (AWP removes its
weight perturbation there; a no-op for the other modes). A custom ``objective(net, model, x, y) -> (loss,
logits)`` replaces all of it (the multi-norm baselines of :mod:`torchrobust.psat` that are not a mean of
cross-entropies, e.g. RAMP).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import TorchRobustError
from ..validation import eval_mode


class TrainConfig(Protocol):
    """The fields of :class:`torchrobust.train.TrainConfig` the objectives read (a protocol: this module does not
    import the loop)."""

    mode: str
    threat: str
    eps: float
    steps: int
    alpha: float | None
    trades_beta: float
    mart_beta: float
    awp_gamma: float
    mixed: bool
    noise_sigma: float

__all__ = ["mart_loss", "trades_loss", "batch_loss", "mode_adversary", "trades_adversarial", "AWP_MODES",
           "Objective"]

Adversary = Callable[[nn.Module, Tensor, Tensor], Tensor | Sequence[Tensor]]
#: ``objective(net, model, x, y) -> (loss, logits)``: replaces the mode's loss (``net`` may be the DDP wrapper).
Objective = Callable[[nn.Module, nn.Module, Tensor, Tensor], tuple[Tensor, Tensor]]
#: Modes trained at adversarially perturbed weights (:mod:`torchrobust.train.awp`), and the mode each builds on.
AWP_MODES = {"pgd-awp": "pgd", "trades-awp": "trades"}
_TRADES_LIKE = ("trades", "trades-awp")


def _noop() -> None:
    return None


def mode_adversary(mode: str, threat: str, eps: float, steps: int, alpha: float | None) -> Adversary | None:
    """The input adversary of a cross-entropy mode: FGSM, or PGD with a random start (``pgd``, ``pgd-awp`` and
    MART's inner maximisation, which is PGD on the cross-entropy); ``None`` for the others."""
    from .. import attacks

    if mode == "fgsm":
        return attacks.FGSM(threat=threat, eps=eps)
    if mode in ("pgd", "pgd-awp", "mart"):
        return attacks.PGD(threat=threat, eps=eps, steps=steps, alpha=alpha, random_start=True)
    return None


def trades_adversarial(model: nn.Module, x: Tensor, cfg: TrainConfig) -> Tensor:
    """The TRADES inner maximisation: PGD on KL(f(x) ‖ f(x')) from x + 0.001·N(0, I), in eval mode."""
    from ..attacks import get_threat

    threat = get_threat(cfg.threat, cfg.eps)
    alpha = cfg.alpha if cfg.alpha is not None else threat.default_alpha(cfg.steps)
    with eval_mode(model):
        with torch.no_grad():
            p_clean = F.softmax(model(x), dim=1)
        x_adv = threat.project((x + 0.001 * torch.randn_like(x)).clamp(0, 1), x).detach()
        for _ in range(cfg.steps):
            x_adv.requires_grad_(True)
            loss = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_clean, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = threat.project(threat.step(x_adv.detach(), grad, alpha), x).detach()
    return x_adv


def trades_loss(logits: Tensor, logits_adv: Tensor, y: Tensor, beta: float) -> Tensor:
    """TRADES (Zhang et al. 2019, Eq. 5): CE(f(x), y) + β·(1/n)·Σ KL(f(x) ‖ f(x'))."""
    return F.cross_entropy(logits, y) + beta * F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits, dim=1),
                                                        reduction="batchmean")


def mart_loss(logits: Tensor, logits_adv: Tensor, y: Tensor, beta: float) -> Tensor:
    """MART (Wang et al., ICLR 2020, Eq. 7 and the authors' ``mart_loss``):

    ``(1/n) Σ_i [ BCE(p(x'_i), y_i) + β · KL(p(x_i) ‖ p(x'_i)) · (1 − p_{y_i}(x_i)) ]`` with the boosted
    cross-entropy ``BCE(p, y) = −log p_y − log(1 − max_{k≠y} p_k)``.

    As in the reference code, ``log(1 − max_{k≠y} p_k)`` is ``log(1.0001 − p_k + 1e-12)`` and the KL uses
    ``log(p(x') + 1e-12)``; the weight is ``1.0000001 − p_y(x)`` (the constants keep the logs finite).
    """
    n = len(y)
    p_adv = F.softmax(logits_adv, dim=1)
    top2 = torch.argsort(p_adv, dim=1)[:, -2:]
    runner_up = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])  # the most likely wrong class
    bce = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - p_adv + 1e-12), runner_up)
    p_nat = F.softmax(logits, dim=1)
    p_true = p_nat.gather(1, y.unsqueeze(1)).squeeze(1)
    kl = F.kl_div(torch.log(p_adv + 1e-12), p_nat, reduction="none").sum(1)  # KL(p(x) ‖ p(x')) per example
    return bce + beta * (kl * (1.0000001 - p_true)).sum() / n


def craft(model: nn.Module, x: Tensor, y: Tensor, cfg: TrainConfig, adversary: Adversary | None
          ) -> Tensor | Sequence[Tensor]:
    """The inputs the mode trains on besides ``x``: the adversarial batch (or several), or the noisy batch."""
    if cfg.mode in _TRADES_LIKE:
        return trades_adversarial(model, x, cfg)
    if adversary is not None:
        x_in = adversary(model, x, y)
        model.train()  # whatever mode the adversary left the model in
        return x_in
    if cfg.mode == "gaussian":
        return x + cfg.noise_sigma * torch.randn_like(x)
    return x


def loss_on(net: nn.Module, x: Tensor, x_in: Tensor | Sequence[Tensor], y: Tensor, cfg: TrainConfig
            ) -> tuple[Tensor, Tensor]:
    """The mode's loss at the current weights for already crafted inputs; also the logits ``train_acc`` counts
    (several batches' logits concatenated)."""
    if cfg.mode in _TRADES_LIKE or cfg.mode == "mart":
        if not isinstance(x_in, Tensor):
            raise TorchRobustError(f"mode={cfg.mode!r} needs an adversary that returns one batch; this one returned "
                                   "several")
        logits, logits_adv = net(x), net(x_in)  # two forward passes, as the papers' code (BatchNorm statistics)
        if cfg.mode == "mart":
            return mart_loss(logits, logits_adv, y, cfg.mart_beta), logits_adv
        return trades_loss(logits, logits_adv, y, cfg.trades_beta), logits
    if not isinstance(x_in, Tensor):  # several inputs per batch: the mean of their losses
        if cfg.mixed:
            raise TorchRobustError("mixed=True needs an adversary that returns one batch; this one "
                                   "returned several (add the clean batch to its list instead)")
        outs = [net(xi) for xi in x_in]
        return torch.stack([F.cross_entropy(o, y) for o in outs]).mean(), torch.cat(outs)
    if cfg.mixed and x_in is not x:
        both = net(torch.cat([x, x_in]))
        logits = both[len(x):]
        return F.cross_entropy(both[:len(x)], y) + F.cross_entropy(logits, y), logits
    logits = net(x_in)
    return F.cross_entropy(logits, y), logits


def batch_loss(net: nn.Module, model: nn.Module, x: Tensor, y: Tensor, cfg: TrainConfig,
               adversary: Adversary | None, objective: Objective | None = None
               ) -> tuple[Tensor, Tensor, Callable[[], None]]:
    """One batch's ``(loss, logits, restore)``; the loop calls ``restore()`` right after the optimiser step.

    For the AWP modes the inputs are crafted at the weights w, then w ← w + v (:func:`.awp.perturb`, v maximises
    the same loss), the loss is taken at w + v, and ``restore`` subtracts v again after the step — so the step
    is w ← w + Δ with Δ the optimiser update computed from the gradient at w + v (Wu et al. 2020, Alg. 1).
    """
    if objective is not None:
        loss, logits = objective(net, model, x, y)
        return loss, logits, _noop
    x_in = craft(model, x, y, cfg, adversary)
    restore = _noop
    if cfg.mode in AWP_MODES:
        from . import awp

        restore = awp.perturb(model, lambda: loss_on(model, x, x_in, y, cfg)[0], cfg.awp_gamma)
    try:
        loss, logits = loss_on(net, x, x_in, y, cfg)
    except BaseException:
        restore()
        raise
    return loss, logits, restore
