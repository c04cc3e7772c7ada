"""Adversarial Weight Perturbation (Wu, Xia & Wang, NeurIPS 2020, "Adversarial weight perturbation helps robust
generalization", Eq. 8–9 and Alg. 1).

AWP trains at the adversarially perturbed weights ``w + v``: after the adversarial inputs are crafted at ``w``,
one ascent step on the training loss gives, layer by layer (every weight matrix / kernel, i.e. every trainable
parameter with more than one dimension; biases and BatchNorm are not perturbed)::

    v_l = γ · ‖w_l‖ · g_l / ‖g_l‖,    g_l = ∇_{w_l} L(w)      (layer-wise relative size ‖v_l‖ = γ‖w_l‖)

the optimiser step is computed from the gradient at ``w + v`` and ``v`` is subtracted again afterwards.

The authors' code finds ``v`` with a proxy copy of the model: the proxy is re-loaded from the model at every
step and takes one plain-SGD step (no momentum) on the negated loss, and ``v`` is the proxy's change rescaled to
``γ‖w_l‖`` per layer — the proxy's learning rate cancels, so ``v`` is the normalised gradient above. That is what
this module computes, without the copy. **AWP carries no state across steps** (nothing but the current weights
and batch enters ``v``, and no random numbers are drawn), so resuming a run needs nothing beyond what
:mod:`torchrobust.train.resume` already saves. The ascent forward pass runs in train mode like the proxy's, but
the model's buffers (BatchNorm running statistics) are put back afterwards, since the proxy's were discarded.
Under DDP the ascent gradient is averaged over the processes, so every process adds the same ``v``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .. import distributed as D

__all__ = ["perturb", "perturbed_parameters"]


def perturbed_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters AWP perturbs: trainable ones with more than one dimension (conv kernels, linear weights),
    each shared tensor once."""
    seen: dict[int, nn.Parameter] = {}
    for p in model.parameters():
        if p.requires_grad and p.dim() > 1 and id(p) not in seen:
            seen[id(p)] = p
    return list(seen.values())


def weight_perturbation(model: nn.Module, loss_fn: Callable[[], Tensor], gamma: float) -> list[Tensor]:
    """The perturbation ``v`` (one tensor per :func:`perturbed_parameters` entry) for the loss ``loss_fn()`` at
    the model's current weights; the model's buffers are left as they were."""
    params = perturbed_parameters(model)
    if not params or gamma == 0:
        return [torch.zeros_like(p) for p in params]
    buffers = [b.detach().clone() for b in model.buffers()]
    try:
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers, strict=True):
                b.copy_(saved)
    out = []
    for p, g in zip(params, grads, strict=True):
        g = torch.zeros_like(p) if g is None else g.detach()
        if D.is_distributed():
            torch.distributed.all_reduce(g)
            g = g / D.world_size()
        out.append(gamma * p.detach().norm() / (g.norm() + 1e-20) * g)
    return out


def perturb(model: nn.Module, loss_fn: Callable[[], Tensor], gamma: float) -> Callable[[], None]:
    """Add the AWP perturbation ``v`` (:func:`weight_perturbation`) to the model's weights in place; returns the
    ``restore`` callable that subtracts it again (to be called once, after the optimiser step)."""
    params = perturbed_parameters(model)
    v = weight_perturbation(model, loss_fn, gamma)
    with torch.no_grad():
        for p, d in zip(params, v, strict=True):
            p.add_(d)
    done = [False]

    def restore() -> None:
        if done[0]:
            return
        done[0] = True
        with torch.no_grad():
            for p, d in zip(params, v, strict=True):
                p.sub_(d)

    return restore
