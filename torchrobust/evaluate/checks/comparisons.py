"""Checks on an evaluation's results (checklist items 5-11 and 14): the budget of every adversarial example, and
comparisons between attacks, budgets and runs that a sound evaluation must pass.

Each takes numbers or per-example results, never the model. "Per-example correct" means a ``(N,)`` bool tensor
(or sequence): ``True`` where the example is still classified correctly after that attack (see
:func:`torchrobust.evaluate.robust_correct`). Accuracies are fractions in [0, 1]. Item numbers:
``docs/paper-code-facts.md#evaluation-checklist``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from torchrobust.errors import TorchRobustError
from torchrobust.evaluate.checks.arguments import bool_vector, check_count, check_fraction, float_tensor
from torchrobust.evaluate.checks.flags import Flag

__all__ = ["check_budget", "check_iterative_vs_single_step", "check_monotone_in_eps", "check_large_eps",
           "check_convergence", "check_blackbox_vs_whitebox", "check_transfer_vs_whitebox", "check_bpda_vs_whitebox",
           "check_noise_vs_whitebox", "check_base_broken"]

#: Per-example robust correctness: ``(N,)`` bools, True where the example survived the attack.
Correct = Tensor | Sequence[bool]


# ============================================================================================= 5. budget
def check_budget(x: Tensor, x_adv: Tensor, threat: Any, eps: float | None = None, *, tol: float = 1e-6) -> Flag | None:
    """Checklist item 5: every ``x_adv`` is finite, inside [0, 1] and within ``‖x_adv - x‖ ≤ ε + tol``.

    ``threat`` is a :class:`torchrobust.attacks.ThreatModel` or a name (``"Linf"``, ``"L2"``, ``"L1"``) with
    ``eps``. Norms are computed in float64. Raises ``BUDGET_VIOLATION`` (error): the reported number is not an
    ε-robust accuracy at all.
    """
    from torchrobust.attacks.threat import get_threat

    tm = get_threat(threat, eps)
    x, x_adv = float_tensor("x", x), float_tensor("x_adv", x_adv)
    if x.shape != x_adv.shape:
        raise TorchRobustError(
            f"x_adv has shape {tuple(x_adv.shape)} but x has {tuple(x.shape)}; pass matching batches"
        )
    flat = x_adv.flatten(1)
    nonfinite = (~torch.isfinite(flat)).any(1)
    out_box = ((flat < 0) | (flat > 1)).any(1) & ~nonfinite
    norms = tm.norm(x_adv.detach().to(torch.float64) - x.detach().to(torch.float64))
    out_ball = (norms > tm.eps + tol) & ~nonfinite
    bad = nonfinite | out_box | out_ball
    if bool(bad.any()):
        worst = float(norms[~nonfinite].max()) if bool((~nonfinite).any()) else math.nan
        return Flag(
            "BUDGET_VIOLATION", "error",
            f"{int(bad.sum())} of {len(bad)} adversarial example(s) break the budget {tm}: "
            f"{int(out_ball.sum())} outside the ball (max norm {worst:.6g}), {int(out_box.sum())} outside [0, 1], "
            f"{int(nonfinite.sum())} NaN/inf",
            "project every adversarial example onto ball ∩ [0, 1] (torchrobust attacks do this in Attack.__call__); "
            "a number measured outside the budget is invalid",
            {"violations": int(bad.sum()), "outside_ball": int(out_ball.sum()), "outside_box": int(out_box.sum()),
             "nonfinite": int(nonfinite.sum()), "max_norm": worst, "eps": tm.eps, "threat": tm.name},
        )
    return None


# ============================================================================================= 6. single vs iterative
def check_iterative_vs_single_step(iterative_correct: Correct, single_step_correct: Correct, *,
                                   tolerance: float = 0.0) -> Flag | None:
    """Checklist item 6 (Carlini et al. 2019 §5: "iterative attacks should perform better than single-step").

    Per example: FGSM found an adversarial example where PGD (same ε, same threat model) did not. Flags
    ``SINGLE_STEP_STRONGER`` when the fraction of such examples exceeds ``tolerance`` (default 0: a single
    example is already a sign that PGD's gradients are unreliable).
    """
    return _weaker_beats_stronger("SINGLE_STEP_STRONGER", iterative_correct, single_step_correct, tolerance)


# ============================================================================================= 7. ε sweeps
def check_monotone_in_eps(
    eps: Sequence[float],
    accuracy: Sequence[float],
    *,
    tolerance: float = 0.0,
    name: str = "",
) -> Flag | None:
    """Checklist item 7a: robust accuracy must not increase with ε (a larger ball contains the smaller one).

    ``eps`` and ``accuracy`` are parallel sequences (any order; sorted by ε here); accuracies in [0, 1].
    Flags ``NON_MONOTONE_EPS`` when some accuracy exceeds the accuracy at a smaller ε by more than
    ``tolerance``.
    """
    if len(eps) != len(accuracy):
        raise TorchRobustError(f"eps has {len(eps)} values but accuracy has {len(accuracy)}; pass one per ε")
    pairs = sorted(zip((float(e) for e in eps), (float(a) for a in accuracy), strict=True))
    rises = []
    running_min = math.inf
    at = math.nan
    for e, a in pairs:
        if a > running_min + tolerance:
            rises.append({"eps": e, "accuracy": a, "min_at_smaller_eps": running_min, "at_eps": at})
        if a < running_min:
            running_min, at = a, e
    if rises:
        worst = max(rises, key=lambda r: r["accuracy"] - r["min_at_smaller_eps"])
        label = f"{name}: " if name else ""
        return Flag(
            "NON_MONOTONE_EPS", "warning",
            f"{label}accuracy rises with ε: {100 * worst['accuracy']:.2f}% at ε={worst['eps']:g} vs "
            f"{100 * worst['min_at_smaller_eps']:.2f}% at ε={worst['at_eps']:g}",
            "the attack fails at larger ε, so it is not finding the worst case: more steps/restarts, another loss, "
            "BPDA/EOT or black-box attacks; report the per-example minimum over ε' ≤ ε",
            {"series": name, "rises": rises},
        )
    return None


def check_large_eps(
    accuracy: float,
    num_classes: int,
    *,
    eps: float | None = None,
    tolerance: float = 0.0,
) -> Flag | None:
    """Checklist item 7b (ART ``SecurityCurve``: accuracy > 1/n_classes flags obfuscation; Pintor et al.'s
    "unconstrained attack failure").

    ``accuracy`` is the robust accuracy at a very large ε (ε = 1 for L∞ on [0, 1] images lets the attack reach
    any image). Flags ``LARGE_EPS_ABOVE_CHANCE`` when it exceeds ``1/num_classes + tolerance``.
    """
    check_count("num_classes", num_classes, 2)
    check_fraction("accuracy", accuracy)
    chance = 1.0 / num_classes
    if accuracy > chance + tolerance:
        where = f" at ε={eps:g}" if eps is not None else ""
        return Flag(
            "LARGE_EPS_ABOVE_CHANCE", "warning",
            f"robust accuracy{where} is {100 * accuracy:.2f}%, above chance ({100 * chance:.2f}%)",
            "an unbounded attack must break any classifier; the attack is failing (masked gradients, too few steps): "
            "use BPDA/EOT, gradient-free attacks, more iterations",
            {"accuracy": float(accuracy), "chance": chance, "eps": eps},
        )
    return None


# ============================================================================================= 8. convergence
def check_convergence(accuracy: float, accuracy_more: float, *, threshold: float = 0.005) -> Flag | None:
    """Checklist item 8 (Carlini et al. 2019; Pintor et al.'s "incomplete optimisation").

    ``accuracy`` is the robust accuracy of the evaluation; ``accuracy_more`` the same evaluation with 2× steps
    and 2× restarts. Flags ``NOT_CONVERGED`` when they differ by ``threshold`` (0.5 percentage points) or more.
    """
    check_fraction("accuracy", accuracy)
    check_fraction("accuracy_more", accuracy_more)
    diff = float(accuracy) - float(accuracy_more)
    if abs(diff) >= threshold:
        change = f"{100 * diff:+.2f} pp ({100 * accuracy:.2f}% -> {100 * accuracy_more:.2f}%)"
        fix = "keep doubling steps/restarts until the change is below 0.5 pp and report the strongest run"
        return Flag("NOT_CONVERGED", "warning", f"doubling steps and restarts changes robust accuracy by {change}",
                    f"the attack has not converged: {fix}",
                    {"accuracy": float(accuracy), "accuracy_more": float(accuracy_more), "threshold": threshold})
    return None


# ============================================================================================= 9-11. weaker attacks
def check_blackbox_vs_whitebox(whitebox_correct: Correct, blackbox_correct: Correct, *,
                               tolerance: float = 0.002) -> Flag | None:
    """Checklist item 9 (AutoAttack ``check_square_sr``: Square lowering accuracy by > 0.2 pp).

    Per example: a black-box (query-only) attack found an adversarial example the white-box attacks missed.
    Flags ``BLACKBOX_STRONGER`` when the fraction of such examples exceeds ``tolerance``.
    """
    return _weaker_beats_stronger("BLACKBOX_STRONGER", whitebox_correct, blackbox_correct, tolerance)


def check_transfer_vs_whitebox(whitebox_correct: Correct, transfer_correct: Correct, *,
                               tolerance: float = 0.002) -> Flag | None:
    """Checklist item 10: adversarial examples crafted on the undefended base model (same weights, without the
    defence) and evaluated on the defended model succeed where white-box attacks on the defended model failed.
    Flags ``TRANSFER_STRONGER`` when the fraction of such examples exceeds ``tolerance``."""
    return _weaker_beats_stronger("TRANSFER_STRONGER", whitebox_correct, transfer_correct, tolerance)


def check_bpda_vs_whitebox(whitebox_correct: Correct, bpda_correct: Correct, *,
                           tolerance: float = 0.002) -> Flag | None:
    """Checklist item 13 (Athalye et al. 2018): an attack through BPDA — the defence's exact forward, a surrogate
    backward (e.g. NRPM's IRLS weights held constant, a threshold's straight-through identity) — fooled examples
    the white-box attacks through the exact gradient missed. The defence is differentiable but its gradient is a
    poor ascent direction (obfuscated). Flags ``BPDA_STRONGER`` when the fraction of such examples exceeds
    ``tolerance``."""
    return _weaker_beats_stronger("BPDA_STRONGER", whitebox_correct, bpda_correct, tolerance)


def check_noise_vs_whitebox(whitebox_correct: Correct, noise_correct: Correct, *,
                            tolerance: float = 0.0) -> Flag | None:
    """Checklist item 11: random noise of the same norm (e.g. 10k draws) finds errors the white-box attacks
    missed. Flags ``NOISE_STRONGER`` when the fraction of such examples exceeds ``tolerance`` (default 0)."""
    return _weaker_beats_stronger("NOISE_STRONGER", whitebox_correct, noise_correct, tolerance)


# ============================================================================================= 14. base sanity
def check_base_broken(
    base_accuracy: float,
    num_classes: int | None = None,
    *,
    expected: float | None = None,
    tolerance: float = 0.02,
) -> Flag | None:
    """Checklist item 14 (ablation sanity): the same attack on the undefended base model must reach
    ``expected`` robust accuracy (default: chance, ``1/num_classes``; for an undefended model at a standard ε it
    is usually ≈ 0). For a defence layered on an adversarially trained base, pass that base's known robust
    accuracy as ``expected``. Flags ``BASE_NOT_BROKEN`` when ``base_accuracy > expected + tolerance``.
    """
    check_fraction("base_accuracy", base_accuracy)
    if expected is None:
        if num_classes is None:
            raise TorchRobustError("check_base_broken needs num_classes (for chance level) or expected=...")
        check_count("num_classes", num_classes, 2)
        expected = 1.0 / num_classes
    check_fraction("expected", expected)
    if base_accuracy > expected + tolerance:
        return Flag(
            "BASE_NOT_BROKEN", "warning",
            f"the attack leaves the undefended base at {100 * base_accuracy:.2f}% robust accuracy "
            f"(expected <= {100 * expected:.2f}%)",
            "the attack itself is too weak (steps, step size, loss, ε in the wrong space?): fix it on the base model "
            "before crediting the defence",
            {"base_accuracy": float(base_accuracy), "expected": float(expected), "tolerance": tolerance},
        )
    return None


# ============================================================================================= helpers
#: The "a weaker attack beat the stronger one" flags (items 6, 9-11): code -> (the weaker attack, the stronger
#: reference, advice).
_WEAKER_BEATS_STRONGER: dict[str, tuple[str, str, str]] = {
    "SINGLE_STEP_STRONGER": (
        "single-step attack", "the iterative attack",
        "PGD is misled by the local gradient (masking/obfuscation): increase steps and restarts, use a margin/DLR "
        "loss, BPDA/EOT, and report the per-example worst case over both attacks"),
    "BLACKBOX_STRONGER": (
        "black-box attack", "white-box attacks",
        "gradients are masked: report the per-example worst case including the black-box attack, and build an "
        "adaptive attack (BPDA, EOT, margin loss)"),
    "TRANSFER_STRONGER": (
        "transfer attack", "white-box attacks",
        "the defence hides gradients that the base model still has: attack through BPDA (straight-through "
        "surrogates of the defence) and report the per-example worst case including the transfer attack"),
    "BPDA_STRONGER": (
        "BPDA attack (surrogate backward)", "white-box attacks through the exact gradient",
        "the defence's exact gradient is obfuscated: report the per-example worst case including BPDA, and read any "
        "number from exact-gradient attacks alone as an upper bound"),
    "NOISE_STRONGER": (
        "random noise", "white-box attacks",
        "a gradient attack that loses to random noise is broken or masked: check the loss, step size and gradients "
        "(ZERO_GRADIENTS), add BPDA/EOT, report the worst case including noise"),
}


def _weaker_beats_stronger(code: str, strong: Correct, weak: Correct, tolerance: float) -> Flag | None:
    weak_name, strong_name, advice = _WEAKER_BEATS_STRONGER[code]
    s, w = bool_vector("strong", strong), bool_vector("weak", weak)
    if s.shape != w.shape:
        raise TorchRobustError(
            f"per-example results have {s.numel()} and {w.numel()} entries; pass one bool per example for both attacks"
        )
    if not 0.0 <= tolerance < 1.0:
        raise TorchRobustError(f"tolerance must be a fraction in [0, 1), got {tolerance}")
    missed = s & ~w  # the weaker attack broke it, the stronger one did not
    count, n = int(missed.sum()), int(s.numel())
    frac = count / n if n else 0.0
    if frac > tolerance:
        idx = missed.nonzero().flatten()[:20].tolist()
        return Flag(
            code, "warning",
            f"the {weak_name} fooled {count} of {n} example(s) ({100 * frac:.2f}%) that {strong_name} did not "
            f"(accuracy {100 * s.double().mean():.2f}% -> {100 * (s & w).double().mean():.2f}% per-example worst case)",
            advice,
            {"count": count, "n": n, "fraction": frac, "examples": idx,
             "strong_accuracy": float(s.double().mean()), "worst_case_accuracy": float((s & w).double().mean())},
        )
    return None
