r"""The full adaptive evaluation of the reprogrammed MNIST models (Hou et al., ICLR 2025, Sec. 4 paradigms 1–3).

The paper's MNIST tables report one-step FGSM only (Tables 1, 2, 7, 8; its App. C.3 Figure 9 adds ℓ0/ℓ2/ℓ∞ budgets;
``docs/paper-code-facts.md#reprogramming-evaluation-protocol``). This experiment puts three evaluations side by
side, on the same test images and per example:

* **FGSM** — the paper's protocol, ``clip(x + ε·sign(∇ₓ CE), 0, 1)`` (Goodfellow et al. 2015), with the paper's
  number beside it where the paper reports one;
* **PGD-20** — ℓ∞ PGD (Madry et al. 2018), 20 steps, random start, white-box through all K IRLS iterations;
* **adaptive** — :func:`torchrobust.evaluate.adaptive.evaluate_adaptive` on the points that survive FGSM and
  PGD-20: APGD-CE + APGD-T (Croce & Hein 2020; the reference AutoAttack's or ours, see
  :data:`~torchrobust.experiments.adaptive_cell.BUDGETS`), BPDA through the NRPM layers with the IRLS weights held
  constant (Athalye et al. 2018), transfer from the same weights without NRPM, then Square and SPSA on the
  survivors. The reported *adaptive* accuracy is the per-example worst case over **all** attacks
  (FGSM, PGD-20 and the suite): an example counts only if it is correct clean and after every attack
  (Carlini et al. 2019, Sec. 5.1). Running the suite on the FGSM/PGD-20 survivors gives exactly the same worst
  case as running it on every point (a point broken once stays broken), at a fraction of the cost — the
  cascade AutoAttack itself uses.

Models (rows), built with the presets' recipes (:func:`torchrobust.experiments.reprogramming.train_paper_model`):
the activation-free 784-256-64-10 MLP and LeNet, standard-trained ("backbone", paradigm 0 — the undefended
reference), then reprogrammed with paradigm 1 (fixed λ, K: the MLP's best Table-8 row λ = 0.8, K = 4; LeNet's
paper-code default λ = 0.3, K = 1), paradigm 2 (λ learned) and paradigm 3 (weights and λ learned), both from
λ = 0.5, K = 1 under FGSM training at ε = 0.3 as Table 1's rows.

Resumable. Every model is checkpointed (:func:`torchrobust.checkpoint.save`) under ``out_dir/models`` and
reloaded on a rerun. Every (model, paradigm, ε) cell is kept, as soon as it is finished, in the presets' store of
finished results (:class:`torchrobust.experiments.preset_cache.PresetCache`, one row per cell:
``state_dir/row-<arch>-p<k>-eps<ε>-<key>``, :mod:`torchrobust.resume` states, safetensors + JSON, never a
pickle); inside a cell the adaptive suite keeps its per-attack state under the same key
(``state_dir/rowstate-<cell>-<key>-adaptive``), so rerunning the same command after an interruption reuses the
finished cells and restarts the unfinished one at the attack it was running. The key is a SHA-256 over everything
a cell depends on: seed, device, threads, torch version, the library's code (any change to its sources
recomputes every cell), the test images, ``n_test``, the training profile, the model's weights (so a retrained
checkpoint in ``out_dir/models`` is never matched with an old cell), the cell's ε and its attack budget. Another
computation gets another key and is computed afresh (stale states are left, never read); a file at a state's path
that is not a torchrobust state of that cell (a planted pickle, a truncated or edited state) is refused with a
one-line error. Cells stored by versions before this layout (``state_dir/cell-*.json``, ``adaptive-*``) are not
read: they are recomputed.

Command (the run documented in ``docs/adaptive-evaluation.md``)::

    nice -n 5 torchrobust paper adaptive --out results/adaptive

From Python::

    >>> from torchrobust.experiments.adaptive_reprogramming import run
    >>> res = run("results/adaptive", n_test=100)
    >>> res["rows"][0]["cells"]["0.1"]["adaptive"]
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchrobust.errors import TorchRobustError, unknown_name
from torchrobust.experiments.adaptive_cell import (
    BUDGETS,
    AttackBudget,
    evaluate_cell,
    weak_whitebox_note,
    whitebox_label,
)
from torchrobust.experiments.preset_cache import PresetCache
from torchrobust.io import atomic_write_bytes
from torchrobust.resume import fingerprint_model, fingerprint_tensors
from torchrobust.tables import Column, ColumnKind, Table

__all__ = ["run", "get_model", "AttackBudget", "BUDGETS", "ARCHS", "PARADIGM_NAMES", "paper_fgsm"]

logger = logging.getLogger(__name__)

ARCHS: tuple[str, ...] = ("mlp", "lenet")
PARADIGM_NAMES: dict[int, str] = {
    0: "backbone (undefended)",
    1: "P1: fixed λ",
    2: "P2: learned λ",
    3: "P3: learned weights + λ",
}
_ARCH_LABEL = {"mlp": "MLP 784-256-64-10", "lenet": "LeNet"}
_RESULT_NAME = "adaptive_reprogramming"


def paper_fgsm(arch: str, paradigm: int, eps: float) -> float | None:
    """The paper's FGSM accuracy (%) for a row at ``eps``, or None where the paper reports none.

    MLP: backbone = Table 1 "Normal-train"; paradigm 1 = Table 8 (λ = 0.8, K = 4); paradigms 2 and 3 = Table 1.
    LeNet: the paper shows its MNIST LeNet results only as figures (Figures 3, 4), so there is no number to
    transcribe.
    """
    from torchrobust.experiments.reprogramming import EPS_GRID, PAPER, PARADIGM1

    if arch != "mlp":
        return None
    key = min(range(len(EPS_GRID)), key=lambda i: abs(EPS_GRID[i] - eps))
    if abs(EPS_GRID[key] - eps) > 1e-9:
        return None
    if paradigm == 0:
        return PAPER["table1"]["Normal-train"][key]
    if paradigm == 1:
        row = PAPER["table8"].get(PARADIGM1["mlp"])
        return row[key] if row else None
    return PAPER["table1"][f"Paradigm {paradigm}"][key]


# ------------------------------------------------------------------------------------------------ helpers
def _eps_key(e: float) -> str:
    return f"{e:g}"


def _cell_name(arch: str, paradigm: int, e: float) -> str:
    return f"{arch}-p{paradigm}-eps{_eps_key(e)}"


def _lams(model: nn.Module) -> list[float] | None:
    from torchrobust.reprogramming import is_reprogrammed, learned_lams

    if not is_reprogrammed(model):
        return None
    return [round(v, 3) for v in learned_lams(model).values()]


def _K(model: nn.Module) -> int | None:
    from torchrobust.reprogramming import nrpm_layers

    ks = {int(getattr(m, "K", -1)) for m in nrpm_layers(model).values()}
    return ks.pop() if len(ks) == 1 else None


def _config(n_test: int, eps: Sequence[float], budgets: dict[str, AttackBudget], seed: int,
            profile: str) -> dict[str, Any]:
    return {"n_test": n_test, "eps": [float(e) for e in eps], "budget": {a: asdict(b) for a, b in budgets.items()},
            "seed": seed, "profile": profile, "threat": "Linf"}


def _compute_cell(model: nn.Module, base: nn.Module | None, x: torch.Tensor, y: torch.Tensor, e: float,
                  budget: AttackBudget, seed: int, state: Path, progress: bool, arch: str, p: int) -> dict[str, Any]:
    """One cell (:func:`evaluate_cell`, the suite's per-attack state at ``state``) with the paper's number beside it."""
    cell = evaluate_cell(model, base, x, y, e, budget, seed, state, progress)
    cell["paper_fgsm"] = paper_fgsm(arch, p, e)
    logger.info("cell %s: clean %.1f FGSM %.1f PGD-20 %.1f adaptive %.1f", _cell_name(arch, p, e), cell["clean"],
                cell["fgsm"], cell["pgd20"], cell["adaptive"])
    return cell


def _resolve_budget(budget: str | AttackBudget | Mapping[str, AttackBudget],
                    models: Sequence[str]) -> dict[str, AttackBudget]:
    if isinstance(budget, str):
        if budget not in BUDGETS:
            raise unknown_name("budget", budget, BUDGETS)
        budget = BUDGETS[budget]
    if isinstance(budget, AttackBudget):
        return {a: budget for a in models}
    missing = [a for a in models if not isinstance(budget.get(a), AttackBudget)]
    if missing:
        raise TorchRobustError(f"budget has no AttackBudget for {', '.join(missing)}; give one per model or a "
                               "single AttackBudget")
    return {a: budget[a] for a in models}


def get_model(arch: str, paradigm: int, models_dir: Path, backbone: nn.Module | None,
               train_data: tuple[torch.Tensor, torch.Tensor], *, profile: str, seed: int, device: str | None,
               progress: bool, timings: dict[str, float], nrpm: bool = True) -> nn.Module:
    """Load ``models_dir/<arch>-p<k>.safetensors`` if it was trained with this profile/seed, else train it.
    ``nrpm=False`` (paradigm 3): paradigm 3's fine-tuning without NRPM, kept as ``<arch>-p3-plain.safetensors``."""
    from torchrobust import checkpoint
    from torchrobust.experiments.reprogramming import train_paper_model

    path = models_dir / f"{arch}-p{paradigm}{'' if nrpm else '-plain'}.safetensors"
    want = {"experiment": _RESULT_NAME, "arch": arch, "paradigm": paradigm, "profile": profile, "seed": seed,
            **({} if nrpm else {"nrpm": False})}
    if path.is_file():
        meta = checkpoint.load_metadata(path).get("metadata") or {}
        if {k: meta.get(k) for k in want} != want:
            raise TorchRobustError(f"{path} was trained with another configuration ({meta}); delete it or pass "
                                   "another out_dir")
        logger.info("loaded %s", path)
        return checkpoint.load(path, map_location=device or "cpu").eval()
    t0 = time.perf_counter()
    model = train_paper_model(arch, paradigm, backbone=backbone, train_data=train_data, profile=profile, seed=seed,
                              device=device, progress=progress, nrpm=nrpm)
    timings[f"train {path.name.removesuffix('.safetensors')}"] = round(time.perf_counter() - t0, 1)
    checkpoint.save(model, path, **want, lams=_lams(model))
    return model.eval()


# ------------------------------------------------------------------------------------------------ output
def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def _markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    eps = [_eps_key(e) for e in cfg["eps"]]

    def suite(a: str, b: dict[str, Any]) -> str:
        return (f"{_ARCH_LABEL[a]}: white-box {whitebox_label(b)}; BPDA-PGD and transfer-PGD (CE + margin, "
                f"{b['steps']} steps × {b['restarts']} restart(s)); Square {b['square_queries']} queries and SPSA "
                f"{b['spsa_steps']} steps × {b['spsa_samples']} samples on the survivors")

    lines = [
        "# Adaptive evaluation of the reprogrammed MNIST models", "",
        f"First {cfg['n_test']} MNIST test images, ℓ∞, seed {cfg['seed']}, training profile `{cfg['profile']}`. "
        "Accuracy in %; an example counts only if it is correct clean and after the attack. "
        "**adaptive** is the per-example worst case over FGSM, PGD-20 and the adaptive suite, run on the points "
        "that survive FGSM and PGD-20. *paper* is the paper's FGSM number (the paper's MNIST tables report "
        "FGSM only - its Figure 9 adds ℓ0/ℓ2/ℓ∞ attacks without a table; LeNet: figures only, no number). "
        f"Wall time of this invocation {result['wall_seconds']:.0f} s; "
        f"attack time of the cells in the table {sum(result['cell_seconds'].values()):.0f} s, training "
        f"{sum(result['timings'].values()):.0f} s (this invocation).", "",
        "Adaptive suite: " + "; ".join(suite(a, b) for a, b in cfg["budget"].items()) + ".", "",
    ]
    weak = [n for a, b in cfg["budget"].items() if (n := weak_whitebox_note(b, _ARCH_LABEL[a])) is not None]
    lines += [*weak, ""] if weak else []
    acc = {"missing": "–", "digits": 1, "unit": "%"}  # accuracies stored in % already
    text = ColumnKind.TEXT
    main = Table([Column("model", text), Column("paradigm", text), Column("λ", text, missing="–"),
                  Column("K", ColumnKind.INT, missing="–"), Column("clean", ColumnKind.FLOAT, **acc),
                  *(Column(f"ε={e} {a}", text) for e in eps for a in ("FGSM (paper)", "PGD-20", "adaptive")),
                  Column("reliable", ColumnKind.BOOL, missing="–")], [])
    for r in result["rows"]:
        cells = r["cells"]
        row: dict[str, Any] = {"model": _ARCH_LABEL[r["arch"]], "paradigm": PARADIGM_NAMES[r["paradigm"]],
                               "λ": None if r.get("lams") is None else ", ".join(f"{v:.2f}" for v in r["lams"]),
                               "K": r.get("K"), "clean": next((c["clean"] for c in cells.values()), None),
                               "reliable": all(c["reliable"] for c in cells.values()) if cells else None}
        for e in eps:
            c = cells.get(e)
            shown = (["(not run)"] * 3 if c is None else
                     [f"{_fmt(c['fgsm'])} ({_fmt(c['paper_fgsm'])})", _fmt(c["pgd20"]), f"**{_fmt(c['adaptive'])}**"])
            row.update(zip((f"ε={e} FGSM (paper)", f"ε={e} PGD-20", f"ε={e} adaptive"), shown, strict=True))
        main.rows.append(row)
    per_cell = Table([Column("model", text), Column("paradigm", text), Column("ε", text),
                      *(Column(k, ColumnKind.FLOAT, label=h, **acc) for k, h in
                        (("clean", "clean"), ("fgsm", "FGSM"), ("pgd20", "PGD-20"), ("adaptive", "adaptive"))),
                      Column("first", text, label="first broken by (FGSM / PGD-20 / suite)"),
                      Column("broke_most", text, label="suite: broke most"), Column("flags", text),
                      Column("seconds", ColumnKind.SECONDS, digits=0, label="time (s)")], [])
    for r in result["rows"]:
        for e, c in r["cells"].items():
            s = c["suite"]
            bm = s.get("broke_most")
            bm_s = f"{bm} ({s['broken_by'][bm]}/{s['n_attacked']})" if bm else (
                "– (nothing left to attack)" if s["n_attacked"] == 0 else f"none of {s['n_attacked']}")
            fb = c["first_broken_by"]
            per_cell.rows.append({**c, "model": _ARCH_LABEL[r["arch"]], "paradigm": str(r["paradigm"]), "ε": e,
                                  "first": f"{fb['fgsm']} / {fb['pgd20']} / {fb['adaptive suite']}",
                                  "broke_most": bm_s, "flags": ", ".join(c["flags"]) or "–",
                                  "seconds": sum(c["seconds"].values())})
    lines += [main.markdown_grid().rstrip("\n"), "", "## Per cell: what broke the points, flags, time", "",
              "*first broken by*: how many points each stage broke first (FGSM, then PGD-20, then the suite). "
              "*suite: broke most*: among the points that survived FGSM and PGD-20, the suite attack that broke "
              "the most of them on its own (counts of every attack in the JSON).", "",
              per_cell.markdown_grid().rstrip("\n")]
    statements = []
    for r in result["rows"]:
        for e, c in r["cells"].items():
            p = c.get("paper_fgsm")
            if p is not None and c["adaptive"] < p:
                statements.append(
                    f"- {_ARCH_LABEL[r['arch']]}, {PARADIGM_NAMES[r['paradigm']]}, ε={e}: the paper reports "
                    f"{p:.1f} % under FGSM; we measure {c['fgsm']:.1f} % under FGSM, {c['pgd20']:.1f} % under "
                    f"PGD-20 and **{c['adaptive']:.1f} %** under the adaptive suite.")
    if statements:
        lines += ["", "## Where our adaptive number is lower than the paper's", "", *statements]
    missing = result.get("missing_cells") or []
    if missing:
        lines += ["", f"**Partial run**: {len(missing)} cell(s) not evaluated yet: {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ entry point
def run(out_dir: str | Path, n_test: int = 100, eps: Sequence[float] = (0.1, 0.2, 0.3),
        models: Sequence[str] = ARCHS, paradigms: Sequence[int] = (1, 2, 3), state_dir: str | Path | None = None,
        seed: int = 0, threads: int | None = 1, progress: bool = True, *, baseline: bool = True,
        budget: str | AttackBudget | Mapping[str, AttackBudget] = "default", profile: str = "fast",
        device: str | None = None, report_only: bool = False, steps: int | None = None,
        square_queries: int | None = None) -> dict[str, Any]:
    """Train (or reload) the models, evaluate every (model, paradigm, ε) cell, write JSON + Markdown.

    Args:
        out_dir: output folder: ``adaptive_reprogramming.json`` / ``.md`` and ``models/*.safetensors``.
        n_test: the first ``n_test`` MNIST test images (every column is measured on the same images).
        eps: ℓ∞ budgets.
        models: a subset of ``("mlp", "lenet")``.
        paradigms: a subset of ``(1, 2, 3)``; ``baseline=True`` adds the undefended backbone (paradigm 0).
        state_dir: where the finished cells and the adaptive suite's state files go (default
            ``out_dir/state``; see the module docstring); a rerun of the same computation skips finished cells.
        seed: seeds training (as the presets) and every randomised attack.
        threads: ``torch.set_num_threads`` during the run (restored afterwards); None leaves it.
        progress: tqdm bars over the cells and the attacks.
        budget: a name of :data:`BUDGETS` (``"default"``: APGD-class white-box for both models; ``"fast"``: LeNet
            with the earlier PGD-50 white-box, labelled weak in the report; ``"strong"``, ``"quick"``), one
            :class:`AttackBudget` for every model, or a mapping model name → :class:`AttackBudget`. A white-box stage
            weaker than the default strong evaluation (``whitebox="pgd"``) is labelled so beside the table.
        profile: training profile of the presets (:data:`torchrobust.experiments.reprogramming.PROFILES`).
        device: e.g. ``"cuda"``; default CPU.
        report_only: train and attack nothing: write the table of the cells finished so far (e.g. while other
            processes work on other models in the same ``out_dir``/``state_dir``; unfinished cells, and those of a
            model without its checkpoint in ``out_dir/models``, are listed as missing); a one-line error when no
            cell of this computation is stored.
        steps, square_queries: when given, replace :attr:`AttackBudget.steps` (the suite's PGD steps) and
            :attr:`AttackBudget.square_queries` (Square's query budget) in every model's budget.

    Returns:
        The result written as JSON: ``config``, ``rows`` (one per model × paradigm: ``arch``, ``paradigm``,
        ``lams``, ``K``, ``cells`` keyed by ε with ``clean``, ``fgsm``, ``paper_fgsm``, ``pgd20``, ``adaptive``,
        ``first_broken_by``, ``suite`` (per-attack counts, flags, times), ``reliable``), ``timings``,
        ``wall_seconds``, ``missing_cells``, ``files``.
    """
    from torchrobust.experiments.reprogramming import PROFILES, load_mnist

    bad = [m for m in models if m not in ARCHS]
    if bad or not models:
        raise unknown_name("model", bad[0] if bad else "", ARCHS)
    if not paradigms and not baseline or any(p not in (1, 2, 3) for p in paradigms):
        raise TorchRobustError(f"paradigms={tuple(paradigms)!r} must be a subset of (1, 2, 3)")
    if not isinstance(n_test, int) or not 1 <= n_test <= 10000:
        raise TorchRobustError(f"n_test={n_test!r} must be an integer in 1..10000 (the MNIST test set)")
    if not eps or any(not 0 < float(e) <= 1 for e in eps):
        raise TorchRobustError(f"eps={tuple(eps)!r}: give ℓ∞ budgets in (0, 1], e.g. 0.1 0.2 0.3")
    budgets = _resolve_budget(budget, models)
    for name, value in (("steps", steps), ("square_queries", square_queries)):
        if value is not None:
            if not isinstance(value, int) or value < 1:
                raise TorchRobustError(f"{name}={value!r} must be an integer >= 1")
            budgets = {a: replace(b, **{name: value}) for a, b in budgets.items()}
    if profile not in PROFILES:
        raise unknown_name("profile", profile, PROFILES)
    out = Path(out_dir)
    models_dir = out / "models"
    sdir = Path(state_dir) if state_dir is not None else out / "state"
    for d in (out, models_dir, sdir):
        d.mkdir(parents=True, exist_ok=True)
    cfg = _config(n_test, eps, budgets, seed, profile)
    plist = ([0] if baseline else []) + sorted(set(paradigms))
    cells_todo = [(a, p, float(e)) for a in models for p in plist for e in eps]

    timings: dict[str, float] = {}
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    t_start = time.perf_counter()

    def write_results() -> dict[str, Any]:
        """Write the JSON + Markdown of what is finished (after every cell, so a partial run has a table)."""
        done = {(r["arch"], r["paradigm"], k) for r in rows.values() for k in r["cells"]}
        missing = [_cell_name(a, p, e) for a, p, e in cells_todo if (a, p, _eps_key(e)) not in done]
        result: dict[str, Any] = {
            "experiment": _RESULT_NAME,
            "config": {**cfg, "models": list(models), "paradigms": plist, "torch": torch.__version__,
                       "device": device or "cpu", "threads": threads},
            "rows": list(rows.values()),
            "timings": dict(timings),
            "wall_seconds": round(time.perf_counter() - t_start, 1),
            "cell_seconds": {f"{r['arch']}-p{r['paradigm']}-eps{k}": round(sum(c["seconds"].values()), 1)
                             for r in rows.values() for k, c in r["cells"].items()},
            "missing_cells": missing,
            "files": [f"{_RESULT_NAME}.json", f"{_RESULT_NAME}.md"],
        }
        atomic_write_bytes(out / f"{_RESULT_NAME}.md", _markdown(result).encode("utf-8"))
        atomic_write_bytes(out / f"{_RESULT_NAME}.json", (json.dumps(result, indent=1, default=str) + "\n").encode())
        return result

    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    bar = None
    try:
        x_tr, y_tr, x_te, y_te = load_mnist(PROFILES[profile], seed)
        x, y = x_te[:n_test], y_te[:n_test]
        cache = PresetCache(sdir, {"seed": seed, "device": device or "cpu", "threads": threads,
                                   "torch": torch.__version__},
                            {"experiment": _RESULT_NAME, "n_test": n_test, "profile": profile, "threat": "Linf"},
                            test_data=fingerprint_tensors(x, y))  # evaluation only: the models are checkpointed
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(cells_todo), desc="adaptive cells")
        for arch in models:
            loaded: dict[int, nn.Module] = {}

            def model_for(p: int, arch: str = arch, loaded: dict[int, nn.Module] = loaded) -> nn.Module | None:
                if p not in loaded:
                    if report_only and not (models_dir / f"{arch}-p{p}.safetensors").is_file():
                        return None
                    bb = model_for(0) if p > 0 and not report_only else None
                    loaded[p] = get_model(arch, p, models_dir, bb, (x_tr, y_tr), profile=profile, seed=seed,
                                           device=device, progress=progress, timings=timings)
                return loaded[p]

            for p in plist:
                model = model_for(p)
                row = {"arch": arch, "paradigm": p, "name": PARADIGM_NAMES[p],
                       "lams": _lams(model) if model is not None else None,
                       "K": _K(model) if p > 0 and model is not None else None, "cells": {}}
                rows[(arch, p)] = row
                if model is None:  # report_only without the model's checkpoint: its cells cannot be keyed
                    continue
                model_fp = fingerprint_model(model)  # every weight hashed once per model, not once per cell
                base = None
                if p > 0 and not report_only:
                    from torchrobust.reprogramming import unreprogram

                    base = unreprogram(copy.deepcopy(model)).eval()
                for e in eps:
                    name = _cell_name(arch, p, float(e))
                    # the cell's key: this run's evaluation, the model by fingerprint, the cell's name, ε and budget
                    key = cache.row_key(name, model_fp, {"eps": float(e), "budget": asdict(budgets[arch])})
                    if report_only:
                        stored = cache.stored_row(name, key)
                        if stored is None:
                            continue
                        cell = stored[0]
                    else:
                        # an interrupted cell continues inside the suite from its per-attack state, named by the key
                        cell = cache.row(name, key, partial(_compute_cell, model, base, x, y, float(e), budgets[arch],
                                                            seed, cache.row_state_stem(name, key, "adaptive"),
                                                            progress, arch, p))[0]
                    row["cells"][_eps_key(float(e))] = cell
                    write_results()
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix_str(f"{name} adaptive={cell['adaptive']:.1f}")
        if report_only and not any(r["cells"] for r in rows.values()):
            raise TorchRobustError(f"report_only: no finished cell of this run in {sdir} (none of these models, data, "
                                   "budgets and code); run the same command without --report-only first, or pass "
                                   "the state_dir of the run that computed them")
    finally:
        if bar is not None:
            bar.close()
        if threads is not None:
            torch.set_num_threads(old_threads)
    result = write_results()
    logger.info("adaptive evaluation done in %.0f s; wrote %s", result["wall_seconds"], out)
    return result
