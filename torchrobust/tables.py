"""The one results-table type: typed columns, rows of plain values, and every output format.

A :class:`Table` is a list of :class:`Column` (name, :class:`ColumnKind`, unit, digits, header label) and a list
of rows (``{column name: value}``). Values stay raw — an accuracy is the fraction ``0.914``, a time the float
``12.3`` — and each format renders them from the column's kind:

* :meth:`Table.to_markdown` / :meth:`Table.to_html` / :meth:`Table.to_latex` (escaped): display text, e.g. a
  ``PERCENT`` cell ``0.914`` as ``91.4``;
* :meth:`Table.to_csv`: raw values (``formatted=True``: the display numbers without decorations);
* :meth:`Table.to_json` / :meth:`Table.to_dict`: strict JSON (NaN and ±Inf become ``null``;
  ``json.dumps(allow_nan=False)``) that carries the column schema, so a reader such as
  :mod:`torchrobust.evaluate.report` knows which columns are percentages instead of guessing;
  :meth:`Table.from_json` reads it back.

Every result object (``SweepResult``, ``CrSearchResult``, ``LipschitzReport``, PSAT's tables, the experiments)
renders through this module. It sits at the bottom of the import layers: it imports only :mod:`torchrobust.io`
and :mod:`torchrobust.errors`.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from .errors import TorchRobustError
from .io import write_texts

__all__ = ["Column", "ColumnKind", "Table", "latex_escape", "json_safe"]


class ColumnKind(str, Enum):
    """What a column's values are, which decides how every format shows them."""

    #: free text, shown as is
    TEXT = "text"
    #: whole numbers (counts, sizes)
    INT = "int"
    #: real numbers; ``digits=None`` shows 4 significant digits (``.4g``), else ``digits`` decimals
    FLOAT = "float"
    #: a fraction in [0, 1] shown as a percentage: ``100 * v`` with ``digits`` decimals (default 1)
    PERCENT = "percent"
    #: a duration in seconds, ``digits`` decimals (default 1)
    SECONDS = "seconds"
    #: True/False shown as ``Column.bools`` (default ``yes``/``no``)
    BOOL = "bool"


_DEFAULT_UNIT = {ColumnKind.PERCENT: "%", ColumnKind.SECONDS: "s"}
_DEFAULT_DIGITS = {ColumnKind.PERCENT: 1, ColumnKind.SECONDS: 1}


def _kind(value: Any) -> ColumnKind:
    try:
        return ColumnKind(value)
    except ValueError:
        raise TorchRobustError(f"unknown column kind {value!r}; valid: "
                               + ", ".join(k.value for k in ColumnKind)) from None


@dataclass(frozen=True)
class Column:
    """One column: ``name`` is the key in the rows and the CSV/JSON header; ``label`` the Markdown/HTML header
    (default ``name``); ``latex`` a raw LaTeX header (default: ``label`` escaped). ``unit`` is metadata (``%`` for
    ``PERCENT``, ``s`` for ``SECONDS`` by default), ``missing`` the text of a ``None``/NaN cell, ``bools`` the
    texts of True/False. ``formatter`` (display only, never serialised) overrides the kind's rendering of a
    present value in Markdown/HTML/LaTeX."""

    name: str
    kind: ColumnKind = ColumnKind.FLOAT
    unit: str = ""
    digits: int | None = None
    label: str | None = None
    latex: str | None = None
    missing: str = "n/a"
    bools: tuple[str, str] = ("yes", "no")
    formatter: Callable[[Any], str] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TorchRobustError(f"column name must be a non-empty string, got {self.name!r}")
        object.__setattr__(self, "kind", _kind(self.kind))
        if self.digits is not None and (isinstance(self.digits, bool) or not isinstance(self.digits, int)
                                        or not 0 <= self.digits <= 12):
            raise TorchRobustError(f"column {self.name!r}: digits must be an integer in 0..12 or None, "
                                   f"got {self.digits!r}")
        if not self.unit:
            object.__setattr__(self, "unit", _DEFAULT_UNIT.get(self.kind, ""))
        if self.digits is None and self.kind in _DEFAULT_DIGITS:
            object.__setattr__(self, "digits", _DEFAULT_DIGITS[self.kind])
        object.__setattr__(self, "bools", tuple(self.bools))

    @property
    def header(self) -> str:
        return self.label if self.label is not None else self.name

    def is_missing(self, value: Any) -> bool:
        return value is None or (isinstance(value, float) and math.isnan(value))

    def number(self, value: Any) -> str:
        """The value as a plain number string (no unit, no ``formatter``): the display digits of the kind."""
        if self.is_missing(value):
            return ""
        if isinstance(value, bool):
            return self.bools[0] if value else self.bools[1]
        if not isinstance(value, (int, float)):
            return str(value)
        k = self.kind
        if k is ColumnKind.PERCENT:
            return f"{100 * value:.{self.digits}f}"
        if k is ColumnKind.SECONDS:
            return f"{value:.{self.digits}f}"
        if k is ColumnKind.INT and isinstance(value, int):
            return str(value)
        if k in (ColumnKind.FLOAT, ColumnKind.INT):
            return f"{value:.4g}" if self.digits is None else f"{value:.{self.digits}f}"
        return str(value)

    def format(self, value: Any) -> str:
        """The display text of one cell (Markdown, HTML, LaTeX before escaping)."""
        if self.is_missing(value):
            return self.missing
        if self.formatter is not None:
            return self.formatter(value)
        if isinstance(value, bool):
            return self.bools[0] if value else self.bools[1]
        return self.number(value)

    def to_dict(self) -> dict[str, Any]:
        """The schema of this column (``formatter`` is not serialised)."""
        d: dict[str, Any] = {"name": self.name, "kind": self.kind.value, "unit": self.unit, "digits": self.digits}
        if self.label is not None:
            d["label"] = self.label
        if self.latex is not None:
            d["latex"] = self.latex
        if self.missing != "n/a":
            d["missing"] = self.missing
        if self.bools != ("yes", "no"):
            d["bools"] = list(self.bools)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Column:
        if not isinstance(d, Mapping) or "name" not in d:
            raise TorchRobustError(f"a column must be an object with a 'name', got {d!r}")
        bools = d.get("bools", ("yes", "no"))
        if not (isinstance(bools, (list, tuple)) and len(bools) == 2):
            raise TorchRobustError(f"column {d['name']!r}: 'bools' must be two strings, got {bools!r}")
        return cls(name=d["name"], kind=_kind(d.get("kind", "float")), unit=str(d.get("unit") or ""),
                   digits=d.get("digits"), label=d.get("label"), latex=d.get("latex"),
                   missing=str(d.get("missing", "n/a")), bools=(str(bools[0]), str(bools[1])))


def json_safe(value: Any) -> Any:
    """``value`` with every NaN/±Inf float (at any depth of lists, tuples and dicts) replaced by ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


_LATEX_CHARS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
                "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "ε": r"$\varepsilon$",
                "λ": r"$\lambda$", "σ": r"$\sigma$", "ℓ": r"$\ell$", "∞": r"$\infty$", "↓": r"$\downarrow$",
                "↑": r"$\uparrow$", "×": r"$\times$", "≥": r"$\geq$", "≤": r"$\leq$", "≠": r"$\neq$", "→": r"$\to$"}


def latex_escape(text: str) -> str:
    """``text`` safe inside a LaTeX table cell: special characters escaped, common Greek/math symbols as math."""
    return "".join(_LATEX_CHARS.get(ch, ch) for ch in str(text))


def _md_row(cells: Iterable[str]) -> str:
    """One Markdown table row; an empty cell is written ``| |`` (one space), as hand-written tables do."""
    return "|" + "|".join(f" {t} " if t else " " for t in map(_md_cell, cells)) + "|"


def _md_cell(text: str) -> str:
    return text.replace("|", r"\|").replace("\n", " ")


@dataclass
class Table:
    """A results table: typed ``columns``, ``rows`` (``{column name: raw value}``; keys not in ``columns`` are
    ignored, a missing key is a missing cell), an optional ``title`` and ``notes`` (paragraphs shown between the
    title and the table in Markdown and HTML)."""

    columns: list[Column]
    rows: list[dict[str, Any]]
    title: str | None = None
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.columns = [c if isinstance(c, Column) else Column.from_dict(c) for c in self.columns]
        names = [c.name for c in self.columns]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise TorchRobustError(f"duplicate column names {dup}; give every column its own name")
        if not all(isinstance(r, Mapping) for r in self.rows):
            raise TorchRobustError("table rows must be mappings {column name: value}")
        self.rows = [dict(r) for r in self.rows]
        self.notes = tuple(str(n) for n in self.notes)

    # ----------------------------------------------------------------------------------------- construction
    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]], kinds: Mapping[str, ColumnKind | Column] | None = None,
                  default: ColumnKind = ColumnKind.FLOAT, **kw: Any) -> Table:
        """A table of ``rows`` whose columns are the keys of the rows in order of first appearance;
        ``kinds[name]`` (a kind or a full :class:`Column`) types a column, the others get ``default`` (text values
        render as text)."""
        kinds = kinds or {}
        names: list[str] = list(dict.fromkeys(k for r in rows for k in r)) if rows else list(kinds)
        cols = []
        for n in names:
            k = kinds.get(n, default)
            cols.append(k if isinstance(k, Column) else Column(n, k))
        return cls(cols, [dict(r) for r in rows], **kw)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise TorchRobustError(f"no column {name!r}; columns: {', '.join(self.names)}")

    def select(self, names: Iterable[str]) -> Table:
        """The same table showing only the columns ``names``, in that order (rows shared, title and notes kept)."""
        return Table([self.column(n) for n in names], self.rows, title=self.title, notes=self.notes)

    def has_kind(self, kind: ColumnKind) -> bool:
        return any(c.kind is kind for c in self.columns)

    def cells(self) -> list[list[str]]:
        """The display text of every cell, row by row."""
        return [[c.format(r.get(c.name)) for c in self.columns] for r in self.rows]

    # ----------------------------------------------------------------------------------------------- formats
    def markdown_grid(self) -> str:
        """The GitHub-Markdown table alone (header, separator, rows), newline-terminated; empty without
        columns."""
        if not self.columns:
            return ""
        lines = [_md_row(c.header for c in self.columns), "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += [_md_row(row) for row in self.cells()]
        return "\n".join(lines) + "\n"

    def to_markdown(self, heading: str = "##") -> str:
        """``<heading> title``, the notes, then the grid, separated by blank lines."""
        parts = ([f"{heading} {self.title}"] if self.title else []) + list(self.notes)
        return "".join(p + "\n\n" for p in parts) + self.markdown_grid()

    def to_csv(self, formatted: bool = False) -> str:
        """CSV with the column names as header. Raw values by default (a missing or NaN cell is empty, ±Inf is
        ``inf``/``-inf``); ``formatted=True`` writes the kind's display numbers (percentages × 100, fixed
        digits). Empty without columns."""
        if not self.columns:
            return ""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.names)
        for r in self.rows:
            out = []
            for c in self.columns:
                v = r.get(c.name)
                if formatted:
                    out.append(c.number(v))
                else:
                    out.append("" if c.is_missing(v) else v)
            w.writerow(out)
        return buf.getvalue()

    def to_dict(self) -> dict[str, Any]:
        """``{"title", "notes", "columns": [schema], "rows"}`` with NaN/±Inf as ``None``."""
        return {"title": self.title, "notes": list(self.notes), "columns": self.schema(),
                "rows": [json_safe({c.name: r.get(c.name) for c in self.columns}) for r in self.rows]}

    def schema(self) -> list[dict[str, Any]]:
        """The column schema (``Column.to_dict`` of each column), e.g. to store beside rows in a result file."""
        return [c.to_dict() for c in self.columns]

    def to_json(self, indent: int | None = 1, extra: Mapping[str, Any] | None = None) -> str:
        """Strict JSON text of :meth:`to_dict` (no NaN/Infinity literals), newline-terminated; ``extra`` keys (e.g.
        a result's raw rows, NaN/±Inf written as ``null``) follow the table's own."""
        doc = {**self.to_dict(), **json_safe(dict(extra or {}))}
        return json.dumps(doc, indent=indent, allow_nan=False, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, doc: str | bytes | Mapping[str, Any]) -> Table:
        """The table of :meth:`to_json` text (or of its parsed dict); a document that is not one raises
        :class:`TorchRobustError`."""
        if isinstance(doc, (str, bytes)):
            try:
                doc = json.loads(doc)
            except json.JSONDecodeError as exc:
                raise TorchRobustError(f"table JSON is not valid JSON ({exc.msg} at line {exc.lineno}); "
                                       "pass the text Table.to_json wrote") from None
        if not isinstance(doc, Mapping) or not isinstance(doc.get("columns"), list) \
                or not isinstance(doc.get("rows"), list):
            raise TorchRobustError("a table document needs 'columns' (a list) and 'rows' (a list); pass the "
                                   "output of Table.to_json")
        return cls([Column.from_dict(c) for c in doc["columns"]], list(doc["rows"]), title=doc.get("title"),
                   notes=tuple(doc.get("notes") or ()))

    def to_latex(self, caption: str | None = None, float_env: bool = True, percent_sign: bool = False) -> str:
        """A booktabs ``tabular`` (inside a ``table`` float with ``caption``, default the title, when
        ``float_env``); every header and cell escaped (:func:`latex_escape`) except ``Column.latex`` headers.
        ``percent_sign``: a present ``PERCENT`` cell without a ``formatter`` ends in ``\\%``."""
        align = "".join("l" if c.kind in (ColumnKind.TEXT, ColumnKind.BOOL) else "r" for c in self.columns)
        body = [r"\begin{tabular}{" + align + "}", r"\toprule",
                " & ".join(c.latex if c.latex is not None else latex_escape(c.header) for c in self.columns)
                + r" \\", r"\midrule"]
        signed = [percent_sign and c.kind is ColumnKind.PERCENT and c.formatter is None for c in self.columns]
        body += [" & ".join(latex_escape(t) + ("\\%" if sign and not c.is_missing(r.get(c.name)) else "")
                            for t, c, sign in zip(row, self.columns, signed, strict=True)) + r" \\"
                 for r, row in zip(self.rows, self.cells(), strict=True)]
        body += [r"\bottomrule", r"\end{tabular}"]
        if float_env:
            cap = caption if caption is not None else self.title
            body = [r"\begin{table}[t]", r"\centering"] + \
                ([r"\caption{" + latex_escape(cap) + "}"] if cap else []) + body + [r"\end{table}"]
        return "\n".join(body) + "\n"

    def to_html(self) -> str:
        """The table as an HTML ``<table>`` (escaped), without title or notes."""
        e = html.escape
        out = ["<table><tr>" + "".join(f"<th>{e(c.header)}</th>" for c in self.columns) + "</tr>"]
        out += ["<tr>" + "".join(f"<td>{e(t)}</td>" for t in row) + "</tr>" for row in self.cells()]
        out.append("</table>")
        return "\n".join(out)

    def write(self, out_dir: str | os.PathLike[str], stem: str,
              formats: Iterable[str] = ("md", "csv", "json")) -> dict[str, Path]:
        """Write ``out_dir/<stem>.<ext>`` for each of ``formats`` (``md``, ``csv``, ``json``, ``tex``), each
        atomically (:func:`torchrobust.io.write_texts`); returns ``{ext: path}``."""
        render = {"md": self.to_markdown, "csv": self.to_csv, "json": self.to_json, "tex": self.to_latex}
        formats = list(formats)
        bad = [f for f in formats if f not in render]
        if bad:
            raise TorchRobustError(f"unknown table format(s) {bad}; valid: {', '.join(render)}")
        return write_texts(out_dir, stem, {f: render[f]() for f in formats})
