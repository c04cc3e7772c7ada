"""Clean and robust accuracy, per example.

Every robust number in torchrobust is built from per-example booleans ("still correctly classified after
the attack"), so that the worst case across attacks, norms or defences is an elementwise AND — the reporting
rule of Carlini et al. 2019 and AutoAttack (the minimum over attacks per example, then averaged).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..validation import check_images, check_labels, eval_mode, model_device, probe_logits

__all__ = ["predict", "accuracy", "correct", "robust_correct"]


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Predicted labels of ``model`` on ``x``, on ``x``'s device. The forward passes run in eval mode (no
    BatchNorm statistic or dropout mask changes) and every submodule's mode is restored afterwards."""
    dev = model_device(model, x.device)
    with torch.no_grad(), eval_mode(model):
        out = [model(x[i:i + batch_size].to(dev)).argmax(1).to(x.device) for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Per-example booleans: is ``model`` right on ``x``? Validates the inputs first."""
    check_images(x)
    num_classes = probe_logits(model, x[:1].to(model_device(model, x.device)))
    check_labels(y, len(x), num_classes)
    return predict(model, x, batch_size) == y.to(x.device)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Clean accuracy in [0, 1]."""
    return float(correct(model, x, y, batch_size).float().mean())


def robust_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   attack: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
                   batch_size: int = 500, clean: torch.Tensor | None = None) -> torch.Tensor:
    """Per-example booleans: correct on the clean input AND on ``attack(model, x, y)``.

    One job of the evaluation engine (:func:`torchrobust.evaluate.engine.run_plan`): only clean-correct examples
    are attacked (a misclassified example is already an error), batch by batch, with the model in eval mode (every
    submodule's mode restored afterwards). A torchrobust :class:`~torchrobust.attacks.Attack` is budget-checked
    against its own threat model; a plain callable declares no budget, so only the [0, 1] box is checked (ℓ∞
    radius 1). ``clean`` is accepted for compatibility and not needed (the engine computes clean correctness).
    """
    from ..attacks.base import Attack
    from .engine import Job, run_plan

    if isinstance(attack, Attack):
        job = Job(attack, attack.threat.name, float(attack.threat.eps), name="attack")
    else:
        job = Job(attack, "Linf", 1.0, name="attack")
    res = run_plan(model, x, y, [job], batch_size=batch_size)
    return (res.clean & res.correct[job.key]).to(x.device)
