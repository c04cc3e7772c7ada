"""Gradient-masking checks: each fires on a purpose-built model and stays silent on a plain trained one."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from torchrobust.attacks import FGSM, PGD
from torchrobust.errors import TorchRobustError
from torchrobust.evaluate.checks import (
    FLAG_CODES,
    Flag,
    check_base_broken,
    check_blackbox_vs_whitebox,
    check_bpda_evaluated,
    check_bpda_surrogates,
    check_bpda_vs_whitebox,
    check_budget,
    check_convergence,
    check_eval_mode,
    check_finite,
    check_gradients,
    check_input_contract,
    check_input_range,
    check_iterative_vs_single_step,
    check_large_eps,
    check_logits,
    check_monotone_in_eps,
    check_noise_vs_whitebox,
    check_randomness,
    check_transfer_vs_whitebox,
    find_zero_gradient_modules,
    is_reliable,
    run_checks,
)

NUM_CLASSES = 3
SHAPE = (1, 6, 6)
EPS = 0.1


# ---------------------------------------------------------------------------------------------- fixtures
def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes of 6×6 images in [0, 1]: a left, middle or right band of random brightness, plus noise.

    The random brightness spreads the margins, so a moderate PGD converges on every example (no example sits
    in a near-tie where restarts keep changing the answer) and the plain model's evaluation is reliable.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    x = 0.3 + 0.1 * torch.randn(n, *SHAPE, generator=g)
    amp = 0.15 + 0.4 * torch.rand(n, generator=g)
    for c in range(NUM_CLASSES):
        m = y == c
        x[m, :, :, 2 * c:2 * c + 2] += amp[m].view(-1, 1, 1, 1)
    return x.clamp(0, 1), y


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 150) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, NUM_CLASSES))


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return _blobs(64, seed=1)


@pytest.fixture(scope="module")
def plain(data: tuple[torch.Tensor, torch.Tensor]) -> nn.Module:
    torch.manual_seed(0)
    x, y = _blobs(512, seed=0)
    return _train(_mlp(), x, y)


class Quantize(nn.Module):
    """Rounds the input to multiples of 1/4: zero gradient almost everywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 4) / 4


class StraightThroughQuantize(Quantize):
    """The same forward value; identity backward when ``straight_through`` (BPDA, Athalye et al. 2018)."""

    bpda_surrogate = "identity"

    def __init__(self) -> None:
        super().__init__()
        self.straight_through = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = super().forward(x)
        return x + (q - x).detach() if self.straight_through else q


class HardThreshold(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x > 0.5).to(x.dtype)


class Threshold(nn.Module):
    """``x · (|x| > t)`` (Eq. 9 of the data-driven Lipschitz paper) without a declared surrogate."""

    def __init__(self, t: float) -> None:
        super().__init__()
        self.t = t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (x.abs() > self.t)


class NoisyLogits(nn.Module):
    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        return out + 0.5 * torch.randn_like(out)


@pytest.fixture(scope="module")
def quantized(plain: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    x, y = _blobs(512, seed=0)
    return _train(nn.Sequential(Quantize(), _mlp()), x, y)


def _random_search(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, draws: int,
                   seed: int) -> torch.Tensor:
    """Black-box baseline: per example, the first of ``draws`` random L∞ corners that is misclassified."""
    g = torch.Generator().manual_seed(seed)
    x_adv = x.clone()
    found = torch.zeros(len(x), dtype=torch.bool)
    with torch.no_grad():
        for _ in range(draws):
            cand = (x + eps * (2 * torch.randint(0, 2, x.shape, generator=g) - 1)).clamp(0, 1)
            wrong = (model(cand).argmax(1) != y) & ~found
            x_adv[wrong] = cand[wrong]
            found |= wrong
    return x_adv


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y


# ---------------------------------------------------------------------------------------------- the Flag type
def test_flag_codes_are_documented_and_validated() -> None:
    from pathlib import Path

    import torchrobust.evaluate.checks as checks

    doc = (Path(checks.__file__).parent / "flags.md").read_text()
    for code in FLAG_CODES:
        anchor = code.lower().replace("_", "-")
        assert f"## {anchor}\n" in doc, code
        assert f"`{code}`" in doc
    with pytest.raises(TorchRobustError):
        Flag("NOT_A_CODE", "warning", "m", "a")
    f = Flag("ZERO_GRADIENTS", "warning", "m", "a", {"k": 1})
    assert f.to_dict()["doc"].endswith("flags.md#zero-gradients")
    assert is_reliable([None, None]) and not is_reliable([None, f]) and is_reliable([])


# ---------------------------------------------------------------------------------------------- silent on a plain model
def test_plain_model_raises_no_flag(plain: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    clean = _correct(plain, x, y)
    assert clean.float().mean() > 0.9
    pgd = PGD("Linf", eps=EPS, steps=20, seed=0)
    x_pgd = pgd(plain, x, y)
    x_fgsm = FGSM("Linf", eps=EPS)(plain, x, y)
    x_rs = _random_search(plain, x, y, EPS, draws=50, seed=0)
    pgd_c, fgsm_c, rs_c = (clean & _correct(plain, xa, y) for xa in (x_pgd, x_fgsm, x_rs))
    eps_grid = [0.0, 0.05, 0.1, 0.15, 0.3]
    sweep_acc = [float((clean & _correct(plain, PGD("Linf", eps=e, steps=20, seed=0)(plain, x, y), y)).float().mean())
                 if e > 0 else float(clean.float().mean()) for e in eps_grid]
    large = float(_correct(plain, PGD("Linf", eps=1.0, steps=20, seed=0)(plain, x, y), y).float().mean())
    acc = float(pgd_c.float().mean())
    acc_more = float((clean & _correct(plain, PGD("Linf", eps=EPS, steps=40, restarts=2, seed=1)(plain, x, y), y))
                     .float().mean())
    flags = run_checks({
        "model": plain, "x": x, "y": y, "threat": "Linf", "eps": EPS, "x_adv": {"pgd": x_pgd, "fgsm": x_fgsm},
        "correct": {"pgd": pgd_c, "fgsm": fgsm_c, "random_search": rs_c},
        "sweep": {"eps": eps_grid, "accuracy": sweep_acc},
        "large_eps": {"eps": 1.0, "accuracy": large},
        "convergence": {"accuracy": acc, "accuracy_more": acc_more},
        "base_accuracy": float((clean & _correct(plain, PGD("Linf", eps=0.3, steps=20, seed=0)(plain, x, y), y))
                               .float().mean()),
        "bpda_evaluated": False,
    })
    assert flags == [], [str(f) for f in flags]
    assert 0.0 < acc < float(clean.float().mean())  # the evaluation is not vacuous


def test_checks_do_not_change_the_model(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).train()
    before = copy.deepcopy(model.state_dict())
    check_randomness(model, x)
    check_gradients(model, x, y)
    find_zero_gradient_modules(model, x)
    check_input_contract(model, x)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and all(m.training for m in model.modules())  # modes untouched


# ---------------------------------------------------------------------------------------------- 1. input contract
def test_input_contract_flags_range_train_mode_and_softmax(plain: nn.Module, data) -> None:
    x, _ = data
    assert check_input_contract(plain, x) == []
    codes = {f.code for f in check_input_contract(plain, x * 2 - 0.5)}
    assert codes == {"INPUT_RANGE"}
    train_model = copy.deepcopy(plain).train()
    assert [f.code for f in check_input_contract(train_model, x)] == ["TRAIN_MODE"]
    soft = nn.Sequential(copy.deepcopy(plain), nn.Softmax(dim=1)).eval()
    assert [f.code for f in check_input_contract(soft, x)] == ["PROBABILITY_OUTPUT"]
    # Log-probabilities are logits up to a per-row shift: not flagged.
    logsoft = nn.Sequential(copy.deepcopy(plain), nn.LogSoftmax(dim=1)).eval()
    assert check_input_contract(logsoft, x) == []
    bad = x.clone()
    bad[0, 0, 0, 0] = math.nan
    assert check_input_contract(None, bad)[0].code == "INPUT_RANGE"
    assert check_input_contract(plain, bad)[0].details["finite"] is False  # no forward pass on NaN input
    # The three parts on their own.
    assert check_input_range(x) is None and check_input_range(x + 0.5).details["max"] > 1
    assert check_eval_mode(plain) is None and check_eval_mode(train_model).details["count"] == len(
        list(train_model.modules()))
    assert check_logits(torch.randn(4, 3)) is None
    assert check_logits(torch.randn(4, 3).softmax(1)).code == "PROBABILITY_OUTPUT"
    assert check_logits(torch.tensor([[0.2, 0.8], [1.0, 0.0]])).code == "PROBABILITY_OUTPUT"
    assert check_logits(torch.tensor([[0.2, 0.8], [0.5, 0.6]])) is None  # one row that does not sum to 1


# ---------------------------------------------------------------------------------------------- 2. randomness
def test_randomness_flagged_on_noisy_model_only(plain: nn.Module, data) -> None:
    x, _ = data
    assert check_randomness(plain, x) is None
    flag = check_randomness(NoisyLogits(plain).eval(), x)
    assert flag is not None and flag.code == "RANDOMIZED_OUTPUT"
    # Dropout left in training mode: probed in eval mode like every evaluation forward and attack (deterministic);
    # the mode is reported by TRAIN_MODE instead, and left as it was.
    dropout = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(36, 3)).train()
    assert check_randomness(dropout, x) is None and dropout.training
    assert [f.code for f in check_input_contract(dropout, x)] == ["TRAIN_MODE"]


# ---------------------------------------------------------------------------------------------- 3. gradients
def test_gradients_flag_hard_threshold_and_quantiser(plain: nn.Module, quantized: nn.Module, data) -> None:
    x, y = data
    assert check_gradients(plain, x, y) is None
    assert check_gradients(plain, x, y, loss="ce") is None
    hard = nn.Sequential(HardThreshold(), _mlp()).eval()
    flag = check_gradients(hard, x, y)
    assert flag is not None and flag.code == "ZERO_GRADIENTS" and flag.details["available"] is False
    flag = check_gradients(quantized, x, y)
    assert flag is not None and flag.code == "ZERO_GRADIENTS"
    assert flag.details["examples_zero"] == len(x) and flag.details["zero_fraction"] == 1.0


def test_gradients_flag_nan() -> None:
    class NaNGrad(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = x.flatten(1)
            return torch.stack([torch.sqrt(z[:, 0] - z[:, 0]), z[:, 1]], 1)  # d sqrt(0) = inf -> nan

    x = torch.rand(4, 1, 2, 2)
    flag = check_gradients(NaNGrad(), x, torch.zeros(4, dtype=torch.long))
    assert flag is not None and flag.code == "NONFINITE_GRADIENTS" and flag.severity == "error"


# ---------------------------------------------------------------------------------------------- 5. budget
def test_budget(plain: nn.Module, data) -> None:
    x, y = data
    delta = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    x_adv = (x + 0.5 * delta / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).clamp(0, 1)  # clamping shrinks δ
    assert check_budget(x, x_adv, "L2", 0.5) is None
    assert check_budget(x, PGD("Linf", eps=0.1, steps=5, seed=0)(plain, x, y), "Linf", 0.1) is None
    assert check_budget(x, x_adv, "Linf", 0.01).code == "BUDGET_VIOLATION"
    outside = x.clone()
    outside[3] += 0.2  # L∞ 0.2 > 0.1 and probably outside [0, 1]
    outside[5, 0, 0, 0] = math.nan
    flag = check_budget(x, outside, "Linf", 0.1)
    assert flag.severity == "error" and flag.details["violations"] == 2 and flag.details["nonfinite"] == 1
    box = x.clone()
    box[0, 0, 0, 0] = 1.0 + 1e-3  # inside a huge ball, outside the box
    flag = check_budget(x, box, "Linf", 2.0)
    assert flag is not None and flag.details["outside_box"] == 1 and flag.details["outside_ball"] == 0
    on_sphere = x.clone()
    on_sphere[:, 0, 0, 0] = torch.where(x[:, 0, 0, 0] > 0.5, x[:, 0, 0, 0] - 0.1, x[:, 0, 0, 0] + 0.1)
    assert check_budget(x, on_sphere, "Linf", 0.1) is None  # exactly on the boundary is inside


# ---------------------------------------------------------------------------------------------- 6, 9-11. comparisons
def test_comparisons_on_constructed_per_example_results() -> None:
    strong = torch.tensor([True, True, False, True, False])
    same = strong.clone()
    weaker_wins = torch.tensor([True, False, False, True, False])  # example 1: only the weak attack succeeded
    assert check_iterative_vs_single_step(strong, same) is None
    assert check_iterative_vs_single_step(strong, ~torch.zeros(5, dtype=torch.bool)) is None  # FGSM found nothing
    flag = check_iterative_vs_single_step(strong, weaker_wins)
    assert flag.code == "SINGLE_STEP_STRONGER" and flag.details["examples"] == [1]
    assert flag.details["worst_case_accuracy"] == pytest.approx(0.4)
    for fn, code in ((check_blackbox_vs_whitebox, "BLACKBOX_STRONGER"),
                     (check_transfer_vs_whitebox, "TRANSFER_STRONGER"), (check_noise_vs_whitebox, "NOISE_STRONGER"),
                     (check_bpda_vs_whitebox, "BPDA_STRONGER")):
        assert fn(strong, same) is None
        assert fn(strong, weaker_wins).code == code
        assert fn(strong.tolist(), weaker_wins.int().tolist()).code == code  # lists and 0/1 accepted
        assert fn(strong, weaker_wins, tolerance=0.25) is None  # 1 of 5 = 20% <= 25%
    with pytest.raises(TorchRobustError):
        check_blackbox_vs_whitebox(strong, strong[:3])


def test_bpda_attacks_are_compared_with_the_exact_gradient_whitebox() -> None:
    """Attacks named bpda-* (or given the role "bpda") are not part of the white-box reference: a point only BPDA
    broke raises BPDA_STRONGER; BPDA that finds nothing new raises nothing."""
    white = torch.tensor([True, True, False, True])
    bpda_wins = torch.tensor([False, True, False, True])
    flags = run_checks({"correct": {"apgd-ce": white, "bpda-pgd-ce": bpda_wins}})
    assert [f.code for f in flags] == ["BPDA_STRONGER"] and flags[0].details["examples"] == [0]
    assert run_checks({"correct": {"apgd-ce": white, "surrogate": bpda_wins}, "roles": {"surrogate": "bpda"}})
    assert run_checks({"correct": {"apgd-ce": white, "bpda-pgd-ce": white | bpda_wins}}) == []
    # declared white-box, the BPDA attack is part of the reference and nothing is compared
    declared = {"correct": {"apgd-ce": white, "bpda-pgd-ce": bpda_wins}, "roles": {"bpda-pgd-ce": "whitebox"}}
    assert run_checks(declared) == []


def test_quantised_model_blackbox_and_transfer_beat_whitebox(plain: nn.Module, quantized: nn.Module, data) -> None:
    x, y = data
    clean = _correct(quantized, x, y)
    assert clean.float().mean() > 0.8
    pgd = PGD("Linf", eps=EPS, steps=20, random_start=False)
    wb = clean & _correct(quantized, pgd(quantized, x, y), y)
    bb = clean & _correct(quantized, _random_search(quantized, x, y, EPS, draws=100, seed=0), y)
    base = quantized[1]  # the same weights without the quantising defence
    tr = clean & _correct(quantized, pgd(base, x, y), y)
    # Zero gradients: PGD without random start cannot move at all.
    assert torch.equal(wb, clean)
    assert check_blackbox_vs_whitebox(wb, bb).code == "BLACKBOX_STRONGER"
    assert check_transfer_vs_whitebox(wb, tr).code == "TRANSFER_STRONGER"
    flags = run_checks({"model": quantized, "x": x, "y": y, "correct": {"pgd": wb, "random_search": bb,
                                                                         "transfer_base": tr}})
    codes = {f.code for f in flags}
    assert {"ZERO_GRADIENTS", "BLACKBOX_STRONGER", "TRANSFER_STRONGER", "MISSING_BPDA_SURROGATE"} <= codes
    assert not is_reliable(flags)


# ---------------------------------------------------------------------------------------------- 7, 8, 14. numbers
def test_monotone_large_eps_convergence_base() -> None:
    assert check_monotone_in_eps([0, 0.1, 0.2], [0.9, 0.5, 0.1]) is None
    assert check_monotone_in_eps([0, 0.1, 0.2], [0.9, 0.5, 0.5]) is None  # flat is fine
    flag = check_monotone_in_eps([0.2, 0, 0.1, 0.3], [0.6, 0.9, 0.5, 0.4], name="pgd")
    assert flag.code == "NON_MONOTONE_EPS"
    assert flag.details["rises"][0]["eps"] == 0.2 and flag.details["rises"][0]["at_eps"] == 0.1
    assert check_monotone_in_eps([0, 0.1, 0.2], [0.9, 0.5, 0.51], tolerance=0.02) is None
    assert check_large_eps(0.0, 10) is None and check_large_eps(0.1, 10) is None
    assert check_large_eps(0.2, 10, eps=1.0).code == "LARGE_EPS_ABOVE_CHANCE"
    assert check_convergence(0.400, 0.396) is None
    assert check_convergence(0.40, 0.38).code == "NOT_CONVERGED"
    assert check_base_broken(0.01, 10) is None
    assert check_base_broken(0.6, 10).code == "BASE_NOT_BROKEN"
    assert check_base_broken(0.6, expected=0.6) is None  # an adversarially trained base at its known accuracy
    with pytest.raises(TorchRobustError):
        check_convergence(45.0, 44.0)  # percentages, not fractions
    with pytest.raises(TorchRobustError):
        check_monotone_in_eps([0, 0.1], [0.9])


# ---------------------------------------------------------------------------------------------- 13. BPDA
def test_zero_gradient_modules_are_found_and_surrogates_respected(data, caplog) -> None:
    caplog.set_level("INFO", logger="torchrobust.evaluate.checks")
    x, _ = data
    torch.manual_seed(0)
    thr = nn.Sequential(nn.Flatten(), nn.Linear(36, 32), nn.ReLU(), Threshold(0.05), nn.Linear(32, 3)).eval()
    found = find_zero_gradient_modules(thr, x)
    assert [(z.name, z.reason) for z in found] == [("3", "jump")]
    assert check_bpda_surrogates(thr, x).details["modules"][0]["type"] == "Threshold"
    # In-place modules are probed on their true input (recorded before the forward pass).
    inplace = nn.Sequential(nn.Flatten(), nn.Linear(36, 32), nn.ReLU(inplace=True), Threshold(0.05),
                            nn.Linear(32, 3)).eval()
    assert [(z.name, z.reason) for z in find_zero_gradient_modules(inplace, x)] == [("3", "jump")]
    # A plain ReLU network, a conv net with BatchNorm and pooling, and smooth activations are continuous.
    for model in (
        nn.Sequential(nn.Flatten(), nn.Linear(36, 32), nn.ReLU(), nn.Linear(32, 3)),
        nn.Sequential(nn.Flatten(), nn.Linear(36, 32), nn.ReLU(inplace=True), nn.Linear(32, 3)),
        nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(4, 4, 3, padding=1), nn.Hardtanh(0, 0.2), nn.Flatten(), nn.Linear(36, 3)),
        nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.GELU(), nn.LayerNorm(16), nn.Linear(16, 3), nn.Softmax(1)),
    ):
        assert find_zero_gradient_modules(model.eval(), x) == [], model
    assert "not probed" not in caplog.text  # every module above, in-place ones included, was really probed
    quant = nn.Sequential(Quantize(), _mlp()).eval()
    assert [(z.name, z.reason) for z in find_zero_gradient_modules(quant, x)] == [("0", "zero-derivative op")]
    assert [(z.name, z.reason) for z in find_zero_gradient_modules(nn.Sequential(HardThreshold(), _mlp()), x)] == [
        ("0", "cut")]
    st = nn.Sequential(StraightThroughQuantize(), _mlp()).eval()
    found = find_zero_gradient_modules(st, x)
    assert [(z.name, z.declares_surrogate) for z in found] == [("0", True)]
    assert check_bpda_surrogates(st, x) is None
    st[0].straight_through = True  # the hand-made straight-through forward is still a jump, and still declared
    assert [(z.reason, z.declares_surrogate) for z in find_zero_gradient_modules(st, x)] == [("jump", True)]
    assert check_bpda_evaluated(st, bpda_evaluated=False).code == "BPDA_NOT_EVALUATED"
    assert check_bpda_evaluated(st, bpda_evaluated=True) is None
    assert check_bpda_evaluated(quant, bpda_evaluated=False) is None


def test_forged_threshold_is_detected_and_covered_by_its_surrogate(data) -> None:
    from torchrobust.nn.forged import Forged

    x, _ = data
    torch.manual_seed(0)
    layer = Forged(c_r=2**-7)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 32), nn.ReLU(), layer, nn.Linear(32, 3)).eval()
    layer.track()
    with torch.no_grad():
        model(torch.rand(256, *SHAPE))  # calibration: b = max |x| (Algorithm 1, tracking mode)
    layer.freeze()
    assert float(layer.b) > 0
    found = find_zero_gradient_modules(model, x)
    assert [(z.name, z.reason, z.declares_surrogate) for z in found] == [("3", "jump", True)]
    assert check_bpda_surrogates(model, x) is None
    assert check_bpda_evaluated(model, bpda_evaluated=False).code == "BPDA_NOT_EVALUATED"


# ---------------------------------------------------------------------------------------------- aggregator
def test_run_checks_on_a_sweep_result_like_object() -> None:
    class Sweep:  # the fields of torchrobust.evaluate.SweepResult that run_checks reads
        threat = "Linf"
        eps = [0.0, 0.1, 0.2]
        clean = torch.tensor([True, True, True, False])
        robust = {
            "fgsm": torch.tensor([[1, 1, 1, 0], [1, 0, 1, 0], [0, 0, 1, 0]], dtype=torch.bool),
            "pgd": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool),
        }

        @property
        def worst(self) -> torch.Tensor:
            return self.robust["fgsm"] & self.robust["pgd"]

    flags = run_checks(Sweep())
    assert [f.code for f in flags] == ["SINGLE_STEP_STRONGER", "SINGLE_STEP_STRONGER"]
    # Accuracies rise from ε=0.1 to 0.2 (FGSM 0.25 -> 0.75, PGD 0 -> 0.5); PGD is at least as strong per example.
    Sweep.robust["fgsm"] = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 0], [1, 1, 1, 0]], dtype=torch.bool)
    Sweep.robust["pgd"] = Sweep.robust["fgsm"] & torch.tensor([1, 1, 0, 0], dtype=torch.bool)
    assert {f.code for f in run_checks(Sweep())} == {"NON_MONOTONE_EPS"}
    assert [f.details["series"] for f in run_checks(Sweep())] == ["pgd", "worst_case"]  # FGSM's curve: not checked
    # Declared roles: FGSM counted as white-box, so no single-step comparison; the flag is still raised.
    flags = run_checks(Sweep(), roles={"fgsm": "whitebox"})
    assert [(f.code, f.details["series"]) for f in flags] == [("NON_MONOTONE_EPS", s) for s in ("fgsm", "pgd",
                                                                                                "worst_case")]
    with pytest.raises(TorchRobustError):
        run_checks(42)


def test_run_checks_tolerances_and_sweep_series() -> None:
    flags = run_checks({"sweep": {"pgd": {"eps": [0, 1], "accuracy": [0.5, 0.6]},
                                  "cw": {"eps": [0, 1], "accuracy": [0.5, 0.4]}}})
    assert len(flags) == 1 and flags[0].details["series"] == "pgd"
    assert run_checks({"sweep": {"eps": [0, 1], "accuracy": [0.5, 0.6]}},
                      tolerances={"check_monotone_in_eps": {"tolerance": 0.2}}) == []
    assert run_checks({"large_eps": {"accuracy": 0.5}, "num_classes": 10})[0].code == "LARGE_EPS_ABOVE_CHANCE"


def test_run_checks_accepts_the_real_sweep_result() -> None:
    from torchrobust.evaluate import SweepResult

    res = SweepResult(
        threat="Linf", eps=[0.0, 0.1, 0.3], attacks=["fgsm", "pgd"],
        clean=torch.tensor([True, True, True, True]),
        robust={"fgsm": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 1, 0, 0]], dtype=torch.bool),
                "pgd": torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)},
    )
    assert run_checks(res) == []
    res.robust["pgd"][2, 0] = True  # PGD misses at ε=0.3 what FGSM found
    flags = run_checks(res)
    assert [f.code for f in flags] == ["SINGLE_STEP_STRONGER"] and flags[0].details["examples"] == [0]
    res.flags = [f.to_dict() for f in flags]  # how an evaluation records them
    assert not res.reliable and res.to_dict()["flags"][0]["code"] == "SINGLE_STEP_STRONGER"


class _NoJvpSquare(torch.autograd.Function):
    """x² with a backward but no forward-mode rule: exercises the double-backward fallback of the probe."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return 2 * x * g


class _NoJvpModule(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _NoJvpSquare.apply(x)


def test_probe_directional_derivatives_match_autograd_jacobian_in_float64() -> None:
    from torchrobust.evaluate.checks.zero_gradients import _jvp

    x = torch.randn(3, 5, dtype=torch.float64)
    d = torch.randn(3, 5, dtype=torch.float64)
    assert torch.autograd.gradcheck(_NoJvpSquare.apply, (x.clone().requires_grad_(True),))
    with pytest.raises(RuntimeError):
        torch.func.jvp(_NoJvpModule(), (x,), (d,))  # forward mode is unavailable ...
    for module in (nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Softmax(dim=1)).double(), _NoJvpModule()):
        jac = torch.autograd.functional.jacobian(module, x)  # (3, k, 3, 5)
        expected = torch.einsum("bkcn,cn->bk", jac, d)
        assert torch.allclose(_jvp(module, x, d), expected, atol=1e-12)  # ... and the fallback still gives J d
    assert find_zero_gradient_modules(nn.Sequential(_NoJvpModule(), nn.Linear(5, 2)).double(), x) == []


def test_input_errors_are_one_line_torchrobust_errors(plain: nn.Module, data) -> None:
    x, y = data
    for call in (
        lambda: check_gradients(plain, x, y + NUM_CLASSES),
        lambda: check_gradients(plain, x, y.float()),
        lambda: check_gradients(plain, x, y, loss="dlr"),
        lambda: check_budget(x, x[:3], "Linf", 0.1),
        lambda: check_budget(x, x, "Linf"),
        lambda: check_large_eps(0.1, 1),
        lambda: check_base_broken(0.1),
        lambda: run_checks({"large_eps": {"accuracy": 0.5}}),
        lambda: check_randomness(plain, x, passes=1),
    ):
        with pytest.raises(TorchRobustError) as info:
            call()
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------- non-finite model
def test_finite_check_flags_nan_weights_buffers_and_outputs(plain: nn.Module, data) -> None:
    x, _ = data
    assert check_finite(plain) is None and check_finite(plain, x) is None
    nan_w = copy.deepcopy(plain)
    with torch.no_grad():
        next(nan_w.parameters()).view(-1)[0] = math.nan
    flag = check_finite(nan_w)
    assert flag is not None and flag.code == "NONFINITE" and flag.severity == "error"
    assert flag.details["tensors_count"] == 1 and flag.details["rows_nonfinite"] == 0
    assert check_finite(nan_w, x).details["rows_nonfinite"] == len(x)
    bn = nn.Sequential(nn.Flatten(), nn.Linear(36, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)).eval()
    bn[2].running_var[1] = math.inf  # a buffer, not a parameter
    assert check_finite(bn).details["tensors"] == ["2.running_var"]
    # finite weights whose outputs overflow: only the probe sees it
    big = nn.Sequential(nn.Flatten(), nn.Linear(36, 3)).eval()
    with torch.no_grad():
        big[1].weight.fill_(3e38)
    assert check_finite(big) is None
    assert check_finite(big, x).details["rows_nonfinite"] == len(x)
    assert check_finite(plain, logits=torch.tensor([[0.0, math.nan], [1.0, 2.0]])).details["rows_nonfinite"] == 1
    codes = [f.code for f in run_checks({"model": nan_w, "x": x})]
    assert "NONFINITE" in codes
