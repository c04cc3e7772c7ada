"""Training and evaluation adversaries for single- and multi-perturbation adversarial training.

All are written once against :class:`torchrobust.attacks.threat.ThreatModel` (``random_init``, ``step``,
``project``; ℓ1 = sparse SLIDE/top-k step with the exact ℓ1-ball ∩ box projection):

* :func:`pgd` — PGD on one ℓp ball (PSAT Eq. 3, Madry et al. 2018), keeping per example the best iterate seen
  (highest loss, misclassified first) over steps and restarts.
* :func:`worst_of` — the "max" strategy (PSAT Eq. 5; Tramèr & Boneh 2019; ``robust_union``'s
  ``pgd_worst_dir``): run every single-norm attack and keep per example the one with the highest loss.
* :func:`msd` — multi steepest descent (PSAT Eq. 7; Maini et al. 2020, Alg. 1, ``msd_v0``): at every step take
  one steepest step *of each norm* from the current point, project each onto its own ball, and keep per example
  the candidate with the highest loss; the best-loss point ever seen is returned.

An adversary for training is a :class:`MultiAdversary` — ``adversary(model, x, y) -> list[x_adv]``; the loss is
the mean cross-entropy over the list, so the ``"avg"`` strategy (PSAT Eq. 6) returns one example per norm and
the others return one. Adversaries run the model in eval mode and restore its mode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchrobust.attacks.threat import THREAT_NAMES, ThreatModel, get_threat
from torchrobust.errors import TorchRobustError
from torchrobust.validation import eval_mode

__all__ = ["pgd", "worst_of", "msd", "PGDConfig", "MultiAdversary", "TrainingAdversary", "STRATEGIES",
           "MultiNormStrategy", "MNIST_BUDGETS", "CIFAR10_BUDGETS", "EXTREME_NORMS", "ExtremeNormAdversary",
           "max_loss_pick", "RAMP_LAMBDA"]

#: Budgets (ε) per threat model: MNIST (Maini et al. 2020) and CIFAR-10 (robust_union);
#: docs/paper-code-facts.md#standard-budgets.
MNIST_BUDGETS: dict[str, float] = {"Linf": 0.3, "L2": 2.0, "L1": 10.0}
CIFAR10_BUDGETS: dict[str, float] = {"Linf": 8 / 255, "L2": 0.5, "L1": 12.0}
#: RAMP's λ (logit-pairing weight) by default: the authors' from-scratch-with-GP value for ResNet-18 (Jiang & Singh
#: 2024; github.com/uiuc-focal-lab/RAMP scripts/cifar10/RAMP_scratch_cifar10.sh); TrainingAdversary says why.
RAMP_LAMBDA = 5.0
#: Training strategies: single-norm (one member / AT_p) and the multi-norm baselines.


class MultiNormStrategy(str, Enum):
    """The multi-norm training baselines (PSAT Eqs. 5–7); a ``str`` enum, so ``"max"`` keeps working."""

    MAX = "max"  #: worst case over the norms per example (Eq. 5)
    AVG = "avg"  #: mean loss over the norms (Eq. 6)
    MSD = "msd"  #: multi steepest descent (Eq. 7; Maini et al. 2020)
    EAT = "eat"  #: E-AT: ℓ∞ or ℓ1 at random per batch (Croce & Hein 2022; :mod:`.multinorm`)
    RAMP = "ramp"  #: max over ℓ∞/ℓ1 + logit pairing between them (Jiang & Singh 2024; :mod:`.multinorm`)

    def __str__(self) -> str:
        return self.value


#: Every training strategy: one member per threat model (AT_p), ``"natural"`` (standard training), the baselines.
STRATEGIES = (*THREAT_NAMES, "natural", *(s.value for s in MultiNormStrategy))


class _EvalMode:
    def __init__(self, model: nn.Module) -> None:
        self.model, self.was = model, model.training

    def __enter__(self) -> nn.Module:
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was)


def _loss_and_grad(model: nn.Module, x_adv: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    x_adv = x_adv.detach().requires_grad_(True)
    logits = model(x_adv)
    loss = F.cross_entropy(logits, y, reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), x_adv)
    return loss.detach(), logits.detach(), grad


def _update_best(best: Tensor, best_key: Tensor, cand: Tensor, key: Tensor) -> None:
    better = key > best_key
    best[better] = cand[better]
    best_key[better] = key[better]


def _key(loss: Tensor, logits: Tensor, y: Tensor) -> Tensor:
    """Ranking of candidates: misclassified first, then higher loss (large offset keeps both ordered)."""
    return loss + 1e6 * (logits.argmax(-1) != y).to(loss.dtype)


@dataclass(frozen=True)
class PGDConfig:
    """One single-norm PGD adversary: threat name, ε, steps, step size (``None``: the threat's default),
    restarts and random start."""

    threat: str
    eps: float
    steps: int = 10
    alpha: float | None = None
    restarts: int = 1
    random_start: bool = True

    def threat_model(self) -> ThreatModel:
        return get_threat(self.threat, self.eps)

    def step_size(self) -> float:
        return self.alpha if self.alpha is not None else self.threat_model().default_alpha(self.steps)


def pgd(model: nn.Module, x: Tensor, y: Tensor, cfg: PGDConfig) -> Tensor:
    """PGD (PSAT Eq. 3) with restarts: the library's one PGD loop (:class:`torchrobust.attacks.PGD`), which keeps
    per example the best iterate (misclassified first, then the largest margin) and checks the budget."""
    from torchrobust.attacks import PGD

    attack = PGD(threat=cfg.threat_model(), steps=cfg.steps, alpha=cfg.step_size(), restarts=max(cfg.restarts, 1),
                 random_start=cfg.random_start)
    return attack(model, x.detach(), y)


def worst_of(model: nn.Module, x: Tensor, y: Tensor, attacks: Sequence[Callable[[nn.Module, Tensor, Tensor], Tensor]]
             ) -> Tensor:
    """The "max" strategy (PSAT Eq. 5): per example, the attack output with the highest loss on ``model``
    (robust_union ``pgd_worst_dir``; note the selection is by loss, not by misclassification)."""
    best, best_loss = x.clone(), torch.full((x.shape[0],), -float("inf"), device=x.device)
    for attack in attacks:
        cand = attack(model, x, y)
        with _EvalMode(model), torch.no_grad():
            loss = F.cross_entropy(model(cand), y, reduction="none").to(best_loss.dtype)
        _update_best(best, best_loss, cand, loss)
    return best


def msd(model: nn.Module, x: Tensor, y: Tensor, cfgs: Sequence[PGDConfig], steps: int | None = None,
        random_start: bool = False) -> Tensor:
    """Multi steepest descent (PSAT Eq. 7; Maini et al. 2020 Alg. 1): one steepest step of every norm from the
    current point per iteration, each projected onto its own ball; keep the highest-loss candidate per example,
    return the best point ever seen. ``steps`` defaults to the largest ``cfg.steps``; step sizes are each
    config's ``alpha`` (robust_union: zero start, ``random_start=False``)."""
    tms = [c.threat_model() for c in cfgs]
    alphas = [c.step_size() for c in cfgs]
    n_steps = steps if steps is not None else max(c.steps for c in cfgs)
    x = x.detach()
    with _EvalMode(model):
        x_adv = tms[0].random_init(x) if random_start else x.clone()
        with torch.no_grad():
            best_loss = F.cross_entropy(model(x_adv), y, reduction="none")
        best = x_adv.clone()
        for _ in range(n_steps):
            _, _, grad = _loss_and_grad(model, x_adv, y)
            cands = [tm.project(tm.step(x_adv, grad, a), x) for tm, a in zip(tms, alphas, strict=True)]
            with torch.no_grad():
                losses = torch.stack([F.cross_entropy(model(c), y, reduction="none") for c in cands])
            pick = losses.argmax(0)
            stacked = torch.stack(cands)
            x_adv = stacked[pick, torch.arange(x.shape[0], device=x.device)].detach()
            _update_best(best, best_loss, x_adv, losses.max(0).values)
    return best


MultiAdversary = Callable[[nn.Module, Tensor, Tensor], list[Tensor]]

#: The two extreme norms E-AT and RAMP train against (ℓ∞ first: RAMP's source, ℓ1 its target).
EXTREME_NORMS = ("Linf", "L1")


@dataclass
class ExtremeNormAdversary:
    """E-AT (Croce & Hein 2022): ``adversary(model, x, y) -> [x']`` with x' the PGD example of ℓ∞ or ℓ1, drawn
    with probability 1/2 each per batch (``torch.randint`` on the global RNG; :mod:`torchrobust.psat.multinorm`)."""

    linf: PGDConfig
    l1: PGDConfig

    def draw(self) -> PGDConfig:
        return self.linf if int(torch.randint(2, ())) == 0 else self.l1

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> list[Tensor]:
        return [pgd(model, x, y, self.draw())]


def max_loss_pick(model: nn.Module, x_a: Tensor, x_b: Tensor, y: Tensor) -> Tensor:
    """Per example, the one of ``x_a``/``x_b`` with the larger cross-entropy (eval mode; ties → ``x_b``, as RAMP's
    reference code)."""
    with eval_mode(model), torch.no_grad():
        la = F.cross_entropy(model(x_a), y, reduction="none")
        lb = F.cross_entropy(model(x_b), y, reduction="none")
    pick = (la > lb).view(-1, *([1] * (x_a.dim() - 1)))
    return torch.where(pick, x_a, x_b)


@dataclass
class TrainingAdversary:
    """A training adversary ``(model, x, y) -> list[x_adv]`` for one strategy of :data:`STRATEGIES`.

    Args:
        strategy: ``"Linf"``/``"L2"``/``"L1"`` (single-norm AT, one PSAT member), ``"natural"`` (clean),
            ``"max"`` (Eq. 5), ``"avg"`` (Eq. 6, one example per norm, losses averaged) or ``"msd"`` (Eq. 7).
        eps: ε per threat model (default: MNIST budgets).
        steps, alpha: per threat model; ``alpha`` missing → the threat's default for ``steps``.
        msd_steps: iterations of MSD (default: max of ``steps``).
        msd_alpha: step sizes per norm inside MSD (robust_union MNIST: ℓ∞ 0.01, ℓ2 0.1, ℓ1 1.0; default: ``alpha``).
        ramp_lambda: weight λ of RAMP's logit-pairing term (:data:`RAMP_LAMBDA` = 5). The authors' code
            (github.com/uiuc-focal-lab/RAMP, ``RAMP.py --lbd``) defaults to 1.5, the value of its robust
            *fine-tuning* scripts, which run without gradient projection; its *from-scratch* scripts, which use
            GP, pass ``--lbd 5`` (PreAct ResNet-18) or ``--lbd 2`` (WideResNet). Here RAMP trains from scratch
            with GP by default (:func:`~torchrobust.psat.multinorm.ramp_objective`; ``psat train``, the CIFAR-10
            ResNet-18 preset), so the from-scratch ResNet-18 value is the default; pass 1.5 to fine-tune as
            the authors do. No MNIST value exists in the reference.

    ``"eat"`` and ``"ramp"`` use the extreme norms ℓ∞ and ℓ1 only. RAMP's loss is not a mean of cross-entropies:
    train it with :func:`torchrobust.psat.multinorm.ramp_objective` as :func:`torchrobust.train.fit`'s
    ``objective`` (called directly, the
    ``"ramp"`` adversary returns the per-example max-loss example of the two).
    """

    strategy: str
    eps: Mapping[str, float] = field(default_factory=lambda: dict(MNIST_BUDGETS))
    steps: Mapping[str, int] = field(default_factory=lambda: {"Linf": 10, "L2": 10, "L1": 10})
    alpha: Mapping[str, float] = field(default_factory=dict)
    msd_steps: int | None = None
    msd_alpha: Mapping[str, float] = field(default_factory=dict)
    norms: Sequence[str] = THREAT_NAMES
    ramp_lambda: float = RAMP_LAMBDA

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise TorchRobustError(f"unknown PSAT training strategy {self.strategy!r}; valid: {', '.join(STRATEGIES)}")
        needed = [self.strategy] if self.strategy in THREAT_NAMES else (
            [] if self.strategy == "natural" else list(EXTREME_NORMS) if self.strategy in (
                MultiNormStrategy.EAT, MultiNormStrategy.RAMP) else list(self.norms))
        missing = [n for n in needed if n not in self.eps]
        if missing:
            raise TorchRobustError(f"no eps for threat model(s) {missing}; pass eps={{'Linf': 0.3, ...}}")
        self._cfgs = {n: PGDConfig(n, float(self.eps[n]), int(self.steps.get(n, 10)), self.alpha.get(n))
                      for n in needed}

    def configs(self) -> dict[str, PGDConfig]:
        return dict(self._cfgs)


    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> list[Tensor]:
        s = self.strategy
        if s == "natural":
            return [x]
        if s in THREAT_NAMES:
            return [pgd(model, x, y, self._cfgs[s])]
        singles = [lambda m, a, b, c=c: pgd(m, a, b, c) for c in self._cfgs.values()]
        if s == MultiNormStrategy.MAX:
            return [worst_of(model, x, y, singles)]
        if s == MultiNormStrategy.AVG:
            return [f(model, x, y) for f in singles]
        if s in (MultiNormStrategy.EAT, MultiNormStrategy.RAMP):
            linf, l1 = self._cfgs["Linf"], self._cfgs["L1"]
            if s == MultiNormStrategy.EAT:
                return ExtremeNormAdversary(linf, l1)(model, x, y)
            return [max_loss_pick(model, pgd(model, x, y, linf), pgd(model, x, y, l1), y)]
        msd_cfgs = [PGDConfig(c.threat, c.eps, c.steps, self.msd_alpha.get(n, c.step_size()))
                    for n, c in self._cfgs.items()]
        return [msd(model, x, y, msd_cfgs, steps=self.msd_steps)]
