"""Figures of *Robustness Reprogramming for Representation Learning* (Hou et al., ICLR 2025) beyond the table
presets, on the MNIST 3-layer linear MLP (784-256-64-10, no activation; Table 1's backbone), plain (LPM) vs NRPM:

* ``fig9`` — Appendix C.3, Figure 9: robust accuracy vs attack budget under ℓ∞, ℓ2 and ℓ0 attacks
  (``‖x' − x‖_p ≤ budget``, p = ∞, 2, 0). ℓ∞ and ℓ2 use the library's default strong evaluation
  (:func:`torchrobust.evaluate.sweep` with its default attacks: FGSM, APGD-CE, then APGD-T on the survivors;
  per-example worst case); ℓ0 uses :class:`torchrobust.attacks.L0Attack` (iterative PGD₀ started from the paper
  code's one-step top-k attack) through the same sweep/engine. The budget is a number of changed pixels for ℓ0.
* ``fig6`` — Section 5, Figure 6: certified accuracy of the Gaussian-smoothed classifier (Cohen et al. 2019,
  :mod:`torchrobust.evaluate.certify`) at several σ, NRPM vs plain. The paper text places Figure 6 with its CIFAR-10
  ResNets; here it is run on the MNIST MLP (a CPU-sized stand-in, stated in docs/reprogramming.md).

Models: the standard-trained backbone (paradigm 0) and its reprogrammed versions, built with the presets' recipes
(:func:`torchrobust.experiments.reprogramming.train_paper_model`) and checkpointed under ``out_dir/models`` (reused
on a rerun, like ``torchrobust paper adaptive``). Paradigm 1 uses the library's fixed (λ, K) for the MLP,
:data:`torchrobust.experiments.reprogramming.PARADIGM1` (λ = 0.8, K = 4: a best row of the paper's Table 8), with
the paper code's IRLS ε = 5e-5; the paper does not state λ/K for its Figure 9. Paradigm 3 (weights and λ learned
under FGSM training, as Table 1) can be added with ``paradigms=(1, 3)``, and its control :data:`PLAIN_ADV`
(``"plain-adv"``: the backbone fine-tuned with paradigm 3's recipe, same steps, optimiser, lr, FGSM ε = 0.3, mixed
loss and data order, but not reprogrammed — the only difference from "NRPM P3" is NRPM) with
``paradigms=(3, "plain-adv")``.

The evaluation set is the first ``n_test`` MNIST test images, in order. Output: ``<name>.json`` (config, rows,
timings) and ``<name>_table.json`` / ``<name>.md`` (a :class:`torchrobust.tables.Table`). Figure 9 keeps each
sweep's per-batch evaluation state (fingerprinted by the engine) under ``OUT/state``, and Figure 6 each finished
(model, σ) certification (:class:`torchrobust.experiments.preset_cache.PresetCache`, keyed by the model's
fingerprint, the data, σ, the sample counts and the code): the same command rerun after an interruption (kill -9
included) resumes where it stopped and gives the same table.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchrobust.errors import TorchRobustError, unknown_name
from torchrobust.experiments.preset_cache import PresetCache
from torchrobust.tables import Column, ColumnKind, Table

__all__ = ["run_figure", "FIGURES", "FIG9_BUDGETS", "FIG6_SIGMAS", "PLAIN_ADV"]

logger = logging.getLogger(__name__)

FIGURES: dict[str, str] = {
    "fig9": "Figure 9: ℓ∞/ℓ2/ℓ0 robust accuracy vs budget, MLP plain vs NRPM (default strong attacks; ℓ0 PGD₀)",
    "fig6": "Figure 6: randomized-smoothing certified accuracy at several σ, MLP plain vs NRPM",
}

#: budgets per norm: ℓ∞ the paper's MNIST ε grid, ℓ2 its code's one-step L2 grid (ε 1…6), ℓ0 changed pixels
FIG9_BUDGETS: dict[str, tuple[float, ...]] = {
    "Linf": (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3),
    "L2": (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0),
    "L0": (0.0, 5.0, 10.0, 20.0, 40.0, 80.0),
}
_QUICK_BUDGETS: dict[str, tuple[float, ...]] = {"Linf": (0.0, 0.1), "L2": (0.0, 2.0), "L0": (0.0, 10.0)}
#: the quick (smoke-test) profile shortens the attacks; every other profile runs them at their defaults
_QUICK_ATTACKS: dict[str, dict[str, Any]] = {"apgd-ce": {"steps": 10}, "apgd-t": {"steps": 10, "n_target_classes": 2},
                                             "l0": {"steps": 10}}
#: σ of the Gaussian noise for Figure 6, and the ℓ2 radii at which certified accuracy is tabulated
FIG6_SIGMAS: tuple[float, ...] = (0.12, 0.25, 0.5)
FIG6_RADII: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
#: the ``paradigms`` key of the plain control of paradigm 3: the backbone fine-tuned with paradigm 3's recipe
#: (FGSM ε = 0.3, mixed loss, Adam 2e-3, same steps and data order) without NRPM
PLAIN_ADV = "plain-adv"
_ROW_NAMES: dict[int | str, str] = {0: "plain (LPM)", 1: "NRPM P1", 2: "NRPM P2", 3: "NRPM P3",
                                    PLAIN_ADV: "plain FGSM-FT (P3 recipe)"}


def _check_budgets(budgets: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
    if not budgets:
        raise TorchRobustError(f"no norms given; pass budgets for any of {', '.join(FIG9_BUDGETS)}")
    out: dict[str, list[float]] = {}
    for norm, vals in budgets.items():
        if norm not in FIG9_BUDGETS:
            raise unknown_name("norm", norm, FIG9_BUDGETS)
        vs = [float(v) for v in vals]
        if not vs:
            raise TorchRobustError(f"no budgets for {norm}; pass at least one, e.g. {list(FIG9_BUDGETS[norm][:3])}")
        for v in vs:
            if not math.isfinite(v) or v < 0:
                raise TorchRobustError(f"{norm} budget {v!r} must be a finite number >= 0")
            if norm == "Linf" and v > 1:
                raise TorchRobustError(f"Linf budget {v} is above 1 (pixels are in [0, 1]); pass a value in [0, 1]")
            if norm == "L0" and v != int(v):
                raise TorchRobustError(f"L0 budget {v} is a number of pixels; pass a whole number")
        out[norm] = vs
    return out


def _models(out: Path, paradigms: Sequence[int | str], x_tr: torch.Tensor, y_tr: torch.Tensor, *, profile: str,
            seed: int, device: str | None, progress: bool,
            timings: dict[str, float]) -> dict[int | str, nn.Module]:
    """The backbone, its reprogrammed versions and :data:`PLAIN_ADV` (paradigm 3's fine-tuning without NRPM),
    trained once and checkpointed under ``out/models``."""
    from torchrobust.experiments.adaptive_reprogramming import get_model

    models: dict[int | str, nn.Module] = {}
    for p in (0, *paradigms):
        models[p] = get_model("mlp", 3 if p == PLAIN_ADV else int(p), out / "models", models.get(0), (x_tr, y_tr),
                              profile=profile, seed=seed, device=device, progress=progress, timings=timings,
                              nrpm=p != PLAIN_ADV)
    return models


def _state(state_dir: Path | None, paradigm: int | str, what: str) -> Path | None:
    """The resumable state of one sweep (the engine's fingerprinted per-batch state; None: not kept)."""
    return None if state_dir is None else state_dir / f"{paradigm if paradigm == PLAIN_ADV else f'p{paradigm}'}-{what}"


def _fig9_rows(models: Mapping[int | str, nn.Module], x: torch.Tensor, y: torch.Tensor,
               budgets: Mapping[str, Sequence[float]], seed: int, timings: dict[str, float],
               attack_kwargs: Mapping[str, Mapping[str, Any]] | None,
               state_dir: Path | None = None) -> list[dict[str, Any]]:
    from torchrobust.attacks import L0
    from torchrobust.evaluate import sweep

    rows = []
    for p, model in models.items():
        for norm, bs in budgets.items():
            t0 = time.perf_counter()
            if norm == "L0":
                # get_threat resolves names of Linf/L2/L1 only; an L0 threat object passes through it. The paper
                # code's one-step top-k attack is the cheap first sweep; the iterative PGD0 attack the strong one.
                one = sweep(model, x, y, attacks=["l0"], eps=bs, threat=L0(1.0), seed=seed,  # type: ignore[arg-type]
                            attack_kwargs={"l0": {"method": "one_step"}}, state=_state(state_dir, p, "L0-one-step"))
                res = sweep(model, x, y, attacks=["l0"], eps=bs, threat=L0(1.0), seed=seed,  # type: ignore[arg-type]
                            attack_kwargs=attack_kwargs, state=_state(state_dir, p, "L0"))
                worst_t = res.worst & one.worst
                one_step = one.worst.float().mean(1).tolist()
            else:
                # the default (strong) attacks; their FGSM column is the one-step attack of the paper's code
                res = sweep(model, x, y, eps=bs, threat=norm, seed=seed, attack_kwargs=attack_kwargs,
                            state=_state(state_dir, p, norm))
                worst_t = res.worst
                one_step = res.robust["fgsm"].float().mean(1).tolist()
            timings[f"eval {_ROW_NAMES[p]} {norm}"] = round(time.perf_counter() - t0, 1)
            worst = worst_t.float().mean(1).tolist()
            for b, acc, acc1 in zip(bs, worst, one_step, strict=True):
                rows.append({"model": _ROW_NAMES[p], "norm": norm, "budget": b, "robust": acc, "one_step": acc1,
                             "attacks": "+".join(res.attacks), "strength": res.strength})
            logger.info("%s %s: %s", _ROW_NAMES[p], norm, [round(100 * a, 1) for a in worst])
    return rows


def _fig6_rows(models: Mapping[int | str, nn.Module], x: torch.Tensor, y: torch.Tensor, sigmas: Sequence[float],
               n0: int, n: int, seed: int, progress: bool, timings: dict[str, float],
               cache: PresetCache | None = None) -> list[dict[str, Any]]:
    """Certified accuracy of every (model, σ) cell at :data:`FIG6_RADII`; with a ``cache``, a cell certified
    earlier for this model (fingerprint), data, σ and sample counts is reused (each cell seeds its own generator,
    so a reused cell is the one a fresh run would compute)."""
    from torchrobust.evaluate.certify import Smooth, certified_accuracy_curve, certify_dataset

    rows = []
    for p, model in models.items():
        for s in sigmas:
            def cell(model: nn.Module = model, s: float = s) -> dict[str, Any]:
                g = torch.Generator().manual_seed(seed)
                res = certify_dataset(Smooth(model, 10, s), x, y, n0=n0, n=n, alpha=0.001, generator=g,
                                      progress=progress)
                return {"certified": certified_accuracy_curve(res, FIG6_RADII).tolist()}

            label = f"certify {_ROW_NAMES[p]} σ={s:g}"
            if cache is None:
                t0 = time.perf_counter()
                values, seconds = cell(), time.perf_counter() - t0
            else:
                values, seconds = cache.row(label, cache.row_key(label, model, {"sigma": float(s)}), cell)
            timings[label] = round(seconds, 1)
            for r, acc in zip(FIG6_RADII, values["certified"], strict=True):
                rows.append({"model": _ROW_NAMES[p], "sigma": s, "radius": r, "certified": acc})
    return rows


def _fig9_table(rows: Sequence[Mapping[str, Any]], n_test: int) -> Table:
    return Table([Column("model", ColumnKind.TEXT), Column("norm", ColumnKind.TEXT),
                  Column("budget", ColumnKind.FLOAT, digits=3, label="budget (ℓ0: pixels)"),
                  Column("robust", ColumnKind.PERCENT, digits=1, label="robust acc."),
                  Column("one_step", ColumnKind.PERCENT, digits=1, label="one-step attack only"),
                  Column("attacks", ColumnKind.TEXT), Column("strength", ColumnKind.TEXT)],
                 [dict(r) for r in rows], title=FIGURES["fig9"],
                 notes=(f"First {n_test} MNIST test images; an example counts only if correct clean and after every "
                        "attack (per-example worst case); budget 0 is clean accuracy. 'one-step attack only': the "
                        "paper code's single-step attack (FGSM for ℓ∞/ℓ2, top-k for ℓ0) alone.",))


def _fig6_table(rows: Sequence[Mapping[str, Any]], n_test: int, n0: int, n: int) -> Table:
    return Table([Column("model", ColumnKind.TEXT), Column("sigma", ColumnKind.FLOAT, digits=2, label="σ"),
                  Column("radius", ColumnKind.FLOAT, digits=2, label="ℓ2 radius"),
                  Column("certified", ColumnKind.PERCENT, digits=1, label="certified acc.")],
                 [dict(r) for r in rows], title=FIGURES["fig6"],
                 notes=(f"First {n_test} MNIST test images; CERTIFY (Cohen et al. 2019) with n0={n0}, n={n}, "
                        "α=0.001; abstentions count as wrong.",))


def run_figure(name: str, out_dir: str | Path, *, n_test: int = 1000, profile: str = "fast", seed: int = 0,
               paradigms: Sequence[int | str] = (1,), budgets: Mapping[str, Sequence[float]] | None = None,
               sigmas: Sequence[float] = FIG6_SIGMAS, n0: int = 100, n_samples: int | None = None,
               device: str | None = None, progress: bool = False, threads: int | None = 1) -> dict[str, Any]:
    """Run one figure (``"fig9"`` or ``"fig6"``) and write ``<name>.json``, ``<name>.md`` and ``<name>_table.json``
    into ``out_dir``; returns the result dict (``config``, ``rows``, ``timings``, ``wall_seconds``, ``table``).

    Args:
        name: a key of :data:`FIGURES`.
        out_dir: output folder (created); trained models are kept in ``out_dir/models`` and reused.
        n_test: the first ``n_test`` MNIST test images (1..10000).
        profile: the presets' training profile (``fast``, ``full``, ``quick``); ``quick`` (a smoke test) also
            shrinks the budget grids to two points per norm, the attacks to 10 steps (APGD-T: 2 target classes)
            and the certification to n = 200 samples.
        seed: model initialisation, training order, attacks' randomness and the noise of CERTIFY.
        paradigms: rows beside the plain backbone, in this order: NRPM paradigms (1, 2, 3) and/or
            :data:`PLAIN_ADV` (``"plain-adv"``, paradigm 3's adversarial fine-tuning without NRPM).
        budgets: ``{norm: budgets}`` for fig9 (norms ``Linf``, ``L2``, ``L0``; default :data:`FIG9_BUDGETS`).
        sigmas: noise levels σ for fig6.
        n0, n_samples: CERTIFY's selection and estimation sample counts (fig6; default n = 10,000).
        device, progress, threads: as :func:`torchrobust.experiments.reprogramming.run`.
    """
    from torchrobust.experiments.reprogramming import PROFILES, load_mnist
    from torchrobust.io import atomic_write_bytes

    if name not in FIGURES:
        raise unknown_name("figure", name, FIGURES)
    if profile not in PROFILES:
        raise unknown_name("profile", profile, PROFILES)
    if isinstance(n_test, bool) or not isinstance(n_test, int) or not 1 <= n_test <= 10000:
        raise TorchRobustError(f"n_test={n_test!r} must be in 1..10000 (the MNIST test set)")
    bad = [p for p in paradigms if isinstance(p, bool) or p not in (1, 2, 3, PLAIN_ADV)]
    if bad or len(set(paradigms)) != len(paradigms):
        raise TorchRobustError(f"paradigms={list(paradigms)} must be distinct values of 1, 2, 3, {PLAIN_ADV}")
    quick = profile == "quick"
    checked = _check_budgets(budgets if budgets is not None else (_QUICK_BUDGETS if quick else FIG9_BUDGETS))
    for s in sigmas:
        if not (isinstance(s, (int, float)) and math.isfinite(s) and s > 0):
            raise TorchRobustError(f"sigma {s!r} must be a finite number > 0")
    n_cert = n_samples if n_samples is not None else (200 if quick else 10_000)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    timings: dict[str, float] = {}
    resumed: list[str] = []
    t0 = time.perf_counter()
    try:
        x_tr, y_tr, x_te, y_te = load_mnist(PROFILES[profile], seed)
        x, y = x_te[:n_test], y_te[:n_test]
        models = _models(out, paradigms, x_tr, y_tr, profile=profile, seed=seed, device=device, progress=progress,
                         timings=timings)
        if device:
            x, y = x.to(device), y.to(device)
        if name == "fig9":
            rows = _fig9_rows(models, x, y, checked, seed, timings, _QUICK_ATTACKS if quick else None,
                              out / "state")
            table = _fig9_table(rows, n_test)
        else:
            from torchrobust.resume import fingerprint_tensors

            cache = PresetCache(out / "state", {"seed": seed, "device": device or "cpu", "threads": threads,
                                                "torch": torch.__version__},
                                {"figure": name, "profile": profile, "n_test": n_test, "n0": n0, "n": n_cert,
                                 "alpha": 0.001, "radii": list(FIG6_RADII)},
                                test_data=fingerprint_tensors(x.cpu(), y.cpu()))  # evaluation only: no train_data
            rows = _fig6_rows(models, x, y, list(sigmas), n0, n_cert, seed, progress, timings, cache)
            resumed = cache.reused
            table = _fig6_table(rows, n_test, n0, n_cert)
    finally:
        if threads is not None:
            torch.set_num_threads(old_threads)
    wall = round(time.perf_counter() - t0, 1)
    config = {"figure": name, "n_test": n_test, "profile": profile, "seed": seed, "paradigms": list(paradigms),
              "threads": threads, "device": device or "cpu", "torch": torch.__version__}
    if name == "fig9":
        config["budgets"] = checked
        config["attack_kwargs"] = _QUICK_ATTACKS if quick else "library defaults"
    else:
        config.update(sigmas=list(sigmas), radii=list(FIG6_RADII), n0=n0, n=n_cert, alpha=0.001)
    result = {"figure": name, "title": FIGURES[name], "config": config, "rows": rows, "timings": timings,
              "wall_seconds": wall, "resumed": resumed}
    reused = f" ({len(resumed)} cells reused from an earlier run of the same command, in OUT/state)" if resumed else ""
    md = f"# {FIGURES[name]}\n\nWall time {wall:.0f} s{reused}.\n\n{table.markdown_grid()}"
    atomic_write_bytes(out / f"{name}.md", md.encode("utf-8"))
    atomic_write_bytes(out / f"{name}_table.json", table.to_json().encode("utf-8"))
    atomic_write_bytes(out / f"{name}.json", (json.dumps(result, indent=1, default=str) + "\n").encode("utf-8"))
    logger.info("figure %s done in %.0f s; wrote %s", name, wall, out)
    return {**result, "table": table}
