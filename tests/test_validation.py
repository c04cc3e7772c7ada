"""The shared checks and helpers of torchrobust.validation (one place for every public entry point)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from torchrobust.attacks import PGD, THREAT_NAMES, ThreatName, get_threat
from torchrobust.errors import TorchRobustError
from torchrobust.validation import (
    check_images,
    check_irls_eps,
    check_irls_steps,
    check_labels,
    check_lam,
    check_positive_int,
    eval_mode,
    model_device,
    renamed_argument,
)


def test_check_positive_int_has_one_argument_order() -> None:
    assert check_positive_int(3, "steps") == 3
    for bad in (0, -1, 2.5, True, "3", None):
        with pytest.raises(TorchRobustError, match=r"^steps must be a positive integer \(>= 1\)"):
            check_positive_int(bad, "steps", 40)
    with pytest.raises(TorchRobustError, match="pass e.g. steps=40"):
        check_positive_int(0, "steps", 40)
    with pytest.raises(TorchRobustError, match="steps must be a positive integer"):  # attacks use it too
        PGD(steps=0)


@pytest.mark.parametrize("value, ok", [(0.0, True), (1, True), (0.5, True), (torch.tensor(0.25), True),
                                       (-0.1, False), (1.5, False), (math.nan, False), ("0.5", False),
                                       (None, False)])
def test_check_lam(value, ok) -> None:
    if ok:
        assert check_lam(value) == float(value)
    else:
        with pytest.raises(TorchRobustError, match="lam"):
            check_lam(value)


def test_check_irls_steps_and_eps() -> None:
    assert check_irls_steps(0) == 0 and check_irls_steps(3) == 3
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(TorchRobustError, match="K="):
            check_irls_steps(bad)
    assert check_irls_eps(1e-3) == 1e-3 and check_irls_eps(2) == 2.0
    for bad in (0.0, -1e-3, math.inf, math.nan, "1e-3", True, None):
        with pytest.raises(TorchRobustError, match="irls_eps"):
            check_irls_eps(bad)


def test_images_and_labels_checks_return_their_input() -> None:
    x, y = torch.rand(3, 1, 4, 4), torch.tensor([0, 2, 1])
    assert check_images(x) is x and check_labels(y, 3, 3) is y
    for bad, why in ((x + 1, r"\[0, 1\]"), (x * math.nan, "NaN or inf"), (x.to(torch.float16) * math.inf, "NaN"),
                     ((x * 255).to(torch.uint8), "float"), (x[0, 0, 0], "batch"), (x[:0], "empty")):
        with pytest.raises(TorchRobustError, match=why):
            check_images(bad)
    with pytest.raises(TorchRobustError, match="int64 class labels.*y.long"):
        check_labels(y.int(), 3, dtype=torch.int64)
    with pytest.raises(TorchRobustError, match="integer class indices"):
        check_labels(y.float(), 3)
    with pytest.raises(TorchRobustError, match="same device"):
        check_labels(y, 3, device=torch.device("meta"))
    with pytest.raises(TorchRobustError, match="model has 2 classes"):
        check_labels(y, 3, 2)


def test_model_device_parameters_then_buffers_then_default() -> None:
    assert model_device(nn.Linear(2, 2).to("meta")) == torch.device("meta")
    buffers_only = nn.BatchNorm1d(2, affine=False).to("meta")
    assert model_device(buffers_only, "cpu") == torch.device("meta")
    assert model_device(nn.ReLU()) == torch.device("cpu")
    assert model_device(nn.ReLU(), torch.device("meta")) == torch.device("meta")


def test_eval_mode_restores_every_submodule() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
    net[1].eval()
    with eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert net.training and net[0].training and not net[1].training


def test_renamed_argument() -> None:
    assert renamed_argument("f", "eps", "irls_eps", None, 2.0, 1.0) == 2.0
    with pytest.warns(DeprecationWarning, match=r"f\(eps=\.\.\.\) is deprecated.*use irls_eps=\.\.\."):
        assert renamed_argument("f", "eps", "irls_eps", 3.0, 1.0, 1.0) == 3.0
    with pytest.raises(TorchRobustError, match="both given"):
        renamed_argument("f", "eps", "irls_eps", 3.0, 2.0, 1.0)


def test_threat_name_is_the_one_alias_table() -> None:
    assert THREAT_NAMES == ("Linf", "L2", "L1") == tuple(ThreatName)
    for alias, name in (("linf", "Linf"), ("INF", "Linf"), (" l_inf ", "Linf"), ("l2", "L2"), ("2", "L2"),
                        ("l_1", "L1"), ("L1", "L1")):
        assert ThreatName(alias) is ThreatName(name)
        assert get_threat(alias, 0.1).name == name
    with pytest.raises(ValueError):
        ThreatName("L0")
    with pytest.raises(TorchRobustError, match="unknown threat model 'L3'"):
        get_threat("L3", 0.1)
