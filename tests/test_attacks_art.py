"""Cross-check against IBM ART on the same MNIST model and data: ours may not be weaker than ART's implementation
of the same attack by more than 1 point of robust accuracy (300 test points, fixed seeds, same hyper-parameters).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import Tensor, nn

art = pytest.importorskip("art")

from art.attacks import evasion as E  # noqa: E402
from art.estimators.classification import PyTorchClassifier  # noqa: E402
from conftest import train_small_mnist_mlp  # noqa: E402

from torchrobust.attacks import FGSM, PGD  # noqa: E402
from torchrobust.attacks.cw import CW  # noqa: E402
from torchrobust.attacks.deepfool import DeepFool  # noqa: E402
from torchrobust.attacks.square import Square  # noqa: E402
from torchrobust.attacks.threat import L2, ThreatModel  # noqa: E402

N = 300
TOL = 0.01  # one point of robust accuracy


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, Tensor, Tensor, PyTorchClassifier]:
    model, x, y = train_small_mnist_mlp(N)
    clf = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
                            clip_values=(0.0, 1.0), device_type="cpu")
    return model, x, y, clf


def _robust_acc(model: nn.Module, x_adv: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


def _art(attack, x: Tensor, y: Tensor, threat: ThreatModel | None = None) -> Tensor:
    np.random.seed(0)
    out = torch.from_numpy(attack.generate(x.numpy(), y=y.numpy())).to(x.dtype)
    # minimum-norm attacks (C&W, DeepFool) are brought to the budget exactly as ours are: projection
    return threat.project(out, x) if threat is not None else out


def _compare(ours: float, theirs: float, name: str) -> None:
    logging.getLogger(__name__).info("%s robust accuracy: ours %.3f, ART %.3f", name, ours, theirs)
    assert ours <= theirs + TOL, f"{name}: ours {ours:.3f} vs ART {theirs:.3f}"


def test_fgsm(setup) -> None:
    model, x, y, clf = setup
    ours = _robust_acc(model, FGSM("Linf", eps=0.1)(model, x, y), y)
    theirs = _robust_acc(model, _art(E.FastGradientMethod(clf, norm=np.inf, eps=0.1), x, y), y)
    _compare(ours, theirs, "FGSM")
    assert abs(ours - theirs) <= TOL  # the same deterministic method


@pytest.mark.parametrize("norm,eps", [("Linf", 0.08), ("L2", 1.0)])
def test_pgd(setup, norm: str, eps: float) -> None:
    model, x, y, clf = setup
    torch.manual_seed(0)
    ours = _robust_acc(model, PGD(norm, eps=eps, steps=20, alpha=eps / 8, seed=0)(model, x, y), y)
    art_norm = np.inf if norm == "Linf" else 2
    theirs = _robust_acc(model, _art(E.ProjectedGradientDescent(clf, norm=art_norm, eps=eps, eps_step=eps / 8,
                                                              max_iter=20, num_random_init=1, batch_size=N,
                                                              verbose=False), x, y), y)
    assert ours < 0.9  # the budget is in the interesting range
    _compare(ours, theirs, f"PGD-{norm}")


@pytest.mark.parametrize("n,steps,searches", [
    (60, 30, 4),
    pytest.param(150, 100, 6, marks=pytest.mark.slow),
])
def test_carlini_wagner_l2(setup, n: int, steps: int, searches: int) -> None:
    model, x, y, clf = setup
    x, y = x[:n], y[:n]
    eps = 1.0
    ours = _robust_acc(model, CW(eps=eps, steps=steps, binary_search_steps=searches)(model, x, y), y)
    art_cw = E.CarliniL2Method(clf, max_iter=steps, binary_search_steps=searches, learning_rate=0.01,
                             initial_const=0.01, batch_size=n, verbose=False)
    theirs = _robust_acc(model, _art(art_cw, x, y, L2(eps)), y)
    _compare(ours, theirs, "CW-L2")


def test_deepfool_l2(setup) -> None:
    """ART's DeepFool is ℓ2 only (our ℓ∞ variant is covered by tests/test_attacks_extra.py)."""
    model, x, y, clf = setup
    eps, norm = 1.0, "L2"
    threat = L2(eps)
    ours = _robust_acc(model, DeepFool(norm, eps=eps, steps=50, overshoot=0.02)(model, x, y), y)
    art_df = E.DeepFool(clf, max_iter=50, epsilon=0.02, nb_grads=10, batch_size=N, verbose=False)
    theirs = _robust_acc(model, _art(art_df, x, y, threat), y)
    _compare(ours, theirs, f"DeepFool-{norm}")


@pytest.mark.parametrize("norm,eps", [("Linf", 0.1), ("L2", 1.5)])
def test_square(setup, norm: str, eps: float) -> None:
    model, x, y, clf = setup
    x, y = x[:200], y[:200]
    ours = _robust_acc(model, Square(norm, eps=eps, n_queries=300, seed=0)(model, x, y), y)
    art_norm = np.inf if norm == "Linf" else 2
    theirs = _robust_acc(model, _art(E.SquareAttack(clf, norm=art_norm, eps=eps, max_iter=300, p_init=0.8,
                                                  nb_restarts=1, batch_size=200, verbose=False), x, y), y)
    _compare(ours, theirs, f"Square-{norm}")
