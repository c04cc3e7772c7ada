"""The reports of the reprogramming presets (:mod:`torchrobust.experiments.reprogramming`): the Markdown written as
``<name>.md`` and the flat, typed :class:`~torchrobust.tables.Table` s written as ``<name>_*table.json`` for
``torchrobust report``. A weak-only robust column (PGD-20), and an adaptive column whose white-box stage is weaker than
the default strong evaluation (``whitebox="pgd"``, e.g. LeNet's ``fast`` budget), are labelled weak in both."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torchrobust.evaluate.sweeps import upper_bound_note
from torchrobust.experiments.adaptive_cell import weak_whitebox_note, whitebox_label
from torchrobust.experiments.paper_numbers import EPS_GRID
from torchrobust.experiments.reprogramming_protocol import strong_title
from torchrobust.tables import Column, ColumnKind, Table

__all__ = ["PGD_WEAK_NOTE", "markdown", "report_tables"]

#: the label of the PGD-20 table (``robust_eval="pgd20"``): a weak-only robust number says so
PGD_WEAK_NOTE = ("**Strength: weak** — PGD with one restart and < 50 steps overstates robustness; the default "
                 "robust evaluation (`--robust strong`) is the worst case over FGSM, APGD-CE and APGD-T.")


def _robust_table(result: dict[str, Any], key: str, column: Callable[[str, str], Column], scale: float,
                  **table_kw: Any) -> Table | None:
    """The rows carrying ``key`` (``"pgd20"`` or ``"strong"``, stored in %) as one table: clean then each ε, the
    values times ``scale``; None when no row has it."""
    rows = [r for r in result["rows"] if key in r]
    if not rows:
        return None
    keys = list(rows[0][key].keys())
    return Table([Column("row", ColumnKind.TEXT), *(column(k, "clean" if k == "clean" else f"ε={k}") for k in keys)],
                 [{"row": r["row"], **{k: r[key][k] * scale for k in keys}} for r in rows], **table_kw)


#: the robust_eval="adaptive" table: its title and what it is
ADAPTIVE_TITLE = "Adaptive suite: FGSM, PGD-20, then white-box, BPDA, transfer, Square and SPSA on the survivors"
ADAPTIVE_NOTE = ("Per-example worst case over every attack (torchrobust.experiments.adaptive_cell, the protocol of "
                 "docs/adaptive-evaluation.md; its budget under `config.adaptive_suite`); FGSM and PGD-20 alone are in "
                 "the JSON (`adaptive_stages`), the suite's flags under `adaptive_flags`.")


def _adaptive_notes(result: dict[str, Any]) -> tuple[str, ...]:
    """The notes of the adaptive table: what it is, what its white-box stage ran (``config.adaptive_suite``) and,
    when that stage is weaker than the default strong evaluation (``whitebox="pgd"``), the weak label."""
    budget = result["config"].get("adaptive_suite")
    if not budget:
        return (ADAPTIVE_NOTE,)
    name = result["config"].get("adaptive_budget")
    stage = f"White-box stage{f' (budget `{name}`)' if name else ''}: {whitebox_label(budget)}."
    weak = weak_whitebox_note(budget)
    return (ADAPTIVE_NOTE, stage, *((weak,) if weak else ()))


def _upper_bound_note(result: dict[str, Any]) -> str | None:
    """The note naming the rows whose strong evaluation the sweep flagged (``strong_flags``: ``BPDA_NOT_EVALUATED``
    on NRPM models) as upper bounds (:func:`torchrobust.evaluate.sweeps.upper_bound_note`); None when no row is
    flagged."""
    return upper_bound_note({r["row"]: r.get("strong_flags") or () for r in result["rows"]},
                            adaptive_command="torchrobust paper adaptive", defence="NRPM")


def markdown(result: dict[str, Any]) -> str:
    """The Markdown report of a preset result (``<name>.md``): FGSM ours vs paper, the robust evaluation, the
    embedding differences and figures when the preset has them."""
    lines = [f"# {result['title']}", ""]
    cfg = result["config"]
    kind = cfg.get("robust_eval", "pgd20")
    robust = (f"PGD-{cfg['pgd_steps']} (ℓ∞, random start)" if kind == "pgd20" else
              "the adaptive protocol (ℓ∞: FGSM, PGD-20, then the adaptive suite on their survivors; per-example "
              "worst case)" if kind == "adaptive" else
              f"the default strong evaluation (ℓ∞, per-example worst case over "
              f"{', '.join(a.upper() for a in cfg.get('robust_attacks') or ())})")
    lines.append(
        f"Profile `{cfg['profile']}`, seed {cfg['seed']}; FGSM on the first {cfg['n_test']} MNIST test images, "
        f"{robust} on the first {cfg['n_pgd']}. Accuracy in %; an example counts "
        f"only if it is also correct on the clean input. Wall time {result['wall_seconds']:.0f} s"
        + (f" ({len(result['resumed'])} trainings and rows reused from an earlier run of the same command, "
           "stored in its state folder)." if result.get("resumed") else ".")
    )
    lines.append("")
    acc = ColumnKind.FLOAT  # these accuracies are stored in % already

    def eps_cells(vals: Sequence[float] | None) -> dict[str, float]:
        return {f"ε={e:g}": v for e, v in zip(EPS_GRID, vals, strict=True)} if vals else {}

    fgsm = Table([Column("row", ColumnKind.TEXT), Column("source", ColumnKind.TEXT),
                  *(Column(f"ε={e:g}", acc, unit="%", digits=1, missing="–") for e in EPS_GRID),
                  Column("λ", ColumnKind.TEXT, missing="")], [])
    for r in result["rows"]:
        fgsm.rows.append({"row": r["row"], "source": "ours", **eps_cells(r["fgsm"]), "λ": r.get("lams")})
        if r.get("paper_fgsm") is not None:
            fgsm.rows.append({"row": "", "source": "paper", **eps_cells(r["paper_fgsm"]), "λ": r.get("paper_lams")})
    lines += ["## FGSM (ours vs paper)", "", fgsm.markdown_grid().rstrip("\n")]
    diverged = [r for r in result["rows"] if r.get("diverged")]
    if diverged:
        lines += ["", "**Training diverged** (no accuracies: the model does not exist; `–` in the tables):", ""]
        lines += [f"* {r['row']}: {r['diverged']}" for r in diverged]
    def in_percent(k: str, label: str) -> Column:
        return Column(k, acc, unit="%", digits=1, label=label)

    pgd = _robust_table(result, "pgd20", in_percent, 1.0)
    if pgd is not None:
        lines += ["", f"## PGD-{cfg['pgd_steps']} (ours only; the paper reports no PGD numbers on MNIST)", "",
                  PGD_WEAK_NOTE, "", pgd.markdown_grid().rstrip("\n")]
    strong = _robust_table(result, "strong", in_percent, 1.0)
    if strong is not None:
        lines += ["", f"## {strong_title(cfg['robust_attacks'])} "
                  "(ours only; the paper's MNIST tables report FGSM only)",
                  "", "An example counts only if it is correct clean and after every attack; each attack's own "
                  "accuracy is in the JSON (`strong_attacks`)."]
        note = _upper_bound_note(result)
        lines += ["", note] if note else []
        lines += ["", strong.markdown_grid().rstrip("\n")]
    adaptive = _robust_table(result, "adaptive", in_percent, 1.0)
    if adaptive is not None:
        lines += ["", f"## {ADAPTIVE_TITLE} (ours only)", ""]
        for note in _adaptive_notes(result):
            lines += [note, ""]
        lines += [adaptive.markdown_grid().rstrip("\n")]
    emb = result.get("embedding_differences")
    if emb:
        heads = {"l1": "ℓ1", "l2": "ℓ2", "l2_sq": "ℓ2²", "linf": "ℓ∞", "paper_l1": "paper ℓ1",
                 "paper_l2_column": "paper ℓ2 (=ℓ2²)", "paper_linf": "paper ℓ∞"}
        diffs = Table([Column("model", ColumnKind.TEXT), Column("emb", ColumnKind.TEXT, label="emb."),
                       *(Column(k, ColumnKind.FLOAT, digits=2, label=h, missing="–") for k, h in heads.items())],
                      [{**r, "model": label, "emb": f"{r['label']} ({r['layer']})"}
                       for label, rows in emb.items() for r in rows])
        lines += ["", "## Embedding differences (FGSM ε = 0.3)", "",
                  "The paper's ℓ2 column is the squared ℓ2 norm (see torchrobust.evaluate.embeddings).", "",
                  diffs.markdown_grid().rstrip("\n")]
    for key, fname in (result.get("figures") or {}).items():
        lines += ["", f"![{key}]({fname})"]
    return "\n".join(lines) + "\n"


def report_tables(result: dict[str, Any]) -> dict[str, Table]:
    """The flat, typed tables of a preset result for ``torchrobust report``: ``"table"`` (FGSM, ours and paper
    rows) and, when rows carry them, ``"strong_table"`` (the default strong evaluation's worst case) or
    ``"pgd_table"`` (PGD-20, ``robust_eval="pgd20"``). Accuracies are ``PERCENT`` columns holding fractions
    (the nested result stores them in %)."""
    title = str(result.get("title") or result.get("preset") or "")

    def pct(name: str, label: str | None = None) -> Column:
        return Column(name, ColumnKind.PERCENT, digits=1, label=label, missing="–")

    def frac(vals: Sequence[float] | None) -> dict[str, float]:
        return {f"ε={e:g}": v / 100 for e, v in zip(EPS_GRID, vals, strict=True)} if vals else {}

    def lams(v: Any) -> str | None:
        return None if v is None else str(v)

    fgsm = Table([Column("row", ColumnKind.TEXT), Column("source", ColumnKind.TEXT),
                  *(pct(f"ε={e:g}") for e in EPS_GRID), Column("λ", ColumnKind.TEXT, missing="")], [],
                 title=f"{title} — FGSM (ours vs paper)")
    for r in result["rows"]:
        fgsm.rows.append({"row": r["row"], "source": "ours", **frac(r["fgsm"]), "λ": lams(r.get("lams"))})
        if r.get("paper_fgsm") is not None:
            fgsm.rows.append({"row": r["row"], "source": "paper", **frac(r["paper_fgsm"]),
                              "λ": lams(r.get("paper_lams"))})
    out = {"table": fgsm}
    pgd = _robust_table(result, "pgd20", pct, 0.01, title=f"{title} — PGD-{result['config']['pgd_steps']}",
                        notes=(PGD_WEAK_NOTE,))
    if pgd is not None:
        out["pgd_table"] = pgd
    note = _upper_bound_note(result)
    strong = _robust_table(result, "strong", pct, 0.01,
                           title=f"{title} — {strong_title(result['config'].get('robust_attacks') or ())}",
                           notes=(note,) if note else ())
    if strong is not None:
        out["strong_table"] = strong
    adaptive = _robust_table(result, "adaptive", pct, 0.01, title=f"{title} — {ADAPTIVE_TITLE}",
                             notes=_adaptive_notes(result))
    if adaptive is not None:
        out["adaptive_table"] = adaptive
    return out
