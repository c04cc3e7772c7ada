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


def test_full_profile_trains_the_mlp_backbones_at_the_paper_codes_lr(monkeypatch):
    """The full profile's MLP backbones (normal and adversarial) use SGD lr 1e-3 (the paper code's); fast 0.01."""
    from torchrobust.experiments.reprogramming import PROFILES, _backbones
    from torchrobust.experiments.reprogramming_protocol import PresetContext

    for name, want in (("fast", 0.01), ("full", 1e-3)):
        seen: list = []

        def fake_train(self, model, seen=seen, **kw):
            seen.append(kw)
            return []

        monkeypatch.setattr(PresetContext, "train", fake_train)
        x, y = torch.rand(8, 1, 28, 28), torch.arange(8) % 10
        ctx = PresetContext(profile=PROFILES[name], seed=0, progress=False, x_train=x, y_train=y, x_test=x,
                            y_test=y, device=torch.device("cpu"))
        _backbones(ctx, 3, adv=True)
        assert [(kw.get("mode", "standard"), kw["lr"], kw["epochs"]) for kw in seen] == [
            ("standard", want, PROFILES[name].backbone_epochs), ("fgsm", want, PROFILES[name].backbone_epochs)]


def test_a_diverged_paradigm_is_a_marked_row_not_a_lost_table(tmp_path, monkeypatch):
    """When Paradigm 3's training diverges (the loop's NaN guard), the preset still writes every other row, the
    diverged row carries no accuracy and its reason, and the markdown says so; other errors still propagate."""
    from torchrobust.errors import TorchRobustError, TrainingDiverged
    from torchrobust.experiments import reprogramming as R

    real_learn = R._learn

    def learn(ctx, backbone, paradigm, **kw):
        if paradigm == 3:
            raise TrainingDiverged("training diverged at epoch 1, batch 28: the loss is nan (lr 0.001, ...)",
                                   epoch=1, batch=28)
        return real_learn(ctx, backbone, paradigm, **kw)

    monkeypatch.setattr(R, "_learn", learn)
    res = R.run("table1", tmp_path / "t1", quick=True, robust_eval="pgd20", progress=False)
    rows = {r["row"]: r for r in res["rows"]}
    assert rows["Paradigm 3"]["fgsm"] is None and "pgd20" not in rows["Paradigm 3"]
    assert rows["Paradigm 3"]["diverged"].startswith("training diverged at epoch 1, batch 28")
    assert rows["Paradigm 2"]["fgsm"] is not None and rows["Normal-train"]["fgsm"] is not None
    md = (tmp_path / "t1" / "table1.md").read_text()
    assert "**Training diverged**" in md and "* Paradigm 3: training diverged at epoch 1, batch 28" in md
    assert (tmp_path / "t1" / "table1_table.json").is_file()

    def broken(ctx, backbone, paradigm, **kw):
        raise TorchRobustError("something else")

    monkeypatch.setattr(R, "_learn", broken)
    with pytest.raises(TorchRobustError, match="something else"):
        R.run("table1", tmp_path / "t2", quick=True, robust_eval="pgd20", progress=False)
