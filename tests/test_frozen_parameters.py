"""Attacks differentiate with respect to the input only: parameters' requires_grad is off while an attack runs
(so custom autograd Functions such as NRPM skip their weight-gradient kernels) and every flag is restored."""

from __future__ import annotations

import torch
from torch import nn

import torchrobust as tr
from torchrobust.attacks.apgd import APGD
from torchrobust.attacks.fgsm import FGSM
from torchrobust.validation import frozen_parameters


class _Scale(torch.autograd.Function):
    seen: list[tuple[bool, bool]] = []

    @staticmethod
    def forward(ctx, x, w):  # type: ignore[override]
        ctx.save_for_backward(x, w)
        return x * w

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        _Scale.seen.append(tuple(ctx.needs_input_grad[:2]))
        x, w = ctx.saved_tensors
        return g * w, (g * x).sum(0) if ctx.needs_input_grad[1] else None


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.rand(784) + 0.5)
        self.frozen = nn.Parameter(torch.ones(1), requires_grad=False)
        self.head = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(_Scale.apply(x.flatten(1), self.w) * self.frozen)


def test_attack_skips_weight_gradients_of_custom_functions_and_restores_flags() -> None:
    torch.manual_seed(0)
    model = _Model()
    x = torch.rand(4, 1, 28, 28)
    y = model(x).argmax(1)
    _Scale.seen.clear()
    FGSM("linf", eps=0.1)(model, x, y)
    assert _Scale.seen and all(s == (True, False) for s in _Scale.seen)
    assert model.w.requires_grad and model.head.weight.requires_grad and not model.frozen.requires_grad
    assert all(p.grad is None for p in model.parameters())  # no gradient left in the caller's model


def test_flags_restored_when_the_attack_raises_and_for_shared_parameters() -> None:
    lin = nn.Linear(3, 3)
    model = nn.Sequential(lin, nn.ReLU(), lin)  # the same parameters twice
    model[0].bias.requires_grad_(False)
    try:
        with frozen_parameters(model):
            assert not any(p.requires_grad for p in model.parameters())
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert lin.weight.requires_grad and not lin.bias.requires_grad


def test_nrpm_attack_results_unchanged_by_freezing(monkeypatch) -> None:
    """Freezing changes which kernels run, not the attack: the same seed gives the same adversarial points with and
    without it, and the caller's flags (a fixed λ buffer or parameter included) come back as they were."""
    from contextlib import nullcontext

    import torchrobust.attacks.base as base

    torch.manual_seed(0)
    model = tr.reprogram(nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10)), lam=0.5)
    flags = [p.requires_grad for p in model.parameters()]
    x = torch.rand(6, 1, 28, 28)
    y = model(x).argmax(1)
    atk = APGD("linf", eps=0.05, steps=10, seed=0)
    frozen = atk(model, x, y)
    assert [p.requires_grad for p in model.parameters()] == flags
    monkeypatch.setattr(base, "frozen_parameters", lambda m: nullcontext(m))
    assert torch.allclose(atk(model, x, y), frozen, rtol=0, atol=1e-6)
