"""``run_checks``: run every check whose inputs an evaluation's results hold; the raised flags.

This is what ``evaluate(..., suite="adaptive")`` calls; which check needs which input is listed in the package
docstring (:mod:`torchrobust.evaluate.checks`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from torchrobust.errors import TorchRobustError
from torchrobust.evaluate.checks import comparisons
from torchrobust.evaluate.checks.arguments import bool_vector
from torchrobust.evaluate.checks.flags import Flag
from torchrobust.evaluate.checks.probes import (
    check_finite,
    check_gradients,
    check_input_contract,
    check_randomness,
    probing,
)
from torchrobust.evaluate.checks.zero_gradients import check_bpda_evaluated, check_bpda_surrogates

__all__ = ["run_checks"]

logger = logging.getLogger(__name__)


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
      ``"transfer"`` | ``"noise"`` | ``"bpda"`` (defaults: ``fgsm`` single-step; ``square``/``spsa``/
      ``random_search``/``nes``/``es`` black-box; names starting with ``transfer``/``noise``/``bpda`` those roles;
      everything else white-box and iterative). The white-box reference is the per-example AND over the
      white-box attacks (exact gradient); black-box, transfer, noise and BPDA attacks are each compared with it;
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
            with torch.no_grad(), probing(model):
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
            flags.append(comparisons.check_budget(x, xa, res["threat"], res.get("eps"), **tol.get("check_budget", {})))

    for correct in _correct_sets(res):
        flags.extend(_compare_roles(correct, res.get("roles", {}) or {}, tol))

    sweep = res.get("sweep")
    if sweep:
        series = {"": sweep} if "eps" in sweep else dict(sweep)
        for name, s in series.items():
            if name and _role(name, res.get("roles", {}) or {}) == "single_step":
                continue  # one large linear step may overshoot: FGSM need not be monotone in ε
            flags.append(comparisons.check_monotone_in_eps(s["eps"], s["accuracy"], name=name,
                                                           **tol.get("check_monotone_in_eps", {})))
    large = res.get("large_eps")
    if large is not None:
        if num_classes is None:
            raise TorchRobustError("large_eps needs num_classes (or model and x to infer it); add num_classes=...")
        flags.append(comparisons.check_large_eps(large["accuracy"], num_classes, eps=large.get("eps"),
                                                 **tol.get("check_large_eps", {})))
    conv = res.get("convergence")
    if conv is not None:
        flags.append(comparisons.check_convergence(conv["accuracy"], conv["accuracy_more"],
                                                   **tol.get("check_convergence", {})))
    if res.get("base_accuracy") is not None:
        flags.append(comparisons.check_base_broken(res["base_accuracy"], num_classes, expected=res.get("base_expected"),
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
    for prefix in ("transfer", "noise", "bpda"):
        if key.startswith(prefix):
            return prefix
    return _DEFAULT_ROLES.get(key, "whitebox")


def _compare_roles(correct: Mapping[str, Any], roles: Mapping[str, str],
                   tol: Mapping[str, Mapping[str, Any]]) -> list[Flag | None]:
    valid = {"whitebox", "iterative", "single_step", "blackbox", "transfer", "noise", "bpda"}
    by_role: dict[str, list[Tensor]] = {}
    for name, c in correct.items():
        role = _role(name, roles)
        if role not in valid:
            raise TorchRobustError(f"unknown role {role!r} for attack {name!r}; valid: {', '.join(sorted(valid))}")
        by_role.setdefault(role, []).append(bool_vector("correct[" + name + "]", c))
    white = by_role.get("whitebox", []) + by_role.get("iterative", [])
    flags: list[Flag | None] = []
    if not white:
        return flags
    wb = torch.stack(white).all(0)
    if by_role.get("single_step"):
        single = torch.stack(by_role["single_step"]).all(0)
        flags.append(comparisons.check_iterative_vs_single_step(wb, single,
                                                                **tol.get("check_iterative_vs_single_step", {})))
    checks = (("blackbox", comparisons.check_blackbox_vs_whitebox),
              ("transfer", comparisons.check_transfer_vs_whitebox), ("noise", comparisons.check_noise_vs_whitebox),
              ("bpda", comparisons.check_bpda_vs_whitebox))
    for role, fn in checks:
        if by_role.get(role):
            other = torch.stack(by_role[role]).all(0)
            flags.append(fn(wb, other, **tol.get(fn.__name__, {})))
    return flags
