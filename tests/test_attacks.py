"""Attack contract and PGD / FGSM behaviour on tiny local models (invariants, not golden numbers)."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import fit, prototype_images, tiny_mlp
from torch import Tensor, nn

from torchrobust import attacks
from torchrobust.attacks import FGSM, L1, L2, PGD, Attack, AttackBudgetError, Linf, create, list_attacks
from torchrobust.attacks.base import input_gradient, margin
from torchrobust.errors import TorchRobustError

SHAPE = (1, 6, 6)
N_CLASSES = 4
EPS = {"Linf": 0.3, "L2": 1.5, "L1": 6.0}


def _data(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Separable synthetic 'images': one prototype per class plus noise, about half the pixels exactly 0."""
    return prototype_images(n, seed, SHAPE, N_CLASSES, scale=0.8, offset=0.0, noise=0.25, proto_seed=123,
                            zero_background=True)


def _mlp(seed: int = 0) -> nn.Module:
    return tiny_mlp(SHAPE, N_CLASSES, hidden=32, seed=seed)


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    model = fit(_mlp(0), *_data(256, 0), steps=150)
    xt, yt = _data(256, 1)
    assert (model(xt).argmax(1) == yt).float().mean() > 0.95
    return model


def _attack(kind: str, threat: str, **kw: object) -> Attack:
    if kind == "pgd":
        return PGD(threat, eps=EPS[threat], steps=kw.pop("steps", 10), **kw)
    return FGSM(threat, eps=EPS[threat], **kw)


ALL = [(k, t) for k in ("pgd", "fgsm") for t in ("Linf", "L2", "L1")]


# --------------------------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("kind, threat", ALL)
def test_budget_box_and_no_mutation(trained: nn.Module, kind: str, threat: str) -> None:
    x, y = _data(64, 2)
    x_copy, y_copy = x.clone(), y.clone()
    atk = _attack(kind, threat, seed=0) if kind == "pgd" else _attack(kind, threat)
    x_adv = atk(trained, x, y)
    assert torch.equal(x, x_copy) and torch.equal(y, y_copy)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    norms = atk.threat.norm(x_adv.double() - x.double())
    assert (norms <= EPS[threat] + 1e-6 * max(1.0, EPS[threat])).all()
    assert (norms > 0).any()


@pytest.mark.parametrize("kind, threat", ALL)
def test_batch_consistency(trained: nn.Module, kind: str, threat: str) -> None:
    model = _mlp(1).double().eval()  # float64: batched and single matmuls agree to ~1e-16
    x, y = _data(12, 3)
    x = x.double()
    atk = _attack(kind, threat, random_start=False, restarts=3) if kind == "pgd" else _attack(kind, threat)
    x_before = x.clone()
    full = atk(model, x, y)
    assert torch.equal(x, x_before)  # starting from x itself must not write into x
    for i in range(len(x)):
        torch.testing.assert_close(atk(model, x[i : i + 1], y[i : i + 1]), full[i : i + 1], atol=1e-10, rtol=0)
    split = torch.cat([atk(model, x[:5], y[:5]), atk(model, x[5:], y[5:])])
    torch.testing.assert_close(split, full, atol=1e-10, rtol=0)


@pytest.mark.parametrize("kind, threat", ALL)
def test_seed_reproducible(trained: nn.Module, kind: str, threat: str) -> None:
    x, y = _data(32, 4)
    kw = {"seed": 5, "restarts": 2} if kind == "pgd" else {}
    a = _attack(kind, threat, **kw)(trained, x, y)
    torch.manual_seed(123)  # the global RNG does not matter when a seed is given (FGSM has no randomness)
    b = _attack(kind, threat, **kw)(trained, x, y)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    if kind == "fgsm":
        return
    # the random start really is random: other seeds give other points (one step, so the start shows through)
    c = PGD(threat, eps=EPS[threat], steps=1, seed=6)(trained, x, y)
    d = PGD(threat, eps=EPS[threat], steps=1, seed=5)(trained, x, y)
    assert not torch.equal(c, d)


class _ModeProbe(nn.Module):
    """Records the training flag seen during forward."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(self.training)
        return x


def _bn_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), _ModeProbe(), nn.Flatten(), nn.Dropout(0.5),
        nn.Linear(64, N_CLASSES),
    )  # fmt: skip


@pytest.mark.parametrize("kind, threat", ALL)
def test_model_mode_restored_and_eval_during_attack(kind: str, threat: str) -> None:
    x, y = _data(8, 5)
    model = _bn_model()
    stats = model[1].running_mean.clone()
    atk = _attack(kind, threat)
    model.train()
    atk(model, x, y)
    assert all(m.training for m in model.modules())  # train in, train out
    assert model[3].seen and not any(model[3].seen)  # eval inside the attack
    torch.testing.assert_close(model[1].running_mean, stats)  # BN statistics untouched
    model.eval()
    atk(model, x, y)
    assert not any(m.training for m in model.modules())  # eval in, eval out
    model.train()
    model[1].eval()  # mixed modes are restored per submodule (torchattacks #21)
    atk(model, x, y)
    assert [m.training for m in model.modules()] == [m is not model[1] for m in model.modules()]


@pytest.mark.parametrize("kind, threat", ALL)
def test_parameter_grads_untouched(trained: nn.Module, kind: str, threat: str) -> None:
    x, y = _data(16, 6)
    model = _mlp(2)
    for p in model.parameters():
        assert p.grad is None
    _attack(kind, threat)(model, x, y)
    assert all(p.grad is None for p in model.parameters())
    marker = [torch.full_like(p, 7.0) for p in model.parameters()]
    for p, m in zip(model.parameters(), marker, strict=True):
        p.grad = m.clone()
    _attack(kind, threat)(model, x, y)
    for p, m in zip(model.parameters(), marker, strict=True):
        assert torch.equal(p.grad, m)


# --------------------------------------------------------------------------------------------- strength
def _acc(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("threat, eps", [("Linf", 0.35), ("L2", 1.5), ("L1", 6.0)])
def test_pgd_at_least_as_strong_as_fgsm(trained: nn.Module, threat: str, eps: float) -> None:
    x, y = _data(256, 7)
    clean = _acc(trained, x, y)
    fgsm = _acc(trained, FGSM(threat, eps=eps)(trained, x, y), y)
    pgd = _acc(trained, PGD(threat, eps=eps, steps=20, seed=0)(trained, x, y), y)
    assert pgd <= fgsm <= clean
    assert pgd < clean - 0.1  # the budget is large enough to matter


@pytest.mark.parametrize("threat, eps", [("Linf", 0.5), ("L2", 4.0), ("L1", 12.0)])
def test_pgd_breaks_linear_model_at_large_eps(threat: str, eps: float) -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, N_CLASSES))
    x, y = _data(128, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert _acc(model, x, y) > 0.9
    assert _acc(model, PGD(threat, eps=eps, steps=30, seed=0)(model, x, y), y) <= 0.02


@pytest.mark.parametrize("kind, threat", ALL)
def test_pixels_at_zero_move_up(kind: str, threat: str) -> None:
    """The clamp pitfall: gradients are taken at x_adv itself, so pixels sitting at 0 still get a gradient."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[1] = torch.linspace(0.5, 1.5, 36)  # raising any pixel favours class 1
        model[1].bias.copy_(torch.tensor([0.5, 0.0]))
    x = torch.zeros(4, *SHAPE)
    y = torch.zeros(4, dtype=torch.long)
    kw = {"random_start": False} if kind == "pgd" else {}
    x_adv = _attack(kind, threat, **kw)(model, x, y)
    assert (x_adv > 0).any(1).any() and (x_adv >= 0).all()
    moved = (x_adv.flatten(1) > 0).float().sum(1)
    if threat == "Linf":
        assert (moved == 36).all() and torch.allclose(x_adv, torch.full_like(x_adv, EPS["Linf"]))
    else:
        assert (moved >= 1).all()
    assert _acc(model, x_adv, y) == 0.0


def test_targeted_reaches_target(trained: nn.Module) -> None:
    x, y = _data(64, 9)
    target = (y + 1) % N_CLASSES
    for threat, eps in (("Linf", 0.5), ("L2", 3.0), ("L1", 10.0)):
        x_adv = PGD(threat, eps=eps, steps=40, targeted=True, seed=0)(trained, x, target)
        with torch.no_grad():
            hit = (trained(x_adv).argmax(1) == target).float().mean().item()
        assert hit >= 0.95, threat


@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_losses(trained: nn.Module, loss: str) -> None:
    x, y = _data(128, 10)
    x_adv = PGD("Linf", eps=0.35, steps=20, loss=loss, seed=0)(trained, x, y)
    assert _acc(trained, x_adv, y) < _acc(trained, x, y) - 0.2


def test_fgsm_linf_is_the_textbook_formula(trained: nn.Module) -> None:
    x, y = _data(32, 11)
    xr = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(trained(xr), y, reduction="sum").backward()
    expect = (x + 0.1 * xr.grad.sign()).clamp(0, 1)
    torch.testing.assert_close(FGSM("Linf", eps=0.1)(trained, x, y), expect)


class _Recorder(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.inputs: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.inputs.append(x.detach().clone())
        return self.inner(x)


@pytest.mark.parametrize("threat", ["Linf", "L1"])
def test_pgd_returns_the_best_iterate(trained: nn.Module, threat: str) -> None:
    """Per example, the result is the visited point with the best (success, margin) — not the last iterate."""
    x, y = _data(48, 12)
    rec = _Recorder(trained)
    x_adv = PGD(threat, eps=EPS[threat] / 2, steps=8, alpha=EPS[threat], seed=0, restarts=2)(rec, x, y)
    # restarts only revisit still-robust examples; rebuild per-example candidates by matching batch rows
    with torch.no_grad():
        final_margin = margin(trained(x_adv), y)
        final_succ = trained(x_adv).argmax(1) != y
    first_run = rec.inputs[:9]  # steps + 1 evaluations of the first run, full batch
    assert all(t.shape[0] == len(x) for t in first_run)
    with torch.no_grad():
        margins = torch.stack([margin(trained(t), y) for t in first_run])  # (9, B)
        succs = torch.stack([trained(t).argmax(1) != y for t in first_run])
    best_first = margins.max(0).values
    assert (final_margin >= best_first - 1e-5)[~succs.any(0)].all()
    assert final_succ[succs.any(0)].all()
    # the last iterate is worse than the returned point for some example (otherwise the test is vacuous)
    assert (margins[-1] < final_margin - 1e-4).any()
    # the returned point is one of the visited points
    visited = torch.cat([t.flatten(1) for t in rec.inputs])
    for row in x_adv.flatten(1):
        assert ((visited - row).abs().amax(1) < 1e-6).any()


def test_restarts_only_help_and_run_on_robust_points(trained: nn.Module) -> None:
    x, y = _data(128, 13)
    one = PGD("L2", eps=1.4, steps=5, seed=0)(trained, x, y)
    rec = _Recorder(trained)
    many = PGD("L2", eps=1.4, steps=5, seed=0, restarts=4)(rec, x, y)
    with torch.no_grad():
        succ_one = trained(one).argmax(1) != y
        succ_many = trained(many).argmax(1) != y
    assert (succ_many >= succ_one).all() and succ_many.sum() > succ_one.sum()
    sizes = [len(t) for t in rec.inputs]
    # 6 evaluations of the first run, one of the clean inputs of the examples the run did not break, then the
    # restart on the still-robust examples only
    assert sizes[0] == 128 and 128 - int(succ_one.sum()) == sizes[7] <= sizes[6] < 128


def test_early_stop_keeps_the_success_set(trained: nn.Module) -> None:
    x, y = _data(128, 14)
    rec = _Recorder(trained)
    kw = {"eps": 0.33, "steps": 15, "random_start": False}
    plain = PGD("Linf", **kw)(trained, x, y)
    early = PGD("Linf", early_stop=True, **kw)(rec, x, y)
    with torch.no_grad():
        s_plain = trained(plain).argmax(1) != y
        s_early = trained(early).argmax(1) != y
    assert torch.equal(s_plain, s_early) and 0 < s_plain.sum() < len(y)
    assert sum(len(t) for t in rec.inputs) < 16 * 128  # fewer example-evaluations


def test_random_start_false_ignores_restarts(trained: nn.Module) -> None:
    x, y = _data(16, 15)
    rec = _Recorder(trained)
    PGD("Linf", eps=0.01, steps=3, restarts=5, random_start=False)(rec, x, y)
    assert len(rec.inputs) == 4


# --------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "x_fn, y_fn",
    [
        (lambda x: x + 1.0, lambda y: y),  # x > 1
        (lambda x: x - 0.5, lambda y: y),  # x < 0
        (lambda x: x.masked_fill(x > 0.5, float("nan")), lambda y: y),
        (lambda x: (x * 255).to(torch.uint8), lambda y: y),
        (lambda x: x[0].flatten(), lambda y: y),
        (lambda x: x, lambda y: y + N_CLASSES),  # label out of range (seen on the first forward)
        (lambda x: x, lambda y: y - N_CLASSES),
        (lambda x: x, lambda y: y.float()),
        (lambda x: x, lambda y: y[:-1]),
        (lambda x: x.numpy(), lambda y: y),
    ],
)
@pytest.mark.parametrize("kind", ["pgd", "fgsm"])
def test_bad_inputs_raise_one_line(trained: nn.Module, kind: str, x_fn, y_fn) -> None:
    x, y = _data(4, 16)
    with pytest.raises(TorchRobustError) as info:
        _attack(kind, "Linf")(trained, x_fn(x), y_fn(y))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "call",
    [
        lambda: PGD(eps=-0.1),
        lambda: PGD(eps=float("nan")),
        lambda: PGD(steps=0),
        lambda: PGD(steps=2.5),
        lambda: PGD(restarts=0),
        lambda: PGD(alpha=-1.0),
        lambda: PGD(threat="L3"),
        lambda: PGD(loss="hinge"),
        lambda: PGD(seed="zero"),
        lambda: FGSM(eps=-1),
        lambda: FGSM(loss="mse"),
        lambda: create("pgdd"),
        lambda: create("pgd", iters=40),
    ],
)
def test_bad_arguments_raise_one_line(call) -> None:
    with pytest.raises(TorchRobustError) as info:
        call()
    assert "\n" not in str(info.value)


def test_model_must_return_logits() -> None:
    x, y = _data(4, 17)
    with pytest.raises(TorchRobustError, match="logits"):
        FGSM()(nn.Flatten(0), x, y)


class _Rogue(Attack):
    def __init__(self, result: str) -> None:
        super().__init__("Linf", 0.1)
        self.result = result

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        if self.result == "nan":
            return x * float("nan")
        if self.result == "shape":
            return x[:1]
        if self.result == "type":
            return x.numpy()
        return x + 0.5  # far outside the ball


def test_budget_violations(trained: nn.Module, caplog: pytest.LogCaptureFixture) -> None:
    x, y = _data(4, 18)
    for bad in ("nan", "shape", "type"):
        with pytest.raises(AttackBudgetError):
            _Rogue(bad)(trained, x, y)
    with caplog.at_level(logging.WARNING, logger="torchrobust.attacks.base"):
        out = _Rogue("far")(trained, x, y)
    assert "outside" in caplog.text
    assert Linf(0.1).contains(out, x).all()


def test_threat_model_objects_and_create() -> None:
    atk = PGD(L1(3.0, q=95), steps=3)
    assert atk.threat == L1(3.0, q=95) and atk.alpha == pytest.approx(L1(3.0).default_alpha(3))
    assert PGD(L2(1.0), eps=2.0).threat.eps == 2.0
    assert isinstance(create("PGD", threat="l2", eps=0.5, steps=7), PGD)
    assert create("fgsm", eps=0.1).threat == Linf(0.1)
    assert {"pgd", "fgsm"} <= set(list_attacks())
    assert attacks.ThreatName.L1 == "L1"

    class Custom(FGSM):
        pass

    attacks.register("custom-fgsm", Custom)
    assert isinstance(create("custom-fgsm", eps=0.2), Custom) and "custom-fgsm" in list_attacks()
    with pytest.raises(ValueError):
        attacks.register("pgd", Custom)


def test_input_gradient_matches_gradcheck() -> None:
    torch.manual_seed(0)
    model = _mlp(4).double()
    y = torch.tensor([0, 3])
    x = torch.rand(2, *SHAPE, dtype=torch.float64, requires_grad=True)
    for name in ("ce", "margin"):
        loss_fn = attacks.base.LOSSES[name]
        assert torch.autograd.gradcheck(lambda t, f=loss_fn: f(model(t), y, False).sum(), (x,))
        g = input_gradient(loss_fn(model(x), y, False), x)
        eps = 1e-6
        direction = torch.randn_like(x)
        num = loss_fn(model(x + eps * direction), y, False).sum() - loss_fn(model(x - eps * direction), y, False).sum()
        assert (g * direction).sum().item() == pytest.approx(num.item() / (2 * eps), rel=1e-5)


def test_margin_sign_matches_success() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    y = torch.tensor([0, 0])
    assert margin(logits, y).tolist() == [-2.0, 2.0]
    assert margin(logits, torch.tensor([1, 1]), targeted=True).tolist() == [-2.0, 1.0]


def test_float64_and_other_shapes(trained: nn.Module) -> None:
    model = nn.Sequential(nn.Linear(10, 3)).double()
    x = torch.rand(5, 10, dtype=torch.float64)
    y = torch.randint(0, 3, (5,))
    for threat in (Linf(0.1), L2(0.5), L1(1.0)):
        out = PGD(threat, steps=3, seed=0)(model, x, y)
        assert out.dtype == torch.float64 and threat.contains(out, x).all()


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_works_inside_no_grad_and_inference_mode(trained: nn.Module, context) -> None:
    x, y = _data(16, 19)
    expect = PGD("Linf", eps=0.3, steps=5, seed=0)(trained, x, y)
    with context():
        xi, yi = x.clone(), y.clone()
        out = PGD("Linf", eps=0.3, steps=5, seed=0)(trained, xi, yi)
    torch.testing.assert_close(out, expect, atol=0, rtol=0)


class _Spike(nn.Module):
    """Predicts class 1 only within a tiny ℓ1 neighbourhood of ``x0`` and class 0 elsewhere."""

    def __init__(self, x0: Tensor) -> None:
        super().__init__()
        self.register_buffer("x0", x0)

    def forward(self, x: Tensor) -> Tensor:
        bump = 1 - 1000 * (x - self.x0).flatten(1).abs().sum(1)
        return torch.stack([torch.zeros_like(bump), bump], 1)


@pytest.mark.parametrize("threat", ["Linf", "L2", "L1"])
def test_random_start_never_undoes_a_misclassification(threat: str) -> None:
    x = torch.full((3, *SHAPE), 0.5)
    y = torch.zeros(3, dtype=torch.long)
    model = _Spike(x[0])
    assert (model(x).argmax(1) == 1).all()  # clean inputs are misclassified
    x_adv = PGD(threat, eps=EPS[threat], steps=3, seed=0)(model, x, y)
    assert (model(x_adv).argmax(1) == 1).all()
    torch.testing.assert_close(x_adv, x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("threat", ["Linf", "L2", "L1"])
def test_half_precision_inputs(dtype: torch.dtype, threat: str) -> None:
    model = _mlp(5).to(dtype)
    x, y = _data(8, 20)
    x = x.to(dtype)
    x_adv = PGD(threat, eps=EPS[threat], steps=3, seed=0)(model, x, y)
    assert x_adv.dtype == dtype and (x_adv != x).any()
