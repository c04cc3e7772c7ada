"""Gradient-masking and evaluation-integrity checks: small pure functions that each return a :class:`Flag` or None.

The pattern follows AutoAttack's ``autoattack/checks.py`` + ``flags_doc.md``: every check is a function of the
evaluation's inputs and outputs, and every flag ``code`` has an entry in ``torchrobust/evaluate/checks/flags.md`` saying
what it means and what to do. A robustness number with **any** flag raised is *unreliable* (:func:`is_reliable`;
RobustBench's ``unreliable`` field). The checks implement the automated items of the evaluation checklist of
Carlini et al. 2019 ("On Evaluating Adversarial Robustness", Sec. 5 "Evaluation Checklist") and the indicators of
Pintor et al. 2022 ("Indicators of Attack Failure"), numbered as in ``docs/paper-code-facts.md#evaluation-checklist``.

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
* :func:`check_bpda_vs_whitebox` — per-example correct, exact-gradient white-box vs BPDA; #13; BPDA_STRONGER.
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

Modules, one concept each (every public name is re-exported here):

* :mod:`~torchrobust.evaluate.checks.flags` — :class:`Flag`, :data:`FLAG_CODES`, :func:`is_reliable`
  (documentation: ``flags.md`` beside it);
* :mod:`~torchrobust.evaluate.checks.probes` — the checks that run the model (items 1-3);
* :mod:`~torchrobust.evaluate.checks.comparisons` — the checks on results: budget, attack-vs-attack, ε curves,
  convergence, base sanity (items 5-11, 14);
* :mod:`~torchrobust.evaluate.checks.zero_gradients` — the zero-gradient graph analyser and the BPDA checks (13);
* :mod:`~torchrobust.evaluate.checks.runner` — :func:`run_checks`;
* :mod:`~torchrobust.evaluate.checks.arguments` — their argument checks.
"""

from __future__ import annotations

from torchrobust.evaluate.checks.comparisons import (
    check_base_broken,
    check_blackbox_vs_whitebox,
    check_bpda_vs_whitebox,
    check_budget,
    check_convergence,
    check_iterative_vs_single_step,
    check_large_eps,
    check_monotone_in_eps,
    check_noise_vs_whitebox,
    check_transfer_vs_whitebox,
)
from torchrobust.evaluate.checks.flags import FLAG_CODES, Flag, is_reliable
from torchrobust.evaluate.checks.probes import (
    check_eval_mode,
    check_finite,
    check_gradients,
    check_input_contract,
    check_input_range,
    check_logits,
    check_randomness,
)
from torchrobust.evaluate.checks.runner import run_checks
from torchrobust.evaluate.checks.zero_gradients import (
    ZeroGradientModule,
    check_bpda_evaluated,
    check_bpda_surrogates,
    find_zero_gradient_modules,
)

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
    "check_bpda_vs_whitebox",
    "find_zero_gradient_modules",
    "is_reliable",
    "run_checks",
]
