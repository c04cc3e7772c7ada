"""Resume of the reprogramming presets (torchrobust.experiments.preset_cache): a rerun of the same command reuses
every finished training and row bit for bit, a run killed with SIGKILL and rerun gives the uninterrupted result,
an interrupted training continues from its resume state, and nothing stored is reused for another computation or
read when it is not a torchrobust state."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from torchrobust.cli import main
from torchrobust.errors import TorchRobustError, TrainingDiverged
from torchrobust.experiments.preset_cache import PresetCache, code_fingerprint
from torchrobust.experiments.reprogramming import run
from torchrobust.resume import fingerprint_model, load_state, save_state
from torchrobust.train import TrainConfig, fit

ROOT = Path(__file__).resolve().parents[1]


def rows_text(result: dict) -> str:
    return json.dumps(result["rows"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """table1 on the quick profile without any state (the uninterrupted result)."""
    return run("table1", tmp_path_factory.mktemp("ref"), quick=True, resume=False)


def test_rerun_reuses_every_training_and_row_bit_for_bit(reference, tmp_path):
    first = run("table1", tmp_path, quick=True)
    assert first["resumed"] == [] and rows_text(first) == rows_text(reference)
    second = run("table1", tmp_path, quick=True)
    trained = [t for t in second["resumed"] if t.startswith("train ")]
    evaluated = [t for t in second["resumed"] if t.startswith("eval ")]
    assert len(trained) == 4 and len(evaluated) == len(reference["rows"])  # 2 backbones, Paradigms 2 and 3
    assert rows_text(second) == rows_text(reference)  # values and key order
    assert "reused from an earlier run" in (tmp_path / "table1.md").read_text()
    # the fine-tuning's mid-training resume folders are gone once its weights are stored
    assert not list((tmp_path / "state").glob("fit-*"))


def test_another_evaluation_budget_reuses_the_trainings_not_the_rows(tmp_path):
    run("table1", tmp_path, quick=True)
    again = run("table1", tmp_path, quick=True, n_pgd=8)
    assert sorted(again["resumed"]) == ["train Paradigm 2", "train Paradigm 3", "train adv 3-layer",
                                        "train normal 3-layer"]
    assert again["config"]["n_pgd"] == 8


def test_sigkill_then_rerun_gives_the_uninterrupted_result(reference, tmp_path):
    code = ("import sys; from torchrobust.experiments.reprogramming import run; "
            f"run('table1', {str(tmp_path)!r}, quick=True)")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state = tmp_path / "state"
    deadline = time.monotonic() + 300
    try:
        while not list(state.glob("row-P1_lam=0.5-*.safetensors")):  # killed after its 4th row, mid-preset
            assert proc.poll() is None, "the preset ended before it could be killed"
            assert time.monotonic() < deadline, "no row was stored within 300 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "table1.json").exists()
    resumed = run("table1", tmp_path, quick=True)
    assert rows_text(resumed) == rows_text(reference)
    assert "eval Normal-train" in resumed["resumed"]
    assert "eval Paradigm 3" not in resumed["resumed"]  # computed after the kill


def _data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def _net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))


def _cache(path: Path) -> PresetCache:
    return PresetCache(path, {"seed": 0}, {"preset": "t"}, train_data="d", test_data="e")


def _trainer(model: nn.Module, stop_at: int | None = None):
    """``run`` for PresetCache.train: 3 epochs of 4 steps; its on_epoch adds an entry to the record and, with
    ``stop_at``, raises after that epoch (an interruption after the previous epoch's resume state)."""
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.1, seed=0, checkpoint_every=2)

    def on_epoch(rec: dict) -> None:
        rec["extra"] = float(model[1].weight.detach().sum())
        if stop_at is not None and rec["epoch"] == stop_at:
            raise KeyboardInterrupt

    def go(fit_dir: Path, resume: bool) -> list:
        where = {"resume_from": fit_dir} if resume else {"checkpoint_dir": fit_dir}
        return fit(model, _data(), cfg, on_epoch=on_epoch, **where).history

    return go


def test_an_interrupted_training_continues_from_its_resume_state(tmp_path):
    ref = _net()
    ref_hist = _cache(tmp_path / "a").train(ref, "t", {"x": 1}, _trainer(ref))
    model = _net()
    with pytest.raises(KeyboardInterrupt):
        _cache(tmp_path / "b").train(model, "t", {"x": 1}, _trainer(model, stop_at=2))
    assert list((tmp_path / "b").glob("fit-t-*"))  # epoch 1's resume state is there
    again = _net()
    seen: list = []

    def spy(fit_dir: Path, resume: bool) -> list:
        seen.append(resume)
        return _trainer(again)(fit_dir, resume)

    hist = _cache(tmp_path / "b").train(again, "t", {"x": 1}, spy)
    assert seen == [True]
    assert fingerprint_model(again) == fingerprint_model(ref)
    assert hist[0]["extra"] == ref_hist[0]["extra"] and [h["extra"] for h in hist] == [h["extra"] for h in ref_hist]
    # stored now: a third run loads it without training, history included
    third = _net()
    assert _cache(tmp_path / "b").train(third, "t", {"x": 1}, lambda *_: pytest.fail("trained again")) == hist
    assert fingerprint_model(third) == fingerprint_model(ref)


def test_a_stored_divergence_is_raised_again_without_training(tmp_path):
    def diverge(fit_dir: Path, resume: bool) -> list:
        raise TrainingDiverged("training diverged at epoch 1, batch 3: loss nan", epoch=1, batch=3)

    with pytest.raises(TrainingDiverged):
        _cache(tmp_path).train(_net(), "t", {}, diverge)
    with pytest.raises(TrainingDiverged, match="batch 3") as err:
        _cache(tmp_path).train(_net(), "t", {}, lambda *_: pytest.fail("trained again"))
    assert (err.value.epoch, err.value.batch) == (1, 3)


def test_other_settings_or_model_are_not_reused(tmp_path):
    cache = _cache(tmp_path)
    model = _net()
    cache.train(model, "t", {"lr": 0.1}, _trainer(model))
    calls: list = []

    def count(m: nn.Module):
        def go(fit_dir: Path, resume: bool) -> list:
            calls.append(1)
            return _trainer(m)(fit_dir, resume)
        return go

    other = _net()
    cache.train(other, "t", {"lr": 0.2}, count(other))  # other settings
    changed = _net()
    with torch.no_grad():
        changed[1].bias.add_(1.0)
    cache.train(changed, "t", {"lr": 0.1}, count(changed))  # another starting model
    assert len(calls) == 2
    rows = cache.row("r", cache.row_key("r", model, {"robust": True}), lambda: {"fgsm": [1.0]})
    again = cache.row("r", cache.row_key("r", model, {"robust": True}), lambda: pytest.fail("evaluated again"))
    assert again[0] == rows[0]
    assert cache.row("r", cache.row_key("r", model, {"robust": False}), lambda: {"fgsm": [2.0]})[0] == {"fgsm": [2.0]}


def _fixed_net() -> nn.Module:
    """A model whose weights do not come from an RNG (its fingerprint is the same under any torch version)."""
    m = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        m[1].weight.copy_(torch.arange(8, dtype=torch.float32).reshape(2, 4) / 8)
        m[1].bias.copy_(torch.tensor([0.5, -0.5]))
    return m


#: the state names PresetCache gave at commit df2ff71 (before row_key was computed once per row and before
#: train_data could be omitted), for the input of test_state_names_are_those_of_the_earlier_code: printed by running
#: that test's steps against the old code (row_state_stem then took ``(label, model, settings, part)`` and row
#: ``(label, model, settings, compute)``), with code_fingerprint pinned to 64 zeros; the row names were the same with
#: ``train_data="-"`` (the old code loaded from ``git show df2ff71:torchrobust/experiments/preset_cache.py``)
OLD_NAMES = {"fit": "fit-Paradigm_2-14d098175dd22e1257c311d5", "train": "train-Paradigm_2-14d098175dd22e1257c311d5",
             "row": "row-P1_lam=0.5-a9573dd1c84e41b2c263d3e0",
             "rowstate": "rowstate-P1_lam=0.5-a9573dd1c84e41b2c263d3e0-eps0.3"}


def test_state_names_are_those_of_the_earlier_code(tmp_path, monkeypatch):
    """Refactoring PresetCache keeps every on-disk name: the training's fit folder and state, the row's state and the
    row's own resumable state (the adaptive suite's per-ε stem) are named as the earlier code named them, so a state
    folder written before the change is still reused. The code fingerprint is pinned (any source edit changes it)."""
    from torchrobust.experiments import preset_cache

    monkeypatch.setattr(preset_cache, "code_fingerprint", lambda root=None: "0" * 64)
    cache = PresetCache(tmp_path, {"seed": 0, "device": "cpu"}, {"preset": "t", "n_pgd": 2}, train_data="d" * 64,
                        test_data="e" * 64)
    fit_dirs: list[str] = []
    cache.train(_fixed_net(), "Paradigm 2", {"lr": 0.1}, lambda fit_dir, resume: fit_dirs.append(fit_dir.name) or [])
    key = cache.row_key("P1 λ=0.5", _fixed_net(), {"robust": True})
    cache.row("P1 λ=0.5", key, lambda: {"fgsm": [1.0]})
    assert fit_dirs == [OLD_NAMES["fit"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{OLD_NAMES[k]}.{ext}" for k in ("train", "row") for ext in ("json", "safetensors"))
    assert cache.row_state_stem("P1 λ=0.5", key, "eps0.3").name == OLD_NAMES["rowstate"]


def test_a_cache_without_train_data_keeps_the_row_names_and_refuses_trainings(tmp_path, monkeypatch):
    """An evaluation-only cache (Figure 6's) omits train_data: its rows are named as the earlier code named them
    (OLD_NAMES; that code gave the same row names with ``train_data="-"``, Figure 6's placeholder, as with a real
    fingerprint), and a training through it is a one-line error naming the fix, with nothing written."""
    from torchrobust.experiments import preset_cache

    monkeypatch.setattr(preset_cache, "code_fingerprint", lambda root=None: "0" * 64)
    cache = PresetCache(tmp_path / "s", {"seed": 0, "device": "cpu"}, {"preset": "t", "n_pgd": 2}, test_data="e" * 64)
    key = cache.row_key("P1 λ=0.5", _fixed_net(), {"robust": True})
    cache.row("P1 λ=0.5", key, lambda: {"fgsm": [1.0]})
    names = {p.name for p in (tmp_path / "s").iterdir()}
    assert names == {f"{OLD_NAMES['row']}.{ext}" for ext in ("json", "safetensors")}
    with pytest.raises(TorchRobustError, match="without train_data; pass train_data=") as err:
        cache.train(_fixed_net(), "Paradigm 2", {"lr": 0.1}, lambda fit_dir, resume: pytest.fail("trained"))
    assert "\n" not in str(err.value) and len(list((tmp_path / "s").iterdir())) == 2


#: the keys PresetCache.row_key gave at commit 7155984 (before it took a model fingerprint in place of the model) to
#: cells shaped like ``torchrobust paper adaptive``'s, for the input of the test below: printed by running that
#: test's cache and settings against that code with the nn.Module, code_fingerprint pinned to 64 zeros
OLD_CELL_KEYS = {0.1: "e01d08ba91285b01315e52e6", 0.3: "85a473f1f1bf5af3f4976c2e"}


def test_row_key_of_a_fingerprint_is_the_earlier_key(tmp_path, monkeypatch):
    """A row keyed by the model's fingerprint (computed once for all of a model's rows) has the very key the model
    itself gives, which is the earlier code's (hard-coded), so stored rows and row states are still reused; a string
    that is no fingerprint is a one-line error naming the fix."""
    from torchrobust.experiments import preset_cache

    monkeypatch.setattr(preset_cache, "code_fingerprint", lambda root=None: "0" * 64)
    cache = PresetCache(tmp_path / "a", {"seed": 0, "device": "cpu", "threads": None, "torch": "2.x"},
                        {"experiment": "adaptive_reprogramming", "n_test": 12, "profile": "quick", "threat": "Linf"},
                        test_data="e" * 64)
    fp = fingerprint_model(_fixed_net())
    for e, old in OLD_CELL_KEYS.items():
        settings = {"eps": e, "budget": {"steps": 20, "restarts": 1}}
        assert cache.row_key(f"mlp-p1-eps{e:g}", fp, settings) == old
        assert cache.row_key(f"mlp-p1-eps{e:g}", _fixed_net(), settings) == old
    presets = PresetCache(tmp_path / "p", {"seed": 0, "device": "cpu"}, {"preset": "t", "n_pgd": 2},
                          test_data="e" * 64)
    key = presets.row_key("P1 λ=0.5", fp, {"robust": True})
    assert f"row-P1_lam=0.5-{key}" == OLD_NAMES["row"]
    for bad in ("model", fp.upper(), fp + "0", fp[:-1]):
        with pytest.raises(TorchRobustError, match="is no model fingerprint; pass the nn.Module or") as err:
            cache.row_key("r", bad, {})
        assert "\n" not in str(err.value)


def test_code_fingerprint_follows_the_sources(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "notes.txt").write_text("ignored\n")
    before = code_fingerprint(tmp_path)
    (tmp_path / "notes.txt").write_text("changed\n")
    assert code_fingerprint(tmp_path) == before
    (tmp_path / "a.py").write_text("x = 2\n")
    assert code_fingerprint(tmp_path) != before


def test_a_planted_pickle_or_tampered_weights_are_refused(tmp_path):
    run("table1", tmp_path, quick=True)
    state = tmp_path / "state"
    row = next(state.glob("row-Normal-train-*.safetensors"))
    saved = row.read_bytes()
    row.write_bytes(b"\x80\x04\x95" + b"cos\nsystem\n" * 4)  # pickle-like bytes under the state's name
    with pytest.raises(TorchRobustError, match=r"not a usable torchrobust state") as err:
        run("table1", tmp_path, quick=True)
    assert "\n" not in str(err.value) and row.name in str(err.value)
    row.write_bytes(saved)
    trained = next(state.glob("train-normal_3-layer-*.safetensors"))
    key = trained.name.rsplit("-", 1)[1].removesuffix(".safetensors")
    tensors, meta = load_state(trained.with_suffix(""), {"key": key})
    tensors = {k: v + 1.0 for k, v in tensors.items()}
    save_state(trained.with_suffix(""), tensors, meta, {"key": key})
    with pytest.raises(TorchRobustError, match="do not give the model fingerprint"):
        run("table1", tmp_path, quick=True)


def test_cli_state_options(tmp_path, monkeypatch, capsys):
    from torchrobust.experiments import reprogramming as R

    seen: list = []

    def fake_run(name, out_dir, **kw):
        seen.append((kw["state_dir"], kw["resume"]))
        return {"wall_seconds": 1.0}

    monkeypatch.setattr(R, "run", fake_run)
    assert main(["paper", "table8", "--out", str(tmp_path / "a"), "--state-dir", str(tmp_path / "s"), "--quiet"]) == 0
    assert main(["paper", "table8", "--out", str(tmp_path / "b"), "--no-resume", "--quiet"]) == 0
    assert seen == [(str(tmp_path / "s"), True), (None, False)]
    assert main(["paper", "adaptive", "--out", str(tmp_path / "c"), "--no-resume"]) == 2
    assert main(["paper", "fig9", "--out", str(tmp_path / "d"), "--state-dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "drop --no-resume" in err and "--state-dir" in err and "Traceback" not in err


def test_strong_column_marks_nrpm_rows_as_upper_bounds(reference, tmp_path):
    """The default strong evaluation of an NRPM row is flagged BPDA_NOT_EVALUATED by the sweep; the preset keeps
    the flags per row and names those rows as upper bounds in its Markdown and strong table."""
    from torchrobust.tables import Table

    flags = {r["row"]: r.get("strong_flags") for r in reference["rows"] if "strong" in r}
    assert flags["Normal-train"] == [] and flags["Adv-train"] == []  # plain linear models: nothing to bypass
    assert flags["P1 λ=0.5"] == flags["Paradigm 2"] == flags["Paradigm 3"] == ["BPDA_NOT_EVALUATED"]
    run("table1", tmp_path, quick=True)
    md = (tmp_path / "table1.md").read_text()
    assert "**Upper bounds** for P1 λ=0.5 (BPDA_NOT_EVALUATED), Paradigm 2" in md
    assert "`torchrobust paper adaptive`" in md
    table = Table.from_json((tmp_path / "table1_strong_table.json").read_text())
    assert any("Upper bounds" in n and "Normal-train" not in n for n in table.notes)


def test_adaptive_robust_evaluation_per_row_resumes_and_is_at_most_fgsm_and_pgd20(reference, tmp_path):
    """robust_eval="adaptive" runs the adaptive protocol (FGSM, PGD-20, then the suite) on each selected row: its
    worst case is never above FGSM or PGD-20 alone, the suite's per-ε state is kept under the row's key, and a
    rerun reuses the rows."""
    res = run("table1", tmp_path, quick=True, robust_eval="adaptive")
    rows = {r["row"]: r for r in res["rows"] if "adaptive" in r}
    assert set(rows) == {r["row"] for r in reference["rows"] if "strong" in r}
    for r in rows.values():
        assert "strong" not in r and r["adaptive"]["clean"] == r["adaptive_stages"]["fgsm"]["clean"]
        for e in ("0.3",):
            assert r["adaptive"][e] <= min(r["adaptive_stages"]["fgsm"][e], r["adaptive_stages"]["pgd20"][e])
    # NRPM rows get BPDA and transfer; the suite's state for each (row, ε) is named by the row's key
    assert list((tmp_path / "state").glob("rowstate-Paradigm_3-*-eps0.3.safetensors"))
    # ... by the very key of the row's own state (computed once per row)
    row_keys = {p.name.removesuffix(".safetensors") for p in (tmp_path / "state").glob("row-*.safetensors")}
    row_states = list((tmp_path / "state").glob("rowstate-*.safetensors"))
    assert row_states and all("row-" + re.match(r"rowstate-(.+-[0-9a-f]{24})-", p.name).group(1) in row_keys
                              for p in row_states)
    assert res["config"]["adaptive_suite"]["whitebox"] == "pgd"  # the quick budget
    md = (tmp_path / "table1.md").read_text()
    assert "## Adaptive suite" in md and (tmp_path / "table1_adaptive_table.json").is_file()
    assert "the adaptive protocol (ℓ∞: FGSM, PGD-20, then the adaptive suite" in md
    # the quick budget's white-box stage (PGD-5) is weaker than the default strong evaluation: labelled so
    assert "White-box stage (budget `quick`): PGD-CE + PGD-margin (5 steps" in md
    assert "**Strength: weak white-box** — white-box stage: PGD-5" in md
    from torchrobust.tables import Table

    notes = Table.from_json((tmp_path / "table1_adaptive_table.json").read_text()).notes
    assert any("Strength: weak white-box" in n for n in notes)
    again = run("table1", tmp_path, quick=True, robust_eval="adaptive")
    assert json.dumps(again["rows"]) == json.dumps(res["rows"])
    assert sum(t.startswith("eval ") for t in again["resumed"]) == len(res["rows"])


def test_adaptive_budget_fast_reaches_the_lenet_preset_is_labelled_weak_and_keys_its_rows(tmp_path):
    """run(adaptive_budget="fast") on the LeNet preset: the config records the name and its PGD-50 white-box budget,
    the report labels it weak, and its rows get other keys than the profile's budget (the trainings are reused)."""
    from torchrobust.tables import Table

    kw = dict(quick=True, robust_eval="adaptive", n_pgd=2, progress=False)
    first = run("lenet", tmp_path, **kw)
    assert first["config"]["adaptive_budget"] == "quick"
    fast = run("lenet", tmp_path, adaptive_budget="fast", **kw)
    assert fast["config"]["adaptive_budget"] == "fast"
    assert fast["config"]["adaptive_suite"]["whitebox"] == "pgd" and fast["config"]["adaptive_suite"]["steps"] == 50
    assert fast["resumed"] and all(t.startswith("train ") for t in fast["resumed"])  # no row reused
    rows = {p.name for p in (tmp_path / "state").glob("row-*.safetensors")}
    robust = [r["row"] for r in fast["rows"] if "adaptive" in r]
    assert robust and len(rows) == 2 * len(fast["rows"])  # each row once per budget: two keys
    md = (tmp_path / "lenet.md").read_text()
    assert "White-box stage (budget `fast`): PGD-CE + PGD-margin (50 steps × 1 restart(s))" in md
    assert "**Strength: weak white-box** — white-box stage: PGD-50" in md
    notes = Table.from_json((tmp_path / "lenet_adaptive_table.json").read_text()).notes
    assert any("PGD-50" in n and "upper bounds" in n for n in notes)
    with pytest.raises(TorchRobustError, match="unknown adaptive budget 'huge'"):
        run("lenet", tmp_path / "bad", adaptive_budget="huge", **kw)
    with pytest.raises(TorchRobustError, match="robust_eval='adaptive' only"):
        run("lenet", tmp_path / "bad", quick=True, adaptive_budget="fast", progress=False)
    assert not (tmp_path / "bad").exists()


def test_a_state_dir_that_is_a_file_is_a_one_line_error_before_work(tmp_path, capsys):
    blocker = tmp_path / "state-file"
    blocker.write_text("mine\n")
    with pytest.raises(TorchRobustError, match="state folder") as err:
        run("table1", tmp_path / "out", quick=True, state_dir=blocker)
    assert "\n" not in str(err.value) and blocker.read_text() == "mine\n"
    assert not (tmp_path / "out" / "table1.json").exists()
    assert main(["paper", "table1", "--profile", "quick", "--out", str(tmp_path / "out2"),
                 "--state-dir", str(blocker), "--quiet"]) == 2
    err_text = capsys.readouterr().err
    assert "state folder" in err_text and "Traceback" not in err_text and blocker.read_text() == "mine\n"
