"""benchmarks/p3_sgd_divergence.py: both implementations train through torchrobust.train.fit and the outcome records
whether (and at which batch) the NaN guard stopped them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import load_benchmark

from torchrobust import checkpoint
from torchrobust.experiments.reprogramming import BACKBONE_SPECS, linear_mlp


@pytest.fixture(scope="module")
def mod():
    return load_benchmark("p3_sgd_divergence")


def _backbone(tmp_path: Path, scale: float) -> Path:
    net = linear_mlp(3, 0)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)
    net.torchrobust_spec = dict(BACKBONE_SPECS["mlp"])
    path = tmp_path / "bb.safetensors"
    checkpoint.save(net, path)
    return path


def test_two_batches_train_without_divergence(mod, tmp_path):
    res = mod.run(tmp_path / "out", _backbone(tmp_path, 1.0), n_train=256, max_batches=2)
    assert res["library"]["diverged"] is False and res["paper-literal"]["diverged"] is False
    assert json.loads((tmp_path / "out" / "p3_sgd_divergence.json").read_text()) == res


def test_a_diverging_run_reports_its_batch(mod, tmp_path, monkeypatch):
    from torchrobust.errors import TorchRobustError, TrainingDiverged

    def boom():
        raise TrainingDiverged("training diverged at epoch 1, batch 7: the loss is nan (lr 0.001, ...)", epoch=1,
                               batch=7)

    assert mod._outcome(boom)["batch"] == 7 and mod._outcome(boom)["diverged"] is True

    def other():
        raise TorchRobustError("not a divergence")

    with pytest.raises(TorchRobustError, match="not a divergence"):
        mod._outcome(other)
