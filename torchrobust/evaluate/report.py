"""``torchrobust report RUN_DIR``: one self-contained HTML page (tables, figures, flags) plus Markdown, CSV and
LaTeX tables, built from the result files that evaluations leave in a run folder.

Recognised inputs (searched recursively under ``RUN_DIR``):

* ``results.json`` of :meth:`torchrobust.evaluate.SweepResult.write` (one model) or of ``torchrobust demo``
  (several models side by side): accuracy-vs-ε tables;
* ``certify.json`` of ``torchrobust certify``: certified accuracy vs radius;
* any other ``*.json`` holding a list of flat rows under ``"table"`` or ``"rows"`` (paper presets, c_r search,
  PSAT metrics): shown as a table;

A table is typed by the column schema the writer stored beside its rows (``"columns"``: the
:meth:`torchrobust.tables.Table.schema` of the result object, e.g. ``PERCENT`` for accuracies stored as
fractions): the report renders each column by its kind and never guesses. Rows stored without a schema (files
from older versions) are shown as plain numbers and text.
* every ``*.png``: embedded as a figure (base64, so the page needs no other file).

Every table also goes to ``report/<name>.{csv,md,tex}``. Results that carry gradient-masking flags (see
``flags.md``) are marked **UNRELIABLE** wherever they appear, with the flag codes and advice.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TorchRobustError
from ..io import atomic_write_bytes
from ..tables import Column, ColumnKind
from ..tables import Table as ResultTable

__all__ = ["build_report", "latex_table", "ReportTable", "Table"]

log = logging.getLogger(__name__)


#: shown on every table computed only from weak attacks
WEAK_LABEL = ("Strength: weak — computed only from weak attacks (FGSM, or PGD with one restart and < 50 steps); it "
              "overstates robustness. The default attacks (APGD-CE + APGD-T) give a trustworthy number.")


@dataclass
class ReportTable:
    """One table of the report: the typed :class:`torchrobust.tables.Table` (its title is the heading) and what
    the report says about it (flags, weak-attack strength, source file)."""

    name: str
    table: ResultTable
    flags: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""
    #: ``"weak"`` when the run was computed only from weak attacks (FGSM, short PGD), ``"strong"``, or unknown
    strength: str | None = None

    @property
    def title(self) -> str:
        return self.table.title or self.name

    @property
    def percent(self) -> bool:
        """Whether some column holds accuracies shown in % (a ``PERCENT`` column)."""
        return self.table.has_kind(ColumnKind.PERCENT)


#: the former name
Table = ReportTable


def _is_flat_rows(v: Any) -> bool:
    return (isinstance(v, list) and bool(v) and all(isinstance(r, Mapping) for r in v)
            and all(not isinstance(x, (Mapping, list)) for r in v for x in r.values()))


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_") or "table"


def _typed(rows: list[dict[str, Any]], schema: Any, title: str, where: str) -> ResultTable:
    """``rows`` typed by the stored column ``schema``; without one (or with an unreadable one) every column is a
    plain number/text column — percentages are never guessed."""
    if isinstance(schema, list):
        try:
            return ResultTable([Column.from_dict(c) for c in schema], rows, title=title)
        except TorchRobustError as exc:
            log.warning("%s: ignoring its column schema (%s)", where, exc)
    return ResultTable.from_rows(rows, title=title)


def _collect(run_dir: Path) -> tuple[list[ReportTable], list[Path], bool]:
    tables: list[ReportTable] = []
    checked = False
    for path in sorted(run_dir.rglob("*.json")):
        if "report" in path.relative_to(run_dir).parts[:1] or path.name.endswith(".safetensors.json"):
            continue
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            log.warning("skipping unreadable %s", path)
            continue
        if not isinstance(doc, Mapping):
            continue
        rel = str(path.relative_to(run_dir))
        checked = checked or bool(doc.get("checks_run"))
        flags = list(doc.get("flags") or [])
        strengths = [doc.get("strength")]
        for sub in (doc.get("models") or {}).values() if isinstance(doc.get("models"), Mapping) else []:
            flags += list((sub or {}).get("flags") or [])
            strengths.append((sub or {}).get("strength"))
        strength = "weak" if "weak" in strengths else "strong" if "strong" in strengths else None
        if path.name == "certify.json" and "radii" in doc:
            rows = [{"radius": r, "certified_accuracy": a}
                    for r, a in zip(doc["radii"], doc["certified_accuracy"], strict=True)]
            cert = ResultTable([Column("radius", ColumnKind.FLOAT), Column("certified_accuracy", ColumnKind.PERCENT)],
                               rows, title=f"Certified accuracy vs radius (σ={doc.get('sigma')}, n={doc.get('n')}, "
                                           f"{doc.get('n_examples')} examples) — {rel}")
            tables.append(ReportTable(_slug(rel[:-5]), cert, flags, rel))
            continue
        for key in ("table", "rows"):
            if _is_flat_rows(doc.get(key)):
                title = str(doc.get("title") or doc.get("preset") or rel)
                typed = _typed(list(doc[key]), doc.get("columns"), f"{title} — {rel}", rel)
                tables.append(ReportTable(_slug(rel[:-5]), typed, flags, rel, strength))
                break
    figures = sorted(p for p in run_dir.rglob("*.png") if "report" not in p.relative_to(run_dir).parts[:1])
    return tables, figures, checked


def latex_table(t: ReportTable) -> str:
    """A booktabs LaTeX table (accuracies in %), every cell rendered by its column's kind and escaped."""
    return t.table.to_latex()


def _markdown(t: ReportTable) -> str:
    out = [f"### {t.title}", ""]
    if t.flags:
        out += [f"**UNRELIABLE** — flags: {', '.join(str(f.get('code')) for f in t.flags)}", ""]
    if t.strength == "weak":
        out += [f"**{WEAK_LABEL}**", ""]
    if t.percent:
        out += ["Accuracies in %.", ""]
    return "\n".join(out) + "\n" + t.table.markdown_grid()


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}figure{display:inline-block;margin:.5em}
figure img{max-width:520px;border:1px solid #ddd}figcaption{font-size:.85em;color:#555}
.unreliable{background:#fde2e2;border:1px solid #d33;padding:.4em .8em;margin:.5em 0}
.weak{background:#fff4d6;border:1px solid #c90;padding:.4em .8em;margin:.5em 0}
.ok{background:#e4f6e4;border:1px solid #3a3;padding:.4em .8em;margin:.5em 0}
.unchecked{background:#f3f3f3;border:1px solid #999;padding:.4em .8em;margin:.5em 0}"""

# After load, the page records how many figures decoded, so a headless browser (or a person) can verify it.
_SCRIPT = """window.addEventListener('load',function(){var im=document.images,ok=0;
for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)ok++;}
document.body.setAttribute('data-figures',im.length);document.body.setAttribute('data-figures-rendered',ok);});"""


def _html(title: str, tables: Sequence[ReportTable], figures: Sequence[Path], run_dir: Path, checked: bool) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{_CSS}</style><script>{_SCRIPT}</script></head><body>", f"<h1>{e(title)}</h1>"]
    all_flags = [f for t in tables for f in t.flags]
    if all_flags:
        parts.append("<div class='unreliable'><b>UNRELIABLE</b>: gradient-masking checks raised "
                     + e(", ".join(sorted({str(f.get('code')) for f in all_flags})))
                     + ". See the flags section and torchrobust/evaluate/checks/flags.md.</div>")
    elif checked:
        parts.append("<div class='ok'>No gradient-masking flag was raised by the checks that were run.</div>")
    else:
        parts.append("<div class='unchecked'>No gradient-masking checks were recorded for these results: run "
                     "<code>torchrobust evaluate --checks</code> or <code>--suite adaptive</code> before trusting "
                     "a defence's numbers.</div>")
    parts.append("<h2>Tables</h2>")
    for t in tables:
        parts.append(f"<h3>{e(t.title)}</h3>")
        if t.flags:
            parts.append("<div class='unreliable'><b>UNRELIABLE</b> — " + "; ".join(
                e(f"{f.get('code')}: {f.get('message', '')}") for f in t.flags) + "</div>")
        if t.strength == "weak":
            parts.append(f"<div class='weak'><b>{e(WEAK_LABEL)}</b></div>")
        if t.percent:
            parts.append("<p>Accuracies in %.</p>")
        parts.append(t.table.to_html())
    parts.append("<h2>Figures</h2>")
    for p in figures:
        b64 = base64.b64encode(p.read_bytes()).decode()
        parts.append(f"<figure><img alt='{e(str(p.relative_to(run_dir)))}' src='data:image/png;base64,{b64}'>"
                     f"<figcaption>{e(str(p.relative_to(run_dir)))}</figcaption></figure>")
    if all_flags:
        parts.append("<h2>Flags</h2><ul>")
        for f in all_flags:
            parts.append(f"<li><b>{e(str(f.get('code')))}</b>: {e(str(f.get('message', '')))} "
                         f"<i>{e(str(f.get('advice', '')))}</i></li>")
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def build_report(run_dir: str | Path, title: str | None = None, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write ``OUT/report.html`` (self-contained), ``report.md`` and ``report/<table>.{csv,md,tex}``; ``OUT`` is
    ``out_dir``, by default ``run_dir``."""
    run = Path(run_dir)
    dest = run if out_dir is None else Path(out_dir)
    if not run.is_dir():
        raise TorchRobustError(f"run folder not found: {run} (give a folder written by torchrobust evaluate, "
                               "demo, certify, paper or forge --search)")
    tables, figures, checked = _collect(run)
    if not tables and not figures:
        raise TorchRobustError(f"no results found under {run}: expected results.json, certify.json or other "
                               "torchrobust result files")
    title = title or f"torchrobust report — {run.resolve().name}"
    tables_dir = dest / "report"
    paths: dict[str, Path] = {}
    seen: dict[str, int] = {}
    for t in tables:
        n = seen.get(t.name, 0)
        seen[t.name] = n + 1
        stem = tables_dir / (t.name if n == 0 else f"{t.name}_{n}")
        for ext, text in (("csv", t.table.to_csv()), ("md", _markdown(t)), ("tex", latex_table(t))):
            atomic_write_bytes(stem.with_suffix(f".{ext}"), text.encode())
    md = [f"# {title}", ""] + [_markdown(t) for t in tables]
    md += ["## Figures", ""] + [f"![{p.relative_to(run)}]({Path(os.path.relpath(p, dest)).as_posix()})"
                                for p in figures]
    atomic_write_bytes(dest / "report.md", ("\n".join(md) + "\n").encode())
    atomic_write_bytes(dest / "report.html", _html(title, tables, figures, run, checked).encode())
    paths.update(html=dest / "report.html", md=dest / "report.md", tables=tables_dir)
    log.info("report: %d tables, %d figures -> %s", len(tables), len(figures), dest / "report.html")
    return paths
