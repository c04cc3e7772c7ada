"""benchmarks/reprogramming_gaps.py (docs/reprogramming-gaps.md): the paper code's NRPM computation written literally
equals the library's layer at K = 2, 3, 4 with the MLP's IRLS ε (outputs and input gradients); a tiny run writes
its cells and report, and a rerun into the same folder trains and evaluates nothing."""

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
