"""The PSAT aggregate: one member per ℓp threat model, lowest-entropy selection (PSAT Eq. 12).

``F(x) = f_{p*}(x)`` with ``p* = argmin_p H(softmax f_p(x))`` and ``H(q) = -Σ_k q_k log q_k``, chosen per input;
the alternative ``"average"`` strategy (PSAT Table 4) averages the members' *probabilities* and returns their
log (so the output's softmax is the averaged probability vector — a valid logit vector).

**Differentiability.** The selection is made with ``argmin`` and applied with ``gather``, so the output is
differentiable w.r.t. the input through the selected member's logits; the selection itself is piecewise
constant in ``x`` (its gradient is zero almost everywhere and undefined on the switching surfaces). An
end-to-end attack therefore never "sees" that moving ``x`` could switch to a weaker member — which is why
:func:`adaptive_attack` also attacks every member on its own and keeps, per example, the candidate that does
most damage to the aggregate (docs/paper-code-facts.md#psat-aggregate).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchrobust.attacks.threat import THREAT_NAMES, ThreatName
from torchrobust.errors import TorchRobustError
from torchrobust.validation import eval_mode

__all__ = ["PSATEnsemble", "Aggregation", "adaptive_attack", "canonical_threat", "strongest", "THREATS",
           "prediction_entropy"]

#: Member names: the three ℓp threat models of PSAT, plus ``"natural"`` for the standard-training member of
#: the paper's member analysis (Table 3).
THREATS = (*THREAT_NAMES, "natural")
_NATURAL = ("natural", "nat", "clean", "standard")


class Aggregation(str, Enum):
    """How the ensemble combines its members (a ``str`` enum, so ``strategy="entropy"`` keeps working)."""

    ENTROPY = "entropy"  #: the member with the lowest prediction entropy answers (PSAT Eq. 12)
    AVERAGE = "average"  #: the members' probabilities are averaged (PSAT Table 4's alternative)

    def __str__(self) -> str:
        return self.value


Strategy = Literal["entropy", "average"] | Aggregation
AttackFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


def canonical_threat(name: str) -> str:
    """Normalise a threat-model name (``"linf"`` → ``"Linf"``); unknown names raise."""
    key = str(name).strip().lower()
    if key in _NATURAL:
        return "natural"
    try:
        return ThreatName(key).value  # the one table of threat-name aliases
    except ValueError:
        raise TorchRobustError(f"unknown threat model {name!r} for a PSAT member; valid: {', '.join(THREATS)}") \
            from None


def prediction_entropy(logits: Tensor) -> Tensor:
    """Shannon entropy of ``softmax(logits)`` over the last dimension (the quantity minimised in Eq. 12)."""
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


class PSATEnsemble(nn.Module):
    """Aggregate of per-threat-model members (PSAT Eq. 10) with lowest-entropy (Eq. 12) or average output.

    Args:
        members: mapping threat name (``"Linf"``, ``"L2"``, ``"L1"``, optionally ``"natural"``) → model.
        strategy: ``"entropy"`` (paper) or ``"average"`` (Table 4's alternative).
        input_shape: ``(C, H, W)`` of a probe input used to check that all members output the same number
            of classes; by default the members' ``input_shape`` attribute if they have one.
        check_architecture: require the members to share a class and parameter shapes (PSAT aggregates
            members of one backbone; set ``False`` to aggregate arbitrary models).

    Ties in entropy go to the first member in ``members`` order.
    """

    def __init__(self, members: Mapping[str, nn.Module], strategy: Strategy = "entropy",
                 input_shape: tuple[int, ...] | None = None, check_architecture: bool = True) -> None:
        super().__init__()
        if not members:
            raise TorchRobustError("PSATEnsemble needs at least one member; pass e.g. {'Linf': m1, 'L2': m2}")
        if strategy not in tuple(Aggregation):
            raise TorchRobustError(f"unknown PSAT strategy {strategy!r}; valid: average, entropy")
        strategy = Aggregation(strategy).value
        names = [canonical_threat(k) for k in members]
        if len(set(names)) != len(names):
            raise TorchRobustError(f"duplicate threat models among members {list(members)}; give one per threat")
        self.members = nn.ModuleDict(dict(zip(names, members.values(), strict=True)))
        self.strategy: Strategy = strategy
        mods = list(self.members.items())
        if check_architecture:
            ref_name, ref = mods[0]
            ref_shapes = [tuple(p.shape) for p in ref.parameters()]
            for name, m in mods[1:]:
                if type(m) is not type(ref) or [tuple(p.shape) for p in m.parameters()] != ref_shapes:
                    raise TorchRobustError(
                        f"members differ in architecture: {name!r} is not the same backbone as {ref_name!r}; "
                        "train every member on one backbone (or pass check_architecture=False)")
        shape = input_shape or getattr(mods[0][1], "input_shape", None)
        if shape is not None:
            p = next(iter(mods[0][1].parameters()), None)
            probe = torch.zeros(1, *shape, device=p.device if p is not None else None,
                                dtype=p.dtype if p is not None else None)
            was = [m.training for _, m in mods]
            with torch.no_grad():
                for _, m in mods:
                    m.eval()
                outs = {n: m(probe).shape[-1] for n, m in mods}
            for (_, m), t in zip(mods, was, strict=True):
                m.train(t)
            if len(set(outs.values())) > 1:
                raise TorchRobustError(f"members output different numbers of classes {outs}; "
                                       "use members trained on the same label set")

    @property
    def threats(self) -> list[str]:
        """Member threat names, in order."""
        return list(self.members.keys())

    def member_logits(self, x: Tensor) -> Tensor:
        """Stacked logits of all members, shape ``(M, B, C)``."""
        outs = [m(x) for m in self.members.values()]
        if len({o.shape for o in outs}) > 1:
            raise TorchRobustError(f"members returned different output shapes {[tuple(o.shape) for o in outs]}; "
                                   "use members trained on the same label set")
        return torch.stack(outs, 0)

    def forward_with_selection(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Logits and, for ``"entropy"``, the index of the selected member per input (``None`` for average)."""
        logits = self.member_logits(x)
        if self.strategy == Aggregation.AVERAGE:
            return torch.logsumexp(F.log_softmax(logits, -1), 0) - torch.log(
                torch.tensor(float(logits.shape[0]), dtype=logits.dtype, device=logits.device)), None
        idx = prediction_entropy(logits.detach()).argmin(0)  # (B,), piecewise constant in x
        out = logits.gather(0, idx.view(1, -1, 1).expand(1, *logits.shape[1:])).squeeze(0)
        return out, idx

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_selection(x)[0]

    def selected(self, x: Tensor) -> list[str]:
        """Name of the member chosen for each input (entropy strategy)."""
        with torch.no_grad():
            _, idx = self.forward_with_selection(x)
        if idx is None:
            raise TorchRobustError("selection is only defined for strategy='entropy'")
        return [self.threats[i] for i in idx.tolist()]


def strongest(model: nn.Module, x: Tensor, y: Tensor, candidates: Iterable[Tensor]) -> tuple[Tensor, Tensor]:
    """Per example, the candidate that does most damage to ``model``: the first that makes it misclassify, else
    the one with the highest cross-entropy (the clean ``x`` if no candidate beats it). Candidates are scored in
    eval mode without gradients. Returns ``(x_adv, source)`` with ``source`` the candidate index per example
    (``-1``: none was used). This is the selection of :func:`adaptive_attack` and of
    :func:`~torchrobust.psat.metrics.evaluate_multi_norm` when a norm has several attacks."""
    best = x.detach().clone()
    source = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
    best_fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    best_loss = torch.full((x.shape[0],), -float("inf"), device=x.device)
    with eval_mode(model):
        for s, cand in enumerate(candidates):
            cand = cand.detach()
            with torch.no_grad():
                out = model(cand)
                loss = F.cross_entropy(out, y, reduction="none").to(best_loss.dtype)
                fooled = out.argmax(-1) != y
            better = ~best_fooled & (fooled | (loss > best_loss))
            best[better] = cand[better]
            source[better] = s
            best_loss = torch.where(better, loss, best_loss)
            best_fooled |= fooled
    return best, source


def adaptive_attack(ensemble: PSATEnsemble, attack: AttackFn, x: Tensor, y: Tensor,
                    return_source: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Per-example worst of an end-to-end attack on the aggregate and of the same attack on each member.

    ``attack(model, x, y) -> x_adv`` is run on the ensemble itself (source 0) and on each member alone
    (sources 1..M, in ``ensemble.threats`` order). Every candidate is scored on the *aggregate* with
    :func:`strongest`: per example we keep the first candidate that makes the aggregate misclassify, else the one
    with the highest aggregate cross-entropy. All candidates lie in the attack's ball, so the result does too.

    Returns ``x_adv`` (and, with ``return_source``, the source index per example).
    """
    models: list[nn.Module] = [ensemble, *ensemble.members.values()]
    best, source = strongest(ensemble, x, y, (attack(m, x, y) for m in models))
    return (best, source) if return_source else best
