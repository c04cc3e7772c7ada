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
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

__all__ = ["AttackBudget", "BUDGETS", "APGD_CLASS", "WhiteBox", "evaluate_cell", "weak_whitebox_note",
           "whitebox_label"]


#: the white-box stages of :func:`torchrobust.evaluate.adaptive.evaluate_adaptive` (``AttackBudget.whitebox``)
#: (``AttackBudget.whitebox`` spells the same values out: with this alias its fields have the shape of TrainConfig's,
#: which the duplicates check reports; a test keeps the two equal)
WhiteBox = Literal["auto", "autoattack", "apgd", "pgd"]
#: white-box stages at least as strong as the library's default strong evaluation (FGSM + APGD-CE + APGD-T, 100
#: iterations: :data:`torchrobust.evaluate.sweeps.DEFAULT_ATTACKS`); ``"pgd"`` (PGD-CE + PGD-margin) is weaker
APGD_CLASS: tuple[str, ...] = ("auto", "autoattack", "apgd")


@dataclass(frozen=True)
class AttackBudget:
    """Attack budgets of one run (see ``docs/adaptive-evaluation.md`` for why these values).

    ``pgd_steps``: the PGD column (PGD-20). ``steps``/``restarts``: our own PGD runs inside the adaptive suite
    (BPDA, transfer; and the white-box stage when ``whitebox="pgd"``). ``whitebox``: ``"apgd"`` (our APGD-CE +
    APGD-T at their defaults, 100 iterations, APGD-T over 9 target classes: the attacks of the default strong
    evaluation), ``"auto"`` (the reference AutoAttack's APGD-CE + APGD-T at their standard budgets when it is
    installed and the inputs are images, else ours), ``"autoattack"`` or ``"pgd"`` (PGD-CE + PGD-margin,
    ``steps`` × ``restarts``: weaker than the default strong evaluation, see :func:`weak_whitebox_note`).
    ``square_queries``, ``spsa_steps``, ``spsa_samples``: the black-box attacks on the survivors.
    """

    pgd_steps: int = 20
    steps: int = 100
    restarts: int = 1
    whitebox: Literal["auto", "autoattack", "apgd", "pgd"] = "auto"  # the values of WhiteBox
    square_queries: int = 1000
    spsa_steps: int = 50
    spsa_samples: int = 64
    batch_size: int = 250


#: Named budgets, per architecture (``paper adaptive --budget NAME``, ``paper <preset> --robust adaptive
#: --adaptive-budget NAME``):
#:
#: * ``"default"`` - the one to report. MLP: the reference AutoAttack's APGD-CE + APGD-T when installed, else ours
#:   (``whitebox="auto"``), the suite's PGD 100 steps, Square 1000 queries, SPSA 50 × 64. LeNet: our APGD-CE +
#:   APGD-T (``whitebox="apgd"``, 100 iterations each) - the very attacks of the default strong evaluation
#:   (``paper <preset> --robust strong``: same attacks, same iterations; only the random starts differ), so the
#:   adaptive number never rests on a weaker white-box attack than it. ``"apgd"`` rather than ``"auto"``: LeNet's
#:   inputs are images, so ``"auto"`` would switch to the reference implementation whenever ``autoattack`` happens
#:   to be installed, making the number depend on the environment and no longer the same attack as the default
#:   evaluation it must dominate. LeNet keeps smaller BPDA/transfer (50 PGD steps) and black-box (Square 300,
#:   SPSA 10 × 32) budgets for cost: its NRPM convolutions cost ~10 ms per example and gradient step on one core,
#:   and APGD-CE + APGD-T take up to 1,000 gradient steps per surviving point (PGD-CE + PGD-margin at 50 steps:
#:   100). Until this budget, LeNet's default white-box was that PGD, which reported far higher numbers than
#:   ``--robust strong`` (docs/adaptive-evaluation.md, *Budgets*).
#: * ``"fast"`` - weak white-box for LeNet: its numbers are upper bounds above the default evaluation; the budget of
#:   the LeNet runs documented before the LeNet default became APGD-class (docs/adaptive-evaluation.md). MLP: the
#:   same as ``"default"``; LeNet: white-box PGD-CE + PGD-margin (50 steps × 1 restart), the rest as ``"default"``.
#: * ``"strong"`` - AutoAttack and the adaptive suite's defaults for both (hours on a CPU).
#: * ``"quick"`` - a smoke test (white-box PGD, 5 steps); numbers not meaningful.
BUDGETS: dict[str, dict[str, AttackBudget]] = {
    "default": {
        "mlp": AttackBudget(),
        "lenet": AttackBudget(steps=50, whitebox="apgd", square_queries=300, spsa_steps=10, spsa_samples=32),
    },
    "fast": {
        "mlp": AttackBudget(),
        "lenet": AttackBudget(steps=50, whitebox="pgd", square_queries=300, spsa_steps=10, spsa_samples=32),
    },
    "strong": {a: AttackBudget(steps=100, restarts=2, whitebox="auto", square_queries=5000, spsa_steps=100,
                               spsa_samples=128) for a in ("mlp", "lenet")},
    "quick": {a: AttackBudget(pgd_steps=5, steps=5, restarts=1, whitebox="pgd", square_queries=20, spsa_steps=2,
                              spsa_samples=8) for a in ("mlp", "lenet")},
}


def whitebox_label(budget: AttackBudget | Mapping[str, Any]) -> str:
    """What the white-box stage of ``budget`` (an :class:`AttackBudget` or its ``asdict``) runs, for reports."""
    b = _fields(budget)
    if b["whitebox"] == "pgd":
        return f"PGD-CE + PGD-margin ({b['steps']} steps × {b['restarts']} restart(s))"
    n = _apgd_steps()
    return {"apgd": f"APGD-CE + APGD-T (ours, {n} iterations each, as the default strong evaluation)",
            "autoattack": "APGD-CE + APGD-T (reference AutoAttack, standard budgets)",
            "auto": f"APGD-CE + APGD-T (the reference AutoAttack's when installed, else ours; {n} iterations each)",
            }[str(b["whitebox"])]


def weak_whitebox_note(budget: AttackBudget | Mapping[str, Any], model: str = "") -> str | None:
    """The label of a white-box stage weaker than the default strong evaluation (``whitebox="pgd"``): its adaptive
    numbers are upper bounds, possibly above the default evaluation's. None for an APGD-class stage."""
    b = _fields(budget)
    if b["whitebox"] in APGD_CLASS:
        return None
    return (f"**Strength: weak white-box**{f' ({model})' if model else ''} — white-box stage: PGD-{b['steps']} "
            f"(CE + margin, {b['restarts']} restart(s)), weaker than the default strong evaluation (APGD-CE + "
            f"APGD-T, {_apgd_steps()} iterations); these adaptive numbers are upper bounds and can be above the "
            "default evaluation's. The `default` budget's white-box stage is APGD-class.")


def _apgd_steps() -> int:
    """APGD's default iterations (what ``whitebox="apgd"`` and the default strong evaluation run)."""
    import inspect

    from torchrobust.attacks.apgd import APGD

    return int(inspect.signature(APGD).parameters["steps"].default)


def _fields(budget: AttackBudget | Mapping[str, Any]) -> Mapping[str, Any]:
    return asdict(budget) if isinstance(budget, AttackBudget) else budget


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
