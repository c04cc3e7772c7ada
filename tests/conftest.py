"""Shared test fixtures. Tests run single-threaded: on a 2-core VM OpenMP parallel regions cost more than
they save for the tiny models used here."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def train_small_mnist_mlp(n_test: int, n_train: int = 12000):
    """A 784-100-10 ReLU MLP trained for two Adam epochs on the first ``n_train`` MNIST training images (~97 % test
    accuracy), in eval mode with no stored gradients, and the first ``n_test`` test images (shared by the
    cross-check tests against ART and the reference AutoAttack)."""
    from torch import nn

    from torchrobust import data

    xtr, ytr = data.as_tensors(data.load("mnist", "train"), n_train)
    x, y = data.as_tensors(data.load("mnist", "test"), n_test)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(2):
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 128):
            idx = perm[i:i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model, x.clone(), y.clone()
