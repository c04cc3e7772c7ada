"""Checks that run the model (checklist items 1-3): input contract, finite weights and outputs, randomness,
gradients.

They never change the model: :func:`probing` runs it in eval mode, as every torchrobust evaluation forward and
attack does (a model left in training mode is reported by :func:`check_eval_mode` instead), and restores every
submodule's train/eval flag and every buffer (BatchNorm statistics, calibration maxima of tracking modules)
afterwards; plain Python attributes a forward pass may set (e.g. a "has been calibrated" flag of a module left in
tracking mode) are not restored. Item numbers: ``docs/paper-code-facts.md#evaluation-checklist``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor, nn

from torchrobust.errors import TorchRobustError
from torchrobust.evaluate.checks.arguments import check_count, float_tensor, int64_labels
from torchrobust.evaluate.checks.flags import Flag
from torchrobust.validation import eval_mode, model_device

__all__ = ["probing", "check_input_range", "check_eval_mode", "check_logits", "check_input_contract", "check_finite",
           "check_randomness", "check_gradients"]


@contextmanager
def probing(model: nn.Module) -> Iterator[None]:
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


# ============================================================================================= 1. input contract
def check_input_range(x: Tensor) -> Flag | None:
    """Checklist item 1a: ``INPUT_RANGE`` (error) when ``x`` is not finite or leaves [0, 1]."""
    x = float_tensor("x", x)
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
    out = float_tensor("logits", logits).flatten(1).to(torch.float64)
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
            with torch.no_grad(), probing(model):
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
        x = float_tensor("x", x)
        if x.numel() and bool(torch.isfinite(x).all()):
            dev = model_device(model, x.device)
            with torch.no_grad(), probing(model):
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
    check_count("passes", passes, 2)
    x = float_tensor("x", x)
    with torch.no_grad(), probing(model):
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
    x = float_tensor("x", x)
    y = int64_labels(y, len(x))
    if not 0.0 <= max_zero_fraction <= 1.0:
        raise TorchRobustError(f"max_zero_fraction must be in [0, 1], got {max_zero_fraction}")
    if loss not in ("margin", "ce"):
        raise TorchRobustError(f"unknown loss {loss!r}; valid: ce, margin")
    x_in = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), probing(model):
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
