"""``torchrobust report RUN_DIR``: one self-contained HTML page (tables, figures, flags) plus Markdown, CSV and
LaTeX tables, built from the result files that evaluations leave in a run folder.

Recognised inputs (searched recursively under ``RUN_DIR``):

* ``results.json`` of :meth:`torchrobust.evaluate.SweepResult.write` (one model) or of ``torchrobust demo``
  (several models side by side): accuracy-vs-ε tables;
* ``certify.json`` of ``torchrobust certify``: certified accuracy vs radius;
* any other ``*.json`` holding a list of flat rows under ``"table"`` or ``"rows"`` (paper presets, c_r search,
  PSAT metrics): shown as a table;
* every ``*.png``: embedded as a figure (base64, so the page needs no other file).

Every table also goes to ``report/<name>.{csv,md,tex}``. Results that carry gradient-masking flags (see
``flags.md``) are marked **UNRELIABLE** wherever they appear, with the flag codes and advice.
"""

from __future__ import annotations

import base64
import csv
import html
import io
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

__all__ = ["build_report", "latex_table", "Table"]

log = logging.getLogger(__name__)


#: shown on every table computed only from weak attacks
WEAK_LABEL = ("Strength: weak — computed only from weak attacks (FGSM, or PGD with one restart and < 50 steps); it "
              "overstates robustness. The default attacks (APGD-CE + APGD-T) give a trustworthy number.")


@dataclass
class Table:
    name: str
    title: str
    rows: list[dict[str, Any]]
    percent: bool = True
    flags: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""
    #: ``"weak"`` when the run was computed only from weak attacks (FGSM, short PGD), ``"strong"``, or unknown
    strength: str | None = None


def _is_flat_rows(v: Any) -> bool:
    return (isinstance(v, list) and bool(v) and all(isinstance(r, Mapping) for r in v)
            and all(not isinstance(x, (Mapping, list)) for r in v for x in r.values()))


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_") or "table"


def _collect(run_dir: Path) -> tuple[list[Table], list[Path], bool]:
    tables: list[Table] = []
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
            tables.append(Table(_slug(rel[:-5]), f"Certified accuracy vs radius (σ={doc.get('sigma')}, "
                                f"n={doc.get('n')}, {doc.get('n_examples')} examples) — {rel}", rows, True, flags,
                                rel))
            continue
        for key in ("table", "rows"):
            if _is_flat_rows(doc.get(key)):
                title = str(doc.get("title") or doc.get("preset") or rel)
                pct = all(isinstance(v, (int, float)) and 0 <= v <= 1 for r in doc[key] for k, v in r.items()
                          if k not in ("eps", "radius", "c_r", "K", "lam", "params"))
                tables.append(Table(_slug(rel[:-5]), f"{title} — {rel}", list(doc[key]), pct, flags, rel, strength))
                break
    figures = sorted(p for p in run_dir.rglob("*.png") if "report" not in p.relative_to(run_dir).parts[:1])
    return tables, figures, checked


def _fmt(v: Any, pct: bool, key: str) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        if pct and key not in ("eps", "radius", "c_r", "lam"):
            return f"{100 * v:.1f}"
        return f"{v:.4g}"
    return str(v)


def latex_table(t: Table) -> str:
    """A booktabs LaTeX table (accuracies in %)."""
    cols = list(t.rows[0].keys())

    def esc(s: str) -> str:
        return re.sub(r"([&%$#_{}])", r"\\\1", s).replace("ε", r"$\varepsilon$").replace("λ", r"$\lambda$")

    lines = [r"\begin{table}[t]", r"\centering", r"\caption{" + esc(t.title) + "}",
             r"\begin{tabular}{" + "l" + "r" * (len(cols) - 1) + "}", r"\toprule",
             " & ".join(esc(c) for c in cols) + r" \\", r"\midrule"]
    for r in t.rows:
        lines.append(" & ".join(esc(_fmt(r.get(c), t.percent, c)) for c in cols) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _markdown(t: Table) -> str:
    cols = list(t.rows[0].keys())
    out = [f"### {t.title}", ""]
    if t.flags:
        out += [f"**UNRELIABLE** — flags: {', '.join(str(f.get('code')) for f in t.flags)}", ""]
    if t.strength == "weak":
        out += [f"**{WEAK_LABEL}**", ""]
    if t.percent:
        out += ["Accuracies in %.", ""]
    out += ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    out += ["| " + " | ".join(_fmt(r.get(c), t.percent, c) for c in cols) + " |" for r in t.rows]
    return "\n".join(out) + "\n"


def _csv(t: Table) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(t.rows[0].keys()))
    w.writeheader()
    w.writerows(t.rows)
    return buf.getvalue()


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


def _html(title: str, tables: Sequence[Table], figures: Sequence[Path], run_dir: Path, checked: bool) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{_CSS}</style><script>{_SCRIPT}</script></head><body>", f"<h1>{e(title)}</h1>"]
    all_flags = [f for t in tables for f in t.flags]
    if all_flags:
        parts.append("<div class='unreliable'><b>UNRELIABLE</b>: gradient-masking checks raised "
                     + e(", ".join(sorted({str(f.get('code')) for f in all_flags})))
                     + ". See the flags section and torchrobust/evaluate/flags.md.</div>")
    elif checked:
        parts.append("<div class='ok'>No gradient-masking flag was raised by the checks that were run.</div>")
    else:
        parts.append("<div class='unchecked'>No gradient-masking checks were recorded for these results: run "
                     "<code>torchrobust evaluate --checks</code> or <code>--suite adaptive</code> before trusting "
                     "a defence's numbers.</div>")
    parts.append("<h2>Tables</h2>")
    for t in tables:
        cols = list(t.rows[0].keys())
        parts.append(f"<h3>{e(t.title)}</h3>")
        if t.flags:
            parts.append("<div class='unreliable'><b>UNRELIABLE</b> — " + "; ".join(
                e(f"{f.get('code')}: {f.get('message', '')}") for f in t.flags) + "</div>")
        if t.strength == "weak":
            parts.append(f"<div class='weak'><b>{e(WEAK_LABEL)}</b></div>")
        if t.percent:
            parts.append("<p>Accuracies in %.</p>")
        parts.append("<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in cols) + "</tr>")
        for r in t.rows:
            parts.append("<tr>" + "".join(f"<td>{e(_fmt(r.get(c), t.percent, c))}</td>" for c in cols) + "</tr>")
        parts.append("</table>")
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
        for ext, text in (("csv", _csv(t)), ("md", _markdown(t)), ("tex", latex_table(t))):
            atomic_write_bytes(stem.with_suffix(f".{ext}"), text.encode())
    md = [f"# {title}", ""] + [_markdown(t) for t in tables]
    md += ["## Figures", ""] + [f"![{p.relative_to(run)}]({Path(os.path.relpath(p, dest)).as_posix()})"
                                for p in figures]
    atomic_write_bytes(dest / "report.md", ("\n".join(md) + "\n").encode())
    atomic_write_bytes(dest / "report.html", _html(title, tables, figures, run, checked).encode())
    paths.update(html=dest / "report.html", md=dest / "report.md", tables=tables_dir)
    log.info("report: %d tables, %d figures -> %s", len(tables), len(figures), dest / "report.html")
    return paths
