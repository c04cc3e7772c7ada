"""PSAT: backbones and parameter counts, lowest-entropy aggregate, adaptive attack, adversaries, training, metrics."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchrobust import attacks as tr_attacks
from torchrobust import psat
from torchrobust.attacks.threat import get_threat
from torchrobust.errors import TorchRobustError
from torchrobust.nn.hyper import HyperConv2d
from torchrobust.psat.adversary import PGDConfig, TrainingAdversary, msd, pgd, worst_of
from torchrobust.psat.aggregate import PSATEnsemble, adaptive_attack, prediction_entropy, strongest
from torchrobust.psat.metrics import (
    MultiNormRow,
    evaluate_multi_norm,
    format_attack_breakdown,
    format_table,
    trade_off,
)
from torchrobust.psat.models import (
    count_parameters,
    create,
    hypernetwork_parameter_count,
    parameter_report,
)

# ----------------------------------------------------------------------------------------------------------
# backbones


def _resnet_units(depth: int) -> int:
    """Number of 64×64 units of a kuangliu CIFAR ResNet, by hand from its block list."""
    units = 0
    cin = 64
    if depth == 18:
        for s, n in enumerate([2, 2, 2, 2]):
            p = 64 * 2 ** s
            for _ in range(n):
                units += (p // 64) * (cin // 64) + (p // 64) ** 2
                if cin != p:
                    units += (p // 64) * (cin // 64)
                cin = p
        return units
    for s, n in enumerate([3, 4, 6, 3]):
        p = 64 * 2 ** s
        for b in range(n):
            units += (p // 64) * (cin // 64) + (p // 64) ** 2 + (4 * p // 64) * (p // 64)
            if b == 0:
                units += (4 * p // 64) * (cin // 64)
            cin = 4 * p
    return units


def _resnet_bn_params(depth: int) -> int:
    total = 2 * 64
    cin = 64
    blocks = [2, 2, 2, 2] if depth == 18 else [3, 4, 6, 3]
    exp = 1 if depth == 18 else 4
    for s, n in enumerate(blocks):
        p = 64 * 2 ** s
        for b in range(n):
            total += 2 * (2 * p if exp == 1 else 2 * p + 4 * p)
            if b == 0 and cin != p * exp:
                total += 2 * p * exp
            cin = p * exp
    return total


def test_unit_counts_by_hand() -> None:
    assert _resnet_units(50) == 3268  # docs/paper-code-facts.md#psat-parameter-counts
    assert _resnet_units(18) == 340


@pytest.mark.parametrize("depth,classes,z,paper", [
    (50, 10, 32, 799_518), (50, 10, 64, 1_764_510), (50, 10, 128, 4_874_142), (50, 10, 256, 15_811_998),
    (18, 200, 32, 634_200), (18, 200, 64, 1_318_104), (18, 200, 128, 3_865_560), (18, 200, 256, 13_679_064),
])
def test_three_member_parameter_counts_match_hand_computation_and_paper_table2(depth: int, classes: int, z: int,
                                                                                paper: int) -> None:
    fc_in = 2048 if depth == 50 else 512
    hand = (hypernetwork_parameter_count(z, 64, 64, 3) + _resnet_units(depth) * z + 64 * 3 * 9
            + _resnet_bn_params(depth) + fc_in * classes + classes)
    model = create(f"hyper_resnet{depth}", num_classes=classes, z_dim=z)
    assert count_parameters(model) == hand
    assert 3 * hand == paper  # PSAT Table 2: 0.800/1.765/4.874/15.812M and 0.634/1.318/3.866/13.679M


def test_parameter_report_resnet50_saving() -> None:
    members = {t: create("hyper_resnet50", z_dim=128) for t in ("Linf", "L2", "L1")}
    ens = PSATEnsemble(members, input_shape=None)
    rep = parameter_report(ens)
    assert rep.params == 4_874_142 and rep.members == 3
    assert rep.plain_params == 23_520_842  # kuangliu ResNet-50 (the paper prints 23.547M)
    assert rep.saving == pytest.approx(1 - 4_874_142 / 23_520_842)
    assert 0.79 < rep.saving < 0.80 and "saving" in str(rep)


def test_msd_cnn_counts_by_hand() -> None:
    plain = 32 * 25 + 32 + 64 * 32 * 25 + 64 + 3136 * 1024 + 1024 + 1024 * 10 + 10
    assert count_parameters(create("msd_cnn")) == plain == 3_274_634
    hyper = create("hyper_msd_cnn", z_dim=16, unit=16)
    hand = (32 * 25 + 32) + hypernetwork_parameter_count(16, 16, 16, 5) + (4 * 2) * 16 + 64 + 3136 * 1024 + 1024 + 10250
    assert count_parameters(hyper) == hand
    assert parameter_report(hyper).saving == pytest.approx(1 - hand / plain)  # one member: ~1% saving
    ens = PSATEnsemble({t: create("hyper_msd_cnn", z_dim=16, unit=16) for t in ("Linf", "L2", "L1")})
    rep = parameter_report(ens)
    assert rep.params == 3 * hand and rep.plain_params == plain
    assert rep.saving < -1.9  # three members: the fc dominates, so PSAT costs ~3x on this CNN


@pytest.mark.parametrize("name,kw,shape", [
    ("hyper_resnet18", {"z_dim": 4}, (2, 3, 32, 32)),
    ("hyper_resnet50", {"z_dim": 4}, (2, 3, 32, 32)),
    ("hyper_msd_cnn", {"z_dim": 4, "unit": 16}, (2, 1, 28, 28)),
    ("hyper_msd_cnn", {"z_dim": 4, "unit": 32}, (2, 1, 28, 28)),
])
def test_tiling_gives_every_generated_conv_its_shape(name: str, kw: dict, shape: tuple[int, ...]) -> None:
    model = create(name, **kw)
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, HyperConv2d)]
    expected = {"hyper_resnet18": 19, "hyper_resnet50": 52, "hyper_msd_cnn": 1}[name]
    assert len(convs) == expected
    with torch.no_grad():
        for n, m in convs:
            assert m.weight.shape == (m.out_channels, m.in_channels, m.kernel_size, m.kernel_size), n
    # the stem is an ordinary conv
    stem = model.conv1
    assert type(stem) is nn.Conv2d
    if name != "hyper_resnet50":
        model.eval()
        assert model(torch.rand(*shape)).shape == (2, 10)


def test_unit_that_does_not_tile_raises() -> None:
    with pytest.raises(TorchRobustError, match="layer 'conv2'.*does not tile"):
        create("hyper_msd_cnn", unit=24)
    with pytest.raises(TorchRobustError, match="unknown PSAT model"):
        create("hyper_vgg")


@pytest.mark.parametrize("depth", [18, 50])
def test_plain_backbone_has_the_zoo_resnet_layout(depth: int) -> None:
    from torchrobust import models

    zoo = models.create(f"resnet{depth}")
    ours = create(f"plain_resnet{depth}")
    assert [tuple(t.shape) for t in zoo.state_dict().values()] == [tuple(t.shape) for t in ours.state_dict().values()]
    assert count_parameters(zoo) == count_parameters(ours)


def test_plain_counterpart_drops_hyper_kwargs() -> None:
    m = create("hyper_resnet18", z_dim=8, unit=32, num_classes=7)
    plain = psat.plain_counterpart(m)
    spec = plain.torchrobust_spec
    assert spec["name"] == "plain_resnet18" and spec["kwargs"]["num_classes"] == 7
    assert not any("Hyper" in type(mod).__name__ for mod in plain.modules())
    from torchrobust import models

    assert count_parameters(plain) == count_parameters(models.create("resnet18", num_classes=7))


# ----------------------------------------------------------------------------------------------------------
# aggregate


class _Fixed(nn.Module):
    """Returns logits = x.flatten(1) @ W (known outputs)."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w


def _entropy_by_hand(logits: list[float]) -> float:
    m = max(logits)
    e = [math.exp(v - m) for v in logits]
    s = sum(e)
    return -sum((v / s) * math.log(v / s) for v in e)


def test_entropy_selection_matches_hand_computation() -> None:
    torch.manual_seed(1)
    ws = {k: torch.randn(4, 3) * s for k, s in (("Linf", 1.0), ("L2", 2.0), ("L1", 0.5))}
    members = {k: _Fixed(w) for k, w in ws.items()}
    ens = PSATEnsemble(members, input_shape=(4,))
    x = torch.randn(16, 4)
    out, idx = ens.forward_with_selection(x)
    names = list(ws)
    for b in range(16):
        ents = [_entropy_by_hand((x[b] @ ws[k]).tolist()) for k in names]
        best = min(range(3), key=lambda j: ents[j])
        assert idx[b].item() == best
        torch.testing.assert_close(out[b], x[b] @ ws[names[best]])
    assert ens.selected(x) == [names[i] for i in idx.tolist()]
    assert torch.allclose(prediction_entropy(torch.zeros(2, 5)), torch.full((2,), math.log(5)))


def test_ties_go_to_first_member_and_natural_member_wins_when_confident() -> None:
    w = torch.randn(4, 3)
    ens = PSATEnsemble({"L2": _Fixed(w), "Linf": _Fixed(w)})
    assert set(ens.selected(torch.randn(5, 4))) == {"L2"}
    confident = PSATEnsemble({"Linf": _Fixed(w), "natural": _Fixed(10 * w)})
    assert set(confident.selected(torch.randn(5, 4))) == {"natural"}  # the paper's Table 3 failure mode


def test_average_strategy_averages_probabilities() -> None:
    ws = [torch.randn(4, 3) for _ in range(3)]
    ens = PSATEnsemble(dict(zip(("Linf", "L2", "L1"), map(_Fixed, ws), strict=True)), strategy="average")
    x = torch.randn(6, 4)
    want = torch.stack([F.softmax(x @ w, -1) for w in ws]).mean(0)
    torch.testing.assert_close(F.softmax(ens(x), -1), want)
    with pytest.raises(TorchRobustError, match="strategy='entropy'"):
        ens.selected(x)


def _tiny_hyper_member() -> nn.Module:
    return nn.Sequential(HyperConv2d(1, 2, 3, padding=1, z_dim=3, unit=(1, 1, 3), init="kaiming"),
                         nn.Tanh(), nn.Flatten(), nn.Linear(2 * 3 * 3, 3))


def test_aggregate_is_differentiable_wrt_input_gradcheck() -> None:
    torch.manual_seed(3)
    members = {k: _tiny_hyper_member().double() for k in ("Linf", "L2", "L1")}
    with torch.no_grad():
        members["L2"][3].weight.mul_(4.0)  # L2 is the confident member on most inputs
    ens = PSATEnsemble(members, input_shape=(1, 3, 3)).double()
    x = torch.rand(3, 1, 3, 3, dtype=torch.float64)
    ents = prediction_entropy(ens.member_logits(x)).detach()
    gaps = ents.sort(0).values
    assert (gaps[1] - gaps[0]).min() > 1e-4  # away from a switching surface, so finite differences are valid
    assert torch.autograd.gradcheck(lambda inp: ens(inp), (x.requires_grad_(),))
    # the gradient is the selected member's gradient
    _, idx = ens.forward_with_selection(x)
    g = torch.autograd.grad(ens(x)[0, 0], x)[0]
    sel = list(members.values())[idx[0].item()]
    g_ref = torch.autograd.grad(sel(x)[0, 0], x)[0]
    torch.testing.assert_close(g, g_ref)


def test_ensemble_errors() -> None:
    w = torch.randn(4, 3)
    with pytest.raises(TorchRobustError, match="at least one member"):
        PSATEnsemble({})
    with pytest.raises(TorchRobustError, match="unknown threat model 'L3'"):
        PSATEnsemble({"L3": _Fixed(w)})
    with pytest.raises(TorchRobustError, match="duplicate"):
        PSATEnsemble({"linf": _Fixed(w), "Linf": _Fixed(w)})
    with pytest.raises(TorchRobustError, match="differ in architecture"):
        PSATEnsemble({"Linf": _Fixed(w), "L2": nn.Sequential(nn.Flatten(), nn.Linear(4, 3))})
    with pytest.raises(TorchRobustError, match="different numbers of classes"):
        PSATEnsemble({"Linf": _Fixed(w), "L2": _Fixed(torch.randn(4, 5))}, input_shape=(4,),
                     check_architecture=False)
    with pytest.raises(TorchRobustError, match="unknown PSAT strategy"):
        PSATEnsemble({"Linf": _Fixed(w)}, strategy="vote")  # type: ignore[arg-type]
    lazy = PSATEnsemble({"Linf": _Fixed(w), "L2": _Fixed(torch.randn(4, 5))}, check_architecture=False)
    with pytest.raises(TorchRobustError, match="different output shapes"):
        lazy(torch.randn(2, 4))


def test_adaptive_attack_keeps_worst_candidate_per_example() -> None:
    # 2-class members on 2-D input; the aggregate picks the more confident one.
    w_a = torch.tensor([[4.0, -4.0], [0.0, 0.0]])  # "Linf": decides by x0
    w_b = torch.tensor([[0.0, 0.0], [-1.0, 1.0]])  # "L2": says class 1 by x1, less confident
    ens = PSATEnsemble({"Linf": _Fixed(w_a), "L2": _Fixed(w_b)})
    x = torch.tensor([[0.9, 0.9], [0.9, 0.1]])
    y = torch.zeros(2, dtype=torch.long)
    shifts = {id(ens): torch.tensor([0.0, 0.0]), id(ens.members["Linf"]): torch.tensor([-0.8, 0.0]),
              id(ens.members["L2"]): torch.tensor([0.0, -0.8])}

    def attack(model: nn.Module, xx: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
        return (xx + shifts[id(model)]).clamp(0, 1)

    x_adv, src = adaptive_attack(ens, attack, x, y, return_source=True)
    # clean: Linf is selected (confident) and right. The end-to-end candidate (source 0) changes nothing; the
    # Linf-member candidate makes Linf unsure, so on example 0 the aggregate switches to L2 and is fooled; on
    # example 1 nothing fools it and the Linf candidate has the highest aggregate loss.
    assert (ens(x).argmax(-1) == y).all() and ens.selected(x) == ["Linf", "Linf"]
    assert src.tolist() == [1, 1]
    assert (ens(x_adv).argmax(-1) != y).tolist() == [True, False]
    torch.testing.assert_close(x_adv, attack(ens.members["Linf"], x, y))


def test_routing_counts_where_the_gate_sends_clean_and_per_member_attacks() -> None:
    w_a = torch.tensor([[4.0, -4.0], [0.0, 0.0]])  # "Linf": confident, decides by x0
    w_b = torch.tensor([[0.0, 0.0], [-1.0, 1.0]])  # "L2": says class 1 by x1
    ens = PSATEnsemble({"Linf": _Fixed(w_a), "L2": _Fixed(w_b)})
    x = torch.tensor([[0.9, 0.9], [0.9, 0.1]])
    y = torch.zeros(2, dtype=torch.long)
    shift = {"Linf": torch.tensor([-0.8, 0.0]), "L2": torch.tensor([0.0, -0.8])}
    attacks = {k: (lambda m, xx, yy, d=d: (xx + d).clamp(0, 1)) for k, d in shift.items()}
    rows = psat.routing(ens, x, y, attacks)
    assert [r["input"] for r in rows] == ["clean", "Linf", "L2"]
    assert rows[0]["routed"] == {"Linf": 2, "L2": 0} and rows[0]["aggregate_acc"] == 1.0
    assert rows[0]["own_member_acc"] is None
    # after the Linf member's attack, H_Linf is unsure on both; example 0 goes to the (wrong, more confident) L2
    assert rows[1]["routed"] == {"Linf": 1, "L2": 1} and rows[1]["aggregate_acc"] == 0.5
    assert rows[1]["own_member_acc"] == 1.0
    assert rows[2]["routed"] == {"Linf": 2, "L2": 0} and rows[2]["aggregate_acc"] == 1.0
    md = psat.format_routing(rows).splitlines()
    assert md[0] == "| input | → Linf | → L2 | aggregate acc % | own member acc % |"
    assert md[3] == "| Linf PGD vs H_Linf | 1 | 1 | 50.0 | 100.0 |"
    with pytest.raises(TorchRobustError, match="strategy='entropy' only"):
        psat.routing(PSATEnsemble({"Linf": _Fixed(w_a), "L2": _Fixed(w_b)}, strategy="average"), x, y, attacks)


def test_routing_runs_every_input_through_the_engine_like_a_plain_batch_loop() -> None:
    torch.manual_seed(0)
    members = {k: nn.Sequential(nn.Flatten(), nn.Linear(12, 3)) for k in ("Linf", "L2")}
    ens = PSATEnsemble(members)
    x, y = torch.rand(10, 12), torch.randint(0, 3, (10,))
    attacks = {"Linf": tr_attacks.PGD(threat="Linf", eps=0.2, steps=3, seed=0),
               "L2": tr_attacks.PGD(threat="L2", eps=1.0, steps=3, seed=0)}
    rows = psat.routing(ens, x, y, attacks, batch_size=4)
    for row in rows[1:]:
        k = row["input"]
        xa = torch.cat([attacks[k](members[k], x[i:i + 4], y[i:i + 4]) for i in range(0, 10, 4)])
        _, idx = ens.forward_with_selection(xa)
        assert row["routed"] == {n: int((idx == j).sum()) for j, n in enumerate(ens.threats)}
        assert row["aggregate_acc"] == int((ens(xa).argmax(-1) == y).sum()) / 10
        assert row["own_member_acc"] == int((members[k](xa).argmax(-1) == y).sum()) / 10


# ----------------------------------------------------------------------------------------------------------
# adversaries


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def test_pgd_msd_worst_of_stay_in_their_balls_and_raise_loss() -> None:
    model = _small_cnn()
    x = torch.rand(8, 1, 8, 8)
    y = torch.randint(0, 10, (8,))
    eps = {"Linf": 0.1, "L2": 0.5, "L1": 2.0}
    cfgs = [PGDConfig(k, e, steps=5) for k, e in eps.items()]
    clean = F.cross_entropy(model(x), y, reduction="none")
    advs = {c.threat: pgd(model, x, y, c) for c in cfgs}
    for k, xa in advs.items():
        assert get_threat(k, eps[k]).contains(xa, x).all()
        assert (F.cross_entropy(model(xa), y, reduction="none") >= clean - 1e-6).all()
    xm = msd(model, x, y, cfgs)
    inside = torch.stack([get_threat(k, e).contains(xm, x) for k, e in eps.items()]).any(0)
    assert inside.all()  # every MSD example lies in (at least) one ball: the union threat model
    attacks = [lambda m, a, b, c=c: pgd(m, a, b, c) for c in cfgs]
    torch.manual_seed(5)
    xw = worst_of(model, x, y, attacks)
    torch.manual_seed(5)
    losses = torch.stack([F.cross_entropy(model(f(model, x, y)), y, reduction="none") for f in attacks])
    torch.testing.assert_close(F.cross_entropy(model(xw), y, reduction="none"), losses.max(0).values)


def test_training_adversary_strategies_and_errors() -> None:
    model = _small_cnn()
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
    eps = {"Linf": 0.1, "L2": 0.5, "L1": 2.0}
    steps = {"Linf": 2, "L2": 2, "L1": 2}
    assert len(TrainingAdversary("avg", eps=eps, steps=steps)(model, x, y)) == 3
    for s in ("max", "msd", "L1", "natural"):
        assert len(TrainingAdversary(s, eps=eps, steps=steps)(model, x, y)) == 1
    assert model.training  # mode restored
    with pytest.raises(TorchRobustError, match="unknown PSAT training strategy"):
        TrainingAdversary("union")
    with pytest.raises(TorchRobustError, match="no eps"):
        TrainingAdversary("max", eps={"Linf": 0.3})


# ----------------------------------------------------------------------------------------------------------
# training end to end


def test_tiny_psat_run_end_to_end(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.rand(8, 1, 28, 28)
    y = torch.randint(0, 10, (8,))
    kw = {"z_dim": 4, "unit": 16}
    steps = {"Linf": 1, "L2": 1, "L1": 1}
    paths = psat.train_members(tmp_path, (x, y), threats=["linf", "L2", "L1"], arch_kwargs=kw, steps=steps,
                               batch_size=4, max_batches=1)
    assert set(paths) == {"Linf", "L2", "L1"} and all(p.is_file() for p in paths.values())
    base = psat.train_baselines(tmp_path, (x, y), strategies=("max", "avg", "msd"), steps=steps, batch_size=4,
                                max_batches=1)
    assert set(base) == {"AT_max", "AT_avg", "AT_msd"}
    ens = psat.load_ensemble(tmp_path)
    assert ens.threats == ["Linf", "L2", "L1"] and not ens.training
    # the loaded member is the trained one: its saved weights round-trip
    m = psat.load_member(paths["L1"])
    assert isinstance(m.conv2, HyperConv2d) and m.conv2.grid == (4, 2)
    rows = psat.evaluate(tmp_path, (x, y), n_test=4, steps={"Linf": 1, "L2": 1, "L1": 1}, restarts=1,
                         strategies=("entropy", "average"))
    names = [r.name for r in rows]
    assert names == ["H_Linf", "H_L2", "H_L1", "PSAT (entropy)", "PSAT (average)", "AT_avg", "AT_max", "AT_msd"]
    for r in rows:
        assert r.n == 4 and r.union <= min(r.per_norm.values()) + 1e-9 and r.union <= r.clean
    psat_row = rows[3]
    assert psat_row.params == 3 * rows[0].params and psat_row.saving is not None and psat_row.saving < 0
    written = psat.write_tables(rows, tmp_path)
    assert all(p.is_file() for p in written.values())
    with pytest.raises(TorchRobustError, match="unknown AutoAttack sub-attack"):
        psat.evaluate(tmp_path, (x, y), n_test=4, autoattack=["apgd-xx"])
    with pytest.raises(TorchRobustError, match="no PSAT member"):
        psat.evaluate(_empty_dir(tmp_path), (x, y))
    with pytest.raises(TorchRobustError, match="no threat models"):
        psat.train_members(tmp_path, (x, y), threats=[])


def test_evaluate_with_autoattack_reports_worst_case_over_pgd_and_autoattack(tmp_path: Path) -> None:
    pytest.importorskip("pyautoattack")
    torch.manual_seed(0)
    x = torch.rand(6, 1, 28, 28)
    y = torch.randint(0, 10, (6,))
    steps = {"Linf": 1, "L2": 1, "L1": 1}
    psat.train_members(tmp_path, (x, y), threats=["Linf", "L2"], arch_kwargs={"z_dim": 4, "unit": 16}, steps=steps,
                       batch_size=6, max_batches=1)
    eps = {"Linf": 0.05, "L2": 0.5, "L1": 2.0}
    rows = psat.evaluate(tmp_path, (x, y), n_test=6, eps=eps, steps=steps, restarts=1, members=False,
                         baselines=[], autoattack=["apgd-ce"])
    assert [r.name for r in rows] == ["PSAT (entropy)"]
    r = rows[0]
    assert set(r.extra) == {f"{k}/{a}" for k in ("Linf", "L2", "L1") for a in ("pgd", "autoattack")}
    for k in ("Linf", "L2", "L1"):  # the worst case is no better than either attack alone
        assert r.per_norm[k] <= min(r.extra[f"{k}/pgd"], r.extra[f"{k}/autoattack"]) + 1e-9
        assert r.per_norm[k] <= r.clean
    written = psat.write_tables(rows, tmp_path)
    md = written["attacks_md"].read_text().splitlines()
    assert md[0] == ("| Method | ℓ∞ pgd | ℓ∞ autoattack | ℓ∞ worst | ℓ2 pgd | ℓ2 autoattack | ℓ2 worst | ℓ1 pgd | "
                     "ℓ1 autoattack | ℓ1 worst |")
    assert md[2].startswith("| PSAT (entropy) | ") and md[2].count("|") == 11
    assert format_attack_breakdown([MultiNormRow("x", 1.0, {"Linf": 1, "L2": 1, "L1": 1}, 1, 1, 1)]) == ""


def _empty_dir(root: Path) -> Path:
    d = root / "empty"
    d.mkdir()
    return d


def test_training_lowers_the_adversarial_loss() -> None:
    torch.manual_seed(0)
    x = torch.rand(40, 1, 28, 28)
    y = (x.flatten(1)[:, :392].mean(1) > x.flatten(1)[:, 392:].mean(1)).long()  # learnable labels
    model = create("hyper_msd_cnn", z_dim=4, unit=16)
    adv = TrainingAdversary("Linf", eps={"Linf": 0.02}, steps={"Linf": 1})
    hist = psat.train_model(model, (x, y), adv, psat.PSATTrainConfig(epochs=4, batch_size=20, schedule="none"))
    assert len(hist) == 4 and hist[-1]["loss"] < hist[0]["loss"]


# ----------------------------------------------------------------------------------------------------------
# metrics


def test_trade_off_reproduces_paper_row() -> None:
    assert trade_off(82.28, 40.33, 60.28, 68.13, 40.78, 56.32) == pytest.approx(58.02, abs=0.005)
    assert trade_off(79.08, 42.01, 60.89, 53.48, 42.22, 52.11) == pytest.approx(54.97, abs=0.005)


class _Scaled(nn.Module):
    """Logits = 10·x (one class per input coordinate): outputs crafted directly by the input."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) * 10 + self.p


def test_max_is_loss_selected_and_union_is_strict() -> None:
    x = torch.tensor([[0.6, 0.4], [0.6, 0.4], [0.6, 0.4]])
    y = torch.zeros(3, dtype=torch.long)
    # rows = examples. Ex 0: nothing fools, L1 has the highest loss; ex 1: only L2 fools; ex 2: only Linf fools.
    cands = {
        "Linf": torch.tensor([[0.55, 0.45], [0.60, 0.40], [0.45, 0.55]]),
        "L2": torch.tensor([[0.52, 0.48], [0.40, 0.60], [0.60, 0.40]]),
        "L1": torch.tensor([[0.51, 0.49], [0.58, 0.42], [0.58, 0.42]]),
    }
    attacks = {k: (lambda m, a, b, c=c: c[: len(a)]) for k, c in cands.items()}
    row = evaluate_multi_norm("toy", _Scaled(), x, y, attacks, eps={"Linf": 0.2, "L2": 0.3, "L1": 0.3})
    assert row.clean == 1.0
    assert row.per_norm == {"Linf": pytest.approx(2 / 3), "L2": pytest.approx(2 / 3), "L1": 1.0}
    # ex 0: highest loss is L1 (0.51 vs 0.49), correct; ex 1: L2 fooled; ex 2: Linf fooled
    assert row.max_loss == pytest.approx(1 / 3)
    assert row.union == pytest.approx(1 / 3)
    assert row.avg == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    with pytest.raises(TorchRobustError, match="outside the eps"):
        evaluate_multi_norm("toy", _Scaled(), x, y, attacks, eps={"Linf": 0.01, "L2": 0.3, "L1": 0.3})
    with pytest.raises(TorchRobustError, match="needs an attack"):
        evaluate_multi_norm("toy", _Scaled(), x, y, {"Linf": attacks["Linf"]}, eps={"Linf": 0.2})


def test_several_attacks_per_norm_keep_the_per_example_worst_and_report_each() -> None:
    x = torch.tensor([[0.6, 0.4], [0.6, 0.4], [0.6, 0.4]])
    y = torch.zeros(3, dtype=torch.long)
    # attack "a" fools example 0 only, "b" fools example 1 only; nothing fools example 2 ("b" has more loss there)
    a = torch.tensor([[0.45, 0.55], [0.59, 0.41], [0.58, 0.42]])
    b = torch.tensor([[0.59, 0.41], [0.45, 0.55], [0.52, 0.48]])
    same = torch.tensor([[0.6, 0.4]] * 3)
    attacks = {"Linf": {"a": lambda m, u, v: a, "b": lambda m, u, v: b},
               "L2": lambda m, u, v: same, "L1": lambda m, u, v: same}
    row = evaluate_multi_norm("toy", _Scaled(), x, y, attacks, eps={"Linf": 0.2, "L2": 0.3, "L1": 0.3})
    assert row.per_norm["Linf"] == pytest.approx(1 / 3)  # worst case over a and b: only example 2 survives
    assert row.extra == {"Linf/a": pytest.approx(2 / 3), "Linf/b": pytest.approx(2 / 3)}
    assert row.union == pytest.approx(1 / 3) and row.per_norm["L2"] == 1.0
    with pytest.raises(TorchRobustError, match="attack 'a' returned 1 example"):
        evaluate_multi_norm("toy", _Scaled(), x, y, attacks, eps={"Linf": 0.1, "L2": 0.3, "L1": 0.3})
    with pytest.raises(TorchRobustError, match="no attack given for Linf"):
        evaluate_multi_norm("toy", _Scaled(), x, y, {**attacks, "Linf": {}}, eps={"Linf": 0.2, "L2": 0.3, "L1": 0.3})


def test_cascade_runs_later_attacks_only_on_survivors_with_the_same_worst_case() -> None:
    x = torch.tensor([[0.6, 0.4], [0.6, 0.4], [0.6, 0.4]])
    y = torch.zeros(3, dtype=torch.long)
    a = torch.tensor([[0.45, 0.55], [0.59, 0.41], [0.58, 0.42]])  # fools example 0
    b = torch.tensor([[0.59, 0.41], [0.45, 0.55], [0.52, 0.48]])  # fools example 1
    seen: list[int] = []

    def attack_b(m: nn.Module, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        seen.append(len(u))
        return b[[1, 2]] if len(u) == 2 else b

    same = torch.tensor([[0.6, 0.4]] * 3)
    attacks = {"Linf": {"a": lambda m, u, v: a, "b": attack_b},
               "L2": lambda m, u, v: same, "L1": lambda m, u, v: same}
    eps = {"Linf": 0.2, "L2": 0.3, "L1": 0.3}
    full = evaluate_multi_norm("toy", _Scaled(), x, y, attacks, eps=eps)
    cas = evaluate_multi_norm("toy", _Scaled(), x, y, attacks, eps=eps, cascade=True)
    assert seen == [3, 2]  # without cascade b sees all three examples, with it the two that a did not fool
    assert cas.per_norm == full.per_norm and cas.per_norm["Linf"] == pytest.approx(1 / 3)
    assert cas.extra == {"Linf/a": pytest.approx(2 / 3), "Linf/b": pytest.approx(1 / 3)}  # cumulative


def test_strongest_prefers_a_fooling_candidate_over_a_higher_loss_one() -> None:
    w = torch.tensor([[10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]])
    model = _Fixed(w)
    x = torch.tensor([[1.0, 0.0, 0.0]])
    y = torch.zeros(1, dtype=torch.long)
    fools = torch.tensor([[0.40, 0.41, 0.0]])  # argmax 1: fooled, cross-entropy 0.75
    lossy = torch.tensor([[0.36, 0.35, 0.35]])  # still correct, but cross-entropy 1.03
    best, src = strongest(model, x, y, [lossy, fools])
    assert src.tolist() == [1] and torch.equal(best, fools)
    best, src = strongest(model, x, y, [x.clone()])
    assert src.tolist() == [0] and torch.equal(best, x)


def test_max_loss_can_exceed_per_norm_minimum() -> None:
    # PSAT Table 1 prints Acc^max > min(per-norm): possible when the highest-loss example is still correct.
    x = torch.tensor([[0.5, 0.25, 0.25]])
    y = torch.zeros(1, dtype=torch.long)
    # Linf: fooled with low loss (class 1 barely wins); L2: correct but very high loss (class 0 barely wins
    # over two strong rivals)
    cands = {"Linf": torch.tensor([[0.40, 0.41, 0.19]]), "L2": torch.tensor([[0.36, 0.35, 0.35]]),
             "L1": torch.tensor([[0.5, 0.25, 0.25]])}
    for k in cands:
        assert get_threat(k, 1.0).contains(cands[k], x).all()
    attacks = {k: (lambda m, a, b, c=c: c) for k, c in cands.items()}
    row = evaluate_multi_norm("toy", _Scaled(), x, y, attacks, eps={"Linf": 1.0, "L2": 1.0, "L1": 1.0})
    assert row.per_norm["Linf"] == 0.0 and row.max_loss == 1.0 and row.union == 0.0


def test_format_table_markdown_csv_latex() -> None:
    rows = [MultiNormRow("PSAT", 0.8228, {"Linf": 0.4033, "L2": 0.6028, "L1": 0.6813}, 0.4078, 0.35, 1000,
                         4_874_142, 0.793), MultiNormRow("AT_max", 0.9, {"Linf": 0.5, "L2": 0.5, "L1": 0.5}, 0.5,
                                                         0.4, 1000, 3_274_634, -0.1)]
    md = format_table(rows)
    assert md.splitlines()[0].startswith("| Method | Clean | ℓ∞") and "| PSAT | 82.28 | 40.33" in md
    # avg = mean of the three norms (56.25; the paper prints 56.32), so the trade-off is 58.01 rather than 58.02
    assert "| 56.25 | 58.01 | 4.874M" in md and "4.874M" in md and "↓79.30%" in md and "↑10.00%" in md
    parsed = list(csv.DictReader(io.StringIO(format_table(rows, "csv"))))
    assert parsed[0]["trade_off"] == "58.01" and parsed[1]["params"] == "3274634"
    tex = format_table(rows, "latex")
    assert tex.startswith(r"\begin{tabular}") and r"AT\_max" in tex and r"$\downarrow$79.30\%" in tex
    with pytest.raises(TorchRobustError, match="unknown table format"):
        format_table(rows, "html")


def test_strategies_are_str_enums_and_threat_aliases_come_from_threat_name() -> None:
    from torchrobust.psat.aggregate import canonical_threat

    members = {k: _Fixed(torch.randn(4, 3)) for k in ("linf", "l_2", "1")}  # aliases of ThreatName
    ens = PSATEnsemble(members, strategy=psat.Aggregation.AVERAGE, input_shape=(4,))
    assert ens.threats == ["Linf", "L2", "L1"] and ens.strategy == "average" and type(ens.strategy) is str
    x = torch.randn(5, 4)
    torch.testing.assert_close(ens(x), PSATEnsemble(members, strategy="average", input_shape=(4,))(x))
    assert [canonical_threat(n) for n in ("inf", "L_INF", "clean", "nat")] == ["Linf", "Linf", "natural", "natural"]
    with pytest.raises(TorchRobustError, match="unknown threat model 'L3'"):
        canonical_threat("L3")
    assert psat.STRATEGIES == ("Linf", "L2", "L1", "natural", "max", "avg", "msd", "eat", "ramp")
    assert psat.MultiNormStrategy("msd") is psat.MultiNormStrategy.MSD


def test_train_config_takes_the_train_enums_or_their_strings() -> None:
    from torchrobust.train import OptimizerName, ScheduleName

    cfg = psat.PSATTrainConfig(optimizer=OptimizerName.SGD, schedule=ScheduleName.COSINE).validate()
    assert (cfg.optimizer, cfg.schedule) == ("sgd", "cosine") and type(cfg.optimizer) is str  # metadata unchanged
    assert psat.PSATTrainConfig(optimizer="adam", schedule="none").validate().schedule == "none"
    with pytest.raises(TorchRobustError, match="unknown optimizer 'rmsprop'; valid: adam, sgd"):
        psat.PSATTrainConfig(optimizer="rmsprop").validate()
    with pytest.raises(TorchRobustError, match="unknown schedule 'step'; valid: cosine, none, triangular"):
        psat.PSATTrainConfig(schedule=ScheduleName.STEP).validate()  # needs milestones PSAT training has not
