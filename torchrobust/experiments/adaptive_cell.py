"""One cell of the adaptive protocol (docs/adaptive-evaluation.md): a model at one ℓ∞ ε on a fixed set of images,
attacked with FGSM (the papers' protocol) and PGD-20, then with the adaptive suite
(:func:`torchrobust.evaluate.adaptive.evaluate_adaptive`: white-box APGD-CE/T or PGD, BPDA through the declared
surrogates, transfer from the undefended weights, Square and SPSA) on the points that survived both: a point broken
once stays broken, so this is the per-example worst case over every attack at a fraction of the cost (AutoAttack's
cascade). Used by ``torchrobust paper adaptive`` (:mod:`torchrobust.experiments.adaptive_reprogramming`) and by the
presets' ``robust_eval="adaptive"`` (:mod:`torchrobust.experiments.reprogramming_protocol`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

__all__ = ["AttackBudget", "BUDGETS", "evaluate_cell"]


@dataclass(frozen=True)
class AttackBudget:
    """Attack budgets of one run (see ``docs/adaptive-evaluation.md`` for why these values).

    ``pgd_steps``: the PGD column (PGD-20). ``steps``/``restarts``: our own PGD runs inside the adaptive suite
    (BPDA, transfer; and the white-box fallback when ``whitebox="pgd"``). ``whitebox``: ``"auto"`` (the
    reference AutoAttack's APGD-CE + APGD-T at their standard budgets when installed), ``"autoattack"`` or
    ``"pgd"``. ``square_queries``, ``spsa_steps``, ``spsa_samples``: the black-box attacks on the survivors.
    """

    pgd_steps: int = 20
    steps: int = 100
    restarts: int = 1
    whitebox: Literal["auto", "autoattack", "apgd", "pgd"] = "auto"
    square_queries: int = 1000
    spsa_steps: int = 50
    spsa_samples: int = 64
    batch_size: int = 250


#: Named budgets, per architecture: ``"default"`` (the documented run: fits ≈ 40 min on 2 shared CPU cores;
#: LeNet's NRPM convolutions cost ~10 ms per example and gradient step on one core, so LeNet gets our PGD
#: (CE + margin) instead of AutoAttack's APGD-T with its 9 target classes, and smaller black-box budgets),
#: ``"strong"`` (AutoAttack and the adaptive suite's defaults for both; hours on a CPU) and ``"quick"`` (a smoke
#: test; numbers not meaningful).
BUDGETS: dict[str, dict[str, AttackBudget]] = {
    "default": {
        "mlp": AttackBudget(),
        "lenet": AttackBudget(steps=50, whitebox="pgd", square_queries=300, spsa_steps=10, spsa_samples=32),
    },
    "strong": {a: AttackBudget(steps=100, restarts=2, whitebox="auto", square_queries=5000, spsa_steps=100,
                               spsa_samples=128) for a in ("mlp", "lenet")},
    "quick": {a: AttackBudget(pgd_steps=5, steps=5, restarts=1, whitebox="pgd", square_queries=20, spsa_steps=2,
                              spsa_samples=8) for a in ("mlp", "lenet")},
}


def evaluate_cell(model: nn.Module, base: nn.Module | None, x: torch.Tensor, y: torch.Tensor, eps: float,
                   budget: AttackBudget, seed: int, state_path: Path, progress: bool) -> dict[str, Any]:
    """One (model, paradigm, ε) cell: clean, FGSM, PGD-20, the adaptive suite on their survivors, worst case."""
    from torchrobust.evaluate.adaptive import evaluate_adaptive
    from torchrobust.evaluate.engine import Job, run_plan

    # FGSM (the paper's protocol) and PGD-20 (random start, the attack's default step) as one engine plan
    jobs = [Job("fgsm", "Linf", eps), Job("pgd", "Linf", eps, kwargs={"steps": budget.pgd_steps, "seed": seed})]
    plan = run_plan(model, x, y, jobs, batch_size=budget.batch_size, seed=seed)
    clean = plan.clean
    fgsm, pgd = clean & plan.correct[jobs[0].key], clean & plan.correct[jobs[1].key]
    t_fgsm, t_pgd = plan.seconds[jobs[0].key], plan.seconds[jobs[1].key]
    surv = clean & fgsm & pgd
    idx = surv.nonzero().squeeze(1)
    worst = surv.clone()
    suite: dict[str, Any] = {"n_attacked": int(len(idx))}
    t2 = time.perf_counter()
    if len(idx) > 0:
        res = evaluate_adaptive(
            model, x[idx], y[idx], "Linf", eps, base_model=base, whitebox=budget.whitebox, steps=budget.steps,
            restarts=budget.restarts, square_queries=budget.square_queries, spsa_steps=budget.spsa_steps,
            spsa_samples=budget.spsa_samples, seed=seed, batch_size=budget.batch_size, state_path=state_path,
            progress=progress,
        )
        worst[idx] = res.worst
        broke = {a: int((res.clean & ~c).sum()) for a, c in res.correct.items()}
        suite.update({
            "still_correct_clean": int(res.clean.sum()),
            "broken_by": broke,
            "broke_most": max(broke, key=lambda a: broke[a]) if any(broke.values()) else None,
            "roles": res.roles, "flags": res.flags, "reliable": res.reliable, "skipped": res.skipped,
            "seconds": {k: round(v, 1) for k, v in res.seconds.items()}, "config": res.config,
        })
    else:
        suite.update({"broken_by": {}, "broke_most": None, "flags": [], "reliable": True,
                      "skipped": {"suite": "no point survived FGSM and PGD-20"}, "seconds": {}})
    t_adaptive = time.perf_counter() - t2
    n = len(x)

    def pct(t: torch.Tensor) -> float:
        return round(100.0 * float(t.float().sum()) / n, 2)

    # first attack (in evaluation order) to break each broken point
    first = {"fgsm": int((clean & ~fgsm).sum()), "pgd20": int((clean & fgsm & ~pgd).sum())}
    first["adaptive suite"] = int((surv & ~worst).sum())
    return {
        "eps": eps, "n": n, "clean": pct(clean), "fgsm": pct(fgsm), "pgd20": pct(pgd),
        "fgsm_and_pgd20": pct(surv), "adaptive": pct(worst), "first_broken_by": first, "suite": suite,
        "reliable": bool(suite["reliable"]), "flags": [f["code"] for f in suite["flags"]],
        "seconds": {"fgsm": round(t_fgsm, 1), "pgd20": round(t_pgd, 1), "adaptive": round(t_adaptive, 1)},
        "worst_per_example": worst.tolist(),
    }
