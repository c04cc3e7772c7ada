"""benchmarks/p2_lambda_param.py on a tiny budget: cells written as they finish, raw λ stored unclamped where the
clamped one is projected, the paper's logged λ read as sigmoid(raw), a diverged cell recorded, a rerun recomputes
nothing."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import load_benchmark

from torchrobust import checkpoint
from torchrobust.errors import TorchRobustError, TrainingDiverged
from torchrobust.experiments.reprogramming import BACKBONE_SPECS, linear_mlp


@pytest.fixture(scope="module")
def mod():
    return load_benchmark("p2_lambda_param")


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    net = linear_mlp(3, 0)
    net.torchrobust_spec = dict(BACKBONE_SPECS["mlp"])
    path = tmp_path_factory.mktemp("bb") / "standard.safetensors"
    checkpoint.save(net, path)
    return path


def test_cells_report_and_resume(mod, backbone, tmp_path, monkeypatch):
    # a large λ learning rate so that three steps take λ out of [0, 1] (the full profile's is 1e-3 over 4,690 steps)
    monkeypatch.setitem(mod.PROFILES, "full", replace(mod.PROFILES["full"], reprogram_lr_p2=0.5))
    kw = {"n_test": 200, "n_train": 320, "max_batches": 3, "epochs": 2}
    cells = mod.run(tmp_path, backbone, ["raw:0.3", "clamp:0.3", "paper-logit:0.3", "paper-direct:0.3"], **kw)
    # epochs=2 is not the full profile's count: every cell's name says so (-ep2)
    assert sorted(p.name for p in (tmp_path / "cells").iterdir()) == [
        "clamp-eps0.3-ep2.json", "paper-direct-eps0.3-ep2.json", "paper-logit-eps0.3-ep2.json", "raw-eps0.3-ep2.json"]
    raw, clamp = cells["raw-eps0.3-ep2"], cells["clamp-eps0.3-ep2"]
    assert json.loads((tmp_path / "cells" / "raw-eps0.3-ep2.json").read_text()) == raw
    # same gradient at the start, but only the raw λ leaves [0, 1]; the clamped one is projected onto its ends
    assert any(not 0.0 <= v <= 1.0 for v in raw["parameter"]) and raw["lam"] == raw["parameter"]
    assert all(0.0 <= v <= 1.0 for v in clamp["lam"]) and clamp["lam"] != raw["lam"]
    assert raw["sigmoid_of_parameter"] == [round(1 / (1 + math.exp(-v)), 6) for v in raw["parameter"]]
    assert [ep["epoch"] for ep in raw["epochs"]] == [1, 2] and all(ep["loss"] > 0 for ep in raw["epochs"])
    for cell in cells.values():
        assert len(cell["fgsm_first1000"]) == len(cell["fgsm_all"]) == 7 and cell["fgsm_first1000"] == cell["fgsm_all"]
        assert all(0 <= v <= 100 for v in cell["fgsm_all"]) and cell["wall_seconds"] >= 0
    # the paper's logged λ (Table 1 P2) read as sigmoid of a raw λ: the model uses logit(logged), outside [0, 1]
    logit = cells["paper-logit-eps0.3-ep2"]
    assert logit["sigmoid_of_parameter"] == pytest.approx([0.459, 0.033, 0.131], abs=1e-6)
    assert logit["lam"] == pytest.approx([-0.16437, -3.37769, -1.89215], abs=1e-5) and logit["epochs"] == []
    assert cells["paper-direct-eps0.3-ep2"]["lam"] == pytest.approx([0.459, 0.033, 0.131])
    md = (tmp_path / "p2-lambda.md").read_text()
    assert "| paper P2 ε_train=0.3 (Tables 1/2) | first 1000 | 81.5 | 75.3 |" in md
    assert "| raw-eps0.3-ep2 | all 200 |" in md

    def no_work(*a, **k):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr(mod.PresetContext, "train", no_work)
    monkeypatch.setattr(mod, "fgsm_sweep", no_work)
    assert mod.run(tmp_path, backbone, ["raw:0.3", "clamp:0.3", "paper-logit:0.3", "paper-direct:0.3"], **kw) == cells


def test_a_diverging_cell_is_recorded(mod, backbone, tmp_path, monkeypatch):
    def diverge(self, model, **kw):
        raise TrainingDiverged("training diverged at epoch 1, batch 4: the loss is nan", epoch=1, batch=4)

    monkeypatch.setattr(mod.PresetContext, "train", diverge)
    cells = mod.run(tmp_path, backbone, ["sigmoid:0"], n_test=50, n_train=64, max_batches=1, epochs=1)
    cell = cells["sigmoid-eps0-ep1"]
    assert cell["diverged"] and (cell["epoch"], cell["batch"]) == (1, 4) and "fgsm_all" not in cell
    assert cell["config"]["mixed"] is False
    assert "| sigmoid-eps0-ep1 | diverged |" in (tmp_path / "p2-lambda.md").read_text()


@pytest.mark.parametrize("bad", ["raw", "tanh:0.3", "raw:x", "raw:2", "paper-logit:0.07"])
def test_bad_cell_is_a_one_line_error(mod, bad):
    with pytest.raises(TorchRobustError, match=r"^cell .*; pass "):
        mod.parse_cell(bad)


def test_lam0_and_epochs_are_options_and_part_of_the_cell_name(mod, backbone, tmp_path, monkeypatch):
    # lr 1e-12: λ does not move measurably, so the stored λ is the initial one (the paper code's --lmbd default)
    monkeypatch.setitem(mod.PROFILES, "full", replace(mod.PROFILES["full"], reprogram_lr_p2=1e-12))
    kw = {"n_test": 50, "n_train": 128, "max_batches": 1}
    cells = mod.run(tmp_path, backbone, ["clamp:0.3"], lam0=0.6, epochs=2, **kw)
    cell = cells["clamp-eps0.3-lam0.6-ep2"]
    assert cell["lam"] == pytest.approx([0.6, 0.6, 0.6], abs=1e-6) and [ep["epoch"] for ep in cell["epochs"]] == [1, 2]
    assert (cell["config"]["lam0"], cell["config"]["epochs"]) == (0.6, 2)
    # the default recipe's cell (λ init 0.5, the full profile's epochs) sits beside it under its own, unchanged name
    # (cells of it are stored on disk); neither overwrites the other
    default = mod.run(tmp_path, backbone, ["clamp:0.3"], **kw)["clamp-eps0.3"]
    assert default["lam"] == pytest.approx([0.5, 0.5, 0.5], abs=1e-6)
    assert len(default["epochs"]) == default["config"]["epochs"] == mod.PROFILES["full"].reprogram_epochs
    assert sorted(p.name for p in (tmp_path / "cells").iterdir()) == ["clamp-eps0.3-lam0.6-ep2.json",
                                                                      "clamp-eps0.3.json"]
    for bad in ({"lam0": 1.5}, {"epochs": 0}):
        with pytest.raises(TorchRobustError, match="pass e.g."):
            mod.run(tmp_path, backbone, ["clamp:0.3"], **bad, **kw)


@pytest.mark.parametrize(("extra", "epochs"), [([], None), (["--epochs", "10"], 10)])
def test_cli_passes_epochs_through_so_only_an_explicit_count_names_cells(mod, backbone, tmp_path, monkeypatch,
                                                                         capsys, extra, epochs):
    """The command line gives run() the epochs it was given (None without --epochs): the default recipe's cells keep
    their names (``clamp-eps0.3``), ``--epochs 10`` names them ``-ep10``."""
    seen: list[dict] = []

    def fake_run(out, backbone_path, cells, **kw):
        seen.append(kw)
        return {}

    monkeypatch.setattr(mod, "run", fake_run)
    argv = ["--out", str(tmp_path), "--backbone", str(backbone), "--cells", "clamp:0.3", *extra]
    assert mod.main(argv) == 0
    assert seen == [{"n_test": 10000, "lam0": mod.LAM0, "epochs": epochs}]
    assert mod.cell_name("clamp", 0.3, seen[0]["lam0"], seen[0]["epochs"]) == (
        "clamp-eps0.3" if epochs is None else "clamp-eps0.3-ep10")
    capsys.readouterr()


@pytest.mark.parametrize("bad", [["--lam0", "1.5"], ["--epochs", "0"], ["--cells", "tanh:0.3"]])
def test_bad_command_line_is_one_line_exit_2_and_writes_nothing(mod, backbone, tmp_path, capsys, bad):
    out = tmp_path / "out"
    argv = ["--out", str(out), "--backbone", str(backbone), "--cells", "clamp:0.3", "--n-test", "10"]
    argv = argv[:4] + bad if bad[0] == "--cells" else argv + bad
    assert mod.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("p2_lambda_param: error: ") and err.count("\n") == 1 and "pass" in err
    assert not out.exists()
