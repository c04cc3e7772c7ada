"""torchrobust.tables: the one results-table type (typed columns; Markdown, CSV, strict JSON, LaTeX, HTML)."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from torchrobust.errors import TorchRobustError
from torchrobust.tables import Column, ColumnKind, Table, json_safe, latex_escape


def _table() -> Table:
    cols = [Column("eps", ColumnKind.FLOAT), Column("pgd", ColumnKind.PERCENT, label="PGD %"),
            Column("time", ColumnKind.SECONDS, digits=0), Column("n", ColumnKind.INT),
            Column("ok", ColumnKind.BOOL, bools=("yes", "NO")), Column("model", ColumnKind.TEXT)]
    rows = [{"eps": 0.0, "pgd": 0.914, "time": 12.4, "n": 500, "ok": True, "model": "a_b & c"},
            {"eps": 0.1, "pgd": math.nan, "time": math.inf, "n": None, "ok": False, "model": "λ=0.7|x"}]
    return Table(cols, rows, title="Robust accuracy (ε, 50% budget)", notes=("note one",))


def test_percent_and_kinds_drive_the_display_text() -> None:
    t = _table()
    assert t.cells()[0] == ["0", "91.4", "12", "500", "yes", "a_b & c"]
    # NaN and None are the column's missing text; a Markdown cell's "|" is escaped
    assert t.cells()[1][:5] == ["0.1", "n/a", "inf", "n/a", "NO"]
    md = t.to_markdown()
    assert md.startswith("## Robust accuracy (ε, 50% budget)\n\nnote one\n\n| eps | PGD % | time | n | ok | model |\n")
    assert "| 0.1 | n/a | inf | n/a | NO | λ=0.7\\|x |" in md
    assert Column("a", ColumnKind.PERCENT, digits=2).format(0.12345) == "12.35"
    assert Column("a", ColumnKind.FLOAT).format(0.123456) == "0.1235"
    assert Column("a", ColumnKind.FLOAT, digits=2).format(3) == "3.00"
    assert Column("a", ColumnKind.PERCENT, formatter=lambda v: f"~{v}").format(0.5) == "~0.5"
    assert Column("a", ColumnKind.PERCENT).unit == "%" and Column("a", ColumnKind.SECONDS).unit == "s"


def test_json_is_strict_and_round_trips_with_its_schema() -> None:
    t = _table()
    text = t.to_json()
    assert "NaN" not in text and "Infinity" not in text
    doc = json.loads(text)
    assert doc["rows"][1]["pgd"] is None and doc["rows"][1]["time"] is None
    assert doc["columns"][1] == {"name": "pgd", "kind": "percent", "unit": "%", "digits": 1, "label": "PGD %"}
    back = Table.from_json(text)
    assert back.columns == t.columns and back.title == t.title and back.notes == t.notes
    assert back.rows[0] == t.rows[0] and back.to_json() == text
    # the display survives the round trip because the kinds do
    assert back.cells()[0] == t.cells()[0] and back.to_markdown() == t.to_markdown().replace("| inf |", "| n/a |")
    assert json_safe({"a": [1.0, -math.inf, {"b": math.nan}]}) == {"a": [1.0, None, {"b": None}]}


def test_from_json_rejects_what_is_not_a_table() -> None:
    with pytest.raises(TorchRobustError, match="not valid JSON"):
        Table.from_json("{")
    with pytest.raises(TorchRobustError, match="needs 'columns'"):
        Table.from_json({"rows": []})
    with pytest.raises(TorchRobustError, match="unknown column kind 'percentage'"):
        Table.from_json({"columns": [{"name": "a", "kind": "percentage"}], "rows": []})
    with pytest.raises(TorchRobustError, match="duplicate column names"):
        Table([Column("a"), Column("a")], [])
    with pytest.raises(TorchRobustError, match="digits"):
        Column("a", digits=-1)


def test_csv_raw_and_formatted() -> None:
    t = _table()
    raw = list(csv.reader(io.StringIO(t.to_csv())))
    assert raw[0] == ["eps", "pgd", "time", "n", "ok", "model"]
    assert raw[1] == ["0.0", "0.914", "12.4", "500", "True", "a_b & c"]
    assert raw[2][:4] == ["0.1", "", "inf", ""]
    shown = list(csv.DictReader(io.StringIO(t.to_csv(formatted=True))))
    assert shown[0]["pgd"] == "91.4" and shown[0]["time"] == "12" and shown[1]["pgd"] == ""


def test_latex_is_escaped() -> None:
    assert latex_escape("a_b & 50% {x} $#~^\\") == \
        r"a\_b \& 50\% \{x\} \$\#\textasciitilde{}\textasciicircum{}\textbackslash{}"
    assert latex_escape("ε ↓") == r"$\varepsilon$ $\downarrow$"
    tex = _table().to_latex()
    assert tex.startswith("\\begin{table}[t]\n\\centering\n\\caption{Robust accuracy ($\\varepsilon$, 50\\% budget)}")
    assert "\\begin{tabular}{rrrrll}" in tex and "a\\_b \\& c" in tex and "$\\lambda$=0.7|x" in tex
    bare = Table([Column("m", ColumnKind.TEXT, latex=r"Acc$_{clean}$")], [{"m": "x_y"}]).to_latex(float_env=False)
    assert bare.splitlines()[:4] == [r"\begin{tabular}{l}", r"\toprule", r"Acc$_{clean}$ \\", r"\midrule"]
    assert r"x\_y \\" in bare


def test_html_escapes_and_write_is_atomic_per_format(tmp_path) -> None:
    t = _table()
    h = t.to_html()
    assert "<th>PGD %</th>" in h and "a_b &amp; c" in h
    paths = t.write(tmp_path / "out", "tab", formats=("md", "csv", "json", "tex"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tab.csv", "tab.json", "tab.md", "tab.tex"]
    assert Table.from_json(paths["json"].read_text()).columns == t.columns
    with pytest.raises(TorchRobustError, match="unknown table format"):
        t.write(tmp_path, "x", formats=("html",))


def test_from_rows_types_named_columns() -> None:
    t = Table.from_rows([{"eps": 0.1, "acc": 0.5, "tag": "x"}], {"acc": ColumnKind.PERCENT})
    assert [c.kind for c in t.columns] == [ColumnKind.FLOAT, ColumnKind.PERCENT, ColumnKind.FLOAT]
    assert t.cells() == [["0.1", "50.0", "x"]]
    assert Table.from_rows([]).markdown_grid() == "" and Table.from_rows([]).to_csv() == ""


def test_report_renders_by_the_stored_column_kinds(tmp_path) -> None:
    """The HTML/Markdown report reads the schema stored beside the rows: a PERCENT column is shown × 100, a FLOAT
    column holding values in [0, 1] stays a plain number, and rows stored without a schema are never guessed."""
    from torchrobust.evaluate.report import build_report

    t = Table([Column("lam", ColumnKind.FLOAT), Column("acc", ColumnKind.PERCENT, label="accuracy %"),
               Column("ratio", ColumnKind.FLOAT, digits=3)], [{"lam": 0.7, "acc": 0.25, "ratio": 0.5}], title="typed")
    doc = {"title": "typed", "rows": t.to_dict()["rows"], "columns": t.schema()}
    (tmp_path / "typed.json").write_text(json.dumps(doc))
    (tmp_path / "legacy.json").write_text(json.dumps({"title": "legacy", "rows": [{"lam": 0.7, "acc": 0.25}]}))
    paths = build_report(tmp_path)
    md = paths["md"].read_text()
    sections = {s.split(" ", 1)[0]: s for s in md.split("### ")[1:]}
    typed, legacy = sections["typed"], sections["legacy"]
    assert "| lam | accuracy % | ratio |" in typed and "| 0.7 | 25.0 | 0.500 |" in typed
    assert "Accuracies in %." in typed and "Accuracies in %." not in legacy and "| 0.7 | 0.25 |" in legacy
    assert "<td>25.0</td>" in paths["html"].read_text()
    assert "0.7 & 25.0 & 0.500" in (tmp_path / "report" / "typed.tex").read_text()


def test_accuracy_table_types_text_columns_as_text() -> None:
    from torchrobust.evaluate.sweeps import accuracy_table

    t = accuracy_table([{"eps": 0.1, "pgd": 0.5, "reliable": "yes"}, {"eps": 0.2, "pgd": 0.25, "reliable": "no"}])
    assert [c.kind for c in t.columns] == [ColumnKind.FLOAT, ColumnKind.PERCENT, ColumnKind.TEXT]
    assert t.markdown_grid().splitlines()[2:] == ["| 0.1 | 50.0 | yes |", "| 0.2 | 25.0 | no |"]


def test_to_json_extra_keys_follow_the_table_and_are_strict() -> None:
    t = Table([Column("a", ColumnKind.PERCENT)], [{"a": 0.5}])
    doc = json.loads(t.to_json(extra={"raw": [{"x": float("nan")}, {"x": 1.0}]}))
    assert list(doc) == ["title", "notes", "columns", "rows", "raw"]
    assert doc["raw"] == [{"x": None}, {"x": 1.0}] and doc["rows"] == [{"a": 0.5}]
