"""Tests of torchrobust.experiments.adaptive_reprogramming: files and table layout, resume after an interruption,
checkpoint reuse, refused mismatched state, the paper numbers beside ours.

MNIST is replaced by a small synthetic 10-class problem (class-dependent bright patches plus noise), so the tests
run in seconds; the attack budgets are the ``"quick"`` ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from torchrobust.cli import main
from torchrobust.errors import TorchRobustError
from torchrobust.experiments import adaptive_reprogramming as AR
from torchrobust.experiments import reprogramming as R


def _synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    x = 0.15 * torch.rand(n, 1, 28, 28, generator=g)
    for c in range(10):
        r, col = divmod(c, 5)
        x[y == c, :, 4 + 10 * r: 12 + 10 * r, 1 + 5 * col: 5 + 5 * col] += 0.7
    return x.clamp(0, 1), y


@pytest.fixture
def fake_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    def load(profile: R.Profile, seed: int) -> tuple[torch.Tensor, ...]:
        x_tr, y_tr = _synthetic(640, 1)
        x_te, y_te = _synthetic(64, 2)
        return x_tr, y_tr, x_te, y_te

    monkeypatch.setattr(R, "load_mnist", load)


KW = dict(n_test=12, eps=(0.1, 0.3), models=("mlp",), paradigms=(1, 2), budget="quick", profile="quick",
          progress=False)


def test_run_writes_files_and_table(tmp_path: Path, fake_mnist: None, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    rc = main(["paper", "adaptive", "--out", str(out), "--n-test", "12", "--eps", "0.1,0.3", "--models", "mlp",
               "--paradigms", "1,2", "--budget", "quick", "--profile", "quick", "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "adaptive_reprogramming.json").read_text())
    md = (out / "adaptive_reprogramming.md").read_text()
    assert printed.startswith(md) and printed[len(md):].startswith(f"\nwrote {out}/ in ")
    for p in (0, 1, 2):
        assert (out / "models" / f"mlp-p{p}.safetensors").is_file()
        for e in ("0.1", "0.3"):
            assert (out / "state" / f"cell-mlp-p{p}-eps{e}.json").is_file()
    # rows = model x paradigm (backbone first), each with one cell per eps
    assert [(r["arch"], r["paradigm"]) for r in res["rows"]] == [("mlp", 0), ("mlp", 1), ("mlp", 2)]
    assert res["missing_cells"] == []
    assert res["rows"][1]["lams"] == [0.8, 0.8, 0.8] and res["rows"][1]["K"] == 4  # the Table-8 best row
    for r in res["rows"]:
        assert list(r["cells"]) == ["0.1", "0.3"]
        for c in r["cells"].values():
            assert c["n"] == 12
            # the worst case is never above any single column, and it is the mean of the per-example booleans
            assert c["adaptive"] <= min(c["fgsm"], c["pgd20"], c["clean"]) + 1e-9
            assert c["adaptive"] == pytest.approx(100 * sum(c["worst_per_example"]) / 12, abs=0.01)
            fb = c["first_broken_by"]
            n_clean = round(c["clean"] * 12 / 100)
            assert n_clean - sum(fb.values()) == sum(c["worst_per_example"])
            assert isinstance(c["reliable"], bool)
    # the paper's FGSM numbers beside ours (Table 1 Normal-train, Table 8 (0.8, 4), Table 1 Paradigm 2)
    assert [r["cells"]["0.1"]["paper_fgsm"] for r in res["rows"]] == [2.6, 64.3, 61.2]
    assert [r["cells"]["0.3"]["paper_fgsm"] for r in res["rows"]] == [0.0, 22.0, 20.1]
    # Markdown: the main table has one line per row and the right columns
    table = [ln for ln in md.splitlines() if ln.startswith("| MLP")]
    head = next(ln for ln in md.splitlines() if ln.startswith("| model | paradigm | λ"))
    for e in ("0.1", "0.3"):
        for col in (f"ε={e} FGSM (paper)", f"ε={e} PGD-20", f"ε={e} adaptive"):
            assert col in head
    assert head.count("|") - 1 == 5 + 3 * 2 + 1
    main_rows = table[:3]
    assert [ln.split("|")[2].strip() for ln in main_rows] == [AR.PARADIGM_NAMES[p] for p in (0, 1, 2)]
    assert all(ln.count("|") == head.count("|") for ln in main_rows)
    assert len(table) == 3 + 3 * 2  # plus one detail line per cell


def test_interrupted_run_resumes_without_recomputing(tmp_path: Path, fake_mnist: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real_cell = AR.evaluate_cell
    real_train = R.train_paper_model
    calls: list[str] = []
    trained: list[int] = []

    def counting_train(arch: str, paradigm: int, **kw: object) -> torch.nn.Module:
        trained.append(paradigm)
        return real_train(arch, paradigm, **kw)

    def failing_cell(model, base, x, y, eps, budget, seed, state_path, progress):  # noqa: ANN001, ANN202
        calls.append(state_path.name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # simulated interruption inside the second cell
        return real_cell(model, base, x, y, eps, budget, seed, state_path, progress)

    monkeypatch.setattr(R, "train_paper_model", counting_train)
    monkeypatch.setattr(AR, "evaluate_cell", failing_cell)
    with pytest.raises(KeyboardInterrupt):
        AR.run(tmp_path, **KW)
    assert calls == ["adaptive-mlp-p0-eps0.1", "adaptive-mlp-p0-eps0.3"]
    first = json.loads((tmp_path / "state" / "cell-mlp-p0-eps0.1.json").read_text())["cell"]
    assert not (tmp_path / "state" / "cell-mlp-p0-eps0.3.json").exists()
    assert trained == [0]
    # the partial table was written after the finished cell and names what is missing
    partial = json.loads((tmp_path / "adaptive_reprogramming.json").read_text())
    assert partial["rows"][0]["cells"]["0.1"] == first
    assert partial["missing_cells"] == ["mlp-p0-eps0.3", "mlp-p1-eps0.1", "mlp-p1-eps0.3", "mlp-p2-eps0.1",
                                        "mlp-p2-eps0.3"]
    assert "Partial run" in (tmp_path / "adaptive_reprogramming.md").read_text()

    calls.clear()
    trained.clear()
    monkeypatch.setattr(AR, "evaluate_cell", lambda *a: (calls.append(a[7].name), real_cell(*a))[1])
    res = AR.run(tmp_path, **KW)
    # the finished cell is not recomputed; the interrupted one and the rest are
    assert "adaptive-mlp-p0-eps0.1" not in calls
    assert calls[0] == "adaptive-mlp-p0-eps0.3" and len(calls) == 5
    assert res["rows"][0]["cells"]["0.1"] == first
    # the backbone was reloaded from its checkpoint, only the reprogrammed models were trained (P1 trains nothing
    # but is built by train_paper_model)
    assert trained == [1, 2]

    # a third run recomputes nothing and retrains nothing, and gives the same table
    calls.clear()
    trained.clear()
    res2 = AR.run(tmp_path, **KW)
    assert calls == [] and trained == []
    assert [r["cells"] for r in res2["rows"]] == [r["cells"] for r in res["rows"]]
    assert [r["lams"] for r in res2["rows"]] == [r["lams"] for r in res["rows"]]


def test_state_from_another_configuration_is_refused(tmp_path: Path, fake_mnist: None) -> None:
    kw = {**KW, "eps": (0.3,), "paradigms": (1,), "baseline": False}
    AR.run(tmp_path, **kw)
    with pytest.raises(TorchRobustError, match="another configuration"):
        AR.run(tmp_path, **{**kw, "n_test": 10})
    # another state_dir is fine (models are reused)
    res = AR.run(tmp_path, state_dir=tmp_path / "other", **{**kw, "n_test": 10})
    assert res["rows"][0]["cells"]["0.3"]["n"] == 10


def test_cell_of_another_model_or_unreadable_is_recomputed(tmp_path: Path, fake_mnist: None,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from torchrobust import checkpoint
    from torchrobust.resume import fingerprint_model

    kw = {**KW, "eps": (0.3,), "paradigms": (1,), "baseline": False}
    first = AR.run(tmp_path, **kw)
    real_cell = AR.evaluate_cell
    calls: list[str] = []
    monkeypatch.setattr(AR, "evaluate_cell", lambda *a: (calls.append(a[7].name), real_cell(*a))[1])
    # another checkpoint with the same training metadata (e.g. retrained elsewhere): its cell is not reused
    path = tmp_path / "models" / "mlp-p1.safetensors"
    meta = checkpoint.load_metadata(path)["metadata"]
    model = checkpoint.load(path)
    with torch.no_grad():
        for prm in model.parameters():
            prm.mul_(0.5)
    checkpoint.save(model, path, **meta)
    with caplog.at_level(logging.WARNING, logger=AR.logger.name):
        res = AR.run(tmp_path, **kw)
    assert calls == ["adaptive-mlp-p1-eps0.3"]
    assert any("another model" in r.getMessage() for r in caplog.records)
    doc = json.loads((tmp_path / "state" / "cell-mlp-p1-eps0.3.json").read_text())
    assert doc["fingerprint"]["model"] == fingerprint_model(checkpoint.load(path))  # overwritten for the new model
    assert first["rows"][0]["cells"]["0.3"]["n"] == res["rows"][0]["cells"]["0.3"]["n"]
    # an unreadable cell file is recomputed (one warning), not a traceback
    calls.clear()
    caplog.clear()
    (tmp_path / "state" / "cell-mlp-p1-eps0.3.json").write_text('{"config": ', encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger=AR.logger.name):
        again = AR.run(tmp_path, **kw)
    assert calls == ["adaptive-mlp-p1-eps0.3"] and any("unreadable" in r.getMessage() for r in caplog.records)
    def numbers(r: dict) -> dict:
        return {k: v for k, v in r["rows"][0]["cells"]["0.3"].items() if k != "seconds"}

    assert numbers(again) == numbers(res)
    calls.clear()
    AR.run(tmp_path, **kw)
    assert calls == []


def test_report_only_computes_nothing(tmp_path: Path, fake_mnist: None, monkeypatch: pytest.MonkeyPatch) -> None:
    kw = {**KW, "eps": (0.3,), "paradigms": (1,), "baseline": False}
    done = AR.run(tmp_path, **kw)

    def forbidden(*a: object, **k: object) -> None:
        raise AssertionError("report_only must not train or attack")

    monkeypatch.setattr(AR, "evaluate_cell", forbidden)
    monkeypatch.setattr(R, "train_paper_model", forbidden)
    res = AR.run(tmp_path, report_only=True, **{**kw, "paradigms": (1, 2)})
    assert res["missing_cells"] == ["mlp-p2-eps0.3"]
    assert res["rows"][0]["cells"] == done["rows"][0]["cells"] and res["rows"][0]["lams"] == [0.8, 0.8, 0.8]
    assert res["rows"][1]["cells"] == {} and res["rows"][1]["lams"] is None
    md = (tmp_path / "adaptive_reprogramming.md").read_text()
    assert "(not run)" in md and "Partial run" in md


def test_input_errors(tmp_path: Path) -> None:
    with pytest.raises(TorchRobustError, match="unknown model 'resnet'"):
        AR.run(tmp_path, models=("resnet",))
    with pytest.raises(TorchRobustError, match="paradigms"):
        AR.run(tmp_path, paradigms=(4,))
    with pytest.raises(TorchRobustError, match="n_test"):
        AR.run(tmp_path, n_test=0)
    with pytest.raises(TorchRobustError, match="eps"):
        AR.run(tmp_path, eps=(0.0,))
    with pytest.raises(TorchRobustError, match="unknown budget"):
        AR.run(tmp_path, budget="huge")


def test_paper_numbers() -> None:
    assert AR.paper_fgsm("mlp", 3, 0.1) == 75.8
    assert AR.paper_fgsm("mlp", 1, 0.2) == 33.1
    assert AR.paper_fgsm("mlp", 2, 0.12) is None  # not on the paper's grid
    assert AR.paper_fgsm("lenet", 1, 0.1) is None  # LeNet: figures only


def test_lenet_cell_runs(tmp_path: Path, fake_mnist: None) -> None:
    res = AR.run(tmp_path, **{**KW, "models": ("lenet",), "paradigms": (1,), "eps": (0.3,), "n_test": 8})
    (row0, row1) = res["rows"]
    assert row1["lams"] == [0.3, 0.3] and row1["K"] == 1
    assert row1["cells"]["0.3"]["paper_fgsm"] is None
    assert "| LeNet | P1: fixed λ" in (tmp_path / "adaptive_reprogramming.md").read_text()


def test_cli_paper_adaptive_dispatches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture) -> None:
    seen: dict[str, object] = {}

    def fake_run(out_dir: str, **kw: object) -> dict[str, object]:
        seen.update(out=out_dir, **kw)
        (Path(out_dir) / "adaptive_reprogramming.md").write_text("# table\n")
        return {"wall_seconds": 1.0}

    monkeypatch.setattr(AR, "run", fake_run)
    assert main(["paper", "adaptive", "--out", str(tmp_path), "--n-test", "30", "--seed", "3", "--quiet"]) == 0
    assert seen["out"] == str(tmp_path) and seen["n_test"] == 30 and seen["seed"] == 3
    assert seen["progress"] is False and seen["threads"] == 1
    assert "# table" in capsys.readouterr().out
