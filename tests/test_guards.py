"""Guards of the library core: no silently wrong number from NaN/inf inputs or weights, evaluation forwards that
never touch the model's modes or statistics, and dtype mismatches named as such."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import torchrobust as tr
from torchrobust.errors import TorchRobustError


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)).eval()


def _xy(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


# ------------------------------------------------------------------------------------------ 2. NaN / inf inputs
def test_certify_refuses_nan_inputs_and_nan_logits() -> None:
    from torchrobust.evaluate.certify import Smooth

    x, _ = _xy(1)
    smooth = Smooth(_mlp(), num_classes=3, sigma=0.25)
    bad = x[0].clone()
    bad[0, 1, 1] = math.nan
    with pytest.raises(TorchRobustError, match="NaN"):
        smooth.sample_counts(bad, n=4)
    broken = _mlp()
    with torch.no_grad():
        broken[3].bias[1] = math.nan
    with pytest.raises(TorchRobustError, match="NaN/inf logits"):
        Smooth(broken, num_classes=3, sigma=0.25).sample_counts(x[0], n=4)


def test_lipschitz_refuses_nan_data() -> None:
    from torchrobust.evaluate.lipschitz import empirical_lipschitz, local_lipschitz

    m = tr.forge(_mlp(), _xy(32)[0])
    x, _ = _xy(8)
    x[2, 0, 0, 0] = math.nan
    with pytest.raises(TorchRobustError, match="NaN"):
        empirical_lipschitz(m, x, lemma2_samples=1, n_iter=5)
    with pytest.raises(TorchRobustError, match="NaN"):
        local_lipschitz(m, _xy(8)[0], x)


@pytest.mark.parametrize("value", ["10**400", "1e400", "inf", "nan", "-2**-7"])
def test_cli_c_r_that_is_not_a_finite_number_is_one_line(tmp_path, capsys, value: str) -> None:
    from torchrobust.cli import main

    src = tr.save(tr.models.create("mlp", widths=[8]), tmp_path / "m.safetensors")
    out = tmp_path / "f.safetensors"
    try:  # rejected while parsing (argparse exits 2) or by the library (main returns 2)
        status = main(["forge", str(src), "--c-r", value, "--out", str(out), "--quiet"])
    except SystemExit as exc:
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("torchrobust: error:") and ("c_r" in err or "--c-r" in err) and "\n" not in err
    assert not out.exists()
