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
