"""benchmarks/reprogramming_gaps.py (docs/reprogramming-gaps.md): the paper code's NRPM computation written literally
equals the library's layer at K = 2, 3, 4 with the MLP's IRLS ε (outputs and input gradients); a tiny run writes
its cells and report, and a rerun into the same folder trains and evaluates nothing; the gap groups cover every
Paradigm-1 cell of Tables 1 and 8 once, and the groups added later (p1hi, t8lo) run and summarise."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

from torchrobust.experiments.reprogramming_protocol import linear_mlp
from torchrobust.reprogramming import reprogram

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def gaps(monkeypatch: pytest.MonkeyPatch):
    """The benchmark script as a module (benchmarks/ is a folder of scripts, not a package)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("reprogramming_gaps")


@pytest.mark.parametrize("K", [2, 3, 4])
def test_library_layer_equals_the_paper_codes_computation(gaps, K: int) -> None:
    """MNIST-like inputs (most pixels exactly 0, as in the images) through the 784-256-64-10 MLP, ε = 5e-5."""
    torch.manual_seed(K)
    net = linear_mlp(3, seed=K).double().eval()
    x = torch.rand(6, 1, 28, 28, dtype=torch.float64) * (torch.rand(6, 1, 28, 28) < 0.2)
    y = torch.arange(6) % 10
    outs, grads = [], []
    for model in (gaps.PaperLiteralMLP(net, 0.8, K, 5e-5), reprogram(net, lam=0.8, K=K, irls_eps=5e-5,
                                                                       backend="eager")):
        xa = x.clone().requires_grad_(True)
        out = model(xa)
        (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(out, y), xa)
        outs.append(out.detach())
        grads.append(g)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-7, atol=1e-12)
    assert torch.equal(grads[1].sign(), grads[0].sign())  # the same FGSM step


def test_tiny_run_writes_table_and_a_rerun_recomputes_nothing(gaps, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "gaps"
    argv = ["--out", str(out), "--n-train", "600", "--epochs", "1", "--n-test", "120", "--impl", "eager", "literal",
            "--cells", "1:0", "0.9:2", "0.1:1"]
    assert gaps.main(argv) == 0
    summary = capsys.readouterr().out
    cells = sorted(p.name for p in (out / "cells").glob("*.json"))
    assert len(cells) == 6 and (out / "models" / "mlp-s0-e1.safetensors").is_file()
    assert not list(out.rglob(".*.tmp"))  # atomic writes leave no temporary files
    recs = [json.loads((out / "cells" / c).read_text()) for c in cells]
    for r in recs:
        assert len(r["acc_first1000"]) == 7 and r["acc_first1000"] == r["acc_all"]  # 120 < 1000 images
        assert r["acc_all"][0] >= max(r["acc_all"][1:])  # robust counts only clean-correct examples
    by = {(r["impl"], r["lam"], r["K"]): r["acc_all"] for r in recs}
    assert by[("eager", 0.9, 2)] == by[("literal", 0.9, 2)]  # the paper's computation gives the same table
    assert by[("eager", 0.1, 1)] == by[("literal", 0.1, 1)]
    # the summary: a header, one row per setting (eager, literal), the paper's LPM number in a header
    lines = [ln for ln in summary.splitlines() if ln.startswith("| ")]
    assert len(lines) == 3 and "paper 31.8" in lines[0]
    assert lines[1].startswith("| seed 0, lr 0.01, 1 ep, ε_IRLS 5e-05, eager | 120 |")
    md = (out / "gaps.md").read_text()
    assert "| λ=0.9 K=2 | **paper** | 90.7 | 76.1 | 44.0 | 26.8 | 18.0 | 13.4 | 9.3 |" in md
    assert "| λ=0.1 K=1 | **paper** | 40.7 | 38.3 |" in md
    assert len(json.loads((out / "gaps.json").read_text())["cells"]) == 6

    # a rerun: no training, no FGSM, the same report
    def refuse(*_a, **_k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(gaps, "fgsm_sweep", refuse)
    monkeypatch.setattr(gaps.PresetContext, "train", refuse)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.suffix != ".md"
              and p.name != "gaps.json"}
    assert gaps.main(argv) == 0
    assert capsys.readouterr().out == summary
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_bad_options_are_refused(gaps, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="LAM:K"):
        gaps.main(["--out", str(tmp_path), "--cells", "0.9"])
    with pytest.raises(SystemExit):
        gaps.main(["--out", str(tmp_path), "--impl", "cuda"])


def test_groups_cover_every_paradigm1_cell_of_tables_1_and_8_once(gaps) -> None:
    """p1 + p1hi are Table 1's Paradigm-1 rows λ = 0 … 0.9 (K = 1); t8 + t8lo are Table 8's K ≥ 2 rows; no cell
    is in two groups (the summary's group means would count it twice), and every cell has its paper row."""
    cells = [c for g in gaps.GAP_GROUPS for c in gaps.GROUPS[g]]
    assert len(cells) == len(set(cells))
    lams = (0.9, 0.8, 0.7, 0.6, 0.5)
    assert set(cells) == {(lam / 10, 1) for lam in range(10)} | {(lam, K) for lam in lams for K in (2, 3, 4)}
    assert set(gaps.GAP_GROUPS) == set(gaps.GROUP_TITLES) - {"lpm"}
    assert gaps.paper_cell(0.5, 1) == [84.1, 74.4, 50.0, 31.9, 22.8, 18.1, 14.3]  # Table 1 P1 λ = 0.5
    assert gaps.paper_cell(0.6, 2) == [86.2, 77.1, 56.2, 39.3, 29.2, 22.6, 17.1]  # Table 8 λ = 0.6, K = 2


def test_new_groups_run_and_their_summary_means_are_ours_minus_paper(gaps, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A tiny run of --groups p1hi t8lo: one cell file each, summary columns for exactly those groups, and their
    means recomputed from the cell files against the paper's Table 1 (K = 1) and Table 8 (K ≥ 2) rows."""
    out = tmp_path / "gaps"
    argv = ["--out", str(out), "--n-train", "600", "--epochs", "1", "--n-test", "60", "--impl", "eager",
            "--groups", "p1hi", "t8lo"]
    assert gaps.main(argv) == 0
    summary = capsys.readouterr().out
    recs = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    assert sorted((r["lam"], r["K"]) for r in recs) == sorted(gaps.GROUPS["p1hi"] + gaps.GROUPS["t8lo"])
    lines = [ln for ln in summary.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert "p1hi: mean Δ, 1000" in header and "t8lo: max abs Δ, 1000" in header
    assert not any(h.startswith(("p1:", "t8:")) for h in header)  # no columns for groups without cells
    assert len(lines) == 2  # the header and one setting
    row = [c.strip() for c in lines[1].strip("|").split("|")]
    for g in ("p1hi", "t8lo"):
        d = [o - p for r in recs if (r["lam"], r["K"]) in gaps.GROUPS[g]
             for o, p in zip(r["acc_all"][1:], gaps.paper_cell(r["lam"], r["K"])[1:], strict=True)]
        assert len(d) == 6 * len(gaps.GROUPS[g])
        assert float(row[header.index(f"{g}: mean Δ, 1000")]) == pytest.approx(sum(d) / len(d), abs=0.051)
        assert float(row[header.index(f"{g}: max abs Δ, 1000")]) == pytest.approx(max(map(abs, d)), abs=0.051)
    md = (out / "gaps.md").read_text()
    assert "Table 1, Paradigm 1, λ ≥ 0.5 (K = 1): FGSM accuracy" in md and "Table 8, λ ≤ 0.6, K ≥ 2: FGSM" in md
    assert "| λ=0.5 K=1 | **paper** | 84.1 | 74.4 | 50.0 |" in md
    assert "| λ=0.6 K=2 | **paper** | 86.2 | 77.1 | 56.2 |" in md
