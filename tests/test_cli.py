"""CLI: happy paths end to end on a small slice of the bundled MNIST, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from torchrobust import checkpoint, models
from torchrobust.cli import main


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    path = d / "mlp.safetensors"
    rc = main(["train", "--model", "mlp", "--model-arg", "widths=[32]", "--model-arg", "activation=\"relu\"",
               "--n-train", "2000", "--epochs", "1", "--batch-size", "64", "--lr", "0.05", "--out", str(path),
               "--quiet", "--no-val"])
    assert rc == 0
    return path


def test_info(capsys):
    assert main(["info", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "mnist" in out["datasets"] and "mlp" in out["models"] and "pgd" in out["attacks"]


def test_train_writes_loadable_checkpoint(ckpt):
    m = checkpoint.load(ckpt)
    meta = checkpoint.load_metadata(ckpt)
    assert meta["metadata"]["training"]["epochs"] == 1
    assert isinstance(m, type(models.create("mlp")))


def test_evaluate_writes_results(ckpt, tmp_path, capsys):
    out = tmp_path / "res"
    rc = main(["evaluate", str(ckpt), "--n-examples", "64", "--eps", "0,0.1,0.3", "--steps", "5", "--out", str(out),
               "--quiet"])
    assert rc == 0
    for f in ["results.json", "results.csv", "results.md", "accuracy_vs_eps.png"]:
        assert (out / f).stat().st_size > 0
    res = json.loads((out / "results.json").read_text())
    assert res["n_examples"] == 64 and res["eps"] == [0.0, 0.1, 0.3]
    acc = [r["worst_case"] for r in res["table"]]
    assert acc[0] == res["clean_accuracy"] and acc[2] <= acc[1] <= acc[0]
    assert "| eps |" in capsys.readouterr().out


@pytest.mark.parametrize("argv,match", [
    (["train", "--model", "mpl", "--out", "x.safetensors"], "unknown model 'mpl'; valid:"),
    (["train", "--model", "mlp", "--data", "mnits", "--out", "x.safetensors"], "unknown dataset"),
    (["train", "--model", "mlp", "--epochs", "0", "--out", "x.safetensors"], "epochs"),
    (["train", "--model", "mlp", "--mode", "madry", "--out", "x.safetensors"], "training mode"),
    (["train", "--model", "mlp", "--model-arg", "depth=3", "--out", "x.safetensors"], "depth"),
])
def test_train_errors(argv, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv + ["--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("torchrobust: error:") and match in err and "\n" not in err


@pytest.mark.parametrize("extra,match", [
    (["--attacks", "pgdd"], "unknown attack 'pgdd'"),
    (["--eps", "-0.1"], "eps"),
    (["--steps", "0"], "steps"),
    (["--data", "cifar10", "--data-root", "/nonexistent"], "cifar10"),
    (["--data", "mnits"], "unknown dataset"),
])
def test_evaluate_errors(ckpt, extra, match, capsys, tmp_path):
    assert main(["evaluate", str(ckpt), "--n-examples", "16", "--out", str(tmp_path / "o"), "--quiet", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("torchrobust: error:") and match in err and "\n" not in err


def test_evaluate_wrong_channels(tmp_path, capsys):
    path = checkpoint.save(models.create("lenet", in_channels=3), tmp_path / "l3.safetensors")
    assert main(["evaluate", str(path), "--n-examples", "8", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "in_channels" in capsys.readouterr().err


def test_corrupt_and_missing_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage" * 10)
    assert main(["evaluate", str(bad), "--quiet"]) == 2
    assert "corrupt checkpoint" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing.safetensors"), "--quiet"]) == 2
    assert "not found" in capsys.readouterr().err


def test_subprocess_error_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "torchrobust.cli", "evaluate", str(tmp_path / "nope.safetensors")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_argparse_error_is_one_line():
    r = subprocess.run([sys.executable, "-m", "torchrobust.cli", "evaluate"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "checkpoint" in r.stderr


def test_torch_threads_flag(ckpt, tmp_path):
    before = torch.get_num_threads()
    try:
        assert main(["evaluate", str(ckpt), "--n-examples", "8", "--eps", "0", "--threads", "1",
                     "--out", str(tmp_path / "o"), "--quiet"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_reprogram_forge_certify_commands(ckpt, tmp_path, capsys):
    rp = tmp_path / "nrpm.safetensors"
    assert main(["reprogram", str(ckpt), "--lam", "0.7", "--K", "2", "--out", str(rp), "--quiet"]) == 0
    m = checkpoint.load(rp)
    nrpm = [mod for mod in m.modules() if type(mod).__name__.startswith("NRPM")]
    assert nrpm and all(abs(float(mod.lam) - 0.7) < 1e-6 and mod.K == 2 for mod in nrpm)
    fp = tmp_path / "forged.safetensors"
    assert main(["forge", str(ckpt), "--c-r", "2**-5", "--n-calib", "500", "--out", str(fp), "--quiet"]) == 0
    forged = checkpoint.load(fp)
    assert any(type(mod).__name__ == "Forged" for mod in forged.modules())
    out = tmp_path / "cert"
    assert main(["certify", str(ckpt), "--n-examples", "3", "--n0", "20", "--n", "200", "--sigma", "0.25",
                 "--out", str(out), "--quiet"]) == 0
    doc = json.loads((out / "certify.json").read_text())
    assert doc["n_examples"] == 3 and len(doc["certified_accuracy"]) == len(doc["radii"])
    assert (out / "certified_accuracy.png").stat().st_size > 0
    assert main(["reprogram", str(rp), "--out", str(tmp_path / "twice.safetensors"), "--quiet"]) == 2
    assert "already" in capsys.readouterr().err
    assert main(["reprogram", str(ckpt), "--lam", "1.5", "--out", str(tmp_path / "bad.safetensors"), "--quiet"]) == 2
    assert main(["forge", str(ckpt), "--c-r", "-1", "--out", str(tmp_path / "bad2.safetensors"), "--quiet"]) == 2


def test_evaluate_adaptive_suite_and_checks(ckpt, tmp_path):
    out = tmp_path / "ad"
    assert main(["evaluate", str(ckpt), "--n-examples", "12", "--eps", "0,0.3", "--suite", "adaptive",
                 "--steps", "10", "--out", str(out), "--quiet"]) == 0
    doc = json.loads((out / "adaptive.json").read_text())
    row = doc["table"][0]
    assert row["eps"] == 0.3 and row["worst_case"] <= min(v for k, v in row.items()
                                                           if isinstance(v, float) and k != "eps")
    assert list(out.glob("state_Linf_0.3*"))  # the resume state (its layout belongs to torchrobust.resume)
    out2 = tmp_path / "sw"
    assert main(["evaluate", str(ckpt), "--n-examples", "12", "--eps", "0,0.1", "--checks", "--steps", "5",
                 "--attacks", "fgsm,pgd", "--attack-arg", "pgd.alpha=0.02", "--out", str(out2), "--quiet"]) == 0
    res = json.loads((out2 / "results.json").read_text())
    assert res["config"]["attack_kwargs"]["pgd"]["alpha"] == 0.02
    assert isinstance(res["flags"], list)
    assert main(["evaluate", str(ckpt), "--attack-arg", "cw.steps=3", "--out", str(out2), "--quiet"]) == 2


def test_psat_train_and_evaluate(tmp_path, capsys):
    run = tmp_path / "psat"
    assert main(["psat", "train", "--out", str(run), "--members", "Linf,L2", "--baselines", "max", "--n-train", "200",
                 "--steps", "2", "--quiet"]) == 0
    assert {p.name for p in run.glob("*.safetensors")} >= {"Linf.safetensors", "L2.safetensors",
                                                           "AT_max.safetensors"}
    member = checkpoint.load(run / "Linf.safetensors")
    assert any("Hyper" in type(m).__name__ for m in member.modules())
    assert main(["psat", "evaluate", str(run), "--n-examples", "20", "--restarts", "1", "--steps", "3",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "trade" in out.lower() and (run / "psat_table.tex").is_file()
    assert main(["psat", "train", "--out", str(run), "--members", "L7", "--quiet"]) == 2
    assert main(["psat", "evaluate", str(run), "--autoattack", "apgd-x", "--quiet"]) == 2
    assert "unknown AutoAttack sub-attack" in capsys.readouterr().err


def test_demo_small(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1", "--n-test", "40", "--steps", "3", "--p3-steps", "3",
                 "--quiet"]) == 0
    for f in ["results.json", "results.csv", "results.md", "accuracy_vs_eps.png", "mlp.safetensors",
              "mlp_nrpm_p1.safetensors", "mlp_nrpm_p3.safetensors"]:
        assert (out / f).stat().st_size > 0, f
    doc = json.loads((out / "results.json").read_text())
    assert len(doc["table"]) == 7 and set(doc["models"]) == {"LPM", "NRPM-P1(λ=0.7)", "NRPM-P3"}  # the paper ε grid
    for m in doc["models"].values():  # the strong default set, APGD-T on APGD-CE's survivors
        assert m["attacks"] == ["fgsm", "apgd-ce", "apgd-t"] and m["config"]["survivors_only"] == ["apgd-t"]
    assert doc["strength"] == "weak"  # --steps 3: APGD-3 is labelled weak, never passed off as the default
    assert all(r["NRPM-P3 worst"] <= r["NRPM-P3 FGSM"] for r in doc["table"])
    p3 = checkpoint.load(out / "mlp_nrpm_p3.safetensors")
    lams = checkpoint.load_metadata(out / "mlp_nrpm_p3.safetensors")["metadata"]["learned_lams"]
    assert set(lams) == {"fc1", "fc2", "fc3"} and all(0 <= v <= 1 for v in lams.values())
    assert abs(float(p3.fc1.lam) - lams["fc1"]) < 1e-6
    printed = capsys.readouterr().out
    assert "NRPM-P3 FGSM" in printed and "Strength: weak" in printed


def _without_times(o):
    """A results document without its wall-clock fields (the only part of a rerun allowed to differ)."""
    if isinstance(o, dict):
        return {k: _without_times(v) for k, v in o.items() if "seconds" not in k}
    if isinstance(o, list):
        return [_without_times(v) for v in o]
    return o


def test_evaluate_rerun_is_identical(ckpt, tmp_path):
    """Deterministic reruns: the same command twice (a randomised attack included) gives the same per-example
    results and tables; no seed comes from the clock."""
    docs, csvs = [], []
    for name in ("a", "b"):
        out = tmp_path / name
        assert main(["evaluate", str(ckpt), "--n-examples", "24", "--eps", "0,0.1,0.2", "--attacks", "fgsm,pgd,square",
                     "--attack-arg", "square.n_queries=20", "--steps", "3", "--out", str(out), "--quiet"]) == 0
        docs.append(_without_times(json.loads((out / "results.json").read_text())))
        csvs.append((out / "results.csv").read_bytes())
    assert docs[0] == docs[1] and csvs[0] == csvs[1]
    assert docs[0]["per_example"]["square"] and len(docs[0]["table"]) == 3


def test_report_out_folder(ckpt, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["evaluate", str(ckpt), "--n-examples", "8", "--eps", "0,0.1", "--steps", "1", "--out", str(run),
                 "--quiet"]) == 0
    before = sorted(p.name for p in run.iterdir())
    rep = tmp_path / "rep"
    assert main(["report", str(run), "--out", str(rep), "--quiet"]) == 0
    assert sorted(p.name for p in run.iterdir()) == before  # the run folder is only read
    assert "<img" in (rep / "report.html").read_text() and (rep / "report.md").is_file()
    assert "(../run/accuracy_vs_eps.png)" in (rep / "report.md").read_text()
    assert main(["report", str(run), "--out", str(rep), "--quiet"]) == 0  # a report is regenerated, not refused


# ----------------------------------------------------------------------------- the experiments' command lines
def test_paper_adaptive_takes_the_experiments_options(tmp_path, monkeypatch, capsys):
    from torchrobust.experiments import adaptive_reprogramming as AR

    seen: dict = {}

    def fake_run(out_dir, **kw):
        seen.update(kw)
        (tmp_path / "adaptive_reprogramming.md").write_text("# cells\n")
        return {"wall_seconds": 2.0}

    monkeypatch.setattr(AR, "run", fake_run)
    assert main(["paper", "adaptive", "--out", str(tmp_path), "--eps", "0.1,0.3", "--models", "lenet", "--paradigms",
                 "2,3", "--no-baseline", "--budget", "quick", "--steps", "7", "--square-queries", "9",
                 "--state-dir", str(tmp_path / "st"), "--report-only", "--quiet"]) == 0
    assert seen["eps"] == [0.1, 0.3] and seen["models"] == ["lenet"] and seen["paradigms"] == [2, 3]
    assert seen["baseline"] is False and seen["budget"] == "quick" and seen["report_only"] is True
    assert seen["steps"] == 7 and seen["square_queries"] == 9 and seen["state_dir"] == str(tmp_path / "st")
    assert capsys.readouterr().out.startswith("# cells\n")


def test_paper_preset_robust_option_reaches_run(tmp_path, monkeypatch, capsys):
    """`--robust` is passed to the preset as robust_eval (default strong)."""
    from torchrobust.experiments import reprogramming as R

    seen: list = []

    def fake_run(name, out_dir, **kw):
        seen.append(kw["robust_eval"])
        return {"wall_seconds": 1.0}

    monkeypatch.setattr(R, "run", fake_run)
    assert main(["paper", "table1", "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert main(["paper", "lenet", "--robust", "pgd20", "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert seen == ["strong", "pgd20"]


def test_paper_robust_eps_and_rows_reach_the_preset(tmp_path, monkeypatch):
    """`--robust-eps` / `--robust-rows` are passed to the preset (None: the profile's)."""
    from torchrobust.experiments import reprogramming as R

    seen: list = []

    def fake_run(name, out_dir, **kw):
        seen.append((kw["profile"], kw["robust_eps"], kw["robust_rows"]))
        return {"wall_seconds": 1.0}

    monkeypatch.setattr(R, "run", fake_run)
    assert main(["paper", "table1", "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert main(["paper", "table1", "--profile", "full", "--robust-eps", "0.1,0.3", "--robust-rows", "selected",
                 "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert seen == [("fast", None, None), ("full", [0.1, 0.3], "selected")]


def test_paper_adaptive_budget_reaches_the_preset(tmp_path, monkeypatch):
    """`--adaptive-budget NAME` (with `--robust adaptive`) is passed to the preset; None: the profile's."""
    from torchrobust.experiments import reprogramming as R

    seen: list = []

    def fake_run(name, out_dir, **kw):
        seen.append((kw["robust_eval"], kw["adaptive_budget"]))
        return {"wall_seconds": 1.0}

    monkeypatch.setattr(R, "run", fake_run)
    assert main(["paper", "lenet", "--robust", "adaptive", "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert main(["paper", "lenet", "--robust", "adaptive", "--adaptive-budget", "fast", "--out", str(tmp_path / "b"),
                 "--quiet"]) == 0
    assert seen == [("adaptive", None), ("adaptive", "fast")]


def test_preset_robust_eps_and_rows_set_the_evaluation(tmp_path):
    """run(robust_eps=, robust_rows=) replace the profile's ε and rows of the robust evaluation: the quick profile
    evaluates one row at one ε by default; with rows="all" and two ε every row carries both ε."""
    from torchrobust.errors import TorchRobustError
    from torchrobust.experiments.reprogramming import run

    res = run("table8", tmp_path / "q", quick=True, robust_eval="pgd20", robust_eps=[0.1, 0.2], robust_rows="all",
              progress=False)
    assert list(res["config"]["pgd_eps"]) == [0.1, 0.2] and res["config"]["pgd_all_rows"] is True
    assert res["rows"] and all(list(r["pgd20"]) == ["clean", "0.1", "0.2"] for r in res["rows"])
    for bad in ([0.0], [1.5], [float("nan")], []):
        with pytest.raises(TorchRobustError, match="robust_eps"):
            run("table8", tmp_path / "bad", quick=True, robust_eps=bad, progress=False)
    with pytest.raises(TorchRobustError, match="unknown robust_rows 'some'"):
        run("table8", tmp_path / "bad", quick=True, robust_rows="some", progress=False)
    assert not (tmp_path / "bad").exists()


def test_lenet_selected_rows_include_the_fine_tuned_pure_nrpm(tmp_path, monkeypatch):
    """The LeNet preset's robust evaluation covers P1 λ = 0.5, the weights-fine-tuned λ = 0 row (the sweep's most
    FGSM-robust one) and both adversarially fine-tuned models; the other rows get FGSM only."""
    from dataclasses import replace

    from torchrobust.experiments import reprogramming_protocol as P
    from torchrobust.experiments.reprogramming import run

    monkeypatch.setitem(P.PROFILES, "quick", replace(P.PROFILES["quick"], lenet_finetune_lams=(0.5, 0.0)))
    res = run("lenet", tmp_path / "q", quick=True, robust_eval="pgd20", progress=False)
    robust = {r["row"] for r in res["rows"] if r.get("pgd20")}
    assert robust == {"P1 λ=0.5", "weights fine-tuned, λ=0.0", "LPM adv. fine-tuned", "NRPM adv. fine-tuned"}
    assert "weights fine-tuned, λ=0.5" in {r["row"] for r in res["rows"]}


def test_table8_selected_rows_are_the_k_trend_at_lambda_07(tmp_path, monkeypatch):
    """Table 8's selected rows are λ = 0.7 at every K (the paper's claim is the K trend); other λ get FGSM only."""
    from dataclasses import replace

    from torchrobust.experiments import reprogramming_protocol as P
    from torchrobust.experiments.reprogramming import run

    monkeypatch.setitem(P.PROFILES, "quick", replace(P.PROFILES["quick"], lam_grid_k=(0.8, 0.7), K_grid=(0, 1, 2)))
    res = run("table8", tmp_path / "q", quick=True, robust_eval="pgd20", progress=False)
    robust = {r["row"] for r in res["rows"] if r.get("pgd20")}
    assert robust == {"λ=0.7 K=0", "λ=0.7 K=1", "λ=0.7 K=2"}
    assert {r["row"] for r in res["rows"]} >= {"λ=0.8 K=1", "λ=0.8 K=2"}


@pytest.mark.parametrize("argv,match", [
    (["paper", "table1", "--models", "mlp"], "--models is for `paper adaptive` only"),
    (["paper", "lenet", "--eps", "0.1", "--report-only"], "--eps, --report-only are for `paper adaptive` only"),
    (["paper", "adaptive", "--n-pgd", "10"], "--n-pgd"),
    (["paper", "table1", "--robust", "pgd50"], "invalid choice: 'pgd50'"),
    (["paper", "adaptive", "--robust", "pgd20"], "drop --robust"),
    (["paper", "fig9", "--robust", "strong"], "drop --robust"),
    (["paper", "adaptive", "--robust-eps", "0.1"], "drop --robust-eps"),
    (["paper", "fig9", "--robust-rows", "all"], "drop --robust-rows"),
    (["paper", "table1", "--robust-rows", "some"], "invalid choice: 'some'"),
    (["paper", "table1", "--robust-eps", "x"], "--robust-eps"),
    (["paper", "lenet", "--robust", "adaptive", "--adaptive-budget", "huge"], "invalid choice: 'huge'"),
    (["paper", "lenet", "--adaptive-budget", "fast"], "add --robust adaptive or drop --adaptive-budget"),
    (["paper", "adaptive", "--adaptive-budget", "fast"], "--adaptive-budget applies to the paper presets"),
    (["paper", "fig9", "--adaptive-budget", "fast"], "drop --adaptive-budget"),
    (["paper", "fig6", "--n-pgd", "5", "--robust", "pgd20"], "drop --n-pgd, --robust"),
    (["paper", "adaptive", "--paradigms", "1,x"], "expected comma-separated integers"),
    (["paper", "adaptive", "--steps", "0"], "--steps"),
    (["psat", "experiment", "members"], "--out"),
    (["psat", "experiment", "train", "--out", "r"], "invalid choice: 'train'"),
    (["psat", "experiment", "evaluate", "--out", "r", "--autoattack", "apgd-x"], "unknown AutoAttack sub-attack"),
])
def test_experiment_command_mistakes_are_one_line(argv, match, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("torchrobust: error:") and match in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # refused before any work: nothing written


def test_adaptive_experiment_budget_overrides_are_checked(tmp_path):
    from torchrobust.errors import TorchRobustError
    from torchrobust.experiments import adaptive_reprogramming as AR

    with pytest.raises(TorchRobustError, match="steps=0"):
        AR.run(tmp_path, steps=0, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_psat_experiment_stage_calls_run_stage(tmp_path, monkeypatch, capsys):
    from torchrobust.psat import experiment

    seen: dict = {}

    def fake_stage(stage, out_dir, **kw):
        seen.update(stage=stage, out=out_dir, **kw)
        return [tmp_path / "part_psat_500.json"]

    monkeypatch.setattr(experiment, "run_stage", fake_stage)
    assert main(["psat", "experiment", "evaluate", "--out", str(tmp_path), "--only", "psat", "--start", "500",
                 "--n-test", "500", "--steps", "50", "--restarts", "3", "--autoattack", "apgd-ce,apgd-t",
                 "--quiet"]) == 0
    assert seen["stage"] == "evaluate" and seen["out"] == str(tmp_path) and seen["only"] == ["psat"]
    assert (seen["start"], seen["n_test"], seen["steps"], seen["restarts"]) == (500, 500, 50, 3)
    assert seen["autoattack"] == ["apgd-ce", "apgd-t"] and seen["train_steps"] == 5 and seen["n_train"] == 10000
    assert "part_psat_500.json" in capsys.readouterr().out
    assert main(["psat", "experiment", "evaluate", "--out", str(tmp_path), "--autoattack", "standard",
                 "--quiet"]) == 0
    assert seen["autoattack"] == [] and seen["only"] is None  # 'standard': the full reference AutoAttack


def test_psat_run_stage_refuses_an_unknown_stage(tmp_path):
    from torchrobust.errors import TorchRobustError
    from torchrobust.psat.experiment import run_stage

    with pytest.raises(TorchRobustError,
                       match="unknown stage 'train'; valid: baselines, evaluate, lightweight, members"):
        run_stage("train", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_psat_experiment_table_merges_split_evaluations(tmp_path, capsys):
    from torchrobust.psat import MultiNormRow

    def row(name, clean, linf, n):
        return MultiNormRow(name, clean, {"Linf": linf, "L2": 0.5, "L1": 0.25}, 0.2, 0.1, n, 100, None).as_dict()

    (tmp_path / "part_psat_0.json").write_text(json.dumps([row("PSAT (entropy)", 1.0, 0.5, 300)]))
    (tmp_path / "part_psat_300.json").write_text(json.dumps([row("PSAT (entropy)", 0.5, 0.1, 100)]))
    (tmp_path / "part_AT_max_0.json").write_text(json.dumps([row("AT_max", 0.9, 0.4, 400)]))
    assert main(["psat", "experiment", "table", "--out", str(tmp_path), "--quiet"]) == 0
    doc = json.loads((tmp_path / "psat_table.json").read_text())
    rows = doc["multinorm_rows"]
    assert [r["method"] for r in doc["rows"]] == [r["name"] for r in rows]  # the typed table beside the raw rows
    psat = next(r for r in rows if r["name"] == "PSAT (entropy)")
    assert psat["n"] == 400 and psat["clean"] == pytest.approx(0.875) and psat["per_norm"]["Linf"] == pytest.approx(0.4)
    assert [r["name"] for r in rows] == ["PSAT (entropy)", "AT_max"]  # the aggregate before the baselines
    assert (tmp_path / "psat_table.md").is_file() and (tmp_path / "train_times.json").is_file()
    assert "psat_table.md" in capsys.readouterr().out
