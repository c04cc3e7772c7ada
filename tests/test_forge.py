"""Forged threshold function (Chen et al., arXiv 2406.19622, Eq. 9, Eq. 13, Algorithm 1) and model surgery."""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch
from torch import nn

import torchrobust as tr
from torchrobust.errors import TorchRobustError
from torchrobust.forging import (
    CrSearchResult,
    calibrate,
    forge,
    forge_checkpoint,
    forged_modules,
    insertion_points,
    search_c_r,
    search_checkpoint,
    set_c_r,
    unforge,
)
from torchrobust.forging.search import _choose
from torchrobust.nn.forged import Forged, PreForged, bpda, bpda_mode

VALUES = torch.tensor([-4.0, -2.0, -1.9, 0.0, 1.0, 2.0, 2.1, 3.0])


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 3))


def _data(n: int = 64) -> torch.Tensor:
    return torch.rand(n, 1, 4, 4)


# ------------------------------------------------------------------------------------------- the module
def test_default_state_is_exact_identity() -> None:
    f = Forged()
    x = torch.randn(5, 7) * 3
    assert torch.equal(f(x), x)
    assert f.b.item() == 0 and f.c_r.item() == 0


def test_c_r_zero_is_identity_after_calibration() -> None:
    f = Forged(0.0)
    x = torch.randn(10, 3, 4, 4)
    f.track()(x)
    f.freeze()
    assert f.b.item() > 0
    assert torch.equal(f(x), x)


def test_b_zero_with_positive_c_r_is_identity_and_warns() -> None:
    f = Forged(0.5)
    x = torch.randn(4, 6)
    with pytest.warns(UserWarning, match="never calibrated"):
        out = f(x)
    assert torch.equal(out, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f(x)  # warns only once per module


def test_calibration_zeroes_exactly_the_expected_entries() -> None:
    f = Forged(0.5)
    f.track()(VALUES.view(1, -1))
    f.freeze()
    assert f.b.item() == 4.0  # max |x|
    out = f(VALUES.view(1, -1)).view(-1)
    # threshold 0.5 * 4 = 2; |x| <= 2 is zeroed (inclusive, Eq. 9), the rest is kept unchanged
    expected = torch.tensor([-4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.1, 3.0])
    assert torch.equal(out, expected)


def test_signed_max_is_paper_literal() -> None:
    f = Forged(0.5, signed_max=True)
    f.track()(VALUES.view(1, -1))
    f.freeze()
    assert f.b.item() == 3.0  # Algorithm 1: b = max(b, x), signed
    out = f(VALUES.view(1, -1)).view(-1)
    # threshold 0.5 * 3 = 1.5
    assert torch.equal(out, torch.tensor([-4.0, -2.0, -1.9, 0.0, 0.0, 2.0, 2.1, 3.0]))


def test_tracking_never_changes_outputs_and_accumulates_max() -> None:
    f = Forged(0.9)
    a, b = torch.randn(8, 5), 10 * torch.randn(8, 5)
    f.track()
    assert f(a) is a
    f.freeze()
    f.track()
    assert torch.equal(f(b), b)
    assert f.b.item() == pytest.approx(max(a.abs().max().item(), b.abs().max().item()))
    assert f.n_tracked.item() == 16


def test_tracking_is_independent_of_train_eval() -> None:
    f = Forged(0.5).track()
    f.eval()
    assert f.tracking
    f.train()
    assert f.tracking
    f.freeze()
    f.train()
    assert not f.tracking


def test_per_channel_tracks_one_max_per_channel() -> None:
    f = Forged(0.5, per_channel=True, num_channels=3, channel_dim=1)
    x = torch.zeros(2, 3, 2, 2)
    x[0, 0, 0, 0], x[1, 1, 1, 1], x[0, 2, 1, 0] = 1.0, -5.0, 2.0
    f.track()(x)
    f.freeze()
    assert torch.equal(f.b, torch.tensor([1.0, 5.0, 2.0]))
    y = torch.full((1, 3, 1, 1), 1.5)
    # thresholds 0.5, 2.5, 1.0 per channel
    assert torch.equal(f(y).view(-1), torch.tensor([1.5, 0.0, 1.5]))
    with pytest.raises(TorchRobustError, match="channels"):
        f.track()(torch.zeros(1, 4, 2, 2))


def test_state_dict_round_trip_of_module() -> None:
    f = Forged(2**-3)
    f.track()(torch.randn(6, 4))
    f.freeze()
    g = Forged()
    g.load_state_dict(f.state_dict())
    assert set(f.state_dict()) == {"b", "c_r", "n_tracked"}
    x = torch.randn(6, 4)
    assert torch.equal(g(x), f(x))
    assert g.calibrated


def test_bpda_mode_identity_gradients_same_forward() -> None:
    f = Forged(0.5)
    f.track()(VALUES.view(1, -1))
    f.freeze()
    x = VALUES.view(1, -1).clone().requires_grad_(True)
    out = f(x)
    (g_plain,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(g_plain.view(-1), (VALUES.abs() > 2).float())  # Eq. 9 "stops gradient"
    model = nn.Sequential(f)
    with bpda_mode(model):
        assert f.straight_through
        out_b = f(x)
        (g_b,) = torch.autograd.grad(out_b.sum(), x)
    assert not f.straight_through
    assert torch.equal(out_b, out)
    assert torch.equal(g_b, torch.ones_like(x))
    assert bpda is bpda_mode


def test_bpda_mode_restores_flags_on_error_and_can_be_disabled() -> None:
    f = Forged(0.5)
    model = nn.Sequential(nn.Linear(2, 2), f)
    with pytest.raises(RuntimeError), bpda_mode(model):
        raise RuntimeError("boom")
    assert not f.straight_through
    with bpda_mode(model, enabled=False):
        assert not f.straight_through


def test_gradcheck_float64_away_from_threshold() -> None:
    f = Forged(0.25).double()
    f.track()(torch.tensor([[4.0]], dtype=torch.float64))
    f.freeze()  # threshold 1.0
    x = torch.tensor([[-3.0, -0.5, 0.2, 0.9, 1.5, 2.5]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-8)


def test_c_r_validation() -> None:
    for bad in (-1e-3, math.nan, math.inf, "x"):
        with pytest.raises(TorchRobustError, match="c_r"):
            Forged(bad)  # type: ignore[arg-type]
    with pytest.raises(TorchRobustError, match="num_channels"):
        Forged(0.1, per_channel=True)


# ------------------------------------------------------------------------------------------- forge / unforge
def test_default_insertion_points_of_plain_model_skip_first_layer() -> None:
    assert insertion_points(_mlp()) == ["3", "5"]


def test_forge_calibrates_b_as_max_abs_input_of_each_layer() -> None:
    m, x = _mlp(), _data()
    f = forge(m, x, c_r=0.1)
    mods = dict(forged_modules(f))
    with torch.no_grad():
        h1 = m[2](m[1](m[0](x)))
        h2 = m[4](m[3](h1))
    assert mods["3.forged"].b.item() == pytest.approx(h1.abs().max().item())
    assert mods["5.forged"].b.item() == pytest.approx(h2.abs().max().item())
    assert all(mod.n_tracked.item() == 64 for mod in mods.values())
    assert not any(mod.tracking for mod in mods.values())


def test_forge_copy_leaves_original_untouched() -> None:
    m = _mlp()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    f = forge(m, _data(), c_r=0.2)
    assert f is not m and not any(isinstance(x, Forged) for x in m.modules())
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_forged_c_r_zero_matches_original_and_large_c_r_changes_it() -> None:
    m, x = _mlp(), _data()
    f = forge(m, x, c_r=0.0)
    assert torch.equal(f(x), m(x))
    set_c_r(f, 0.5)
    assert not torch.equal(f(x), m(x))


def test_forge_then_unforge_restores_the_exact_model() -> None:
    m, x = _mlp(), _data()
    layers = list(m)
    keys, ref = list(m.state_dict()), m(x)
    f = forge(m, x, c_r=0.3, inplace=True)
    assert f is m and isinstance(m[3], PreForged)
    assert "3.layer.weight" in m.state_dict() and "3.forged.b" in m.state_dict()
    u = unforge(m, inplace=True)
    assert u is m
    assert all(a is b for a, b in zip(list(m), layers, strict=True))
    assert list(m.state_dict()) == keys
    assert torch.equal(m(x), ref)
    with pytest.raises(TorchRobustError, match="not forged"):
        unforge(m)


def test_calibration_restores_training_mode_and_is_idempotent() -> None:
    m = tr.models.create("lenet")
    m.train()
    x = torch.rand(32, 1, 28, 28)
    f = forge(m, x, c_r=2**-5)
    assert f.training
    b1 = [mod.b.clone() for _, mod in forged_modules(f)]
    calibrate(f, x)
    b2 = [mod.b.clone() for _, mod in forged_modules(f)]
    assert all(torch.equal(a, b) for a, b in zip(b1, b2, strict=True))
    calibrate(f, 2 * x.clamp(max=0.5), reset=False)  # accumulating never lowers b
    assert all((mod.b >= a).all() for (_, mod), a in zip(forged_modules(f), b1, strict=True))


def test_zeroed_fraction_is_monotone_in_c_r() -> None:
    m, x = _mlp(), _data(128)
    f = forge(m, x, c_r=0.0)
    fractions = []
    for c in (0.0, 2**-6, 2**-4, 2**-2, 0.5, 1.0):
        set_c_r(f, c)
        zeros = []
        hooks = [mod.register_forward_hook(lambda _m, i, o, z=zeros: z.append((o == 0).float().mean().item()))
                 for _, mod in forged_modules(f)]
        f(x)
        for h in hooks:
            h.remove()
        fractions.append(sum(zeros))
    assert fractions == sorted(fractions) and fractions[-1] > fractions[0]
    assert all(mod.b.item() > 0 for _, mod in forged_modules(f))  # set_c_r never recalibrates


def test_calibration_accepts_tensor_pair_dataset_and_loader() -> None:
    x = _data(40)
    y = torch.zeros(40, dtype=torch.long)
    ref = [m.b for _, m in forged_modules(forge(_mlp().eval(), x))]
    torch.manual_seed(0)
    base = _mlp()
    for data in ((x, y), torch.utils.data.TensorDataset(x, y),
                 torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=7)):
        torch.manual_seed(0)
        got = [m.b for _, m in forged_modules(forge(base, data, batch_size=9))]
        assert len(got) == len(ref)
    # max_batches limits the calibration subset
    f = forge(base, x, batch_size=10, max_batches=2)
    assert all(m.n_tracked.item() == 20 for _, m in forged_modules(f))


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("resnet18", {"width": 4}, 19),  # 8 blocks x 2 convs + 3 downsampling 1x1 shortcuts
        ("wideresnet", {"depth": 34, "widen_factor": 2}, 33),  # WRN-34: 15 blocks x 2 convs + 3 shortcuts
        ("mlp_mixer", {"hidden_dim": 16, "tokens_mlp_dim": 8, "channels_mlp_dim": 16, "depth": 2}, 8),
        ("lenet", {}, 3),
    ],
)
def test_zoo_insertion_points_are_the_documented_ones(name: str, kwargs: dict, expected: int) -> None:
    m = tr.models.create(name, **kwargs)
    names = m.forge_insertion_points()
    assert len(names) == expected
    f = forge(m, None, c_r=2**-7, inplace=True)
    wrapped = [n for n, mod in f.named_modules() if isinstance(mod, PreForged)]
    assert wrapped == names
    first_conv = next(n for n, mod in f.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear)))
    assert first_conv not in wrapped  # the stem / first layer sees the raw input
    if name != "lenet":  # the classifier head is not an insertion point of CNNs / Mixer (it is for LeNet)
        head = [n for n, mod in f.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))][-1]
        assert head not in wrapped
    spec = f.torchrobust_spec["transforms"][-1]
    assert spec["name"] == "forge" and spec["kwargs"]["where"] == names


def test_wrn_insertion_points_exclude_stem_and_fc() -> None:
    m = tr.models.create("wideresnet", depth=10, widen_factor=2)
    names = insertion_points(m)
    assert "conv1" not in names and "fc" not in names
    assert "block1.layer.0.convShortcut" in names and "block2.layer.0.conv1" in names


def test_where_by_names_glob_and_callable() -> None:
    m = tr.models.create("lenet")
    assert insertion_points(m, ["fc1"]) == ["fc1"]
    assert insertion_points(m, "fc*") == ["fc1", "fc2"]
    assert insertion_points(m, lambda n, mod: isinstance(mod, nn.Conv2d)) == ["conv1", "conv2"]
    with pytest.raises(TorchRobustError, match="unknown insertion point 'fc9'"):
        insertion_points(m, ["fc9"])
    with pytest.raises(TorchRobustError, match="matches none"):
        insertion_points(m, "block*")


def test_model_state_dict_round_trip_and_checkpoint(tmp_path) -> None:
    m = tr.models.create("lenet")
    x = torch.rand(16, 1, 28, 28)
    f = forge(m, x, c_r=2**-4).eval()
    g = forge(tr.models.create("lenet"), None, c_r=2**-4, where=["conv2", "fc1", "fc2"])
    g.load_state_dict(f.state_dict())
    g.eval()
    assert torch.equal(g(x), f(x))
    path = tr.save(f, tmp_path / "forged.safetensors")
    h = tr.load(path)
    assert torch.equal(h(x), f(x))
    assert [n for n, _ in forged_modules(h)] == [n for n, _ in forged_modules(f)]
    set_c_r(f, 2**-6)
    assert f.torchrobust_spec["transforms"][-1]["kwargs"]["c_r"] == 2**-6
    u = unforge(h)
    assert all(t["name"] != "forge" for t in u.torchrobust_spec.get("transforms", []))


def test_forge_errors() -> None:
    with pytest.raises(TorchRobustError, match="c_r"):
        forge(_mlp(), _data(), c_r=-1)
    with pytest.raises(TorchRobustError, match="no insertion point"):
        forge(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), _data())
    with pytest.raises(TorchRobustError, match=r"does not fit the model.*expects"):
        forge(_mlp(), torch.rand(4, 1, 5, 5))
    with pytest.raises(TorchRobustError, match="channel"):
        forge(tr.models.create("lenet"), torch.rand(4, 3, 28, 28))
    with pytest.raises(TorchRobustError, match=r"\[0, 1\]"):
        forge(_mlp(), _data() * 4 - 2)
    with pytest.raises(TorchRobustError, match="empty"):
        forge(_mlp(), torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(0, 1, 4, 4))))
    with pytest.raises(TorchRobustError, match="float"):
        forge(_mlp(), torch.zeros(4, 16, dtype=torch.long))
    f = forge(_mlp(), _data())
    with pytest.raises(TorchRobustError, match="already forged"):
        forge(f, _data())
    with pytest.raises(TorchRobustError, match="c_r"):
        set_c_r(f, -0.5)
    with pytest.raises(TorchRobustError, match="no Forged"):
        set_c_r(_mlp(), 0.1)


def test_failed_inplace_calibration_leaves_model_unforged() -> None:
    m = tr.models.create("lenet")
    with pytest.raises(TorchRobustError):
        forge(m, torch.rand(4, 3, 28, 28), inplace=True)
    assert not any(isinstance(x, Forged) for x in m.modules())


# ------------------------------------------------------------------------------------------- c_r search
def test_choose_criteria() -> None:
    rows = [
        {"c_r": 0.0, "clean": 90.0, "robust_worst": 40.0},
        {"c_r": 0.01, "clean": 89.5, "robust_worst": 43.0},
        {"c_r": 0.02, "clean": 88.5, "robust_worst": 44.0},
        {"c_r": 0.04, "clean": 85.0, "robust_worst": 50.0},
    ]
    assert _choose(rows, "max_robust_clean_drop", 1.0) == 0.01
    assert _choose(rows, "max_robust_clean_drop", 2.0) == 0.02
    assert _choose(rows, "max_sum", 1.0) == 0.04
    assert _choose(rows, lambda r: 0.02, 1.0) == 0.02
    with pytest.raises(TorchRobustError, match="unknown criterion"):
        _choose(rows, "best", 1.0)


def test_search_c_r_table_and_files(tmp_path) -> None:
    torch.manual_seed(0)
    m = _mlp()
    x, vx = _data(64), _data(32)
    vy = m(vx).argmax(1)  # labels the model gets right: clean accuracy of the baseline is 100 %
    attack = tr.attacks.FGSM(threat="Linf", eps=0.1)
    res = search_c_r(m, x, vx, vy, grid=[2**-6, 2**-3, 0.5], attack=attack, out_dir=tmp_path)
    assert isinstance(res, CrSearchResult)
    assert [r["c_r"] for r in res.rows] == [0.0, 2**-6, 2**-3, 0.5]
    assert res.rows[0]["clean"] == 100.0
    for r in res.rows:
        assert 0 <= r["robust_worst"] <= min(r["robust"], r["robust_bpda"]) + 1e-9
    assert res.rows[0]["robust_bpda"] == res.rows[0]["robust"]
    assert res.chosen in {r["c_r"] for r in res.rows}
    assert all(mod.c_r_value == res.chosen for _, mod in forged_modules(res.model))
    assert not any(isinstance(x, Forged) for x in m.modules())
    for ext in ("md", "csv", "json", "png"):
        assert (tmp_path / f"cr_search.{ext}").stat().st_size > 0
    md = res.to_markdown()
    assert "0 (unforged)" in md and "2^-3" in md and "*" in md
    assert res.to_csv().splitlines()[0] == "c_r,log2_c_r,clean,robust,robust_bpda,robust_worst,zero_fraction"


def test_search_c_r_rows_equal_a_hand_computation() -> None:
    """Each row is clean and robust accuracy counted by hand: FGSM (per-example, so batching cannot matter) on the
    clean-correct points, with autograd and inside bpda_mode; a point misclassified clean never counts."""
    torch.manual_seed(0)
    m = _mlp()
    x, vx = _data(64), _data(30)
    vy = m(vx).argmax(1)
    vy[::3] = (vy[::3] + 1) % 3  # a third of the points misclassified clean
    attack = tr.attacks.FGSM(threat="Linf", eps=0.1)
    res = search_c_r(m, x, vx, vy, grid=[2**-6, 2**-3, 0.5], attack=attack, batch_size=7)
    f = res.model
    f.eval()
    for row in res.rows:
        set_c_r(f, row["c_r"])
        with torch.no_grad():
            clean = f(vx).argmax(1) == vy
        ok, ok_b = torch.zeros_like(clean), torch.zeros_like(clean)
        ok[clean] = f(attack(f, vx[clean], vy[clean])).argmax(1) == vy[clean]
        with bpda_mode(f):
            x_b = attack(f, vx[clean], vy[clean])
        ok_b[clean] = f(x_b).argmax(1) == vy[clean]
        n = len(vy)
        assert row["clean"] == 100 * int(clean.sum()) / n
        assert row["robust"] == 100 * int(ok.sum()) / n
        if row["c_r"] > 0:
            assert row["robust_bpda"] == 100 * int(ok_b.sum()) / n
            assert row["robust_worst"] == 100 * int((ok & ok_b).sum()) / n
        else:
            assert row["robust_bpda"] == row["robust_worst"] == row["robust"]
    assert any(r["robust_bpda"] != r["robust"] for r in res.rows)  # BPDA changes something on this model


def test_search_c_r_default_attack_is_seeded_and_callables_are_budget_checked() -> None:
    torch.manual_seed(0)
    m = _mlp()
    x, vx = _data(64), _data(24)
    vy = m(vx).argmax(1)
    runs = []
    for _ in range(2):
        torch.manual_seed(len(runs))  # the global RNG differs between the runs: the attack must not use it
        runs.append(search_c_r(m, x, vx, vy, grid=[2**-3, 0.5], eps=0.1, steps=2, batch_size=8))
    assert runs[0].rows == runs[1].rows and "seed=0" in runs[0].attack
    assert "seed=5" in search_c_r(m, x, vx, vy, grid=[0.5], eps=0.1, steps=1, seed=5).attack

    def too_far(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return (xb + 0.2).clamp(0, 1)

    with pytest.raises(TorchRobustError, match=r"Linf attack .* outside the eps=0.1 ball") as err:
        search_c_r(m, x, vx, vy, grid=[0.5], attack=too_far, eps=0.1)
    assert "\n" not in str(err.value)
    inside = search_c_r(m, x, vx, vy, grid=[0.5], attack=too_far, eps=0.2, bpda=False)
    assert math.isnan(inside.rows[1]["robust_bpda"]) and inside.rows[1]["robust_worst"] == inside.rows[1]["robust"]


def test_search_c_r_errors() -> None:
    m = _mlp()
    vx, vy = _data(4), torch.zeros(4, dtype=torch.long)
    with pytest.raises(TorchRobustError, match="grid"):
        search_c_r(m, _data(), vx, vy, grid=[0.0, 0.1])
    with pytest.raises(TorchRobustError, match="calibration_data"):
        search_c_r(m, None, vx, vy)
    with pytest.raises(TorchRobustError, match="same number"):
        search_c_r(m, _data(), vx, vy[:2])


def test_forge_checkpoint_cli_helper(tmp_path) -> None:
    m = tr.models.create("lenet")
    src = tr.save(m, tmp_path / "lenet.safetensors")
    out = forge_checkpoint(src, tmp_path / "forged.safetensors", data="mnist", c_r=2**-6, n_calib=64)
    f = tr.load(out)
    mods = forged_modules(f)
    assert [n for n, _ in mods] == ["conv2.forged", "fc1.forged", "fc2.forged"]
    assert all(mod.n_tracked.item() == 64 and mod.b.item() > 0 for _, mod in mods)
    assert tr.checkpoint.load_metadata(out)["metadata"]["calibration"]["n"] == 64


def test_search_checkpoint_cli_helper(tmp_path) -> None:
    src = tr.save(tr.models.create("lenet"), tmp_path / "lenet.safetensors")
    res = search_checkpoint(src, tmp_path / "search", data="mnist", grid=[2**-6, 2**-2], n_calib=64, n_val=16,
                            steps=2)
    assert [r["c_r"] for r in res.rows] == [0.0, 2**-6, 2**-2] and res.n_val == 16
    assert (tmp_path / "search" / "cr_search.md").exists()
    f = tr.load(tmp_path / "search" / "forged.safetensors")
    assert all(mod.c_r_value == res.chosen for _, mod in forged_modules(f))
    with pytest.raises(TorchRobustError, match="exceeds"):
        search_checkpoint(src, tmp_path / "s2", data="mnist", n_calib=60000, n_val=1000)


# ------------------------------------------------------------------------------------------- non-finite guards
@pytest.mark.parametrize("shape", [(32, 1, 4, 4), (32, 16)])
def test_a_nan_or_inf_calibration_value_is_refused(shape: tuple[int, ...]) -> None:
    for bad in (math.nan, math.inf):
        x = torch.rand(*shape)
        x.view(-1)[7] = bad
        m = _mlp()
        with pytest.raises(TorchRobustError, match="NaN/inf"):
            forge(m, x, inplace=True)
        assert not any(isinstance(mod, Forged) for mod in m.modules())


def test_failed_recalibration_keeps_the_previous_thresholds() -> None:
    f = forge(_mlp(), _data())
    before = {n: (m.b.clone(), m.n_tracked.clone()) for n, m in forged_modules(f)}
    bad = _data()
    bad[3, 0, 1, 1] = math.nan
    for reset in (True, False):
        with pytest.raises(TorchRobustError, match="NaN"):
            calibrate(f, bad, batch_size=16, reset=reset)
        for n, m in forged_modules(f):
            assert torch.equal(m.b, before[n][0]) and torch.equal(m.n_tracked, before[n][1])
            assert not m.tracking


def test_overflowing_activations_give_no_threshold() -> None:
    m = _mlp()
    with torch.no_grad():
        m[1].weight.fill_(3e38)  # finite weights, but the first hidden activations overflow to inf
    with pytest.raises(TorchRobustError, match="non-finite threshold"):
        forge(m, _data())


def test_c_r_too_large_for_a_float() -> None:
    for bad in (10**400, "1e400", float("-inf")):
        with pytest.raises(TorchRobustError, match="finite"):
            Forged(bad)  # type: ignore[arg-type]
        with pytest.raises(TorchRobustError, match="finite"):
            forge(_mlp(), _data(), c_r=bad)  # type: ignore[arg-type]


def test_search_c_r_refuses_nan_validation_images() -> None:
    vx, vy = _data(4), torch.zeros(4, dtype=torch.long)
    vx[0, 0, 0, 0] = math.nan
    with pytest.raises(TorchRobustError, match="val_x contains NaN"):
        search_c_r(_mlp(), _data(), vx, vy, grid=[0.1])
    with pytest.raises(TorchRobustError, match="val_y"):
        search_c_r(_mlp(), _data(), _data(4), torch.zeros(4), grid=[0.1])


def test_c_r_plot_is_written_atomically_with_the_umask_mode(tmp_path) -> None:
    res = CrSearchResult(rows=[{"c_r": 0.0, "log2_c_r": -math.inf, "clean": 90.0, "robust": 10.0,
                                "robust_bpda": 10.0, "robust_worst": 10.0, "zero_fraction": 0.0},
                               {"c_r": 0.25, "log2_c_r": -2.0, "clean": 80.0, "robust": 20.0,
                                "robust_bpda": 15.0, "robust_worst": 15.0, "zero_fraction": 0.5}],
                         chosen=0.25, criterion="max_sum", n_val=4, attack="pgd")
    old = os.umask(0o022)
    try:
        path = res.plot(tmp_path / "sub" / "p.png")
    finally:
        os.umask(old)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and os.stat(path).st_mode & 0o777 == 0o644
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["p.png"]
