"""Evaluate PSAT members, the aggregate and the multi-norm baselines into one PSAT Table 1-style table.

:func:`evaluate` is the CLI entry point: it loads the checkpoints written by
:func:`~torchrobust.psat.train.train_members` / :func:`~torchrobust.psat.train.train_baselines` from a directory
(or explicit paths), attacks each model with PGD per norm (restarts, best iterate kept) on the first ``n_test``
test images, and returns :class:`~torchrobust.psat.metrics.MultiNormRow` rows; :func:`write_tables` writes them as
Markdown, CSV, LaTeX and JSON. The aggregate is attacked adaptively (end to end + each member, per-example worst).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from torchrobust.attacks.threat import THREAT_NAMES
from torchrobust.errors import TorchRobustError
from torchrobust.evaluate.engine import job_for_attack, run_plan
from torchrobust.psat import models as psat_models
from torchrobust.psat.adversary import MNIST_BUDGETS, PGDConfig, pgd
from torchrobust.psat.aggregate import PSATEnsemble, Strategy, canonical_threat
from torchrobust.psat.metrics import NORMS, MultiNormRow, evaluate_multi_norm, format_attack_breakdown, format_table
from torchrobust.psat.metrics import table as multinorm_table
from torchrobust.psat.train import data_tensors, load_member, member_path
from torchrobust.tables import Column, ColumnKind, Table
from torchrobust.validation import eval_mode

__all__ = ["evaluate", "evaluate_to_dir", "write_tables", "TABLE_FILES", "pgd_attacks", "autoattack_attacks",
           "routing", "format_routing", "routing_table", "routing_json", "table_json", "read_table_json",
           "EVAL_STEPS", "EVAL_ALPHA"]

log = logging.getLogger(__name__)
AttackFn = Callable[[nn.Module, Tensor, Tensor], Tensor]

#: robust_union's MNIST evaluation attacks (ℓ∞ 50 steps α 0.01, ℓ2 100 steps α 0.1, ℓ1 50 steps; 10 restarts).
EVAL_STEPS: dict[str, int] = {"Linf": 50, "L2": 100, "L1": 50}
EVAL_ALPHA: dict[str, float] = {"Linf": 0.01, "L2": 0.1}


def pgd_attacks(eps: Mapping[str, float], steps: Mapping[str, int] | None = None,
                alpha: Mapping[str, float] | None = None, restarts: int = 10) -> dict[str, AttackFn]:
    """PGD per norm (best iterate over steps and restarts, random starts) as ``attack(model, x, y)``."""
    steps = dict(EVAL_STEPS if steps is None else steps)
    alpha = dict(EVAL_ALPHA if alpha is None else alpha)
    out: dict[str, AttackFn] = {}
    for k in NORMS:
        cfg = PGDConfig(k, float(eps[k]), int(steps.get(k, EVAL_STEPS[k])), alpha.get(k), restarts=restarts)
        out[k] = lambda m, x, y, cfg=cfg: pgd(m, x, y, cfg)
    return out


def autoattack_attacks(eps: Mapping[str, float], attacks_to_run: Sequence[str] | None = ("apgd-ce", "apgd-t"),
                       version: str = "standard", seed: int = 0, batch_size: int = 250) -> dict[str, AttackFn]:
    """The reference AutoAttack per norm (:func:`~torchrobust.attacks.run_autoattack`) as ``attack(model, x, y)``.

    The default runs APGD-CE and APGD-T with the standard version's hyper-parameters (ℓ∞/ℓ2: 1 restart, 9 target
    classes; ℓ1: ``use_largereps``, 5 restarts, 5 target classes); ``attacks_to_run=None`` runs the full standard
    AutoAttack (adds FAB-T and Square with 5000 queries), several times the cost."""
    from torchrobust.attacks.autoattack import AA_ATTACKS, reference_autoattack, run_autoattack

    bad = [a for a in attacks_to_run or () if a not in AA_ATTACKS]
    if bad:
        raise TorchRobustError(f"unknown AutoAttack sub-attack(s) {bad}; valid: {', '.join(AA_ATTACKS)}")
    reference_autoattack()  # fails now, with the install hint, rather than after the PGD rows
    out: dict[str, AttackFn] = {}
    for k in NORMS:
        def aa(m: nn.Module, x: Tensor, y: Tensor, k: str = k) -> Tensor:
            return run_autoattack(m, x, y, threat=k, eps=float(eps[k]), version=version,
                                  attacks_to_run=attacks_to_run, seed=seed, batch_size=batch_size).x_adv
        out[k] = aa
    return out


#: Keys of a ``source`` mapping that name members (the rest name baseline checkpoints).
_MEMBER_KEYS = tuple(t.lower() for t in (*THREAT_NAMES, "natural"))


def evaluate(source: str | os.PathLike[str] | Mapping[str, str | os.PathLike[str]],
             data: Dataset | tuple[Tensor, Tensor] | None = None, n_test: int = 1000,
             eps: Mapping[str, float] | None = None,
             steps: Mapping[str, int] | None = None, alpha: Mapping[str, float] | None = None, restarts: int = 10,
             threats: Sequence[str] = THREAT_NAMES, strategies: Sequence[Strategy] = ("entropy",),
             members: bool = True, baselines: Sequence[str] | None = None,
             attacks: Mapping[str, AttackFn] | None = None, batch_size: int = 250,
             device: str | torch.device = "cpu", dataset: str = "mnist",
             autoattack: Sequence[str] | None = None, autoattack_adaptive: bool = False,
             cascade: bool = True) -> list[MultiNormRow]:
    """Evaluate a PSAT run.

    Args:
        source: the ``out_dir`` of :func:`train_members` (baselines ``AT_*.safetensors`` found there are
            evaluated too), or a mapping row name → checkpoint path where names that are threat models
            (``Linf``/``L2``/``L1``) are PSAT members and any other name is a baseline.
        data: test set (default: ``torchrobust.data.load(dataset, "test")``); the first ``n_test`` are used.
        eps, steps, alpha, restarts: attack budgets and PGD settings per norm (defaults: MNIST,
            :data:`EVAL_STEPS`, :data:`EVAL_ALPHA`, 10 restarts — robust_union's evaluation).
        strategies: aggregate rows to report (``"entropy"``, ``"average"``).
        members: also report each member alone (PSAT Table 3's member analysis).
        baselines: names of baselines to include (default: all ``AT_*`` checkpoints in ``source``).
        attacks: override the attacks (``threat -> attack(model, x, y)``), e.g. ``torchrobust.attacks.PGD``.
        autoattack: also run the reference AutoAttack per norm with these sub-attacks (e.g.
            ``["apgd-ce", "apgd-t"]``; ``[]`` for the full standard version) and report, per example, the worst
            case over PGD and AutoAttack, in ``row.extra["<norm>/pgd"]`` and ``row.extra["<norm>/autoattack"]``
            the accuracy after each.
        cascade: with ``autoattack``, run AutoAttack only on the examples PGD did not fool (AutoAttack's own
            protocol: the same worst case, cheaper); ``row.extra["<norm>/autoattack"]`` is then the accuracy after
            both. ``False`` runs AutoAttack on every example and records its accuracy alone.
        autoattack_adaptive: run AutoAttack on the aggregate adaptively too (end to end and on each member alone:
            twice the cost with three members). By default only PGD is adaptive and AutoAttack runs end to end.
    """
    eps = dict(eps or MNIST_BUDGETS)
    if isinstance(source, Mapping):
        member_paths = {canonical_threat(k): Path(v) for k, v in source.items() if k.lower() in _MEMBER_KEYS}
        base_paths = {k: Path(v) for k, v in source.items() if k.lower() not in _MEMBER_KEYS}
    else:
        root = Path(source)
        if not root.is_dir():
            raise TorchRobustError(f"PSAT run directory not found: {root}; pass the out_dir of train_members")
        member_paths = {canonical_threat(t): member_path(root, canonical_threat(t)) for t in threats}
        member_paths = {k: p for k, p in member_paths.items() if p.is_file()}
        names = baselines if baselines is not None else sorted(p.stem for p in root.glob("AT_*.safetensors"))
        base_paths = {n: member_path(root, n) for n in names}
    if not member_paths and not base_paths:
        raise TorchRobustError(f"no PSAT member or baseline checkpoints found in {source}; run train_members first")
    if data is None:
        from torchrobust import data as tr_data

        data = tr_data.load(dataset, "test")
    x, y = data_tensors(data)
    x, y = x[:n_test], y[:n_test]
    atk: dict[str, AttackFn | dict[str, AttackFn]] = (dict(attacks) if attacks is not None
                                                      else pgd_attacks(eps, steps, alpha, restarts))
    adaptive: bool | tuple[str, ...] = True
    tol = 1e-6
    mn_kw: dict[str, Any] = {}
    if autoattack is not None:
        aa = autoattack_attacks(eps, list(autoattack) or None, batch_size=batch_size)
        atk = {k: {"pgd": atk[k], "autoattack": aa[k]} for k in NORMS}
        adaptive = True if autoattack_adaptive else ("pgd",)
        tol = 1e-5  # the reference's float32 projections (see torchrobust.attacks.autoattack)
        mn_kw["cascade"] = cascade
    rows: list[MultiNormRow] = []
    loaded = {k: load_member(p, device) for k, p in member_paths.items()}
    plain_params: int | None = None
    if loaded:
        first = next(iter(loaded.values()))
        plain_params = psat_models.count_parameters(psat_models.plain_counterpart(first))

    def saving(p: int) -> float | None:
        return None if plain_params is None else 1.0 - p / plain_params

    if members:
        for k, m in loaded.items():
            p = psat_models.count_parameters(m)
            log.info("evaluating member %s", k)
            rows.append(evaluate_multi_norm(f"H_{k}", m, x, y, atk, eps, batch_size, params=p, saving=saving(p),
                                            tol=tol, **mn_kw))
    if len(loaded) > 1:
        for s in strategies:
            ens = PSATEnsemble(loaded, strategy=s)
            p = psat_models.count_parameters(ens)
            log.info("evaluating PSAT aggregate (%s)", s)
            rows.append(evaluate_multi_norm(f"PSAT ({s})", ens, x, y, atk, eps, batch_size, adaptive=adaptive,
                                            params=p, saving=saving(p), tol=tol, **mn_kw))
    for name, path in base_paths.items():
        m = load_member(path, device)
        p = psat_models.count_parameters(m)
        log.info("evaluating baseline %s", name)
        base_plain = psat_models.count_parameters(psat_models.plain_counterpart(m))
        rows.append(evaluate_multi_norm(name, m, x, y, atk, eps, batch_size, params=p, saving=1.0 - p / base_plain,
                                        tol=tol, **mn_kw))
    return rows


def routing(ensemble: PSATEnsemble, x: Tensor, y: Tensor, attacks: Mapping[str, AttackFn],
            batch_size: int = 250) -> list[dict[str, Any]]:
    """Where Eq. 12's lowest-entropy gate routes inputs: on the clean ``x`` and, for every member ``p`` with an
    attack in ``attacks``, on ``attacks[p]`` crafted against member ``p`` alone (its own threat model — the input
    the gate should send to ``p``). Per condition: how many inputs go to each member, the aggregate's accuracy and
    the accuracy of the member trained for that threat model (``None`` for clean inputs).

    The attacks run on every input as jobs of the evaluation engine (``source`` = the member, ``keep_adv``,
    ``all_points``); a torchrobust attack is budget-checked against its own threat model, a plain callable against
    the [0, 1] box.
    """
    if ensemble.strategy != "entropy":
        raise TorchRobustError("routing is defined for strategy='entropy' only")
    names = ensemble.threats
    conditions: list[tuple[str, str | None]] = [("clean", None)] + [(k, k) for k in names if k in attacks]
    jobs = {k: job_for_attack(attacks[k], name=f"routing-{k}", source=k, keep_adv=True, all_points=True)
            for _, k in conditions if k is not None}
    adv = run_plan(ensemble, x, y, list(jobs.values()), sources={k: ensemble.members[k] for k in jobs},
                   batch_size=batch_size).adv if jobs else {}
    rows: list[dict[str, Any]] = []
    for label, k in conditions:
        counts = dict.fromkeys(names, 0)
        agg_ok = own_ok = 0
        for i in range(0, len(x), batch_size):
            yb = y[i:i + batch_size]
            xb = x[i:i + batch_size] if k is None else adv[jobs[k].key][i:i + batch_size].to(x.device)
            with torch.no_grad(), eval_mode(ensemble):
                out, idx = ensemble.forward_with_selection(xb)
                assert idx is not None
                for j in idx.tolist():
                    counts[names[j]] += 1
                agg_ok += int((out.argmax(-1) == yb).sum())
                if k is not None:
                    own_ok += int((ensemble.members[k](xb).argmax(-1) == yb).sum())
        n = len(x)
        rows.append({"input": label, "n": n, "routed": counts, "aggregate_acc": agg_ok / n,
                     "own_member_acc": None if k is None else own_ok / n})
    return rows


def routing_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """:func:`routing` as a flat :class:`torchrobust.tables.Table` (one ``→ member`` count column per member)."""
    names = list(rows[0]["routed"]) if rows else []
    cols = [Column("input", ColumnKind.TEXT), *(Column(f"→ {m}", ColumnKind.INT) for m in names),
            Column("aggregate_acc", ColumnKind.PERCENT, label="aggregate acc %"),
            Column("own_member_acc", ColumnKind.PERCENT, label="own member acc %", missing="–")]
    data = [{**r, "input": "clean" if r["input"] == "clean" else f"{r['input']} PGD vs H_{r['input']}",
             **{f"→ {m}": r["routed"][m] for m in names}} for r in rows]
    return Table(cols, data)


def format_routing(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of :func:`routing` (:func:`routing_table`)."""
    return routing_table(rows).markdown_grid()


def routing_json(rows: Sequence[Mapping[str, Any]]) -> str:
    """``routing.json`` text: the Table JSON of :func:`routing_table` (``title``, ``notes``, ``columns``,
    ``rows``: read by ``torchrobust report``) plus the raw :func:`routing` rows under ``"routing"``."""
    return routing_table(rows).to_json(extra={"routing": list(rows)})


def table_json(rows: Sequence[MultiNormRow]) -> str:
    """``psat_table.json`` text: the Table JSON of :func:`torchrobust.psat.metrics.table` (``columns`` with kinds,
    flat ``rows``: read by ``torchrobust report``) plus each row's :meth:`MultiNormRow.as_dict` under
    ``"multinorm_rows"`` (read back by :func:`read_table_json`). NaN is written as ``null``."""
    return multinorm_table(rows).to_json(extra={"multinorm_rows": [r.as_dict() for r in rows]})


def read_table_json(text: str) -> list[dict[str, Any]]:
    """The :meth:`MultiNormRow.as_dict` rows of a :func:`table_json` document (or of the plain list that older
    versions and ``part_*.json`` files hold)."""
    doc = json.loads(text)
    rows = doc.get("multinorm_rows") if isinstance(doc, Mapping) else doc
    if not isinstance(rows, list):
        raise TorchRobustError("not a PSAT table JSON (no 'multinorm_rows' list); pass a psat_table.json or "
                               "part_*.json written by torchrobust psat")
    return rows


def write_tables(rows: Sequence[MultiNormRow], out_dir: str | os.PathLike[str],
                 stem: str = "psat_table") -> dict[str, Path]:
    """Write ``rows`` as ``<stem>.md``, ``.csv``, ``.tex`` and ``.json`` in ``out_dir`` (and, when rows carry a
    per-attack breakdown, ``<stem>_attacks.md``); returns the paths."""
    from torchrobust.io import write_texts

    texts = {"md": format_table(rows, "markdown"), "csv": format_table(rows, "csv"),
             "tex": format_table(rows, "latex"), "json": table_json(rows)}
    paths = write_texts(out_dir, stem, texts)
    breakdown = format_attack_breakdown(rows)
    if breakdown:
        paths["attacks_md"] = write_texts(out_dir, f"{stem}_attacks", {"md": breakdown})["md"]
    return paths


#: The files :func:`write_tables` writes with its default stem (the ``_attacks`` table only when rows carry one).
TABLE_FILES = ("psat_table.md", "psat_table.csv", "psat_table.tex", "psat_table.json", "psat_table_attacks.md")


def evaluate_to_dir(run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None,
                    n_test: int = 1000, restarts: int = 10, steps: int | None = None,
                    strategies: Sequence[Strategy] = ("entropy",), dataset: str = "mnist",
                    autoattack: Sequence[str] | None = None, seed: int = 0,
                    overwrite: bool = False) -> dict[str, Path]:
    """``torchrobust psat evaluate RUN_DIR``: :func:`evaluate` the run (PGD with ``steps`` per norm, default
    :data:`EVAL_STEPS`, and ``restarts``; AutoAttack sub-attacks ``autoattack``) on the first ``n_test`` test
    examples and :func:`write_tables` into ``out_dir`` (default: ``run_dir``).

    Checks before any work that ``run_dir`` is a folder and that ``out_dir`` holds none of :data:`TABLE_FILES`
    (unless ``overwrite``); seeds torch with ``seed``. Returns the written paths (keys as :func:`write_tables`).
    """
    from torchrobust.validation import check_output_dir

    if not Path(run_dir).is_dir():
        raise TorchRobustError(f"PSAT run directory not found: {run_dir}; pass the out_dir of train_members")
    out = run_dir if out_dir is None else out_dir
    check_output_dir(out, TABLE_FILES, overwrite=overwrite)
    torch.manual_seed(seed)
    rows = evaluate(run_dir, n_test=n_test, restarts=restarts,
                    steps=None if steps is None else {t: steps for t in THREAT_NAMES},
                    strategies=strategies, dataset=dataset, autoattack=autoattack)
    return write_tables(rows, out)
