"""The reprogramming presets' training profiles: the optimiser each one gives Paradigms 2 and 3."""

from __future__ import annotations

import pytest
import torch

import torchrobust.train as train_pkg
from torchrobust.experiments.reprogramming import linear_mlp, train_paper_model


class _Stop(Exception):
    pass


@pytest.mark.parametrize("profile,paradigm,optimizer,lr,steps", [
    ("fast", 2, "adam", 0.02, 100),
    ("fast", 3, "adam", 2e-3, 100),
    ("full", 2, "sgd", 1e-3, None),  # the paper code's SGD, lr 1e-3, momentum 0.9, every batch of 5 epochs
    ("full", 3, "sgd", 1e-3, None),
])
def test_reprogramming_optimiser_follows_the_profile(profile, paradigm, optimizer, lr, steps, monkeypatch):
    """fit() receives the profile's optimiser, learning rate and step budget (captured before any training)."""
    seen = []

    def fake_fit(model, data, cfg, **kw):
        seen.append(cfg)
        raise _Stop

    monkeypatch.setattr(train_pkg, "fit", fake_fit)
    x, y = torch.rand(64, 1, 28, 28), torch.arange(64) % 10
    with pytest.raises(_Stop):
        train_paper_model("mlp", paradigm, backbone=linear_mlp(3), train_data=(x, y), profile=profile)
    (cfg,) = seen
    assert (cfg.optimizer, cfg.lr, cfg.max_batches) == (optimizer, lr, steps)
    assert cfg.momentum == 0.9 and cfg.mixed and cfg.eps == 0.3
    assert cfg.epochs == (5 if profile == "full" else 1)
