"""Training loop: modes run and learn, seeding is reproducible, constraints are projected, errors are clear."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchrobust.errors import TorchRobustError
from torchrobust.train import TrainConfig, fit


def _blobs(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.full((n, 1, 4, 4), 0.3) + 0.4 * y.view(-1, 1, 1, 1) + 0.05 * torch.randn(n, 1, 4, 4, generator=g)
    return x.clamp(0, 1), y


def _net() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))


@pytest.mark.parametrize("mode", ["standard", "fgsm", "pgd", "trades", "gaussian"])
def test_modes_learn_separable_data(mode):
    x, y = _blobs()
    torch.manual_seed(0)
    m = _net()
    cfg = TrainConfig(epochs=4, batch_size=32, lr=0.1, mode=mode, eps=0.05, steps=3, noise_sigma=0.05)
    res = fit(m, (x, y), cfg)
    assert len(res.history) == 4
    assert not m.training
    with torch.no_grad():
        acc = (m(x).argmax(1) == y).float().mean()
    assert acc > 0.95, (mode, res.history)


def test_seeded_runs_are_identical():
    x, y = _blobs()
    out = []
    for _ in range(2):
        torch.manual_seed(1)
        m = _net()
        fit(m, (x, y), TrainConfig(epochs=1, batch_size=32, lr=0.05, mode="pgd", eps=0.05, steps=2, seed=7))
        out.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    assert torch.equal(out[0], out[1])


def test_only_given_params_train_and_project_is_called():
    x, y = _blobs()

    class Constrained(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _net()
            self.t = nn.Parameter(torch.tensor(0.99))
            self.calls = 0

        def forward(self, z):
            return self.net(z) * (1 + self.t)

        def project_(self):
            self.calls += 1
            with torch.no_grad():
                self.t.clamp_(0, 1)

    m = Constrained()
    frozen = [p.detach().clone() for p in m.net.parameters()]
    fit(m, (x, y), TrainConfig(epochs=1, batch_size=64, lr=5.0, optimizer="sgd"), params=[m.t])
    assert all(torch.equal(a, b) for a, b in zip(frozen, m.net.parameters(), strict=True))
    assert m.calls == 4
    assert 0.0 <= float(m.t.detach()) <= 1.0


@pytest.mark.parametrize("kw,match", [({"mode": "madry"}, "training mode"), ({"epochs": 0}, "epochs"),
                                      ({"lr": -1.0}, "learning rate"), ({"eps": -0.1}, "eps"),
                                      ({"steps": 0}, "steps"), ({"optimizer": "lbfgs"}, "optimizer"),
                                      ({"schedule": "warp"}, "schedule")])
def test_bad_config(kw, match):
    with pytest.raises(TorchRobustError, match=match):
        TrainConfig(**kw).validate()


def test_schedules_run():
    x, y = _blobs(64)
    for s in ["cosine", "step", "multistep", "onecycle"]:
        m = _net()
        fit(m, (x, y), TrainConfig(epochs=2, batch_size=32, schedule=s))


def test_triangular_schedule_rises_to_lr_at_two_fifths_then_falls_to_zero(monkeypatch):
    from torchrobust.train.loop import triangular

    x, y = _blobs(100)
    lrs: list[float] = []
    orig = torch.optim.Adam.step

    def step(self, *a, **k):  # type: ignore[no-untyped-def]
        lrs.append(self.param_groups[0]["lr"])  # the lr this optimiser step uses
        return orig(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    fit(_net(), (x, y), TrainConfig(epochs=1, batch_size=10, lr=0.5, optimizer="adam", schedule="triangular"))
    assert lrs == pytest.approx([0.5 * triangular(k / 10) for k in range(10)])
    assert lrs[0] == 0.0 and lrs[4] == pytest.approx(0.5) and lrs[9] == pytest.approx(0.5 / 6)


def test_an_adversary_returning_several_batches_trains_on_their_mean_loss():
    x, y = _blobs(64)
    calls: list[int] = []

    def two_views(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> list[torch.Tensor]:
        calls.append(len(xb))
        return [xb, (xb + 0.05).clamp(0, 1)]

    torch.manual_seed(0)
    a = _net()
    res = fit(a, (x, y), TrainConfig(epochs=1, batch_size=64, lr=0.1), adversary=two_views)
    assert calls == [64] and 0.0 <= res.final["train_acc"] <= 1.0
    # the same single step by hand: mean of the two cross-entropies, one SGD step
    torch.manual_seed(0)
    b = _net()
    opt = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    xs = x[torch.randperm(64, generator=torch.Generator().manual_seed(0))]
    ys = y[torch.randperm(64, generator=torch.Generator().manual_seed(0))]
    loss = (nn.functional.cross_entropy(b(xs), ys) + nn.functional.cross_entropy(b((xs + 0.05).clamp(0, 1)), ys)) / 2
    loss.backward()
    opt.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)
    assert res.final["loss"] == pytest.approx(float(loss.detach()), rel=1e-5)
    with pytest.raises(TorchRobustError, match="cannot be combined with mode='trades'"):
        fit(_net(), (x, y), TrainConfig(epochs=1, mode="trades"), adversary=two_views)
    with pytest.raises(TorchRobustError, match="mixed=True needs an adversary that returns one batch"):
        fit(_net(), (x, y), TrainConfig(epochs=1, mixed=True), adversary=two_views)


def test_modes_are_str_enums_stored_as_plain_strings() -> None:
    from torchrobust.train import MODES, OptimizerName, ScheduleName, TrainMode

    assert MODES == tuple(TrainMode) and {"standard", "fgsm", "pgd", "trades", "gaussian"} <= set(MODES)
    cfg = TrainConfig(mode=TrainMode.PGD, optimizer=OptimizerName.ADAM, schedule=ScheduleName.COSINE).validate()
    assert (cfg.mode, cfg.optimizer, cfg.schedule) == ("pgd", "adam", "cosine")
    assert type(cfg.mode) is str and type(cfg.optimizer) is str and type(cfg.schedule) is str  # JSON metadata
    assert TrainConfig(mode="fgsm").validate().mode == TrainMode.FGSM
    with pytest.raises(TorchRobustError, match="unknown training mode 'madry'"):
        TrainConfig(mode="madry").validate()
