"""On the real bundled MNIST: an undefended MLP is broken by PGD, and PGD is at least as strong as FGSM."""

from __future__ import annotations

import pytest
import torch

from torchrobust import data, models
from torchrobust.evaluate import sweep
from torchrobust.train import TrainConfig, fit


@pytest.fixture(scope="module")
def mnist_mlp():
    train = data.load("mnist", "train")
    x, y = data.as_tensors(data.load("mnist", "test"), 500)
    torch.manual_seed(0)
    m = models.create("mlp", widths=[256, 64], activation="relu")
    fit(m, train, TrainConfig(epochs=1, batch_size=128, lr=0.05, momentum=0.9))
    return m, x, y


def test_pgd_breaks_undefended_mlp_and_beats_fgsm(mnist_mlp):
    m, x, y = mnist_mlp
    res = sweep(m, x, y, attacks=["fgsm", "pgd"], eps=[0.0, 0.05, 0.1, 0.2, 0.3], threat="Linf",
                attack_kwargs={"pgd": {"steps": 40}})
    assert res.accuracy("fgsm")[0] > 0.9
    pgd, fgsm = res.accuracy("pgd"), res.accuracy("fgsm")
    assert all(p <= f for p, f in zip(pgd, fgsm, strict=True)), (pgd, fgsm)
    # per example too: PGD keeps its best iterate, so at eps>0 what FGSM breaks PGD mostly breaks as well
    assert pgd[-1] < 0.05
