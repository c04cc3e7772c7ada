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
* GP's state (``θ_old`` of the epoch in progress, the natural copy's state and its optimiser's, the epoch and
  whether one is in progress) is part of :mod:`torchrobust.train.resume`'s states
  (:meth:`GradientProjection.state_dict` / :meth:`~GradientProjection.load_state_dict`, which ``fit`` calls), so
  a GP run resumes bit for bit mid-epoch and at an epoch boundary. ``begin_epoch`` refuses, in one line, an epoch
  that neither starts a run, follows the previous one from its first batch, nor continues the loaded state.
* A natural step draws no random numbers for models without dropout-like layers, so the adversarial trajectory
  within an epoch is the same with GP on and off; with such layers it would shift torch's global RNG.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchrobust import distributed as D
from torchrobust.errors import TorchRobustError

__all__ = ["GP_BETA", "GradientProjection", "check_beta", "gp_fuse"]

#: The reference code's (hard-coded) β.
GP_BETA = 0.5
#: version of :meth:`GradientProjection.state_dict`'s layout
_STATE_FORMAT = 1


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
        self._loaded: dict[str, Any] | None = None  # a resume state's GP state, put in place by begin_epoch

    @property
    def active(self) -> bool:
        return self._old is not None

    def state_dict(self) -> dict[str, Any]:
        """GP's state as tensors and JSON-able values (for :mod:`torchrobust.train.resume`): β, the epoch in
        progress or last fused, whether one is in progress, its ``θ_old``, the natural copy's state and its
        optimiser's (momentum)."""
        if self._loaded is not None:  # loaded but not yet put in place: unchanged
            return self._loaded
        return {"format": _STATE_FORMAT, "beta": self.beta, "epoch": self._epoch, "active": self.active,
                "old": self._old,
                "natural": self._nat.state_dict() if self._nat is not None else None,
                "natural_optimizer": self._nat_opt.state_dict() if self._nat_opt is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take a :meth:`state_dict`; the next :meth:`begin_epoch` (with the model and optimiser, already
        resumed) rebuilds the natural copy and its optimiser from it."""
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            raise TorchRobustError("the resume state's gradient-projection state is missing or of another format; "
                                   "finish that run with the torchrobust that wrote it, or start over")
        if state.get("beta") != self.beta:
            raise TorchRobustError(f"the resume state is from a run with gp_beta {state.get('beta')!r}, this run "
                                   f"has {self.beta!r}; rerun with the original options")
        self._loaded = state

    def _restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, first_batch: int) -> bool:
        """Put the loaded state in place for ``epoch`` from ``first_batch``; True when it was mid-epoch (the
        epoch then goes on from the loaded ``θ_old`` and natural copy)."""
        s, self._loaded = self._loaded, None
        assert s is not None
        mid = bool(s["active"])
        if s["natural"] is None or s["natural_optimizer"] is None \
                or (s["epoch"], mid) != ((epoch, True) if first_batch else (epoch - 1, False)):
            raise TorchRobustError(f"the resume state's gradient-projection state (epoch {s['epoch']}, "
                                   f"{'mid-epoch' if mid else 'fused'}) does not match the position it resumes "
                                   f"(epoch {epoch + 1}, batch {first_batch + 1}); delete the folder to start over")
        self._nat = copy.deepcopy(model)
        self._nat.load_state_dict(s["natural"])
        self._nat_opt = _mirror_optimizer(optimizer, model, self._nat)
        self._nat_opt.load_state_dict(s["natural_optimizer"])
        self._epoch = int(s["epoch"])
        if mid:
            live = model.state_dict()
            if s["old"] is None or s["old"].keys() != live.keys():
                raise TorchRobustError("the resume state's gradient-projection state does not fit the model; "
                                       "delete the folder to start over")
            # the live entries' device, dtype and memory layout (channels_last), as begin_epoch's clones have
            self._old = {k: torch.empty_like(live[k]).copy_(v) for k, v in s["old"].items()}
            self._main_opt = optimizer
        return mid

    def begin_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, first_batch: int) -> None:
        if epoch == 0 and first_batch == 0:  # a new run (also when the objective is reused)
            self._loaded = None
            self._nat = copy.deepcopy(model)
            self._nat_opt = _mirror_optimizer(optimizer, model, self._nat)
        elif self._loaded is not None:  # resumed: fit loaded a resume state's GP state
            if self._restore(model, optimizer, epoch, first_batch):
                return
        elif first_batch != 0 or self._nat is None or self._epoch != epoch - 1 or self.active:
            raise TorchRobustError("RAMP's gradient projection has no state for this epoch: resume a GP run "
                                   "through fit(resume_from=...) (CLI: --resume), whose resume states hold it")
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
