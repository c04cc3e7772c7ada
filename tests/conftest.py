"""Shared test fixtures. Tests run single-threaded: on a 2-core VM OpenMP parallel regions cost more than
they save for the tiny models used here."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

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


def prototype_images(n: int, seed: int, shape: tuple[int, ...] = (1, 8, 8), n_classes: int = 10,
                     scale: float = 0.7, offset: float = 0.15, noise: float = 0.2, proto_seed: int = 7,
                     zero_background: bool = False) -> tuple[Tensor, Tensor]:
    """Separable synthetic "images" in [0, 1]: one binary prototype per class, ``scale·proto + offset + noise``.
    With ``zero_background`` the pixels that are 0 in the prototype are exactly 0 (as most of MNIST is), which is
    where an attack that differentiates through a clamp loses its gradient."""
    g = torch.Generator().manual_seed(seed)
    protos = (torch.rand(n_classes, *shape, generator=torch.Generator().manual_seed(proto_seed)) > 0.5).float()
    y = torch.randint(0, n_classes, (n,), generator=g)
    x = (scale * protos[y] + offset + noise * torch.randn(n, *shape, generator=g)).clamp(0, 1)
    if zero_background:
        x[protos[y] == 0] = 0.0
    return x, y


def tiny_mlp(shape: tuple[int, ...], n_classes: int, hidden: int = 64, seed: int = 0) -> nn.Module:
    """Flatten → Linear(prod(shape), hidden) → ReLU → Linear(hidden, n_classes), initialised from ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), hidden), nn.ReLU(), nn.Linear(hidden, n_classes))


def fit(model: nn.Module, x: Tensor, y: Tensor, steps: int = 200, lr: float = 1e-2) -> nn.Module:
    """Full-batch Adam on ``(x, y)``; returns the model in eval mode with no stored gradients."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model


def kill_9_when(cmd: list[str], ready, timeout: float = 300.0, env: dict[str, str] | None = None) -> str:
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` is true (or it ends, or ``timeout`` passes); assert it was
    killed rather than finished and return its stderr."""
    import os
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})))
    try:
        deadline = time.monotonic() + timeout
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        err = proc.communicate()[1].decode()
    assert proc.returncode == -signal.SIGKILL, err  # killed, not finished
    return err


def cli_one_line_error(capsys, argv: list[str], *needles: str) -> str:
    """Run the CLI on ``argv``; assert exit 2 and a one-line ``torchrobust: error:`` on stderr holding every needle
    and no traceback. Returns the error line."""
    from torchrobust.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("torchrobust: error: ") and "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def load_benchmark(stem: str):
    """The module of ``benchmarks/<stem>.py`` (benchmarks are scripts, not a package), registered in ``sys.modules``."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{stem}.py"
    spec = importlib.util.spec_from_file_location(stem, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[stem] = mod
    spec.loader.exec_module(mod)
    return mod
