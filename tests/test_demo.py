"""The README's main job: its table is what ``torchrobust demo`` writes for the documented seed, over the demo's
whole ε grid, and every model in it is at least 85 % accurate on clean inputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from torchrobust.experiments import demo

ROOT = Path(__file__).resolve().parents[1]


def _readme_block() -> str:
    """The fenced block under "What the main job shows": the demo's printed output."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("### What the main job shows")
    m = re.search(r"```\n(.*?)```", text[start:], flags=re.S)
    assert m, "README: no output block under 'What the main job shows'"
    return m.group(1)


def _table(md: str) -> list[list[str]]:
    """The cells of the first Markdown table in ``md`` (header and rows, without the |---| line)."""
    rows = [line for line in md.splitlines() if line.startswith("|")]
    return [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows if not set(r) <= set("|-: ")]


def test_readme_table_covers_the_demo_grid_and_clean_floor():
    table = _table(_readme_block())
    head, body = table[0], table[1:]
    assert head[0] == "eps"
    assert [float(r[0]) for r in body] == demo.EPS  # every ε the demo runs, none left out
    clean = dict(zip(head[1:], (float(v) for v in body[0][1:]), strict=True))
    assert body[0][0] == "0"
    assert len(clean) == 6 and min(clean.values()) >= 100 * demo.MIN_CLEAN, clean
    # the prose quotes the table: every "NN.N %" beside a model in the paragraph after the block is in the table
    values = {v for r in body for v in r[1:]}
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    after = text[text.index("### What the main job shows"):]
    after = after[after.index("```", after.index("```") + 3) + 3:]
    prose = after[: after.index("\n## ")]
    quoted = re.findall(r"(\d+\.\d) %", prose)
    assert quoted, "the README's reading of the table quotes no number"
    assert set(quoted) <= values, sorted(set(quoted) - values)


@pytest.mark.slow
def test_readme_main_job_table_is_what_the_demo_writes(tmp_path, capsys):
    """Runs the README's command (defaults, seed 0; about 10 minutes of CPU on one thread)."""
    from torchrobust.cli import main

    out = tmp_path / "torchrobust-demo"
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    written = (out / "results.md").read_text(encoding="utf-8")
    assert _table(written) == _table(_readme_block())
    assert _table(printed) == _table(written)
    doc = json.loads((out / "results.json").read_text())
    assert doc["strength"] == "strong"
    for label, res in doc["models"].items():
        assert res["clean_accuracy"] >= demo.MIN_CLEAN, label
