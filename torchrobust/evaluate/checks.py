"""Gradient-masking and evaluation-integrity checks: small pure functions that each return a :class:`Flag` or None.

The pattern follows AutoAttack's ``autoattack/checks.py`` + ``flags_doc.md``: every check is a function of the
evaluation's inputs and outputs, and every flag ``code`` has an entry in ``torchrobust/evaluate/flags.md`` saying
what it means and what to do. A robustness number with **any** flag raised is *unreliable* (:func:`is_reliable`;
RobustBench's ``unreliable`` field). The checks implement the automated items of the evaluation checklist of
Carlini et al. 2019 ("On Evaluating Adversarial Robustness", Sec. 5 "Evaluation Checklist") and the indicators of
Pintor et al. 2022 ("Indicators of Attack Failure"), numbered as in ``/work/shared/notes/ecosystem-and-evaluation.md``
§3:

Checks, the inputs each needs (for ``evaluate(..., suite="adaptive")``), checklist item, flag code(s):

* :func:`check_input_contract` — ``model``, ``x`` (or precomputed ``logits``); #1; runs
  :func:`check_input_range` (``x``; INPUT_RANGE), :func:`check_eval_mode` (``model``; TRAIN_MODE) and
  :func:`check_logits` (the model's output; PROBABILITY_OUTPUT) and returns a list.
* :func:`check_finite` — ``model`` (+ ``x`` or ``logits``); #1; NONFINITE. Cheap: every sweep and adaptive
  evaluation runs it, with or without the other checks.
* :func:`check_randomness` — ``model``, ``x``; #2; RANDOMIZED_OUTPUT.
* :func:`check_gradients` — ``model``, ``x``, ``y``; #3; ZERO_GRADIENTS, NONFINITE_GRADIENTS.
* :func:`check_budget` — ``x``, ``x_adv``, ``threat`` (+ ``eps``); #5; BUDGET_VIOLATION.
* :func:`check_iterative_vs_single_step` — per-example correct under PGD and under FGSM; #6; SINGLE_STEP_STRONGER.
* :func:`check_monotone_in_eps` — the ε list and the accuracy per ε; #7; NON_MONOTONE_EPS.
* :func:`check_large_eps` — accuracy at a huge ε and ``num_classes``; #7; LARGE_EPS_ABOVE_CHANCE.
* :func:`check_convergence` — robust accuracy, and again with 2× steps and 2× restarts; #8; NOT_CONVERGED.
* :func:`check_blackbox_vs_whitebox` — per-example correct, white-box vs black-box; #9; BLACKBOX_STRONGER.
* :func:`check_transfer_vs_whitebox` — per-example correct, white-box vs transfer from the base; #10;
  TRANSFER_STRONGER.
* :func:`check_noise_vs_whitebox` — per-example correct, white-box vs random noise; #11; NOISE_STRONGER.
* :func:`check_bpda_surrogates` — ``model``, ``x``; #13; MISSING_BPDA_SURROGATE.
* :func:`check_bpda_evaluated` — ``model`` and whether an attack ran under ``bpda_mode``; #13; BPDA_NOT_EVALUATED.
* :func:`check_base_broken` — robust accuracy of the same attack on the undefended base; #14; BASE_NOT_BROKEN.

"Per-example correct" means a ``(N,)`` bool tensor (or sequence): ``True`` where the example is still classified
correctly after that attack (see :func:`torchrobust.evaluate.robust_correct`). :func:`run_checks` takes the
results of an evaluation as one mapping (or a :class:`~torchrobust.evaluate.SweepResult`) and runs every check
whose inputs are present; it is what ``evaluate(..., suite="adaptive")`` calls.

The model-running checks never change the model: they run it in eval mode, as every torchrobust evaluation
forward and attack does (a model left in training mode is reported by :func:`check_eval_mode` instead), restore
every submodule's train/eval flag and every buffer (BatchNorm statistics, calibration maxima of tracking modules)
afterwards; plain Python attributes a forward pass may set (e.g. a "has been calibrated" flag of a module left in
tracking mode) are not restored.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from torchrobust.errors import TorchRobustError
from torchrobust.validation import eval_mode

__all__ = [
    "Flag",
    "FLAG_CODES",
    "ZeroGradientModule",
    "check_base_broken",
    "check_blackbox_vs_whitebox",
    "check_bpda_evaluated",
    "check_bpda_surrogates",
    "check_budget",
    "check_convergence",
    "check_eval_mode",
    "check_finite",
    "check_gradients",
    "check_input_contract",
    "check_input_range",
    "check_iterative_vs_single_step",
    "check_large_eps",
    "check_logits",
    "check_monotone_in_eps",
    "check_noise_vs_whitebox",
    "check_randomness",
    "check_transfer_vs_whitebox",
    "find_zero_gradient_modules",
    "is_reliable",
    "run_checks",
]

logger = logging.getLogger(__name__)

Severity = Literal["error", "warning"]

#: Every flag code with the section of ``flags.md`` that documents it.
FLAG_CODES: tuple[str, ...] = (
    "INPUT_RANGE",
    "TRAIN_MODE",
    "PROBABILITY_OUTPUT",
    "RANDOMIZED_OUTPUT",
    "ZERO_GRADIENTS",
    "NONFINITE_GRADIENTS",
    "BUDGET_VIOLATION",
    "SINGLE_STEP_STRONGER",
    "NON_MONOTONE_EPS",
    "LARGE_EPS_ABOVE_CHANCE",
    "NOT_CONVERGED",
    "BLACKBOX_STRONGER",
    "TRANSFER_STRONGER",
    "NOISE_STRONGER",
    "MISSING_BPDA_SURROGATE",
    "BPDA_NOT_EVALUATED",
    "BASE_NOT_BROKEN",
    "NONFINITE",
)

_DOC = "torchrobust/evaluate/flags.md"


@dataclass(frozen=True)
class Flag:
    """One raised check. ``severity`` is ``"error"`` (the number is invalid: the contract or the budget was
    broken) or ``"warning"`` (the number may overstate robustness). Either makes the result unreliable.
    ``details`` holds the measured quantities (JSON-serialisable)."""

    code: str
    severity: Severity
    message: str
    advice: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.code not in FLAG_CODES:
            raise TorchRobustError(f"unknown flag code {self.code!r}; valid: {', '.join(FLAG_CODES)}")

    @property
    def doc(self) -> str:
        """Where the flag is documented (``flags.md`` and the anchor of its section)."""
        return f"{_DOC}#{self.code.lower().replace('_', '-')}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (the shape stored in ``SweepResult.flags`` and ``results.json``)."""
        return {**asdict(self), "doc": self.doc}

    def __str__(self) -> str:
        return f"[{self.severity}] {self.code}: {self.message} -> {self.advice} (see {self.doc})"


def is_reliable(flags: Sequence[Flag | Mapping[str, Any] | None]) -> bool:
    """True iff no flag was raised (``None`` entries, as returned by silent checks, are ignored)."""
    return not any(f is not None for f in flags)


# ============================================================================================= 1. input contract
def check_input_range(x: Tensor) -> Flag | None:
    """Checklist item 1a: ``INPUT_RANGE`` (error) when ``x`` is not finite or leaves [0, 1]."""
    x = _tensor("x", x)
    finite = bool(torch.isfinite(x).all())
    values = x[torch.isfinite(x)]
    lo, hi = (float(values.min()), float(values.max())) if values.numel() else (math.nan, math.nan)
    if x.numel() == 0 or (finite and lo >= 0.0 and hi <= 1.0):
        return None
    return Flag(
        "INPUT_RANGE", "error",
        f"inputs span [{lo:.4g}, {hi:.4g}]{'' if finite else ' and contain NaN/inf'}, outside the [0, 1] contract",
        "pass raw images in [0, 1] and put the normalisation inside the model (torchrobust.models.Normalize)",
        {"min": lo, "max": hi, "finite": finite},
    )


def check_eval_mode(model: nn.Module) -> Flag | None:
    """Checklist item 1b (foolbox's and RobustBench's train-mode warning): ``TRAIN_MODE`` (warning) when
    ``model`` or any submodule has ``training=True``."""
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if not training:
        return None
    return Flag(
        "TRAIN_MODE", "warning",
        f"{len(training)} module(s) in training mode (e.g. {', '.join(training[:3])})",
        "call model.eval() before evaluating: dropout/BatchNorm in train mode randomise and leak batch statistics",
        {"modules": training[:20], "count": len(training)},
    )


def check_logits(logits: Tensor, *, atol: float = 1e-4) -> Flag | None:
    """Checklist item 1c (AutoAttack ``check_range_output``): ``PROBABILITY_OUTPUT`` (warning) when every row of
    the model's output is non-negative and sums to 1 within ``atol`` — softmax probabilities instead of logits,
    which saturate the cross-entropy gradient."""
    out = _tensor("logits", logits).flatten(1).to(torch.float64)
    if out.ndim != 2 or out.shape[1] < 2 or out.shape[0] == 0:
        return None
    sums = out.sum(1)
    if bool((out >= -atol).all()) and bool(((sums - 1).abs() <= atol).all()):
        return Flag(
            "PROBABILITY_OUTPUT", "warning",
            f"all {out.shape[0]} output rows are non-negative and sum to 1: the model returns probabilities",
            "remove the final softmax so the model returns logits (attacks on probabilities suffer vanishing "
            "gradients)",
            {"max_abs_row_sum_error": float((sums - 1).abs().max())},
        )
    return None


def check_input_contract(
    model: nn.Module | None,
    x: Tensor,
    logits: Tensor | None = None,
    *,
    atol: float = 1e-4,
) -> list[Flag]:
    """Checklist item 1: :func:`check_input_range`, :func:`check_eval_mode` and :func:`check_logits` together.

    Returns the raised flags (0 to 3). ``logits`` may be passed to avoid a forward pass; otherwise ``model(x)``
    is run under ``no_grad`` with buffers restored (only when ``x`` is finite).
    """
    flags = [check_input_range(x)]
    if model is not None:
        flags.append(check_eval_mode(model))
        if logits is None and bool(torch.isfinite(x).all()):
            with torch.no_grad(), _probing(model):
                logits = model(x)
    if logits is not None:
        flags.append(check_logits(logits, atol=atol))
    return [f for f in flags if f is not None]


def check_finite(model: nn.Module, x: Tensor | None = None, logits: Tensor | None = None) -> Flag | None:
    """``NONFINITE`` (error) when a floating parameter or buffer of ``model`` holds NaN/inf, or when the logits on
    the probe batch ``x`` (or the given ``logits``) do.

    The argmax of a NaN row is an arbitrary class and attacks take NaN steps, so accuracies computed from such a
    model are meaningless rather than low. ``x`` (if given, and finite) is run once in eval mode, modes and
    buffers restored, on the model's device.
    """
    named = [(n, t) for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_floating_point()]
    ok = torch.stack([torch.isfinite(t).all().cpu() for _, t in named]) if named else torch.ones(0, dtype=torch.bool)
    bad = [n for (n, _), good in zip(named, ok.tolist(), strict=True) if not good]
    if logits is None and x is not None:
        x = _tensor("x", x)
        if x.numel() and bool(torch.isfinite(x).all()):
            dev = next((t.device for t in model.parameters()), x.device)
            with torch.no_grad(), _probing(model):
                logits = model(x.to(dev))
    rows = 0
    if isinstance(logits, Tensor) and logits.numel():
        rows = int((~torch.isfinite(logits.detach().flatten(1))).any(1).sum())
    if not bad and not rows:
        return None
    parts = []
    if bad:
        parts.append(f"{len(bad)} parameter/buffer tensor(s) hold NaN/inf (e.g. {', '.join(bad[:3])})")
    if rows:
        parts.append(f"{rows} of {len(logits)} probe output row(s) are NaN/inf")
    return Flag(
        "NONFINITE", "error",
        "; ".join(parts) + ": accuracies of this model are not measurements",
        "reload or retrain the weights (check the checkpoint, the learning rate and the loss for NaN) and find the "
        "layer that overflows; never report numbers from this evaluation",
        {"tensors": bad[:20], "tensors_count": len(bad), "rows_nonfinite": rows,
         "rows": int(len(logits)) if isinstance(logits, Tensor) else 0},
    )


# ============================================================================================= 2. randomness
def check_randomness(
    model: nn.Module,
    x: Tensor,
    *,
    passes: int = 5,
    rtol: float = 1e-4,
) -> Flag | None:
    """Checklist item 2 (AutoAttack ``check_randomized``; RobustBench's deterministic-forward rule).

    Runs ``passes`` forward passes on the same batch (no grad, eval mode, modes and buffers restored) and flags
    ``RANDOMIZED_OUTPUT`` when the predictions differ or a row-normalised logit (divided by the row's max
    ``|logit|``) differs by more than ``rtol`` — which tolerates non-deterministic GPU reductions. A randomised
    model needs EOT (≥ 20 samples per gradient) and a fixed-randomness baseline.
    """
    _check_count("passes", passes, 2)
    x = _tensor("x", x)
    with torch.no_grad(), _probing(model):
        outs = [model(x).detach().flatten(1).to(torch.float64) for _ in range(passes)]
    ref = outs[0]
    scale = ref.abs().amax(1, keepdim=True).clamp_min(1e-12)
    max_diff = 0.0
    pred_changed = 0
    for o in outs[1:]:
        max_diff = max(max_diff, float(((o - ref).abs() / scale).max()))
        pred_changed = max(pred_changed, int((o.argmax(1) != ref.argmax(1)).sum()))
    if max_diff > rtol or pred_changed:
        return Flag(
            "RANDOMIZED_OUTPUT", "warning",
            f"{passes} forward passes on the same inputs differ (max relative logit change {max_diff:.3g}, "
            f"{pred_changed} prediction(s) changed)",
            "attack with EOT (average gradients over >= 20 samples, e.g. APGD-EOT / AutoAttack version='rand') and "
            "report the fixed-randomness baseline",
            {"max_relative_logit_change": max_diff, "predictions_changed": pred_changed, "passes": passes},
        )
    return None


# ============================================================================================= 3. gradients
def check_gradients(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    loss: Literal["margin", "ce"] = "margin",
    max_zero_fraction: float = 0.5,
) -> Flag | None:
    """Checklist item 3 (AutoAttack ``check_zero_gradients``; ART ``gradient_check``; Pintor et al.'s
    "unavailable gradients").

    Computes the input gradient of ``loss`` per example and flags

    * ``NONFINITE_GRADIENTS`` (error) when the gradient contains NaN/inf;
    * ``ZERO_GRADIENTS`` (warning) when the loss has no gradient path to the input (or autograd cannot
      differentiate it), when any example's gradient is identically zero (AutoAttack's criterion), or when more
      than ``max_zero_fraction`` of all input-gradient entries are exactly zero (quantisation, thresholding,
      hard decisions).

    ``loss="margin"`` (default) uses the logit margin ``max_{j≠y} z_j - z_y`` (the numerator of the DLR loss of
    Croce & Hein 2020) because its gradient does not underflow on confidently classified inputs, so a zero
    gradient means the model masks it; ``"ce"`` uses cross-entropy as AutoAttack does, which also flags
    softmax saturation.
    """
    x = _tensor("x", x)
    y = _labels(y, len(x))
    if not 0.0 <= max_zero_fraction <= 1.0:
        raise TorchRobustError(f"max_zero_fraction must be in [0, 1], got {max_zero_fraction}")
    if loss not in ("margin", "ce"):
        raise TorchRobustError(f"unknown loss {loss!r}; valid: ce, margin")
    x_in = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), _probing(model):
        logits = model(x_in.clone())  # a non-leaf copy: models may start with an in-place op
        if logits.ndim != 2 or logits.shape[0] != len(x):
            raise TorchRobustError(f"model returned shape {tuple(logits.shape)}; expected (batch, num_classes) logits")
        if int(y.min()) < 0 or int(y.max()) >= logits.shape[1]:
            raise TorchRobustError(
                f"labels must be in 0..{logits.shape[1] - 1}, got {int(y.min())}..{int(y.max())}; pass class indices"
            )
        yy = y.to(logits.device)
        if loss == "ce":
            value = nn.functional.cross_entropy(logits, yy, reduction="sum")
        else:
            true = logits.gather(1, yy[:, None]).squeeze(1)
            other = logits.scatter(1, yy[:, None], float("-inf")).amax(1)
            value = (other - true).sum()
        grad, error = None, ""
        if value.requires_grad:
            try:
                grad = torch.autograd.grad(value, x_in, allow_unused=True)[0]
            except RuntimeError as exc:  # e.g. "the derivative for 'heaviside' is not implemented"
                error = str(exc).splitlines()[0]
    if grad is None:
        why = f" ({error})" if error else " (detach, comparison, argmax or an integer cast on the way)"
        return Flag(
            "ZERO_GRADIENTS", "warning",
            f"the loss has no usable gradient with respect to the input{why}: every gradient is zero",
            "gradients are masked: give the non-differentiable module a BPDA surrogate (bpda_surrogate) or use "
            "gradient-free attacks (Square, SPSA, ES), and report the per-example worst case",
            {"available": False, "error": error, "n": len(x), "loss": loss},
        )
    flat = grad.flatten(1)
    nonfinite = int((~torch.isfinite(flat)).any(1).sum())
    if nonfinite:
        return Flag(
            "NONFINITE_GRADIENTS", "error",
            f"{nonfinite} of {len(flat)} example(s) have NaN/inf input gradients",
            "find the op producing NaN/inf (log of 0, division, sqrt at 0) and fix it or attack with BPDA/black-box "
            "attacks; NaN gradients make gradient attacks silently fail",
            {"examples_nonfinite": nonfinite, "n": len(flat)},
        )
    zero_examples = int((flat == 0).all(1).sum())
    zero_fraction = float((flat == 0).double().mean()) if flat.numel() else 0.0
    if zero_examples or zero_fraction > max_zero_fraction:
        return Flag(
            "ZERO_GRADIENTS", "warning",
            f"{zero_examples} of {len(flat)} example(s) have an all-zero input gradient; "
            f"{100 * zero_fraction:.1f}% of gradient entries are exactly zero ({loss} loss)",
            "gradients are masked: run BPDA (straight-through surrogates), EOT, or gradient-free attacks (Square, "
            "SPSA, ES) and report the per-example worst case",
            {"examples_zero": zero_examples, "zero_fraction": zero_fraction, "n": len(flat), "loss": loss},
        )
    return None


# ============================================================================================= 5. budget
def check_budget(x: Tensor, x_adv: Tensor, threat: Any, eps: float | None = None, *, tol: float = 1e-6) -> Flag | None:
    """Checklist item 5: every ``x_adv`` is finite, inside [0, 1] and within ``‖x_adv - x‖ ≤ ε + tol``.

    ``threat`` is a :class:`torchrobust.attacks.ThreatModel` or a name (``"Linf"``, ``"L2"``, ``"L1"``) with
    ``eps``. Norms are computed in float64. Raises ``BUDGET_VIOLATION`` (error): the reported number is not an
    ε-robust accuracy at all.
    """
    from torchrobust.attacks.threat import get_threat

    tm = get_threat(threat, eps)
    x, x_adv = _tensor("x", x), _tensor("x_adv", x_adv)
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
def check_iterative_vs_single_step(
    iterative_correct: Tensor | Sequence[bool],
    single_step_correct: Tensor | Sequence[bool],
    *,
    tolerance: float = 0.0,
) -> Flag | None:
    """Checklist item 6 (Carlini et al. 2019 §5: "iterative attacks should perform better than single-step").

    Per example: FGSM found an adversarial example where PGD (same ε, same threat model) did not. Flags
    ``SINGLE_STEP_STRONGER`` when the fraction of such examples exceeds ``tolerance`` (default 0: a single
    example is already a sign that PGD's gradients are unreliable).
    """
    return _weaker_beats_stronger(
        "SINGLE_STEP_STRONGER", iterative_correct, single_step_correct, tolerance, "single-step attack",
        "the iterative attack",
        "PGD is misled by the local gradient (masking/obfuscation): increase steps and restarts, use a margin/DLR "
        "loss, BPDA/EOT, and report the per-example worst case over both attacks",
    )


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
    _check_count("num_classes", num_classes, 2)
    _check_fraction("accuracy", accuracy)
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
    _check_fraction("accuracy", accuracy)
    _check_fraction("accuracy_more", accuracy_more)
    diff = float(accuracy) - float(accuracy_more)
    if abs(diff) >= threshold:
        return Flag(
            "NOT_CONVERGED", "warning",
            f"doubling steps and restarts changes robust accuracy by {100 * diff:+.2f} pp "
            f"({100 * accuracy:.2f}% -> {100 * accuracy_more:.2f}%)",
            "the attack has not converged: keep doubling steps/restarts until the change is below 0.5 pp and report "
            "the strongest run",
            {"accuracy": float(accuracy), "accuracy_more": float(accuracy_more), "threshold": threshold},
        )
    return None


# ============================================================================================= 9-11. weaker attacks
def check_blackbox_vs_whitebox(
    whitebox_correct: Tensor | Sequence[bool],
    blackbox_correct: Tensor | Sequence[bool],
    *,
    tolerance: float = 0.002,
) -> Flag | None:
    """Checklist item 9 (AutoAttack ``check_square_sr``: Square lowering accuracy by > 0.2 pp).

    Per example: a black-box (query-only) attack found an adversarial example the white-box attacks missed.
    Flags ``BLACKBOX_STRONGER`` when the fraction of such examples exceeds ``tolerance``.
    """
    return _weaker_beats_stronger(
        "BLACKBOX_STRONGER", whitebox_correct, blackbox_correct, tolerance, "black-box attack", "white-box attacks",
        "gradients are masked: report the per-example worst case including the black-box attack, and build an "
        "adaptive attack (BPDA, EOT, margin loss)",
    )


def check_transfer_vs_whitebox(
    whitebox_correct: Tensor | Sequence[bool],
    transfer_correct: Tensor | Sequence[bool],
    *,
    tolerance: float = 0.002,
) -> Flag | None:
    """Checklist item 10: adversarial examples crafted on the undefended base model (same weights, without the
    defence) and evaluated on the defended model succeed where white-box attacks on the defended model failed.
    Flags ``TRANSFER_STRONGER`` when the fraction of such examples exceeds ``tolerance``."""
    return _weaker_beats_stronger(
        "TRANSFER_STRONGER", whitebox_correct, transfer_correct, tolerance, "transfer attack", "white-box attacks",
        "the defence hides gradients that the base model still has: attack through BPDA (straight-through "
        "surrogates of the defence) and report the per-example worst case including the transfer attack",
    )


def check_noise_vs_whitebox(
    whitebox_correct: Tensor | Sequence[bool],
    noise_correct: Tensor | Sequence[bool],
    *,
    tolerance: float = 0.0,
) -> Flag | None:
    """Checklist item 11: random noise of the same norm (e.g. 10k draws) finds errors the white-box attacks
    missed. Flags ``NOISE_STRONGER`` when the fraction of such examples exceeds ``tolerance`` (default 0)."""
    return _weaker_beats_stronger(
        "NOISE_STRONGER", whitebox_correct, noise_correct, tolerance, "random noise", "white-box attacks",
        "a gradient attack that loses to random noise is broken or masked: check the loss, step size and gradients "
        "(ZERO_GRADIENTS), add BPDA/EOT, report the worst case including noise",
    )


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
    _check_fraction("base_accuracy", base_accuracy)
    if expected is None:
        if num_classes is None:
            raise TorchRobustError("check_base_broken needs num_classes (for chance level) or expected=...")
        _check_count("num_classes", num_classes, 2)
        expected = 1.0 / num_classes
    _check_fraction("expected", expected)
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


# ============================================================================================= 13. BPDA
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
    x = _tensor("x", x)
    _check_count("probes", probes, 1)
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
        with torch.no_grad(), _probing(model):
            model(x)
    finally:
        for h in handles:
            h.remove()

    gen = torch.Generator().manual_seed(seed)
    detected: dict[nn.Module, str] = {}
    with _probing(model):
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
            "re-run the attacks inside `with torchrobust.nn.forged.bpda_mode(model):` and report the per-example "
            "worst case of both runs",
            {"modules": declared[:20], "count": len(declared)},
        )
    return None


# ============================================================================================= aggregator
_DEFAULT_ROLES: dict[str, str] = {
    "fgsm": "single_step",
    "square": "blackbox", "spsa": "blackbox", "random_search": "blackbox", "nes": "blackbox", "es": "blackbox",
    "transfer": "transfer", "noise": "noise",
}


def run_checks(results: Mapping[str, Any] | Any, **overrides: Any) -> list[Flag]:
    """Run every check whose inputs are present in ``results``; return the raised flags (empty: reliable).

    ``results`` is a mapping (keys below; all optional) or a :class:`~torchrobust.evaluate.SweepResult`-like
    object with ``eps``, ``clean``, ``robust`` (attack → ``(len(eps), N)`` bool) and ``threat`` — then the
    per-attack and worst-case ε curves are checked for monotonicity and PGD/FGSM and role comparisons are made
    at every ε. ``overrides`` are merged into the mapping (e.g. ``run_checks(sweep_result, model=m, x=x, y=y)``).

    Keys:

    * ``model``, ``x``, ``y`` — the evaluated model and a (small) clean batch: input contract, finite weights and
      outputs, randomness, gradients, BPDA surrogates (set ``probe_modules=False`` to skip the per-module probe);
    * ``num_classes`` — chance level (inferred from ``model(x)`` when absent);
    * ``threat`` (ThreatModel or name), ``eps``, ``x_adv`` (tensor, or attack name → tensor) — budget;
    * ``correct`` — attack name → ``(N,)`` bool per-example robust correctness at the evaluation ε;
      ``roles`` — attack name → ``"whitebox"`` | ``"iterative"`` | ``"single_step"`` | ``"blackbox"`` |
      ``"transfer"`` | ``"noise"`` (defaults: ``fgsm`` single-step; ``square``/``spsa``/``random_search``/
      ``nes``/``es`` black-box; names starting with ``transfer``/``noise`` those roles; everything else
      white-box and iterative). The white-box reference is the per-example AND over white-box attacks;
    * ``sweep`` — ``{"eps": [...], "accuracy": [...]}`` or ``{name: {"eps": ..., "accuracy": ...}}`` (series of
      single-step attacks are not checked: one linear step can overshoot, so FGSM need not be monotone);
    * ``large_eps`` — ``{"accuracy": float, "eps": float}``;
    * ``convergence`` — ``{"accuracy": float, "accuracy_more": float}``;
    * ``base_accuracy`` (float) and optionally ``base_expected`` — the same attack on the undefended base;
    * ``bpda_evaluated`` (bool) — whether an attack ran under ``bpda_mode``;
    * ``tolerances`` — check function name → keyword arguments (e.g. ``{"check_blackbox_vs_whitebox":
      {"tolerance": 0.0}}``).

    Every raised flag is also logged at WARNING. To record them with a sweep::

        res = sweep(model, x, y, attacks=["fgsm", "pgd"], eps=[0, 0.1, 0.3])
        res.flags = [f.to_dict() for f in run_checks(res, model=model, x=x[:16], y=y[:16])]
        res.reliable  # False if any flag was raised
    """
    res: dict[str, Any] = _results_to_mapping(results)
    res.update(overrides)
    tol: Mapping[str, Mapping[str, Any]] = res.get("tolerances", {}) or {}
    flags: list[Flag | None] = []
    model, x, y = res.get("model"), res.get("x"), res.get("y")
    num_classes = res.get("num_classes")

    if x is not None:
        flags.extend(check_input_contract(model, x, **tol.get("check_input_contract", {})))
    if model is not None:
        flags.append(check_finite(model, x))
    if model is not None and x is not None:
        if num_classes is None:
            with torch.no_grad(), _probing(model):
                num_classes = int(model(x).shape[1])
        flags.append(check_randomness(model, x, **tol.get("check_randomness", {})))
        if y is not None:
            flags.append(check_gradients(model, x, y, **tol.get("check_gradients", {})))
        if res.get("probe_modules", True):
            flags.append(check_bpda_surrogates(model, x, **tol.get("check_bpda_surrogates", {})))
    if model is not None and "bpda_evaluated" in res:
        flags.append(check_bpda_evaluated(model, bool(res["bpda_evaluated"])))

    x_adv = res.get("x_adv")
    if x_adv is not None and x is not None and res.get("threat") is not None:
        advs = x_adv.items() if isinstance(x_adv, Mapping) else [("", x_adv)]
        for _, xa in advs:
            flags.append(check_budget(x, xa, res["threat"], res.get("eps"), **tol.get("check_budget", {})))

    for correct in _correct_sets(res):
        flags.extend(_compare_roles(correct, res.get("roles", {}) or {}, tol))

    sweep = res.get("sweep")
    if sweep:
        series = {"": sweep} if "eps" in sweep else dict(sweep)
        for name, s in series.items():
            if name and _role(name, res.get("roles", {}) or {}) == "single_step":
                continue  # one large linear step may overshoot: FGSM need not be monotone in ε
            flags.append(check_monotone_in_eps(s["eps"], s["accuracy"], name=name,
                                               **tol.get("check_monotone_in_eps", {})))
    large = res.get("large_eps")
    if large is not None:
        if num_classes is None:
            raise TorchRobustError("large_eps needs num_classes (or model and x to infer it); add num_classes=...")
        flags.append(check_large_eps(large["accuracy"], num_classes, eps=large.get("eps"),
                                     **tol.get("check_large_eps", {})))
    conv = res.get("convergence")
    if conv is not None:
        flags.append(check_convergence(conv["accuracy"], conv["accuracy_more"], **tol.get("check_convergence", {})))
    if res.get("base_accuracy") is not None:
        flags.append(check_base_broken(res["base_accuracy"], num_classes, expected=res.get("base_expected"),
                                       **tol.get("check_base_broken", {})))
    raised = [f for f in flags if f is not None]
    for f in raised:
        logger.warning("%s", f)
    return raised


def _results_to_mapping(results: Mapping[str, Any] | Any) -> dict[str, Any]:
    if isinstance(results, Mapping):
        return dict(results)
    if all(hasattr(results, k) for k in ("eps", "clean", "robust")):
        eps = [float(e) for e in results.eps]
        robust: Mapping[str, Tensor] = results.robust
        series = {name: {"eps": eps, "accuracy": [float(v) for v in r.float().mean(1)]} for name, r in robust.items()}
        if len(robust) > 1 and hasattr(results, "worst"):
            series["worst_case"] = {"eps": eps, "accuracy": [float(v) for v in results.worst.float().mean(1)]}
        per_eps = [{name: r[j] for name, r in robust.items()} for j, e in enumerate(eps) if e > 0]
        out: dict[str, Any] = {"sweep": series, "_correct_per_eps": per_eps}
        if getattr(results, "threat", None) is not None:
            out["threat"] = results.threat
        return out
    raise TorchRobustError(
        f"run_checks takes a results mapping or a SweepResult, got {type(results).__name__}; see its docstring"
    )


def _correct_sets(res: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    sets = list(res.get("_correct_per_eps", []))
    if res.get("correct"):
        sets.append(res["correct"])
    return sets


def _role(name: str, roles: Mapping[str, str]) -> str:
    if name in roles:
        return roles[name]
    key = name.lower()
    for prefix in ("transfer", "noise"):
        if key.startswith(prefix):
            return prefix
    return _DEFAULT_ROLES.get(key, "whitebox")


def _compare_roles(correct: Mapping[str, Any], roles: Mapping[str, str],
                   tol: Mapping[str, Mapping[str, Any]]) -> list[Flag | None]:
    valid = {"whitebox", "iterative", "single_step", "blackbox", "transfer", "noise"}
    by_role: dict[str, list[Tensor]] = {}
    for name, c in correct.items():
        role = _role(name, roles)
        if role not in valid:
            raise TorchRobustError(f"unknown role {role!r} for attack {name!r}; valid: {', '.join(sorted(valid))}")
        by_role.setdefault(role, []).append(_bool("correct[" + name + "]", c))
    white = by_role.get("whitebox", []) + by_role.get("iterative", [])
    flags: list[Flag | None] = []
    if not white:
        return flags
    wb = torch.stack(white).all(0)
    if by_role.get("single_step"):
        single = torch.stack(by_role["single_step"]).all(0)
        flags.append(check_iterative_vs_single_step(wb, single, **tol.get("check_iterative_vs_single_step", {})))
    checks = (("blackbox", check_blackbox_vs_whitebox), ("transfer", check_transfer_vs_whitebox),
              ("noise", check_noise_vs_whitebox))
    for role, fn in checks:
        if by_role.get(role):
            other = torch.stack(by_role[role]).all(0)
            flags.append(fn(wb, other, **tol.get(fn.__name__, {})))
    return flags


# ============================================================================================= helpers
def _weaker_beats_stronger(
    code: str, strong: Tensor | Sequence[bool], weak: Tensor | Sequence[bool], tolerance: float,
    weak_name: str, strong_name: str, advice: str,
) -> Flag | None:
    s, w = _bool("strong", strong), _bool("weak", weak)
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


@contextmanager
def _probing(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode (:func:`torchrobust.validation.eval_mode`: every submodule's mode restored on
    exit) and restore every buffer (BatchNorm running stats, calibration maxima of tracking modules) on exit."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        with eval_mode(model):
            yield
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)


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


def _tensor(name: str, t: Any) -> Tensor:
    if not isinstance(t, Tensor) or not t.is_floating_point():
        raise TorchRobustError(f"{name} must be a floating-point tensor, got {type(t).__name__}")
    return t.detach()


def _labels(y: Any, n: int) -> Tensor:
    if not isinstance(y, Tensor) or y.dtype != torch.long or y.shape != (n,):
        raise TorchRobustError(f"y must be an int64 tensor of shape ({n},); use torch.as_tensor(y).long()")
    return y


def _bool(name: str, t: Tensor | Sequence[bool]) -> Tensor:
    v = torch.as_tensor(t).detach().cpu()
    if v.ndim != 1:
        raise TorchRobustError(f"{name} must be a 1-D per-example bool vector, got shape {tuple(v.shape)}")
    if v.dtype != torch.bool:
        if not bool(((v == 0) | (v == 1)).all()):
            raise TorchRobustError(f"{name} must hold booleans (or 0/1), one per example")
        v = v.bool()
    return v


def _check_fraction(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
        raise TorchRobustError(f"{name} must be an accuracy fraction in [0, 1], got {v!r} (not a percentage)")


def _check_count(name: str, v: Any, minimum: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise TorchRobustError(f"{name} must be an integer >= {minimum}, got {v!r}")
