"""The zero-gradient graph analyser and the BPDA checks (checklist item 13).

:func:`find_zero_gradient_modules` finds the innermost modules whose forward pass has zero or missing derivatives
(thresholds, quantisers, comparisons, straight-through tricks) by re-running each module on its recorded input and
probing its derivatives; :func:`check_bpda_surrogates` flags those that declare no BPDA surrogate (Athalye et al.
2018, Sec. 4.1) and :func:`check_bpda_evaluated` an evaluation that never attacked through the declared ones.
The protocol: ``docs/architecture.md`` ("BPDA protocol").
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from torchrobust.evaluate.checks.arguments import float_tensor
from torchrobust.evaluate.checks.flags import Flag
from torchrobust.evaluate.checks.probes import probing
from torchrobust.validation import check_positive_int

__all__ = ["ZeroGradientModule", "find_zero_gradient_modules", "check_bpda_surrogates", "check_bpda_evaluated"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZeroGradientModule:
    """A module whose forward pass hides its derivative: ``reason`` is ``"cut"`` (the output does not depend
    differentiably on the input), ``"zero-derivative op"`` (round/floor/ceil/sign/trunc in its graph),
    ``"zero gradient"`` (the input gradient is identically zero) or ``"jump"`` (a finite-difference probe found
    a discontinuity that autograd does not see). ``declares_surrogate``: the module or an ancestor declares
    ``bpda_surrogate``."""

    name: str
    type: str
    reason: str
    declares_surrogate: bool


_ZERO_DERIVATIVE_NODES = frozenset({
    "RoundBackward0", "RoundBackward1", "FloorBackward0", "CeilBackward0", "SignBackward0", "SgnBackward0",
    "TruncBackward0",
})


def find_zero_gradient_modules(
    model: nn.Module,
    x: Tensor,
    *,
    probes: int = 4,
    rel_step: float = 1e-4,
    factor: float = 4.0,
    path_points: int = 32,
    seed: int = 0,
) -> list[ZeroGradientModule]:
    """Find the innermost modules whose forward pass has zero or missing derivatives (checklist item 13).

    One forward pass on ``x`` records every module's (single, floating-point) input. Each module ``m`` is then
    re-run on its recorded input ``a`` and classified, in this order:

    1. *cut*: ``m(a)`` does not require grad although ``a`` does (comparison, ``argmax``, ``detach``);
    2. *zero-derivative op*: its autograd graph contains Round/Floor/Ceil/Sign/Trunc backward nodes;
    3. *zero gradient*: the vector–Jacobian product with a random cotangent is identically zero;
    4. *jump*: for ``probes`` random sign directions ``d`` and ``h = rel_step · max|a|``, some output entry
       changes by more than ``factor · h · (1 + |J d|)`` beyond the first-order prediction ``h · J d``
       (``J d`` from forward-mode AD, else double backward). Continuous (also piecewise-linear, e.g. ReLU)
       modules change by at most about ``h · |J d|`` plus kink terms of order ``h``; a threshold such as
       ``x · (|x| > t)`` (Eq. 9 of the data-driven Lipschitz paper) jumps by ``t``, a quantiser by its step,
       and the straight-through form ``x + (q(x) - x).detach()`` is caught here as well;
    5. *jump* along a path (entrywise leaf modules — diagonal Jacobian — with ``path_points`` > 1): the same test
       on the grid ``s · a``, ``s = 1/K, ..., 1`` with ``K = path_points``, so every entry sweeps all magnitudes
       up to ``|a_i|`` and a threshold ``t`` is crossed for certain; it is found when some entry has
       ``|a_i| + |(J a)_i| < K t / factor`` (for ``x · (|x| > t)``: an entry with ``t < |a_i| < 4 t`` for the
       defaults).

    Modules whose output is not reproducible (randomised) are skipped — :func:`check_randomness` covers them.
    A module is reported only if none of its descendants is detected (the innermost culprit); so a parent whose
    only masking comes from a covered child is not reported — but neither is an inline zero-gradient op in a
    parent that also has a detected child (a known limitation). The model is run in eval mode (modes and all
    buffers restored). Use a small batch (4–32 examples): every module is re-run about ten times (the ``probes``
    directions stacked into one batch when the module treats examples independently), and entrywise leaves
    another ``path_points`` times on one example — ResNet-18 on 4 CIFAR images takes about 20 s on one CPU
    thread. Modules that cannot be re-run alone on their recorded input are skipped (logged at INFO).
    """
    x = float_tensor("x", x)
    check_positive_int(probes, "probes", 4)
    records: dict[nn.Module, Tensor] = {}
    names: dict[nn.Module, str] = {}
    for name, m in model.named_modules():
        names.setdefault(m, name)

    pending: dict[nn.Module, Tensor] = {}

    def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        # Record before the forward runs, so in-place modules (ReLU(inplace=True)) cannot overwrite the input.
        if module not in records and len(args) == 1 and isinstance(args[0], Tensor) and args[0].is_floating_point():
            pending[module] = args[0].detach().clone()

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        a = pending.pop(module, None)
        if a is not None and isinstance(output, Tensor) and output.is_floating_point():
            records[module] = a

    handles = [m.register_forward_pre_hook(pre_hook) for m in names]
    handles += [m.register_forward_hook(hook) for m in names]
    try:
        with torch.no_grad(), probing(model):
            model(x)
    finally:
        for h in handles:
            h.remove()

    gen = torch.Generator().manual_seed(seed)
    detected: dict[nn.Module, str] = {}
    with probing(model):
        for m, a in records.items():
            try:
                reason = _classify_module(m, a, probes, rel_step, factor, gen, path_points)
            except Exception as exc:  # a module that cannot be re-run alone (extra kwargs, state) is skipped
                logger.info("not probed: %s (%s): %s", names[m] or "<root>", type(m).__name__, exc)
                continue
            if reason is not None:
                detected[m] = reason

    def declares(m: nn.Module) -> bool:
        return getattr(m, "bpda_surrogate", None) is not None

    covered: set[nn.Module] = set()
    for m in names:
        if declares(m):
            covered.update(m.modules())
    out: list[ZeroGradientModule] = []
    for m, reason in detected.items():
        if any(c in detected for c in m.modules() if c is not m):
            continue
        out.append(ZeroGradientModule(names[m] or "<root>", type(m).__name__, reason, m in covered))
    return out


def check_bpda_surrogates(model: nn.Module, x: Tensor, **probe_kwargs: Any) -> Flag | None:
    """Checklist item 13: modules with zero-gradient operations (thresholds, quantisation, argmax) must declare a
    BPDA surrogate, so an adaptive attack can differentiate through them (Athalye et al. 2018, Sec. 4.1).

    The protocol (see :mod:`torchrobust.nn.forged`): a module declares ``bpda_surrogate`` (e.g. ``"identity"``)
    and a boolean ``straight_through``; ``torchrobust.nn.forged.bpda_mode(model)`` switches them to the
    surrogate backward. Detection is :func:`find_zero_gradient_modules` (``probe_kwargs`` are passed on).
    Flags ``MISSING_BPDA_SURROGATE`` listing the undeclared modules.
    """
    found = [z for z in find_zero_gradient_modules(model, x, **probe_kwargs) if not z.declares_surrogate]
    if found:
        desc = ", ".join(f"{z.name} ({z.type}: {z.reason})" for z in found[:5])
        return Flag(
            "MISSING_BPDA_SURROGATE", "warning",
            f"{len(found)} module(s) with zero-gradient operations declare no BPDA surrogate: {desc}",
            "give each such module a `bpda_surrogate` attribute and a `straight_through` switch (identity or smooth "
            "backward) and evaluate under torchrobust.nn.forged.bpda_mode; or use gradient-free attacks",
            {"modules": [asdict(z) for z in found]},
        )
    return None


def check_bpda_evaluated(model: nn.Module, bpda_evaluated: bool) -> Flag | None:
    """Checklist item 13, second half: if the model has modules that declare ``bpda_surrogate``, the evaluation
    must include an attack run under ``bpda_mode`` (``bpda_evaluated=True``). Flags ``BPDA_NOT_EVALUATED``."""
    declared = [n or "<root>" for n, m in model.named_modules() if getattr(m, "bpda_surrogate", None) is not None]
    if declared and not bpda_evaluated:
        return Flag(
            "BPDA_NOT_EVALUATED", "warning",
            f"{len(declared)} module(s) declare a BPDA surrogate (e.g. {', '.join(declared[:3])}) but no attack was "
            "run through it",
            "run the adaptive suite (evaluate --suite adaptive / evaluate_adaptive: BPDA through the surrogates, "
            "transfer from the undefended weights) and report its per-example worst case",
            {"modules": declared[:20], "count": len(declared)},
        )
    return None


def _classify_module(m: nn.Module, a: Tensor, probes: int, rel_step: float, factor: float,
                     gen: torch.Generator, path_points: int) -> str | None:
    with torch.no_grad():  # inputs are cloned for every call: in-place modules must not alter ``a``
        o0 = m(a.clone())
        if not torch.equal(o0, m(a.clone())):
            return None  # randomised: check_randomness reports it
    a_in = a.clone().requires_grad_(True)
    with torch.enable_grad():
        o = m(a_in.clone())  # a non-leaf copy, so in-place modules may write to it
        if not o.requires_grad:
            return "cut"
        if _graph_has_zero_derivative_op(o.grad_fn):
            return "zero-derivative op"
        v = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o)
        g = torch.autograd.grad(o, a_in, v, allow_unused=True)[0]
    if g is None or not bool((g != 0).any()):
        return "zero gradient"
    scale = float(a.abs().max())
    if scale == 0.0 or not math.isfinite(scale) or a.ndim == 0:
        return None
    h = rel_step * scale
    fp_eps = torch.finfo(o0.dtype).eps
    stack = _batch_independent(m, a, o0)  # then several probes run as one stacked batch
    dirs = [torch.randint(0, 2, a.shape, generator=gen).to(a) * 2 - 1 for _ in range(probes)]
    groups = [dirs] if stack else [[d] for d in dirs]
    for group in groups:
        d = torch.cat(group)
        base = torch.cat([a] * len(group))
        jd = _jvp(m, base, d)
        if jd is None:
            return None
        with torch.no_grad():
            o1 = m(base + h * d)
        ref = torch.cat([o0] * len(group))
        err = (o1 - ref - h * jd).abs()
        bound = factor * h * (1 + jd.abs()) + 32 * fp_eps * (ref.abs() + o1.abs() + 1)
        if bool((err > bound).any()):
            return "jump"
    if path_points > 1 and o0.shape == a.shape and not any(True for _ in m.children()):
        if stack:  # entrywise and batch-independent: one example has enough entries and costs 1/B
            a, o0 = a[:1], o0[:1]
        if _elementwise(m, a, gen):
            return _path_probe(m, a, o0, path_points, factor, fp_eps, stack)
    return None


def _batch_independent(m: nn.Module, a: Tensor, o0: Tensor) -> bool:
    """Whether ``m`` treats the examples of a batch independently (``m([a; a]) == [m(a); m(a)]``), so probes can
    be stacked along the batch dimension. False for BatchNorm in training mode and other batch-coupled layers."""
    if a.ndim == 0 or o0.ndim == 0 or o0.shape[0] != a.shape[0]:
        return False
    try:
        with torch.no_grad():
            o2 = m(torch.cat([a, a]))
    except Exception:
        return False
    if o2.shape != (2 * o0.shape[0], *o0.shape[1:]):
        return False
    tol = 1e-5 * float(o0.abs().max().clamp_min(1e-30))
    return bool(torch.allclose(o2, torch.cat([o0, o0]), rtol=1e-4, atol=tol))


def _elementwise(m: nn.Module, a: Tensor, gen: torch.Generator) -> bool:
    """Whether ``m`` acts entrywise at ``a``: its Jacobian is diagonal, i.e. ``J d == (J 1) ⊙ d`` for random signs
    ``d`` (true for activations, thresholds, quantisers, BatchNorm in eval; false for softmax, norms, convs)."""
    d = torch.randint(0, 2, a.shape, generator=gen).to(a) * 2 - 1
    jd, j1 = _jvp(m, a, d), _jvp(m, a, torch.ones_like(a))
    if jd is None or j1 is None or jd.shape != a.shape:
        return False
    return bool(torch.allclose(jd, j1 * d, rtol=1e-4, atol=1e-6 * float(j1.abs().max().clamp_min(1e-30))))


def _path_probe(m: nn.Module, a: Tensor, o_a: Tensor, k_max: int, factor: float, fp_eps: float,
                stack: bool) -> str | None:
    """Walk the segment ``s · a`` for ``s`` in ``1/K, 2/K, ..., 1`` (entrywise leaf modules only).

    Entry ``i`` of the input sweeps every magnitude in ``(0, |a_i|]``, so every threshold below ``|a_i|`` is
    crossed. A continuous entrywise map changes by at most about ``(|a_i| + |(J a)_i|) / K`` between grid
    points; a jump of height ``t`` is found once ``t > factor · (|a_i| + |(J a)_i|) / K`` for some entry.
    A map that is affine along the segment (ReLU, BatchNorm in eval, identity) is accepted after one pass.
    """
    s = [k / k_max for k in range(1, k_max + 1)]
    with torch.no_grad():
        o_zero = m(torch.zeros_like(a))
        if stack:
            outs = list(m(torch.cat([a * t for t in s])).chunk(k_max))
        else:
            outs = [m(a * t) for t in s]
    tol = 64 * fp_eps * (o_a.abs() + o_zero.abs() + 1)
    if all(bool(((o - o_zero - t * (o_a - o_zero)).abs() <= tol * (1 + t)).all())
           for o, t in zip(outs, s, strict=True)):
        return None  # affine along the segment: no jump on it
    points = list(range(1, k_max))
    groups = [points] if stack else [[k] for k in points]
    for group in groups:
        base = torch.cat([a * (k / k_max) for k in group])
        jd = _jvp(m, base, torch.cat([a] * len(group)))
        if jd is None:
            return None
        o_b = torch.cat([outs[k - 1] for k in group])
        o_next = torch.cat([outs[k] for k in group])
        err = (o_next - o_b - jd / k_max).abs()
        a_rep = torch.cat([a] * len(group))
        bound = factor / k_max * (a_rep.abs() + jd.abs()) + 32 * fp_eps * (o_b.abs() + o_next.abs() + 1)
        if bool((err > bound).any()):
            return "jump"
    return None


def _jvp(m: nn.Module, a: Tensor, d: Tensor) -> Tensor | None:
    """``J d`` at ``a``: forward-mode AD, else the double-backward trick, else None."""
    try:
        return torch.func.jvp(m, (a.clone(),), (d,))[1].detach()
    except Exception:  # custom autograd.Function without jvp, unsupported op
        pass
    try:
        a_in = a.clone().requires_grad_(True)
        with torch.enable_grad():
            o = m(a_in.clone())
            v = torch.zeros_like(o, requires_grad=True)
            g = torch.autograd.grad(o, a_in, v, create_graph=True)[0]
            if not g.requires_grad:
                return torch.zeros_like(o)
            jd = torch.autograd.grad(g, v, d, allow_unused=True)[0]
        return torch.zeros_like(o) if jd is None else jd.detach()
    except Exception:
        return None


def _graph_has_zero_derivative_op(fn: Any) -> bool:
    seen: set[int] = set()
    stack = [fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if type(node).__name__ in _ZERO_DERIVATIVE_NODES:
            return True
        stack.extend(n for n, _ in getattr(node, "next_functions", ()))
    return False
