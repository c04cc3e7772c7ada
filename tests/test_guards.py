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


# ------------------------------------------------------------------------------------------ 3. evaluation modes
def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3), nn.Flatten(),
                      nn.Linear(64, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():  # running statistics that differ from any batch's own
        m[1].running_mean.uniform_(-0.5, 0.5)
        m[1].running_var.uniform_(0.5, 2.0)
    m.train()
    m[6].eval()  # mixed modes: the caller's per-submodule choice must survive
    return m


def _snapshot(m: nn.Module) -> tuple[dict[str, torch.Tensor], list[bool]]:
    return ({k: v.clone() for k, v in m.state_dict().items()}, [s.training for s in m.modules()])


def _unchanged(m: nn.Module, snap: tuple[dict[str, torch.Tensor], list[bool]]) -> None:
    state, modes = snap
    now = m.state_dict()
    for k, v in state.items():  # running_mean/var and num_batches_tracked bit-identical
        assert torch.equal(now[k], v), k
    assert [s.training for s in m.modules()] == modes


def test_evaluation_forwards_run_in_eval_mode_and_touch_nothing() -> None:
    from torchrobust.evaluate import checks
    from torchrobust.validation import probe_logits

    m = _bn_model()
    x, y = _xy(16)
    ref = m.eval()(x).argmax(1) == y  # the deployed function
    m.train()
    m[6].eval()
    snap = _snapshot(m)

    assert torch.equal(tr.evaluate.correct(m, x, y, batch_size=5), ref)
    _unchanged(m, snap)
    assert tr.evaluate.accuracy(m, x, y) == float(ref.float().mean())
    _unchanged(m, snap)
    assert probe_logits(m, x) == 3
    _unchanged(m, snap)

    seen: list[bool] = []

    def my_attack(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        seen.append(any(s.training for s in model.modules()))
        return (xb + 0.01).clamp(0, 1)

    tr.evaluate.robust_correct(m, x, y, my_attack, batch_size=4)
    assert seen and not any(seen)  # a plain callable attack also sees the model in eval mode
    tr.evaluate.robust_correct(m, x, y, tr.attacks.PGD("Linf", eps=0.05, steps=2), batch_size=8)
    _unchanged(m, snap)

    assert checks.check_randomness(m, x) is None  # dropout is off in eval mode: deterministic
    checks.check_gradients(m, x, y)
    checks.find_zero_gradient_modules(m, x[:4], path_points=2)
    flags = checks.check_input_contract(m, x)
    assert [f.code for f in flags] == ["TRAIN_MODE"]  # the mode the model was handed is still reported
    checks.run_checks({"model": m, "x": x[:4], "y": y[:4]})
    _unchanged(m, snap)


def test_batchnorm1d_in_train_mode_evaluates_a_single_example() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).train()
    x, y = _xy(1)
    snap = _snapshot(m)
    acc = tr.evaluate.accuracy(m, x, y)  # was: ValueError "Expected more than 1 value per channel when training"
    _unchanged(m, snap)
    assert acc == float(m.eval()(x).argmax(1).item() == y.item())


# ------------------------------------------------------------------------------------------ 5. dtype mismatches
@pytest.mark.parametrize("model_dtype,input_dtype", [(torch.float64, torch.float32), (torch.float64, torch.float16),
                                                     (torch.float32, torch.float64), (torch.float32, torch.float16)])
def test_model_and_input_dtype_mismatch_names_the_cast(model_dtype: torch.dtype, input_dtype: torch.dtype) -> None:
    from torchrobust.validation import probe_logits

    m = _mlp().to(model_dtype)
    x, y = _xy(4)
    x = x.to(input_dtype)
    want = str(model_dtype).replace("torch.", "")
    got = str(input_dtype).replace("torch.", "")
    calls = [lambda: probe_logits(m, x), lambda: tr.evaluate.accuracy(m, x, y),
             lambda: tr.attacks.PGD("Linf", eps=0.1, steps=2)(m, x, y),
             lambda: tr.attacks.FGSM("Linf", eps=0.1)(m, x, y),
             lambda: tr.evaluate.sweep(m, x, y, attacks=["fgsm"], eps=[0, 0.1])]
    if model_dtype == torch.float64 and input_dtype == torch.float32:
        from torchrobust.attacks.autoattack import run_autoattack

        calls.append(lambda: run_autoattack(m, x, y, "Linf", 0.1, version="custom", attacks_to_run=["apgd-ce"]))
    for call in calls:
        with pytest.raises(TorchRobustError, match=rf"input is {got} but the model's parameters are {want}") as info:
            call()
        msg = str(info.value)
        assert "\n" not in msg and f"model.to(torch.{got})" in msg and f"x.to(torch.{want})" in msg


def test_matching_dtypes_still_work_in_float64() -> None:
    m = _mlp().double()
    x, y = _xy(4)
    x = x.double()
    assert 0.0 <= tr.evaluate.accuracy(m, x, y) <= 1.0
    assert tr.attacks.PGD("Linf", eps=0.1, steps=2)(m, x, y).dtype == torch.float64
