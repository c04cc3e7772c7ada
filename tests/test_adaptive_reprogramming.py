"""Tests of torchrobust.experiments.adaptive_reprogramming: files and table layout, resume after an interruption,
checkpoint reuse, refused mismatched state, the paper numbers beside ours.

MNIST is replaced by a small synthetic 10-class problem (class-dependent bright patches plus noise), so the tests
run in seconds; the attack budgets are the ``"quick"`` ones.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from torchrobust.cli import main
from torchrobust.errors import TorchRobustError
from torchrobust.experiments import adaptive_reprogramming as AR
from torchrobust.experiments import reprogramming as R
from torchrobust.resume import load_state


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


def cell_states(state: Path, name: str) -> list[Path]:
    """The stored states of cell ``name`` (e.g. ``mlp-p0-eps0.1``): PresetCache rows ``row-<name>-<key>``."""
    return sorted(state.glob(f"row-{name}-*.safetensors"))


def stored_cell(state: Path, name: str) -> dict:
    """The measurements of cell ``name`` as stored (exactly one state of it in ``state``)."""
    (path,) = cell_states(state, name)
    key = path.name.removesuffix(".safetensors").rsplit("-", 1)[1]
    got = load_state(path.with_suffix(""), {"key": key})
    assert got is not None
    return json.loads(got[1]["values"])


def cell_of(stem: Path) -> str:
    """The cell a suite state stem belongs to: ``rowstate-<cell>-<key>-adaptive`` -> ``<cell>``."""
    m = re.fullmatch(r"rowstate-(.+)-[0-9a-f]{24}-adaptive", stem.name)
    assert m is not None, stem.name
    return m.group(1)


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
            assert len(cell_states(out / "state", f"mlp-p{p}-eps{e}")) == 1
    assert not list((out / "state").glob("*.pt*")) and not list((out / "state").glob("cell-*"))
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
    # the quick budget's white-box stage is PGD-5: labelled weak beside the table
    assert "**Strength: weak white-box** (MLP 784-256-64-10) — white-box stage: PGD-5" in md


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
        calls.append(cell_of(state_path))
        if len(calls) == 2:
            raise KeyboardInterrupt  # simulated interruption inside the second cell
        return real_cell(model, base, x, y, eps, budget, seed, state_path, progress)

    monkeypatch.setattr(R, "train_paper_model", counting_train)
    monkeypatch.setattr(AR, "evaluate_cell", failing_cell)
    with pytest.raises(KeyboardInterrupt):
        AR.run(tmp_path, **KW)
    assert calls == ["mlp-p0-eps0.1", "mlp-p0-eps0.3"]
    first = stored_cell(tmp_path / "state", "mlp-p0-eps0.1")
    assert cell_states(tmp_path / "state", "mlp-p0-eps0.3") == []
    assert trained == [0]
    # the partial table was written after the finished cell and names what is missing
    partial = json.loads((tmp_path / "adaptive_reprogramming.json").read_text())
    assert partial["rows"][0]["cells"]["0.1"] == first
    assert partial["missing_cells"] == ["mlp-p0-eps0.3", "mlp-p1-eps0.1", "mlp-p1-eps0.3", "mlp-p2-eps0.1",
                                        "mlp-p2-eps0.3"]
    assert "Partial run" in (tmp_path / "adaptive_reprogramming.md").read_text()

    calls.clear()
    trained.clear()
    monkeypatch.setattr(AR, "evaluate_cell", lambda *a: (calls.append(cell_of(a[7])), real_cell(*a))[1])
    res = AR.run(tmp_path, **KW)
    # the finished cell is not recomputed; the interrupted one and the rest are
    assert "mlp-p0-eps0.1" not in calls
    assert calls[0] == "mlp-p0-eps0.3" and len(calls) == 5
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


ONE_CELL = {**KW, "eps": (0.3,), "paradigms": (), "baseline": True}  # the backbone at one ε


def counting_cells(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every cell evaluated from now on, by name."""
    real_cell = AR.evaluate_cell
    calls: list[str] = []
    monkeypatch.setattr(AR, "evaluate_cell", lambda *a: (calls.append(cell_of(a[7])), real_cell(*a))[1])
    return calls


def test_a_cell_is_reused_only_for_the_same_computation(tmp_path: Path, fake_mnist: None,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A cell's key covers everything it depends on: another n_test, ε, budget, seed, model, test data or library
    code computes it afresh (the stored cell is left, never read); the same command reuses it."""
    from torchrobust import checkpoint
    from torchrobust.experiments import preset_cache

    state = tmp_path / "state"
    calls = counting_cells(monkeypatch)
    first = AR.run(tmp_path, **ONE_CELL)
    assert calls == ["mlp-p0-eps0.3"]

    def computed(out: Path = tmp_path, **changes: object) -> bool:
        calls.clear()
        AR.run(out, state_dir=state, **{**ONE_CELL, **changes})
        return len(calls) == 1

    assert not computed()  # the same command
    assert computed(n_test=10)
    assert computed(eps=(0.3 + 1e-9,))  # the same cell name (f"{ε:g}" is 0.3), another ε
    assert computed(steps=7) and computed(square_queries=9)  # another budget
    assert computed(out=tmp_path / "seed1", seed=1)  # its own models, the same state folder
    real_code = preset_cache.code_fingerprint
    monkeypatch.setattr(preset_cache, "code_fingerprint", lambda root=None: "0" * 64)
    assert computed()  # another version of the library
    monkeypatch.setattr(preset_cache, "code_fingerprint", real_code)
    real_load = R.load_mnist

    def other_test_images(profile: R.Profile, seed: int) -> tuple[torch.Tensor, ...]:
        x_tr, y_tr, _, _ = real_load(profile, seed)
        return (x_tr, y_tr, *_synthetic(64, 3))

    monkeypatch.setattr(R, "load_mnist", other_test_images)
    assert computed()  # other test images (the models are reloaded from their checkpoints)
    monkeypatch.setattr(R, "load_mnist", real_load)
    assert not computed()  # every earlier cell is still there, and still reused
    # another checkpoint with the same training metadata (e.g. retrained elsewhere): its cells are not reused
    path = tmp_path / "models" / "mlp-p0.safetensors"
    model = checkpoint.load(path)
    with torch.no_grad():
        for prm in model.parameters():
            prm.mul_(0.5)
    checkpoint.save(model, path, **checkpoint.load_metadata(path)["metadata"])
    assert computed()
    assert len(cell_states(state, "mlp-p0-eps0.3")) == 9  # one state per computation, none overwritten
    assert first["rows"][0]["cells"]["0.3"]["n"] == 12


def test_each_model_is_fingerprinted_once_for_all_its_cells(tmp_path: Path, fake_mnist: None,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The cells' keys hash each model's weights once (not once per ε), and each cell is keyed by the fingerprint
    of the model as the cell evaluates it, so the keys are those the model itself gives (the earlier keys)."""
    from torchrobust.experiments import preset_cache
    from torchrobust.resume import fingerprint_model

    hashed: list[int] = []

    def counting(model: torch.nn.Module) -> str:
        hashed.append(id(model))
        return fingerprint_model(model)

    keyed: dict[str, object] = {}
    real_row_key = preset_cache.PresetCache.row_key

    def spy_row_key(self: preset_cache.PresetCache, label: str, model: object, settings: dict) -> str:
        keyed[label] = model
        return real_row_key(self, label, model, settings)  # type: ignore[arg-type]

    at_cell: dict[str, str] = {}
    real_cell = AR.evaluate_cell

    def cell(*a: object) -> dict:
        at_cell[cell_of(a[7])] = fingerprint_model(a[0])  # the model as this cell evaluates it
        return real_cell(*a)

    monkeypatch.setattr(AR, "fingerprint_model", counting)
    monkeypatch.setattr(preset_cache, "fingerprint_model", counting)
    monkeypatch.setattr(preset_cache.PresetCache, "row_key", spy_row_key)
    monkeypatch.setattr(AR, "evaluate_cell", cell)
    res = AR.run(tmp_path, **KW)  # 3 models (backbone, P1, P2) x 2 ε
    assert res["missing_cells"] == []
    assert len(hashed) == 3 and len(set(hashed)) == 3
    names = [f"mlp-p{p}-eps{e}" for p in (0, 1, 2) for e in ("0.1", "0.3")]
    assert sorted(keyed) == sorted(at_cell) == sorted(names)
    assert all(keyed[n] == at_cell[n] for n in names)
    assert len({keyed[n] for n in names}) == 3  # one fingerprint per model


def test_a_planted_pickle_or_tampered_cell_is_refused(tmp_path: Path, fake_mnist: None,
                                                      capsys: pytest.CaptureFixture) -> None:
    from torchrobust.resume import save_state

    first = AR.run(tmp_path, **ONE_CELL)
    (path,) = cell_states(tmp_path / "state", "mlp-p0-eps0.3")
    key = path.name.removesuffix(".safetensors").rsplit("-", 1)[1]
    saved = path.read_bytes()
    pickle_like = b"\x80\x04\x95" + b"cos\nsystem\n" * 4
    for bad, why in ((pickle_like, "not a usable torchrobust state"),
                     (saved[: len(saved) // 2], "not a usable torchrobust state")):
        path.write_bytes(bad)
        with pytest.raises(TorchRobustError, match=why) as err:
            AR.run(tmp_path, **ONE_CELL)
        assert "\n" not in str(err.value) and path.name in str(err.value)
        assert path.read_bytes() == bad  # left as found, never overwritten
    # a valid state under this cell's key whose content is not this cell's measurements
    for meta, why in (({"label": "mlp-p0-eps0.3", "values": "[12.5]"}, "holds no stored dict"),
                      ({"label": "mlp-p1-eps0.3", "values": "{}"}, "holds no measurements of row 'mlp-p0-eps0.3'")):
        save_state(path.with_suffix(""), {}, meta, {"key": key})
        with pytest.raises(TorchRobustError, match=why) as err:
            AR.run(tmp_path, **ONE_CELL)
        assert "\n" not in str(err.value)
    # the command line: exit status 2 and one line naming the file
    path.write_bytes(pickle_like)
    assert main(["paper", "adaptive", "--out", str(tmp_path), "--n-test", "12", "--eps", "0.3", "--models", "mlp",
                 "--paradigms", "1", "--budget", "quick", "--profile", "quick", "--quiet"]) == 2
    err_text = capsys.readouterr().err
    assert err_text.count("\n") == 1 and path.name in err_text and "Traceback" not in err_text
    path.write_bytes(saved)
    path.with_suffix(".json").unlink()  # the JSON copy is only for reading; the state is the .safetensors
    assert AR.run(tmp_path, **ONE_CELL)["rows"][0]["cells"] == first["rows"][0]["cells"]


def test_an_interrupted_cell_resumes_inside_the_suite(tmp_path: Path, fake_mnist: None,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A cell interrupted inside the adaptive suite continues from the suite's per-attack state (named by the cell's
    key) on a rerun of the same command: the finished attacks are not run again, and the cell is the uninterrupted
    one. A planted pickle at that state is refused with one line."""
    from torchrobust.evaluate import engine as E

    kw = {**ONE_CELL, "eps": (0.01,)}  # small enough that points survive FGSM and PGD-20: the suite runs
    full = AR.run(tmp_path / "full", **kw)["rows"][0]["cells"]["0.01"]
    assert full["suite"]["n_attacked"] > 0
    real = E._build_attack
    attacks: list[str] = []

    def spy(interrupt: str | None) -> None:
        def build(job, seed):  # noqa: ANN001, ANN202
            attack = real(job, seed)

            def call(m, xx, yy):  # noqa: ANN001, ANN202
                attacks.append(type(attack).__name__)
                if type(attack).__name__ == interrupt:
                    raise KeyboardInterrupt
                return attack(m, xx, yy)
            return call
        monkeypatch.setattr(E, "_build_attack", build)

    spy("Square")  # interrupted at the suite's third attack
    with pytest.raises(KeyboardInterrupt):
        AR.run(tmp_path, **kw)
    assert attacks == ["FGSM", "PGD", "PGD", "PGD", "Square"]  # FGSM, PGD-20, then the suite: PGD-CE, PGD-margin
    assert cell_states(tmp_path / "state", "mlp-p0-eps0.01") == []
    (suite_state,) = (tmp_path / "state").glob("rowstate-*-adaptive.safetensors")
    assert cell_of(suite_state.with_suffix("")) == "mlp-p0-eps0.01"
    saved = suite_state.read_bytes()
    suite_state.write_bytes(b"\x80\x04\x95" + b"cos\nsystem\n" * 4)
    with pytest.raises(TorchRobustError, match="not a usable torchrobust state") as err:
        AR.run(tmp_path, **kw)
    assert "\n" not in str(err.value) and suite_state.name in str(err.value)
    suite_state.write_bytes(saved)
    attacks.clear()
    spy(None)
    resumed = AR.run(tmp_path, **kw)["rows"][0]["cells"]["0.01"]
    assert attacks == ["FGSM", "PGD", "Square", "SPSA"]  # the suite's finished PGD runs are not run again

    def numbers(c: dict) -> dict:
        return {k: v for k, v in c.items() if k != "seconds"} | {"suite": {k: v for k, v in c["suite"].items()
                                                                          if k != "seconds"}}

    assert numbers(resumed) == numbers(full)


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


def test_report_only_with_nothing_stored_is_a_one_line_error(tmp_path: Path, fake_mnist: None,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture) -> None:
    def forbidden(*a: object, **k: object) -> None:
        raise AssertionError("report_only must not train or attack")

    monkeypatch.setattr(AR, "evaluate_cell", forbidden)
    monkeypatch.setattr(R, "train_paper_model", forbidden)
    with pytest.raises(TorchRobustError, match="without --report-only first") as err:
        AR.run(tmp_path, report_only=True, **ONE_CELL)
    assert "\n" not in str(err.value) and str(tmp_path / "state") in str(err.value)
    assert not (tmp_path / "adaptive_reprogramming.json").exists()
    assert main(["paper", "adaptive", "--out", str(tmp_path), "--n-test", "12", "--models", "mlp", "--budget",
                 "quick", "--profile", "quick", "--report-only", "--quiet"]) == 2
    err_text = capsys.readouterr().err
    assert err_text.count("\n") == 1 and "without --report-only" in err_text


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


def test_every_default_budget_has_an_apgd_class_whitebox(monkeypatch: pytest.MonkeyPatch) -> None:
    """The "default" budget's white-box stage is APGD-class for every model; LeNet's runs our APGD-CE + APGD-T at
    the default strong evaluation's settings (the same attacks and iterations as `sweep`'s DEFAULT_ATTACKS), and
    "fast" keeps the earlier LeNet budget (PGD-50 white-box), labelled weak."""
    from dataclasses import replace

    from torch import nn

    from torchrobust.evaluate import adaptive as A
    from torchrobust.evaluate.sweeps import DEFAULT_ATTACKS, plan_jobs
    from torchrobust.experiments.adaptive_cell import APGD_CLASS, BUDGETS, evaluate_cell, weak_whitebox_note

    assert set(BUDGETS["default"]) == set(AR.ARCHS) == set(BUDGETS["fast"])
    for budget in BUDGETS["default"].values():
        assert budget.whitebox in APGD_CLASS and weak_whitebox_note(budget) is None
    lenet = BUDGETS["default"]["lenet"]
    assert lenet.whitebox == "apgd"  # ours: not switched to the reference by an installed autoattack
    assert BUDGETS["fast"]["mlp"] == BUDGETS["default"]["mlp"]
    assert BUDGETS["fast"]["lenet"] == replace(lenet, whitebox="pgd")
    note = weak_whitebox_note(BUDGETS["fast"]["lenet"], "LeNet")
    assert note is not None and "PGD-50" in note and "weaker than the default strong evaluation" in note

    # what the LeNet default's white-box stage runs, on a small model with points that survive FGSM and PGD-20
    jobs: list = []
    real = A.run_plan

    def spy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, plan: list, **kw: object) -> object:
        jobs.extend(plan)
        return real(model, x, y, plan, **kw)

    monkeypatch.setattr(A, "run_plan", spy)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x_tr, y_tr = _synthetic(640, 1)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x_tr), y_tr).backward()
        opt.step()
    x, y = _synthetic(8, 2)
    cell = evaluate_cell(model.eval(), None, x, y, 0.01, lenet, 0, None, False)
    assert cell["suite"]["n_attacked"] > 0 and cell["suite"]["config"]["whitebox"] == "apgd"
    white = [(j.attack, dict(j.kwargs), j.survivors_only) for j in jobs if j.role == "whitebox"]
    assert white == [("apgd-ce", {"seed": 0}, False), ("apgd-t", {"seed": 0}, True)]
    strong = [(j.attack, dict(j.kwargs), j.survivors_only) for j in plan_jobs(DEFAULT_ATTACKS, [0.01])]
    assert strong == [("fgsm", {}, False), ("apgd-ce", {}, False), ("apgd-t", {}, True)]  # no other settings


def test_a_weak_whitebox_is_labelled_beside_the_table() -> None:
    """The report says when a model's white-box stage is weaker than the default strong evaluation (LeNet under
    "fast"), and not otherwise."""
    from dataclasses import asdict

    from torchrobust.experiments.adaptive_cell import BUDGETS

    def report(name: str) -> str:
        cfg = AR._config(100, (0.1,), {a: BUDGETS[name][a] for a in AR.ARCHS}, 0, "fast")
        return AR._markdown({"config": cfg, "rows": [], "wall_seconds": 1.0, "cell_seconds": {}, "timings": {},
                             "missing_cells": []})

    fast, default = report("fast"), report("default")
    assert "**Strength: weak white-box** (LeNet) — white-box stage: PGD-50" in fast
    assert "(MLP 784-256-64-10)" not in fast.split("Strength: weak")[1]  # the MLP's stage is APGD-class
    assert "Strength: weak" not in default
    assert "LeNet: white-box APGD-CE + APGD-T (ours, 100 iterations each" in default
    assert asdict(BUDGETS["fast"]["lenet"])["whitebox"] == "pgd"


def test_attack_budget_whitebox_field_takes_the_whitebox_values() -> None:
    """``AttackBudget.whitebox`` spells out the values of ``WhiteBox`` (see its comment): the two stay equal."""
    import typing

    from torchrobust.experiments.adaptive_cell import AttackBudget, WhiteBox

    hints = typing.get_type_hints(AttackBudget)
    assert typing.get_args(hints["whitebox"]) == typing.get_args(WhiteBox)
