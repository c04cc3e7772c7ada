r"""Adaptive-attack wrappers: EOT for randomised models and BPDA for non-differentiable defences.

**EOT** — Expectation over Transformation (Athalye, Engstrom, Ilyas & Kwok 2018, "Synthesizing Robust Adversarial
Examples", Eq. 1; Athalye, Carlini & Wagner 2018, "Obfuscated Gradients Give a False Sense of Security", Sec. 4.3):
against a model with random outputs, attack the expectation ``E_r[f_r(x)]`` estimated by ``n_samples`` forward
passes. :func:`EOT` is both

* ``EOT(model, n_samples)`` → :class:`EOTModel`, an ``nn.Module`` returning the mean of ``n_samples`` logit draws
  (its input gradient is the mean of the ``n_samples`` logit gradients), and
* ``EOT(attack, n_samples)`` → :class:`EOTAttack`, an :class:`~torchrobust.attacks.Attack` that runs ``attack``
  against the :class:`EOTModel` of the model it is called with. Its result is then evaluated on the real
  (random) model by the caller — the expectation is only the attack's guide.

We average **logits**, which makes EOT a property of the model and therefore works with every attack (PGD, CW,
DeepFool, …). The paper's EOT averages the gradient of the *loss*; the two agree for the margin loss on the mean
logits up to the nonlinearity of the loss, and averaging logits is the variant used by e.g. the "rand" evaluation of
adaptive-attack studies. ``batched=True`` (default) runs the ``n_samples`` draws as one forward pass on the input
repeated ``n_samples`` times; use ``batched=False`` for models whose randomness is shared across a batch.

**BPDA** — Backward Pass Differentiable Approximation (Athalye, Carlini & Wagner 2018, Sec. 4.1): on the forward
pass the real defended model runs; on the backward pass a module ``g`` with useless gradients (zero almost
everywhere: thresholds, quantisation) is replaced by a differentiable surrogate ``h ≈ g``. :class:`BPDA` is both a
context manager and a model wrapper:

* every module that declares the protocol of :mod:`torchrobust.nn.forged` (a class attribute ``bpda_surrogate``
  and a boolean ``straight_through``) is switched to its own straight-through mode: e.g.
  :class:`~torchrobust.nn.Forged` (``"identity"``) and the NRPM layers :class:`~torchrobust.nn.NRPMLinear` /
  ``NRPMConv2d`` (``"irls_fixed"``: the IRLS weights of the last iteration held constant, computed
  memory-bounded inside the NRPM kernels — the default ``nrpm="irls"``);
* ``nrpm="linear"`` instead sends the backward of NRPM layers through their linear map (``to_module()``, the LPM
  the NRPM layer robustifies), attached by a forward hook;
* ``surrogates={module_or_type: fn}`` adds user surrogates ``fn(module, input) -> output`` for any module; a user
  surrogate overrides a module's declared mode. :func:`irls_fixed_surrogate` is the generic (hook) form of the
  NRPM surrogate for foreign modules with the same attributes; it builds the full ``N × O × D`` product tensor
  like the paper's reference code.

The hook construction is bit-exact on the forward pass: the module's output is replaced by
``out.detach() + (h − h.detach())``, whose value is ``out + 0 = out`` exactly and whose gradient is ``∂h/∂x``.

Example::

    >>> from torchrobust.attacks import PGD, EOT, BPDA
    >>> x_adv = EOT(PGD("Linf", eps=0.3, steps=100), n_samples=20)(random_model, x, y)
    >>> with BPDA(defended):                       # straight-through gradients, real forward
    ...     x_adv = PGD("Linf", eps=0.3)(defended, x, y)
    >>> x_adv = PGD("Linf", eps=0.3)(BPDA(defended), x, y)   # the same, as a wrapper module
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn

from torchrobust.attacks.base import Attack, register
from torchrobust.attacks.threat import ThreatModel
from torchrobust.errors import TorchRobustError
from torchrobust.validation import check_positive_int

__all__ = ["EOT", "EOTModel", "EOTAttack", "BPDA", "Surrogate", "default_surrogates", "has_bpda_modules",
           "irls_fixed_surrogate"]

#: ``fn(module, input) -> output``: a differentiable approximation of ``module(input)``.
Surrogate = Callable[[nn.Module, Tensor], Tensor]


# ================================================================================================== EOT
class EOTModel(nn.Module):
    """``forward(x) = mean_{i < n_samples} model(x)`` over independent random draws (EOT on logits).

    Args:
        model: a (randomised) model mapping [0, 1] inputs to logits.
        n_samples: draws per forward pass (≥ 1; Athalye et al. use ≥ 20... 80).
        batched: run the draws as one pass over ``n_samples`` stacked copies (True) or one pass per draw.
    """

    def __init__(self, model: nn.Module, n_samples: int = 20, batched: bool = True) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TorchRobustError(f"EOTModel needs an nn.Module, got {type(model).__name__}")
        self.model = model
        self.n_samples = check_positive_int(n_samples, "n_samples", 20)
        self.batched = bool(batched)

    def forward(self, x: Tensor) -> Tensor:
        n = self.n_samples
        if self.batched:
            out = self.model(x.repeat(n, *([1] * (x.dim() - 1))))
            return out.view(n, x.shape[0], *out.shape[1:]).mean(0)
        return torch.stack([self.model(x) for _ in range(n)]).mean(0)


class EOTAttack(Attack):
    """Run ``attack`` against :class:`EOTModel` ``(model, n_samples)``; same threat model and budget check."""

    def __init__(self, attack: Attack, n_samples: int = 20, batched: bool = True) -> None:
        if not isinstance(attack, Attack):
            raise TorchRobustError(f"EOTAttack wraps a torchrobust Attack, got {type(attack).__name__}")
        super().__init__(attack.threat)
        self.attack = attack
        self.targeted = attack.targeted
        self.n_samples = check_positive_int(n_samples, "n_samples", 20)
        self.batched = bool(batched)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return self.attack.perturb(EOTModel(model, self.n_samples, self.batched), x, y)


def EOT(attack_or_model: Attack | nn.Module, n_samples: int = 20, batched: bool = True) -> Any:  # noqa: N802
    """``EOT(model, n)`` → :class:`EOTModel`; ``EOT(attack, n)`` → :class:`EOTAttack` (see the module docstring)."""
    if isinstance(attack_or_model, Attack):
        return EOTAttack(attack_or_model, n_samples, batched)
    if isinstance(attack_or_model, nn.Module):
        return EOTModel(attack_or_model, n_samples, batched)
    raise TorchRobustError(
        f"EOT wraps an Attack or an nn.Module, got {type(attack_or_model).__name__}; e.g. EOT(PGD(...), 20)"
    )


class _EOTRegistered(EOTAttack):
    """``create("eot", attack="pgd", n_samples=20, threat=..., eps=..., **attack_kwargs)``."""

    def __init__(self, attack: str | Attack = "pgd", n_samples: int = 20, threat: str | ThreatModel = "Linf",
                 eps: float | None = None, batched: bool = True, **attack_kwargs: Any) -> None:
        from torchrobust.attacks.base import create

        inner = attack if isinstance(attack, Attack) else create(attack, threat=threat, eps=eps, **attack_kwargs)
        super().__init__(inner, n_samples, batched)

    @property
    def seed(self) -> Any:
        return getattr(self.attack, "seed", 0)

    @seed.setter
    def seed(self, value: Any) -> None:
        if hasattr(self.attack, "seed"):
            self.attack.seed = value


register("eot", _EOTRegistered)


# ================================================================================================== BPDA
def _linear_surrogate(module: nn.Module, inp: Tensor) -> Tensor:
    """Backward through the layer's linear map (NRPM → its LPM, ``to_module()``)."""
    return module.to_module()(inp)  # type: ignore[operator]


def _irls_fixed_rows(rows: Tensor, weight: Tensor, K: int, eps: float) -> tuple[Tensor, Tensor]:
    """``(z_LPM, z_surrogate)`` for rows ``(n, D)`` and weights ``(O, D)``: the IRLS of the NRPM forward pass
    (Hou et al. 2025, Eq. 7) run without gradient; the surrogate is its last step with the weights ``w_d`` held
    constant, ``z = D Σ_d w_d p_d / Σ_d w_d`` (equal in value to ``z⁽ᴷ⁾``, linear in the input)."""
    D = rows.shape[-1]
    p = rows[:, None, :] * weight[None, :, :]
    z0 = p.sum(-1)
    if K == 0:
        return z0, z0
    with torch.no_grad():
        pd = p.detach()
        z = z0.detach()
        for _ in range(K - 1):
            u = 1.0 / ((pd - z[..., None] / D).abs() + eps)
            z = D * (u * pd).sum(-1) / u.sum(-1)
        u = 1.0 / ((pd - z[..., None] / D).abs() + eps)
    return z0, D * (u * p).sum(-1) / u.sum(-1)


def irls_fixed_surrogate(module: nn.Module, inp: Tensor) -> Tensor:
    """BPDA surrogate of an NRPM layer: its output with the IRLS weights of the last iteration held constant.

    The value equals the layer's output (up to rounding); the gradient treats the weights ``w_d`` as constants,
    so it is ``λ W + (1 − λ) D w W / Σ w`` instead of differentiating through ``K`` reweighting steps. Memory is
    that of the paper's reference code (the ``N × O × D`` product tensor; convolution patches unfolded). Layers
    with ``groups > 1`` or a non-zero padding mode fall back to :func:`_linear_surrogate`.
    """
    lam, K, eps = float(module.lam), int(module.K), float(module.irls_eps)  # type: ignore[arg-type]
    weight = module.weight
    bias = None if getattr(module, "drop_bias", False) else module.bias
    if isinstance(module.weight, Tensor) and weight.dim() == 2:  # NRPMLinear
        rows = inp.reshape(-1, weight.shape[1])
        z0, zs = _irls_fixed_rows(rows, weight, K, eps)
        out = lam * z0 + (1 - lam) * zs
        if bias is not None:
            out = out + bias
        return out.view(*inp.shape[:-1], weight.shape[0])
    padding = module.padding  # type: ignore[attr-defined]
    if module.groups != 1 or module.padding_mode != "zeros" or isinstance(padding, str):  # type: ignore[attr-defined]
        return _linear_surrogate(module, inp)
    b = inp.shape[0]
    kh, kw = weight.shape[2], weight.shape[3]
    cols = torch.nn.functional.unfold(inp, (kh, kw), dilation=module.dilation, padding=padding,  # type: ignore[attr-defined]
                                      stride=module.stride)  # type: ignore[attr-defined]
    L = cols.shape[-1]
    rows = cols.transpose(1, 2).reshape(b * L, -1)
    z0, zs = _irls_fixed_rows(rows, weight.flatten(1), K, eps)
    out = (lam * z0 + (1 - lam) * zs).view(b, L, -1).transpose(1, 2)
    if bias is not None:
        out = out + bias[None, :, None]
    h_in, w_in = inp.shape[-2:]
    (ph, pw), (dh, dw), (sh, sw) = padding, module.dilation, module.stride  # type: ignore[attr-defined]
    h_out = (h_in + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w_out = (w_in + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return out.reshape(b, -1, h_out, w_out)


_NRPM_SURROGATES: dict[str, Surrogate] = {"irls": irls_fixed_surrogate, "linear": _linear_surrogate}


def default_surrogates(nrpm: str = "irls") -> dict[type, Surrogate]:
    """Hook surrogates :class:`BPDA` attaches by default; they take precedence over a module's declared mode.

    NRPM layers: ``nrpm="irls"`` uses the layers' own declared mode (``bpda_surrogate = "irls_fixed"``, IRLS
    weights held constant, memory-bounded) and adds nothing here — unless the layer class declares no surrogate,
    when the generic :func:`irls_fixed_surrogate` hook is the fallback; ``nrpm="linear"`` maps them to their
    LPM (:func:`_linear_surrogate`)."""
    if nrpm not in _NRPM_SURROGATES:
        raise TorchRobustError(f"unknown NRPM surrogate {nrpm!r}; valid: {', '.join(_NRPM_SURROGATES)}")
    out: dict[type, Surrogate] = {}
    try:
        from torchrobust.nn.nrpm_layers import NRPMConv2d, NRPMLinear
    except ImportError:  # pragma: no cover - nn is part of the package
        return out
    for cls in (NRPMLinear, NRPMConv2d):
        if nrpm != "irls" or getattr(cls, "bpda_surrogate", None) is None:
            out[cls] = _NRPM_SURROGATES[nrpm]
    return out


def _declares(module: nn.Module) -> bool:
    return getattr(type(module), "bpda_surrogate", None) is not None


def has_bpda_modules(model: nn.Module, surrogates: Mapping[Any, Surrogate] | None = None) -> bool:
    """Whether :class:`BPDA` would change anything in ``model`` (a declaring module or a surrogate match)."""
    table = {**default_surrogates(), **dict(surrogates or {})}
    return any(_declares(m) or _lookup(table, m) is not None for m in model.modules())


def _lookup(table: Mapping[Any, Surrogate], module: nn.Module) -> Surrogate | None:
    if module in table:
        return table[module]
    for key, fn in table.items():
        if isinstance(key, type) and isinstance(module, key):
            return fn
    return None


class BPDA(nn.Module):
    """Straight-through gradients for every defence module of ``model``; the forward pass is unchanged.

    Use as a context manager (``with BPDA(model): ...`` switches ``model`` itself) or as a model wrapper
    (``BPDA(model)(x)`` runs ``model`` in BPDA mode for that call only).

    Args:
        model: the defended model.
        surrogates: extra ``{module instance or class: fn(module, input) -> output}`` surrogates (attached by a
            forward hook); they override the defaults and a module's declared mode. Other modules declaring
            ``bpda_surrogate`` use their own straight-through mode.
        nrpm: surrogate of NRPM layers: ``"irls"`` (default; their declared mode, IRLS weights held constant) or
            ``"linear"`` (the LPM, by a hook).
    """

    def __init__(self, model: nn.Module, surrogates: Mapping[Any, Surrogate] | None = None,
                 nrpm: str = "irls") -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TorchRobustError(f"BPDA needs an nn.Module, got {type(model).__name__}")
        self.model = model
        self._table: dict[Any, Surrogate] = {**default_surrogates(nrpm), **dict(surrogates or {})}
        self._saved: list[tuple[nn.Module, bool]] = []
        self._handles: list[Any] = []
        self._depth = 0

    # ------------------------------------------------------------------------------------------------ switching
    def _enable(self) -> None:
        self._depth += 1
        if self._depth > 1:
            return
        for m in self.model.modules():
            fn = _lookup(self._table, m)
            if fn is not None:  # an explicit (user or nrpm="linear") surrogate wins over the declared mode
                self._handles.append(m.register_forward_hook(_make_hook(fn)))
            elif _declares(m):
                self._saved.append((m, bool(getattr(m, "straight_through", False))))
                m.straight_through = True

    def _disable(self) -> None:
        self._depth -= 1
        if self._depth > 0:
            return
        for m, prev in self._saved:
            m.straight_through = prev
        for h in self._handles:
            h.remove()
        self._saved.clear()
        self._handles.clear()

    def __enter__(self) -> nn.Module:
        self._enable()
        return self.model

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._disable()

    def forward(self, x: Tensor) -> Tensor:
        self._enable()
        try:
            return self.model(x)
        finally:
            self._disable()

    @property
    def active_modules(self) -> list[str]:
        """Qualified names of the modules BPDA changes (declaring the protocol or matched by a surrogate)."""
        return [n or "<root>" for n, m in self.model.named_modules() if _declares(m) or _lookup(self._table, m)]


def _make_hook(fn: Surrogate) -> Callable[[nn.Module, tuple[Any, ...], Any], Any]:
    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if not isinstance(output, Tensor) or not args or not isinstance(args[0], Tensor):
            return output
        if not torch.is_grad_enabled():
            return output
        h = fn(module, args[0])
        return output.detach() + (h - h.detach())

    return hook
