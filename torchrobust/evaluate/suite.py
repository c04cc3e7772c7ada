"""One entry point for both evaluation suites: ``evaluate(model, x, y, suite="sweep" | "adaptive", ...)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from ..errors import TorchRobustError
from .adaptive import AdaptiveResult, evaluate_adaptive, undefended_base
from .sweep import DEFAULT_ATTACKS, SweepResult, sweep

__all__ = ["evaluate", "SUITES"]

SUITES = ("sweep", "adaptive")


def evaluate(model: nn.Module, x: Tensor, y: Tensor, suite: str = "sweep", *, threat: str = "Linf",
             eps: float | Sequence[float] = (0.0, 0.1, 0.2, 0.3), attacks: Sequence[str] = DEFAULT_ATTACKS,
             base_model: nn.Module | None = None, **kwargs: Any) -> SweepResult | dict[float, AdaptiveResult]:
    """Evaluate ``model`` on ``(x, y)``.

    * ``suite="sweep"``: :func:`~torchrobust.evaluate.sweep` of ``attacks`` over ``eps`` (``kwargs`` go to it); the
      default attacks are FGSM (the papers' column), APGD-CE and APGD-T on APGD-CE's survivors, reported as the
      per-example worst case — as strong as the reference AutoAttack's white-box pair.
    * ``suite="adaptive"``: :func:`~torchrobust.evaluate.evaluate_adaptive` at every ε > 0 (``kwargs`` go to it);
      ``base_model`` defaults to the model without the torchrobust defences it carries (transfer source). Returns
      ``{eps: AdaptiveResult}``; each result's ``robust_accuracy`` is the per-example worst case over every attack
      run, and ``reliable`` is False when a gradient-masking check fired.
    """
    eps_list = [float(eps)] if isinstance(eps, (int, float)) else [float(e) for e in eps]
    if suite == "sweep":
        return sweep(model, x, y, attacks=list(attacks), eps=eps_list, threat=threat, **kwargs)
    if suite == "adaptive":
        base = base_model if base_model is not None else undefended_base(model)
        out = {e: evaluate_adaptive(model, x, y, threat=threat, eps=e, base_model=base, **kwargs)
               for e in eps_list if e > 0}
        if not out:
            raise TorchRobustError("the adaptive suite needs at least one eps > 0")
        return out
    raise TorchRobustError(f"unknown evaluation suite {suite!r}; valid: {', '.join(SUITES)}")
