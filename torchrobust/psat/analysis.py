"""PSAT Tables 3, 4 and 6 on MNIST: member analysis, inference strategy and direct aggregation (Gong et al. 2023).

* **Table 3** ("Member analysis"): each hypernetwork member alone — H_NAT (standard training, the ``"natural"``
  member), H_Linf, H_L2, H_L1 — then PSAT (the three AT members, lowest entropy, Eq. 12) and PSAT + H_NAT (four
  members, lowest entropy). The paper: appending H_NAT raises clean accuracy and drops adversarial accuracy to
  zero, "probably because the standard trained hypernetwork will dominate the lowest-entropy output".
* **Table 4** ("Inference strategy"): PSAT with the lowest-entropy output against the members' average.
* **Table 6** ("Comparison with direct aggregation"): single directly parameterised models against PSAT, with their
  parameter counts and the saving against one plain model. Here the single models are the plain MSD CNN trained
  per norm (AT_Linf, AT_L2, AT_L1) and the direct aggregate is those three under the lowest-entropy gate (3 × a
  plain model's parameters). The paper's single-model rows are multi-norm ResNet-50s (AT_max/avg/msd/MNG-AC); ours
  for those are the Table 1 run (``psat experiment baselines``/``evaluate``).

Every model is trained by the library's one loop (:func:`~torchrobust.psat.train.train_members` /
:func:`~torchrobust.psat.train.train_baselines`, i.e. :func:`torchrobust.train.fit`) into the run folder, where the
other stages find them (``Linf.safetensors`` … ``natural.safetensors``, ``AT_Linf.safetensors`` …). A checkpoint
already there is reused when its recorded training settings match (strategy, ε, attack steps, the whole
:class:`~torchrobust.psat.train.PSATTrainConfig`, the model spec and, where recorded, the training data); any
difference is refused before work. Every row is evaluated by :func:`torchrobust.psat.evaluation.evaluate` (PGD with
restarts per norm, the adaptive attack on aggregates, optionally the reference AutoAttack) and cached in
``tables/<row>.eval.json`` (reused while the test data, the attack settings and the checkpoints are unchanged), so
rows shared by tables are computed once. The tables (``psat_table3/4/6.{md,csv,json}`` in the run folder) put the
paper's CIFAR-10 ResNet-50 numbers (:mod:`torchrobust.psat.paper_numbers`) beside ours and give each row's training
and evaluation wall seconds and the command's wall time; with AutoAttack, ``psat_<table>_attacks.md`` gives each
attack's own accuracy per norm beside the worst case.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from torchrobust import checkpoint
from torchrobust.errors import TorchRobustError, unknown_name
from torchrobust.io import write_texts
from torchrobust.psat import models as psat_models
from torchrobust.psat import paper_numbers as paper
from torchrobust.psat.adversary import MNIST_BUDGETS
from torchrobust.psat.metrics import NORMS, MultiNormRow, format_attack_breakdown
from torchrobust.psat.metrics import table as multinorm_table
from torchrobust.psat.train import PSATTrainConfig, data_settings, member_path, train_baselines, train_members
from torchrobust.tables import Column, ColumnKind, Table

__all__ = ["TABLES", "ROWS", "TABLE_ROWS", "RowSpec", "models_for", "check_tables", "ensure_models", "run_tables"]

log = logging.getLogger(__name__)

#: The tables this module writes (``--only`` of ``torchrobust psat experiment tables``).
TABLES = ("table3", "table4", "table6")
#: Checkpoint stem → (training strategy, hyper member?): members are hyper MSD CNNs, ``AT_<norm>`` plain MSD CNNs.
MODELS: dict[str, tuple[str, bool]] = {**{k: (k, True) for k in (*NORMS, "natural")},
                                       **{f"AT_{k}": (k, False) for k in NORMS}}
_CACHE = "tables"  # run-folder subdirectory of the per-row evaluations


@dataclass(frozen=True)
class RowSpec:
    """One evaluated row: the checkpoints it uses (stems in the run folder) and, for several, the aggregation."""

    models: tuple[str, ...]
    strategy: str = "entropy"


#: Every row of the three tables, by name.
ROWS: dict[str, RowSpec] = {
    "H_NAT": RowSpec(("natural",)),
    **{f"H_{k}": RowSpec((k,)) for k in NORMS},
    "PSAT": RowSpec(NORMS),
    "PSAT + H_NAT": RowSpec((*NORMS, "natural")),
    "PSAT (average)": RowSpec(NORMS, "average"),
    **{f"AT_{k}": RowSpec((f"AT_{k}",)) for k in NORMS},
    "Direct aggregate": RowSpec(tuple(f"AT_{k}" for k in NORMS)),
}
#: Table → its rows as (label in the table, row of :data:`ROWS`, the paper's row).
TABLE_ROWS: dict[str, tuple[tuple[str, str, Any], ...]] = {
    "table3": (("H_NAT", "H_NAT", "H_NAT"), ("H_Linf", "H_Linf", "H_Linf"), ("H_L2", "H_L2", "H_L2"),
               ("H_L1", "H_L1", "H_L1"), ("PSAT", "PSAT", "PSAT"), ("PSAT + H_NAT", "PSAT + H_NAT", "PSAT + H_NAT")),
    "table4": (("Entropy", "PSAT", "entropy"), ("Average", "PSAT (average)", "average")),
    "table6": (("AT_Linf", "AT_Linf", None), ("AT_L2", "AT_L2", None), ("AT_L1", "AT_L1", None),
               ("Direct aggregate", "Direct aggregate", None), ("PSAT", "PSAT", None)),
}
_TITLES = {"table3": "PSAT Table 3 on MNIST: single hypernetwork members, PSAT and PSAT + H_NAT",
           "table4": "PSAT Table 4 on MNIST: lowest-entropy vs average inference",
           "table6": "PSAT Table 6 on MNIST: single models, direct aggregation and PSAT"}


def models_for(tables: Sequence[str]) -> list[str]:
    """The checkpoint stems the ``tables`` need, in :data:`MODELS` order."""
    need = {m for t in tables for _, r, _ in TABLE_ROWS[t] for m in ROWS[r].models}
    return [m for m in MODELS if m in need]


def check_tables(tables: Sequence[str]) -> list[str]:
    """``tables`` (default: all of :data:`TABLES`) checked before any work; unknown names raise (one line)."""
    if not tables:
        return list(TABLES)
    for t in tables:
        if t not in TABLES:
            raise unknown_name("table", t, TABLES)
    return list(dict.fromkeys(tables))


def _expected(stem: str, arch_kwargs: Mapping[str, Any], steps: int, config: PSATTrainConfig,
              data: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a checkpoint of ``stem`` records when trained by :func:`ensure_models` with these arguments."""
    strategy, hyper = MODELS[stem]
    with torch.device("meta"):
        model = psat_models.create("hyper_msd_cnn" if hyper else "msd_cnn", **arch_kwargs)
    settings = {"model": model.torchrobust_spec, "strategy": strategy, "eps": dict(MNIST_BUDGETS),
                "steps": dict.fromkeys(NORMS, steps), "alpha": {}, "train_config": asdict(config), **data}
    return json.loads(json.dumps(settings))


def ensure_models(out_dir: str | os.PathLike[str], stems: Sequence[str], data: tuple[Tensor, Tensor],
                  config: PSATTrainConfig, train_steps: int, arch_kwargs: Mapping[str, Any]) -> dict[str, Path]:
    """Train the checkpoints ``stems`` that ``out_dir`` lacks; reuse the others. All existing ones are checked first:
    one trained with other settings is refused (one-line error naming the settings) before anything is trained; one
    written before checkpoints recorded their training data (``n_train``, ``train_data_sha256``) is reused with a
    warning. Members (``Linf``/``L2``/``L1``/``natural``) are hyper MSD CNNs with ``arch_kwargs``
    (:func:`train_members`); ``AT_<norm>`` are plain MSD CNNs (:func:`train_baselines`); ``train_steps``-step
    training attacks. Returns stem → path."""
    config = config.validate()
    recorded_data = data_settings(data)
    out = Path(out_dir)
    missing: list[str] = []
    for stem in stems:
        path = member_path(out, stem)
        if not path.is_file():
            missing.append(stem)
            continue
        doc = checkpoint.load_metadata(path)
        saved = {**doc.get("metadata", {}), "model": {k: doc.get("model", {}).get(k) for k in ("name", "kwargs")}}
        want = _expected(stem, arch_kwargs, train_steps, config, recorded_data)
        unknown = [k for k in recorded_data if k not in saved]
        if unknown:
            log.warning("%s records no %s (trained before checkpoints did); its training data is not checked",
                        path, ", ".join(unknown))
        diff = [k for k in want if k not in unknown and json.loads(json.dumps(saved.get(k))) != want[k]]
        if diff:
            raise TorchRobustError(f"{path} was trained with other settings ({', '.join(diff)}); pass the settings "
                                   "it was trained with, use another --out or delete it")
        log.info("reusing %s", path)
    members = [s for s in missing if MODELS[s][1]]
    plain = [s for s in missing if not MODELS[s][1]]
    steps = dict.fromkeys(NORMS, train_steps)
    if members:
        train_members(out, data, threats=members, arch="hyper_msd_cnn", arch_kwargs=dict(arch_kwargs), steps=steps,
                      config=config)
    if plain:
        train_baselines(out, data, strategies=[MODELS[s][0] for s in plain], arch="msd_cnn", steps=steps,
                        config=config)
    return {s: member_path(out, s) for s in stems}


def _evaluate_row(name: str, spec: RowSpec, paths: Mapping[str, Path], test: tuple[Tensor, Tensor],
                  eval_kw: Mapping[str, Any]) -> MultiNormRow:
    from torchrobust.psat.evaluation import evaluate

    if len(spec.models) == 1:
        (stem,) = spec.models  # a member key ("Linf", "natural") makes a member row, "AT_*" a baseline row
        rows = evaluate({stem: paths[stem]}, data=test, n_test=len(test[0]), **eval_kw)
    else:  # aggregate: keyed by threat so PSATEnsemble takes them as its members
        source = {MODELS[s][0]: paths[s] for s in spec.models}
        rows = evaluate(source, data=test, n_test=len(test[0]), members=False, strategies=(spec.strategy,),
                        **eval_kw)
    return replace(rows[-1], name=name)


def _cached_rows(folder: Path, names: Sequence[str], paths: Mapping[str, Path], test: tuple[Tensor, Tensor],
                 settings: Mapping[str, Any], eval_kw: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]], int]:
    """Each row of ``names`` from ``folder/<row>.eval.json`` when its settings and checkpoints match, else evaluated
    (and cached). Returns row → cache document and the number of rows evaluated now."""
    docs: dict[str, dict[str, Any]] = {}
    fresh = 0
    for name in names:
        spec = ROWS[name]
        stamps = {s: paths[s].stat().st_mtime_ns for s in spec.models}
        slug = name.replace(" + ", "_plus_").replace(" ", "_").replace("(", "").replace(")", "")
        cached = folder / f"{slug}.eval.json"
        try:
            doc = json.loads(cached.read_text()) if cached.is_file() else {}
        except (OSError, json.JSONDecodeError):
            log.warning("re-evaluating %s: %s is unreadable", name, cached)
            doc = {}
        if doc.get("settings") == settings and doc.get("checkpoints_mtime_ns") == stamps:
            log.info("reusing the evaluation of %s (%s)", name, cached)
        else:
            log.info("evaluating %s", name)
            t0 = time.perf_counter()
            torch.manual_seed(int(settings["seed"]))  # PGD's random starts: the same for every row and rerun
            row = _evaluate_row(name, spec, paths, test, eval_kw)
            doc = {"settings": dict(settings), "checkpoints_mtime_ns": stamps, "eval_seconds": time.perf_counter() - t0,
                   "row": asdict(row)}
            write_texts(folder, f"{slug}.eval", {"json": json.dumps(doc, indent=1) + "\n"})
            fresh += 1
        docs[name] = doc
    return docs, fresh


_SOURCE_OURS = "ours (MNIST)"
_SOURCE_PAPER = "paper (CIFAR-10, ResNet-50)"


def _seconds_columns() -> list[Column]:
    return [Column("train_s", ColumnKind.SECONDS, digits=0, label="train wall s", missing="–"),
            Column("eval_s", ColumnKind.SECONDS, digits=0, label="eval wall s", missing="–")]


def _accuracy_table(table: str, rows: Mapping[str, MultiNormRow], timing: Mapping[str, dict[str, float]]) -> Table:
    """Tables 3 and 4: our rows (PSAT Table 1 columns, :func:`torchrobust.psat.metrics.table`), each followed by
    the paper's row."""
    spec = TABLE_ROWS[table]
    base = multinorm_table([replace(rows[r], name=label) for label, r, _ in spec])
    cols = [base.columns[0], Column("source", ColumnKind.TEXT, label="Source"),
            *(c for c in base.columns[1:] if c.name != "n"), *_seconds_columns(), Column("n", ColumnKind.INT,
                                                                                         missing="–")]
    ref = paper.TABLE3 if table == "table3" else paper.TABLE4
    data: list[dict[str, Any]] = []
    for (label, r, key), d in zip(spec, base.rows, strict=True):
        data.append({**d, "source": _SOURCE_OURS, **timing[r]})
        p = ref[key]
        data.append({"method": label, "source": _SOURCE_PAPER, **{k: round(v / 100, 6) for k, v in p.items()}})
    return Table(cols, data, title=_TITLES[table])


def _table6(rows: Mapping[str, MultiNormRow], timing: Mapping[str, dict[str, float]]) -> Table:
    """Table 6: trade-off, parameters and saving against one plain model; ours, then the paper's rows."""
    group = {"Direct aggregate": ("Direct aggregate", "AT_Linf + AT_L2 + AT_L1, lowest entropy"),
             "PSAT": ("Ours", "PSAT: H_Linf + H_L2 + H_L1, lowest entropy")}
    base = multinorm_table([])  # Table 1's columns, formatters included (params "3.275M", saving "↑200.00%")
    cols = [Column("model", ColumnKind.TEXT, label="Model"), Column("method", ColumnKind.TEXT, label="Method"),
            Column("source", ColumnKind.TEXT, label="Source"),
            *(base.column(c) for c in ("trade_off", "union", "params", "saving")),
            *_seconds_columns(), Column("n", ColumnKind.INT, missing="–")]
    data: list[dict[str, Any]] = []
    for label, r, _ in TABLE_ROWS["table6"]:
        row = rows[r]
        model, method = group.get(r, ("Single model", f"{label} (plain MSD CNN)"))
        data.append({"model": model, "method": method, "source": _SOURCE_OURS, "trade_off": row.trade_off,
                     "union": row.union, "params": row.params, "saving": row.saving, "n": row.n, **timing[r]})
    for model, method, trade, params, saving in paper.TABLE6:
        data.append({"model": model, "method": method, "source": _SOURCE_PAPER, "trade_off": round(trade / 100, 6),
                     "params": params, "saving": saving})
    return Table(cols, data, title=_TITLES["table6"])


def _timing(names: Sequence[str], docs: Mapping[str, Mapping[str, Any]], paths: Mapping[str, Path]
            ) -> dict[str, dict[str, float]]:
    """Per row: the training wall seconds of its checkpoints (summed) and its evaluation's wall seconds."""
    out: dict[str, dict[str, float]] = {}
    for name in names:
        train = [checkpoint.load_metadata(paths[s])["metadata"].get("train_seconds") for s in ROWS[name].models]
        out[name] = {"train_s": sum(t for t in train if t is not None) if all(t is not None for t in train)
                     else None, "eval_s": docs[name].get("eval_seconds")}
    return out


def run_tables(out_dir: str | os.PathLike[str], train_data: tuple[Tensor, Tensor], test_data: tuple[Tensor, Tensor],
               tables: Sequence[str] = TABLES, config: PSATTrainConfig | None = None, train_steps: int = 10,
               eval_steps: int = 50, restarts: int = 3, autoattack: Sequence[str] | None = None,
               arch_kwargs: Mapping[str, Any] | None = None, seed: int = 0) -> list[Path]:
    """Train what ``tables`` need (:func:`ensure_models`), evaluate their rows (PGD with ``eval_steps`` steps and
    ``restarts`` per norm, MNIST budgets, the adaptive attack on aggregates; ``autoattack``: also the reference
    AutoAttack, ``[]`` its full standard version; torch seeded with ``seed`` before each row) and write
    ``psat_<table>.{md,csv,json}`` into ``out_dir``. Tables, AutoAttack names and existing checkpoints are checked
    before any work. Returns the written paths (checkpoints trained or reused first)."""
    t0 = time.perf_counter()
    tables = check_tables(tables)
    if autoattack is not None:
        from torchrobust.psat.evaluation import autoattack_attacks

        autoattack_attacks(MNIST_BUDGETS, list(autoattack) or None)  # unknown names / missing package: now
    cfg = (config or PSATTrainConfig()).validate()
    arch_kwargs = dict(arch_kwargs or {})
    out = Path(out_dir)
    before = {s: member_path(out, s).is_file() for s in models_for(tables)}
    paths = ensure_models(out, models_for(tables), train_data, cfg, train_steps, arch_kwargs)
    names = list(dict.fromkeys(r for t in tables for _, r, _ in TABLE_ROWS[t]))
    digest = hashlib.sha256(test_data[0].contiguous().numpy().tobytes() + test_data[1].contiguous().numpy().tobytes())
    settings = json.loads(json.dumps({"test_data_sha256": digest.hexdigest(), "n_test": len(test_data[0]),
                                      "eval_steps": eval_steps, "restarts": restarts, "seed": seed,
                                      "autoattack": None if autoattack is None else list(autoattack)}))
    eval_kw = {"steps": dict.fromkeys(NORMS, eval_steps), "alpha": {}, "restarts": restarts,
               "autoattack": None if autoattack is None else list(autoattack)}
    docs, fresh = _cached_rows(out / _CACHE, names, paths, test_data, settings, eval_kw)
    rows = {n: MultiNormRow(**d["row"]) for n, d in docs.items()}
    timing = _timing(names, docs, paths)
    wall = time.perf_counter() - t0
    trained = [s for s, was in before.items() if not was]
    note = (f"This command: {wall:.0f} s wall; trained now: {', '.join(trained) or 'none'}; rows evaluated now: "
            f"{fresh} of {len(names)} (the others reused from {_CACHE}/*.eval.json). Training: {cfg.epochs} epoch(s), "
            f"{train_steps}-step attacks, {len(train_data[0])} images; evaluation: {len(test_data[0])} test images, "
            f"PGD {eval_steps} steps × {restarts} restart(s) per norm (adaptive on aggregates)"
            + ("" if autoattack is None else f", AutoAttack {', '.join(autoattack) or 'standard'}") + ".")
    caveat = ("The paper's rows are CIFAR-10 ResNet-50 numbers (ε 8/255, 0.5, 12), shown for the shape of the "
              "comparison only; ours are MNIST with the MSD CNN (ε 0.3, 2.0, 10). Union is the strict per-example "
              "worst case (not in the paper); Max (loss) is the paper's Acc^max.")
    written: list[Path] = list(paths.values())
    for t in tables:
        table = _table6(rows, timing) if t == "table6" else _accuracy_table(t, rows, timing)
        table = replace(table, notes=(note, caveat))
        extra = {"wall_seconds": wall, "settings": settings, "train_config": asdict(cfg),
                 "train_steps": train_steps, "trained_now": trained, "rows_evaluated_now": fresh}
        texts = {"md": table.to_markdown(), "csv": table.to_csv(), "json": table.to_json(extra=extra)}
        written += write_texts(out, f"psat_{t}", texts).values()
        breakdown = format_attack_breakdown([replace(rows[r], name=label) for label, r, _ in TABLE_ROWS[t]])
        if breakdown:  # with --autoattack: each attack's own accuracy beside the worst case (as psat_table_attacks)
            written += write_texts(out, f"psat_{t}_attacks", {"md": breakdown}).values()
        log.info("%s\n%s", t, table.markdown_grid())
    return written
