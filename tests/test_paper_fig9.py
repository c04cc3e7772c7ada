"""`torchrobust paper fig9` (Robustness Reprogramming, App. C.3, Figure 9): ℓ∞/ℓ2/ℓ0 budgets, plain vs NRPM MLP."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import cli_one_line_error

from torchrobust import attacks as A
from torchrobust import checkpoint
from torchrobust.cli import main
from torchrobust.errors import TorchRobustError
from torchrobust.experiments.reprogramming import PROFILES, load_mnist, train_paper_model
from torchrobust.experiments.reprogramming_figures import run_figure
from torchrobust.reprogramming import nrpm_layers
from torchrobust.tables import Table
from torchrobust.train import TrainConfig, fit

N = 6


@pytest.fixture(scope="module")
def fig9_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fig9")
    rc = main(["paper", "fig9", "--profile", "quick", "--n-test", str(N), "--out", str(out), "--quiet"])
    return rc, out


def test_fig9_cli_writes_the_table(fig9_run):
    rc, out = fig9_run
    assert rc == 0
    table = Table.from_json((out / "fig9_table.json").read_text())
    assert table.names == ["model", "norm", "budget", "robust", "one_step", "attacks", "strength"]
    # quick profile: two budgets per norm (0 and one attacked), three norms, plain + NRPM paradigm 1
    cells = {(r["model"], r["norm"], r["budget"]) for r in table.rows}
    assert cells == {(m, n, b) for m in ("plain (LPM)", "NRPM P1")
                     for n, bs in (("Linf", (0.0, 0.1)), ("L2", (0.0, 2.0)), ("L0", (0.0, 10.0))) for b in bs}
    acc = {(r["model"], r["norm"], r["budget"]): r["robust"] for r in table.rows}
    for m in ("plain (LPM)", "NRPM P1"):
        clean = acc[(m, "Linf", 0.0)]
        assert 0 < clean <= 1
        assert acc[(m, "L2", 0.0)] == acc[(m, "L0", 0.0)] == clean  # budget 0 is clean accuracy, same images
        for n, b in (("Linf", 0.1), ("L2", 2.0), ("L0", 10.0)):
            assert acc[(m, n, b)] <= clean
    # the strong worst case is never above the one-step attack alone
    assert all(r["robust"] <= r["one_step"] for r in table.rows)
    # ℓ∞/ℓ2 through the default (strong) attack set; ℓ0 through the ℓ0 attack
    attacks = {r["norm"]: r["attacks"] for r in table.rows}
    assert attacks == {"Linf": "fgsm+apgd-ce+apgd-t", "L2": "fgsm+apgd-ce+apgd-t", "L0": "l0"}
    doc = json.loads((out / "fig9.json").read_text())
    assert doc["config"]["n_test"] == N and doc["wall_seconds"] > 0
    assert "| NRPM P1 | L0 |" in (out / "fig9.md").read_text()


def test_fig9_state_resumes_to_the_same_table(fig9_run, tmp_path):
    """Each sweep keeps its engine state under OUT/state; a rerun into a copy of the folder reuses it (no attack
    runs again) and writes the same table."""
    import shutil

    _, out = fig9_run
    assert sorted(p.name for p in (out / "state").glob("p1-*.json")), "no sweep state kept"
    copy_dir = tmp_path / "again"
    shutil.copytree(out, copy_dir)
    before = Table.from_json((out / "fig9_table.json").read_text()).rows
    res = run_figure("fig9", copy_dir, n_test=N, profile="quick")
    assert Table.from_json((copy_dir / "fig9_table.json").read_text()).rows == before
    assert sum(v for k, v in res["timings"].items() if k.startswith("eval")) < 5.0  # nothing re-attacked


def test_fig9_budgets_inside_their_balls(fig9_run):
    """The attacks the table ran stay inside the budgets it reports, on the checkpointed NRPM model."""
    _, out = fig9_run
    model = checkpoint.load(out / "models" / "mlp-p1.safetensors").eval()
    from torchrobust import data

    x, y = data.as_tensors(data.load("mnist", "test"))
    x, y = x[:N], y[:N]
    for name, threat, eps in (("apgd-ce", "Linf", 0.1), ("apgd-ce", "L2", 2.0), ("l0", A.L0(1.0), 10.0)):
        x_adv = A.create(name, threat=threat, eps=eps, steps=10)(model, x, y)
        tm = A.get_threat(threat, eps) if isinstance(threat, str) else threat.with_eps(eps)
        assert bool(tm.contains(x_adv, x).all())
        assert float(tm.norm(x_adv - x).max()) <= eps * (1 + 1e-5)
        assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1


def test_fig9_reuses_checkpoints(fig9_run, tmp_path):
    _, out = fig9_run
    before = (out / "models" / "mlp-p0.safetensors").stat().st_mtime_ns
    res = run_figure("fig9", out, n_test=2, profile="quick", budgets={"L0": [0, 5]})
    assert (out / "models" / "mlp-p0.safetensors").stat().st_mtime_ns == before
    assert res["timings"].get("train mlp-p0") is None  # loaded, not trained
    assert {r["norm"] for r in res["rows"]} == {"L0"}


@pytest.mark.parametrize("kw, match", [
    ({"budgets": {"L3": [0.1]}}, "norm"),
    ({"budgets": {"Linf": [-0.1]}}, ">= 0"),
    ({"budgets": {"L2": [float("nan")]}}, "finite"),
    ({"budgets": {"L0": [2.5]}}, "whole number"),
    ({"budgets": {"Linf": [2.0]}}, "above 1"),
    ({"n_test": 0}, "n_test"),
    ({"paradigms": (4,)}, "paradigms"),
    ({"paradigms": ("plain",)}, "plain-adv"),
    ({"paradigms": ("plain-adv", "plain-adv")}, "distinct"),
])
def test_fig9_bad_input_is_one_line_error_before_work(tmp_path, kw, match):
    with pytest.raises(TorchRobustError, match=match) as ei:
        run_figure("fig9", tmp_path / "o", profile="quick", **kw)
    assert "\n" not in str(ei.value)
    assert not (tmp_path / "o").exists()  # refused before any work


def test_fig9_cli_bad_input(tmp_path, capsys):
    assert main(["paper", "fig9", "--n-pgd", "10", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--n-pgd" in err and "Traceback" not in err
    assert main(["paper", "fig10", "--out", str(tmp_path / "o")]) == 2
    assert "invalid choice: 'fig10'" in capsys.readouterr().err


def test_unknown_figure():
    with pytest.raises(TorchRobustError, match="figure"):
        run_figure("fig99", "unused")
    assert torch.get_num_threads() >= 1


def test_fig6_quick_certified_table(fig9_run):
    """Figure 6 (randomized smoothing) on the same checkpointed models: certified accuracy falls with the radius."""
    _, out = fig9_run
    res = run_figure("fig6", out, n_test=3, profile="quick", sigmas=(0.25,), n_samples=100)
    table = Table.from_json((out / "fig6_table.json").read_text())
    assert table.names == ["model", "sigma", "radius", "certified"]
    for m in ("plain (LPM)", "NRPM P1"):
        curve = [r["certified"] for r in table.rows if r["model"] == m]
        assert len(curve) == 7 and all(0 <= a <= 1 for a in curve)
        assert curve == sorted(curve, reverse=True)
    assert res["config"]["n"] == 100 and res["timings"].get("train mlp-p0") is None
    with pytest.raises(TorchRobustError, match="sigma"):
        run_figure("fig6", out, profile="quick", sigmas=(-1.0,))


def test_fig6_resumes_finished_cells_and_recomputes_other_ones(fig9_run, tmp_path, monkeypatch):
    """Each finished (model, σ) certification is stored in OUT/state: a rerun into a copy of the folder reuses
    them (CERTIFY does not run) and writes the same table; another σ is certified afresh."""
    import shutil

    from torchrobust.evaluate import certify

    _, out = fig9_run
    first = run_figure("fig6", out, n_test=3, profile="quick", sigmas=(0.12, 0.5), n_samples=100)
    assert first["resumed"] == []
    copy_dir = tmp_path / "again"
    shutil.copytree(out, copy_dir)
    real = certify.certify_dataset
    calls: list = []

    def counting(*a, **kw):
        calls.append(kw.get("n"))
        return real(*a, **kw)

    monkeypatch.setattr(certify, "certify_dataset", counting)
    again = run_figure("fig6", copy_dir, n_test=3, profile="quick", sigmas=(0.12, 0.5), n_samples=100)
    assert calls == [] and len(again["resumed"]) == 4
    assert again["rows"] == first["rows"]
    assert "4 cells reused" in (copy_dir / "fig6.md").read_text()
    more = run_figure("fig6", copy_dir, n_test=3, profile="quick", sigmas=(0.12, 0.3), n_samples=100)
    assert len(calls) == 2 and len(more["resumed"]) == 2  # σ = 0.3 for both models; σ = 0.12 reused
    assert more["rows"][:7] == first["rows"][:7]


def test_fig9_cli_paradigms_adds_nrpm_rows(fig9_run, capsys):
    """`--paradigms 3` puts the paradigm-3 model (fine-tuned, Table 1's recipe) beside the plain backbone, reusing
    the backbone checkpoint; `--paradigms` is still refused for the presets that do not take it."""
    _, out = fig9_run
    before = (out / "models" / "mlp-p0.safetensors").stat().st_mtime_ns
    assert main(["paper", "fig9", "--profile", "quick", "--n-test", "2", "--paradigms", "3", "--out", str(out),
                 "--quiet"]) == 0
    assert (out / "models" / "mlp-p0.safetensors").stat().st_mtime_ns == before
    table = Table.from_json((out / "fig9_table.json").read_text())
    assert {r["model"] for r in table.rows} == {"plain (LPM)", "NRPM P3"}
    assert json.loads((out / "fig9.json").read_text())["config"]["paradigms"] == [3]
    capsys.readouterr()
    assert main(["paper", "fig9", "--paradigms", "4", "--out", str(out / "bad")]) == 2
    assert "paradigms" in capsys.readouterr().err and not (out / "bad").exists()
    assert main(["paper", "table1", "--paradigms", "3", "--out", str(out / "bad")]) == 2
    err = capsys.readouterr().err
    assert "--paradigms" in err and "paper adaptive" in err and err.count("\n") == 1


def test_fig9_plain_adv_row_is_paradigm3_recipe_without_nrpm(fig9_run, capsys):
    """`--paradigms 3,plain-adv`: the plain control of NRPM P3 — the backbone fine-tuned exactly as paradigm 3 (Adam
    lr 2e-3, FGSM ε = 0.3, mixed loss, same steps and data order) but never reprogrammed; checkpointed under
    OUT/models, its sweeps' state under OUT/state, reused on a rerun."""
    _, out = fig9_run
    assert main(["paper", "fig9", "--profile", "quick", "--n-test", "2", "--paradigms", "3,plain-adv", "--out",
                 str(out), "--quiet"]) == 0
    table = Table.from_json((out / "fig9_table.json").read_text())
    assert [r["model"] for r in table.rows if r["budget"] == 0 and r["norm"] == "Linf"] == [
        "plain (LPM)", "NRPM P3", "plain FGSM-FT (P3 recipe)"]
    assert json.loads((out / "fig9.json").read_text())["config"]["paradigms"] == [3, "plain-adv"]
    assert sorted(p.name for p in (out / "state").glob("plain-adv-*.json"))
    path = out / "models" / "mlp-p3-plain.safetensors"
    assert checkpoint.load_metadata(path)["metadata"]["nrpm"] is False
    model = checkpoint.load(path).eval()
    backbone = checkpoint.load(out / "models" / "mlp-p0.safetensors").eval()
    assert not nrpm_layers(model) and nrpm_layers(checkpoint.load(out / "models" / "mlp-p3.safetensors"))
    got, start = model.state_dict(), backbone.state_dict()
    assert got.keys() == start.keys() and all(not torch.equal(got[k], start[k]) for k in got)  # every weight moved
    # the recipe, written out: paradigm 3's TrainConfig on a copy of the backbone, without reprogramming
    prof = PROFILES["quick"]
    x_tr, y_tr, *_ = load_mnist(prof, 0)
    want = copy.deepcopy(backbone)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as run_figure trains (threads=1): FGSM's sign() makes training rounding-sensitive
    try:
        fit(want, (x_tr, y_tr), TrainConfig(epochs=prof.reprogram_epochs, batch_size=prof.batch_size,
                                            optimizer="adam", lr=2e-3, mode="fgsm", eps=0.3, mixed=True, seed=0,
                                            max_batches=prof.reprogram_steps))
    finally:
        torch.set_num_threads(threads)
    for k, v in want.state_dict().items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6)
    # reused on a rerun: not trained again, nothing re-attacked
    before = path.stat().st_mtime_ns
    res = run_figure("fig9", out, n_test=2, profile="quick", paradigms=("plain-adv",))
    assert path.stat().st_mtime_ns == before and res["timings"].get("train mlp-p3-plain") is None
    assert sum(v for k, v in res["timings"].items() if k.startswith("eval")) < 5.0
    # fig6 shares the model list: the same checkpoint, certified beside the backbone
    res = run_figure("fig6", out, n_test=2, profile="quick", sigmas=(0.25,), n_samples=50, paradigms=("plain-adv",))
    assert {r["model"] for r in res["rows"]} == {"plain (LPM)", "plain FGSM-FT (P3 recipe)"}
    assert path.stat().st_mtime_ns == before and not any(k.startswith("train") for k in res["timings"])
    capsys.readouterr()
    cli_one_line_error(capsys, ["paper", "fig9", "--paradigms", "1,plain", "--out", str(out / "bad")],
                       "--paradigms", "plain-adv")
    cli_one_line_error(capsys, ["paper", "fig9", "--paradigms", "plain-adv,plain-adv", "--out", str(out / "bad")],
                       "distinct")
    cli_one_line_error(capsys, ["paper", "adaptive", "--paradigms", "plain-adv", "--out", str(out / "bad")],
                       "paradigms")
    assert not (out / "bad").exists()
    with pytest.raises(TorchRobustError, match="paradigm=3"):
        train_paper_model("mlp", 2, backbone=backbone, nrpm=False, profile="quick")
