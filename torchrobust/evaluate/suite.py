"""One entry point for both evaluation suites: ``evaluate(model, x, y, suite="sweep" | "adaptive", ...)``, and
``evaluate_to_dir`` (the same, writing a results folder: what ``torchrobust evaluate`` runs)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..errors import TorchRobustError
from ..io import atomic_write_bytes
from .adaptive import AdaptiveResult, evaluate_adaptive, undefended_base
from .sweeps import DEFAULT_ATTACKS, SweepResult, accuracy_table, sweep, write_table_files

__all__ = ["evaluate", "evaluate_to_dir", "write_adaptive", "SUITES"]

SUITES = ("sweep", "adaptive")


def evaluate(model: nn.Module, x: Tensor, y: Tensor, suite: str = "sweep", *, threat: str = "Linf",
             eps: float | Sequence[float] = (0.0, 0.1, 0.2, 0.3), attacks: Sequence[str] = DEFAULT_ATTACKS,
             base_model: nn.Module | None = None, **kwargs: Any) -> SweepResult | dict[float, AdaptiveResult]:
    """Evaluate ``model`` on ``(x, y)``.

    * ``suite="sweep"``: :func:`~torchrobust.evaluate.sweep` of ``attacks`` over ``eps`` (``kwargs`` go to it); the
      default attacks are FGSM (the papers' column), APGD-CE and APGD-T on APGD-CE's survivors, reported as the
      per-example worst case — as strong as the reference AutoAttack's white-box pair.
    * ``suite="adaptive"``: :func:`~torchrobust.evaluate.evaluate_adaptive` at every ε > 0 (``kwargs`` go to it);
      ``base_model`` defaults to the model without the torchrobust defences it carries (transfer source). Returns
      ``{eps: AdaptiveResult}``; each result's ``robust_accuracy`` is the per-example worst case over every attack
      run, and ``reliable`` is False when a gradient-masking check fired.
    """
    eps_list = [float(eps)] if isinstance(eps, (int, float)) else [float(e) for e in eps]
    if suite == "sweep":
        return sweep(model, x, y, attacks=list(attacks), eps=eps_list, threat=threat, **kwargs)
    if suite == "adaptive":
        base = base_model if base_model is not None else undefended_base(model)
        out = {e: evaluate_adaptive(model, x, y, threat=threat, eps=e, base_model=base, **kwargs)
               for e in eps_list if e > 0}
        if not out:
            raise TorchRobustError("the adaptive suite needs at least one eps > 0")
        return out
    raise TorchRobustError(f"unknown evaluation suite {suite!r}; valid: {', '.join(SUITES)}")


def evaluate_to_dir(model: nn.Module, x: Tensor, y: Tensor, out_dir: str | Path, suite: str = "sweep", *,
                    threat: str = "Linf", eps: Sequence[float] = (0.0, 0.1, 0.2, 0.3),
                    attacks: Sequence[str] = DEFAULT_ATTACKS, attack_kwargs: dict[str, dict[str, Any]] | None = None,
                    steps: int | None = None, restarts: int | None = None, batch_size: int = 500, seed: int = 0,
                    checks: bool = False, progress: bool = True,
                    config: dict[str, Any] | None = None) -> dict[str, Path] | None:
    """Evaluate ``model`` on ``(x, y)`` and write the results folder ``out_dir`` (what ``torchrobust evaluate``
    runs); resumable: an interrupted run continues from the fingerprinted state in ``out_dir``.

    * ``suite="sweep"``: :func:`~torchrobust.evaluate.sweep` (state ``out_dir/state``), ``config`` added to its
      configuration, the gradient-masking checks on the first 32 points when ``checks``; writes ``results.csv``,
      ``.md``, ``accuracy_vs_eps.png`` and, last, ``results.json`` on the main process (torchrun). Returns
      :meth:`SweepResult.write`'s paths there, None on the other ranks.
    * ``suite="adaptive"``: :func:`write_adaptive` (``steps``/``restarts`` are its budget).
    """
    out = Path(out_dir)
    if suite == "adaptive":
        return write_adaptive(model, x, y, out, eps=eps, threat=threat, steps=steps, restarts=restarts,
                              batch_size=batch_size, seed=seed, progress=progress,
                              checkpoint=(config or {}).get("checkpoint"))
    if suite != "sweep":
        raise TorchRobustError(f"unknown evaluation suite {suite!r}; valid: {', '.join(SUITES)}")
    from .. import distributed

    t0 = time.perf_counter()
    res = sweep(model, x, y, attacks=list(attacks), eps=list(eps), threat=threat, attack_kwargs=attack_kwargs,
                batch_size=batch_size, seed=seed, progress=progress, state=out / "state")
    res.config.update(**(config or {}), seconds=time.perf_counter() - t0)
    if checks:
        from .checks import run_checks

        res.flags = [f.to_dict() for f in run_checks(res, model=model, x=x[:32], y=y[:32], bpda_evaluated=False)]
        res.config["checks"] = True
    paths = res.write(out) if distributed.is_main() else None
    distributed.cleanup()
    return paths


def write_adaptive(model: nn.Module, x: Tensor, y: Tensor, out_dir: str | Path, *, eps: Sequence[float],
                   threat: str = "Linf", steps: int | None = None, restarts: int | None = None,
                   batch_size: int = 500, seed: int = 0, progress: bool = True,
                   checkpoint: str | None = None) -> dict[str, Path]:
    """The adaptive suite (:func:`~torchrobust.evaluate.evaluate_adaptive`) at every ε > 0 of ``eps``, per-example
    worst case, resumable per ε (state ``out_dir/state_<threat>_<ε>``); writes ``adaptive.csv``, ``adaptive.md``
    and, last (it marks a finished run), ``adaptive.json``. ``steps``/``restarts``: None keeps each attack's own.
    Returns the paths (keys ``csv``, ``md``, ``json``)."""
    out = Path(out_dir)
    base = undefended_base(model)
    rows, docs = [], []
    for e in eps:
        if e == 0:
            continue
        budget = {k: v for k, v in (("steps", steps), ("restarts", restarts)) if v is not None}
        res = evaluate_adaptive(model, x, y, threat=threat, eps=e, base_model=base, seed=seed,
                                batch_size=batch_size, state_path=out / f"state_{threat}_{e:g}",
                                progress=progress, **budget)
        row: dict[str, Any] = {"eps": e, "clean": res.clean_accuracy}
        row.update({a: res.accuracy(a) for a in res.correct})
        row["worst_case"] = res.robust_accuracy
        row["reliable"] = "yes" if res.reliable else "no"
        rows.append(row)
        docs.append(res.to_dict())
    flags = [f for d in docs for f in d["flags"]]
    note = ("Black-box attacks (square, spsa) run only on the white-box survivors; their columns count the other "
            "points as not broken.")
    if flags:
        note = "**UNRELIABLE**: flags " + ", ".join(sorted({str(f["code"]) for f in flags})) + ". " + note
    paths = write_table_files(out / "adaptive", rows, title=f"Adaptive evaluation ({threat}, n={len(x)})",
                              note=note)
    doc = {"title": f"Adaptive evaluation of {checkpoint}", "table": rows, "columns": accuracy_table(rows).schema(),
           "flags": flags, "checks_run": True, "per_eps": docs, "checkpoint": str(checkpoint)}
    atomic_write_bytes(out / "adaptive.json", (json.dumps(doc, indent=1) + "\n").encode())
    return {**paths, "json": out / "adaptive.json"}
