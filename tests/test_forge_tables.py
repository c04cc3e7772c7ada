"""`torchrobust forge-tables`: the data-driven Lipschitz paper's Tables 8/9 and 6 on MNIST (forged vs plain, default
attacks + C&W-ℓ∞, autograd and BPDA) — a tiny run on synthetic MNIST-shaped data, its tables and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from torchrobust.cli import main
from torchrobust.experiments import forge_tables as F


def _synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable 28×28 digits: class k lights up row block k."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.rand(n, 1, 28, 28, generator=g) * 0.2
    for i, k in enumerate(y.tolist()):
        x[i, 0, 2 * k + 3: 2 * k + 6, 4:24] = 0.9
    return x, y


@pytest.fixture
def fake_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    def load(root: object = None) -> tuple[torch.Tensor, ...]:
        return (*_synthetic(256, 1), *_synthetic(32, 2))

    monkeypatch.setattr(F, "load_mnist", load)


ARGS = ["--epochs", "1", "--warmup-epochs", "1", "--max-batches", "2", "--n-test", "6", "--n-calib", "200",
        "--eps", "0.1,0.3", "--quiet", "--threads", "1"]


def test_tiny_run_writes_both_tables(tmp_path: Path, fake_mnist: None, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert main(["forge-tables", "--out", str(out), *ARGS]) == 0
    printed = capsys.readouterr().out
    assert "Table 6" in printed and "Tables 8/9" in printed
    sweep = json.loads((out / "table8_9_eps_sweep.json").read_text())
    names = [c["name"] for c in sweep["columns"]]
    assert names == ["model", "c_r", "gradients", "attack", "clean", "0.1", "0.3"]  # 0.1 = 25.5/255: shown as is
    rows = sweep["rows"]
    assert [(r["model"], r["gradients"]) for r in rows] == [("plain", "autograd")] * 3 + [("forged", "autograd")] * 3 \
        + [("forged", "BPDA")] * 3 + [("forged", "autograd ∪ BPDA")]
    assert {r["c_r"] for r in rows[3:]} == {"2^-7"} and rows[0]["c_r"] == "0"
    for r in rows:
        for col in ("clean", "0.1", "0.3"):
            assert 0.0 <= r[col] <= 1.0
        assert r["0.1"] <= r["clean"] + 1e-9
    # the default set's worst case can never beat FGSM alone, and the overall worst case beats no row of the forged
    for block in (rows[0:3], rows[3:6], rows[6:9]):
        assert block[2]["0.3"] <= block[0]["0.3"] + 1e-9
    assert all(rows[9]["0.3"] <= r["0.3"] + 1e-9 for r in rows[3:9])
    # BPDA never changes the forward: the forged model's clean accuracy is the same under both
    assert rows[3]["clean"] == rows[6]["clean"]
    cw = json.loads((out / "table6_cw_linf.json").read_text())
    assert [c["name"] for c in cw["columns"]] == ["eps", "plain", "forged_autograd", "forged_bpda", "forged_worst",
                                                  "gain_autograd", "gain_worst"]
    assert [r["eps"] for r in cw["rows"]] == ["0.1", "0.3"]
    for r in cw["rows"]:
        assert r["forged_worst"] <= min(r["forged_autograd"], r["forged_bpda"]) + 1e-9
        assert r["gain_worst"] == pytest.approx(100 * (r["forged_worst"] - r["plain"]))
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["n_test"] == 6 and res["seconds"]["train"] > 0
    assert (out / F.MODEL_FILE).exists()
    # a rerun reuses the trained model and the finished sweeps: same tables
    before = (out / "table8_9_eps_sweep.csv").read_text()
    assert main(["forge-tables", "--out", str(out), *ARGS]) == 0
    assert (out / "table8_9_eps_sweep.csv").read_text() == before


@pytest.mark.parametrize("extra, needle", [
    (["--c-r", "0"], "c_r must be a finite number in (0, 1]"),
    (["--c-r", "nan"], "--c-r"),
    (["--eps", "0.1,0.1"], "eps values repeat"),
    (["--eps", "1.5"], "eps"),
    (["--warmup-epochs", "-1"], "warmup_epochs"),
    (["--n-test", "0"], "--n-test"),
    (["--n-test", "999"], "n_test = 999 exceeds"),
])
def test_bad_input_is_one_line_error(tmp_path: Path, fake_mnist: None, capsys: pytest.CaptureFixture,
                                     extra: list[str], needle: str) -> None:
    assert main(["forge-tables", "--out", str(tmp_path / "bad"), *ARGS, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err and "Traceback" not in err
    assert not (tmp_path / "bad" / F.MODEL_FILE).exists()  # refused before any training


def test_model_from_another_recipe_is_refused(tmp_path: Path, fake_mnist: None,
                                              capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert main(["forge-tables", "--out", str(out), *ARGS, "--eps", "0.3"]) == 0
    assert main(["forge-tables", "--out", str(out), *ARGS, "--eps", "0.3", "--epochs", "2"]) == 2
    assert "another recipe" in capsys.readouterr().err


def test_certify_writes_fig3_table(tmp_path: Path, fake_mnist: None) -> None:
    out = tmp_path / "run"
    assert main(["forge-tables", "--out", str(out), *ARGS, "--eps", "0.3", "--certify", "--n-smooth", "200"]) == 0
    fig = json.loads((out / "fig3_certified_accuracy.json").read_text())
    assert [c["name"] for c in fig["columns"]] == ["model", "c_r", *[f"r={r:g}" for r in F.RADII]]
    assert [(r["model"], r["c_r"]) for r in fig["rows"]] == [("plain", "0"), ("forged", "2^-7")]
    for r in fig["rows"]:  # certified accuracy can only fall as the radius grows
        accs = [r[f"r={x:g}"] for x in F.RADII]
        assert all(0 <= a <= 1 for a in accs) and accs == sorted(accs, reverse=True)
    assert json.loads((out / "certify_forged" / "certify.json").read_text())["n"] == 200


def test_bad_sigma_is_one_line_error(tmp_path: Path, fake_mnist: None, capsys: pytest.CaptureFixture) -> None:
    assert main(["forge-tables", "--out", str(tmp_path / "b"), *ARGS, "--certify", "--sigma", "0"]) == 2
    assert "sigma must be a finite number > 0" in capsys.readouterr().err


def test_training_is_reproducible_whatever_the_global_rng(tmp_path: Path) -> None:
    """The initial weights come from ``seed``, not from the process's global generator (which differs from process
    to process): two trainings with the same seed give the same weights, another seed other weights."""
    x, y = _synthetic(256, 1)
    weights = []
    for i, (global_seed, seed) in enumerate(((123, 0), (456, 0), (123, 1))):
        torch.manual_seed(global_seed)
        cfg = F.ForgeTablesConfig(epochs=1, warmup_epochs=1, max_batches=1, seed=seed).validate()
        model, _ = F._train(cfg, x, y, tmp_path / f"m{i}.safetensors")
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_model_trained_without_init_seed_is_refused(tmp_path: Path, fake_mnist: None,
                                                    capsys: pytest.CaptureFixture) -> None:
    """A model saved before the initialisation was seeded (its recipe has no ``init_seed``) is not reused."""
    from torchrobust import checkpoint, models

    out = tmp_path / "run"
    out.mkdir()
    x, y = _synthetic(256, 1)
    cfg = F.ForgeTablesConfig(epochs=1, warmup_epochs=1, max_batches=2, seed=0).validate()
    model, _ = F._train(cfg, x, y, out / "probe.safetensors")
    recipe = checkpoint.load_metadata(out / "probe.safetensors")["metadata"]["recipe"]
    assert recipe["init_seed"] == 0
    del recipe["init_seed"]
    checkpoint.save(models.create("lenet"), out / F.MODEL_FILE, recipe=recipe, train_wall_s=1.0)
    assert main(["forge-tables", "--out", str(out), *ARGS, "--eps", "0.3"]) == 2
    assert "another recipe" in capsys.readouterr().err
