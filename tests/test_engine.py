"""The evaluation engine: plans of jobs, per-example worst case, eval mode, costs, resumable fingerprinted state."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
from conftest import fit, prototype_images, tiny_mlp
from torch import nn

from torchrobust.attacks import PGD
from torchrobust.errors import TorchRobustError
from torchrobust.evaluate.engine import Job, attack_strength, result_strength, run_plan


@pytest.fixture(scope="module")
def setup():
    x, y = prototype_images(96, seed=1)
    model = fit(tiny_mlp((1, 8, 8), 10), x, y, steps=150)
    return model, x, y


def _jobs(eps: float = 0.15) -> list[Job]:
    return [Job("fgsm", "Linf", eps), Job("pgd", "Linf", eps, kwargs={"steps": 5, "seed": 0}),
            Job("pgd", "Linf", eps, kwargs={"steps": 5, "loss": "margin", "seed": 0}, name="pgd-margin",
                survivors_only=True)]


class _Flaky:
    """An attack that fails on its ``fail_at``-th call (a stand-in for kill -9 in the middle of a job)."""

    def __init__(self, inner, fail_at: int) -> None:
        self.inner, self.fail_at, self.calls = inner, fail_at, 0

    def __call__(self, model, x, y):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        return self.inner(model, x, y)

    def __repr__(self) -> str:  # the fingerprint must not depend on the failure schedule
        return f"Flaky({self.inner!r})"


def test_worst_case_is_per_example_and_matches_attacks_alone(setup):
    model, x, y = setup
    res = run_plan(model, x, y, _jobs(), batch_size=32)
    clean = res.clean
    pgd = PGD("Linf", eps=0.15, steps=5, seed=0)
    # the engine's PGD column equals running the attack by hand on the clean-correct points, batch by batch
    idx = clean.nonzero().squeeze(1)
    by_hand = clean.clone()
    for i in range(0, len(idx), 32):
        sel = idx[i:i + 32]
        by_hand[sel] = model(pgd(model, x[sel], y[sel])).argmax(1) == y[sel]
    assert torch.equal(res.correct["pgd@Linf:0.15"] & clean, by_hand)
    worst = clean & res.correct["fgsm@Linf:0.15"] & res.correct["pgd@Linf:0.15"] & res.correct["pgd-margin@Linf:0.15"]
    assert torch.equal(res.worst("Linf", 0.15), worst)
    assert res.robust_accuracy("Linf", 0.15) <= min(res.accuracy(k) for k in res.correct) + 1e-9
    # survivors-only: the margin job attacked only what fgsm and pgd left robust
    survivors = clean & res.correct["fgsm@Linf:0.15"] & res.correct["pgd@Linf:0.15"]
    assert res.counts["pgd-margin@Linf:0.15"]["gradient"] == 5 * int(survivors.sum())
    assert res.counts["pgd@Linf:0.15"]["gradient"] == 5 * int(clean.sum())
    assert all(s >= 0 for s in res.seconds.values())


def test_eps_zero_is_clean_and_not_attacked(setup):
    model, x, y = setup
    res = run_plan(model, x, y, [Job("pgd", "Linf", 0.0, kwargs={"steps": 3})])
    assert torch.equal(res.correct["pgd@Linf:0.0"] & res.clean, res.clean)
    assert res.counts["pgd@Linf:0.0"]["gradient"] == 0


def test_eval_mode_during_run_and_every_flag_restored(setup):
    model, x, y = setup
    m = copy.deepcopy(model)
    m.train()
    m[1].eval()  # a mixed state must come back exactly
    seen = []
    h = m.register_forward_pre_hook(lambda mod, inp: seen.append(any(s.training for s in mod.modules())))
    run_plan(m, x, y, [Job("fgsm", "Linf", 0.1)])
    h.remove()
    assert seen and not any(seen)
    assert m.training and not m[1].training and m[2].training


def test_resume_after_interrupt_is_identical_and_skips_finished_work(setup, tmp_path, caplog):
    model, x, y = setup
    full = run_plan(model, x, y, _jobs(), batch_size=16)
    flaky = _Flaky(PGD("Linf", eps=0.15, steps=5, seed=0), fail_at=3)
    jobs = [Job("fgsm", "Linf", 0.15), Job(flaky, "Linf", 0.15, name="pgd"),
            Job("pgd", "Linf", 0.15, kwargs={"steps": 5, "loss": "margin", "seed": 0}, name="pgd-margin",
                survivors_only=True)]
    with pytest.raises(KeyboardInterrupt):
        run_plan(model, x, y, jobs, batch_size=16, state=tmp_path / "state")
    meta = json.loads((tmp_path / "state.json").read_text())["meta"]
    assert meta["jobs"]["fgsm@Linf:0.15"]["finished"] and not meta["jobs"]["pgd@Linf:0.15"]["finished"]
    calls_before = flaky.calls
    with caplog.at_level(logging.INFO):
        res = run_plan(model, x, y, jobs, batch_size=16, state=tmp_path / "state")
    assert "resuming evaluation" in caplog.text
    assert res.resumed["pgd@Linf:0.15"] == 32  # two batches of 16 were done before the interrupt
    n_batches = (int(full.clean.sum()) + 15) // 16
    assert flaky.calls - calls_before == n_batches - 2  # finished batches are not redone
    for k in full.correct:
        assert torch.equal(res.correct[k], full.correct[k]), k
    assert torch.equal(res.clean, full.clean)
    # a third run finds everything finished: no attack is called at all
    calls = flaky.calls
    again = run_plan(model, x, y, jobs, batch_size=16, state=tmp_path / "state")
    assert flaky.calls == calls and torch.equal(again.worst("Linf", 0.15), full.worst("Linf", 0.15))


@pytest.mark.parametrize("change", ["model", "data", "labels", "config", "batch_size"])
def test_stale_state_is_never_reused(setup, tmp_path, caplog, change):
    model, x, y = setup
    run_plan(model, x, y, _jobs(), batch_size=32, state=tmp_path / "s")
    m2, x2, y2, jobs, bs = model, x, y, _jobs(), 32
    if change == "model":
        m2 = copy.deepcopy(model)
        with torch.no_grad():
            m2[1].weight[0, 0] += 1e-3
    elif change == "data":
        x2 = x.flip(0)
        y2 = y.flip(0)
    elif change == "labels":
        y2 = (y + 1) % 10
    elif change == "config":
        jobs = _jobs(eps=0.2)
    else:
        bs = 16
    calls = {"n": 0}
    h = m2.register_forward_pre_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    with caplog.at_level(logging.WARNING):
        res = run_plan(m2, x2, y2, jobs, batch_size=bs, state=tmp_path / "s")
    h.remove()
    assert "fingerprint mismatch" in caplog.text
    if change != "labels":  # (shifted labels leave almost nothing to attack)
        assert calls["n"] > 10  # recomputed, not read back
    fresh = run_plan(m2, x2, y2, jobs, batch_size=bs)
    for k in fresh.correct:
        assert torch.equal(res.correct[k], fresh.correct[k])


def test_pickled_state_is_never_unpickled(setup, tmp_path):
    model, x, y = setup
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"evil": Evil()}, tmp_path / "s.pt")
    for planted in (b"\x80\x04not safetensors", (tmp_path / "s.pt").read_bytes()):  # junk, then a real pickle
        (tmp_path / "s.safetensors").write_bytes(planted)
        with pytest.raises(TorchRobustError, match="delete it or choose another output folder") as exc:
            run_plan(model, x, y, _jobs(), batch_size=32, state=tmp_path / "s.pt")
        assert "\n" not in str(exc.value) and "s.safetensors" in str(exc.value)
        assert not marker.exists()
        assert (tmp_path / "s.safetensors").read_bytes() == planted  # left as it was, never overwritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.pt", "s.safetensors"]


def test_state_that_does_not_match_its_jobs_is_refused(setup, tmp_path):
    """A state with this run's fingerprint whose tensors do not fit its jobs is an error, never recomputed over."""
    from torchrobust import resume

    model, x, y = setup
    run_plan(model, x, y, _jobs(), batch_size=32, state=tmp_path / "s")
    fp = json.loads((tmp_path / "s.json").read_text())["fingerprint"]
    loaded = resume.load_state(tmp_path / "s", fp)
    assert loaded is not None
    tensors, meta = loaded
    for broken in ({k: v for k, v in tensors.items() if k != "loss/2"},  # a job's results half missing
                   {**tensors, "clean": tensors["clean"][:-1]}):  # the wrong number of examples
        resume.save_state(tmp_path / "s", broken, meta, fp)
        before = (tmp_path / "s.safetensors").read_bytes()
        with pytest.raises(TorchRobustError, match="do not match its jobs") as exc:
            run_plan(model, x, y, _jobs(), batch_size=32, state=tmp_path / "s")
        assert "\n" not in str(exc.value) and "s.safetensors" in str(exc.value)
        assert (tmp_path / "s.safetensors").read_bytes() == before


def test_bad_plans_are_one_line_errors(setup):
    model, x, y = setup
    cases = [
        ([Job("nope", "Linf", 0.1)], "unknown attack"),
        ([Job("fgsm", "Linf", -0.1)], "eps"),
        ([Job("fgsm", "Linf", float("nan"))], "eps"),
        ([Job("fgsm", "Linf", 0.1), Job("fgsm", "Linf", 0.1)], "twice"),
        ([Job("fgsm", "Linf", 0.1, source="base")], "source"),
        ([Job("fgsm", "Linf", 0.1, role="grey")], "role"),
        ([], "no jobs"),
    ]
    for jobs, msg in cases:
        with pytest.raises(TorchRobustError, match=msg) as exc:
            run_plan(model, x, y, jobs)
        assert "\n" not in str(exc.value)
    with pytest.raises(TorchRobustError, match="batch_size"):
        run_plan(model, x, y, _jobs(), batch_size=0)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(TorchRobustError, match="NaN"):
        run_plan(model, bad, y, _jobs())


def test_transfer_source_is_attacked_and_target_is_scored(setup):
    model, x, y = setup
    other = tiny_mlp((1, 8, 8), 10, seed=3)
    res = run_plan(model, x, y, [Job("pgd", "Linf", 0.15, kwargs={"steps": 5, "seed": 0}, source="base",
                                     role="transfer")], sources={"base": other})
    assert res.counts["pgd@Linf:0.15"]["gradient"] == 5 * int(res.clean.sum())
    direct = run_plan(model, x, y, [Job("pgd", "Linf", 0.15, kwargs={"steps": 5, "seed": 0})])
    # crafting on an unrelated random model is weaker than the white-box attack
    assert res.robust_accuracy("Linf", 0.15) >= direct.robust_accuracy("Linf", 0.15)


def test_strength_labels():
    assert attack_strength("fgsm") == "weak"
    assert attack_strength("pgd", {"steps": 20}) == "weak"
    assert attack_strength("pgd", {"steps": 50}) == "strong"
    assert attack_strength("pgd", {"steps": 20, "restarts": 2}) == "strong"
    assert result_strength([Job("fgsm", "Linf", 0.1), Job("pgd", "Linf", 0.1, kwargs={"steps": 20})]) == "weak"
    assert result_strength([Job("fgsm", "Linf", 0.1), Job("apgd-ce", "Linf", 0.1)]) == "strong"
    assert result_strength([Job(PGD("Linf", 0.1, steps=100), "Linf", 0.1)]) == "strong"


def test_batch_norm_statistics_untouched(tmp_path):
    x, y = prototype_images(40, seed=2)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run_plan(model, x, y, [Job("fgsm", "Linf", 0.1)], batch_size=7, state=tmp_path / "s")
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


# ------------------------------------------------------------------- adversarial points (keep_adv, all_points)
def test_keep_adv_returns_the_attack_points_and_all_points_attacks_clean_errors(setup):
    model, x, y = setup
    y = y.clone()
    y[::7] = (y[::7] + 1) % 10  # wrong labels: clean errors
    pgd = PGD("Linf", eps=0.15, steps=5, seed=0)
    jobs = [Job("pgd", "Linf", 0.15, kwargs={"steps": 5, "seed": 0}, keep_adv=True),
            Job("pgd", "Linf", 0.15, kwargs={"steps": 5, "seed": 0}, name="all", keep_adv=True, all_points=True)]
    res = run_plan(model, x, y, jobs, batch_size=32)
    clean = res.clean
    assert not bool(clean.all())  # the model has clean errors, so the two jobs differ
    adv, adv_all = res.adv["pgd@Linf:0.15"], res.adv["all@Linf:0.15"]
    assert adv.shape == x.shape and adv.dtype == x.dtype
    # default: clean-correct points attacked batch by batch, clean errors keep their clean input
    idx = clean.nonzero().squeeze(1)
    for i in range(0, len(idx), 32):
        sel = idx[i:i + 32]
        assert torch.equal(adv[sel], pgd(model, x[sel], y[sel]))
    assert torch.equal(adv[~clean], x[~clean])
    # all_points: every example attacked in fixed slices of 32, exactly as a plain batch loop does
    by_hand = torch.cat([pgd(model, x[i:i + 32], y[i:i + 32]) for i in range(0, len(x), 32)])
    assert torch.equal(adv_all, by_hand)
    assert not torch.equal(adv_all[~clean], x[~clean])
    assert torch.equal(res.correct["all@Linf:0.15"], model(by_hand).argmax(1) == y)
    assert res.counts["all@Linf:0.15"]["gradient"] == 5 * len(x)
    assert not torch.isnan(res.loss["all@Linf:0.15"]).any()
    assert set(res.adv) == {"pgd@Linf:0.15", "all@Linf:0.15"}
    # jobs without keep_adv keep no points
    assert run_plan(model, x, y, [Job("fgsm", "Linf", 0.1)]).adv == {}
    with pytest.raises(TorchRobustError, match="both all_points and survivors_only"):
        run_plan(model, x, y, [Job("fgsm", "Linf", 0.1, all_points=True, survivors_only=True)])


def test_keep_adv_state_resumes_identically_and_is_fingerprinted(setup, tmp_path, caplog):
    from torchrobust import resume

    model, x, y = setup
    plain = [Job("pgd", "Linf", 0.15, kwargs={"steps": 5, "seed": 0})]
    kept = [Job("pgd", "Linf", 0.15, kwargs={"steps": 5, "seed": 0}, keep_adv=True, all_points=True)]
    # the new options enter the fingerprint only when set: a plan without them keeps its old fingerprint
    assert "keep_adv" not in plain[0].config() and kept[0].config()["keep_adv"] is True
    full = run_plan(model, x, y, kept, batch_size=16)
    flaky = _Flaky(PGD("Linf", eps=0.15, steps=5, seed=0), fail_at=3)
    jobs = [Job(flaky, "Linf", 0.15, name="pgd", keep_adv=True, all_points=True)]
    with pytest.raises(KeyboardInterrupt):
        run_plan(model, x, y, jobs, batch_size=16, state=tmp_path / "s")
    fp = json.loads((tmp_path / "s.json").read_text())["fingerprint"]
    tensors, meta = resume.load_state(tmp_path / "s", fp)
    assert tensors["adv/0"].shape == x.shape and torch.equal(tensors["adv/0"][:32], full.adv["pgd@Linf:0.15"][:32])
    calls = flaky.calls
    res = run_plan(model, x, y, jobs, batch_size=16, state=tmp_path / "s")
    assert res.resumed["pgd@Linf:0.15"] == 32 and flaky.calls - calls == len(x) // 16 - 2
    assert torch.equal(res.adv["pgd@Linf:0.15"], full.adv["pgd@Linf:0.15"])
    assert torch.equal(res.correct["pgd@Linf:0.15"], full.correct["pgd@Linf:0.15"])
    # the same plan without keep_adv is another configuration: recomputed, never read back
    with caplog.at_level(logging.WARNING):
        again = run_plan(model, x, y, [Job(flaky, "Linf", 0.15, name="pgd", all_points=True)], batch_size=16,
                         state=tmp_path / "s")
    assert "fingerprint mismatch" in caplog.text and again.adv == {}
    # a state whose kept points are missing or misshapen is refused and left untouched
    run_plan(model, x, y, jobs, batch_size=16, state=tmp_path / "t")
    fp = json.loads((tmp_path / "t.json").read_text())["fingerprint"]
    tensors, meta = resume.load_state(tmp_path / "t", fp)
    for broken in ({k: v for k, v in tensors.items() if k != "adv/0"},
                   {**tensors, "adv/0": tensors["adv/0"][..., :1]}):
        resume.save_state(tmp_path / "t", broken, meta, fp)
        before = (tmp_path / "t.safetensors").read_bytes()
        with pytest.raises(TorchRobustError, match="do not match its jobs"):
            run_plan(model, x, y, jobs, batch_size=16, state=tmp_path / "t")
        assert (tmp_path / "t.safetensors").read_bytes() == before
