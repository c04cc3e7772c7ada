"""Tests of torchrobust.reprogram (surgery, paradigms), evaluate.embeddings and the reprogramming presets."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from torch import nn

from torchrobust.errors import TorchRobustError
from torchrobust.evaluate.embeddings import embedding_differences, embedding_layers, plot_embeddings
from torchrobust.models import create
from torchrobust.nn import NRPMConv2d, NRPMLinear
from torchrobust.reprogramming import (
    is_reprogrammed,
    lam_sweep,
    learned_lams,
    nrpm_layers,
    reprogram,
    select_layers,
    set_K,
    set_lam,
    set_paradigm,
    trainable_params,
    unreprogram,
)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def _user_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 16), nn.Tanh(), nn.Linear(16, 3)
    )


MODELS = {
    "resnet18_small": lambda: create("resnet18", width=8),
    "resnet18": lambda: create("resnet18"),
    "mixer": lambda: create("mlp_mixer", hidden_dim=16, tokens_mlp_dim=8, channels_mlp_dim=16, depth=2),
    "user_sequential": _user_net,
}


# -------------------------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("inplace", [False, True])
def test_reprogram_then_inverse_restores_exact_model(name: str, inplace: bool) -> None:
    model = MODELS[name]().eval()
    before = _snapshot(model)
    layer_objs = {n: m for n, m in model.named_modules()}
    selected = select_layers(model)
    out = reprogram(model, lam=0.3, K=2, inplace=inplace)
    assert (out is model) == inplace
    assert set(nrpm_layers(out)) == set(selected)
    if not inplace:  # the original is untouched
        assert not is_reprogrammed(model)
        _assert_bitwise_equal(before, _snapshot(model))
    back = unreprogram(out)
    assert back is out and not is_reprogrammed(back)
    _assert_bitwise_equal(before, _snapshot(back))
    for n, m in back.named_modules():  # replaced layers are the very same objects as before
        if n in selected:
            assert m is layer_objs[n]
    if inplace:
        assert all(m is layer_objs[n] for n, m in back.named_modules())


def test_copy_shares_parameters_and_original_is_untouched() -> None:
    model = create("mlp").eval()
    robust = reprogram(model, lam=0.5, K=1)
    assert not is_reprogrammed(model)
    assert robust.fc1.weight is model.fc1.weight and robust.fc3.bias is model.fc3.bias
    orig_ids = {id(p) for p in model.parameters()}
    lam_ids = {id(robust.get_submodule(n).lam_parameter) for n in nrpm_layers(robust)}
    assert {id(p) for p in robust.parameters()} == orig_ids | lam_ids
    # the copy has its own module objects: switching its mode does not touch the original
    robust.train()
    assert not model.training
    # an update through the copy is visible in the original (documented sharing)
    with torch.no_grad():
        robust.fc2.weight.add_(1.0)
    assert torch.equal(robust.fc2.weight, model.fc2.weight)


def test_lam_one_is_the_original_function_and_nrpm_differs() -> None:
    model = _user_net().double().eval()
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    same = reprogram(model, lam=1.0, K=3)
    torch.testing.assert_close(same(x), model(x))
    other = reprogram(model, lam=0.0, K=3)
    assert not torch.allclose(other(x), model(x))


def test_spec_transform_recorded_and_removed() -> None:
    model = create("lenet")
    spec_before = json.loads(json.dumps(model.torchrobust_spec))
    robust = reprogram(model, lam={"conv1": 0.2, "conv2": 0.4}, K=1, irls_eps=5e-4)
    assert model.torchrobust_spec == spec_before  # the copy's spec is its own
    (entry,) = robust.torchrobust_spec["transforms"]
    assert entry == {
        "name": "reprogram",
        "kwargs": {"lam": {"conv1": 0.2, "conv2": 0.4}, "K": 1, "irls_eps": 5e-4, "layers": ["conv1", "conv2"],
                   "learn_lam": False, "drop_bias": False, "backend": "auto"},
    }
    json.dumps(robust.torchrobust_spec)  # serialisable
    # replaying the recorded kwargs on a fresh model gives the same layers and λ
    replay = reprogram(create("lenet"), **entry["kwargs"])
    assert learned_lams(replay) == pytest.approx({"conv1": 0.2, "conv2": 0.4})
    unreprogram(robust)
    assert robust.torchrobust_spec == spec_before
    assert reprogram.inverse is unreprogram


# -------------------------------------------------------------------------------------------- selection
def test_default_layers_follow_the_model_hooks() -> None:
    resnet = create("resnet18", width=8)
    names = select_layers(resnet)
    assert names == resnet.nrpm_default_layers() and len(names) == 16
    mods = dict(resnet.named_modules())
    assert all(isinstance(mods[n], nn.Conv2d) and mods[n].kernel_size == (3, 3) for n in names)
    assert select_layers(create("lenet")) == ["conv1", "conv2"]
    assert select_layers(create("mlp")) == ["fc1", "fc2", "fc3"]
    # a plain module: every Linear and Conv2d, in order
    assert select_layers(_user_net()) == ["0", "3", "5"]


def test_default_selection_skips_multihead_attention_internals() -> None:
    enc = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True).eval()
    assert select_layers(enc) == ["linear1", "linear2"]  # not self_attn.out_proj (read directly by MHA)
    x = torch.rand(2, 3, 8)
    torch.testing.assert_close(reprogram(enc, lam=1.0)(x), enc(x))


def test_selection_by_names_pattern_and_type() -> None:
    net = _user_net()
    assert select_layers(net, ["5", "0"]) == ["0", "5"]  # named_modules order
    assert select_layers(net, "3") == ["3"]  # exact name
    assert select_layers(net, "[35]") == ["3", "5"]  # glob
    assert select_layers(net, r"\d") == ["0", "3", "5"]  # regex (backslash)
    assert select_layers(net, re.compile("0|5")) == ["0", "5"]
    assert select_layers(net, nn.Linear) == ["3", "5"]
    assert select_layers(net, (nn.Conv2d,)) == ["0"]
    mixer = create("mlp_mixer", hidden_dim=16, tokens_mlp_dim=8, channels_mlp_dim=16, depth=2)
    chan = select_layers(mixer, "*channel_mlp.fc1")
    assert len(chan) == 2 and all(n.endswith("channel_mlp.fc1") for n in chan)
    r = reprogram(net, layers=nn.Linear)
    assert isinstance(r[3], NRPMLinear) and isinstance(r[0], nn.Conv2d) and not isinstance(r[0], NRPMConv2d)


def test_lam_per_layer_dict_and_list() -> None:
    net = _user_net()
    r = reprogram(net, lam=[0.1, 0.2, 0.3])
    assert learned_lams(r) == pytest.approx({"0": 0.1, "3": 0.2, "5": 0.3})
    r2 = reprogram(net, lam={"3": 0.25})  # a dict alone selects its keys
    assert learned_lams(r2) == pytest.approx({"3": 0.25})
    r3 = reprogram(net, lam=torch.tensor(0.4))
    assert learned_lams(r3) == pytest.approx({"0": 0.4, "3": 0.4, "5": 0.4})
    set_lam(r, 0.6)
    assert learned_lams(r) == pytest.approx({"0": 0.6, "3": 0.6, "5": 0.6})
    set_K(r, 4)
    assert {m.K for m in nrpm_layers(r).values()} == {4}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lam": 1.5}, "outside"),
        ({"lam": -0.1}, "outside"),
        ({"lam": [0.5, 0.5]}, "3 layers are selected"),
        ({"lam": [0.5, "a", 0.5]}, "lam\\[1\\] must be a number"),
        ({"lam": {"0": 0.5, "nope": 0.5}}, "no layer named 'nope'"),
        ({"lam": {"0": 0.5, "3": 0.5}, "layers": ["0"]}, "not selected"),
        ({"lam": {"0": 0.5}, "layers": ["0", "3"]}, "gives no λ"),
        ({"K": -1}, "K=-1"),
        ({"K": 1.5}, "K=1.5"),
        ({"irls_eps": 0.0}, "irls_eps"),
        ({"irls_eps": -1e-3}, "irls_eps"),
        ({"layers": ["fc9"]}, "no layer named 'fc9'.*valid names: 0, 3, 5"),
        ({"layers": ["1"]}, "ReLU, not nn.Linear"),
        ({"layers": "fc*"}, "matches no"),
        ({"layers": nn.ReLU}, "cannot be reprogrammed"),
        ({"layers": []}, "empty"),
    ],
)
def test_input_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(TorchRobustError, match=match):
        reprogram(_user_net(), **kwargs)


def test_errors_on_models_without_layers_and_double_reprogramming() -> None:
    with pytest.raises(TorchRobustError, match="no nn.Linear or nn.Conv2d"):
        reprogram(nn.Sequential(nn.ReLU(), nn.Flatten()))
    r = reprogram(_user_net())
    with pytest.raises(TorchRobustError, match="already reprogrammed"):
        reprogram(r)
    with pytest.raises(TorchRobustError, match="already reprogrammed"):
        reprogram(r, layers=["3"])
    with pytest.raises(TorchRobustError, match="not reprogrammed"):
        unreprogram(_user_net())
    with pytest.raises(TorchRobustError, match="not reprogrammed"):
        set_paradigm(_user_net(), 2)


# -------------------------------------------------------------------------------------------- paradigms
def test_paradigm_parameter_selection() -> None:
    model = create("mlp")
    r = reprogram(model, lam=0.5, K=1)
    lam_params = [r.get_submodule(n).lam_parameter for n in ("fc1", "fc2", "fc3")]
    assert trainable_params(r, 1) == []
    p2 = set_paradigm(r, 2)
    assert [id(p) for p in p2] == [id(p) for p in lam_params]
    assert all(p.requires_grad for p in lam_params)
    assert not any(p.requires_grad for p in model.parameters())  # weights frozen (shared with the original)
    p3 = set_paradigm(r, 3)
    assert len(p3) == 6 + 3 and all(p.requires_grad for p in r.parameters())
    set_paradigm(r, 1)
    assert not any(p.requires_grad for p in r.parameters())
    with pytest.raises(TorchRobustError, match="unknown paradigm"):
        set_paradigm(r, 4)


def test_paradigm2_training_moves_only_lambda() -> None:
    torch.manual_seed(0)
    model = create("mlp", widths=[8]).double()
    r = reprogram(model, lam=0.5, K=1, inplace=False)
    weights = _snapshot(model)
    params = set_paradigm(r, 2)
    opt = torch.optim.SGD(params, lr=0.5)
    x, y = torch.rand(16, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (16,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(r(x), y).backward()
        opt.step()
        for m in nrpm_layers(r).values():
            m.project_()
    _assert_bitwise_equal(weights, _snapshot(model))
    lams = learned_lams(r)
    assert any(abs(v - 0.5) > 1e-6 for v in lams.values()) and all(0 <= v <= 1 for v in lams.values())


def test_lam_sweep_restores_state() -> None:
    r = reprogram(_user_net(), lam=0.3, K=2)
    seen = []

    def evaluate_fn(m: nn.Module) -> dict[str, float]:
        seen.append((learned_lams(m)["3"], nrpm_layers(m)["3"].K))
        return {"acc": 1.0 - learned_lams(m)["0"]}

    rows = lam_sweep(r, [1.0, 0.5, 0.0], evaluate_fn, K=1)
    assert rows == [{"lam": 1.0, "K": 1, "acc": 0.0}, {"lam": 0.5, "K": 1, "acc": 0.5},
                    {"lam": 0.0, "K": 1, "acc": 1.0}]
    assert seen == [(1.0, 1), (0.5, 1), (0.0, 1)]
    assert learned_lams(r) == pytest.approx({"0": 0.3, "3": 0.3, "5": 0.3})
    assert {m.K for m in nrpm_layers(r).values()} == {2}
    with pytest.raises(TorchRobustError, match="outside"):
        lam_sweep(r, [2.0], evaluate_fn)


# -------------------------------------------------------------------------------------------- embeddings
def test_embedding_difference_zero_for_identical_inputs_and_lam_one() -> None:
    net = _user_net().eval()
    r = reprogram(net, lam=1.0, K=3)
    x = torch.rand(6, 1, 8, 8)
    rows = embedding_differences(r, x, x.clone())
    assert [row["label"] for row in rows] == ["x", "z1", "z2", "z3"]
    assert [row["layer"] for row in rows] == ["input", "0", "3", "5"]
    for row in rows:
        assert row["l1"] == row["l2"] == row["l2_sq"] == row["linf"] == 0.0 and row["n"] == 6


def test_embedding_difference_hand_computed() -> None:
    lin = nn.Linear(2, 2, bias=True)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [2.0, -1.0]]))
        lin.bias.fill_(0.5)
    model = nn.Sequential(lin)
    x = torch.zeros(2, 2)
    d = torch.tensor([[0.3, -0.1], [0.0, 0.2]])
    rows = embedding_differences(model, x, x + d, batch_size=1)
    # input rows: |d| -> l1 (0.4, 0.2), l2 (sqrt(.1), .2), linf (.3, .2)
    assert rows[0]["l1"] == pytest.approx(0.3)
    assert rows[0]["l2"] == pytest.approx((0.1**0.5 + 0.2) / 2)
    assert rows[0]["l2_sq"] == pytest.approx((0.1 + 0.04) / 2)
    assert rows[0]["linf"] == pytest.approx(0.25)
    # layer: W d = (0.3, 0.7) and (0, -0.2)
    assert rows[1]["l1"] == pytest.approx((1.0 + 0.2) / 2)
    assert rows[1]["l2_sq"] == pytest.approx((0.58 + 0.04) / 2)
    assert rows[1]["linf"] == pytest.approx((0.7 + 0.2) / 2)


def test_embedding_layers_and_figure(tmp_path) -> None:
    lenet = create("lenet")
    r = reprogram(lenet, lam=0.5, K=1)
    assert embedding_layers(r) == ["conv1", "conv2", "fc1", "fc2"]
    x = torch.rand(3, 1, 28, 28)
    path = plot_embeddings(r, x, (x + 0.1).clamp(0, 1), tmp_path / "fig5.png", index=1, title="t")
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(TorchRobustError, match="shape"):
        embedding_differences(r, x, x[:2])
    with pytest.raises(TorchRobustError, match="no layer named"):
        embedding_differences(r, x, x, layers=["conv9"])


# -------------------------------------------------------------------------------------------- presets
def test_fgsm_sweep_matches_per_eps_attack() -> None:
    from torchrobust.experiments.reprogramming import fgsm_sweep

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x, y = torch.rand(20, 1, 4, 4), torch.randint(0, 3, (20,))
    eps = (0.0, 0.1, 0.3)
    got = fgsm_sweep(model, x, y, eps, batch_size=7)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(model(xg), y), xg)
    clean = model(x).argmax(1) == y
    for j, e in enumerate(eps):
        want = clean & (model((x + e * g.sign()).clamp(0, 1)).argmax(1) == y)
        assert torch.equal(got[j], want)


def test_fgsm_sweep_is_bit_for_bit_the_engines_one_job_per_eps() -> None:
    """One gradient per batch, every ε stepped from it, equals the evaluation engine running one FGSM job per ε on
    an NRPM MLP (a nonlinear layer, so the gradient's batch composition would matter if it differed); the model's
    train mode is restored."""
    from torchrobust.evaluate.engine import Job, run_plan
    from torchrobust.experiments.reprogramming import fgsm_sweep

    torch.manual_seed(1)
    model = reprogram(nn.Sequential(nn.Flatten(), nn.Linear(36, 12), nn.Linear(12, 4)), lam=0.5, K=2,
                      irls_eps=5e-5).train()
    x = torch.rand(45, 1, 6, 6)
    y = torch.where(torch.rand(45) < 0.7, model.eval()(x).argmax(1), torch.randint(0, 4, (45,)))
    model.train()
    eps = (0.0, 0.05, 0.1, 0.3)
    got = fgsm_sweep(model, x, y, eps, batch_size=8)
    assert model.training
    res = run_plan(model, x, y, [Job("fgsm", "Linf", e) for e in eps[1:]], batch_size=8)
    assert torch.equal(got[0], res.clean)
    for j, e in enumerate(eps[1:], start=1):
        assert torch.equal(got[j], res.clean & res.correct[Job("fgsm", "Linf", e).key])
    assert 0 < int(got[-1].sum()) < int(got[0].sum())  # the attack did something, and not everything


def test_fgsm_sweep_attacks_and_predicts_in_eval_mode_and_restores_every_submodule_mode() -> None:
    """Every forward pass of the sweep (clean check, FGSM gradient, adversarial predictions) sees every submodule in
    eval mode - no dropout mask, no BatchNorm statistic update - so the result is the eval-mode model's; afterwards
    each submodule's own mode is back (here a mixed one: the model in train mode, its BatchNorm set to eval)."""
    from torchrobust.experiments.reprogramming import fgsm_sweep

    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.BatchNorm1d(12), nn.Dropout(0.5), nn.Linear(12, 3))
    model.train()
    model[2].eval()
    model[2].running_mean.uniform_(-0.1, 0.1)
    modes = {name: m.training for name, m in model.named_modules()}
    stats = model[2].running_mean.clone(), model[2].running_var.clone()
    seen: list[bool] = []
    handle = model.register_forward_pre_hook(lambda m, inp: seen.append(any(s.training for s in m.modules())))
    x, y = torch.rand(30, 1, 4, 4), torch.randint(0, 3, (30,))
    eps = (0.0, 0.1, 0.3)
    try:
        got = fgsm_sweep(model, x, y, eps, batch_size=11)
    finally:
        handle.remove()
    assert seen and not any(seen)  # every forward, attack included, in eval mode
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert torch.equal(model[2].running_mean, stats[0]) and torch.equal(model[2].running_var, stats[1])
    ref = copy.deepcopy(model).eval()  # the same sweep by hand on an eval-mode copy
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(ref(xg), y, reduction="sum"), xg)
    clean = ref(x).argmax(1) == y
    for j, e in enumerate(eps):
        assert torch.equal(got[j], clean & (ref((x + e * g.sign()).clamp(0, 1)).argmax(1) == y))


@pytest.mark.parametrize("threat", ["Linf", "L2"])
def test_fgsm_perturb_radii_equals_one_call_per_radius(threat: str) -> None:
    from torchrobust.attacks import FGSM

    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.rand(10, 1, 4, 4), torch.randint(0, 3, (10,))
    radii = [0.05, 0.2, 1.0]
    with torch.no_grad():  # attacks need autograd even inside no_grad
        many = FGSM(threat, eps=0.5).perturb_radii(model, x, y, radii)
    assert len(many) == 3
    for r, got in zip(radii, many, strict=True):
        assert torch.equal(got, FGSM(threat, eps=r)(model, x, y))
        assert float((got - x).flatten(1).norm(p=float("inf") if threat == "Linf" else 2, dim=1).max()) <= r + 1e-6
    assert FGSM(threat, eps=0.5).perturb_radii(model, x, y, []) == []


def test_quick_preset_writes_files(tmp_path) -> None:
    """Default robust evaluation: strong (worst case over sweep's default attacks) on the selected rows; FGSM and
    the strong evaluation on the same 16 images here, so the strong worst case is at most the FGSM cell."""
    from torchrobust.experiments.reprogramming import PAPER, run

    res = run("table1", tmp_path, quick=True, n_test=16, n_pgd=16)
    assert (tmp_path / "table1.json").exists() and (tmp_path / "table1.md").exists()
    saved = json.loads((tmp_path / "table1.json").read_text())
    rows = {r["row"]: r for r in saved["rows"]}
    assert {"Normal-train", "Adv-train", "P1 λ=1.0", "P1 λ=0.5", "Paradigm 2", "Paradigm 3"} <= set(rows)
    assert rows["P1 λ=0.5"]["paper_fgsm"] == PAPER["table1"]["P1 λ=0.5"]
    for r in saved["rows"]:
        assert len(r["fgsm"]) == 7 and all(0 <= v <= 100 for v in r["fgsm"])
        assert all(v <= r["fgsm"][0] for v in r["fgsm"])  # robust counts only clean-correct examples
    # λ = 1 is the normal-trained model itself
    assert rows["P1 λ=1.0"]["fgsm"] == rows["Normal-train"]["fgsm"]
    assert "strong" in rows["Paradigm 2"] and len(rows["Paradigm 2"]["lams"]) == 3
    assert res["config"]["n_test"] == 16 and res["config"]["robust_eval"] == "strong"
    attacks = ["fgsm", "apgd-ce", "apgd-t"]
    assert res["config"]["robust_attacks"] == attacks
    strong = [r for r in saved["rows"] if "strong" in r]
    assert {r["row"] for r in strong} == {"Normal-train", "Adv-train", "P1 λ=0.5", "Paradigm 2", "Paradigm 3"}
    for r in strong:
        assert "pgd20" not in r and list(r["strong_attacks"]) == attacks and list(r["strong"]) == ["clean", "0.3"]
        assert r["strong"]["clean"] == r["fgsm"][0]  # the same images, the same clean accuracy
        assert r["strong_attacks"]["fgsm"]["0.3"] == r["fgsm"][-1]  # sweep's FGSM = the FGSM column at ε = 0.3
        for k, v in r["strong"].items():  # the worst case is at most every attack's own accuracy
            assert v <= min(a[k] for a in r["strong_attacks"].values())
        assert r["strong"]["0.3"] <= r["fgsm"][-1]
    md = (tmp_path / "table1.md").read_text()
    assert "| Paradigm 3 | ours |" in md and "| | paper | 86.1 | 81.7" in md
    flat = json.loads((tmp_path / "table1_table.json").read_text())  # the Table JSON torchrobust report reads
    assert {c["name"]: c["kind"] for c in flat["columns"]}["ε=0.3"] == "percent"
    ours = next(r for r in flat["rows"] if r["row"] == "Paradigm 3" and r["source"] == "ours")
    assert ours["ε=0.3"] == pytest.approx(rows["Paradigm 3"]["fgsm"][-1] / 100)
    assert "table1_table.json" in saved["files"] and (tmp_path / "table1_strong_table.json").is_file()
    assert not (tmp_path / "table1_pgd_table.json").exists() and "## PGD" not in md
    assert "## Default strong evaluation: worst case over FGSM, APGD-CE, APGD-T (100 iterations)" in md
    flat = json.loads((tmp_path / "table1_strong_table.json").read_text())
    assert "FGSM, APGD-CE, APGD-T" in flat["title"]
    p3 = next(r for r in flat["rows"] if r["row"] == "Paradigm 3")
    assert p3["0.3"] == pytest.approx(rows["Paradigm 3"]["strong"]["0.3"] / 100)
    with pytest.raises(TorchRobustError, match="unknown reprogramming preset"):
        run("table99", tmp_path)


def test_quick_preset_pgd20_keeps_the_earlier_column(tmp_path) -> None:
    """robust_eval="pgd20": the earlier keys and files (pgd20 rows, <name>_pgd_table.json), labelled weak."""
    from torchrobust.experiments.reprogramming import run

    res = run("table2", tmp_path, quick=True, n_test=16, n_pgd=8, robust_eval="pgd20")
    pgd = [r for r in res["rows"] if "pgd20" in r]
    assert [r["row"] for r in pgd] == ["Adv-train (ε=0)", "Adv-train (ε=0.3)"]
    assert all(list(r["pgd20"]) == ["clean", "0.3"] and "strong" not in r for r in res["rows"])
    assert res["config"]["robust_eval"] == "pgd20" and "robust_attacks" not in res["config"]
    assert sorted(res["files"]) == ["table2.json", "table2.md", "table2_pgd_table.json", "table2_table.json"]
    md = (tmp_path / "table2.md").read_text()
    assert "PGD-5 (ℓ∞, random start) on the first 8" in md and "## PGD-5 (ours only" in md
    assert "**Strength: weak**" in md and "strong" not in json.loads((tmp_path / "table2.json").read_text())["rows"][0]


def test_preset_robust_eval_is_checked_before_work(tmp_path) -> None:
    from torchrobust.experiments.reprogramming import run

    with pytest.raises(TorchRobustError, match="strong, pgd20") as ei:
        run("table1", tmp_path / "o", quick=True, robust_eval="pgd50")
    assert "\n" not in str(ei.value) and not (tmp_path / "o").exists()


def test_checkpoint_replays_reprogramming(tmp_path) -> None:
    from torchrobust import checkpoint

    model = create("mlp", widths=[8])
    r = reprogram(model, lam={"fc1": 0.25, "fc2": 0.75}, K=2, irls_eps=1e-2)
    set_paradigm(r, 2)
    with torch.no_grad():
        r.fc1.lam_parameter.fill_(0.125)  # a "learned" λ must come back from the weights
    checkpoint.save(r, tmp_path / "m.safetensors")
    back = checkpoint.load(tmp_path / "m.safetensors")
    assert learned_lams(back) == pytest.approx({"fc1": 0.125, "fc2": 0.75})
    assert {m.K for m in nrpm_layers(back).values()} == {2}
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(back(x), r.eval()(x))


def test_deprecated_eps_keyword_still_works(tmp_path) -> None:
    """The IRLS damping is ``irls_eps``; the old keyword ``eps`` works for one release with a DeprecationWarning."""
    import warnings

    from torchrobust import checkpoint

    model = create("mlp", widths=[8])
    with pytest.warns(DeprecationWarning, match="use irls_eps"):
        old = reprogram(model, lam=0.5, K=2, eps=1e-2)
    new = reprogram(model, lam=0.5, K=2, irls_eps=1e-2)
    assert {m.irls_eps for m in nrpm_layers(old).values()} == {1e-2}
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(old(x), new(x))
    with pytest.raises(TorchRobustError, match="both given"):
        reprogram(model, eps=1e-2, irls_eps=1e-4)
    with pytest.warns(DeprecationWarning, match="use irls_eps"):
        assert NRPMLinear(4, 2, eps=5e-4).irls_eps == 5e-4
    with pytest.warns(DeprecationWarning, match="use irls_eps"):
        conv = NRPMConv2d.from_module(nn.Conv2d(1, 2, 3), eps=2e-3)
    assert conv.irls_eps == 2e-3
    with pytest.warns(DeprecationWarning, match="'irls_eps'"):
        assert conv.eps == 2e-3
    # a checkpoint written before the rename recorded "eps": it loads silently, with the same damping
    kwargs = new.torchrobust_spec["transforms"][0]["kwargs"]
    kwargs["eps"] = kwargs.pop("irls_eps")
    checkpoint.save(new, tmp_path / "old.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        back = checkpoint.load(tmp_path / "old.safetensors")
    assert {m.irls_eps for m in nrpm_layers(back).values()} == {1e-2}


def test_lam_parametrization_is_a_str_enum() -> None:
    from torchrobust.nn import LamParametrization

    layer = NRPMLinear(3, 2, lam=0.25, lam_parametrization=LamParametrization.SIGMOID)
    assert layer.lam_parametrization == "sigmoid" and type(layer.lam_parametrization) is str
    assert layer.lam == pytest.approx(0.25) and hasattr(layer, "lam_logit")
    assert NRPMLinear(3, 2, lam_parametrization="clamp").lam_parameter is not None
    with pytest.raises(TorchRobustError, match="unknown lam_parametrization 'tanh'; valid: clamp, sigmoid"):
        NRPMLinear(3, 2, lam_parametrization="tanh")


def test_reprogram_checkpoint_validates_then_loads_reprograms_and_saves(tmp_path) -> None:
    from torchrobust import checkpoint
    from torchrobust.experiments.workflows import reprogram_checkpoint

    src = checkpoint.save(create("mlp", widths=[16]), tmp_path / "m.safetensors")
    with pytest.raises(TorchRobustError, match="outside"):  # checked before the (missing) checkpoint is read
        reprogram_checkpoint(tmp_path / "missing.safetensors", tmp_path / "r.safetensors", lam=1.5)
    out = reprogram_checkpoint(src, tmp_path / "r.safetensors", lam=0.25, K=1)
    with pytest.raises(TorchRobustError, match="already exists"):
        reprogram_checkpoint(src, out)
    meta = checkpoint.load_metadata(out)["metadata"]
    assert meta["reprogrammed_from"] == str(src) and meta["paradigm"] == 1
    layers = [m for m in checkpoint.load(out).modules() if isinstance(m, NRPMLinear)]
    assert layers and all(float(m.lam) == 0.25 and m.K == 1 for m in layers)
