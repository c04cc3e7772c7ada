"""RAMP's gradient projection (GP): natural training fused into adversarial training once per epoch (Jiang &
Singh, NeurIPS 2024, "RAMP: Boosting Adversarial Robustness Against Multiple l_p Perturbations for Universal
Robustness": its gradient-projection component, "connecting natural training with AT").

**Source of the formula.** The paper's text could not be read here beyond its abstract; what follows is what the
authors' public code (github.com/uiuc-focal-lab/RAMP: ``RAMP.py`` with ``--gp``, ``utils.gp``) does, learnt from
it and re-implemented. Per epoch, with ``θ_old`` the model (parameters and buffers) at the start of the epoch:

1. a copy of the model, reset to ``θ_old``, is trained for the epoch on *clean* data with plain cross-entropy
   (natural training, NT) → ``θ_nat``; its optimiser has the main one's settings and learning-rate schedule and
   keeps its state (momentum) from epoch to epoch;
2. the model itself is trained for the epoch by RAMP's adversarial objective (AT) → ``θ_adv``;
3. every state entry ``l`` (each weight, bias and BatchNorm running statistic) is fused with
   ``δ_adv = θ_adv,l − θ_old,l``, ``δ_nat = θ_nat,l − θ_old,l`` and ``c = cos(δ_adv, δ_nat)`` (flattened)::

       θ_new,l = θ_old,l + (1 − β)·δ_adv + β·max(c, 0)·δ_nat            (β = 0.5)

   i.e. the natural update enters, scaled by its cosine similarity to the adversarial one, only where the two
   agree in direction (c > 0); where they conflict only ``(1 − β)·δ_adv`` is kept. Scalar entries (BatchNorm's
   ``num_batches_tracked``) and integer ones take ``θ_adv``'s value. The model (and the natural copy at the next
   epoch) continues from ``θ_new``; the main optimiser's state is left as it is.

β = 0.5 is hard-coded in the reference and constant over training; GP runs from the first epoch on. The
reference's from-scratch scripts use GP (with λ = 5 for ResNet-18, 2 for WideResNet); its robust fine-tuning
scripts do not (λ = 1.5). Without GP the method is the paper's "RAMP w/o GP" ablation.

**Choices where the reference code and the paper (as far as read) are silent.**

* The natural epoch runs *interleaved* with the adversarial one — one clean step on the copy per batch, on the
  same batch, at the learning rate the main optimiser uses for that batch — instead of as a separate pass with
  its own shuffle. Within an epoch the natural trajectory does not depend on the adversarial one, so only the
  data order differs; and training stays in the one loop (:func:`torchrobust.train.fit`), which calls
  :meth:`GradientProjection.begin_epoch` / :meth:`~GradientProjection.end_epoch` around each epoch.
* The natural optimiser mirrors the main one (same class, parameter groups and hyper-parameters; only the
  parameters ``fit`` trains are updated).
* Under DDP the natural step's gradients are averaged over the processes, so every process fuses the same
  ``θ_nat``.
* GP's state (``θ_old``, the natural copy and its optimiser) is not part of :mod:`torchrobust.train.resume`'s
  states, so a run with GP cannot be resumed: ``begin_epoch`` refuses, in one line, any epoch that does not follow
  the previous one from its first batch.
* A natural step draws no random numbers for models without dropout-like layers, so the adversarial trajectory
  within an epoch is the same with GP on and off; with such layers it would shift torch's global RNG.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchrobust import distributed as D
from torchrobust.errors import TorchRobustError

__all__ = ["GP_BETA", "GradientProjection", "check_beta", "gp_fuse"]

#: The reference code's (hard-coded) β.
GP_BETA = 0.5


def check_beta(beta: object) -> float:
    """``beta`` as a float in [0, 1]; a one-line :class:`TorchRobustError` otherwise."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) \
            or not 0.0 <= beta <= 1.0:
        raise TorchRobustError(f"gp_beta must be a number in [0, 1] (RAMP uses {GP_BETA}), got {beta!r}")
    return float(beta)


def gp_fuse(old: dict[str, Tensor], adv: dict[str, Tensor], nat: dict[str, Tensor],
            beta: float = GP_BETA) -> dict[str, Tensor]:
    """The GP fusion of three state dicts (same keys): per entry ``old + (1 − β)·δ_adv + β·max(cos, 0)·δ_nat``
    with ``δ = θ − old`` and the cosine of the flattened ``δ_adv``, ``δ_nat``; scalar and non-floating entries
    take ``adv``'s value. A zero ``δ`` has cosine 0."""
    beta = check_beta(beta)
    if not (old.keys() == adv.keys() == nat.keys()):
        raise TorchRobustError("gp_fuse needs three state dicts with the same keys")
    out: dict[str, Tensor] = {}
    for k, o in old.items():
        a, n = adv[k].detach(), nat[k].detach()
        if o.dim() == 0 or not o.is_floating_point():
            out[k] = a.clone()
            continue
        d_adv, d_nat = a - o, n - o
        cos = F.cosine_similarity(d_adv.reshape(1, -1).double(), d_nat.reshape(1, -1).double(), dim=1)[0]
        out[k] = o + (1.0 - beta) * d_adv + (beta * float(cos.clamp(min=0.0))) * d_nat
    return out


def _mirror_optimizer(opt: torch.optim.Optimizer, model: nn.Module, copy_of: nn.Module) -> torch.optim.Optimizer:
    """A fresh optimiser of ``opt``'s class over ``copy_of``'s parameters that correspond to those ``opt`` trains
    in ``model``, with the same groups and hyper-parameters."""
    index = {id(p): i for i, p in enumerate(model.parameters())}
    mirrored = list(copy_of.parameters())
    groups = []
    for g in opt.param_groups:
        missing = [p for p in g["params"] if id(p) not in index]
        if missing:
            raise TorchRobustError("RAMP's gradient projection needs the optimised parameters to be the model's "
                                   "own (fit's params= must be parameters of the model)")
        groups.append({**{k: v for k, v in g.items() if k != "params"},
                       "params": [mirrored[index[id(p)]] for p in g["params"]]})
    return type(opt)(groups, **opt.defaults)


class GradientProjection:
    """GP's state across one :func:`torchrobust.train.fit` run (the module docstring gives the formula):
    ``begin_epoch`` snapshots ``θ_old`` and resets the natural copy to it, ``natural_step`` trains the copy on one
    clean batch, ``end_epoch`` fuses the model in place. Outside an epoch begun by ``fit`` (e.g. an objective
    called by hand) ``natural_step`` does nothing."""

    def __init__(self, beta: float = GP_BETA) -> None:
        self.beta = check_beta(beta)
        self._nat: nn.Module | None = None
        self._nat_opt: torch.optim.Optimizer | None = None
        self._main_opt: torch.optim.Optimizer | None = None
        self._old: dict[str, Tensor] | None = None
        self._epoch: int | None = None  # the epoch in progress, or the last one fused

    @property
    def active(self) -> bool:
        return self._old is not None

    def begin_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, first_batch: int) -> None:
        if epoch == 0 and first_batch == 0:  # a new run (also when the objective is reused)
            self._nat = copy.deepcopy(model)
            self._nat_opt = _mirror_optimizer(optimizer, model, self._nat)
        elif first_batch != 0 or self._nat is None or self._epoch != epoch - 1 or self.active:
            raise TorchRobustError("RAMP's gradient projection keeps a natural-training copy of the model that "
                                   "resume states do not hold, so a run with it cannot be resumed; restart it "
                                   "or train RAMP without GP (ramp_objective(..., gp=False))")
        assert self._nat is not None
        self._nat.load_state_dict(model.state_dict())
        self._main_opt = optimizer
        self._old = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._epoch = epoch

    def natural_step(self, x: Tensor, y: Tensor) -> None:
        """One natural-training step of the copy on the clean batch, at the main optimiser's current LR."""
        if not self.active:
            return
        assert self._nat is not None and self._nat_opt is not None and self._main_opt is not None
        for g_nat, g in zip(self._nat_opt.param_groups, self._main_opt.param_groups, strict=True):
            g_nat["lr"] = g["lr"]
        self._nat.train()
        self._nat_opt.zero_grad(set_to_none=True)
        with torch.enable_grad():
            F.cross_entropy(self._nat(x), y).backward()
        if D.is_distributed():
            for p in self._nat.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad.div_(D.world_size())
        self._nat_opt.step()

    def end_epoch(self, model: nn.Module) -> None:
        """Replace the model's state by the GP fusion of ``θ_old``, its state now and the natural copy's."""
        if not self.active:
            return
        assert self._nat is not None and self._old is not None
        fused = gp_fuse(self._old, model.state_dict(), self._nat.state_dict(), self.beta)
        if not all(torch.isfinite(t).all() for t in fused.values() if t.is_floating_point()):
            raise TorchRobustError(f"RAMP's gradient projection diverged at epoch {(self._epoch or 0) + 1}: the "
                                   "natural-training copy's weights became NaN/inf; lower the learning rate (--lr)")
        model.load_state_dict(fused)
        self._old = None
