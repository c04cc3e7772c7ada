"""The extreme-norm multi-norm baselines: E-AT (Croce & Hein 2022) and RAMP (Jiang & Singh 2024).

Both train against the two *extreme* norms only, ℓ∞ and ℓ1: the ℓ2 ball of the usual budgets lies (nearly)
inside their union, so robustness to the extremes carries over to ℓ2 (Croce & Hein, ICML 2022, "Adversarial
robustness against multiple and single lp-threat models via quick fine-tuning of robust classifiers", Sec. 3).

* **E-AT** (:class:`~torchrobust.psat.adversary.ExtremeNormAdversary`): every batch is trained against ℓ∞ *or*
  ℓ1, drawn at random with probability 1/2 each from torch's global RNG (seeded by the training seed and
  restored on resume). The authors' code additionally reweights the draw by 1 − the running robust training
  accuracy of each norm; that adaptive weighting carries state across steps and is **not** implemented here.
* **RAMP** (:class:`RAMPObjective`; Jiang & Singh, NeurIPS 2024, logit-pairing loss, Sec. 4.1):
  ``L = CE(f(x'_max), y) + λ · (1/|S|) Σ_{i∈S} KL(p(x'_∞,i) ‖ p(x'_1,i))`` where ``x'_max`` is, per example,
  the ℓ∞ or ℓ1 adversarial example with the larger loss (the max strategy over the two), ``S`` the examples
  whose ℓ∞ example the model classifies correctly, and λ = 1.5 (the reference code's default ``--lbd``).
  With ``gp=True`` (the default, as in the authors' from-scratch runs) RAMP's gradient projection
  (:mod:`torchrobust.psat.ramp_gp`) fuses, once per epoch, a natural-training copy's update into the
  adversarial one layer by layer (β = 0.5); ``gp=False`` is the paper's "RAMP w/o GP" ablation. The papers
  attack with APGD during training; here the library's PGD is used, as for the other baselines.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchrobust.errors import TorchRobustError
from torchrobust.psat.adversary import (
    EXTREME_NORMS,
    RAMP_LAMBDA,
    ExtremeNormAdversary,
    MultiNormStrategy,
    PGDConfig,
    TrainingAdversary,
    max_loss_pick,
    pgd,
)
from torchrobust.psat.ramp_gp import GP_BETA, GradientProjection, check_beta

__all__ = ["EXTREME_NORMS", "ExtremeNormAdversary", "RAMPObjective", "ramp_pairing_loss", "max_loss_pick",
           "ramp_objective"]


def ramp_pairing_loss(logits_source: Tensor, logits_target: Tensor, y: Tensor) -> Tensor:
    """RAMP's logit-pairing term: ``(1/|S|) Σ_{i∈S} KL(p_source,i ‖ p_target,i)`` over the examples ``S`` the
    source (ℓ∞) logits classify correctly; 0 when ``S`` is empty. Zero when the two logits are equal, positive
    when they differ on some example of ``S``. Gradients flow into both logits (as in the reference code)."""
    keep = (logits_source.detach().argmax(1) == y)
    n = int(keep.sum())
    if n == 0:
        return logits_source.sum() * 0.0
    src, tgt = logits_source[keep], logits_target[keep]
    return F.kl_div(F.log_softmax(tgt, dim=1), F.log_softmax(src, dim=1), reduction="sum", log_target=True) / n


@dataclass
class RAMPObjective:
    """RAMP's training loss as a :func:`torchrobust.train.fit` ``objective(net, model, x, y) -> (loss,
    logits)``: ``CE(f(x'_max), y) + λ·ramp_pairing_loss(f(x'_∞), f(x'_1), y)`` (train-mode forward passes;
    the logits returned for ``train_acc`` are those of ``x'_max``).

    ``gp``: RAMP's gradient projection (:mod:`torchrobust.psat.ramp_gp`; Jiang & Singh 2024, GP): ``fit``
    calls :meth:`begin_epoch` / :meth:`end_epoch` around every epoch, each call takes one natural-training step
    of a model copy on the clean batch (it leaves the loss unchanged), and every epoch ends with the GP fusion
    (``gp_beta`` = β). ``gp=False``: "RAMP w/o GP", each epoch is plain training on the loss above."""

    linf: PGDConfig
    l1: PGDConfig
    lam: float = RAMP_LAMBDA
    gp: bool = True
    gp_beta: float = GP_BETA
    _gp: GradientProjection | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.gp, bool):
            raise TorchRobustError(f"gp must be True or False (RAMP's gradient projection on/off), got {self.gp!r}")
        self.gp_beta = check_beta(self.gp_beta)
        self._gp = GradientProjection(self.gp_beta) if self.gp else None

    def begin_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, first_batch: int) -> None:
        if self._gp is not None:
            self._gp.begin_epoch(model, optimizer, epoch, first_batch)

    def end_epoch(self, model: nn.Module) -> None:
        if self._gp is not None:
            self._gp.end_epoch(model)

    def _options(self) -> dict[str, Any]:
        return {"lam": self.lam, "gp": self.gp, "linf": asdict(self.linf), "l1": asdict(self.l1)}

    def state_dict(self) -> dict[str, Any]:
        """What a resume state holds of this objective (``fit`` saves it): λ, ``gp``, the two PGD settings and
        GP's state."""
        return {**self._options(), "projection": self._gp.state_dict() if self._gp else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take a :meth:`state_dict` back (``fit`` on resume); a state of other options is refused."""
        state = state if isinstance(state, dict) else {}
        diff = [f"{k} {state.get(k)!r} -> {v!r}" for k, v in self._options().items() if state.get(k) != v]
        if diff:
            raise TorchRobustError(f"the resume state is from a RAMP run with other options ({'; '.join(diff)}); "
                                   "rerun with the original options, or delete that folder to start over")
        if self._gp is not None:
            self._gp.load_state_dict(state["projection"])

    def __call__(self, net: nn.Module, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if self._gp is not None:
            self._gp.natural_step(x, y)
        x_inf = pgd(model, x, y, self.linf)
        x_one = pgd(model, x, y, self.l1)
        x_max = max_loss_pick(model, x_inf, x_one, y)
        model.train()
        out_inf, out_one, out_max = net(x_inf), net(x_one), net(x_max)
        loss = F.cross_entropy(out_max, y) + self.lam * ramp_pairing_loss(out_inf, out_one, y)
        return loss, out_max


def ramp_objective(adversary: TrainingAdversary, *, gp: bool = True, gp_beta: float = GP_BETA
                   ) -> RAMPObjective | None:
    """RAMP's training objective for a ``strategy="ramp"`` :class:`TrainingAdversary` (its ℓ∞/ℓ1 PGD settings and
    ``ramp_lambda``), with gradient projection unless ``gp=False`` ("RAMP w/o GP"); ``None`` for the strategies
    trained on the mean cross-entropy of the adversary's inputs."""
    if adversary.strategy != MultiNormStrategy.RAMP:
        return None
    cfgs = adversary.configs()
    return RAMPObjective(cfgs["Linf"], cfgs["L1"], lam=float(adversary.ramp_lambda), gp=gp, gp_beta=gp_beta)
