"""The training baselines MART, AWP (on PGD-AT and TRADES), E-AT and RAMP: each objective / adversary on a
hand-checkable case, and a tiny end-to-end run per mode on 64 MNIST images that is finite and resumes bit for bit
after a crash."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchrobust import psat
from torchrobust.errors import TorchRobustError
from torchrobust.psat.adversary import PGDConfig, TrainingAdversary
from torchrobust.psat.multinorm import ExtremeNormAdversary, max_loss_pick, ramp_objective, ramp_pairing_loss
from torchrobust.train import TrainConfig, TrainMode, awp, fit
from torchrobust.train.objectives import mart_loss


class Net(nn.Sequential):
    """An MNIST MLP with BatchNorm (buffers must be restored by AWP and resumed); ``fuse`` crashes the k-th
    train-mode forward pass."""

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        super().__init__(nn.Flatten(), nn.Linear(784, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Linear(24, 10))
        self.calls, self.fuse = 0, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self.training:
            self.calls += 1
            if self.calls == self.fuse:
                raise KeyboardInterrupt
        return super().forward(x)


@pytest.fixture(scope="module")
def mnist64() -> tuple[torch.Tensor, torch.Tensor]:
    from torchrobust import data

    return data.as_tensors(data.load("mnist", "train"), 64)


# ---- MART ---------------------------------------------------------------------------------------------------


def test_mart_loss_equals_the_formula_by_hand():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.3]])
    logits_adv = torch.tensor([[0.2, 1.5, -0.5], [0.1, 0.4, 0.9]])
    y = torch.tensor([0, 1])
    beta = 3.0

    def softmax(v):
        e = [math.exp(t) for t in v]
        return [t / sum(e) for t in e]

    total = 0.0
    for i in range(2):
        p, q, t = softmax(logits[i].tolist()), softmax(logits_adv[i].tolist()), int(y[i])
        wrong = max((q[k], k) for k in range(3) if k != t)[1]
        bce = -math.log(q[t]) - math.log(1.0001 - q[wrong] + 1e-12)
        kl = sum(p[k] * (math.log(p[k]) - math.log(q[k] + 1e-12)) for k in range(3))
        total += bce + beta * kl * (1.0000001 - p[t])
    got = mart_loss(logits, logits_adv, y, beta)
    assert got.item() == pytest.approx(total / 2, rel=1e-5)
    # no adversarial shift and a confident clean prediction: only the boosted CE remains
    same = mart_loss(logits_adv, logits_adv, y, beta)
    assert same.item() == pytest.approx(mart_loss(logits_adv, logits_adv, y, 0.0).item(), rel=1e-6)


# ---- AWP ----------------------------------------------------------------------------------------------------


def test_awp_perturbs_each_weight_by_gamma_times_its_norm_and_leaves_buffers(mnist64):
    x, y = mnist64[0][:32], mnist64[1][:32]
    model = Net().train()
    before = copy.deepcopy(model.state_dict())
    gamma = 0.01
    v = awp.weight_perturbation(model, lambda: F.cross_entropy(model(x), y), gamma)
    params = awp.perturbed_parameters(model)
    assert [p.shape for p in params] == [(24, 784), (10, 24)]  # weight matrices only: no bias, no BatchNorm
    for p, d in zip(params, v, strict=True):
        assert d.norm().item() == pytest.approx(gamma * p.norm().item(), rel=1e-5)
    # the direction is the ascent direction of the loss: the loss grows at w + v
    for k, t in model.state_dict().items():
        assert torch.equal(t, before[k]), k  # nothing changed in place, BatchNorm statistics included
    base = F.cross_entropy(model(x), y).item()
    restore = awp.perturb(model, lambda: F.cross_entropy(model(x), y), gamma)
    assert F.cross_entropy(model(x), y).item() > base
    restore()
    restore()  # idempotent
    for k, t in model.state_dict().items():
        if "running" not in k and "num_batches" not in k:
            assert torch.allclose(t, before[k], atol=1e-7), k


def test_awp_step_is_the_update_computed_at_the_perturbed_weights(mnist64):
    x, y = mnist64
    shift = lambda m, xb, yb: (0.8 * xb + 0.1)  # noqa: E731 — a fixed, hand-checkable "adversary"
    gamma, lr = 0.02, 0.5
    model = Net()
    expected = copy.deepcopy(model).train()
    # by hand: v at w, then one SGD step from the gradient at w + v, then v removed again
    xs = shift(None, x, y)
    v = awp.weight_perturbation(expected, lambda: F.cross_entropy(expected(xs), y), gamma)
    with torch.no_grad():
        for p, d in zip(awp.perturbed_parameters(expected), v, strict=True):
            p.add_(d)
    F.cross_entropy(expected(xs), y).backward()
    with torch.no_grad():
        for p in expected.parameters():
            p.sub_(lr * p.grad)
        for p, d in zip(awp.perturbed_parameters(expected), v, strict=True):
            p.sub_(d)
    cfg = TrainConfig(epochs=1, batch_size=64, lr=lr, momentum=0.0, mode=TrainMode.PGD_AWP, awp_gamma=gamma)
    fit(model, (x, y), cfg, adversary=shift)
    for (k, a), b in zip(model.state_dict().items(), expected.state_dict().values(), strict=True):
        assert torch.allclose(a, b.to(a.dtype), atol=1e-5), k  # running statistics updated once, at w + v
    # and it differs from the plain PGD-AT step
    plain = Net()
    fit(plain, (x, y), TrainConfig(epochs=1, batch_size=64, lr=lr, momentum=0.0, mode="pgd"), adversary=shift)
    assert not torch.allclose(plain[1].weight, model[1].weight, atol=1e-6)


# ---- E-AT / RAMP --------------------------------------------------------------------------------------------


def test_eat_trains_each_batch_against_linf_or_l1_only_and_both_occur(mnist64):
    torch.manual_seed(0)
    adv = ExtremeNormAdversary(PGDConfig("Linf", 0.3, 2), PGDConfig("L1", 10.0, 2))
    draws = {adv.draw().threat for _ in range(40)}
    assert draws == {"Linf", "L1"}
    x, y = mnist64[0][:16], mnist64[1][:16]
    model = Net().eval()
    seen = set()
    torch.manual_seed(1)
    train_adv = TrainingAdversary("eat", steps={"Linf": 2, "L2": 2, "L1": 2})
    assert set(train_adv.configs()) == {"Linf", "L1"}
    for _ in range(8):
        (xa,) = train_adv(model, x, y)
        d = (xa - x).flatten(1)
        in_linf = bool((d.abs().amax(1) <= 0.3 + 1e-5).all())
        in_l1 = bool((d.abs().sum(1) <= 10.0 + 1e-3).all())
        assert in_linf != in_l1  # one of the two balls, never ℓ2 (both balls are far from each other here)
        seen.add("Linf" if in_linf else "L1")
    assert seen == {"Linf", "L1"}


def test_ramp_pairing_term_zero_for_equal_logits_positive_otherwise_and_by_hand():
    y = torch.tensor([0, 1, 2])
    src = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 1.0], [2.0, 0.0, 1.0]])  # example 2 misclassified
    assert ramp_pairing_loss(src, src.clone(), y).item() == 0.0
    tgt = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0], [-5.0, 9.0, 0.0]])
    got = ramp_pairing_loss(src, tgt, y)
    p, q = F.softmax(src[0], 0), F.softmax(tgt[0], 0)
    by_hand = float((p * (p.log() - q.log())).sum()) / 2  # S = {0, 1}; example 1 is paired with itself (0)
    assert got.item() == pytest.approx(by_hand, rel=1e-5) and got.item() > 0
    assert ramp_pairing_loss(src[2:], tgt[2:], y[2:]).item() == 0.0  # no correctly classified ℓ∞ example


def test_ramp_max_pick_takes_the_higher_loss_example_per_row():
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(2))
    y = torch.tensor([0, 0])
    a = torch.tensor([[5.0, 0.0], [0.0, 5.0]])  # row 0 right (low loss), row 1 wrong (high loss)
    b = torch.tensor([[0.0, 5.0], [5.0, 0.0]])
    assert torch.equal(max_loss_pick(model, a, b, y), torch.tensor([[0.0, 5.0], [0.0, 5.0]]))


def test_ramp_objective_loss_is_max_ce_plus_lambda_pairing(mnist64):
    x = mnist64[0][:16]
    obj = ramp_objective(TrainingAdversary("ramp", eps={"Linf": 0.001, "L1": 10.0},
                                           steps={"Linf": 1, "L2": 1, "L1": 1}, ramp_lambda=0.0))
    model = Net().train()
    with torch.no_grad():
        y = model.eval()(x).argmax(1)  # labels the model gets right, kept under the tiny ℓ∞ budget
    model.train()
    state = copy.deepcopy(model.state_dict())  # the train-mode forwards move the BatchNorm statistics
    torch.manual_seed(0)
    loss0, logits = obj(model, model, x, y)
    assert torch.isfinite(loss0) and logits.shape == (16, 10)
    assert ramp_objective(TrainingAdversary("max")) is None
    obj.lam = 2.0
    model.load_state_dict(state)
    torch.manual_seed(0)
    loss2, _ = obj(model, model, x, y)
    assert loss2.item() > loss0.item()  # same seed and weights: same examples, plus a positive pairing term


# ---- end to end: finite, and resumed bit for bit --------------------------------------------------------------


def _runs():
    eps = {"eps": 0.3, "steps": 2}
    return {
        "mart": (dict(mode="mart", **eps), {}),
        "pgd-awp": (dict(mode="pgd-awp", awp_gamma=0.01, **eps), {}),
        "trades-awp": (dict(mode="trades-awp", awp_gamma=0.01, **eps), {}),
        "eat": ({}, {"adversary": TrainingAdversary("eat", steps={"Linf": 2, "L2": 2, "L1": 2})}),
        # with gradient projection (the default): its state is in the resume state
        "ramp": ({}, {"objective": ramp_objective(TrainingAdversary("ramp", steps={"Linf": 2, "L2": 2,
                                                                                  "L1": 2}))}),
    }


@pytest.mark.parametrize("name", sorted(_runs()))
def test_each_mode_trains_finite_and_resumes_bitwise(tmp_path, mnist64, name):
    kw, hooks = _runs()[name]
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, seed=4, checkpoint_every=1, **kw)
    ref = Net()
    res = fit(ref, mnist64, cfg, **hooks)
    assert all(math.isfinite(h["loss"]) for h in res.history) and len(res.history) == 2
    crashed = Net()
    per_step = {"eat": 1, "mart": 2, "pgd-awp": 2, "ramp": 3, "trades-awp": 4}[name]  # train-mode forwards
    crashed.fuse = 3 * per_step + 1  # the 4th (last) step: the second epoch's second batch
    with pytest.raises(KeyboardInterrupt):
        fit(crashed, mnist64, cfg, checkpoint_dir=tmp_path, **hooks)
    resumed = Net(seed=7)
    fit(resumed, mnist64, cfg, checkpoint_dir=tmp_path, resume_from=tmp_path, **hooks)
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_psat_train_baselines_writes_eat_and_ramp(tmp_path, mnist64):
    paths = psat.train_baselines(tmp_path, mnist64, strategies=["eat", "ramp"], arch="msd_cnn",
                                 steps={"Linf": 1, "L2": 1, "L1": 1}, max_batches=1, batch_size=16)
    assert set(paths) == {"AT_eat", "AT_ramp"}
    for p in paths.values():
        model = psat.load_member(p)
        assert torch.isfinite(model(mnist64[0][:4])).all()


# ---- bad input ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw, match", [
    (dict(mode="pgd-awp", awp_gamma=float("nan")), "awp_gamma"),
    (dict(mode="mart", mart_beta=-1.0), "mart_beta"),
    (dict(mode="mart-awp"), "unknown training mode"),
])
def test_bad_hyper_parameters_one_line(kw, match):
    with pytest.raises(TorchRobustError, match=match):
        TrainConfig(**kw).validate()


def test_objective_and_adversary_combinations_are_refused(mnist64):
    obj = ramp_objective(TrainingAdversary("ramp"))
    with pytest.raises(TorchRobustError, match="custom objective"):
        fit(Net(), mnist64, TrainConfig(mode="pgd"), objective=obj)
    with pytest.raises(TorchRobustError, match="trades-awp"):
        fit(Net(), mnist64, TrainConfig(mode="trades-awp"), adversary=lambda m, x, y: x)


def test_cli_lists_the_new_modes_and_baselines(capsys, monkeypatch):
    from torchrobust.cli import main

    monkeypatch.setenv("COLUMNS", "400")  # no line wrapping inside the names

    for argv, names in ((["train", "--help"], ("mart", "pgd-awp", "trades-awp", "--awp-gamma", "--mart-beta")),
                        (["psat", "train", "--help"], ("eat", "ramp"))):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert all(n in out for n in names), argv


# ---- RAMP's gradient projection (GP) ---------------------------------------------------------------------------


def test_gp_fuse_on_hand_checked_vectors():
    from torchrobust.psat.ramp_gp import gp_fuse

    old = {"w": torch.tensor([1.0, 1.0]), "v": torch.zeros(2), "n": torch.tensor(3)}
    adv = {"w": torch.tensor([2.0, 1.0]), "v": torch.tensor([1.0, 0.0]), "n": torch.tensor(5)}
    nat = {"w": torch.tensor([2.0, 2.0]), "v": torch.tensor([-1.0, 0.0]), "n": torch.tensor(9)}
    out = gp_fuse(old, adv, nat, beta=0.5)
    # w: δ_adv = (1, 0), δ_nat = (1, 1), cos = 1/√2 > 0 → old + ½·δ_adv + ½·(1/√2)·δ_nat
    c = 0.5 / math.sqrt(2.0)
    assert torch.allclose(out["w"], torch.tensor([1.0 + 0.5 + c, 1.0 + c]))
    # v: δ_nat = −δ_adv, cos = −1 → the natural update is dropped, half the adversarial one is kept
    assert torch.equal(out["v"], torch.tensor([0.5, 0.0]))
    assert int(out["n"]) == 5  # scalar buffers (num_batches_tracked) take the adversarial model's value
    assert torch.equal(gp_fuse(old, adv, nat, beta=0.0)["w"], adv["w"])  # β = 0: plain adversarial training


def test_ramp_gp_epoch_is_the_fusion_of_the_no_gp_and_the_natural_runs(mnist64):
    """One epoch with GP = gp_fuse(θ_0, θ after the epoch without GP, θ after the epoch of clean training with the
    same optimiser, schedule and batches), for every parameter and BatchNorm statistic."""
    from torchrobust.psat.ramp_gp import gp_fuse

    adv = TrainingAdversary("ramp", steps={"Linf": 2, "L2": 2, "L1": 2})
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.1, seed=3, schedule="cosine")
    start = Net().state_dict()
    off, nat, on = Net(), Net(), Net()
    fit(off, mnist64, cfg, objective=ramp_objective(adv, gp=False))
    fit(nat, mnist64, cfg)  # mode "standard": clean cross-entropy
    fit(on, mnist64, cfg, objective=ramp_objective(adv))
    want = gp_fuse(start, off.state_dict(), nat.state_dict(), 0.5)
    for k, t in on.state_dict().items():
        assert torch.allclose(t, want[k], rtol=1e-5, atol=1e-6), k
    moved = max(float((a - b).abs().max()) for a, b in zip(on.state_dict().values(), off.state_dict().values(),
                                                           strict=True) if a.is_floating_point())
    assert moved > 1e-3  # GP changed the result


def _gp_objective(**kw):
    return ramp_objective(TrainingAdversary("ramp", steps={"Linf": 1, "L2": 1, "L1": 1}), **kw)


@pytest.mark.parametrize("crash_at", [7, 10])  # 3 train-mode forwards of the model per step: the 3rd step (epoch 2,
# batch 1: the last state is epoch 1's end, GP fused) or the 4th (epoch 2, batch 2: the last state is mid-epoch)
def test_ramp_gp_resumes_bitwise_mid_epoch_and_at_an_epoch_boundary(tmp_path, mnist64, crash_at):
    from torchrobust.train import resume

    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05, seed=4, checkpoint_every=1, schedule="cosine")
    ref = Net()
    res = fit(ref, mnist64, cfg, objective=_gp_objective())
    assert len(res.history) == 3 and all(math.isfinite(h["loss"]) for h in res.history)
    crashed = Net()
    crashed.fuse = crash_at
    with pytest.raises(KeyboardInterrupt):
        fit(crashed, mnist64, cfg, objective=_gp_objective(), checkpoint_dir=tmp_path)
    doc, tensors = resume.read_state(resume.state_path(tmp_path))
    gp = doc["objective"]["projection"]
    assert (doc["position"]["epoch"], doc["position"]["batch"]) == ((1, 0) if crash_at == 7 else (1, 1))
    assert gp["active"] is (crash_at == 10) and gp["epoch"] == (0 if crash_at == 7 else 1)
    assert any(k.startswith("objective.projection.natural_optimizer.") for k in tensors)  # momentum kept
    resumed = Net(seed=7)  # other weights and a fresh objective: everything must come from the state
    out = fit(resumed, mnist64, cfg, objective=_gp_objective(), checkpoint_dir=tmp_path, resume_from=tmp_path)
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert [h["loss"] for h in out.history] == [h["loss"] for h in res.history]


def test_ramp_gp_resume_state_binds_the_objective(tmp_path, mnist64):
    """A GP run's state does not resume without GP, with another λ, PGD setting or β, nor without an objective; one
    line each; a GP epoch begun at batch 2 without a loaded state is refused."""
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, seed=4, checkpoint_every=1)
    crashed = Net()
    crashed.fuse = 10
    with pytest.raises(KeyboardInterrupt):
        fit(crashed, mnist64, cfg, objective=_gp_objective(), checkpoint_dir=tmp_path)
    other_lambda = ramp_objective(TrainingAdversary("ramp", steps={"Linf": 1, "L2": 1, "L1": 1}, ramp_lambda=1.5))
    other_steps = ramp_objective(TrainingAdversary("ramp", steps={"Linf": 2, "L2": 1, "L1": 1}))
    for obj, match in ((_gp_objective(gp=False), r"other options \(gp True -> False\)"),
                       (other_lambda, r"other options \(lam 5.0 -> 1.5\)"),
                       (other_steps, r"other options \(linf .*'steps': 1.* -> .*'steps': 2"),
                       (_gp_objective(gp_beta=0.4), "gp_beta 0.5"),
                       (None, "holds a training objective's state")):
        model = Net()
        before = copy.deepcopy(model.state_dict())
        with pytest.raises(TorchRobustError, match=match) as e:
            fit(model, mnist64, cfg, objective=obj, checkpoint_dir=tmp_path, resume_from=tmp_path)
        assert "\n" not in str(e.value)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # refused before loading
    model = Net()
    with pytest.raises(TorchRobustError, match="no state for this epoch.*resume_from"):
        _gp_objective()._gp.begin_epoch(model, torch.optim.SGD(model.parameters(), lr=0.1), 1, 1)


@pytest.mark.parametrize("kw, match", [
    (dict(gp_beta=1.5), "gp_beta must be a number in \\[0, 1\\]"),
    (dict(gp_beta=float("nan")), "gp_beta"),
    (dict(gp="yes"), "gp must be True or False"),
])
def test_ramp_gp_bad_options_one_line(kw, match):
    with pytest.raises(TorchRobustError, match=match) as e:
        ramp_objective(TrainingAdversary("ramp"), **kw)
    assert "\n" not in str(e.value)


def test_cli_ramp_gp_switch_reaches_the_objective_and_the_metadata(tmp_path, capsys):
    """``psat train --baselines ramp`` trains RAMP with GP; ``--no-ramp-gp`` without (RAMP w/o GP): the switch
    reaches the objective (the weights differ) and AT_ramp's metadata records it."""
    from torchrobust import checkpoint
    from torchrobust.cli import main

    states = {}
    for flag, gp in (("--ramp-gp", True), ("--no-ramp-gp", False)):
        out = tmp_path / flag
        assert main(["psat", "train", "--out", str(out), "--members", "", "--baselines", "ramp", "--n-train", "32",
                     "--epochs", "2", "--steps", "1", "--quiet", flag]) == 0  # 1 step per epoch; the first has lr 0
        meta = checkpoint.load_metadata(out / "AT_ramp.safetensors")["metadata"]
        assert meta["ramp_gp"] is gp and meta["ramp_lambda"] == TrainingAdversary("ramp").ramp_lambda
        states[gp] = psat.load_member(out / "AT_ramp.safetensors").state_dict()
    assert any(not torch.equal(a, states[False][k]) for k, a in states[True].items() if a.is_floating_point())
    assert "saved AT_ramp" in capsys.readouterr().out


_KILLED_GP_RUN = """
import sys, torch
from torch import nn
from torchrobust import data
from torchrobust.psat.adversary import TrainingAdversary
from torchrobust.psat.multinorm import ramp_objective
from torchrobust.train import TrainConfig, fit
torch.manual_seed(0)
model = nn.Sequential(nn.Flatten(), nn.Linear(784, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Linear(24, 10))
fit(model, data.as_tensors(data.load("mnist", "train"), 512),
    TrainConfig(epochs=2, batch_size=16, lr=0.05, seed=4, checkpoint_every=1),
    objective=ramp_objective(TrainingAdversary("ramp", steps={"Linf": 1, "L2": 1, "L1": 1})),
    checkpoint_dir=sys.argv[1])
"""


@pytest.mark.slow  # 20-30 s at load 5 on 2 cores (a second Python process, three runs)
def test_ramp_gp_run_killed_with_sigkill_resumes_bitwise(tmp_path):
    """A real ``kill -9`` of a RAMP+GP run (another process, killed as soon as a resume state is on disk), then
    ``fit(resume_from=...)`` here: the same weights as the uninterrupted run."""
    import sys

    from conftest import kill_9_when

    from torchrobust import data
    from torchrobust.train import resume

    state = resume.state_path(tmp_path)
    kill_9_when([sys.executable, "-c", _KILLED_GP_RUN, str(tmp_path)], state.exists)
    doc = resume.read_state(state)[0]
    assert 1 <= doc["position"]["step"] < 64 and doc["objective"]["projection"]["natural"] is not None

    def run(**kw: object) -> nn.Module:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Linear(24, 10))
        fit(model, data.as_tensors(data.load("mnist", "train"), 512),
            TrainConfig(epochs=2, batch_size=16, lr=0.05, seed=4, checkpoint_every=1), objective=_gp_objective(),
            **kw)
        return model

    resumed, ref = run(checkpoint_dir=tmp_path, resume_from=tmp_path), run()
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
